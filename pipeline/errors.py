"""Error records: one per input record that cannot be scored, in the shape DESIGN.md fixes.

`{"key", "source": "<file>:<line>", "instance": <raw record>, "error": {"code", "field",
"message"}}`. The codes are a closed set so that `prediction.errors_stats` can count them
and alerts can match on them.
"""

from __future__ import annotations

import base64
import math
from typing import Any

MALFORMED_RECORD = "malformed_record"  # not valid JSON / wrong number of CSV columns
MISSING_FIELD = "missing_field"  # a required field is absent or null
WRONG_TYPE = "wrong_type"  # e.g. "age": "old"
OUT_OF_RANGE = "out_of_range"  # outside the range the schema declares
INVALID_IMAGE = "invalid_image"  # not base64, or not a JPEG/PNG
INFERENCE_FAILED = "inference_failed"  # the model rejected this record alone

CODES = (MALFORMED_RECORD, MISSING_FIELD, WRONG_TYPE, OUT_OF_RANGE, INVALID_IMAGE, INFERENCE_FAILED)

# Error records per element of an errors PCollection: a step per list, not per error, is what
# makes a million bad lines cost about what a million good ones do.
ERROR_BATCH = 1024

# Long values (base64 images) are cut in the `instance` copy so error files stay readable.
MAX_INSTANCE_VALUE_CHARS = 200


def error_record(
    *,
    source: str,
    code: str,
    message: str,
    field: str | None = None,
    key: Any = None,
    instance: Any = None,
) -> dict:
    assert code in CODES, code
    return {
        "key": _shorten(key, cut=False),
        "source": source,
        "instance": _shorten(instance),
        "error": {"code": code, "field": field, "message": message},
    }


def _json_safe(value: Any) -> Any:
    """Bytes (a tf.Example or Parquet binary value) as text, or as {"b64": ...} if not UTF-8;
    NaN and Infinity (not JSON) as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _shorten(value: Any, cut: bool = True) -> Any:
    """A copy fit for a JSON error file: long strings cut, bytes and NaN/Infinity as text."""
    value = _json_safe(value)
    if cut and isinstance(value, str) and len(value) > MAX_INSTANCE_VALUE_CHARS:
        return value[:MAX_INSTANCE_VALUE_CHARS] + f"...({len(value)} chars)"
    if isinstance(value, dict):
        return {str(_json_safe(k)): _shorten(v, cut) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, cut) for v in value]
    return value
