"""Faults while scoring, with the real trained model: out of memory, records TensorFlow rejects.

Faults are injected around the real `LoadedModel.predict` (it raises for the batches a
test picks and scores all others), so every prediction still comes from the model.
"""

import base64
import glob
import json
import logging
import random

import pytest
import tensorflow as tf

from pipeline import predict
from pipeline.inference.failures import tf_error_reason
from pipeline.inference.model import LoadedModel

OOM_MESSAGE = "OOM when allocating tensor with shape[16,64,64,3] and type float"


def inject_faults(monkeypatch, fault):
    """Wraps the real model: `fault(keys of a batch)` returns an exception to raise, or None.

    Returns the row counts of every model call, faulted or not."""
    real_predict = LoadedModel.predict
    calls = []

    def predict_or_fail(self, batch):
        keys = batch.column("id").to_pylist()
        calls.append(len(keys))
        error = fault(keys)
        if error is not None:
            raise error
        return real_predict(self, batch)

    monkeypatch.setattr(LoadedModel, "predict", predict_or_fail)
    return calls


def score(trained_ads, records, out, *flags):
    """Runs the predict pipeline on `records`; (manifest, {key: probability}, error records)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = predict.run(
        [
            "--model_dir",
            trained_ads["model"],
            "--input",
            str(path),
            "--output_dir",
            str(out / "out"),
            "--max_error_rate",
            "1",
            *flags,
        ]  # fmt: skip
    )
    rows = [
        json.loads(line) for p in glob.glob(str(out / "out" / "prediction.results-*")) for line in open(p)
    ]
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)), "a record was predicted twice"
    errors = [json.loads(line) for p in glob.glob(str(out / "out" / "errors-*")) for line in open(p)]
    return manifest, {row["key"]: row["prediction"]["probability"] for row in rows}, errors


def assert_same_predictions(predictions, reference):
    assert sorted(predictions) == sorted(reference)
    for key, probability in predictions.items():
        assert probability == pytest.approx(reference[key], abs=1e-6), key


@pytest.mark.parametrize(
    "error",
    [tf.errors.ResourceExhaustedError(None, None, OOM_MESSAGE), MemoryError()],
    ids=["ResourceExhaustedError", "MemoryError"],
)
def test_out_of_memory_halves_the_batch_size_and_scores_every_record_once(
    error, trained_ads, score_records, reference_predictions, monkeypatch, caplog, tmp_path
):
    calls = inject_faults(monkeypatch, lambda keys: error if len(keys) > 3 else None)
    with caplog.at_level(logging.WARNING):
        manifest, predictions, errors = score(trained_ads, score_records, tmp_path, "--batch_size", "16")

    assert errors == []
    assert_same_predictions(predictions, reference_predictions)
    counts = manifest["counts"]
    assert (counts["read"], counts["predictions"], counts["errors"]) == (50, 50, 0)
    # 50 rows at 16 -> batches of 12, 13, 12, 13. The first 12 run out: batch size 6; its
    # halves (6) run out: 3, which fits. Batches cut at 16 before that are only re-cut.
    assert counts["batch_size_halvings"] == 2
    assert manifest["status"] == "succeeded"
    assert calls[-1] <= 3 and len(calls) < 40
    halvings = [r for r in caplog.records if "Out of memory scoring" in r.getMessage()]
    assert [r.levelno for r in halvings] == [logging.WARNING] * 2
    assert "from 16 to 6" in halvings[0].getMessage() and "from 6 to 3" in halvings[1].getMessage()
    assert str(tmp_path / "in.jsonl") in halvings[0].getMessage()


def test_a_record_out_of_memory_even_alone_is_one_error_and_the_run_goes_on(
    trained_ads, score_records, reference_predictions, monkeypatch, caplog, tmp_path
):
    oom = tf.errors.ResourceExhaustedError(None, None, OOM_MESSAGE)
    calls = inject_faults(monkeypatch, lambda keys: oom if "ad-9017" in keys else None)
    with caplog.at_level(logging.WARNING):
        manifest, predictions, errors = score(trained_ads, score_records, tmp_path, "--batch_size", "16")

    assert [(e["key"], e["error"]["code"], e["error"]["field"]) for e in errors] == [
        ("ad-9017", "inference_failed", None)
    ]
    message = errors[0]["error"]["message"]
    assert "out of memory" in message and "batch size 1" in message and OOM_MESSAGE in message
    assert errors[0]["source"] == f"{tmp_path / 'in.jsonl'}:18"
    assert_same_predictions(predictions, {k: v for k, v in reference_predictions.items() if k != "ad-9017"})
    counts = manifest["counts"]
    assert (counts["read"], counts["predictions"], counts["errors"]) == (50, 49, 1)
    # Rows 12-24 (13) hold ad-9017: 16 -> 7 -> 3 -> 2 -> 1, then it fails alone.
    assert counts["batch_size_halvings"] == 4
    assert calls.count(1) >= 1 and len(calls) < 60  # ends: no endless retries at size 1
    assert any("from 2 to 1" in r.getMessage() for r in caplog.records)


def corrupt_jpeg() -> str:
    """Valid base64 with the JPEG signature (it passes validation), garbage after it."""
    garbage = random.Random(5).randbytes(600)
    image = base64.b64encode(b"\xff\xd8\xff\xe0" + garbage).decode()
    assert image.startswith("/9j/")
    return image


def test_a_corrupt_jpeg_error_names_the_decoder_message_and_the_image_field(
    trained_ads, score_records, reference_predictions, tmp_path
):
    records = [*score_records[:3], {**score_records[3], "id": "corrupt", "image": corrupt_jpeg()}]
    manifest, predictions, errors = score(trained_ads, records, tmp_path)

    assert [(e["key"], e["error"]["code"], e["error"]["field"]) for e in errors] == [
        ("corrupt", "inference_failed", "image")
    ]
    message = errors[0]["error"]["message"]
    assert message.startswith("the model rejected this record alone: ")
    assert "JPEG" in message and "check its image bytes" in message, message
    for noise in ("Graph execution error", "Detected at node", "[[{{node", "[Op:"):
        assert noise not in message, message
    assert len(message) < 500
    assert_same_predictions(predictions, {r["id"]: reference_predictions[r["id"]] for r in records[:3]})
    assert "batch_size_halvings" not in manifest["counts"]  # a rejected record is not a memory shortage


def test_the_error_reason_is_the_op_message_without_traceback_or_node_tags():
    """A real TensorFlow error with a definition traceback, from a Python tf.function."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])  # shape known only at run time
    def reshape(x):
        return tf.reshape(x, [2, 2]) + 1

    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        reshape(tf.constant([1, 2, 3]))
    assert caught.value.message.startswith("Graph execution error:")
    assert "File " in caught.value.message  # the traceback the reason leaves out
    reason = tf_error_reason(caught.value)
    assert reason.startswith("Input to reshape is a tensor with 3 values"), reason
    assert "File " not in reason and "{{node" not in reason and "[Op:" not in reason
    assert tf_error_reason(tf.errors.InvalidArgumentError(None, None, "x" * 1000)) == "x" * 297 + "..."
    assert tf_error_reason(MemoryError()) == "MemoryError"
