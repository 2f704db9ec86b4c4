"""What moves between the stages of a pipeline: blocks of typed Arrow columns.

Every reader turns its format into `RecordBlock`s (rows of one source as the Arrow types
the model description declares, plus where each row came from) and error records; the
inference step turns them into `ScoredBlock`s that every writer takes. No stage builds a
Python dict per record on this path.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import pickle
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import errors
from transforms.model_contract import InputField

# Position of each row in its source: the line of a text file (the first line of a CSV record
# that spans several), the record number of a TFRecord file, the row of a Parquet file or of
# a BigQuery read stream (1-based).
LINE_COLUMN = "__line__"

ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "image": pa.string(),
    "string_list": pa.list_(pa.string()),
}
TYPE_DESCRIPTIONS = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "image": "a base64 string",
    "string_list": "a list of strings",
}


@dataclasses.dataclass
class RecordBlock:
    """Rows of one source, as typed Arrow columns plus their positions in it."""

    source: str
    batch: pa.RecordBatch

    @property
    def lines(self) -> np.ndarray:
        return self.batch.column(LINE_COLUMN).to_numpy()

    def __len__(self) -> int:
        return self.batch.num_rows


@dataclasses.dataclass
class ScoredBlock:
    """Model outputs for the rows of one block, in row order, beside their keys.

    `passthrough` holds the input fields the user asked to copy into every prediction.
    """

    keys: pa.Array
    outputs: dict[str, np.ndarray]
    passthrough: pa.RecordBatch | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows) -> ScoredBlock:
        rows = pa.array(rows, pa.int64())
        return ScoredBlock(
            self.keys.take(rows),
            {name: value[rows.to_numpy()] for name, value in self.outputs.items()},
            None if self.passthrough is None else self.passthrough.take(rows),
        )

    @staticmethod
    def concatenated(parts: list[ScoredBlock]) -> ScoredBlock:
        if len(parts) == 1:
            return parts[0]
        passthrough = None
        if parts[0].passthrough is not None:
            passthrough = pa.Table.from_batches([p.passthrough for p in parts]).combine_chunks()
            passthrough = passthrough.to_batches()[0]
        return ScoredBlock(
            pa.concat_arrays([p.keys for p in parts]),
            {n: np.concatenate([p.outputs[n] for p in parts]) for n in parts[0].outputs},
            passthrough,
        )


class RecordStream(abc.ABC):  # noqa: B024 - a virtual base class: its members are registered
    """What a reader emits on its records output: `RecordBlock`s and lists of error records
    (read errors travel with the blocks to the inference step; see pipeline.read)."""


RecordStream.register(RecordBlock)
RecordStream.register(list)


class BlockCoder(beam.coders.Coder):
    """The coder of PCollections of blocks: pickled (protocol 5) like Beam's fallback, but
    sized from the Arrow and numpy buffers.

    Beam samples the size of elements on every edge of a stage (always the first ten, then
    fewer) and sizes an element of an unregistered type by pickling it. Blocks are few and
    big, so nearly every one was pickled once per edge: 1.2 ms for a 41,667-row block of the
    light model, about 0.1 s of CPU per million records.
    """

    def encode(self, value) -> bytes:
        return pickle.dumps(value, protocol=5)

    def decode(self, encoded: bytes):
        return pickle.loads(encoded)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value) -> int:
        if isinstance(value, RecordBlock):
            return value.batch.nbytes
        if isinstance(value, ScoredBlock):
            passthrough = value.passthrough.nbytes if value.passthrough is not None else 0
            return value.keys.nbytes + sum(v.nbytes for v in value.outputs.values()) + passthrough
        return len(self.encode(value))  # a list of error records: small


beam.coders.registry.register_coder(RecordStream, BlockCoder)
beam.coders.registry.register_coder(ScoredBlock, BlockCoder)


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """Which fields to read from each record and their types.

    `fields` are the model inputs; the key field (if the records have one), the label (when
    analyzing training data) and `passthrough` fields (copied into predictions) are read
    beside them. `csv_columns` is the column order of CSV files without a header row.
    """

    fields: tuple[InputField, ...]
    key_field: str | None = None
    key_type: str = "string"
    passthrough: tuple[InputField, ...] = ()
    csv_columns: tuple[str, ...] | None = None
    # The column order of the headerless CSV files the model was trained on: used for a CSV
    # file whose first row names none of the fields (a header row still wins).
    trained_csv_columns: tuple[str, ...] | None = None
    # Pass-through fields of no declared type: read as text, numbers included where the
    # source is typed (Parquet, BigQuery, tf.Example).
    untyped: frozenset[str] = frozenset()
    # A record without its key field is an error (predict: a prediction nobody can join back).
    require_key: bool = False

    @property
    def all_fields(self) -> tuple[InputField, ...]:
        found = list(self.fields)
        if self.key_field and self.key_field not in {f.name for f in found}:
            found.insert(0, InputField(self.key_field, self.key_type, required=False))
        names = {f.name for f in found}
        found += [f for f in self.passthrough if f.name not in names]
        return tuple(found)

    @property
    def passthrough_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.passthrough)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(f.name, ARROW_TYPES[f.type]) for f in self.all_fields])

    def with_lines_schema(self) -> pa.Schema:
        return self.arrow_schema().append(pa.field(LINE_COLUMN, pa.int64()))

    def record_key(self, source: str, line: int, record: dict | None):
        """The key of a record that failed before it became a row."""
        if not self.key_field:
            return f"{source}:{line}"
        return record.get(self.key_field) if isinstance(record, dict) else None

    def empty_block(self, source: str = "") -> RecordBlock:
        return RecordBlock(source, pa.RecordBatch.from_pylist([], schema=self.with_lines_schema()))


def with_missing_marked(column: pa.Array, field: InputField) -> pa.Array:
    """A scalar column with nulls replaced by the field's missing marker (NaN, "", default).

    Analysis and serving both feed the model through this, so they see identical inputs.
    """
    if field.type == "float":
        return pc.fill_null(pc.cast(column, pa.float32()), pa.scalar(field.fill_value, pa.float32()))
    return pc.fill_null(column, field.fill_value)


def as_list_columns(columns) -> list[pa.Array]:
    """Columns as the list arrays tf.Example encoding takes: a value v becomes [v], a null a
    null list (the feature is left out of its Example), a list column keeps its lists;
    values become bytes / float32 / int64, what bytes_list, float_list and int64_list hold."""
    lists = []
    for column in columns:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            value_type = _example_value_type(column.type.value_type)
            lists.append(
                column if value_type == column.type.value_type else pc.cast(column, pa.list_(value_type))
            )
            continue
        column = pc.cast(column, _example_value_type(column.type))
        offsets = pa.array(np.arange(len(column) + 1, dtype=np.int32))
        lists.append(pa.ListArray.from_arrays(offsets, column, mask=pc.invert(column.is_valid())))
    return lists


def _example_value_type(value_type: pa.DataType) -> pa.DataType:
    if pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
        return pa.binary()
    if pa.types.is_floating(value_type):
        return pa.float32()
    if pa.types.is_integer(value_type) or pa.types.is_boolean(value_type):
        return pa.int64()
    return value_type


def string_buffer(column: pa.Array) -> tuple[bytes, np.ndarray]:
    """The concatenated UTF-8 bytes of a null-free string column and its row offsets (from 0).

    Lets a whole column move to TensorFlow or to a file in one copy, not one object per row
    (and only its own bytes: a batch is a slice of its block's buffer).
    """
    view, offsets = string_buffer_view(column)
    return view.tobytes(), offsets


def string_buffer_view(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """`string_buffer` without the copy: a uint8 view of the column's bytes (valid while the
    column lives) and its row offsets from 0."""
    if column.null_count:
        raise ValueError("string_buffer needs a column without nulls; fill them first")
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(
        column.buffers()[1], offset_type, len(column) + 1, column.offset * np.dtype(offset_type).itemsize
    )
    start, end = int(offsets[0]), int(offsets[-1])
    data = column.buffers()[2]
    view = np.frombuffer(data, np.uint8)[start:end] if data is not None else np.zeros(0, np.uint8)
    return view, offsets - start


def preview(value) -> str:
    """A value as short JSON text for an error message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def conform(
    table: pa.Table | pa.RecordBatch, layout: RecordLayout, source: str, lines: np.ndarray
) -> tuple[RecordBlock | None, Iterator[dict]]:
    """Columns of a typed source (Parquet, BigQuery, tf.Example) cast to the layout's types.

    A lossless cast is applied to the whole column (int32 -> int64, dictionary -> values,
    a whole-number float -> int); a value that cannot be cast (a string where a number is
    declared, a fraction for an int) makes its row one `wrong_type` error naming the field.
    Absent columns become nulls, which validation reports for required fields.

    Returns the rows that cast (None if none do) and the error records of the others, in
    row order, made as they are iterated: a failing row costs two bytes until then, so a
    row group of a million bad rows never holds a million dicts.
    """
    num_rows = table.num_rows
    bad = np.zeros(num_rows, dtype=bool)
    first_field = np.zeros(num_rows, dtype=np.int16)  # index in layout.all_fields of a bad row's field
    uncast: dict[int, pa.Array] = {}  # the values as the source gave them, of fields with bad rows
    columns = []
    names = table.schema.names
    for index, field in enumerate(layout.all_fields):
        target = ARROW_TYPES[field.type]
        if field.name not in names:
            columns.append(pa.nulls(num_rows, target))
            continue
        column = table.column(field.name)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if field.type == "image" and _is_binary(column.type):
            column = _base64_images(column)
        if field.name in layout.untyped and _is_number(column.type):
            column = pc.cast(column, pa.string())
        cast, failed = _cast_column(column, target)
        new = failed & ~bad
        if new.any():
            first_field[new] = index
            uncast[index] = column
            bad |= new
        columns.append(cast)
    columns.append(pa.array(lines, pa.int64()))
    batch = pa.RecordBatch.from_arrays(columns, schema=layout.with_lines_schema())
    if not bad.any():
        return RecordBlock(source, batch), iter(())
    failures = _wrong_types(table, layout, source, lines, np.flatnonzero(bad), first_field, uncast)
    passing = np.flatnonzero(~bad)
    if not len(passing):
        return None, failures
    return RecordBlock(source, batch.take(pa.array(passing))), failures


