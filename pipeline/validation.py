"""Vectorised record validation against the model description.

Each check is an Arrow compute kernel over a whole column; only the (rare) failing rows
are turned into Python error records. A row gets at most one error: the first failing
check, in the order missing field (or key), out of range (or not a finite number), list too
long, invalid image (not JPEG/PNG, too many bytes or pixels). Unknown categories are not
errors: the model scores them through its out-of-vocabulary buckets.

The limits bound what one hostile record can cost: a list's items are padded across its
batch, and an image's pixels are allocated when decoded (a 47 KB PNG can declare 20,000 x
20,000 pixels: 1.2 GB). Image sizes are read from the file header (PNG IHDR, JPEG SOF), a
few hundred bytes decoded per image.
"""

from __future__ import annotations

import binascii

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import errors
from pipeline.blocks import LINE_COLUMN, RecordBlock, RecordLayout

# base64 of the JPEG (FF D8 FF) and PNG (89 50 4E 47 0D 0A 1A 0A) signatures, followed by
# nothing but the base64 alphabet. Images that pass but are corrupt further in are caught
# by the inference step, which isolates them.
_IMAGE_PATTERN = r"^(/9j/|iVBORw0KGgo)[A-Za-z0-9+/]*={0,2}\s*$"

MAX_LIST_ITEMS = 1000  # items in one list field (interests)
MAX_IMAGE_BYTES = 16 << 20  # base64 characters of one image (12 MB of JPEG/PNG)
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height declared by an image's header


def validate_block(block: RecordBlock, layout: RecordLayout) -> tuple[RecordBlock | None, list[dict]]:
    """Returns (the rows that pass, or None if none do; one error record per failing row)."""
    batch = block.batch
    num_rows = batch.num_rows
    failed = np.zeros(num_rows, dtype=bool)
    failures: list[tuple[int, str, str, str]] = []  # (row, code, field, message)

    def flag(mask: np.ndarray, code: str, field: str, message) -> None:
        new = mask & ~failed
        for row in np.flatnonzero(new):
            failures.append((int(row), code, field, message(row) if callable(message) else message))
        failed[new] = True

    if layout.require_key and batch.column(layout.key_field).null_count:
        flag(
            _to_mask(batch.column(layout.key_field).is_null()),
            errors.MISSING_FIELD,
            layout.key_field,
            f"record has no key field {layout.key_field!r}, so its prediction could not be joined back; "
            "give every record a key (or declare key: {from: line} in the schema)",
        )
    for field in layout.fields:
        column = batch.column(field.name)
        if field.required and column.null_count:
            flag(
                _to_mask(column.is_null()),
                errors.MISSING_FIELD,
                field.name,
                f"required field {field.name!r} is missing or null; give every record a value for it "
                "(the schema declares no missing: rule for it)",
            )
    for field in layout.fields:
        column = batch.column(field.name)
        if field.type == "float" and column.null_count < len(column):
            # NaN is the model's missing marker and Infinity has no encoding: neither is a value.
            not_finite = pc.and_(column.is_valid(), pc.invert(pc.is_finite(column)))
            flag(
                _to_mask(not_finite),
                errors.OUT_OF_RANGE,
                field.name,
                lambda row, f=field, c=column: (
                    f"field {f.name!r} is {c[int(row)].as_py()}, not a finite number"
                ),
            )
        if field.range and field.type in ("int", "float"):
            low, high = field.range
            outside = _to_mask(pc.or_(pc.less(column, low), pc.greater(column, high)))
            flag(
                outside,
                errors.OUT_OF_RANGE,
                field.name,
                lambda row, f=field, c=column: (
                    f"field {f.name!r} is {c[int(row)].as_py()}, outside the valid range "
                    f"[{f.range[0]}, {f.range[1]}]"
                ),
            )
        if field.type == "string_list" and column.null_count < len(column):
            lengths = pc.list_value_length(column)
            flag(
                _to_mask(pc.greater(lengths, MAX_LIST_ITEMS)),
                errors.OUT_OF_RANGE,
                field.name,
                lambda row, f=field, n=lengths: (
                    f"field {f.name!r} has {n[int(row)].as_py()} items, more than the limit of "
                    f"{MAX_LIST_ITEMS} (pipeline.validation.MAX_LIST_ITEMS)"
                ),
            )
        if field.type == "image":
            bad = pc.invert(pc.match_substring_regex(column, _IMAGE_PATTERN))
            flag(
                _to_mask(bad),
                errors.INVALID_IMAGE,
                field.name,
                f"field {field.name!r} is not a base64-encoded JPEG or PNG image",
            )
            sizes = pc.binary_length(column)
            flag(
                _to_mask(pc.greater(sizes, MAX_IMAGE_BYTES)),
                errors.INVALID_IMAGE,
                field.name,
                lambda row, f=field, n=sizes: (
                    f"field {f.name!r} is {n[int(row)].as_py():,} base64 characters, more than the limit "
                    f"of {MAX_IMAGE_BYTES:,} (pipeline.validation.MAX_IMAGE_BYTES)"
                ),
            )
            too_large, messages = _oversized_images(column, failed)
            flag(
                too_large,
                errors.INVALID_IMAGE,
                field.name,
                lambda row, m=messages, f=field: f"field {f.name!r} {m[int(row)]}",
            )
    if not failures:
        return block, []
    error_records = [_error_for_row(block, layout, *failure) for failure in sorted(failures)]
    passing = np.flatnonzero(~failed)
    if not len(passing):
        return None, error_records
    return RecordBlock(block.source, batch.take(pa.array(passing))), error_records


def _oversized_images(column: pa.Array, failed: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rows whose image header declares more than MAX_IMAGE_PIXELS (rows already failed skipped)."""
    mask, messages = np.zeros(len(column), dtype=bool), {}
    values = column.to_pylist()  # a Python str per image: ~1 us each, the header read dominates
    for row in np.flatnonzero(~failed).tolist():
        size = image_size(values[row]) if values[row] else None
        if size and size[0] * size[1] > MAX_IMAGE_PIXELS:
            mask[row] = True
            messages[row] = (
                f"declares {size[0]} x {size[1]} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                "(pipeline.validation.MAX_IMAGE_PIXELS); resize it before scoring"
            )
    return mask, messages


# JPEG start-of-frame markers (the ones that carry the image size): C0-CF but C4, C8, CC.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(b64: str) -> tuple[int, int] | None:
    """(width, height) from a base64 JPEG or PNG's header, decoding only what it needs."""
    prefix = 1024
    while True:
        head = _b64_prefix(b64, prefix)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
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


def _error_for_row(block: RecordBlock, layout: RecordLayout, row: int, code, field, message) -> dict:
    record = block.batch.slice(row, 1).to_pylist()[0]
    line = record.pop(LINE_COLUMN)
    instance = {k: v for k, v in record.items() if v is not None}
    return errors.error_record(
        source=f"{block.source}:{line}",
        code=code,
        field=field,
        message=message,
        key=layout.record_key(block.source, line, record),
        instance=instance,
    )


def record_keys(block: RecordBlock, layout: RecordLayout) -> pa.Array:
    """The key of every row: the key field, or "<file>:<line>" when records have none."""
    if layout.key_field:
        return block.batch.column(layout.key_field)
    lines = pc.cast(block.batch.column(LINE_COLUMN), pa.string())
    return pc.binary_join_element_wise(block.source + ":", lines, "")
