"""adpredict inside a Beam user's own pipeline: `pipeline.RecordModelHandler` under Beam's
RunInference (plain, keyed, shared across processes) and `pipeline.ScoreRecords`, on a fake
model whose scores are known arithmetic and on the real ads model, against `predict`."""

import glob
import json
import math

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import pipeline
from pipeline import predict
from pipeline.inference.handler import InvalidRecords

RECORDS = [
    {"id": "a-1", "age": 30, "media": "Twitter"},
    {"id": "a-2", "age": 64, "media": "Facebook"},
    {"id": "a-3", "age": 18, "media": "Twitter", "campaign": "spring"},
    {"id": "a-4", "age": 99, "media": "TikTok"},
]


def fake_score(record: dict) -> float:
    """What the fake model says: age / 100, plus 0.5 for Twitter (float32 arithmetic)."""
    import numpy as np

    return float(
        np.float32(record["age"]) / np.float32(100) + np.float32(0.5 if record["media"] == "Twitter" else 0)
    )


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    """A SavedModel of two raw inputs whose score is plain arithmetic, with an adpredict
    description (key `id`, age required in [0, 120], media optional)."""
    import tensorflow as tf

    from transforms.model_contract import InputField, ModelDescription, OutputField

    class Fake(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.int64, name="age"),
                tf.TensorSpec([None], tf.string, name="media"),
            ]
        )
        def score(self, age, media):
            bonus = tf.where(tf.equal(media, "Twitter"), 0.5, 0.0)
            return {"probability": tf.cast(age, tf.float32) / 100.0 + bonus}

    model_dir = str(tmp_path_factory.mktemp("fake") / "model")
    module = Fake()
    tf.saved_model.save(
        module, model_dir, signatures={"serving_default": module.score.get_concrete_function()}
    )
    ModelDescription(
        inputs=(InputField("age", "int", range=(0, 120)), InputField("media", "string", required=False)),
        outputs=(OutputField("probability"),),
        key_field="id",
        batch_size=3,
    ).write(model_dir)
    return model_dir


def results_of(results):
    """PredictionResults (or (key, result) pairs) as plain, comparable values."""
    return [
        (key, result.example["id"], round(result.inference["probability"], 6), result.model_id)
        for key, result in ((None, r) if isinstance(r, PredictionResult) else r for r in results)
    ]


def test_the_public_names_are_the_package_s():
    assert pipeline.ScoreRecords.__module__ == "pipeline.score"
    assert pipeline.RecordModelHandler.__module__ == "pipeline.inference.handler"


def test_the_handler_in_beams_run_inference_plain_and_keyed(fake_model):
    handler = pipeline.RecordModelHandler(fake_model)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 3, "max_batch_size": 3}  # the model's
    expected = [(None, r["id"], round(fake_score(r), 6), fake_model) for r in RECORDS]
    with TestPipeline() as p:
        records = p | beam.Create(RECORDS)
        plain = (
            records
            | "Plain" >> RunInference(handler)
            | "PlainValues" >> beam.Map(lambda r: results_of([r])[0])
        )
        assert_that(plain, equal_to(expected), label="CheckPlain")
        keyed = (
            records
            | beam.Map(lambda r: (r["id"].upper(), r))
            | "Keyed" >> RunInference(KeyedModelHandler(handler))
            | "KeyedValues" >> beam.Map(lambda pair: results_of([pair])[0])
        )
        assert_that(
            keyed,
            equal_to([(r["id"].upper(), *e[1:]) for r, e in zip(RECORDS, expected, strict=True)]),
            label="CheckKeyed",
        )


def test_the_handler_shares_one_model_across_processes(fake_model):
    handler = pipeline.RecordModelHandler(fake_model, model_copies=1)
    assert handler.share_model_across_processes() and handler.model_copies() == 1
    assert pipeline.RecordModelHandler(fake_model, large_model=True).share_model_across_processes()
    assert not pipeline.RecordModelHandler(fake_model).share_model_across_processes()
    with TestPipeline() as p:
        scored = (
            p
            | beam.Create(RECORDS)
            | RunInference(handler)
            | beam.Map(lambda r: (r.example["id"], round(r.inference["probability"], 6)))
        )
        assert_that(scored, equal_to([(r["id"], round(fake_score(r), 6)) for r in RECORDS]))


def test_the_handler_cuts_model_calls_by_bytes_and_names_bad_records(fake_model):
    handler = pipeline.RecordModelHandler(fake_model, batch_size=100, max_batch_bytes=20)
    calls = []

    class Counting:
        def __init__(self, model):
            self._model = model

        def predict(self, batch):
            calls.append(batch.num_rows)
            return self._model.predict(batch)

    records = [{**RECORDS[0], "id": f"a-{i}", "media": "x" * 8} for i in range(10)]
    results = list(handler.run_inference(records, Counting(handler.load_model())))
    assert [r.example["id"] for r in results] == [f"a-{i}" for i in range(10)]
    assert calls == [2, 2, 2, 2, 2]  # 8 + 8 bytes of media fit in 20, a third would not
    bad = [
        RECORDS[0],
        {"id": "old", "age": "old", "media": "Twitter"},
        {"id": "young", "age": -4},
        "not a record",
    ]
    with pytest.raises(InvalidRecords) as raised:
        handler.run_inference(bad, handler.load_model())
    message = str(raised.value)
    assert message.startswith(
        "3 of 4 records cannot be scored: record RunInference:2 (key 'old'): field 'age' must be"
    )
    assert (
        "record RunInference:3 (key 'young'): field 'age' is -4, outside the valid range [0, 120]" in message
    )
    assert "record RunInference:4" in message and "with_exception_handling()" in message
    assert [e["error"]["code"] for e in raised.value.errors] == [
        "wrong_type",
        "out_of_range",
        "malformed_record",
    ]


