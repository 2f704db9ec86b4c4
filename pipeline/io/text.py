"""Reading text formats (JSONL, CSV) in large blocks of whole records.

A file is read in byte blocks cut at record boundaries: every newline for JSONL; for CSV
(RFC 4180) only a newline outside quotes, i.e. one preceded by an even number of `"` in the
record (a doubled quote inside a field counts twice, so the parity rule is exact). Each
block is parsed by pyarrow in C++ straight into the columns of the layout. When a block does
not parse (a malformed line, `"age": "old"`, a CSV row with too few columns) it is split in
halves until each bad record stands alone, so one bad record costs a few extra parses, not a
slow path for the whole file, and becomes exactly one error record naming its file, line and
field. Every block carries a `__line__` column: the line each record starts on.

Records the native parser must never see are screened out first, in numpy, and become error
records directly: bytes that are not UTF-8 (pyarrow would pass them on into the outputs), and
JSON lines that do not start with `{` (a block starting with `null` crashes pyarrow's reader).
A file of a million such lines costs one Python diagnosis per line, not a bisection each.
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
# Records in one block at most. A block costs memory per record besides its bytes (Arrow
# columns, line numbers, validation masks: 150 bytes a record and more), so 8 MiB of `{}`
# lines, 2.8 million records, cost 0.4 GB; capped, a block of tiny records costs what a block
# of real ones (150 bytes to kilobytes each) does.
MAX_RECORDS_PER_BLOCK = 1 << 17

_NEWLINE, _QUOTE, _OPEN_BRACE = 10, 34, 123
_BLANKS = (32, 9, 13)  # space, tab, carriage return
_EMPTY_LINES = (b"\n", b"\r\n")


@dataclasses.dataclass
class Records:
    """Whole records in `data`: record i is data[ends[i-1]:ends[i]] and starts on lines[i].

    For one-line records `ends` is found only when needed (the slow path of a block).
    """

    data: bytes
    lines: np.ndarray
    _ends: np.ndarray | None = None
    has_quotes: bool = False  # a CSV block with quotes may hold newlines inside fields
    # Records taken out before parsing (not UTF-8, not a JSON object).
    rejected: list[Rejected] = dataclasses.field(default_factory=list)

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
            if self.data[start:end] not in _EMPTY_LINES  # unquoted CSV blocks keep them until here
        ]

    def without(self, indices, rejected: bool = True) -> Records:
        """These records taken out of the block (kept in `rejected` unless told otherwise).

        In numpy, and the taken records are kept as offsets into the block, not as Python
        objects: a block of four million bad lines costs 24 bytes per line until diagnosed.
        """
        indices = np.asarray(indices, dtype=np.int64)
        starts = np.concatenate([[0], self.ends[:-1]]).astype(np.int64)
        lengths = self.ends - starts
        keep = np.ones(len(self), dtype=bool)
        keep[indices] = False
        array = np.frombuffer(self.data, np.uint8)
        tail = array[int(self.ends[-1]) :]  # blank lines after the last record
        kept = np.concatenate([array[: int(self.ends[-1])][np.repeat(keep, lengths)], tail])
        taken = [Rejected(self.data, starts[indices], self.ends[indices], self.lines[indices])]
        return Records(
            kept.tobytes(),
            self.lines[keep],
            np.cumsum(lengths[keep]).astype(np.int64),
            self.has_quotes,
            self.rejected + (taken if rejected else []),
        )


@dataclasses.dataclass
class Rejected:
    """Records of `data` taken out of a block: record i is data[starts[i]:ends[i]]."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for first in range(0, len(self.lines), 4096):  # Python ints for a slice at a time
            part = slice(first, first + 4096)
            for line, start, end in zip(
                self.lines[part].tolist(), self.starts[part].tolist(), self.ends[part].tolist(), strict=True
            ):
                yield line, self.data[start:end]


