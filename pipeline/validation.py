"""Vectorised record validation against the model description.

Each check is an Arrow compute kernel over a whole column; only the (rare) failing rows
are turned into Python error records. A row gets at most one error: the first failing
check, in the order missing field (or key), out of range (or not a finite number), list too
long, invalid image (not JPEG/PNG, too many bytes or pixels). Unknown categories are not
errors: the model scores them through its out-of-vocabulary buckets.

The limits bound what one hostile record can cost: a list's items are padded across its
batch, and an image's pixels are allocated when decoded (a 47 KB PNG can declare 20,000 x
20,000 pixels: 1.2 GB). Image sizes are read from the file header (PNG IHDR, JPEG SOF), for
the whole column at once in numpy, decoding from the base64 text only the bytes of its markers.

`CheckedRecords` runs it on what a reader yields, in the reading step itself: every source
(files, BigQuery, a Beam user's records) validates the same way.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import counters, errors
from pipeline.blocks import LINE_COLUMN, PNG_SIGNATURE, RecordBlock, RecordLayout, string_buffer_view
from pipeline.run_contract import READ

RECORDS = "records"  # a reading step's output: valid record blocks and lists of error records
COUNTS = "counts"  # a reading step's ("read", number of records) pairs, for the run's final check

# base64 of the JPEG (FF D8 FF) and PNG (89 50 4E 47 0D 0A 1A 0A) signatures, followed by
# nothing but the base64 alphabet. Images that pass but are corrupt further in are caught
# by the inference step, which isolates them.
_IMAGE_PATTERN = r"^(/9j/|iVBORw0KGgo)[A-Za-z0-9+/]*={0,2}\s*$"

MAX_LIST_ITEMS = 1000  # items in one list field (interests)
MAX_IMAGE_BYTES = 16 << 20  # base64 characters of one image (12 MB of JPEG/PNG)
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height declared by an image's header


def validate_block(block: RecordBlock, layout: RecordLayout) -> tuple[RecordBlock | None, list[dict]]:
    """Returns (the rows that pass, or None if none do; one error record per failing row).

    The error records of the whole block in one list: for a few records at a time (a batch
    of `RecordModelHandler`, tests). A reading step uses `check_block`, whose error records
    come in bounded lists."""
    valid, error_lists = check_block(block, layout)
    return valid, [error for error_list in error_lists for error in error_list]


def check_block(
    block: RecordBlock, layout: RecordLayout, batch_size: int = errors.ERROR_BATCH
) -> tuple[RecordBlock | None, Iterator[list[dict]]]:
    """Returns (the rows that pass, or None if none do; the error records of the failing rows,
    one per row in row order, in lists of up to `batch_size`, made as they are iterated).

    A block may hold millions of rows (8 MiB of `{}` lines is 2.8 million records): what a
    failing row costs until its list is made is two bytes (which check failed it), so the
    memory of a block's errors is one list's, however many rows fail.
    """
    batch = block.batch
    failures = _Failures(batch.num_rows)
    _check_key(batch, layout, failures)
    for field in layout.fields:
        _check_required(field, batch.column(field.name), failures)
    for field in layout.fields:
        column = batch.column(field.name)
        if field.type in ("int", "float"):
            _check_number(field, column, failures)
        elif field.type == "string_list":
            _check_list(field, column, failures)
        elif field.type == "image":
            _check_image(field, column, failures)
    if not failures.checks:
        return block, iter(())
    error_lists = _error_lists(block, layout, failures, batch_size)
    passing = np.flatnonzero(~failures.failed)
    if not len(passing):
        return None, error_lists
    return RecordBlock(block.source, batch.take(pa.array(passing))), error_lists


class _Failures:
    """The first failure of each row: which rows failed and, per row, which check failed it
    (an index into `checks`: (code, field, message)); a message may be row -> text, made
    only when the row's error record is."""

    def __init__(self, num_rows: int):
        self.failed = np.zeros(num_rows, dtype=bool)
        self.first_check = np.zeros(num_rows, dtype=np.int16)
        self.checks: list[tuple[str, str, object]] = []

    def flag(self, mask: np.ndarray, code: str, field: str, message) -> None:
        """Fails the rows of `mask` that have not failed yet; `message` is text or row -> text."""
        new = mask & ~self.failed
        if not new.any():
            return
        self.first_check[new] = len(self.checks)
        self.checks.append((code, field, message))
        self.failed[new] = True

    def failure(self, row: int) -> tuple[str, str, str]:
        """(code, field, message) of a failed row."""
        code, field, message = self.checks[self.first_check[row]]
        return code, field, message(row) if callable(message) else message


