"""Python records in and out: the format of a Beam user's own PCollections.

In: raw ad records as dicts (`{"id": "ad-17", "age": 34, ...}`, images as base64 text or
`{"b64": ...}`), read exactly as a JSON Lines file of them is read (`pipeline.io.jsonl`):
the same typed columns, the same error records. Each batch of records is written as JSON
lines once and parsed by pyarrow, column-wise; a record that is not a JSON object, or holds
a value JSON cannot carry (bytes, NaN), is an error record of its own. Out: the prediction
records `predict` writes as JSON lines, as dicts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence

from pipeline import errors
from pipeline.blocks import RecordBlock, RecordLayout, ScoredBlock
from pipeline.io import base, jsonl

_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def read_records(records: Sequence, source: str, layout: RecordLayout) -> Iterator[RecordBlock | dict]:
    """Record blocks and error records of `records`, numbered 1.. in the order given (the
    error records' `source` is `<source>:<number>`)."""
    lines, unreadable = [], []
    for number, record in enumerate(records, 1):
        problem = None
        if not isinstance(record, dict):
            problem = f"expected a record (a dict of field values), got {type(record).__name__}"
        else:
            try:
                lines.append(_ENCODER.encode(record).encode("utf-8"))
                continue
            except (TypeError, ValueError) as e:  # bytes, NaN, objects: not what a record holds
                problem = (
                    f"a value cannot be read as a record field ({e}); give str, int, float, bool, None "
                    "or lists of them, and images as base64 text"
                )
        lines.append(b"")  # an empty line keeps the numbering; it is not a record
        unreadable.append(
            errors.error_record(
                source=f"{source}:{number}",
                code=errors.MALFORMED_RECORD,
                message=problem,
                key=layout.record_key(source, number, record if isinstance(record, dict) else None),
                instance=record if isinstance(record, dict) else repr(record),
            )
        )
    yield from unreadable
    if len(unreadable) < len(lines):
        data = b"\n".join(lines) + b"\n"
        yield from jsonl.read(io.BytesIO(data), source, layout, len(data) + 1)


def prediction_records(scored: ScoredBlock, columns: base.PredictionColumns) -> list[dict]:
    """The block's prediction records, `{"key": ..., "prediction": {name: value}, <pass-through
    fields>}`: the very records `predict` writes as JSON lines (non-finite numbers as None)."""
    if not len(scored):
        return []
    return [json.loads(line) for line in jsonl.format_predictions(scored, columns).split(b"\n")]
