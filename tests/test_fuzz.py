"""Property-based tests over reading and validation, for every input format.

For any input, every record ends as exactly one row that passed validation or one error
record (valid UTF-8, strict JSON), and the counts add up. `make test` runs
FUZZ_EXAMPLES examples per property (default 200, the same ones each run); `make fuzz` runs
a long random campaign (100,000 per format).
"""

import csv
import io
import json
import os
import struct

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.blocks import LINE_COLUMN, RecordLayout
from pipeline.io import blocks_and_errors, read_stream
from pipeline.validation import validate_block
from transforms.model_contract import description_from_schema
from transforms.schema import load_schema

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 1000,  # the short run is the same every time; the campaign is random
    suppress_health_check=list(HealthCheck),
)
DESCRIPTION = description_from_schema(load_schema("ads"))
LAYOUT = RecordLayout(DESCRIPTION.inputs, DESCRIPTION.key_field, require_key=True)
FIELDS = [f.name for f in LAYOUT.all_fields]
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
GOOD = {"id": "a", "age": 30, "gender": "male", "media": "X", "interests": ["sports"], "bid": 1.5, "hour": 3,
        "image": PNG_1X1}  # fmt: skip

junk_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", " ", '"', "\\", "\n", "\r\n", ",", "|", "{", "null", "NaN", "\udcff", "9" * 25, "/9j/AAAA"]
)
any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    junk_text,
    st.lists(junk_text, max_size=4),
    st.dictionaries(junk_text, st.integers(), max_size=2),
)


@st.composite
def records(draw):
    """A record: each field its good value, a value of any kind, or absent."""
    record = {}
    for name in FIELDS:
        choice = draw(st.integers(0, 5))
        if choice <= 3:
            record[name] = GOOD[name] if name != "id" else draw(st.text(max_size=6))
        elif choice == 4:
            record[name] = draw(any_value)
    return record


def read(data: bytes, source: str, block_bytes: int):
    """(lines or positions of rows, of errors), checking every error record on the way."""
    blocks, failures = blocks_and_errors(
        read_stream(io.BytesIO(data), source, LAYOUT, block_bytes=block_bytes)
    )
    rows = []
    for block in blocks:
        valid, invalid = validate_block(block, LAYOUT)
        failures += invalid
        if valid is not None:
            rows += valid.batch.column(LINE_COLUMN).to_pylist()
    for failure in failures:
        json.dumps(failure, allow_nan=False).encode("utf-8")  # strict JSON, valid UTF-8
        assert failure["error"]["message"]
    return rows, [int(f["source"].rsplit(":", 1)[1]) for f in failures]


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # "\udcff" becomes the byte 0xff


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            records().map(lambda r: json.dumps(r, ensure_ascii=False)),
            records().map(json.dumps),
            junk_text.map(lambda t: t.replace("\n", " ")),
            st.binary(max_size=20).map(lambda b: b.replace(b"\n", b" ").decode("utf-8", "surrogateescape")),
        ),
        max_size=30,
    ),
    newline=st.sampled_from(["\n", "\r\n"]),
    block_bytes=st.sampled_from([5, 64, 4096, 1 << 20]),
)
def test_jsonl_every_non_blank_line_is_one_row_or_one_error(lines, newline, block_bytes):
    data = b"".join(encode(line) + newline.encode() for line in lines)
    rows, errors = read(data, "in.jsonl", block_bytes)
    text = data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark opens the file, not a record
    expected = [number for number, line in enumerate(text.split(b"\n")[:-1], 1) if line.strip(b" \t\r")]
    assert sorted(rows + errors) == expected


