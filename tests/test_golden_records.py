"""The golden-record canary: stored at export, scored first by every process that loads the
model for a run, and a run stopped (exit 7, one line) when the outputs moved."""

import json
import os
import shutil

import pytest

from pipeline import cli
from pipeline.inference.golden import (
    GOLDEN_RECORDS,
    GOLDEN_TOLERANCE,
    GoldenRecordsDiffer,
    check_golden_records,
    read_golden_records,
)
from pipeline.inference.model import LoadedModel
from pipeline.run_contract import EXIT_GATE, EXIT_OK
from transforms.model_contract import GOLDEN_RECORDS_FILE


def _copy_with_moved_output(model: str, tmp_path, by: float = 0.01) -> tuple[str, str]:
    """A copy of `model` whose stored output of its 6th golden record is off by `by`; its key."""
    copy = str(tmp_path / "model")
    shutil.copytree(model, copy)
    path = os.path.join(copy, GOLDEN_RECORDS_FILE)
    stored = json.load(open(path))
    stored["records"][5]["outputs"]["probability"] += by
    json.dump(stored, open(path, "w"))
    return copy, stored["records"][5]["record"]["id"]


def _predict_argv(model: str, data: str, out) -> list[str]:
    return ["predict", "--model_dir", model, "--input", data, "--output_dir", str(out)]


def test_export_stores_raw_eval_records_with_the_models_own_outputs(trained_ads):
    stored = read_golden_records(trained_ads["model"])
    assert len(stored["records"]) == GOLDEN_RECORDS and stored["tolerance"] == GOLDEN_TOLERANCE
    eval_ids = {
        json.loads(line)["id"]
        for line in open(os.path.join(trained_ads["transform"], "raw_eval_sample.jsonl"))
    }
    assert {entry["record"]["id"] for entry in stored["records"]} <= eval_ids
    outputs = [entry["outputs"]["probability"] for entry in stored["records"]]
    assert all(0.0 < p < 1.0 for p in outputs) and len(set(outputs)) > GOLDEN_RECORDS // 2
    largest = check_golden_records(LoadedModel(trained_ads["model"]))
    assert largest is not None and largest < 1e-6  # the same process, the same outputs


def test_a_run_whose_model_moved_stops_before_scoring_in_one_line(trained_ads, tmp_path, capsys):
    model, moved = _copy_with_moved_output(trained_ads["model"], tmp_path)
    out = tmp_path / "out"
    argv = ["predict", "--model_dir", model, "--input", trained_ads["data"], "--output_dir", str(out)]
    assert cli.main(argv) == EXIT_GATE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("adpredict")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"adpredict predict: stopped before scoring: model {model} does not give its golden records' outputs here: "
        f"record {moved!r}, output 'probability' is "
    ), lines[0]
    assert "(difference 0.01, tolerance 0.0001)" in lines[0] and "[while running" not in lines[0]
    assert os.listdir(out) == []  # nothing published, staging cleared, lock removed


def test_a_difference_within_the_tolerance_passes(trained_ads, tmp_path, capsys):
    model, _ = _copy_with_moved_output(trained_ads["model"], tmp_path, by=GOLDEN_TOLERANCE / 2)
    argv = _predict_argv(model, trained_ads["data"], tmp_path / "o")
    assert cli.main(argv) == EXIT_OK


def test_the_library_handler_checks_them_when_it_loads_the_model(trained_ads, tmp_path):
    from pipeline import RecordModelHandler

    model, moved = _copy_with_moved_output(trained_ads["model"], tmp_path)
    with pytest.raises(GoldenRecordsDiffer, match=f"record {moved!r}"):
        RecordModelHandler(model).load_model()


