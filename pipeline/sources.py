"""Reading ad records from JSONL and CSV files into Arrow record batches.

Files are read in large byte blocks that pyarrow parses in C++ into columns typed from the
model description; Python never builds a per-record dict on this path. When a block does
not parse (a malformed line, `"age": "old"`, a CSV row with too few columns) it is split in
halves until each bad line stands alone, so one bad record costs a few extra parses, not
a slow path for the whole file, and becomes exactly one error record naming its file, line
and field. Every batch carries a `__line__` column so later stages can say where a record
came from.
"""

from __future__ import annotations

import abc
import csv
import dataclasses
import io
import json
import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from pipeline import errors
from transforms.model_contract import InputField

LINE_COLUMN = "__line__"
FORMATS = ("jsonl", "csv")
DEFAULT_BLOCK_BYTES = 8 << 20
# pyarrow parses a block in chunks of this size on its thread pool (1.8x faster than one
# thread on 2 cores, measured on 8 MiB JSONL blocks).
PARSE_CHUNK_BYTES = 1 << 20

_ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "image": pa.string(),
    "string_list": pa.list_(pa.string()),
}
_PYTHON_TYPES = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "image": "a base64 string",
    "string_list": "a list of strings",
}


@dataclasses.dataclass
class RecordBlock:
    """Rows of one file, as typed Arrow columns plus their line numbers."""

    source: str
    batch: pa.RecordBatch

    @property
    def lines(self) -> np.ndarray:
        return self.batch.column(LINE_COLUMN).to_numpy()

    def __len__(self) -> int:
        return self.batch.num_rows


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """Which fields to read from each record and their types.

    `fields` are the model inputs; the key field (if the records have one) and any extra
    fields (the label, when analyzing training data) are read beside them.
    """

    fields: tuple[InputField, ...]
    key_field: str | None = None
    key_type: str = "string"

    @property
    def all_fields(self) -> tuple[InputField, ...]:
        if not self.key_field:
            return self.fields
        key = InputField(self.key_field, self.key_type, required=False)
        return (key,) + self.fields

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(f.name, _ARROW_TYPES[f.type]) for f in self.all_fields])

    def record_key(self, source: str, line: int, record: dict | None):
        """The key of a record that failed before it became a row."""
        if not self.key_field:
            return f"{source}:{line}"
        return record.get(self.key_field) if isinstance(record, dict) else None


def with_missing_marked(column: pa.Array, field: InputField) -> pa.Array:
    """A scalar column with nulls replaced by the field's missing marker (NaN, "", default).

    Analysis and serving both feed the model through this, so they see identical inputs.
    """
    if field.type == "float":
        return pc.fill_null(pc.cast(column, pa.float32()), pa.scalar(field.fill_value, pa.float32()))
    return pc.fill_null(column, field.fill_value)


def string_buffer(column: pa.Array) -> tuple[bytes, np.ndarray]:
    """The concatenated UTF-8 bytes of a null-free string column and its row offsets (from 0).

    Lets a whole column move to TensorFlow or to a file in one copy, not one object per row.
    """
    if column.null_count:
        raise ValueError("string_buffer needs a column without nulls; fill them first")
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(
        column.buffers()[1], offset_type, len(column) + 1, column.offset * np.dtype(offset_type).itemsize
    )
    start, end = int(offsets[0]), int(offsets[-1])
    data = column.buffers()[2]
    return (data.to_pybytes()[start:end] if data is not None and end > start else b""), offsets - start


def format_for(path: str, declared: str | None = None) -> str:
    """The input format: declared, or from the file name (`.jsonl`, `.json`, `.csv`, `.gz`)."""
    if declared:
        if declared not in FORMATS:
            raise ValueError(f"--input_format must be one of {FORMATS}, got {declared!r}")
        return declared
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".csv", ".txt")):
        return "csv"
    raise ValueError(f"cannot tell the format of {path!r} from its name; pass --input_format jsonl|csv")


