"""Batch inference with the all-in-one SavedModel, loaded once per worker process.

Arrow columns become tensors without a Python loop per record; the model's own
tf.Transform graph does the rest. If TensorFlow rejects a batch (e.g. an image that
passed validation but is corrupt further in), the batch is re-run record by record so the
culprit becomes one error record and the others are still scored.
"""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from apache_beam.utils import shared

from pipeline import METRICS_NAMESPACE, errors
from pipeline.sources import RecordBlock, RecordLayout, with_missing_marked
from pipeline.validation import record_keys
from transforms.model_contract import RAW_SIGNATURE, InputField, ModelDescription


@dataclasses.dataclass
class ScoredBlock:
    """Model outputs for the rows of one block, in row order."""

    keys: list
    outputs: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


class LoadedModel:
    """A SavedModel's raw-input signature plus its description; one per process."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.description = ModelDescription.read(model_dir)
        self._saved_model = tf.saved_model.load(model_dir)
        self._signature = self._saved_model.signatures[RAW_SIGNATURE]
        self.load_reported = False

    def predict(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        inputs = model_inputs(batch, self.description.inputs)
        outputs = self._signature(**inputs)
        result = {}
        for name, tensor in outputs.items():
            value = tensor.numpy()
            result[name] = (
                value.reshape(len(value), -1)[:, 0] if value.ndim == 2 and value.shape[1] == 1 else value
            )
        return result


def model_inputs(batch: pa.RecordBatch, fields: tuple[InputField, ...]) -> dict:
    """Arrow columns -> the tensors `serving_default` takes, with missing values marked."""
    inputs = {}
    for field in fields:
        column = batch.column(field.name)
        if field.type == "string_list":
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
            row_splits = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
            flat = column.flatten().to_numpy(zero_copy_only=False)
            ragged = tf.RaggedTensor.from_row_splits(tf.constant(flat, tf.string), row_splits)
            inputs[field.name] = ragged.to_tensor(default_value="")
        else:
            values = with_missing_marked(column, field).to_numpy(zero_copy_only=False)
            dtype = {"int": tf.int64, "float": tf.float32}.get(field.type, tf.string)
            inputs[field.name] = tf.constant(values, dtype)
    return inputs


class RunInferenceFn(beam.DoFn):
    """Scores RecordBlocks in batches of `batch_size`; emits ScoredBlocks and error records."""

    ERRORS = "errors"

    def __init__(self, model_dir: str, layout: RecordLayout, batch_size: int, shared_handle=None):
        self._model_dir = model_dir
        self._layout = layout
        self._batch_size = batch_size
        self._shared_handle = shared_handle or shared.Shared()
        self._model: LoadedModel | None = None
        self._model_loads = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "model_loads")
        self._batches = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "model_batches")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_inference_failed")

    def setup(self):
        model_dir = self._model_dir
        self._model = self._shared_handle.acquire(lambda: LoadedModel(model_dir), tag=model_dir)

    def process(self, block: RecordBlock):
        if not self._model.load_reported:
            self._model.load_reported = True
            self._model_loads.inc()
        keys = record_keys(block, self._layout)
        for start in range(0, len(block), self._batch_size):
            batch = block.batch.slice(start, self._batch_size)
            batch_keys = keys[start : start + self._batch_size]
            self._batches.inc()
            try:
                yield ScoredBlock(batch_keys, self._model.predict(batch))
            except tf.errors.OpError:
                yield from self._score_one_by_one(block, batch, batch_keys, start)

    def _score_one_by_one(self, block, batch, batch_keys, start):
        kept_keys, kept_outputs = [], []
        for row in range(batch.num_rows):
            try:
                kept_outputs.append(self._model.predict(batch.slice(row, 1)))
                kept_keys.append(batch_keys[row])
            except tf.errors.OpError as e:
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(
                    self.ERRORS, _inference_error(block, start + row, batch_keys[row], e)
                )
        if kept_keys:
            names = kept_outputs[0].keys()
            yield ScoredBlock(kept_keys, {n: np.concatenate([o[n] for o in kept_outputs]) for n in names})


def _inference_error(block: RecordBlock, row: int, key, error: Exception) -> dict:
    record = block.batch.slice(row, 1).to_pylist()[0]
    line = record.pop("__line__")
    message = str(getattr(error, "message", error)).strip().splitlines()[0][:300]
    logging.warning("record %s:%s failed inference: %s", block.source, line, message)
    return errors.error_record(
        source=f"{block.source}:{line}",
        code=errors.INFERENCE_FAILED,
        message=f"the model could not score this record: {message}",
        key=key,
        instance={k: v for k, v in record.items() if v is not None},
    )