def screen_utf8(records: Records) -> Records:
    """Takes out the records holding bytes that are not UTF-8 (ASCII blocks: one fast check)."""
    data = records.data
    if data.isascii():
        return records
    bad, position = [], 0
    while True:
        try:
            data[position:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            index = int(np.searchsorted(records.ends, position + e.start, side="right"))
            if index >= len(records):  # a stray byte on a blank line between records
                break
            bad.append(index)
            position = int(records.ends[index])
    return records.without(bad) if bad else records


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
    carry, line = b"", first_line  # carry: the start of a record the last read cut
    eof = False
    while True:
        data = b""
        if not eof:
            data = stream.read(block_bytes)
            eof = not data
        if eof and not data:
            if not carry:
                return
            if not carry.endswith(b"\n"):
                carry += b"\n"
        if not quoted or (b'"' not in data and b'"' not in carry):  # every newline ends a record
            cut = data.rfind(b"\n")
            if cut < 0:  # nothing ends in this read (or the file's last line ends in `carry`)
                carry, data = b"", carry + data
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
            # The block's records, copied once: `carry + data[:cut + 1]` would copy twice.
            whole = b"".join((carry, memoryview(data)[: cut + 1])) if carry or cut + 1 < len(data) else data
            carry = data[cut + 1 :]
            for piece, newlines in _line_pieces(whole):
                count = len(newlines)
                if quoted:  # CSV: a line holds one row at most; empty lines take the slow path
                    records = Records(piece, np.arange(line, line + count, dtype=np.int64))
                else:  # JSONL: `{..}{..}` on one line must not pass for one record per line
                    records = _exact_lines(piece, line, newlines)
                records = screen_utf8(records)
                if len(records) or records.rejected:
                    yield records
                line += count
            continue
        carry += data
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
        start = 0
        for first in range(0, len(newlines_seen), MAX_RECORDS_PER_BLOCK):
            seen = newlines_seen[first : first + MAX_RECORDS_PER_BLOCK]
            before = int(newlines_seen[first - 1]) + 1 if first else 0  # newlines before the piece
            end = int(newlines[seen[-1]]) + 1
            records = _without_empty_lines(
                carry[start:end], seen - before, line + before, newlines[before : seen[-1] + 1] - start
            )
            records.has_quotes = True
            records = screen_utf8(records)
            if len(records) or records.rejected:
                yield records
            start = end
        carry, line = carry[start:], line + int(newlines_seen[-1]) + 1


def _line_pieces(data: bytes) -> Iterator[tuple[bytes, np.ndarray]]:
    """`data` (whole lines) in pieces of at most MAX_RECORDS_PER_BLOCK lines, each with the
    positions of its newlines (found once per block: the block's one pass over its bytes)."""
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == _NEWLINE)
    if len(newlines) <= MAX_RECORDS_PER_BLOCK:
        yield data, newlines
        return
    start = 0
    for first in range(0, len(newlines), MAX_RECORDS_PER_BLOCK):
        piece = newlines[first : first + MAX_RECORDS_PER_BLOCK]
        end = int(piece[-1]) + 1
        yield data[start:end], piece - start
        start = end