def _error_lists(block: RecordBlock, layout: RecordLayout, failures: _Failures, size: int):
    """The error records of the failed rows, in lists of up to `size`: one Arrow take and one
    conversion to Python per list, not per row."""
    rows = np.flatnonzero(failures.failed)
    for first in range(0, len(rows), size):
        chunk = rows[first : first + size].tolist()
        records = block.batch.take(pa.array(chunk, pa.int64())).to_pylist()
        yield [
            _row_error(block.source, layout, record, *failures.failure(row))
            for row, record in zip(chunk, records, strict=True)
        ]


def _check_key(batch: pa.RecordBatch, layout: RecordLayout, failures: _Failures) -> None:
    if layout.require_key and batch.column(layout.key_field).null_count:
        failures.flag(
            _to_mask(batch.column(layout.key_field).is_null()),
            errors.MISSING_FIELD,
            layout.key_field,
            f"record has no key field {layout.key_field!r}, so its prediction could not be joined back; "
            "give every record a key (or declare key: {from: line} in the schema)",
        )


def _check_required(field, column: pa.Array, failures: _Failures) -> None:
    if field.required and column.null_count:
        failures.flag(
            _to_mask(column.is_null()),
            errors.MISSING_FIELD,
            field.name,
            f"required field {field.name!r} is missing or null; give every record a value for it "
            "(the schema declares no missing: rule for it)",
        )


def _check_number(field, column: pa.Array, failures: _Failures) -> None:
    if field.type == "float" and column.null_count < len(column):
        # NaN is the model's missing marker and Infinity has no encoding: neither is a value.
        not_finite = pc.and_(column.is_valid(), pc.invert(pc.is_finite(column)))
        failures.flag(
            _to_mask(not_finite),
            errors.OUT_OF_RANGE,
            field.name,
            lambda row: f"field {field.name!r} is {column[int(row)].as_py()}, not a finite number",
        )
    if field.range:
        low, high = field.range
        failures.flag(
            _to_mask(pc.or_(pc.less(column, low), pc.greater(column, high))),
            errors.OUT_OF_RANGE,
            field.name,
            lambda row: (
                f"field {field.name!r} is {column[int(row)].as_py()}, outside the valid range [{low}, {high}]"
            ),
        )


def _check_list(field, column: pa.Array, failures: _Failures) -> None:
    if column.null_count < len(column):
        lengths = pc.list_value_length(column)
        failures.flag(
            _to_mask(pc.greater(lengths, MAX_LIST_ITEMS)),
            errors.OUT_OF_RANGE,
            field.name,
            lambda row: (
                f"field {field.name!r} has {lengths[int(row)].as_py()} items, more than the limit of "
                f"{MAX_LIST_ITEMS} (pipeline.validation.MAX_LIST_ITEMS)"
            ),
        )


def _check_image(field, column: pa.Array, failures: _Failures) -> None:
    text = pc.fill_null(column, "") if column.null_count else column  # filled once, for both readers
    failures.flag(
        _to_mask(pc.invert(_matches_image_pattern(column, text))),
        errors.INVALID_IMAGE,
        field.name,
        f"field {field.name!r} is not a base64-encoded JPEG or PNG image",
    )
    sizes = pc.binary_length(column)
    failures.flag(
        _to_mask(pc.greater(sizes, MAX_IMAGE_BYTES)),
        errors.INVALID_IMAGE,
        field.name,
        lambda row: (
            f"field {field.name!r} is {sizes[int(row)].as_py():,} base64 characters, more than the limit "
            f"of {MAX_IMAGE_BYTES:,} (pipeline.validation.MAX_IMAGE_BYTES)"
        ),
    )
    too_large, messages = _oversized_images(text, failures.failed)
    failures.flag(
        too_large, errors.INVALID_IMAGE, field.name, lambda row: f"field {field.name!r} {messages[int(row)]}"
    )


