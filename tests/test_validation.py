import base64
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline import errors
from pipeline.blocks import LINE_COLUMN, RecordBlock, RecordLayout
from pipeline.validation import record_keys, validate_block
from transforms.model_contract import description_from_schema
from transforms.schema import load_schema

PNG = base64.b64encode(
    (lambda b: (Image.new("RGB", (4, 4), (200, 10, 10)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())
).decode()


def make_block(rows):
    description = description_from_schema(load_schema("ads"))
    layout = RecordLayout(description.inputs, description.key_field)
    table = pa.Table.from_pylist(
        [{**row, LINE_COLUMN: i + 1} for i, row in enumerate(rows)],
        schema=layout.arrow_schema().append(pa.field(LINE_COLUMN, pa.int64())),
    )
    return RecordBlock("f.jsonl", table.to_batches()[0]), layout


def good(i, **changes):
    row = {"id": f"ad-{i}", "age": 30, "gender": "male", "media": "Twitter", "hour": 5, "image": PNG}
    row.update(changes)
    return row


def test_each_bad_row_gets_exactly_one_error_and_good_rows_pass():
    block, layout = make_block(
        [
            good(0),
            good(1, gender=None),  # missing required
            good(2, hour=24),  # out of range
            good(3, image=base64.b64encode(b"hello, not an image").decode()),
            good(4, media="MySpace"),  # unknown category: scored via OOV, not an error
            good(5, age=None, hour=99),  # two problems, one error record
        ]
    )
    valid, failures = validate_block(block, layout)
    assert valid.batch.column("id").to_pylist() == ["ad-0", "ad-4"]
    summary = [(f["key"], f["source"], f["error"]["code"], f["error"]["field"]) for f in failures]
    assert summary == [
        ("ad-1", "f.jsonl:2", errors.MISSING_FIELD, "gender"),
        ("ad-2", "f.jsonl:3", errors.OUT_OF_RANGE, "hour"),
        ("ad-3", "f.jsonl:4", errors.INVALID_IMAGE, "image"),
        ("ad-5", "f.jsonl:6", errors.MISSING_FIELD, "age"),
    ]
    assert "outside the valid range [0, 23]" in failures[1]["error"]["message"]
    assert failures[0]["instance"]["id"] == "ad-1" and "gender" not in failures[0]["instance"]


def test_all_rows_valid_returns_the_same_block():
    block, layout = make_block([good(0), good(1)])
    valid, failures = validate_block(block, layout)
    assert valid is block and failures == []


def test_keys_from_position_when_records_have_no_key():
    block, _ = make_block([good(0), good(1)])
    layout = RecordLayout(description_from_schema(load_schema("ads")).inputs, key_field=None)
    assert record_keys(block, layout).to_pylist() == ["f.jsonl:1", "f.jsonl:2"]
    assert np.array_equal(block.lines, [1, 2])
