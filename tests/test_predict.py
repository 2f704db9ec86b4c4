"""The predict pipeline with a real exported model: outputs, bad input, counts invariant."""

import base64
import glob
import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import cli, predict
from pipeline.inference.model import ModelConfig
from pipeline.run.finalize import RunConfig
from pipeline.run_contract import EXIT_ERROR_RATE, EXIT_INPUT_NOT_READY, EXIT_USAGE
from pipeline.write import Outputs

GOOD = {"age": 30, "gender": "female", "media": "Twitter", "interests": ["sports"], "bid": 2.0, "hour": 20}


def good_record(key, image, **changes):
    return json.dumps({"id": key, **GOOD, "image": image, **changes})


@pytest.fixture(scope="module")
def sample_image(trained_ads):
    with open(trained_ads["data"]) as f:
        return json.loads(f.readline())["image"]


@pytest.fixture()
def bad_inputs(tmp_path, sample_image):
    """One JSONL and one CSV file with every kind of bad record, plus an empty file."""
    corrupt_jpeg = base64.b64encode(base64.b64decode(sample_image)[:40]).decode()  # header, then cut
    lines = [
        good_record("ok-1", sample_image),
        good_record("unknown-media", sample_image, media="MySpace"),
        good_record("no-gender", sample_image, gender=None),
        good_record("age-old", sample_image, age="old"),
        '{"id": "broken", "age": 3',
        good_record("not-image", base64.b64encode(b"plain text").decode()),
        good_record("corrupt-image", corrupt_jpeg),
        good_record("ok-2", sample_image, bid=None, interests=[]),
    ]
    jsonl = tmp_path / "in" / "records.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(lines) + "\n")
    header = "id,age,gender,media,interests,bid,hour,image\n"
    (tmp_path / "in" / "records.csv").write_text(
        header + f"c-1,30,male,Instagram,sports|music,,9,{sample_image}\nc-short,30,male\n"
    )
    (tmp_path / "in" / "empty.jsonl").write_text("")
    return tmp_path


EXPECTED_ERRORS = {
    "no-gender": ("missing_field", "gender"),
    "age-old": ("wrong_type", "age"),
    "c-short": ("malformed_record", None),  # too few columns, but its key is readable
    "not-image": ("invalid_image", "image"),
    "corrupt-image": ("inference_failed", "image"),
}
EXPECTED_SCORED = ["ok-1", "unknown-media", "ok-2", "c-1"]


def test_pipeline_outputs_with_test_pipeline(trained_ads, bad_inputs):
    model = ModelConfig.from_model_dir(trained_ads["model"], batch_size=4)
    patterns = [str(bad_inputs / "in" / "*.jsonl"), str(bad_inputs / "in" / "*.csv")]
    with TestPipeline() as p:
        # 6 of 10 records are errors: a run that would fail (and so fail the pipeline) at 1%
        run = RunConfig(max_error_rate=1.0)
        outputs = predict.build_predict(p, patterns, model, Outputs(str(bad_inputs / "out")), run)
        keys = outputs[predict.SCORED] | beam.FlatMap(lambda scored: scored.keys.to_pylist())
        assert_that(keys, equal_to(EXPECTED_SCORED), label="CheckScoredKeys")
        error_kinds = (
            outputs["errors"]
            | beam.FlatMap(lambda errors: errors)
            | beam.Map(lambda e: (e["key"], e["error"]["code"], e["error"]["field"]))
        )
        expected = [(k, code, field) for k, (code, field) in EXPECTED_ERRORS.items()] + [
            (None, "malformed_record", None)  # the short CSV row has no key it can be sure of
        ]
        assert_that(error_kinds, equal_to(expected), label="CheckErrors")