def _matches_image_pattern(column: pa.Array, text: pa.Array | None = None) -> pa.Array:
    """`match_substring_regex(column, _IMAGE_PATTERN)`, the regex run only where it must be
    (`text`: the column with its nulls filled with "", if the caller has it).

    The regex reads every character of every image (133 ms for the 91 MB of 40,000 demo
    images). Deleting the base64 alphabet from the column's text in one C pass
    (`bytes.translate`, with the copies it needs, 34 ms) leaves what the alphabet lacks:
    when that is nothing but the "=" that pad the ends of the rows (counted from each row's
    last two characters), each row matches exactly when it starts like a JPEG or a PNG.
    Anything else (blanks, a third "=", a character outside base64) and the regex decides.
    """
    starts_like_image = pc.or_(pc.starts_with(column, "/9j/"), pc.starts_with(column, "iVBORw0KGgo"))
    if text is None:
        text = pc.fill_null(column, "") if column.null_count else column
    data, offsets = string_buffer_view(text)
    # In 1 MiB pieces: one copy of the whole text would cost more than the translation.
    rest = b"".join(
        data[at : at + _PIECE].tobytes().translate(None, _BASE64_ALPHABET)
        for at in range(0, len(data), _PIECE)
    )
    if rest.count(b"=") == len(rest) == int(_padding(data, offsets[:-1], np.diff(offsets)).sum()):
        return starts_like_image
    return pc.match_substring_regex(column, _IMAGE_PATTERN)


