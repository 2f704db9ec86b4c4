"""Batch inference with the all-in-one SavedModel, loaded once per worker process.

Arrow columns become tensors without a Python loop per record; the model's own
tf.Transform graph does the rest. If TensorFlow rejects a batch (e.g. an image that
passed validation but is corrupt further in), the batch is searched by bisection so the
culprit becomes one error record and the others are still scored. If it runs out of
memory, the batch size is halved for the rest of the run and the batch scored in halves;
a record that runs out of memory alone becomes an error record, so the run never loops.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from pipeline import METRICS_NAMESPACE, errors, progress
from pipeline.blocks import (
    RecordBlock,
    RecordLayout,
    ScoredBlock,
    as_list_columns,
    string_buffer,
    with_missing_marked,
)
from pipeline.options import DEFAULT_MAX_BATCH_BYTES
from pipeline.validation import record_keys
from transforms.model_contract import InputField, ModelDescription
from transforms.signature_reader import describe_model

CONCURRENT_CALLS = 2

# Errors that mean "this batch needs less memory", not "the model rejects a record".
OUT_OF_MEMORY = (tf.errors.ResourceExhaustedError, MemoryError)
BATCH_SIZE_HALVINGS = progress.BATCH_SIZE_HALVINGS
# Most padded list cells (rows x longest list) in one model call: 4M strings, ~130 MB.
MAX_PADDED_LIST_CELLS = 1 << 22
# Input types whose values vary in size, counted against --max_batch_bytes.
SIZED_TYPES = ("string", "image", "string_list")


class LoadedModel:
    """A SavedModel's scoring signature plus its description; one per process."""

    def __init__(
        self, model_dir: str, tf_threads: int | None = None, description: ModelDescription | None = None
    ):
        if tf_threads:
            set_tf_threads(tf_threads)
        self.model_dir = model_dir
        self.description = description or describe_model(model_dir)
        self._saved_model = tf.saved_model.load(model_dir)
        self.signature = self._saved_model.signatures[self.description.signature]
        # What the signature takes, by name: a tensor is cast / reshaped to it if the record
        # type's natural tensor differs (int32 inputs, [N, 1] Keras inputs).
        self._specs = self.signature.structured_input_signature[1]
        self.load_reported = False
        # Model calls release the GIL; two in flight keep both cores busy while one batch
        # is converted or its graph runs a serial part (image decoding in tf.map_fn).
        self.calls = concurrent.futures.ThreadPoolExecutor(
            CONCURRENT_CALLS, thread_name_prefix="adpredict-model"
        )

    def predict(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        description = self.description
        if description.example_input:
            inputs = {description.example_input: tf.constant(serialized_examples(batch, description.inputs))}
        else:
            inputs = fitted_to(model_inputs(batch, description.inputs), self._specs)
        outputs = self.signature(**inputs)
        return {output.name: output_values(outputs[output.name]) for output in description.outputs}


def fitted_to(inputs: dict, specs: dict) -> dict:
    """Each tensor cast to its spec's dtype and given a trailing 1 if the spec wants [N, 1]."""
    fitted = {}
    for name, tensor in inputs.items():
        spec = specs.get(name)
        if spec is not None:
            if tensor.dtype != spec.dtype:
                tensor = tf.cast(tensor, spec.dtype)
            if spec.shape.rank == 2 and tensor.shape.rank == 1:
                tensor = tf.expand_dims(tensor, 1)
        fitted[name] = tensor
    return fitted


def output_values(tensor: tf.Tensor) -> np.ndarray:
    """One output as numpy, a row per record: [N] and [N, 1] are 1-D, [N, k, ...] is [N, k*...]
    (row-major), strings are bytes objects."""
    value = tensor.numpy()
    if value.ndim == 0:
        value = value.reshape(1)
    if value.ndim == 2 and value.shape[1] == 1:
        return value[:, 0]
    if value.ndim > 2:
        return value.reshape(len(value), -1)
    return value


def serialized_examples(batch: pa.RecordBatch, fields: tuple[InputField, ...]) -> list[bytes]:
    """The batch's input fields as serialized tf.Examples, encoded in C++ by tfx_bsl.

    A missing optional value is left out of its Example, so the model's parsing op applies
    its own default; an empty string list is an empty bytes_list.
    """
    from tfx_bsl.coders import example_coder

    columns = as_list_columns([batch.column(f.name) for f in fields])
    return example_coder.RecordBatchToExamplesEncoder().encode(
        pa.RecordBatch.from_arrays(columns, [f.name for f in fields])
    )


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


@dataclasses.dataclass
class _InFlight:
    """A block whose batches are with the model: (start row, batch) and the call of each."""

    block: RecordBlock
    batches: list
    calls: list


class RunInferenceFn(beam.DoFn):
    """Scores RecordBlocks in batches of `batch_size`; emits ScoredBlocks and error records
    (its own and those of the reading step, which arrive on the same stream),
    and ("model_loads" | "model_batches" | "batch_size_halvings", n) pairs on `counts` for
    the run manifest."""

    ERRORS = "errors"
    COUNTS = "counts"

    def __init__(
        self,
        model_dir: str,
        layout: RecordLayout,
        batch_size: int,
        shared_handle=None,
        tf_threads: int | None = None,
        description: ModelDescription | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ):
        self._model_dir = model_dir
        self._max_batch_bytes = max_batch_bytes
        self._sized_fields = [f.name for f in layout.fields if f.type in SIZED_TYPES]
        self._description = description
        self._layout = layout
        self._list_fields = [f.name for f in layout.fields if f.type == "string_list"]
        self._batch_size = batch_size
        self._tf_threads = tf_threads
        self._shared_handle = shared_handle or shared.Shared()
        self._model: LoadedModel | None = None
        self._model_loads = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.MODEL_LOADS)
        self._batches = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.MODEL_BATCHES)
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.RECORDS_INFERENCE_FAILED)
        self._halvings = beam.metrics.Metrics.counter(METRICS_NAMESPACE, BATCH_SIZE_HALVINGS)

    def setup(self):
        model_dir, threads, description = self._model_dir, self._tf_threads, self._description
        self._model = self._shared_handle.acquire(
            lambda: LoadedModel(model_dir, threads, description), tag=model_dir
        )

    def start_bundle(self):
        self._in_flight = None

    def process(self, block: RecordBlock | list):
        """Sends `block`'s batches to the model, then finishes the block sent before it.

        One block stays in flight: while the model scores this one, the previous one's
        results go downstream (formatting and writing run on this thread), so neither the
        model nor this thread waits for the other.
        """
        if isinstance(block, list):  # error records from reading: passed on, see ReadAdRecords
            yield beam.pvalue.TaggedOutput(self.ERRORS, block)
            return
        if not self._model.load_reported:
            self._model.load_reported = True
            self._model_loads.inc()
            yield beam.pvalue.TaggedOutput(self.COUNTS, ("model_loads", 1))
        previous, self._in_flight = self._in_flight, self._send(block)
        yield beam.pvalue.TaggedOutput(self.COUNTS, ("model_batches", len(self._in_flight.calls)))
        if previous is not None:
            yield from self._finish(previous)

    def finish_bundle(self):
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            for output in self._finish(in_flight):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def _send(self, block: RecordBlock) -> _InFlight:
        slices = narrow_batches(block.batch, batch_slices(len(block), self._batch_size), self._list_fields)
        slices = byte_bounded(block.batch, slices, self._sized_fields, self._max_batch_bytes)
        batches = [(start, block.batch.slice(start, size)) for start, size in slices]
        calls = [self._model.calls.submit(self._model.predict, batch) for _, batch in batches]
        return _InFlight(block, batches, calls)

    def _finish(self, sent: _InFlight):
        """The ScoredBlock of a block sent to the model, once its calls are done; error records
        for the records the model rejects alone."""
        block, batches, calls = sent.block, sent.batches, sent.calls
        keys = record_keys(block, self._layout)
        passthrough = (
            block.batch.select(list(self._layout.passthrough_names)) if self._layout.passthrough else None
        )
        scored = []
        for index, ((start, batch), call) in enumerate(zip(batches, calls, strict=True)):
            batch_keys = keys.slice(start, batch.num_rows)
            batch_passthrough = None if passthrough is None else passthrough.slice(start, batch.num_rows)
            self._batches.inc()
            try:
                scored.append(ScoredBlock(batch_keys, call.result(), batch_passthrough))
                continue
            except concurrent.futures.CancelledError:
                failed = None  # not sent: cut at a batch size that has since been halved
            except OUT_OF_MEMORY as e:
                failed = e
                for later in calls[index + 1 :]:
                    later.cancel()  # queued at the old size: would run out of memory too
            except tf.errors.OpError as e:
                failed = e
            kept = yield from self._isolate_failures(block, batch, batch_keys, start, failed)
            if kept is not None:
                rows, outputs = kept
                all_rows = ScoredBlock(batch_keys, {}, batch_passthrough).take(rows)
                scored.append(ScoredBlock(all_rows.keys, outputs, all_rows.passthrough))
        if scored:
            done = ScoredBlock.concatenated(scored)
            progress.add(scored=len(done))
            yield done

    def _isolate_failures(self, block, batch, batch_keys, start, failed: BaseException | None = None):
        """Scores a batch that failed (with `failed`, or not yet sent) piece by piece.

        A rejected piece is bisected: halves that score are kept, halves that fail are
        split again, so one bad record costs O(log n) model calls, not one per row of a
        65,536-row batch. A piece that runs out of memory halves the batch size for the
        rest of the run and is re-cut at it. A single record that still fails becomes an
        error record. Returns (rows that scored, outputs), or None if none did.
        """
        kept_rows, kept_outputs = [], []
        pending = [(0, batch.num_rows, failed)]
        while pending:
            offset, size, error = pending.pop()
            if error is None:
                if size > self._batch_size:
                    pieces = batch_slices(size, self._batch_size)
                    pending += [(offset + at, rows, None) for at, rows in reversed(pieces)]
                    continue
                try:
                    outputs = self._model.predict(batch.slice(offset, size))
                except (*OUT_OF_MEMORY, tf.errors.OpError) as e:
                    error = e
                else:
                    kept_rows.extend(range(offset, offset + size))
                    kept_outputs.append(outputs)
                    continue
            if size > 1:
                if isinstance(error, OUT_OF_MEMORY):
                    if self._halve_batch_size(size, block.source, error):
                        yield beam.pvalue.TaggedOutput(self.COUNTS, (BATCH_SIZE_HALVINGS, 1))
                    pending.append((offset, size, None))  # re-cut at the new batch size
                else:
                    half = size // 2
                    pending += [(offset + half, size - half, None), (offset, half, None)]  # first half next
                continue
            self._failed.inc()
            progress.add(errors=1)
            key = batch_keys[offset].as_py()
            error_record = _inference_error(block, start + offset, key, error, self._layout)
            yield beam.pvalue.TaggedOutput(self.ERRORS, [error_record])
        if not kept_rows:
            return None
        names = kept_outputs[0].keys()
        return kept_rows, {n: np.concatenate([o[n] for o in kept_outputs]) for n in names}

    def _halve_batch_size(self, rows: int, source: str, error: BaseException) -> bool:
        """After `rows` records ran out of memory: half of them is the batch size from now on.

        A batch cut before an earlier halving (in flight beside the one that ran out first)
        is only re-cut, so one shortage halves once. Returns whether it halved.
        """
        if rows > self._batch_size:
            return False
        old, self._batch_size = self._batch_size, max(1, (rows + 1) // 2)
        self._halvings.inc()
        logging.warning(
            "Out of memory scoring %d records of %s (%s); halving the batch size "
            "from %d to %d for the rest of this worker's run and scoring them again in halves",
            rows,
            source,
            tf_error_reason(error, 120),
            old,
            self._batch_size,
        )
        return True


def narrow_batches(
    batch: pa.RecordBatch, slices: list[tuple[int, int]], list_fields
) -> list[tuple[int, int]]:
    """`slices`, with any batch whose padded list matrices pass MAX_PADDED_LIST_CELLS halved.

    A list feature is fed to the model as a [rows, longest list] matrix, so one record with
    a long list would make its whole batch that wide (a 1,000-item list in a 65,536-row
    batch: 65M padded strings, gigabytes). Only the batches holding such a record are cut.
    """
    if not list_fields or not slices:
        return slices
    lengths = sum(
        pc.fill_null(pc.list_value_length(batch.column(name)), 0)
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
        for name in list_fields
    )
    narrowed, pending = [], list(reversed(slices))
    while pending:
        start, size = pending.pop()
        if size > 1 and size * int(lengths[start : start + size].max()) > MAX_PADDED_LIST_CELLS:
            half = size // 2
            pending += [(start + half, size - half), (start, half)]
        else:
            narrowed.append((start, size))
    return narrowed


def row_bytes(batch: pa.RecordBatch, fields) -> np.ndarray:
    """Bytes of each row's values in `fields` (strings, images, lists of strings); nulls 0."""
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for name in fields:
        column = batch.column(name)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.fill_null(pc.binary_length(pc.list_flatten(column)), 0)
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            sizes += np.bincount(
                parents, weights=lengths.to_numpy(zero_copy_only=False), minlength=batch.num_rows
            ).astype(np.int64)
        else:
            sizes += pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return sizes


def byte_bounded(
    batch: pa.RecordBatch, slices: list[tuple[int, int]], fields, max_bytes: int
) -> list[tuple[int, int]]:
    """`slices`, each cut into runs of rows holding at most `max_bytes` of `fields`' values.

    Creatives vary (a 3 KB thumbnail, a 2 MB banner), so a batch size fit for the small ones
    can make one call of thousands of large ones; memory follows bytes, not rows. A row larger
    than `max_bytes` alone is a call of its own. 0 (or no such fields) leaves `slices` as they
    are. Cuts are greedy and only where a slice is over the cap, so typical data keeps its
    equal-sized batches.
    """
    if not max_bytes or not fields or not slices:
        return slices
    ends = np.concatenate([[0], np.cumsum(row_bytes(batch, fields))])  # ends[i]: bytes of rows < i
    bounded = []
    for start, size in slices:
        stop = start + size
        if ends[stop] - ends[start] <= max_bytes:
            bounded.append((start, size))
            continue
        while start < stop:
            fits = int(np.searchsorted(ends, ends[start] + max_bytes, side="right")) - 1
            end = min(stop, max(fits, start + 1))
            bounded.append((start, end - start))
            start = end
    return bounded


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


# Lines of a TensorFlow error that are not the op's message: the header, where the node
# was defined, and the node tags after the message.
_TF_NOISE_LINES = ("Graph execution error:", "Detected at node ", "<stack traces unavailable>", "Node: ")
_TF_NODE_TAGS = re.compile(r"\s*\[\[\{\{.*?\}\}\]\]|\s*\[Op:[^\]]*\]|\{\{[^}]*\}\}")
_IMAGE_OPS = re.compile(r"decode_?(image|jpeg|png|gif|bmp)|\b(jpeg|png|gif|bmp)\b", re.IGNORECASE)


def tf_error_reason(error: BaseException, limit: int = 300) -> str:
    """What the failing op said, e.g. "jpeg::Uncompress failed. Invalid JPEG data or crop
    window.", without the "Graph execution error:" header, the node's definition
    traceback and node tags that come first in TensorFlow's message."""
    text = str(getattr(error, "message", None) or error)
    kept = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith(_TF_NOISE_LINES):
            continue  # traceback frames and "\t [[{{node ...}}]]" are indented
        line = _TF_NODE_TAGS.sub("", line).strip()
        if line:
            kept.append(line)
    reason = "; ".join(kept).rstrip(".") or text.strip() or type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _inference_error(block: RecordBlock, row: int, key, error: BaseException, layout: RecordLayout) -> dict:
    """The error record of one row the model failed on alone, with what TensorFlow said and
    what to check: the image field when an image decoder failed."""
    record = block.batch.slice(row, 1).to_pylist()[0]
    line = record.pop("__line__")
    reason = tf_error_reason(error)
    field = None
    if isinstance(error, OUT_OF_MEMORY):
        message = (
            f"the model ran out of memory scoring this record alone (batch size 1): {reason}; "
            "check it for oversized values (e.g. a huge image) or give the workers more memory"
        )
    else:
        image_fields = [f.name for f in layout.fields if f.type == "image"]
        text = str(getattr(error, "message", None) or error)
        if len(image_fields) == 1 and _IMAGE_OPS.search(text):
            field = image_fields[0]
            advice = (
                f"field {field!r} passed the JPEG/PNG signature check but does not decode; "
                "check its image bytes"
            )
        else:
            advice = "check its field values against the schema"
        message = f"the model rejected this record alone: {reason}; {advice}"
    logging.warning("record %s:%s failed inference: %s", block.source, line, message)
    return errors.error_record(
        source=f"{block.source}:{line}",
        code=errors.INFERENCE_FAILED,
        message=message,
        field=field,
        key=key,
        instance={k: v for k, v in record.items() if v is not None},
    )
