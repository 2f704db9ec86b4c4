"""Each input format's reader: RFC 4180 CSV, {"b64"} images, TFRecord and Parquet, bad files."""

import base64
import gzip
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import errors
from pipeline.blocks import RecordLayout
from pipeline.io import InputError, blocks_and_errors, read_stream
from pipeline.io.text import split_records
from pipeline.read import check_inputs
from transforms.model_contract import description_from_schema
from transforms.schema import SchemaError, load_schema, parse_schema

JPEG = bytes.fromhex("ffd8ffe000104a464946") + b"\x00" * 20
JPEG_B64 = base64.b64encode(JPEG).decode()


@pytest.fixture(scope="module")
def layout():
    description = description_from_schema(load_schema("ads"))
    return RecordLayout(description.inputs, description.key_field)


def read(data: bytes, source: str, layout, block_bytes=1 << 20):
    blocks, failures = blocks_and_errors(
        read_stream(io.BytesIO(data), source, layout, block_bytes=block_bytes)
    )
    rows = [row for block in blocks for row in block.batch.to_pylist()]
    return rows, failures


HEADER = "id,age,gender,media,interests,bid,hour,image\n"


@pytest.mark.parametrize("block_bytes", [1 << 20, 7])  # 7 bytes: every record spans blocks
def test_csv_quoted_commas_quotes_and_newlines_are_one_record(layout, block_bytes):
    data = (
        HEADER
        + f'a,30,"fe,male","Twit""ter",sports,1.5,3,{JPEG_B64}\n'
        + f'"b\nkey",31,"multi\nline\r\nvalue",X,,"",4,{JPEG_B64}\n'
        + f'c,32,"",Y,"",2,5,"{JPEG_B64}"\n'
    ).encode()
    rows, failures = read(data, "in.csv", layout, block_bytes)
    assert failures == []
    assert [(r["id"], r["__line__"]) for r in rows] == [("a", 2), ("b\nkey", 3), ("c", 7)]
    assert rows[0]["gender"] == "fe,male" and rows[0]["media"] == 'Twit"ter'
    assert rows[1]["gender"] == "multi\nline\r\nvalue"
    assert rows[1]["bid"] is None and rows[1]["interests"] is None  # empty, quoted or not: missing
    assert rows[2]["gender"] is None and rows[2]["interests"] is None


def test_csv_unbalanced_quote_costs_one_record_and_reading_resumes(layout):
    data = (HEADER + f'a,30,"male,X,,,3,{JPEG_B64}\nb,31,male,X,,,3,{JPEG_B64}\n').encode()
    rows, failures = read(data, "in.csv", layout)
    assert [r["id"] for r in rows] == ["b"] and rows[0]["__line__"] == 3
    assert [(f["source"], f["error"]["code"]) for f in failures] == [("in.csv:2", errors.MALFORMED_RECORD)]
    assert "never closed" in failures[0]["error"]["message"]


def test_split_records_counts_lines_across_blocks():
    data = b'1,"a\nb"\n\n2,c\n3,"d""\n"\n'
    got = []
    for records in split_records(io.BytesIO(data), block_bytes=3, quoted=True):
        got += [(line, text) for line, text in records.numbered()]
    assert got == [(1, b'1,"a\nb"\n'), (4, b"2,c\n"), (5, b'3,"d""\n"\n')]


@pytest.mark.parametrize("quoted", [False, True])
def test_split_records_gives_the_same_records_for_every_block_size(quoted):
    """Records cut across reads of any size (a block copied once, its start carried over)."""
    lines = [b'{"id": "a"}', b"", b'{"id": "' + b"x" * 40 + b'"}', b"  ", b'{"id": "b"}\r', b'{"id": "c"}']

    def records(data, block_bytes):  # a record's text may carry the blank lines before it
        return [
            (n, t.strip())
            for r in split_records(io.BytesIO(data), block_bytes, quoted)
            for n, t in r.numbered()
        ]

    for ending in (b"\n", b""):
        data = b"\n".join(lines) + ending
        whole = records(data, 1 << 20)
        assert [n for n, _ in whole] == ([1, 3, 4, 5, 6] if quoted else [1, 3, 5, 6])  # CSV keeps "  "
        assert whole[-1] == (6, b'{"id": "c"}')
        for block_bytes in (1, 2, 5, 11, 12, 13, 40, 64):
            assert records(data, block_bytes) == whole, (ending, block_bytes)


