"""`adpredict nightly`: one date, skip when done, --force, crash recovery, backfill, parity gate."""

import json
import os

import pytest
import yaml

from pipeline import cli
from pipeline.run_contract import (
    EXIT_ERROR_RATE,
    EXIT_GATE,
    EXIT_INPUT_NOT_READY,
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
)
from pipeline.sampledata.generate import generate_file

DATES = ("2026-11-24", "2026-11-25", "2026-11-26")
RECORDS = 40


@pytest.fixture()
def nightly(trained_ads, tmp_path):
    """Three dates of input files and a config scoring them into out/dt={date}."""
    for index, date in enumerate(DATES):
        generate_file(str(tmp_path / "ads" / f"dt={date}" / "part-0.jsonl"), RECORDS, seed=30 + index,
                      first_id=1000 * index)  # fmt: skip
    config = {
        "model_dir": trained_ads["model"],
        "input": str(tmp_path / "ads" / "dt={date}" / "*.jsonl"),
        "output_dir": str(tmp_path / "out" / "dt={date}"),
        "timezone": "Europe/Berlin",
        "transform_dir": trained_ads["transform"],
    }
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"config": str(path), "dir": tmp_path, "settings": config}


def night(nightly, *args) -> int:
    return cli.main(["nightly", "--config", nightly["config"], *args])


def outputs(nightly, date) -> dict:
    out = nightly["dir"] / "out" / f"dt={date}"
    lines = [
        line for path in sorted(out.glob("prediction.results-*")) for line in path.read_text().splitlines()
    ]
    return {
        "predictions": lines,
        "manifest": json.loads((out / "run.json").read_text()),
        "success": (out / "_SUCCESS").exists(),
        "names": sorted(p.name for p in out.iterdir()),
    }


def test_a_night_runs_then_is_skipped_then_forced(nightly, capsys):
    assert night(nightly, "--date", DATES[2]) == EXIT_OK
    first = outputs(nightly, DATES[2])
    assert len(first["predictions"]) == RECORDS and first["success"]
    assert first["manifest"]["date"] == DATES[2] and len(first["manifest"]["input_fingerprint"]) == 64
    assert "parity gate passed" in capsys.readouterr().out

    assert night(nightly, "--date", DATES[2]) == EXIT_SKIPPED
    assert "skipped" in capsys.readouterr().out
    assert outputs(nightly, DATES[2])["manifest"]["timings"] == first["manifest"]["timings"]

    assert night(nightly, "--date", DATES[2], "--force") == EXIT_OK
    forced = outputs(nightly, DATES[2])
    assert (
        len(forced["predictions"]) == RECORDS
        and forced["manifest"]["timings"] != first["manifest"]["timings"]
    )

    # New input for the date: its fingerprint changes, so the night runs again.
    with open(nightly["dir"] / "ads" / f"dt={DATES[2]}" / "part-0.jsonl", "a") as f:
        f.write(open(nightly["dir"] / "ads" / f"dt={DATES[0]}" / "part-0.jsonl").readline())
    assert night(nightly, "--date", DATES[2]) == EXIT_OK
    assert len(outputs(nightly, DATES[2])["predictions"]) == RECORDS + 1


def test_a_run_killed_while_writing_is_cleared_before_the_rerun(nightly):
    out = nightly["dir"] / "out" / f"dt={DATES[1]}"
    (out / ".temp-beam-0a1b2c").mkdir(parents=True)
    (out / ".temp-beam-0a1b2c" / "partial-shard").write_text('{"key": "half-written"}\n')
    (out / "prediction.results-00002-of-00003").write_text('{"key": "stale", "prediction": {}}\n')
    (out / "run.json").write_text('{"status": "running"}')  # and no _SUCCESS
    assert night(nightly, "--date", DATES[1]) == EXIT_OK
    after = outputs(nightly, DATES[1])
    keys = [json.loads(line)["key"] for line in after["predictions"]]
    assert len(keys) == len(set(keys)) == RECORDS and "stale" not in keys
    assert not any(name.startswith((".temp-beam", "beam-temp", ".adpredict")) for name in after["names"])
    assert after["success"] and after["manifest"]["status"] == "succeeded"


