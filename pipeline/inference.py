"""Batch inference with the all-in-one SavedModel, loaded once per worker process.

Arrow columns become tensors without a Python loop per record; the model's own
tf.Transform graph does the rest. If TensorFlow rejects a batch (e.g. an image that
passed validation but is corrupt further in), the batch is re-run record by record so the
culprit becomes one error record and the others are still scored.
"""

from __future__ import annotations

import concurrent.futures
import logging

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from apache_beam.utils import shared

from pipeline import METRICS_NAMESPACE, errors
from pipeline.blocks import RecordBlock, RecordLayout, ScoredBlock, string_buffer, with_missing_marked
from pipeline.validation import record_keys
from transforms.model_contract import RAW_SIGNATURE, InputField, ModelDescription

CONCURRENT_CALLS = 2


class LoadedModel:
    """A SavedModel's raw-input `signature` plus its description; one per process."""

    def __init__(self, model_dir: str, tf_threads: int | None = None):
        if tf_threads:
            set_tf_threads(tf_threads)
        self.model_dir = model_dir
        self.description = ModelDescription.read(model_dir)
        self._saved_model = tf.saved_model.load(model_dir)
        self.signature = self._saved_model.signatures[RAW_SIGNATURE]
        self.load_reported = False
        # Model calls release the GIL; two in flight keep both cores busy while one batch
        # is converted or its graph runs a serial part (image decoding in tf.map_fn).
        self.calls = concurrent.futures.ThreadPoolExecutor(
            CONCURRENT_CALLS, thread_name_prefix="adpredict-model"
        )

    def predict(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        inputs = model_inputs(batch, self.description.inputs)
        outputs = self.signature(**inputs)
        result = {}
        for name, tensor in outputs.items():
            value = tensor.numpy()
            result[name] = (
                value.reshape(len(value), -1)[:, 0] if value.ndim == 2 and value.shape[1] == 1 else value
            )
        return result


def set_tf_threads(threads: int) -> None:
    """Caps TensorFlow's thread pools for this process (only possible before its first op)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            logging.warning(
                "TensorFlow already started in this process; --tf_threads %d not applied", threads
            )


def model_inputs(batch: pa.RecordBatch, fields: tuple[InputField, ...]) -> dict:
    """Arrow columns -> the tensors `serving_default` takes, with missing values marked."""
    inputs = {}
    for field in fields:
        column = batch.column(field.name)
        if field.type == "string_list":
            inputs[field.name] = padded_string_lists(column)
        elif field.type in ("string", "image"):
            inputs[field.name] = string_tensor(with_missing_marked(column, field))
        else:
            values = with_missing_marked(column, field).to_numpy(zero_copy_only=False)
            inputs[field.name] = tf.constant(values, tf.int64 if field.type == "int" else tf.float32)
    return inputs


def padded_string_lists(column: pa.Array) -> tf.Tensor:
    """A list<string> column as a [rows, longest list] tf.string matrix padded with "".

    The padding is one numpy index matrix and one `tf.gather`; going through
    `tf.RaggedTensor` costs milliseconds of Python per batch.
    """
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.fill_null(pc.list_flatten(column), "")
    longest = int(lengths.max()) if len(lengths) else 0
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) if len(lengths) else lengths
    positions = np.arange(longest, dtype=np.int64)
    index = starts[:, None] + positions[None, :]
    index[positions[None, :] >= lengths[:, None]] = len(flat)  # points at the "" appended below
    values = tf.concat([string_tensor(flat), tf.constant([""])], axis=0)
    return tf.gather(values, index)


def string_tensor(column: pa.Array) -> tf.Tensor:
    """A null-free Arrow string column as a tf.string vector, with no Python object per value.

    The column's data buffer becomes one scalar string and `tf.strings.substr` cuts it at
    the Arrow offsets (about 3x faster than going through a numpy object array).
    """
    data, offsets = string_buffer(column)
    return tf.strings.substr(tf.constant(data), offsets[:-1], np.diff(offsets))


class RunInferenceFn(beam.DoFn):
    """Scores RecordBlocks in batches of `batch_size`; emits ScoredBlocks and error records,
    and ("model_loads" | "model_batches", n) pairs on `counts` for the run manifest."""

    ERRORS = "errors"
    COUNTS = "counts"

    def __init__(
        self,
        model_dir: str,
        layout: RecordLayout,
        batch_size: int,
        shared_handle=None,
        tf_threads: int | None = None,
    ):
        self._model_dir = model_dir
        self._layout = layout
        self._batch_size = batch_size
        self._tf_threads = tf_threads
        self._shared_handle = shared_handle or shared.Shared()
        self._model: LoadedModel | None = None
        self._model_loads = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "model_loads")
        self._batches = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "model_batches")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_inference_failed")

    def setup(self):
        model_dir, threads = self._model_dir, self._tf_threads
        self._model = self._shared_handle.acquire(lambda: LoadedModel(model_dir, threads), tag=model_dir)

    def process(self, block: RecordBlock):
        if not self._model.load_reported:
            self._model.load_reported = True
            self._model_loads.inc()
            yield beam.pvalue.TaggedOutput(self.COUNTS, ("model_loads", 1))
        keys = record_keys(block, self._layout)
        passthrough = (
            block.batch.select(list(self._layout.passthrough_names)) if self._layout.passthrough else None
        )
        batches = [
            (start, block.batch.slice(start, size))
            for start, size in batch_slices(len(block), self._batch_size)
        ]
        calls = [self._model.calls.submit(self._model.predict, batch) for _, batch in batches]
        yield beam.pvalue.TaggedOutput(self.COUNTS, ("model_batches", len(batches)))
        scored = []
        for (start, batch), call in zip(batches, calls, strict=True):
            batch_keys = keys.slice(start, batch.num_rows)
            batch_passthrough = None if passthrough is None else passthrough.slice(start, batch.num_rows)
            self._batches.inc()
            try:
                scored.append(ScoredBlock(batch_keys, call.result(), batch_passthrough))
            except tf.errors.OpError:
                kept = yield from self._isolate_failures(block, batch, batch_keys, start)
                if kept is not None:
                    rows, outputs = kept
                    all_rows = ScoredBlock(batch_keys, {}, batch_passthrough).take(rows)
                    scored.append(ScoredBlock(all_rows.keys, outputs, all_rows.passthrough))
        if scored:
            yield ScoredBlock.concatenated(scored)

    def _isolate_failures(self, block, batch, batch_keys, start):
        """Finds the rows of a batch TensorFlow rejected by bisection: halves that score are
        kept, halves that fail are split again, so one bad record costs O(log n) model calls,
        not one call per row of a 65,536-row batch. Returns (rows that scored, outputs)."""
        kept_rows, kept_outputs = [], []
        pending = [(0, batch.num_rows)]
        while pending:
            offset, size = pending.pop()
            try:
                outputs = self._model.predict(batch.slice(offset, size))
            except tf.errors.OpError as e:
                if size > 1:
                    half = size // 2
                    pending += [(offset + half, size - half), (offset, half)]  # first half next
                    continue
                self._failed.inc()
                key = batch_keys[offset].as_py()
                yield beam.pvalue.TaggedOutput(self.ERRORS, _inference_error(block, start + offset, key, e))
                continue
            kept_rows.extend(range(offset, offset + size))
            kept_outputs.append(outputs)
        if not kept_rows:
            return None
        names = kept_outputs[0].keys()
        return kept_rows, {n: np.concatenate([o[n] for o in kept_outputs]) for n in names}


def batch_slices(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, size) of as few batches as `batch_size` allows, of near-equal sizes.

    Equal sizes avoid a tiny last batch: a model call has a fixed cost (9 ms for the
    light benchmark model) that a 1,000-row remainder pays in full.
    """
    if rows <= 0:
        return []
    count = -(-rows // batch_size)
    bounds = [rows * i // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(count)]


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
