"""What a run measured and cost, as run.json and the report show them: throughput from the
run's start at its true rate; the cost from the shipped price table and the basis a launch's
options give (Dataflow's workers and machine type, or this machine), the summary's line; the
counts per input file."""

import json

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.reporting import cost, terminal
from pipeline.reporting.summaries import CountErrorsFn, ThroughputFn, errors_stats, input_of, throughput_bars
from pipeline.run.finalize import counts_by_input, read_by_input, summed_counts
from tests.test_cli_output import summary_lines

EXAMPLES = ("n1-standard-1", "n1-standard-2", "n1-standard-4", "n2-standard-2", "n2-standard-4",
            "e2-standard-2", "e2-standard-4", "c3-standard-4")  # fmt: skip


def throughput_of(stamps, origin: float) -> dict:
    fn = ThroughputFn(origin)
    return fn.extract_output(fn.add_inputs(fn.create_accumulator(), stamps))


def test_a_short_run_is_one_bar_at_its_true_rate_from_the_runs_start():
    # Two blocks of 1,250 records leave the model 0.9 s and 1.1 s after the run started: the
    # second took 0.2 s, so the first most likely did too. A one-second bucket on the wall
    # clock's seconds showed this as 2,500 records/s from before the run began.
    started = 1_700_000_000.37
    summary = throughput_of([(started + 0.9, 1250), (started + 1.1, 1250)], started)
    assert (summary["records"], summary["blocks"]) == (2500, 2)
    assert summary["first"] == pytest.approx(0.9, abs=1e-6) and summary["last"] == pytest.approx(
        1.1, abs=1e-6
    )
    found = throughput_bars(summary)
    ((lo, hi, rate, records),) = found["bars"]
    assert (lo, hi, records) == (pytest.approx(0.7, abs=1e-5), pytest.approx(1.1, abs=1e-6), 2500)
    assert rate == pytest.approx(2500 / 0.4, rel=1e-4)

    ((lo, hi, rate, records),) = throughput_bars(throughput_of([(started + 1.5, 800)], started))["bars"]
    assert (lo, records) == (0.0, 800) and rate == pytest.approx(800 / 1.5, rel=1e-6)  # at least this


def test_throughput_bars_are_aligned_to_the_runs_start_and_each_rate_is_records_over_duration():
    started = 1_700_000_000.61  # not a whole second: buckets must not follow the wall clock
    stamps = [(started + 1.0 + 0.1 * i, 100) for i in range(100)]  # 1,000 records/s from 0.9 s to 10.9 s
    found = throughput_bars(throughput_of(stamps, started))
    bars, width = found["bars"], found["width"]
    assert width == 0.25 and len(bars) == 40  # about two blocks a bar, at most THROUGHPUT_BARS
    assert bars[0][0] == pytest.approx(0.9, abs=1e-6) and bars[-1][1] == pytest.approx(10.9, abs=1e-6)
    assert all(a[1] == b[0] for a, b in zip(bars, bars[1:], strict=False))  # no gaps, no overlaps
    assert all((lo / width).is_integer() for lo, _, _, _ in bars[1:])  # edges on the run's clock
    assert sum(b[3] for b in bars) == 10_000
    for lo, hi, rate, records in bars:
        assert rate == pytest.approx(records / (hi - lo))
        assert 750 <= rate <= 1350  # 2 or 3 blocks of 100 in 0.25 s; the ends 0.35 s and 0.15 s
    assert 10_000 / (bars[-1][1] - bars[0][0]) == pytest.approx(1000, rel=1e-6)
    assert throughput_bars({"records": 0, "buckets": []})["bars"] == []


def basis_of(*flags: str) -> dict:
    return cost.basis(PipelineOptions(list(flags)))


def test_the_shipped_price_table_has_the_documented_examples_marked_as_such():
    prices = cost.load_prices()
    assert prices["source"] == cost.PRICE_TABLE and prices["examples"] is True
    machines = prices["machines"]
    assert set(machines) == {"local", *EXAMPLES}
    assert machines["local"] == {"usd_per_hour": 0.0, "vcpus": None}
    for name in EXAMPLES:
        assert machines[name]["vcpus"] == cost.vcpus_from_name(name)  # the table and the name agree
        assert 0.05 < machines[name]["usd_per_hour"] / machines[name]["vcpus"] < 0.1  # per vCPU-hour
    assert "EXAMPLES, NOT QUOTES" in open(cost.PRICE_TABLE).read()


def test_a_dataflow_runs_machines_come_from_its_worker_options():
    fixed = basis_of("--runner", "DataflowRunner", "--num_workers", "3", "--machine_type", "n1-standard-4")
    assert (fixed["machine_type"], fixed["workers"], fixed["workers_from"]) == (
        "n1-standard-4",
        3,
        "--num_workers",
    )
    capped = basis_of(
        "--runner", "DataflowRunner", "--max_num_workers", "10", "--worker_machine_type", "c3-standard-4"
    )
    assert (capped["machine_type"], capped["workers"]) == ("c3-standard-4", 10)
    assert capped["workers_from"].startswith("--max_num_workers: an upper bound")
    default = basis_of("--runner", "DataflowRunner")
    assert (default["machine_type"], default["workers"]) == ("n1-standard-1", 1)
    assert (
        default["machine_type_from"] == "Dataflow's default for batch jobs"
        and "1 assumed" in default["workers_from"]
    )
    local = basis_of("--direct_num_workers", "4")
    assert (local["machine_type"], local["workers"], local["workers_from"]) == ("local", 1, "this machine")