def test_run_writes_predictions_errors_manifest_and_success(trained_ads, bad_inputs):
    out = bad_inputs / "out"
    manifest = predict.run(
        [
            "--model_dir",
            trained_ads["model"],
            "--input",
            str(bad_inputs / "in" / "*.jsonl"),
            "--input",
            str(bad_inputs / "in" / "*.csv"),
            "--output_dir",
            str(out),
            "--max_error_rate",
            "1",
        ]
    )
    counts = manifest["counts"]
    assert counts["read"] == 10
    assert counts["read"] == counts["predictions"] + counts["errors"]
    assert (counts["predictions"], counts["errors"]) == (4, 6)
    assert counts["model_loads"] == 1

    predictions = [
        json.loads(line) for path in glob.glob(str(out / "prediction.results-*-of-*")) for line in open(path)
    ]
    assert sorted(p["key"] for p in predictions) == sorted(EXPECTED_SCORED)
    assert all(0.0 <= p["prediction"]["probability"] <= 1.0 for p in predictions)
    errors = [json.loads(line) for path in glob.glob(str(out / "errors-*-of-*")) for line in open(path)]
    assert len(errors) == 6
    broken = next(e for e in errors if e["source"].endswith("records.jsonl:5"))
    assert broken["instance"] == '{"id": "broken", "age": 3' and broken["error"]["code"] == "malformed_record"
    short = next(e for e in errors if e["source"].endswith("records.csv:3"))
    assert "expected 8 columns" in short["error"]["message"]
    stats = json.loads((out / "prediction.errors_stats").read_text())
    assert stats["errors"] == 6 and {"code": "malformed_record", "field": None} in [
        {"code": r["code"], "field": r["field"]} for r in stats["by_kind"]
    ]
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "succeeded" and run_json["model"]["fingerprint"]
    assert os.path.exists(out / "_SUCCESS")


def test_error_rate_threshold_fails_after_writing_everything(trained_ads, bad_inputs, capsys):
    out = bad_inputs / "strict"
    code = cli.main(
        ["predict", "--model_dir", trained_ads["model"], "--input", str(bad_inputs / "in" / "*.jsonl"),
         "--output_dir", str(out), "--max_error_rate", "0.1"]
    )  # fmt: skip
    assert code == EXIT_ERROR_RATE
    assert "above --max_error_rate" in capsys.readouterr().err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"].startswith("failed") and manifest["counts"]["errors"] == 5
    assert glob.glob(str(out / "prediction.results-*")) and not os.path.exists(out / "_SUCCESS")


def test_glob_matching_nothing_is_a_clear_error_and_retryable(trained_ads, tmp_path, capsys):
    pattern = str(tmp_path / "nothing-here-*.jsonl")
    code = cli.main(
        ["predict", "--model_dir", trained_ads["model"], "--input", pattern, "--output_dir", str(tmp_path)]
    )
    assert code == EXIT_INPUT_NOT_READY  # tonight's files may be late: a scheduler retries
    err = capsys.readouterr().err
    assert pattern in err and "matches no file" in err


