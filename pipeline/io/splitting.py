"""Reading one large file on several workers: byte ranges of text files, row groups of Parquet.

A file larger than `--split_bytes` is cut into parts that workers read in parallel, as
Beam's own text source does; a smaller one is one part.

- **JSON Lines and CSV** are cut into byte ranges. A record belongs to the range holding its
  first byte: a reader starts after the first newline at or after its range's start - 1 and
  stops at the first newline at or after its end - 1, so a record on a boundary is read
  once. Line numbers (keys `<file>:<line>`, error records) must stay those of a whole-file
  read, so a first, cheap pass counts each range's newlines (in parallel; `bytes.count`
  speed, no parsing) and each range starts numbering after the newlines before it.
- **CSV with a newline inside a quoted value** cannot be cut at any newline. The counting
  pass also counts, for each range, the newlines inside quotes (RFC 4180: after an odd
  number of `"` from the start of the file), and a file with any is read whole by one
  worker, exactly as before. A stray, unclosed quote makes the rest of the file "inside
  quotes", so such a file is read whole too, and its one broken record is found as before.
- **Parquet** is cut into runs of whole row groups (their sizes are in the footer), rows
  numbered from the row groups before.
- **TFRecord** is not cut: a record has no sync marker to find from an arbitrary offset
  (its length and CRC could appear inside another record's data), which is also why
  Beam's TFRecord source is not splittable. Nor is a `.gz` file: gzip has no index.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.io import COMPRESSED_SUFFIX

DEFAULT_SPLIT_BYTES = 64 << 20
_SCAN_BYTES = 1 << 20  # read size when looking for a range's first or last newline
LINES, ROW_GROUPS = "lines", "row_groups"


@dataclasses.dataclass(frozen=True)
class FilePart:
    """What one read task covers: a byte range [start, end) of a text file, row groups
    [start, end) of a Parquet file, or (`parts == 1`) the whole file."""

    path: str
    index: int = 0
    parts: int = 1
    start: int = 0
    end: int = 0
    kind: str | None = None  # LINES | ROW_GROUPS | None (whole file)
    first_row: int = 1  # Parquet: number of the part's first row

    @property
    def whole(self) -> bool:
        return self.parts == 1


@dataclasses.dataclass(frozen=True)
class RangeCounts:
    """What the counting pass finds in one byte range."""

    newlines: int
    quotes: int
    # Newlines inside quotes if the range starts outside quotes, and if it starts inside.
    quoted_if_outside: int = 0
    quoted_if_inside: int = 0


def plan_parts(path: str, size: int, fmt, split_bytes: int) -> list[FilePart]:
    """The parts of one file: several for a large splittable file, else the whole file."""
    kind = fmt.split
    if not split_bytes or kind is None or path.endswith(COMPRESSED_SUFFIX) or size <= split_bytes:
        return [FilePart(path, end=size)]
    if kind == ROW_GROUPS:
        return _row_group_parts(path, split_bytes)
    count = -(-size // split_bytes)
    bounds = [size * i // count for i in range(count + 1)]
    return [FilePart(path, i, count, bounds[i], bounds[i + 1], LINES) for i in range(count)]


def _row_group_parts(path: str, split_bytes: int) -> list[FilePart]:
    import pyarrow.parquet as pq

    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            metadata = pq.ParquetFile(f).metadata
    except Exception:  # noqa: BLE001 - the whole-file reader reports an unreadable file
        return [FilePart(path)]
    runs, start, run_bytes, rows_before, first_row = [], 0, 0, 0, 1
    for group in range(metadata.num_row_groups):
        run_bytes += metadata.row_group(group).total_byte_size
        rows_before += metadata.row_group(group).num_rows
        if run_bytes >= split_bytes or group == metadata.num_row_groups - 1:
            runs.append((start, group + 1, first_row))
            start, run_bytes, first_row = group + 1, 0, rows_before + 1
    if len(runs) <= 1:
        return [FilePart(path)]
    return [FilePart(path, i, len(runs), s, e, ROW_GROUPS, first) for i, (s, e, first) in enumerate(runs)]


def count_range(part: FilePart, quoted: bool) -> RangeCounts:
    """Newlines (and for CSV quotes, and newlines inside quotes) in the part's byte range."""
    newlines = quotes = inside_if_outside = 0
    with FileSystems.open(part.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(part.start)
        left = part.end - part.start
        while left > 0:
            data = f.read(min(left, 8 << 20))
            if not data:
                break
            left -= len(data)
            if not quoted or b'"' not in data:
                found = data.count(b"\n")
                if quoted and quotes % 2:  # every newline of this piece is inside quotes
                    inside_if_outside += found
                newlines += found
                continue
            array = np.frombuffer(data, np.uint8)
            at_newlines = np.flatnonzero(array == 10)
            at_quotes = np.flatnonzero(array == 34)
            odd = (np.searchsorted(at_quotes, at_newlines) + quotes) % 2 == 1
            inside_if_outside += int(odd.sum())
            newlines += len(at_newlines)
            quotes += len(at_quotes)
    return RangeCounts(newlines, quotes, inside_if_outside, newlines - inside_if_outside)


def part_starts(path: str, counted: list[tuple[int, RangeCounts]]) -> list[tuple[tuple[str, int], tuple]]:
    """((path, index), (newlines before the part, read whole)) for every part of one file.

    `read whole` is set when some newline of the file lies inside quotes (CSV): then the
    first part reads the whole file and the others nothing.
    """
    newlines_before, quotes_before, quoted_newlines = 0, 0, 0
    starts = []
    for index, counts in sorted(counted, key=lambda item: item[0]):
        starts.append((index, newlines_before))
        quoted_newlines += counts.quoted_if_inside if quotes_before % 2 else counts.quoted_if_outside
        newlines_before += counts.newlines
        quotes_before += counts.quotes
    whole = quoted_newlines > 0 or quotes_before % 2 == 1
    return [((path, index), (before, whole)) for index, before in starts]


class LineRange:
    """A read-only stream of the records that start in a byte range of a text file.

    Begins after the first newline at or after `start - 1` and ends with the first newline
    at or after `end - 1` (at end of file for the last range). `first_line` is the line
    number of its first record; `empty` says that no record starts in the range.
    """

    def __init__(self, part: FilePart, newlines_before: int):
        self._file = FileSystems.open(part.path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._end = part.end
        self._last = part.index == part.parts - 1
        self.first_line = 1
        self.empty = False
        begin = 0
        if part.start > 0:
            newline = self._find_newline(part.start - 1)
            if newline is None or newline + 1 >= part.end:
                self.empty = True  # the record under way at the start ends in a later range
            else:
                begin = newline + 1
                self.first_line = newlines_before + (1 if newline >= part.start else 0) + 1
        self._file.seek(begin)
        self._position = begin
        self._done = self.empty
        self._tail = False

    def _find_newline(self, offset: int) -> int | None:
        self._file.seek(offset)
        position = offset
        while True:
            data = self._file.read(_SCAN_BYTES)
            if not data:
                return None
            found = data.find(b"\n")
            if found >= 0:
                return position + found
            position += len(data)

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        size = _SCAN_BYTES if size is None or size < 0 else size
        if not self._tail and (self._last or self._position < self._end):
            wanted = size if self._last else min(size, self._end - self._position)
            data = self._file.read(wanted)
            self._position += len(data)
            if not data:
                self._done = True
            elif not self._last and self._position >= self._end:
                # The range's last byte ends a line: the next record is the next range's.
                self._tail = True
                self._done = data.endswith(b"\n")
            return data
        data = self._file.read(size)  # the record under way at the end: up to its newline
        found = data.find(b"\n")
        if found >= 0 or not data:
            self._done = True
            return data[: found + 1] if found >= 0 else data
        return data

    def close(self) -> None:
        self._file.close()