def test_the_figures_of_a_dataflow_run():
    basis = basis_of("--runner", "DataflowRunner", "--num_workers", "3", "--machine_type", "n1-standard-4")
    found = cost.estimate(basis, 600.0, 2_000_000, 1_990_000, cpus_here=64)  # this machine's CPUs: not used
    assert found["vcpus_per_worker"] == 4 and found["vcpus_from"] == "price table"
    assert (found["worker_seconds"], found["vcpu_seconds"]) == (1800.0, 7200.0)
    assert (found["records_per_second"], found["records_per_second_per_vcpu"]) == (3333.3, 277.8)
    assert found["usd_per_worker_hour"] == 0.2774 and found["usd"] == 0.1387  # 0.5 h x 0.2774
    assert found["usd_per_million_predictions"] == 0.0697  # 0.1387 / 1.99, 4 significant figures
    assert found["prices_are_examples"] is True and "no_price" not in found
    line = summary_lines(terminal.predict_summary({"counts": {}, "cost": found}, None))["cost"]
    assert line == (
        "278 records/s per vCPU (3 x n1-standard-4, 4 vCPUs each), 1,800.0 worker-s, "
        "$0.0697 per million predictions (example prices)"
    )
    words = " ".join(cost.assumptions(found))
    assert "3 workers (--num_workers) of machine type n1-standard-4 (--machine_type), 4 vCPUs each" in words
    assert "$0.277 per worker-hour" in words and "example prices, not a quote" in words


def test_a_machine_type_without_a_price_gets_its_vcpus_from_its_name_and_no_dollars():
    basis = basis_of("--runner", "DataflowRunner", "--num_workers", "2", "--machine_type", "n2-highcpu-8")
    found = cost.estimate(basis, 100.0, 16_000, 16_000, cpus_here=1)
    assert (found["vcpus_per_worker"], found["vcpus_from"], found["records_per_second_per_vcpu"]) == (
        8, "machine type's name", 10.0)  # fmt: skip
    assert found["usd"] is None and found["usd_per_million_predictions"] is None
    assert found["no_price"] == f"no price for n2-highcpu-8 in {cost.PRICE_TABLE}"
    assert cost.vcpus_from_name("custom-6-23040") == 6 and cost.vcpus_from_name("e2-medium") is None
    assert "no price for this machine type" in terminal.cost_line({"cost": found})


def test_a_local_run_counts_this_machines_cpus_and_a_table_of_ones_own(tmp_path):
    table = tmp_path / "prices.yaml"
    table.write_text("examples: false\nmachines:\n  local: {usd_per_hour: 0.36, vcpus: null}\n")
    basis = {**basis_of(), "prices": cost.load_prices(str(table))}
    found = cost.estimate(basis, 10.0, 1000, 900, cpus_here=8)
    assert (found["vcpus_per_worker"], found["vcpus_from"]) == (8, "this machine's CPU count")
    assert (found["worker_seconds"], found["records_per_second_per_vcpu"]) == (10.0, 12.5)
    assert found["usd"] == 0.001 and found["usd_per_million_predictions"] == pytest.approx(1.111)
    assert found["price_table"] == str(table) and found["prices_are_examples"] is False
    assert cost.this_machine_cpus() >= 1


def test_a_broken_price_table_fails_naming_it(tmp_path):
    for text in (
        "machines: [1, 2]\n",
        "machines:\n  n1-standard-1: {vcpus: 1}\n",
        "machines: {a: {usd_per_hour: x}}",
    ):
        table = tmp_path / "prices.yaml"
        table.write_text(text)
        with pytest.raises(ValueError, match=f"price table {table}: "):
            cost.load_prices(str(table))
    with pytest.raises(ValueError, match="price table .*absent.yaml"):
        cost.load_prices(str(tmp_path / "absent.yaml"))


def test_money_reads_at_a_glance():
    assert [cost.money(v) for v in (0.0, 0.011549, 0.0697, 1.234, 1234.5, None)] == [
        "$0.00", "$0.0115", "$0.0697", "$1.23", "$1,234.50", "—"]  # fmt: skip