def test_score_records_gives_every_record_one_prediction_or_one_error(fake_model):
    bad = [
        {"id": "no-age", "media": "Twitter"},
        {"id": "old", "age": "old", "media": "Twitter"},
        {"id": "nan", "age": 5, "media": math.nan},
        ["not", "a", "record"],
    ]
    scorer = pipeline.ScoreRecords(fake_model, passthrough_fields="campaign")
    with TestPipeline() as p:
        scored = p | beam.Create(RECORDS + bad) | scorer
        predictions = scored["predictions"] | beam.Map(
            lambda row: (sorted(row), row["key"], round(row["prediction"]["probability"], 5), row["campaign"])
        )
        expected = [
            (["campaign", "key", "prediction"], r["id"], round(fake_score(r), 5), r.get("campaign"))
            for r in RECORDS
        ]
        assert_that(predictions, equal_to(expected), label="CheckPredictions")
        kinds = scored["errors"] | beam.Map(lambda e: (e["key"], e["error"]["code"], e["error"]["field"]))
        assert_that(
            kinds,
            equal_to(
                [
                    ("no-age", "missing_field", "age"),
                    ("old", "wrong_type", "age"),
                    ("nan", "malformed_record", None),
                    (None, "malformed_record", None),
                ]
            ),
            label="CheckErrors",
        )


def test_score_records_in_a_pipeline_reading_with_beam_equals_adpredict_predict(trained_ads, tmp_path):
    """The real model: Beam's own ReadFromText + json.loads, then ScoreRecords; per key the
    same predictions and error records as `adpredict predict` on the same file."""
    from pipeline.sampledata.generate import generate_file

    data = tmp_path / "ads.jsonl"
    generate_file(str(data), 300, seed=21, first_id=5000)
    lines = data.read_text().splitlines()
    lines[7] = lines[7].replace('"age":', '"age_years":')  # a record missing a required field
    data.write_text("\n".join(lines) + "\n")
    manifest = predict.run(
        [
            "--model_dir",
            trained_ads["model"],
            "--input",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_error_rate",
            "1",
        ]
    )
    assert manifest["counts"]["predictions"] == 299 and manifest["counts"]["errors"] == 1
    expected = [
        json.loads(line)
        for path in glob.glob(str(tmp_path / "out" / "prediction.results-*"))
        for line in open(path)
    ]
    expected_errors = [
        json.loads(line) for path in glob.glob(str(tmp_path / "out" / "errors-*")) for line in open(path)
    ]

    written = tmp_path / "library"
    with TestPipeline() as p:
        scored = (
            p
            | beam.io.ReadFromText(str(data))
            | beam.Map(json.loads)
            | pipeline.ScoreRecords(trained_ads["model"])
        )
        (
            scored["predictions"]
            | "Predictions" >> beam.Map(json.dumps)
            | "WritePredictions" >> beam.io.WriteToText(str(written / "predictions"))
        )
        (
            scored["errors"]
            | "Errors" >> beam.Map(json.dumps)
            | "WriteErrors" >> beam.io.WriteToText(str(written / "errors"))
        )
    got = [json.loads(line) for path in glob.glob(str(written / "predictions*")) for line in open(path)]
    got_errors = [json.loads(line) for path in glob.glob(str(written / "errors*")) for line in open(path)]
    by_key = {p["key"]: p["prediction"]["probability"] for p in expected}
    assert sorted(p["key"] for p in got) == sorted(by_key) and len(got) == 299
    for prediction in got:
        assert prediction["prediction"]["probability"] == pytest.approx(
            by_key[prediction["key"]], rel=1e-5, abs=1e-7
        )
    assert [(e["key"], e["error"]) for e in got_errors] == [(e["key"], e["error"]) for e in expected_errors]


def test_the_handler_on_the_real_model_equals_adpredict_predict(trained_ads, tmp_path):
    from pipeline.sampledata.generate import generate_records
    from transforms.schema import load_schema

    records = list(generate_records(load_schema("ads"), 50, seed=23))
    data = tmp_path / "ads.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    predict.run(
        ["--model_dir", trained_ads["model"], "--input", str(data), "--output_dir", str(tmp_path / "out")]
    )
    expected = {
        row["key"]: row["prediction"]["probability"]
        for path in glob.glob(str(tmp_path / "out" / "prediction.results-*"))
        for row in map(json.loads, open(path))
    }
    with TestPipeline() as p:
        scored = (
            p
            | beam.Create(records)
            | RunInference(pipeline.RecordModelHandler(trained_ads["model"], batch_size=16))
            | beam.Map(lambda r: (r.example["id"], r.inference["probability"]))
        )

        def check(pairs):
            assert len(pairs) == 50 and {key for key, _ in pairs} == set(expected)
            for key, probability in pairs:
                assert probability == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key

        assert_that(scored, check)


def test_a_prediction_result_carries_the_models_named_outputs(fake_model):
    handler = pipeline.RecordModelHandler(fake_model)
    (result,) = handler.run_inference([RECORDS[1]], handler.load_model())
    assert isinstance(result, PredictionResult) and result.example is RECORDS[1]
    assert result.inference == {"probability": pytest.approx(0.64)} and result.model_id == fake_model