def _padding(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """How many "=" (0-2) end each row of base64 text (data[starts:starts+lengths])."""
    if not len(data):
        return np.zeros(len(starts), np.int64)
    last = len(data) - 1
    ends = [(data[np.clip(starts + lengths - back, 0, last)] == _PAD) & (lengths >= back) for back in (1, 2)]
    return ends[0].astype(np.int64) + (ends[0] & ends[1])


def _oversized_images(column: pa.Array, failed: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rows whose image header declares more than MAX_IMAGE_PIXELS (rows already failed skipped)."""
    widths, heights = declared_sizes(column, np.flatnonzero(~failed))
    mask = widths * heights > MAX_IMAGE_PIXELS
    messages = {
        row: (
            f"declares {widths[row]} x {heights[row]} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
            "(pipeline.validation.MAX_IMAGE_PIXELS); resize it before scoring"
        )
        for row in np.flatnonzero(mask).tolist()
    }
    return mask, messages


def declared_sizes(images: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(widths, heights) declared by the headers of `rows` of a column of base64 JPEG/PNG
    images, 0 where none is read (other rows 0): what `image_size` gives, for all at once.

    Only the bytes a header needs are decoded, in numpy, straight from the base64 text: a
    PNG's IHDR, and a JPEG's markers one segment at a time (each row jumps over its own
    segments, however long) up to its start of frame. As a Python loop this took 7.3 us a
    record of the demo's 32x32 JPEGs, holding the GIL beside the model's calls (AMD EPYC,
    2026-12-05). `image_size` still reads the rare rows this leaves: a text with blanks after
    it or not whole base64 quads (which Python's decoder reads its own way), and a JPEG with
    more than _JPEG_STEPS segments before its frame.
    """
    widths, heights = np.zeros(len(images), np.int64), np.zeros(len(images), np.int64)
    if not len(rows):
        return widths, heights
    if images.null_count:
        images = pc.fill_null(images, "")
    data, offsets = string_buffer_view(images)
    if not len(data):
        return widths, heights
    starts = offsets[:-1].astype(np.int64)[rows]
    lengths = offsets[1:].astype(np.int64)[rows] - starts
    last = len(data) - 1
    blank = np.isin(data[np.clip(starts + lengths - 1, 0, last)], _BLANK_BYTES) & (lengths > 0)
    decodable = (lengths - _padding(data, starts, lengths)) * 6 // 8  # bytes the base64 text holds

    def text(which: np.ndarray, position: np.ndarray, count: int):
        return _base64_bytes(data, last, starts[which], decodable[which], position, count)

    everything = np.arange(len(rows))
    head, known = text(everything, np.zeros(len(rows), np.int64), 24)
    png = known[:, 23] & (head[:, :8] == np.frombuffer(PNG_SIGNATURE, np.uint8)).all(axis=1)
    widths[rows[png]] = _big_endian(head[png, 16:20])
    heights[rows[png]] = _big_endian(head[png, 20:24])
    jpeg = known[:, 1] & (head[:, 0] == 0xFF) & (head[:, 1] == 0xD8)
    left = (png | jpeg) & ((lengths % 4 != 0) | blank)

    walking, position = np.flatnonzero(jpeg & ~left), np.full(len(rows), 2, np.int64)
    for _ in range(_JPEG_STEPS):
        if not len(walking):
            break
        marker, known = text(walking, position[walking], 9)
        readable = known[:, 8] & (marker[:, 0] == 0xFF)  # else no header to read: image_size's None
        frame = readable & np.isin(marker[:, 1], _JPEG_FRAME_MARKER_CODES)
        heights[rows[walking[frame]]] = _big_endian(marker[frame, 5:7])
        widths[rows[walking[frame]]] = _big_endian(marker[frame, 7:9])
        segment = np.where(marker[:, 1] == 0xFF, 1, 2 + _big_endian(marker[:, 2:4]))  # FF FF: a fill byte
        position[walking] += segment
        walking = walking[readable & ~frame]
    left[walking] = True
    for index in np.flatnonzero(left).tolist():
        row = int(rows[index])
        widths[row], heights[row] = image_size(images[row].as_py()) or (0, 0)
    return widths, heights


def _base64_bytes(data: np.ndarray, last: int, starts, decodable, position: np.ndarray, count: int):
    """Bytes position..position+count-1 (rows x count) of each row's base64 text (`data` from
    `starts`), decoded from the quads of 4 characters that hold them; and whether each lies
    within the text (`decodable` bytes; one outside reads as garbage, from at most data[last])."""
    quads = (2 + count + 2) // 3  # enough for any start within a quad
    first_char = starts + position // 3 * 4
    chars = first_char[:, None] + np.arange(quads * 4)
    if len(first_char) and first_char.max() + quads * 4 > last:
        np.minimum(chars, last, out=chars)
    values = _BASE64_VALUES[data[chars]].reshape(len(position), quads, 4)
    words = values[..., 0] << 18 | values[..., 1] << 12 | values[..., 2] << 6 | values[..., 3]
    decoded = (words[..., None] >> _BYTE_SHIFTS).reshape(len(position), quads * 3)
    wanted = (position % 3)[:, None] + np.arange(count)
    known = position[:, None] + np.arange(count) < decodable[:, None]
    return np.take_along_axis(decoded, wanted, axis=1).astype(np.int64) & 0xFF, known


def _big_endian(columns: np.ndarray) -> np.ndarray:
    """Bytes (rows x k, most significant first) as one unsigned integer per row."""
    value = np.zeros(len(columns), np.int64)
    for index in range(columns.shape[1]):
        value = value << 8 | columns[:, index]
    return value


_PIECE = 1 << 20
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_VALUES = np.zeros(256, np.uint32)
_BASE64_VALUES[np.frombuffer(_BASE64_ALPHABET, np.uint8)] = np.arange(64)
_BYTE_SHIFTS = np.array([16, 8, 0], np.uint32)  # a quad's 24 bits, first byte highest
_PAD = ord("=")
_BLANK_BYTES = np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8)
_JPEG_STEPS = 64  # JPEG segments walked in numpy before a row is left to image_size

# JPEG start-of-frame markers (the ones that carry the image size): C0-CF but C4, C8, CC.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_FRAME_MARKER_CODES = np.array(sorted(_JPEG_FRAME_MARKERS))


def image_size(b64: str) -> tuple[int, int] | None:
    """(width, height) from a base64 JPEG or PNG's header, decoding only what it needs."""
    prefix = 1024
    while True:
        head = _b64_prefix(b64, prefix)
        if head.startswith(PNG_SIGNATURE):
            return (
                (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
                if len(head) >= 24
                else None
            )
        if not head.startswith(b"\xff\xd8"):
            return None
        position = 2
        while position + 9 <= len(head):
            if head[position] != 0xFF:
                return None  # not a marker where one must be: the decoder will reject it
            marker = head[position + 1]
            if marker in _JPEG_FRAME_MARKERS:
                height = int.from_bytes(head[position + 5 : position + 7], "big")
                return int.from_bytes(head[position + 7 : position + 9], "big"), height
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            position += 2 + int.from_bytes(head[position + 2 : position + 4], "big")
        if prefix >= len(b64):
            return None
        prefix = max(prefix * 4, (position + 16) * 4 // 3 + 4)


def _b64_prefix(b64: str, chars: int) -> bytes:
    try:
        return binascii.a2b_base64(b64[: chars - chars % 4])
    except binascii.Error:
        return b""


def _to_mask(array: pa.Array) -> np.ndarray:
    """Boolean Arrow array -> numpy mask, nulls counted as False."""
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(bool)


def error_for_row(block: RecordBlock, layout: RecordLayout, row: int, code, field, message) -> dict:
    """The error record of one row of `block`: its source line, key and raw values."""
    return _row_error(block.source, layout, block.batch.slice(row, 1).to_pylist()[0], code, field, message)


def _row_error(source: str, layout: RecordLayout, record: dict, code, field, message) -> dict:
    """The error record of a row given as a dict of its columns (the line column included)."""
    line = record.pop(LINE_COLUMN)
    instance = {k: v for k, v in record.items() if v is not None}
    return errors.error_record(
        source=f"{source}:{line}",
        code=code,
        field=field,
        message=message,
        key=layout.record_key(source, line, record),
        instance=instance,
    )


def record_keys(block: RecordBlock, layout: RecordLayout) -> pa.Array:
    """The key of every row: the key field, or "<file>:<line>" when records have none."""
    if layout.key_field:
        return block.batch.column(layout.key_field)
    lines = pc.cast(block.batch.column(LINE_COLUMN), pa.string())
    return pc.binary_join_element_wise(block.source + ":", lines, "")


class CheckedRecords:
    """What a reader yields (record blocks, error records) -> validated blocks and lists of
    error records on one stream, plus ("read", n) on COUNTS: the records read, once per call
    (and (("read", file), n) when the call names its file).

    Validation happens in the reading step itself, so read errors and validation errors
    never need a Flatten: Beam's local runner materialises every multi-input Flatten, which
    held all error records of a run in memory (1.3 KB each; 2.1 GB for a million bad lines).
    Errors travel in lists of at most `errors.ERROR_BATCH`, made as they go: a block whose
    every record fails (8 MiB of `{}` lines) never holds its error records all at once.
    """

    RECORDS, COUNTS = RECORDS, COUNTS  # the output tags of a step that yields from it

    def __init__(self, layout: RecordLayout):
        self._layout = layout
        self._read = counters.counter(counters.RECORDS_READ)
        self._malformed = counters.counter(counters.RECORDS_MALFORMED)
        self._invalid = counters.counter(counters.RECORDS_INVALID)

    def __call__(self, items, source: str | None = None):
        """`source`: the input file the items come from, for run.json's per-input counts."""
        read, failed = 0, []
        for item in items:
            if isinstance(item, (dict, list)):
                unread = [item] if isinstance(item, dict) else item
                read += len(unread)
                self._malformed.inc(len(unread))
                counters.add(read=len(unread), errors=len(unread))
                failed += unread
                failed = yield from _full_lists(failed)
                continue
            read += len(item)
            counters.add(read=len(item))
            valid, error_lists = check_block(item, self._layout)
            if valid is not None:
                yield valid
            for error_list in error_lists:
                self._invalid.inc(len(error_list))
                counters.add(errors=len(error_list))
                failed += error_list
                failed = yield from _full_lists(failed)
        if failed:
            yield failed
        self._read.inc(read)
        yield beam.pvalue.TaggedOutput(COUNTS, (READ, read))
        if source is not None:
            yield beam.pvalue.TaggedOutput(COUNTS, ((READ, source), read))


def _full_lists(failed: list[dict]):
    """Yields lists of exactly `errors.ERROR_BATCH` error records from `failed`; returns the rest."""
    while len(failed) >= errors.ERROR_BATCH:
        yield failed[: errors.ERROR_BATCH]
        failed = failed[errors.ERROR_BATCH :]
    return failed