def test_backfill_runs_each_date_in_order_and_skips_the_one_done(nightly, capsys):
    assert night(nightly, "--date", DATES[1]) == EXIT_OK
    done_before = outputs(nightly, DATES[1])["manifest"]
    capsys.readouterr()
    assert night(nightly, "--backfill", DATES[0], DATES[2]) == EXIT_OK
    printed = capsys.readouterr().out
    order = [printed.index(f"nightly {date}:") for date in DATES]
    assert order == sorted(order) and f"nightly {DATES[1]}: skipped" in printed
    for date in DATES:
        assert len(outputs(nightly, date)["predictions"]) == RECORDS
    assert outputs(nightly, DATES[1])["manifest"] == done_before


@pytest.fixture(scope="module")
def other_transform(tmp_path_factory):
    """tf.Transform artifacts analysed on other data: not the ones the model was trained with."""
    from pipeline import analyze

    work = tmp_path_factory.mktemp("other_transform")
    generate_file(str(work / "train.jsonl"), 150, seed=99)
    analyze.run(
        ["--schema", "ads", "--input", str(work / "train.jsonl"), "--output_dir", str(work / "transform")]
    )
    return str(work / "transform")


def test_the_parity_gate_fails_a_night_whose_model_and_transform_disagree(nightly, other_transform, capsys):
    assert night(nightly, "--date", DATES[0], "--parity_only") == EXIT_OK  # the model's own transform
    assert "parity gate passed" in capsys.readouterr().out
    settings = {**nightly["settings"], "transform_dir": other_transform}
    with open(nightly["config"], "w") as f:
        yaml.safe_dump(settings, f)
    assert night(nightly, "--date", DATES[0]) == EXIT_GATE
    err = capsys.readouterr().err
    assert "training/serving skew: feature '" in err and "differs by up to" in err
    assert not (nightly["dir"] / "out" / f"dt={DATES[0]}").exists()  # nothing scored
    assert night(nightly, "--date", DATES[0], "--parity_only") == EXIT_GATE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schedule": "daily"}, "unknown keys ['schedule']"),
        ({"output_dir": "/tmp/no-date-here"}, "must contain {date}"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
    ],
)
def test_config_mistakes_exit_2_naming_the_key(nightly, change, message, capsys):
    with open(nightly["config"], "w") as f:
        yaml.safe_dump({**nightly["settings"], **change}, f)
    assert night(nightly) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_an_error_rate_over_the_threshold_exits_3(nightly, capsys):
    with open(nightly["dir"] / "ads" / f"dt={DATES[0]}" / "part-0.jsonl", "a") as f:
        f.write('{"id": "broken", "age": \n')
    with open(nightly["config"], "w") as f:
        yaml.safe_dump({**nightly["settings"], "max_error_rate": 0.0}, f)
    assert night(nightly, "--date", DATES[0]) == EXIT_ERROR_RATE
    assert not outputs(nightly, DATES[0])["success"]
    assert os.path.exists(nightly["dir"] / "out" / f"dt={DATES[0]}" / "run.json")