def _wrong_types(
    table, layout: RecordLayout, source: str, lines, rows, first_field, uncast
) -> Iterator[dict]:
    """The `wrong_type` error records of `rows` of `table`, a list's worth converted at a time."""
    for first in range(0, len(rows), errors.ERROR_BATCH):
        chunk = rows[first : first + errors.ERROR_BATCH].tolist()
        records = table.take(pa.array(chunk, pa.int64())).to_pylist()
        for row, record in zip(chunk, records, strict=True):
            field = layout.all_fields[first_field[row]]
            value = uncast[int(first_field[row])][row].as_py()
            instance = {k: v for k, v in record.items() if v is not None}
            line = int(lines[row])
            yield errors.error_record(
                source=f"{source}:{line}",
                code=errors.WRONG_TYPE,
                field=field.name,
                message=f"field {field.name!r} must be {TYPE_DESCRIPTIONS[field.type]}, got {preview(value)}",
                key=layout.record_key(source, line, instance),
                instance=instance,
            )


def _cast_column(column: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """(column cast to `target` with failed values nulled, mask of rows that failed).

    Whole-column casts first; a column where they fail (binary that is not all UTF-8, a
    float beyond the int64 range) is cast value by value, so only the bad rows fail.
    """
    none_failed = np.zeros(len(column), dtype=bool)
    if column.type == target:
        return column, none_failed
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), target), none_failed
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        if pa.types.is_list(target):
            if _is_list(column.type) and _is_stringish(column.type.value_type):
                return pc.cast(column, target), none_failed
        elif pa.types.is_string(target):
            if _is_stringish(column.type):
                return pc.cast(column, target), none_failed
        elif pa.types.is_integer(target):
            if pa.types.is_integer(column.type):
                return pc.cast(column, target), none_failed
            if pa.types.is_floating(column.type):
                whole = pc.fill_null(
                    pc.and_(
                        pc.and_(pc.is_finite(column), pc.equal(pc.floor(column), column)),
                        pc.less(pc.abs(column), float(1 << 63)),
                    ),
                    True,
                )
                failed = ~whole.to_numpy(zero_copy_only=False)
                kept = pc.if_else(whole, column, pa.scalar(None, column.type))
                return pc.cast(kept, target), failed
        elif pa.types.is_floating(target):
            if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                return pc.cast(column, target), none_failed
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _cast_values(column, target)
    failed = column.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    return pa.nulls(len(column), target), failed


def _cast_values(column: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """The slow path of `_cast_column`: one cast per value."""
    values, failed = [], np.zeros(len(column), dtype=bool)
    for row, value in enumerate(column):
        try:
            values.append(
                pa.array([value.as_py()], column.type).cast(target)[0].as_py() if value.is_valid else None
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
            values.append(None)
            failed[row] = True
    return pa.array(values, target), failed


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first 8 bytes of every PNG file
_IMAGE_MAGIC = (b"\xff\xd8\xff", PNG_SIGNATURE)


def _base64_images(column: pa.Array) -> pa.Array:
    """Raw JPEG/PNG bytes (as TFX and BigQuery BYTES columns hold them) -> base64 text."""
    import base64

    values = column.to_pylist()
    return pa.array(
        [base64.b64encode(v).decode() if v is not None and v.startswith(_IMAGE_MAGIC) else v for v in values],
        pa.binary()
        if any(isinstance(v, bytes) and not v.startswith(_IMAGE_MAGIC) for v in values)
        else pa.string(),
    )


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or _is_binary(t)
