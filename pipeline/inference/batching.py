"""Cutting a block of records into model calls: near-equal batches, narrowed where a long
list would pad the whole batch, cut where creatives' bytes would pass the memory cap."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Most bytes of text and image values per model call. The model copies a batch's strings a
# few times (base64 decoding, clean-up) and decodes images while it runs, so its memory
# grows with them: 2,048 records of 1 MB creatives would be 2 GB per copy.
DEFAULT_MAX_BATCH_BYTES = 64 << 20
# Most padded list cells (rows x longest list) in one model call: 4M strings, ~130 MB.
MAX_PADDED_LIST_CELLS = 1 << 22
# Input types whose values vary in size, counted against --max_batch_bytes.
SIZED_TYPES = ("string", "image", "string_list")


def call_slices(
    batch: pa.RecordBatch, batch_size: int, layout, max_batch_bytes: int
) -> list[tuple[int, int]]:
    """(start, size) of the model calls that score `batch`: `batch_slices`, then
    `narrow_batches` for list fields, then `byte_bounded` for text and image fields."""
    list_fields = [f.name for f in layout.fields if f.type == "string_list"]
    sized_fields = [f.name for f in layout.fields if f.type in SIZED_TYPES]
    slices = narrow_batches(batch, batch_slices(batch.num_rows, batch_size), list_fields)
    return byte_bounded(batch, slices, sized_fields, max_batch_bytes)


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


def total_bytes(batch: pa.RecordBatch, fields) -> int:
    """Bytes of all the values in `fields` (at least `row_bytes`' sum), read off the columns'
    offsets: a block whose creatives all fit one call is not measured row by row."""
    total = 0
    for name in fields:
        column = batch.column(name)
        if not len(column):
            continue
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            first, last = _bounds(column)
            column = column.values.slice(first, last - first)  # the strings of these rows
            if not len(column):
                continue
        first, last = _bounds(column)
        total += last - first
    return total


def _bounds(column: pa.Array) -> tuple[int, int]:
    """The first and last value offsets of a string, binary or list column (its slice)."""
    large = pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)
    offset_type = np.int64 if large or pa.types.is_large_list(column.type) else np.int32
    offsets = np.frombuffer(
        column.buffers()[1], offset_type, len(column) + 1, column.offset * offset_type().itemsize
    )
    return int(offsets[0]), int(offsets[-1])


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
    if not max_bytes or not fields or not slices or total_bytes(batch, fields) <= max_bytes:
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


class RecordBytes:
    """About the bytes a raw record takes in a block: its text and image values, and a few
    bytes for each other field (numbers). Batches of records are cut by it."""

    PER_FIELD = 16

    def __init__(self, layout):
        self._fields = tuple(f.name for f in layout.all_fields if f.type in SIZED_TYPES)
        self._other = self.PER_FIELD * (len(layout.all_fields) - len(self._fields))

    def __call__(self, record) -> int:
        if not isinstance(record, dict):
            return self.PER_FIELD
        size = self._other
        for name in self._fields:
            value = record.get(name)
            if isinstance(value, str):
                size += len(value)
            elif isinstance(value, list):
                size += sum(len(item) for item in value if isinstance(item, str))
            elif isinstance(value, dict):  # {"b64": ...}
                size += sum(len(item) for item in value.values() if isinstance(item, str))
        return max(size, 1)