@pytest.mark.parametrize("kind", ["missing", "not_saved_model"])
def test_bad_model_directory_is_a_clear_error(kind, trained_ads, tmp_path, capsys):
    model_dir = tmp_path / "model"
    if kind == "not_saved_model":
        model_dir.mkdir()
        (model_dir / "weights.h5").write_text("not a model")
    code = cli.main(
        [
            "predict",
            "--model_dir",
            str(model_dir),
            "--input",
            trained_ads["data"],
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(model_dir) in err
    assert ("does not exist" if kind == "missing" else "is not a SavedModel") in err


def test_rerun_replaces_previous_outputs(trained_ads, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "prediction.results-00003-of-00004"
    stale.write_text("stale\n")
    predict.run(
        ["--model_dir", trained_ads["model"], "--input", trained_ads["data"], "--output_dir", str(out)]
    )
    assert not stale.exists()
    lines = sum(1 for path in glob.glob(str(out / "prediction.results-*")) for _ in open(path))
    assert lines == 600


@pytest.mark.parametrize(
    ("mode", "most_loads"),
    [("multi_threading", 1), ("multi_processing", 2)],  # 2 worker threads share 1 process
)
def test_model_is_loaded_once_per_worker_process(mode, most_loads, trained_ads, tmp_path):
    from pipeline.sampledata.generate import generate_file

    for index in range(6):
        generate_file(str(tmp_path / "in" / f"part-{index}.jsonl"), 40, seed=index, first_id=index * 40)
    manifest = predict.run(
        [
            "--model_dir",
            trained_ads["model"],
            "--input",
            str(tmp_path / "in" / "*.jsonl"),
            "--output_dir",
            str(tmp_path / "out"),
            "--batch_size",
            "8",
            "--direct_num_workers",
            "2",
            "--direct_running_mode",
            mode,
        ]
    )
    counts = manifest["counts"]
    assert counts["predictions"] == 240 and counts["errors"] == 0
    assert counts["model_batches"] == 30  # 6 files x 5 batches of 8: many calls...
    assert 1 <= counts["model_loads"] <= most_loads  # ...on one model per process


def test_the_pipeline_itself_writes_run_json_then_success(trained_ads, bad_inputs):
    """No launcher code after the run: on Dataflow the launcher may be gone by then."""
    out = bad_inputs / "in_pipeline"
    patterns = [str(bad_inputs / "in" / "*.jsonl"), str(bad_inputs / "in" / "*.csv")]
    model = ModelConfig.from_model_dir(trained_ads["model"])
    with TestPipeline() as p:
        outputs = predict.build_predict(
            p,
            patterns,
            model,
            Outputs(str(out)),
            RunConfig({"started": 0.0, "note": "x"}, max_error_rate=1.0),
        )
        summary = outputs["manifest"] | beam.Map(
            lambda m: (
                m["status"],
                m["note"],
                m["counts"]["read"],
                m["counts"]["predictions"],
                m["counts"]["errors"],
            )
        )
        assert_that(summary, equal_to([("succeeded", "x", 10, 4, 6)]))
    manifest = json.loads((out / "run.json").read_text())
    shards = glob.glob(str(out / "prediction.results-*")) + glob.glob(str(out / "errors-*"))
    assert manifest["counts"]["model_loads"] == 1 and manifest["outputs_written"] == len(shards) >= 2
    assert json.loads((out / "prediction.errors_stats").read_text())["errors"] == 6
    written = [os.path.getmtime(path) for path in glob.glob(str(out / "*")) if not path.endswith("_SUCCESS")]
    assert os.path.getmtime(out / "_SUCCESS") >= max(written)


def test_keyless_records_nan_values_and_an_uncreatable_output_dir(
    trained_ads, sample_image, tmp_path, capsys
):
    path = tmp_path / "in.jsonl"
    path.write_text(
        "\n".join([
            good_record("ok", sample_image),
            json.dumps({**GOOD, "image": sample_image}),  # no key: nobody could join its prediction back
            good_record("nan-age", sample_image).replace('"age": 30', '"age": NaN'),
            good_record("inf-bid", sample_image).replace('"bid": 2.0', '"bid": Infinity'),
        ]) + "\n"
    )  # fmt: skip
    out = tmp_path / "out"
    manifest = predict.run(
        [
            "--model_dir",
            trained_ads["model"],
            "--input",
            str(path),
            "--output_dir",
            str(out),
            "--max_error_rate",
            "1",
        ]
    )
    assert (manifest["counts"]["read"], manifest["counts"]["errors"]) == (4, 3)
    lines = [line for p in out.glob("errors-*") for line in p.read_text().splitlines()]

    def strict(line):  # bare NaN/Infinity tokens are not JSON
        return json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} in {line}"))

    errors = {e["key"]: e for e in map(strict, lines)}
    assert errors[None]["error"]["code"] == "missing_field" and errors[None]["error"]["field"] == "id"
    assert errors["nan-age"]["instance"]["age"] == "nan" and errors["nan-age"]["error"]["field"] == "age"
    assert errors["inf-bid"]["instance"]["bid"] == "inf"

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    code = cli.main(["predict", "--model_dir", trained_ads["model"], "--input", str(path),
                     "--output_dir", str(blocked / "out")])  # fmt: skip
    assert code == EXIT_USAGE
    assert f"cannot create or clear --output_dir '{blocked / 'out'}'" in capsys.readouterr().err


def test_a_gzip_file_cut_in_half_scores_what_it_holds_and_says_it_was_cut(trained_ads, tmp_path):
    import gzip

    data = open(trained_ads["data"], "rb").read()
    packed = gzip.compress(data)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    out = tmp_path / "out"
    manifest = predict.run(["--model_dir", trained_ads["model"], "--input", str(tmp_path / "cut.jsonl.gz"),
                            "--output_dir", str(out)])  # fmt: skip
    counts = manifest["counts"]
    assert 0 < counts["predictions"] < 600 and counts["errors"] >= 1
    errors = [json.loads(line) for p in out.glob("errors-*") for line in p.read_text().splitlines()]
    cut = [e for e in errors if "ends before its gzip end marker" in e["error"]["message"]]
    assert len(cut) == 1 and cut[0]["source"] == str(tmp_path / "cut.jsonl.gz")
