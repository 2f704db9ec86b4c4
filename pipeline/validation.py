"""Vectorised record validation against the model description.

Each check is an Arrow compute kernel over a whole column; only the (rare) failing rows
are turned into Python error records. A row gets at most one error: the first failing
check, in the order missing field (or key), out of range (or not a finite number), invalid image. Unknown categories are
not errors: the model scores them through its out-of-vocabulary buckets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import errors
from pipeline.blocks import LINE_COLUMN, RecordBlock, RecordLayout

# base64 of the JPEG (FF D8 FF) and PNG (89 50 4E 47 0D 0A 1A 0A) signatures, followed by
# nothing but the base64 alphabet. Images that pass but are corrupt further in are caught
# by the inference step, which isolates them.
_IMAGE_PATTERN = r"^(/9j/|iVBORw0KGgo)[A-Za-z0-9+/]*={0,2}\s*$"


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
                f"required field {field.name!r} is missing or null",
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
        if field.type == "image":
            bad = pc.invert(pc.match_substring_regex(column, _IMAGE_PATTERN))
            flag(
                _to_mask(bad),
                errors.INVALID_IMAGE,
                field.name,
                f"field {field.name!r} is not a base64-encoded JPEG or PNG image",
            )
    if not failures:
        return block, []
    error_records = [_error_for_row(block, layout, *failure) for failure in sorted(failures)]
    passing = np.flatnonzero(~failed)
    if not len(passing):
        return None, error_records
    return RecordBlock(block.source, batch.take(pa.array(passing))), error_records


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