def test_a_night_killed_by_sigkill_while_writing_reruns_to_one_set_of_outputs(nightly, tmp_path):
    """A real kill: the nightly process dies as soon as the first shard is being written
    (under the run's staging folder), before the run could finish."""
    import signal
    import subprocess
    import time

    generate_file(
        str(nightly["dir"] / "ads" / f"dt={DATES[0]}" / "part-1.jsonl"), 3000, seed=5, first_id=50_000
    )
    out = nightly["dir"] / "out" / f"dt={DATES[0]}"
    adpredict = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "adpredict"
    )
    process = subprocess.Popen([adpredict, "nightly", "--config", nightly["config"], "--date", DATES[0]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        staging = out / ".adpredict-staging"
        if staging.exists() and any(staging.rglob("*")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-write"
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("prediction.results-*")) and not list(out.glob("errors-*"))  # nothing looks done

    assert night(nightly, "--date", DATES[0]) == EXIT_OK
    after = outputs(nightly, DATES[0])
    keys = [json.loads(line)["key"] for line in after["predictions"]]
    assert len(keys) == len(set(keys)) == RECORDS + 3000
    assert not any(name.startswith((".temp-beam", "beam-temp", ".adpredict")) for name in after["names"])


def test_a_date_parses_its_flags_and_fingerprints_its_model_and_inputs_once(nightly, monkeypatch, capsys):
    """The skip test, the parity gate and the run share one plan (they each parsed and
    fingerprinted on their own before)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import predict, read
    from pipeline.options import CachedViewOptions
    from pipeline.run import manifest

    calls = {"options": 0, "model": 0, "inputs": 0, "run.json": 0}

    def counted(name, function, when=lambda *args: True):
        def wrapper(*args, **kwargs):
            calls[name] += bool(when(*args))
            return function(*args, **kwargs)

        return wrapper

    def parses_the_dates_flags(self, flags=None, *rest):  # not a view of parsed options (view_as)
        return type(self) in (PipelineOptions, CachedViewOptions) and "--model_dir" in list(flags or ())

    monkeypatch.setattr(
        PipelineOptions, "__init__", counted("options", PipelineOptions.__init__, parses_the_dates_flags)
    )
    monkeypatch.setattr(predict, "model_fingerprint", counted("model", manifest.model_fingerprint))
    monkeypatch.setattr(predict, "input_fingerprint", counted("inputs", read.input_fingerprint))
    monkeypatch.setattr(manifest, "read_manifest", counted("run.json", manifest.read_manifest))
    assert night(nightly, "--date", DATES[1]) == EXIT_OK
    assert "parity gate passed" in capsys.readouterr().out
    assert calls == {"options": 1, "model": 1, "inputs": 1, "run.json": 1}
    calls.update(dict.fromkeys(calls, 0))
    assert night(nightly, "--date", DATES[1]) == EXIT_SKIPPED  # read once more, to compare fingerprints
    assert calls == {"options": 1, "model": 1, "inputs": 1, "run.json": 1}


def test_the_parity_gate_reads_the_files_as_the_run_does(nightly, capsys):
    """A file whose name does not tell its format, with `input_format` in the config."""
    path = nightly["dir"] / "ads" / f"dt={DATES[0]}" / "part-0.jsonl"
    path.rename(path.with_name("part-0.records"))
    settings = {**nightly["settings"], "input": str(nightly["dir"] / "ads" / "dt={date}" / "*.records")}
    with open(nightly["config"], "w") as f:
        yaml.safe_dump({**settings, "input_format": "jsonl"}, f)
    assert night(nightly, "--date", DATES[0], "--parity_only") == EXIT_OK
    assert "parity gate passed" in capsys.readouterr().out


def _with_settings(nightly, **settings) -> None:
    with open(nightly["config"], "w") as f:
        yaml.safe_dump({**nightly["settings"], **settings}, f)


def _hook(tmp_path, name: str) -> str:
    """A hook command that writes its environment's ADPREDICT_* variables to `name`.json."""
    import sys

    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        "json.dump({k: v for k, v in os.environ.items() if k.startswith('ADPREDICT_')},"
        " open(sys.argv[1], 'w'))\n"
    )
    return f"{sys.executable} {script} {tmp_path / (name + '.json')}"


def test_hooks_get_the_date_status_exit_code_and_run_json(nightly, tmp_path, capsys):
    _with_settings(
        nightly,
        max_error_rate=0.0,
        on_success=_hook(tmp_path, "success"),
        on_failure=_hook(tmp_path, "failure"),
    )
    assert night(nightly, "--date", DATES[1]) == EXIT_OK
    success = json.loads((tmp_path / "success.json").read_text())
    out = nightly["dir"] / "out" / f"dt={DATES[1]}"
    assert success == {
        "ADPREDICT_DATE": DATES[1],
        "ADPREDICT_STATUS": "ok",
        "ADPREDICT_EXIT_CODE": str(EXIT_OK),
        "ADPREDICT_RUN_JSON": f"{out}/run.json",
        "ADPREDICT_OUTPUT_DIR": str(out),
    }
    assert not (tmp_path / "failure.json").exists()

    (tmp_path / "success.json").unlink()
    assert night(nightly, "--date", DATES[1]) == EXIT_SKIPPED  # nothing ran: no hook
    assert not (tmp_path / "success.json").exists() and not (tmp_path / "failure.json").exists()

    with open(nightly["dir"] / "ads" / f"dt={DATES[0]}" / "part-0.jsonl", "a") as f:
        f.write('{"id": "broken", "age": \n')
    assert night(nightly, "--date", DATES[0]) == EXIT_ERROR_RATE
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["ADPREDICT_STATUS"] == "error_rate" and failure["ADPREDICT_EXIT_CODE"] == str(
        EXIT_ERROR_RATE
    )
    assert failure["ADPREDICT_RUN_JSON"].endswith(f"dt={DATES[0]}/run.json")
    assert json.loads(open(failure["ADPREDICT_RUN_JSON"]).read())["status"].startswith("failed")


def test_a_night_whose_input_has_not_arrived_exits_5_and_its_hook_says_so(nightly, tmp_path, capsys):
    _with_settings(nightly, on_failure=_hook(tmp_path, "failure"))
    assert night(nightly, "--date", "2026-11-27") == EXIT_INPUT_NOT_READY
    err = capsys.readouterr().err
    assert (
        "adpredict nightly 2026-11-27: input not there yet: input pattern" in err and "dt=2026-11-27" in err
    )
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["ADPREDICT_STATUS"] == "input_not_ready" and failure["ADPREDICT_RUN_JSON"] == ""
    assert failure["ADPREDICT_EXIT_CODE"] == str(EXIT_INPUT_NOT_READY)


def test_a_failing_or_hanging_hook_is_reported_and_not_fatal(nightly, tmp_path, capsys):
    import sys

    _with_settings(nightly, on_success="exit 9")
    assert night(nightly, "--date", DATES[2]) == EXIT_OK
    assert (
        f"adpredict nightly {DATES[2]}: warning: the on_success hook exited 9: exit 9"
        in capsys.readouterr().err
    )
    _with_settings(nightly, on_success=f"{sys.executable} -c 'import time; time.sleep(30)'", hook_timeout=1)
    assert night(nightly, "--date", DATES[2], "--force") == EXIT_OK
    assert "hook did not end within hook_timeout 1 s and was stopped" in capsys.readouterr().err


def test_a_retried_last_step_finds_its_run_json_and_fails_the_same_way(tmp_path):
    """Beam retries a failing bundle: the last step, run again, rewrites nothing."""
    from pipeline.run.finalize import RunConfig, RunFailedInPipeline, _FinishRunFn
    from pipeline.run_contract import PREDICTIONS

    out = tmp_path / "out"
    (out / ".adpredict-staging").mkdir(parents=True)
    (out / ".adpredict-staging" / "prediction.results-00000-of-00001").write_text('{"key": "a"}\n')
    fn = _FinishRunFn(str(out), RunConfig({"run_id": "r1", "output_dir": str(out)}, 0.1), None, PREDICTIONS)
    counts = {"read": 10, "predictions": 5, "errors": 5}
    with pytest.raises(
        RunFailedInPipeline, match=r"^adpredict: run failed: 5 of 10 records failed \(50.00%\)"
    ):
        list(fn.process(None, ["w"], {"counts": counts, "error_kinds": "{}"}))
    first = (out / "run.json").read_text()
    assert json.loads(first)["files_published"] == 1 and (out / "prediction.results-00000-of-00001").exists()
    with pytest.raises(RunFailedInPipeline, match=r"^adpredict: run failed: 5 of 10 records failed"):
        list(fn.process(None, ["w"], {"counts": counts, "error_kinds": "{}"}))
    assert (out / "run.json").read_text() == first and not (out / "_SUCCESS").exists()
