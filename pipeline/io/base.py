"""What every format module gives the registry, and the helpers they share.

A file format is a reader (an open stream -> RecordBlocks and error records), a sniffing
test on the file's first bytes (so a file that does not look like its declared format is
refused with a clear message instead of thousands of error records) and a prediction
writer (a Beam PTransform from ScoredBlocks to sharded files).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.blocks import ARROW_TYPES, ScoredBlock
from transforms.model_contract import InputField

# Cloud ML Engine / Vertex AI batch prediction names shards `prediction.results-00000-of-00004`.
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
KEY_COLUMN = "key"


@dataclasses.dataclass(frozen=True)
class PredictionColumns:
    """What a prediction record holds: its key, model outputs, pass-through fields.

    Tabular sinks (CSV, Parquet, TFRecord, BigQuery) write one column each, in this order.
    """

    outputs: tuple[str, ...]
    passthrough: tuple[InputField, ...] = ()
    key_type: str = "string"
    output_dtypes: tuple[str, ...] = ()  # numpy dtype names or "string"; float32 when not given
    output_shapes: tuple[tuple[int, ...], ...] = ()  # per record; () when not given

    @property
    def passthrough_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.passthrough)

    def output_types(self) -> list[pa.DataType]:
        dtypes = self.output_dtypes or ("float32",) * len(self.outputs)
        shapes = self.output_shapes or ((),) * len(self.outputs)
        return [output_arrow_type(d, s) for d, s in zip(dtypes, shapes, strict=True)]

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(KEY_COLUMN, ARROW_TYPES[self.key_type])]
        fields += [pa.field(name, t) for name, t in zip(self.outputs, self.output_types(), strict=True)]
        fields += [pa.field(f.name, ARROW_TYPES[f.type]) for f in self.passthrough]
        return pa.schema(fields)


def output_arrow_type(dtype: str, shape: tuple[int, ...] = ()) -> pa.DataType:
    """An output's column type: its scalar type, or a list of it when a record has several
    values (an output of per-record shape [2, 3] is a list of 6, row-major)."""
    scalar = pa.string() if dtype == "string" else pa.from_numpy_dtype(np.dtype(dtype))
    return pa.list_(scalar) if shape else scalar


def output_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A model output (numpy, a row per record) as an Arrow column of `arrow_type`, without a
    Python loop per record: a [N, k] array becomes a list column over its flat values, and
    TensorFlow's strings (bytes objects) are checked as UTF-8 once, column-wise."""
    if pa.types.is_list(arrow_type):
        rows = len(values)
        width = values.shape[1] if values.ndim > 1 else 1
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
        return pa.ListArray.from_arrays(offsets, output_array(values.reshape(-1), arrow_type.value_type))
    if pa.types.is_string(arrow_type):
        return _utf8(pa.array(values, pa.binary()))
    return pa.array(values, arrow_type)


def _utf8(column: pa.Array) -> pa.Array:
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:  # not text: written base64-encoded rather than lost
        import base64

        return pa.array([None if v is None else base64.b64encode(v).decode() for v in column.to_pylist()])


@dataclasses.dataclass(frozen=True)
class FileFormat:
    name: str
    extensions: tuple[str, ...]
    # read(stream, source, layout, block_bytes, **part) -> Iterator[RecordBlock | error record]
    read: Callable[..., Iterator]
    # head_problem(first bytes, decompressed; layout) -> why the file is not this format, or None
    head_problem: Callable[..., str | None]
    # write_predictions(path prefix, PredictionColumns) -> PTransform of ScoredBlocks
    write_predictions: Callable[..., object]
    # Parquet reads its footer first: it needs a seekable, uncompressed file.
    needs_seekable_file: bool = False
    # How a large file is cut for several workers (pipeline.io.splitting): "lines" (byte
    # ranges; read(..., first_line=N) numbers from N), "row_groups" (read(..., row_groups=
    # (first, end), first_row=N)), or None: read whole.
    split: str | None = None


class PredictionWriter(beam.PTransform):
    """What each format's writer is: ScoredBlocks -> sharded files `<prefix>-SSSSS-of-NNNNN`."""

    def __init__(self, prefix: str, columns: PredictionColumns):
        super().__init__()
        self.prefix = prefix
        self.columns = columns


def scored_table(scored: ScoredBlock, columns: PredictionColumns) -> pa.Table:
    """A ScoredBlock as flat columns: key, one per model output, then pass-through fields."""
    schema = columns.arrow_schema()
    arrays = [scored.keys]
    arrays += [
        output_array(scored.outputs[name], t)
        for name, t in zip(columns.outputs, columns.output_types(), strict=True)
    ]
    if scored.passthrough is not None:
        arrays += scored.passthrough.columns
    return pa.Table.from_arrays(arrays, schema=schema)


def read_ahead(items: Iterator, depth: int = 1) -> Iterator:
    """Yields `items`, producing up to `depth` of them ahead on a background thread.

    Parsing (pyarrow, GIL released) of the next block then overlaps with the model call and
    the writing of the current one; on 2 cores that is the difference between one busy core
    and two. Exceptions from `items` are raised here, in the consumer's thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
            buffer.put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            buffer.put((done, e))

    producer = threading.Thread(target=produce, name="adpredict-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass
        producer.join()


class Prepended:
    """A read-only stream: `head` (bytes already read to check the format), then `stream`.

    A read that gets part of the head and then fails in `stream` (a .gz file cut short)
    returns the head's bytes and raises on the next read, so no record before the failure
    is lost.
    """

    def __init__(self, head: bytes, stream):
        self._head = head
        self._stream = stream
        self._error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if not self._head:
            return self._stream.read(size)
        if size is None or size < 0:
            data, self._head = self._head, b""
            return data + self._rest(-1)
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest(size - len(data))
        return data

    def _rest(self, size: int) -> bytes:
        """`stream`'s bytes after the head's; a failure is kept for the next read."""
        try:
            return self._stream.read(size)
        except Exception as e:  # noqa: BLE001 - raised again on the next read
            self._error = e
            return b""