def _exact_lines(data: bytes, line: int, newlines: np.ndarray) -> Records:
    """One record per non-empty line (`newlines`: where each ends), each starting with `{`;
    other lines are taken out.

    pyarrow's JSON reader skips lines of only spaces, so a block whose row count equals its
    line count could still hide a line with two objects beside an empty one: those lines
    are dropped here (they are not records). A line that does not start with `{` is
    rejected before pyarrow sees it. Both checks are numpy passes (about 5 ms per 8 MiB).
    """
    array = np.frombuffer(data, np.uint8)
    records = _without_empty_lines(data, np.arange(len(newlines)), line, newlines)
    if not len(records):
        return records
    line_starts = np.concatenate([[0], newlines[:-1] + 1])[records.lines - line]
    first = array[line_starts]
    rejected = np.flatnonzero((first != _OPEN_BRACE) & ~np.isin(first, _BLANKS))
    indented = np.flatnonzero(np.isin(first, _BLANKS))  # rare: looked at one by one
    blank = []
    for index in indented.tolist():
        text = data[line_starts[index] : records.ends[index]].lstrip(b" \t\r\n")
        if not text:
            blank.append(index)
        elif not text.startswith(b"{"):
            rejected = np.append(rejected, index)
    if blank:  # dropped first: `without` renumbers the records after them
        records = records.without(blank, rejected=False)
        rejected = np.sort(rejected)
        rejected = rejected - np.searchsorted(blank, rejected)
    return records.without(rejected) if len(rejected) else records


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
    def parse(self, data: bytes, chunk_bytes: int) -> pa.Table:
        """Parses whole records; raises pa.ArrowInvalid when any record does not fit.

        pyarrow splits `data` into chunks of `chunk_bytes` parsed in parallel. Parsers hand it
        `data` as a `pa.BufferReader`: its threads then read the bytes in place, where a
        BytesIO is read through Python, a copy and a GIL hand-off per chunk (1M light
        records in 8 MiB blocks, AMD EPYC: 0.88-0.89 against 0.92-0.95 core-s, wall 0.45-0.47
        against 0.50-0.58 s)."""

    def parse_whole(self, data: bytes) -> pa.Table:
        """`parse`, in one chunk when a record is longer than a chunk (a 2.4 MB image)."""
        try:
            return self.parse(data, PARSE_CHUNK_BYTES)
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e) or len(data) <= PARSE_CHUNK_BYTES:
                raise
        return self.parse(data, len(data) + 1)

    @abc.abstractmethod
    def diagnose(self, line_number: int, text: bytes) -> dict:
        """The error record for one record that does not parse."""

    def parse_records(self, records: Records | UnterminatedRecord) -> Iterator[RecordBlock | dict]:
        """Fast path: the whole block parses and every record is one row."""
        if isinstance(records, UnterminatedRecord):
            yield self.malformed(
                records.line,
                'a quoted field opened on this line is never closed (an unbalanced "); close it, and '
                'write a " inside a quoted field as ""',
                records.text.decode("utf-8", errors="replace"),
            )
            return
        for rejected in records.rejected:
            for line_number, text in rejected:
                yield self.diagnose(line_number, text)
        if not len(records):
            return
        self.has_quotes = records.has_quotes
        try:
            table = self.parse_whole(records.data)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = None
        if table is not None and table.num_rows == len(records):
            yield self._block(table, records.lines.astype(np.int64))
            return
        # The error records go out as they are found, not kept to the end: a block whose every
        # record is bad would otherwise hold one dict per record.
        tables, line_arrays = [], []
        yield from self._bisect(records.numbered(), tables, line_arrays)
        if tables:
            yield self._block(pa.concat_tables(tables), np.concatenate(line_arrays))

    def _bisect(self, numbered, tables, line_arrays) -> Iterator[dict]:
        """Appends the tables of the parts of `numbered` that parse; yields an error record for
        each record that does not."""
        if not numbered:
            return
        try:
            table = self.parse_whole(b"".join(text for _, text in numbered))
            if table.num_rows == len(numbered):
                tables.append(table)
                line_arrays.append(np.array([n for n, _ in numbered], dtype=np.int64))
                return
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        if len(numbered) == 1:
            yield self.diagnose(*numbered[0])
            return
        middle = len(numbered) // 2
        yield from self._bisect(numbered[:middle], tables, line_arrays)
        yield from self._bisect(numbered[middle:], tables, line_arrays)

    def _block(self, table: pa.Table, lines: np.ndarray) -> RecordBlock:
        table = self.normalize(table)
        table = table.append_column(LINE_COLUMN, pa.array(lines, pa.int64()))
        batch = table.combine_chunks().to_batches()
        batch = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
        return RecordBlock(self.source, batch)

    def normalize(self, table: pa.Table) -> pa.Table:
        return table

    def parse_problem(self, data: bytes) -> str:
        """What the native parser says about one record that no Python check explains."""
        try:
            self.parse_whole(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            return str(e).strip().splitlines()[0][:200]
        return "it does not read as exactly one record"

    def malformed(self, line_number: int, message: str, instance, record: dict | None = None) -> dict:
        return errors.error_record(
            source=f"{self.source}:{line_number}",
            code=errors.MALFORMED_RECORD,
            message=message,
            key=self.layout.record_key(self.source, line_number, record),
            instance=instance,
        )

    def not_utf8(self, line_number: int, error: UnicodeDecodeError, record) -> dict:
        """The error for a record with bytes that are not UTF-8, naming the field that holds them.

        `record` was decoded with "surrogateescape": the bad bytes are lone surrogates.
        """
        if not isinstance(record, dict):
            record = None
        field = next((name for name, value in (record or {}).items() if _has_surrogates(value)), None)
        where = f"field {field!r}" if field else "the line"
        return errors.error_record(
            source=f"{self.source}:{line_number}",
            code=errors.MALFORMED_RECORD,
            field=field,
            message=f"{where} holds bytes that are not UTF-8 ({error.object[error.start : error.end]!r}); "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            key=_replace_surrogates(self.layout.record_key(self.source, line_number, record)),
            instance=_replace_surrogates(
                record if record is not None else error.object.decode("utf-8", "replace")
            ),
        )

    def wrong_type(self, line_number: int, record: dict) -> dict | None:
        """The first field whose JSON-like value does not have the declared type."""
        for field in self.layout.all_fields:
            value = record.get(field.name)
            if field.type == "int" and has_type(value, "int") and not INT64_MIN <= value <= INT64_MAX:
                is_key = field.name == self.layout.key_field
                return errors.error_record(
                    source=f"{self.source}:{line_number}",
                    code=errors.OUT_OF_RANGE,
                    field=field.name,
                    message=f"field {field.name!r} is {value}, beyond the 64-bit integer range"
                    + ("; declare the key as text in the schema (key: {type: string})" if is_key else ""),
                    key=str(value) if is_key else self.layout.record_key(self.source, line_number, record),
                    instance=record,
                )
            if value is None or has_type(value, field.type):
                continue
            return errors.error_record(
                source=f"{self.source}:{line_number}",
                code=errors.WRONG_TYPE,
                field=field.name,
                message=f"field {field.name!r} must be {TYPE_DESCRIPTIONS[field.type]}, got {preview(value)}"
                + _type_hint(self.layout, field, value),
                key=self.layout.record_key(self.source, line_number, record),
                instance=record,
            )
        return None


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _type_hint(layout: RecordLayout, field, value) -> str:
    if field.name in layout.untyped:
        return f" (declare its type: --passthrough_fields {field.name}:int or :float)"
    if field.name == layout.key_field and isinstance(value, int) and field.type == "string":
        return " (quote the key, or declare it key: {type: int} in the schema and re-export the model)"
    return ""


def _has_surrogates(value) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= c <= "\udcff" for c in value)
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogates(v) for v in value.values())
    return False


def _replace_surrogates(value):
    """A copy with the undecodable bytes as U+FFFD, so the error file stays valid UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


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