def test_counts_per_input_from_the_error_records_and_the_reading_steps_counts():
    fn = CountErrorsFn()
    failed = [{"source": source, "error": {"code": "missing_field", "field": "age", "message": "m"}}
              for source in ("gs://b/a.jsonl:3", "gs://b/a.jsonl:9", "/d/b.csv:1", "gs://b/cut.gz")]  # fmt: skip
    summary = fn.extract_output(fn.merge_accumulators([fn.add_input(fn.create_accumulator(), failed[:1]),
                                                       fn.add_input(fn.create_accumulator(), failed[1:])]))  # fmt: skip
    assert summary["by_input"] == {"/d/b.csv": 1, "gs://b/a.jsonl": 2, "gs://b/cut.gz": 1}
    assert json.loads(errors_stats(summary)) == {
        "errors": 4,
        "by_kind": summary["by_kind"],
    }  # the file as before
    assert [input_of(s) for s in ("gs://b/x:12", "gs://b/x", "proj.ds.table", "", None)] == [
        "gs://b/x", "gs://b/x", "proj.ds.table", "", ""]  # fmt: skip

    files = ["gs://b/a.jsonl", "/d/b.csv", "gs://b/empty.jsonl"]
    rows = counts_by_input(files, {}, summary["by_input"], "predictions")  # today: no reads per input
    assert rows == [
        {"input": "gs://b/a.jsonl", "read": None, "predictions": None, "errors": 2},
        {"input": "/d/b.csv", "read": None, "predictions": None, "errors": 1},
        {"input": "gs://b/empty.jsonl", "read": None, "predictions": None, "errors": 0},
        {"input": "gs://b/cut.gz", "read": None, "predictions": None, "errors": 1},
    ]
    # A reading step that counts per input sends ((READ, input), n) beside ("read", n).
    counts = {
        "read": 17,
        "predictions": 13,
        "errors": 4,
        ("read", "gs://b/a.jsonl"): 10,
        ("read", "/d/b.csv"): 7,
    }
    assert summed_counts(counts, "predictions", None)[0] == {"read": 17, "predictions": 13, "errors": 4,
                                                              "error_rate": 0.235294}  # fmt: skip
    read = read_by_input(counts)
    rows = counts_by_input(files[:2], read, summary["by_input"], "predictions")
    assert [(r["input"], r["read"], r["predictions"], r["errors"]) for r in rows] == [
        ("gs://b/a.jsonl", 10, 8, 2), ("/d/b.csv", 7, 6, 1), ("gs://b/cut.gz", None, None, 1)]  # fmt: skip
    assert counts_by_input([], {}, {}, "predictions") is None


def test_a_run_over_two_files_counts_each_file_read_scored_and_failed(trained_ads, tmp_path):
    """run.json's counts_by_input from a real run: the reading step counts each file."""
    from pipeline import predict

    lines = open(trained_ads["data"]).read().splitlines()
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(lines[:30]) + "\n")
    second.write_text("\n".join([*lines[30:50], "{broken"]) + "\n")
    manifest = predict.run(["--model_dir", trained_ads["model"], "--input", str(tmp_path / "*.jsonl"),
                            "--output_dir", str(tmp_path / "out"), "--max_error_rate", "0.1", "--no_progress"])  # fmt: skip
    assert manifest["counts_by_input"] == [
        {"input": str(first), "read": 30, "predictions": 30, "errors": 0},
        {"input": str(second), "read": 21, "predictions": 20, "errors": 1},
    ]


def test_the_runs_summaries_are_one_combine_that_answers_as_each_fn_alone():
    """FinalizeRun's and JudgeQuality's summaries: each input accumulated per bundle, the
    accumulators merged by one combine in any order, each name's result its own fn's; a name
    with no input gets its empty result."""
    from apache_beam.transforms.window import GlobalWindows

    from pipeline.run.finalize import PartialCombineFn, SummariesFn, SumPerKeyFn

    fns = {"counts": SumPerKeyFn(), "error_kinds": CountErrorsFn()}
    fn = SummariesFn(fns)
    error = {"source": "in.jsonl:3", "error": {"code": "wrong_type", "field": "age", "message": "m"}}

    def bundle(name, values):
        partial = PartialCombineFn(name, fns[name])
        partial.setup()
        partial.start_bundle()
        for value in values:
            partial.process(value)
        (emitted,) = partial.finish_bundle()
        assert emitted.windows == GlobalWindows.windowed_value(None).windows
        return emitted.value

    left = fn.add_input(fn.create_accumulator(), bundle("counts", [("read", 4)]))
    left = fn.add_input(left, bundle("error_kinds", [[error]]))
    right = fn.add_input(fn.create_accumulator(), bundle("counts", [("read", 6), (("read", "in.jsonl"), 6)]))
    got = fn.extract_output(fn.merge_accumulators([fn.create_accumulator(), right, left]))
    assert got["counts"] == {"read": 10, ("read", "in.jsonl"): 6}
    alone = CountErrorsFn()
    assert got["error_kinds"] == alone.extract_output(alone.add_input(alone.create_accumulator(), [error]))
    assert fn.extract_output({}) == {
        "counts": {},
        "error_kinds": alone.extract_output(alone.create_accumulator()),
    }
    empty = PartialCombineFn("counts", SumPerKeyFn())
    empty.start_bundle()
    assert list(empty.finish_bundle() or ()) == []  # a bundle without values sends nothing