@FUZZ
@given(
    rows=st.lists(
        st.one_of(
            records().map(lambda r: [_csv_cell(r.get(name)) for name in FIELDS]),
            st.lists(junk_text, min_size=1, max_size=10),
        ),
        max_size=20,
    ),
    block_bytes=st.sampled_from([7, 128, 1 << 20]),
)
def test_csv_every_row_is_one_row_or_one_error(rows, block_bytes):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(FIELDS)
    starts, line = [], 2
    for row in rows:
        before = text.tell()
        writer.writerow(row)
        written = text.getvalue()[before:]
        if written not in ("\n", "\r\n"):  # [["\r"]] is written unquoted: an empty CRLF line
            starts.append(line)
        line += written.count("\n")
    data = encode(text.getvalue())
    got_rows, errors = read(data, "in.csv", block_bytes)
    assert sorted(got_rows + errors) == starts


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return str(value)


def _feature(value):
    import tensorflow as tf

    if isinstance(value, bool) or isinstance(value, int) and -(2**63) <= value < 2**63:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    if isinstance(value, float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    if isinstance(value, list):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(str(v)) for v in value]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(str(value))]))


def _tfrecord(payload: bytes) -> bytes:
    from pipeline.io.tfrecord import masked_crc

    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc(length)) + payload + struct.pack("<I", masked_crc(payload))


@FUZZ
@given(examples=st.lists(records(), max_size=12), cut=st.none() | st.floats(0, 1))
def test_tfrecord_every_example_is_one_row_or_one_error_and_a_cut_is_one_more(examples, cut):
    import tensorflow as tf

    framed = [
        _tfrecord(tf.train.Example(features=tf.train.Features(feature={
            name: _feature(value) for name, value in record.items() if value is not None
        })).SerializeToString())
        for record in examples
    ]  # fmt: skip
    data = b"".join(framed)
    expected = len(examples)
    if cut is not None and data:
        end = int(len(data) * cut)
        whole = sum(1 for position in _ends(framed) if position <= end)
        expected = whole + (0 if end in (0, *_ends(framed)) else 1)
        data = data[:end]
    rows, errors = read(data, "in.tfrecord", 1 << 20)
    assert len(rows) + len(errors) == expected
    assert len(set(rows + errors)) == expected


def _ends(framed):
    total, ends = 0, []
    for record in framed:
        total += len(record)
        ends.append(total)
    return ends


column_types = st.sampled_from(
    [pa.int64(), pa.int32(), pa.float64(), pa.string(), pa.binary(), pa.bool_(), pa.list_(pa.string())]
)


@FUZZ
@given(data=st.data(), count=st.integers(0, 20))
def test_parquet_every_row_is_one_row_or_one_error(data, count):
    columns = {}
    for name in FIELDS:
        if data.draw(st.integers(0, 4)) == 0:
            continue  # the column is absent
        kind = data.draw(column_types) if data.draw(st.booleans()) else None
        values = [data.draw(records()).get(name) for _ in range(count)]
        columns[name] = _column(values, kind)
    table = pa.table(columns) if columns else pa.table({"other": pa.array([1] * count)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=max(1, count // 3 or 1))
    rows, errors = read(buffer.getvalue(), "in.parquet", 1 << 20)
    assert len(rows) + len(errors) == count
    assert sorted(rows + errors) == list(range(1, count + 1))


def _column(values, kind):
    """`values` as an Arrow column of `kind` where they convert, else of their natural type."""
    if any(isinstance(v, dict) for v in values):  # Parquet has no empty structs: text
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    if kind is not None:
        try:
            return pa.array(values, kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())


def test_the_jsonl_property_holds_for_a_known_hostile_file():
    """The fuzzed property on a fixed mix, so a failure here reads without hypothesis."""
    lines = [
        json.dumps(GOOD),
        "null",
        "",
        "   ",
        "[",
        json.dumps(GOOD) * 2,
        "\udcff",
        json.dumps({**GOOD, "age": 2**70}),
    ]
    data = b"".join(encode(line) + b"\n" for line in lines)
    rows, errors = read(data, "in.jsonl", 64)
    assert sorted(rows) == [1] and sorted(errors) == [2, 5, 6, 7, 8]
