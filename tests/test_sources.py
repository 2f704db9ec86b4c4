"""Reading JSONL/CSV into Arrow blocks; every bad line becomes one error naming file and line."""

import gzip
import io

import pytest

from pipeline import errors
from pipeline.blocks import RecordLayout
from pipeline.io import InputError, blocks_and_errors, format_for, read_stream
from transforms.model_contract import description_from_schema
from transforms.schema import load_schema


@pytest.fixture(scope="module")
def layout():
    description = description_from_schema(load_schema("ads"))
    return RecordLayout(description.inputs, description.key_field)


def read(data: bytes, layout, fmt, block_bytes=1 << 20):
    blocks, failures = blocks_and_errors(read_stream(io.BytesIO(data), "in." + fmt, layout, fmt, block_bytes))
    rows = [row for block in blocks for row in block.batch.to_pylist()]
    return rows, failures


GOOD = '{"id":"a%d","age":30,"gender":"male","media":"Twitter","hour":3,"image":"/9j/AA==","interests":["sports"]}'


def test_jsonl_rows_keep_their_line_numbers(layout):
    data = "\n".join([GOOD % 1, "", GOOD % 2, "   ", GOOD % 3]).encode()
    rows, failures = read(data, layout, "jsonl")
    assert failures == []
    assert [(r["id"], r["__line__"]) for r in rows] == [("a1", 1), ("a2", 3), ("a3", 5)]
    assert rows[0]["interests"] == ["sports"] and rows[0]["bid"] is None


def test_bad_jsonl_lines_become_one_error_each_and_the_rest_is_read(layout):
    lines = [GOOD % i for i in range(10)]
    lines[2] = '{"id":"bad-age","age":"old","gender":"male"}'
    lines[6] = '{"id":"x", "age": 3'  # malformed JSON
    lines[8] = "[1, 2]"
    rows, failures = read("\n".join(lines).encode() + b"\n", layout, "jsonl", block_bytes=300)
    assert sorted(r["__line__"] for r in rows) == [1, 2, 4, 5, 6, 8, 10]
    by_source = {f["source"]: f for f in failures}
    assert set(by_source) == {"in.jsonl:3", "in.jsonl:7", "in.jsonl:9"}
    wrong_type = by_source["in.jsonl:3"]
    assert wrong_type["error"]["code"] == errors.WRONG_TYPE and wrong_type["error"]["field"] == "age"
    assert wrong_type["key"] == "bad-age" and '"old"' in wrong_type["error"]["message"]
    assert by_source["in.jsonl:7"]["error"]["code"] == errors.MALFORMED_RECORD
    assert "not valid JSON" in by_source["in.jsonl:7"]["error"]["message"]
    assert "expected a JSON object" in by_source["in.jsonl:9"]["error"]["message"]


HEADER = "id,age,gender,media,interests,bid,hour,image,clicked\n"


def test_csv_splits_lists_and_treats_empty_cells_as_missing(layout):
    data = (
        HEADER + "a,30,male,Twitter,sports|travel,,3,/9j/AA==,1\nb,31,female,X,,2.5,4,/9j/AA==,0\n"
    ).encode()
    rows, failures = read(data, layout, "csv")
    assert failures == []
    assert rows[0]["interests"] == ["sports", "travel"] and rows[0]["bid"] is None
    assert rows[1]["interests"] is None and rows[1]["bid"] == 2.5
    assert [r["__line__"] for r in rows] == [2, 3]


def test_csv_row_with_too_few_columns_and_wrong_type(layout):
    data = (
        HEADER + "a,30,male,Twitter,,,3,/9j/AA==,1\nb,30,male\nc,old,male,Twitter,,,3,/9j/AA==,1\n"
    ).encode()
    rows, failures = read(data, layout, "csv")
    assert [r["id"] for r in rows] == ["a"]
    by_source = {f["source"]: f["error"] for f in failures}
    assert by_source["in.csv:3"]["code"] == errors.MALFORMED_RECORD
    assert (
        "expected 9 columns" in by_source["in.csv:3"]["message"]
        and "got 3" in by_source["in.csv:3"]["message"]
    )
    assert by_source["in.csv:4"] == {
        "code": errors.WRONG_TYPE,
        "field": "age",
        "message": "field 'age' must be an integer, got \"old\"",
    }


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_empty_file_yields_nothing(layout, fmt):
    assert read(b"", layout, fmt) == ([], [])


def test_gzip_and_format_detection(tmp_path, layout):
    assert format_for("x/a.jsonl.gz").name == "jsonl" and format_for("a.csv").name == "csv"
    assert format_for("a.parquet").name == "parquet" and format_for("b.tfrecord.gz").name == "tfrecord"
    with pytest.raises(InputError, match="--input_format") as raised:
        format_for("a.avro")
    assert all(name in str(raised.value) for name in ("jsonl", "csv", "tfrecord", "parquet"))
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress((GOOD % 1 + "\n").encode()))
    with gzip.open(path, "rb") as stream:
        blocks, failures = blocks_and_errors(read_stream(stream, str(path), layout))
    assert blocks[0].batch.num_rows == 1 and failures == []