def read_records(
    stream: io.RawIOBase,
    source: str,
    layout: RecordLayout,
    fmt: str,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Iterator[RecordBlock | dict]:
    """Yields RecordBlocks and, for lines that cannot be parsed, error records (dicts)."""
    first_line = 1
    if fmt == "csv":
        header_line = stream.readline()
        if not header_line.strip():
            return
        parser: _Parser = _CsvParser(layout, source, _parse_csv_header(header_line))
        first_line = 2
    else:
        parser = _JsonParser(layout, source)
    for block, line_count in _line_blocks(stream, block_bytes):
        yield from parser.parse_block(block, first_line, line_count)
        first_line += line_count


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


def _line_blocks(stream, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines (each ending in a newline) and how many lines each holds."""
    carry = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            if carry:
                yield carry + b"\n", 1
            return
        data = carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        block, carry = data[: cut + 1], data[cut + 1 :]
        yield block, block.count(b"\n")


class _Parser(abc.ABC):
    """Block parsing with bisection down to single bad lines (format-specific hooks)."""

    def __init__(self, layout: RecordLayout, source: str):
        self.layout = layout
        self.source = source

    @abc.abstractmethod
    def parse(self, data: bytes) -> pa.Table:
        """Parses whole lines; raises pa.ArrowInvalid when any line does not fit."""

    @abc.abstractmethod
    def diagnose(self, line_number: int, line: bytes) -> dict:
        """The error record for one line that does not parse."""

    def parse_block(self, block: bytes, first_line: int, line_count: int):
        """Fast path: the whole block parses and every line is one row."""
        try:
            table = self.parse(block)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = None
        if table is not None and table.num_rows == line_count:
            lines = np.arange(first_line, first_line + line_count, dtype=np.int64)
            yield self._block(table, lines)
            return
        numbered = [
            (first_line + i, line) for i, line in enumerate(block.split(b"\n")[:line_count]) if line.strip()
        ]
        tables, line_arrays, failures = [], [], []
        self._bisect(numbered, tables, line_arrays, failures)
        if tables:
            yield self._block(pa.concat_tables(tables), np.concatenate(line_arrays))
        yield from failures

    def _bisect(self, numbered, tables, line_arrays, failures):
        if not numbered:
            return
        try:
            table = self.parse(b"\n".join(line for _, line in numbered) + b"\n")
            if table.num_rows == len(numbered):
                tables.append(table)
                line_arrays.append(np.array([n for n, _ in numbered], dtype=np.int64))
                return
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        if len(numbered) == 1:
            failures.append(self.diagnose(*numbered[0]))
            return
        middle = len(numbered) // 2
        self._bisect(numbered[:middle], tables, line_arrays, failures)
        self._bisect(numbered[middle:], tables, line_arrays, failures)

    def _block(self, table: pa.Table, lines: np.ndarray) -> RecordBlock:
        table = self.normalize(table)
        table = table.append_column(LINE_COLUMN, pa.array(lines, pa.int64()))
        batch = table.combine_chunks().to_batches()
        batch = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
        return RecordBlock(self.source, batch)

    def normalize(self, table: pa.Table) -> pa.Table:
        return table

    def _malformed(self, line_number: int, message: str, instance, record: dict | None = None) -> dict:
        return errors.error_record(
            source=f"{self.source}:{line_number}",
            code=errors.MALFORMED_RECORD,
            message=message,
            key=self.layout.record_key(self.source, line_number, record),
            instance=instance,
        )

    def _wrong_type(self, line_number: int, record: dict) -> dict | None:
        """The first field whose JSON-like value does not have the declared type."""
        for field in self.layout.all_fields:
            value = record.get(field.name)
            if value is None or _has_type(value, field.type):
                continue
            return errors.error_record(
                source=f"{self.source}:{line_number}",
                code=errors.WRONG_TYPE,
                field=field.name,
                message=(f"field {field.name!r} must be {_PYTHON_TYPES[field.type]}, got {_preview(value)}"),
                key=self.layout.record_key(self.source, line_number, record),
                instance=record,
            )
        return None


class _JsonParser(_Parser):
    def __init__(self, layout: RecordLayout, source: str):
        super().__init__(layout, source)
        self._parse_options = pa_json.ParseOptions(
            explicit_schema=layout.arrow_schema(), unexpected_field_behavior="ignore"
        )

    def parse(self, data: bytes) -> pa.Table:
        table = pa_json.read_json(
            io.BytesIO(data),
            read_options=pa_json.ReadOptions(use_threads=True, block_size=PARSE_CHUNK_BYTES),
            parse_options=self._parse_options,
        )
        return table.select([f.name for f in self.layout.all_fields])

    def diagnose(self, line_number: int, line: bytes) -> dict:
        text = line.decode("utf-8", errors="replace")
        try:
            record = json.loads(text)
        except ValueError as e:
            return self._malformed(line_number, f"line is not valid JSON: {e}", text)
        if not isinstance(record, dict):
            return self._malformed(
                line_number, f"expected a JSON object per line, got {type(record).__name__}", record
            )
        return self._wrong_type(line_number, record) or self._malformed(
            line_number, "record could not be read as the declared types", record, record
        )


class _CsvParser(_Parser):
    def __init__(self, layout: RecordLayout, source: str, header: list[str]):
        super().__init__(layout, source)
        self.header = header
        csv_types = {"int": pa.int64(), "float": pa.float64()}
        self._convert_options = pa_csv.ConvertOptions(
            column_types={f.name: csv_types.get(f.type, pa.string()) for f in layout.all_fields},
            include_columns=[f.name for f in layout.all_fields],
            include_missing_columns=True,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
        )

    def parse(self, data: bytes) -> pa.Table:
        options = pa_csv.ReadOptions(column_names=self.header, use_threads=True, block_size=PARSE_CHUNK_BYTES)
        return pa_csv.read_csv(io.BytesIO(data), read_options=options, convert_options=self._convert_options)

    def normalize(self, table: pa.Table) -> pa.Table:
        """Splits string_list cells ("sports|travel") into lists, in Arrow."""
        for field in self.layout.all_fields:
            if field.type == "string_list":
                index = table.schema.get_field_index(field.name)
                column = pc.cast(table.column(index), pa.string())
                table = table.set_column(index, field.name, pc.split_pattern(column, field.separator))
        return table

    def diagnose(self, line_number: int, line: bytes) -> dict:
        text = line.decode("utf-8", errors="replace")
        try:
            values = next(csv.reader([text]))
        except (csv.Error, StopIteration) as e:
            values, problem = None, f"line is not valid CSV: {e}"
        if values is not None and len(values) != len(self.header):
            problem = (
                f"expected {len(self.header)} columns as in the header of {self.source}, got {len(values)}"
            )
            values = None
        if values is None:
            return self._malformed(line_number, problem, text)
        record = dict(zip(self.header, values, strict=True))
        typed = {}
        for field in self.layout.all_fields:
            cell = record.get(field.name, "")
            if cell == "":
                continue
            try:
                typed[field.name] = {"int": int, "float": float}.get(field.type, str)(cell)
            except ValueError:
                typed[field.name] = cell  # left as text: the type check below reports it
        return self._wrong_type(line_number, {**record, **typed}) or self._malformed(
            line_number, "row could not be read as the declared types", record, record
        )


def _parse_csv_header(line: bytes) -> list[str]:
    return next(csv.reader([line.decode("utf-8-sig").strip("\r\n")]))


def _has_type(value, ftype: str) -> bool:
    if isinstance(value, bool):
        return False
    if ftype == "int":
        return isinstance(value, int)
    if ftype == "float":
        return isinstance(value, (int, float))
    if ftype == "string_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def _preview(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def blocks_and_errors(items: Iterable[RecordBlock | dict]):
    """Splits what `read_records` yields into (blocks, error records); for tests and tools."""
    blocks, failures = [], []
    for item in items:
        (failures if isinstance(item, dict) else blocks).append(item)
    return blocks, failures