def test_headerless_csv_takes_the_declared_column_order(layout):
    headerless = RecordLayout(layout.fields, layout.key_field, csv_columns=("id", "age", "gender", "media",
                              "interests", "bid", "hour", "image"))  # fmt: skip
    data = f"a,30,male,X,,,3,{JPEG_B64}\nb,31,female,Y,,,4,{JPEG_B64}\n".encode()
    rows, failures = read(data, "in.csv", headerless)
    assert failures == [] and [(r["id"], r["age"], r["__line__"]) for r in rows] == [
        ("a", 30, 1),
        ("b", 31, 2),
    ]


def test_a_headerless_file_read_with_a_header_is_refused_before_the_run(layout, tmp_path):
    path = tmp_path / "no_header.csv"
    path.write_text(f"a,30,male,X,,,3,{JPEG_B64}\n")
    with pytest.raises(InputError, match="csv_columns") as raised:
        check_inputs([str(path)], None, layout)
    assert str(path) in str(raised.value)


def test_jsonl_accepts_vertex_b64_images(layout):
    lines = [
        {"id": "plain", "age": 30, "gender": "m", "media": "X", "hour": 1, "image": JPEG_B64},
        {"id": "b64", "age": 30, "gender": "m", "media": "X", "hour": 1, "image": {"b64": JPEG_B64}},
        {"id": "bad", "age": 30, "gender": "m", "media": "X", "hour": 1, "image": {"bytes": JPEG_B64}},
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    rows, failures = read(data, "in.jsonl", layout)
    assert [(r["id"], r["image"]) for r in rows] == [("plain", JPEG_B64), ("b64", JPEG_B64)]
    assert [(f["key"], f["error"]["code"], f["error"]["field"]) for f in failures] == [
        ("bad", errors.WRONG_TYPE, "image")
    ]


def _example(**features) -> bytes:
    import tensorflow as tf

    feature = {}
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif isinstance(values[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _tfrecord_bytes(records: list[bytes], compress=False) -> bytes:
    import tensorflow as tf

    path = "/tmp/adpredict-test.tfrecord"
    with tf.io.TFRecordWriter(path, options="GZIP" if compress else None) as writer:
        for record in records:
            writer.write(record)
    with open(path, "rb") as f:
        return f.read()


GOOD_EXAMPLE = dict(age=30, gender=b"male", media=b"X", hour=3, image=JPEG, interests=[b"a", b"b"], bid=1.5)


def test_tfrecord_examples_become_typed_columns_and_bad_ones_errors(layout):
    records = [
        _example(id=b"e1", **GOOD_EXAMPLE),
        _example(id=b"e2", **{**GOOD_EXAMPLE, "age": b"old"}),  # bytes where an int is declared
        _example(id=b"e3", **{**GOOD_EXAMPLE, "hour": [3, 4]}),  # two values where one is declared
        b"not an example",
        _example(id=b"e5", **{k: v for k, v in GOOD_EXAMPLE.items() if k != "bid"}),
    ]
    rows, failures = read(_tfrecord_bytes(records), "in.tfrecord", layout)
    assert [(r["id"], r["__line__"]) for r in rows] == [("e1", 1), ("e5", 5)]
    assert rows[0]["image"] == JPEG_B64 and rows[0]["interests"] == ["a", "b"] and rows[0]["bid"] == 1.5
    assert rows[1]["bid"] is None
    found = sorted((f["source"], f["error"]["code"], f["error"]["field"]) for f in failures)
    assert found == [
        ("in.tfrecord:2", errors.WRONG_TYPE, "age"),
        ("in.tfrecord:3", errors.WRONG_TYPE, "hour"),
        ("in.tfrecord:4", errors.MALFORMED_RECORD, None),
    ]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_broken_tfrecord_file_scores_the_records_before_the_break(layout, damage):
    data = _tfrecord_bytes([_example(id=f"e{i}".encode(), **GOOD_EXAMPLE) for i in range(5)])
    record_size = len(data) // 5
    if damage == "truncated":
        data = data[: 3 * record_size + 20]
    else:
        data = data[: 3 * record_size + 14] + b"\xff" + data[3 * record_size + 15 :]
    rows, failures = read(data, "in.tfrecord", layout)
    assert [r["id"] for r in rows] == ["e0", "e1", "e2"]
    assert len(failures) == 1 and failures[0]["source"] == "in.tfrecord:4"
    message = failures[0]["error"]["message"]
    assert (
        f"at byte {3 * record_size}" in message
        and ("truncated" if damage == "truncated" else "CRC") in message
    )


def test_gzipped_tfrecord_reads_like_the_plain_one(layout, tmp_path):
    path = tmp_path / "a.tfrecord.gz"
    path.write_bytes(_tfrecord_bytes([_example(id=b"z", **GOOD_EXAMPLE)], compress=True))
    with gzip.open(path, "rb") as stream:
        blocks, failures = blocks_and_errors(read_stream(stream, str(path), layout))
    assert failures == [] and blocks[0].batch.column("id").to_pylist() == ["z"]


def _parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, **kwargs)
    return out.getvalue()


def test_parquet_columns_are_cast_and_wrong_values_are_one_error_each(layout):
    table = pa.table(
        {
            "id": pa.array(["p1", "p2", "p3", "p4"]),
            "age": pa.array(["30", "old", None, "41"]),  # strings where an int is declared
            "gender": pa.array(["m", "f", "m", "f"]).dictionary_encode(),
            "media": pa.array(["X", "Y", "X", "Y"], pa.large_string()),
            "hour": pa.array([1.0, 2.0, 2.5, 4.0]),  # a whole float is an int; 2.5 is not
            "image": pa.array([JPEG, JPEG, JPEG, JPEG], pa.binary()),
            "extra": pa.array([1, 2, 3, 4]),
        }
    )
    rows, failures = read(_parquet_bytes(table, row_group_size=2), "in.parquet", layout)
    assert rows == []  # every row has a string age: the column is the wrong type
    assert [(f["source"], f["error"]["field"]) for f in failures] == [
        ("in.parquet:1", "age"), ("in.parquet:2", "age"), ("in.parquet:3", "hour"), ("in.parquet:4", "age")
    ]  # fmt: skip
    assert failures[1]["error"]["message"] == "field 'age' must be an integer, got \"old\""

    fixed = table.set_column(1, "age", pa.array([30, 31, None, 41], pa.int32()))
    rows, failures = read(_parquet_bytes(fixed, row_group_size=2), "in.parquet", layout)
    assert [(r["id"], r["age"], r["hour"], r["__line__"]) for r in rows] == [
        ("p1", 30, 1, 1), ("p2", 31, 2, 2), ("p4", 41, 4, 4)
    ]  # fmt: skip
    assert rows[0]["image"] == JPEG_B64 and rows[0]["gender"] == "m"
    assert [(f["source"], f["error"]["code"]) for f in failures] == [("in.parquet:3", errors.WRONG_TYPE)]


def test_not_a_parquet_file_is_one_error_naming_it(layout):
    rows, failures = read(b"PAR1 this is not really parquet", "bad.parquet", layout)
    assert rows == [] and len(failures) == 1
    assert "bad.parquet is not a readable Parquet file" in failures[0]["error"]["message"]


def test_mixed_format_glob_and_misnamed_binary_file_are_refused(layout, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "a"}\n')
    (tmp_path / "b.csv").write_text("id\na\n")
    with pytest.raises(InputError, match="several formats"):
        check_inputs([str(tmp_path / "*")], None, layout)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(np.arange(256, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as raised:
        check_inputs([str(binary)], None, layout)
    message = str(raised.value)
    assert str(binary) in message and "does not look like jsonl" in message
    assert all(name in message for name in ("csv", "tfrecord", "parquet"))


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"header": False}, "header"),
        ({"csv": {"columns": ["a"]}}, "csv"),
        ({"key": {"field": "id", "column": 1}}, "column"),
        ({"label": {"field": "y", "weight": 2}}, "weight"),
    ],
)
def test_unknown_keys_anywhere_in_a_schema_file_are_errors(doc, named):
    base_doc = {"key": {"field": "id"}, "features": [{"name": "a", "type": "int", "encoding": "z_score"}]}
    with pytest.raises(SchemaError, match=f"unknown keys \\['{named}'\\]"):
        parse_schema({**base_doc, **doc}, "s.yaml")