def test_a_model_without_golden_records_skips_the_canary_and_inspect_says_so(trained_ads, tmp_path, capsys):
    model = str(tmp_path / "model")
    shutil.copytree(trained_ads["model"], model)
    os.remove(os.path.join(model, GOLDEN_RECORDS_FILE))
    assert check_golden_records(LoadedModel(model)) is None
    argv = _predict_argv(model, trained_ads["data"], tmp_path / "o")
    assert cli.main(argv) == EXIT_OK
    capsys.readouterr()
    assert cli.main(["inspect", model]) == EXIT_OK
    assert "golden records  none (not trained by adpredict" in capsys.readouterr().out
    assert cli.main(["inspect", trained_ads["model"]]) == EXIT_OK
    assert f"golden records  {GOLDEN_RECORDS}, scored at export with TensorFlow" in capsys.readouterr().out


def test_the_first_block_is_scored_during_the_check_and_held_until_it_passes():
    """The check runs on the model's call threads while the first block is sent; no scored
    record leaves RunInference before the check passed, and none at all when it failed."""
    import concurrent.futures
    import threading

    import numpy as np
    import pyarrow as pa

    from pipeline.blocks import LINE_COLUMN, RecordBlock, RecordLayout, ScoredBlock
    from pipeline.inference.dofn import RunInferenceFn
    from pipeline.inference.model import ModelConfig

    def block(first: int) -> RecordBlock:
        ids = [f"ad-{i}" for i in range(first, first + 10)]
        return RecordBlock(
            "f.jsonl", pa.RecordBatch.from_pydict({"id": ids, LINE_COLUMN: list(range(1, 11))})
        )

    class Model:  # stands in for LoadedModel: records what it was sent
        def __init__(self):
            self.calls = concurrent.futures.ThreadPoolExecutor(2)
            self.golden_check = concurrent.futures.Future()
            self.sent = []

        def first_to_report_load(self):
            return False

        def predict(self, batch):
            self.sent.append(batch.num_rows)
            return {"probability": np.full(batch.num_rows, 0.5, dtype=np.float32)}

    def scored(outputs) -> list:
        values = [getattr(o, "value", o) for o in outputs]
        return [v for v in values if isinstance(v, ScoredBlock)]

    for passes in (True, False):
        fn = RunInferenceFn(ModelConfig("unused", RecordLayout((), "id"), 4))
        fn._model, fn._golden_checked = Model(), False
        check = fn._model.golden_check
        ends = threading.Timer(10, lambda c=check: c.done() or c.set_result(None))  # a wait would end
        ends.start()
        fn.start_bundle()
        assert scored(fn.process(block(0))) == []
        concurrent.futures.wait(fn._in_flight.calls)
        assert sum(fn._model.sent) == 10 and max(fn._model.sent) <= 4
        assert not check.done()  # sent while the check still runs
        ends.cancel()
        if passes:
            check.set_result(None)
            second = scored(fn.process(block(10)))
            assert [b.keys.to_pylist() for b in second] == [[f"ad-{i}" for i in range(10)]]
            assert sum(len(b) for b in scored(fn.finish_bundle())) == 10
        else:
            check.set_exception(GoldenRecordsDiffer("record 'ad-3' moved"))
            with pytest.raises(GoldenRecordsDiffer, match="ad-3"):
                list(fn.process(block(10)))


def test_a_bf16_run_warms_its_graph_on_the_golden_records_beside_the_check(trained_ads):
    """The first bf16 call optimizes the bf16 graph: it is made on the golden records while the
    check runs in fp32, not on the run's first block; an fp32 run's check warms its own graph."""
    import time

    from pipeline.inference.golden import load_checking

    model = LoadedModel(trained_ads["model"])
    sent = []
    model.predict = lambda batch: sent.append(batch.num_rows)  # the run's calls, in its precision

    class Config:
        batch_size_given = False

        def load(self):
            return model

    for precision, expected in (("fp32", []), ("bf16", [GOLDEN_RECORDS])):
        sent.clear()
        model.precision = precision
        assert load_checking(Config()) is model
        assert model.golden_check.result() < 1e-6
        deadline = time.monotonic() + (30 if expected else 0.5)  # fp32: nothing may come
        while len(sent) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sent == expected, precision
