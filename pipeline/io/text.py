"""Reading text formats (JSONL, CSV) in large blocks of whole records.

A file is read in byte blocks cut at record boundaries: every newline for JSONL; for CSV
(RFC 4180) only a newline outside quotes, i.e. one preceded by an even number of `"` in the
record (a doubled quote inside a field counts twice, so the parity rule is exact). Each
block is parsed by pyarrow in C++ straight into the columns of the layout. When a block does
not parse (a malformed line, `"age": "old"`, a CSV row with too few columns) it is split in
halves until each bad record stands alone, so one bad record costs a few extra parses, not a
slow path for the whole file, and becomes exactly one error record naming its file, line and
field. Every block carries a `__line__` column: the line each record starts on.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline import errors
from pipeline.blocks import LINE_COLUMN, TYPE_DESCRIPTIONS, RecordBlock, RecordLayout, preview

DEFAULT_BLOCK_BYTES = 8 << 20
# pyarrow parses a block in chunks of this size on its thread pool (1.8x faster than one
# thread on 2 cores, measured on 8 MiB JSONL blocks).
PARSE_CHUNK_BYTES = 1 << 20
# A quoted CSV field still open after this many bytes is taken as an unbalanced quote.
MAX_RECORD_BYTES = 64 << 20

_NEWLINE, _QUOTE = 10, 34


@dataclasses.dataclass
class Records:
    """Whole records in `data`: record i is data[ends[i-1]:ends[i]] and starts on lines[i].

    For one-line records `ends` is found only when needed (the slow path of a block).
    """

    data: bytes
    lines: np.ndarray
    _ends: np.ndarray | None = None
    has_quotes: bool = False  # a CSV block with quotes may hold newlines inside fields
    # False when a line of only spaces may hide among the records: the parser skips it, so
    # a row count equal to the record count would prove nothing (`{..}{..}` on one line).
    exact: bool = True

    @property
    def ends(self) -> np.ndarray:
        if self._ends is None:
            self._ends = np.flatnonzero(np.frombuffer(self.data, np.uint8) == _NEWLINE) + 1
        return self._ends

    def __len__(self) -> int:
        return len(self.lines)

    def numbered(self) -> list[tuple[int, bytes]]:
        starts = np.concatenate([[0], self.ends[:-1]])
        return [
            (int(line), self.data[start:end])
            for line, start, end in zip(self.lines, starts, self.ends, strict=True)
            if self.data[start:end].strip()
        ]


@dataclasses.dataclass
class UnterminatedRecord:
    """A CSV record whose quoted field never closes: the line it starts on and its text."""

    line: int
    text: bytes


def split_records(
    stream, block_bytes: int = DEFAULT_BLOCK_BYTES, quoted: bool = False, first_line: int = 1
) -> Iterator[Records | UnterminatedRecord]:
    """Blocks of whole records from `stream`; `quoted`: newlines inside "..." do not end one.

    Quoted (CSV) blocks drop empty lines here; in JSONL pyarrow skips them. A quote that
    never closes yields an UnterminatedRecord for its line, and reading resumes on the next
    line, so one stray quote costs one record.
    """
    carry, line = b"", first_line
    eof = False
    while True:
        if not eof:
            data = stream.read(block_bytes)
            eof = not data
            carry += data
        if not carry:
            return
        if eof and not carry.endswith(b"\n"):
            carry += b"\n"
        if not quoted or b'"' not in carry:  # every newline ends a record
            cut = carry.rfind(b"\n")
            if cut >= 0:
                data, carry = carry[: cut + 1], carry[cut + 1 :]
                count = data.count(b"\n")
                if quoted:  # CSV: a line holds one row at most; empty lines take the slow path
                    records = Records(data, np.arange(line, line + count, dtype=np.int64))
                else:  # JSONL: `{..}{..}` on one line must not pass for one record per line
                    records = _exact_lines(data, line)
                if len(records):
                    yield records
                line += count
            continue
        array = np.frombuffer(carry, np.uint8)
        newlines = np.flatnonzero(array == _NEWLINE)
        quotes = np.flatnonzero(array == _QUOTE)
        # Indices (among all newlines) of the newlines that end a record: even quotes before.
        newlines_seen = np.flatnonzero(np.searchsorted(quotes, newlines) % 2 == 0)
        if not len(newlines_seen):
            if eof or len(carry) > MAX_RECORD_BYTES:
                cut = int(newlines[0]) + 1 if len(newlines) else len(carry)
                yield UnterminatedRecord(line, carry[:cut])
                carry, line = carry[cut:], line + 1
            continue
        consumed = int(newlines[newlines_seen[-1]]) + 1
        records = _without_empty_lines(carry[:consumed], newlines_seen, line, newlines)
        records.has_quotes = True
        carry, line = carry[consumed:], line + int(newlines_seen[-1]) + 1
        if len(records):
            yield records


def _exact_lines(data: bytes, line: int) -> Records:
    """One record per non-empty line; `exact` unless a line holds only spaces (rare in JSONL).

    pyarrow's JSON reader skips empty lines, so a block whose row count equals its line
    count could still hide a line with two objects beside an empty one; counting only
    non-empty lines (in numpy, about 5 ms per 8 MiB) closes that gap.
    """
    array = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(array == _NEWLINE)
    records = _without_empty_lines(data, np.arange(len(newlines)), line, newlines)
    starts = np.concatenate([[0], newlines[:-1] + 1])
    records.exact = not np.isin(array[np.minimum(starts, len(array) - 1)], (32, 9)).any()
    return records


def _without_empty_lines(data: bytes, record_ends: np.ndarray, line: int, newlines=None) -> Records:
    """The records of `data` that end at the newlines numbered `record_ends`, minus empty ones."""
    if newlines is None:
        newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == _NEWLINE)
    ends = newlines[record_ends] + 1
    starts_line = np.concatenate([[0], record_ends[:-1] + 1]) + line
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts  # "\n" or "\r\n" alone is an empty line
    first = np.frombuffer(data, np.uint8)[np.minimum(starts, len(data) - 1)]
    nonblank = (lengths > 2) | ((lengths == 2) & (first != 13))
    return Records(data, starts_line[nonblank], ends[nonblank].astype(np.int64))


class BlockParser(abc.ABC):
    """Block parsing with bisection down to single bad records (format-specific hooks)."""

    def __init__(self, layout: RecordLayout, source: str):
        self.layout = layout
        self.source = source
        self.has_quotes = False  # of the block being parsed

    @abc.abstractmethod
    def parse(self, data: bytes) -> pa.Table:
        """Parses whole records; raises pa.ArrowInvalid when any record does not fit."""

    @abc.abstractmethod
    def diagnose(self, line_number: int, text: bytes) -> dict:
        """The error record for one record that does not parse."""

    def parse_records(self, records: Records | UnterminatedRecord) -> Iterator[RecordBlock | dict]:
        """Fast path: the whole block parses and every record is one row."""
        if isinstance(records, UnterminatedRecord):
            yield self.malformed(
                records.line,
                'a quoted field opened on this line is never closed (an unbalanced ")',
                records.text.decode("utf-8", errors="replace"),
            )
            return
        self.has_quotes = records.has_quotes
        try:
            table = self.parse(records.data)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = None
        if table is not None and table.num_rows == len(records) and records.exact:
            yield self._block(table, records.lines.astype(np.int64))
            return
        tables, line_arrays, failures = [], [], []
        self._bisect(records.numbered(), tables, line_arrays, failures)
        if tables:
            yield self._block(pa.concat_tables(tables), np.concatenate(line_arrays))
        yield from failures

    def _bisect(self, numbered, tables, line_arrays, failures):
        if not numbered:
            return
        try:
            table = self.parse(b"".join(text for _, text in numbered))
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

    def malformed(self, line_number: int, message: str, instance, record: dict | None = None) -> dict:
        return errors.error_record(
            source=f"{self.source}:{line_number}",
            code=errors.MALFORMED_RECORD,
            message=message,
            key=self.layout.record_key(self.source, line_number, record),
            instance=instance,
        )

    def wrong_type(self, line_number: int, record: dict) -> dict | None:
        """The first field whose JSON-like value does not have the declared type."""
        for field in self.layout.all_fields:
            value = record.get(field.name)
            if value is None or has_type(value, field.type):
                continue
            return errors.error_record(
                source=f"{self.source}:{line_number}",
                code=errors.WRONG_TYPE,
                field=field.name,
                message=f"field {field.name!r} must be {TYPE_DESCRIPTIONS[field.type]}, got {preview(value)}"
                + (
                    f" (declare its type: --passthrough_fields {field.name}:int or :float)"
                    if field.name in self.layout.untyped
                    else ""
                ),
                key=self.layout.record_key(self.source, line_number, record),
                instance=record,
            )
        return None


def has_type(value, ftype: str) -> bool:
    if isinstance(value, bool):
        return False
    if ftype == "int":
        return isinstance(value, int)
    if ftype == "float":
        return isinstance(value, (int, float))
    if ftype == "string_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if ftype == "image" and isinstance(value, dict) and set(value) == {"b64"}:
        return isinstance(value["b64"], str)
    return isinstance(value, str)