def test_schema_csv_columns_must_cover_every_feature():
    doc = {"key": {"from": "line"}, "features": [{"name": "a", "type": "int", "encoding": "z_score"}]}
    assert parse_schema({**doc, "csv_columns": ["y", "a"]}).csv_columns == ("y", "a")
    with pytest.raises(SchemaError, match="lacks the features \\['a'\\]"):
        parse_schema({**doc, "csv_columns": ["y"]})


def test_bigquery_table_names_parse_or_name_the_flag():
    from pipeline.io.bigquery import TableRef

    assert TableRef.parse("bq://my-project.ads.impressions").spec == "my-project.ads.impressions"
    assert (
        TableRef.parse("bq://my-project:ads.impressions").path
        == "projects/my-project/datasets/ads/tables/impressions"
    )
    with pytest.raises(InputError, match="--output_table 'bq://ads.impressions' is not a BigQuery table"):
        TableRef.parse("bq://ads.impressions", "--output_table")


def test_a_corrupt_parquet_row_group_is_one_error_and_the_others_are_read(layout):
    table = pa.table({"id": [f"p{i}" for i in range(300)], "age": list(range(300))})
    data = bytearray(_parquet_bytes(table, row_group_size=100))
    page = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(1).column(0).data_page_offset
    data[page + 20 : page + 60] = bytes(
        b ^ 0xFF for b in data[page + 20 : page + 60]
    )  # break its page header
    rows, failures = read(bytes(data), "in.parquet", layout)
    assert [r["__line__"] for r in rows] == list(range(1, 101)) + list(range(201, 301))
    assert [(f["source"], f["error"]["code"]) for f in failures[-1:]] == [
        ("in.parquet:101", errors.MALFORMED_RECORD)
    ]
    assert "row group 1 of in.parquet (rows 101-200) cannot be decoded" in failures[-1]["error"]["message"]


@pytest.mark.parametrize("blank", ["\n", "   \n", "\r\n"])
def test_two_objects_on_one_line_beside_an_empty_line_are_one_error_not_two_predictions(layout, blank):
    one = {"id": "a", "age": 30, "gender": "m", "media": "X", "hour": 1, "image": JPEG_B64}
    data = (
        json.dumps(one)
        + json.dumps({**one, "id": "b"})
        + "\n"
        + blank
        + json.dumps({**one, "id": "c"})
        + "\n"
    )
    rows, failures = read(data.encode(), "in.jsonl", layout)
    assert [(r["id"], r["__line__"]) for r in rows] == [("c", 3)]
    assert [(f["source"], f["error"]["code"]) for f in failures] == [("in.jsonl:1", errors.MALFORMED_RECORD)]
