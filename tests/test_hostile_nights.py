"""An operator's worst night: a .gz file cut in half, a million records that all fail, empty files.

Each broke a promise once. A gzip file cut short lost the records before the cut (Python's
buffered gzip reader drops what it decoded in the read that hits the cut) while its error
record said they were read. A million invalid records took 2.1 GB where a hundred thousand
took 0.9 (every error record of an 8 MiB block, 2.8 million `{}` lines, made at once and
handed on as one list). A 0-byte CSV stopped the run where a 0-byte JSONL file is a run of
no records.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tracemalloc
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import errors, predict
from pipeline.blocks import RecordBlock, RecordLayout, conform
from pipeline.io import blocks_and_errors, files, read_stream, text
from pipeline.io.files import _ReadPartFn
from pipeline.io.jsonl import JsonParser
from pipeline.io.splitting import FilePart
from pipeline.io.tfrecord import CorruptRecord, iter_records
from pipeline.run_contract import SUCCEEDED
from pipeline.sampledata.generate import write_records
from pipeline.validation import CheckedRecords
from transforms.model_contract import description_from_schema
from transforms.schema import load_schema

CUT_MESSAGE = "the records before the cut were read"


@pytest.fixture(scope="module")
def layout():
    description = description_from_schema(load_schema("ads"))
    return RecordLayout(description.inputs, description.key_field, require_key=True)


def run_predict(model_dir, path, out, *flags) -> dict:
    return predict.run(["--model_dir", model_dir, "--input", str(path), "--output_dir", str(out), *flags])


def error_records(out) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("errors-*")) for line in p.read_text().splitlines()]


def prediction_keys(out) -> list[str]:
    return sorted(
        json.loads(line)["key"]
        for p in out.glob("prediction.results-*")
        for line in p.read_text().splitlines()
    )


# --- 1. a .gz file cut in half ------------------------------------------------------------


def _whole_records_before_the_cut(fmt: str, decoded: bytes) -> int:
    """How many records the part of a cut file that still decompresses holds whole."""
    if fmt == "jsonl":
        return decoded.count(b"\n")
    if fmt == "csv":  # the generated records hold no newline inside quotes
        return decoded.count(b"\n") - 1
    found = 0
    try:
        for _ in iter_records(io.BytesIO(decoded)):
            found += 1
    except CorruptRecord:
        pass
    return found


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tfrecord"])
def test_a_gzip_file_cut_in_half_scores_every_record_before_the_cut(
    fmt, trained_ads, score_records, tmp_path
):
    plain = tmp_path / f"ads.{fmt}"
    write_records(score_records, str(plain), load_schema("ads"), fmt)
    packed = gzip.compress(plain.read_bytes())
    cut = tmp_path / f"cut.{fmt}.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    decoded = zlib.decompressobj(wbits=31).decompress(cut.read_bytes())
    whole = _whole_records_before_the_cut(fmt, decoded)
    assert 10 < whole < len(score_records)

    out = tmp_path / "out"
    counts = run_predict(trained_ads["model"], cut, out, "--max_error_rate", "1")["counts"]

    # Every record that decodes is scored, then one error record for the cut-off rest.
    assert (counts["read"], counts["predictions"], counts["errors"]) == (whole + 1, whole, 1)
    assert prediction_keys(out) == sorted(r["id"] for r in score_records[:whole])
    (error,) = error_records(out)
    assert error["source"] == str(cut) and error["error"]["code"] == errors.MALFORMED_RECORD
    assert "ends before its gzip end marker" in error["error"]["message"]
    assert CUT_MESSAGE in error["error"]["message"]


def test_a_gzip_file_cut_inside_its_first_kilobytes_keeps_the_record_before(layout, tmp_path):
    """The cut falls inside the first bytes, those read to check the file's format: the
    record they hold whole is still scored (no read that fails may drop bytes it was handed)."""
    record = json.dumps({"id": "first", "age": 30, "gender": "male", "media": "X", "hour": 3,
                         "image": "iVBORw0KGgo" + "A" * 1000}) + "\n"  # fmt: skip
    second = json.dumps({"id": "second", "pad": os.urandom(4000).hex()}) + "\n"  # hardly compresses
    packed = gzip.compress((record + second).encode())
    # The shortest cut that leaves the first record and 500 bytes of the second, under 4 KiB.
    cut = next(
        n
        for n in range(len(packed))
        if len(zlib.decompressobj(wbits=31).decompress(packed[:n])) > len(record) + 500
    )
    assert len(zlib.decompressobj(wbits=31).decompress(packed[:cut])) < files.HEAD_BYTES
    path = tmp_path / "early.jsonl.gz"
    path.write_bytes(packed[:cut])
    items = list(_read_part(path, layout))
    rows = [row for item in items if isinstance(item, RecordBlock) for row in item.batch.to_pylist()]
    failed = [e for item in items if isinstance(item, list) for e in item]
    assert [r["id"] for r in rows] == ["first"]
    assert [e["source"] for e in failed] == [str(path)] and CUT_MESSAGE in failed[0]["error"]["message"]


def _read_part(path, layout, block_bytes: int = text.DEFAULT_BLOCK_BYTES):
    """What the file-reading step of a run yields for `path` (record blocks, lists of errors)."""
    fn = _ReadPartFn(layout, None, block_bytes, CheckedRecords(layout))
    for item in fn.process(FilePart(str(path), end=os.path.getsize(path)), {}):
        if isinstance(item, (RecordBlock, list)):  # not the ("read", n) count
            yield item


# --- 2. a million records that all fail ---------------------------------------------------


# Runs `python -m pipeline.predict ARGS`, then prints the process's peak resident memory. Read
# in the child: a child's ru_maxrss (wait4, /usr/bin/time) starts at its parent's resident
# memory at the fork, and pytest's holds TensorFlow.
_PREDICT_AND_PEAK = """
import runpy, sys
sys.argv = ["pipeline.predict", *sys.argv[1:]]
try:
    runpy.run_module("pipeline.predict", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
with open("/proc/self/status") as f:
    peak = next(line for line in f if line.startswith("VmHWM:"))
print("peak", int(peak.split()[1]), code)
"""


def _predict_peak_kib(*args: str) -> int:
    """The peak resident memory (KiB) of `predict` with `args`, run in a child process."""
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT_AND_PEAK, *args], capture_output=True, text=True, timeout=300
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and last.startswith("peak ") and last.endswith(" 0"), done.stderr[-3000:]
    return int(last.split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from /proc")
def test_memory_of_a_run_whose_records_all_fail_does_not_grow_with_their_number(trained_ads, tmp_path):
    """20,000 then 200,000 lines of `{}` (every required field missing) through `predict`:
    before, the larger run peaked 300 MiB higher (each error record held until its 8 MiB
    block was done, then handed on as one list); now about 35 MiB, its blocks being larger."""
    peaks = {}
    for count in (20_000, 200_000):
        path = tmp_path / f"bad-{count}.jsonl"
        path.write_bytes(b"{}\n" * count)
        out = tmp_path / f"out-{count}"
        peaks[count] = _predict_peak_kib("--model_dir", trained_ads["model"], "--input", str(path),
                                         "--output_dir", str(out), "--max_error_rate", "1", "--no_progress")  # fmt: skip
        counts = json.loads((out / "run.json").read_text())["counts"]
        assert (counts["read"], counts["errors"], counts["predictions"]) == (count, count, 0)
    growth_mib = (peaks[200_000] - peaks[20_000]) / 1024
    assert growth_mib < 100, f"peak memory grew {growth_mib:.0f} MiB for 180,000 more error records: {peaks}"


def test_the_errors_of_a_block_of_invalid_records_stream_in_bounded_lists(layout, tmp_path):
    """200,000 records in one block, each missing every field: the reading step hands their
    error records on in lists of at most ERROR_BATCH and never holds them all
    (they would be 120 MB of Python objects; the step's peak stays a tenth of that)."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{}\n" * 200_000)
    tracemalloc.start()
    try:
        errors_seen, longest = 0, 0
        for item in _read_part(path, layout):
            assert isinstance(item, list), "no record of this file is valid"
            errors_seen += len(item)
            longest = max(longest, len(item))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert errors_seen == 200_000
    assert longest == errors.ERROR_BATCH
    assert peak < 40 << 20, f"the reading step held {peak >> 20} MiB of Python objects"


def test_blocks_of_tiny_records_are_bounded_in_records_not_only_bytes(layout):
    """8 MiB of `{}` is 2.8 million records: a block costs Arrow columns and masks per record,
    so a block holds at most MAX_RECORDS_PER_BLOCK, and their lines still number on."""
    count = text.MAX_RECORDS_PER_BLOCK * 2 + 5
    blocks, failures = blocks_and_errors(read_stream(io.BytesIO(b"{}\n" * count), "tiny.jsonl", layout))
    assert failures == [] and [len(b) for b in blocks] == [text.MAX_RECORDS_PER_BLOCK] * 2 + [5]
    assert blocks[1].lines[0] == text.MAX_RECORDS_PER_BLOCK + 1 and blocks[2].lines[-1] == count
    csv_data = b"id,age\n" + b'"a",1\n' * count  # quoted: the path that keeps newlines inside quotes
    blocks, failures = blocks_and_errors(read_stream(io.BytesIO(csv_data), "tiny.csv", layout))
    sizes = [len(b) for b in blocks]  # the header is a record of the first block
    assert failures == [] and sum(sizes) == count and len(sizes) == 3
    assert max(sizes) <= text.MAX_RECORDS_PER_BLOCK
    assert blocks[0].lines[0] == 2 and blocks[2].lines[-1] == count + 1


def test_a_block_of_unparseable_records_hands_on_its_first_error_before_bisecting_the_rest(layout):
    """A block whose every record has a wrong type is bisected to single records; their
    error records go out as they are found, not kept until the block is done."""
    lines = b'{"id": "a", "age": "old"}\n' * 1024
    parser = JsonParser(layout, "wrong.jsonl")
    parses = 0
    parse = parser.parse

    def counted(data, chunk_bytes):
        nonlocal parses
        parses += 1
        return parse(data, chunk_bytes)

    parser.parse = counted
    (records,) = text.split_records(io.BytesIO(lines))
    first = next(parser.parse_records(records))
    assert first["error"]["code"] == errors.WRONG_TYPE and first["source"] == "wrong.jsonl:1"
    assert parses <= 2 * 11  # one bisection path down (2 ** 10 records), not all 2,047 halves


def test_wrong_types_of_a_large_row_group_are_made_as_they_are_read(layout, tmp_path):
    """A Parquet row group of 100,000 rows whose `age` is text: one error record each,
    made a list at a time as they are read, never all held at once."""
    rows = 100_000
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "age": ["old"] * rows})
    _, failures = conform(table, layout, "rows.parquet", pa.array(range(1, rows + 1)).to_numpy())
    assert not isinstance(failures, list)
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=rows)
    tracemalloc.start()
    try:
        count = 0
        with open(path, "rb") as f:
            for item in read_stream(f, str(path), layout):
                assert isinstance(item, dict) and item["error"]["field"] == "age"
                count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == rows
    assert peak < 40 << 20, f"reading held {peak >> 20} MiB of Python objects"


# --- 3. empty files -----------------------------------------------------------------------

EMPTY_FILES = {
    "csv": ("empty.csv", b"", ()),
    "csv_declared_columns": (
        "empty.csv",
        b"",
        ("--csv_columns", "id,age,gender,media,interests,bid,hour,image"),
    ),
    "csv_blank_lines": ("blank.csv", b"\r\n\n", ()),
    "csv_gz_of_nothing": ("empty.csv.gz", gzip.compress(b""), ()),
    "csv_gz_0_bytes": ("empty.csv.gz", b"", ()),
    "jsonl": ("empty.jsonl", b"", ()),
    "jsonl_gz_of_nothing": ("empty.jsonl.gz", gzip.compress(b""), ()),
    "parquet": ("empty.parquet", b"", ()),
    "tfrecord": ("empty.tfrecord", b"", ()),
    "tfrecord_gz_of_nothing": ("empty.tfrecord.gz", gzip.compress(b""), ()),
}


@pytest.mark.parametrize("case", sorted(EMPTY_FILES))
def test_an_empty_file_is_a_run_of_no_records_in_every_format(case, trained_ads, tmp_path):
    name, data, flags = EMPTY_FILES[case]
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / "out"
    manifest = run_predict(trained_ads["model"], path, out, *flags)
    counts = manifest["counts"]
    assert manifest["status"] == SUCCEEDED
    assert (counts["read"], counts["predictions"], counts["errors"]) == (0, 0, 0)
    assert error_records(out) == [] and (out / "_SUCCESS").exists()


def test_predict_reads_headerless_csv_in_the_column_order_the_model_was_trained_with(tmp_path, capsys):
    """A schema's `csv_columns` goes into the model's description: the same headerless files
    score without --csv_columns, and a CSV with a header row is still read by its header."""
    import json as json_

    import yaml as yaml_

    from pipeline import analyze, cli
    from pipeline.sampledata.generate import generate_file
    from pipeline.trainer.train import train_and_export
    from transforms.schema import load_schema

    with_header = tmp_path / "ads.csv"
    generate_file(str(with_header), 300, seed=11, fmt="csv")
    header, *rows = with_header.read_text().splitlines(keepends=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    schema_doc = yaml_.safe_load(open(os.path.join(root, "transforms", "schemas", "ads.yaml")))
    schema_doc["csv_columns"] = header.strip().split(",")
    schema_path = tmp_path / "ads_headerless.yaml"
    schema_path.write_text(yaml_.safe_dump(schema_doc))
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("".join(rows))
    transform, model = str(tmp_path / "transform"), str(tmp_path / "model")
    analyze.run(["--schema", str(schema_path), "--input", str(headerless), "--output_dir", transform])
    train_and_export(transform, load_schema(str(schema_path)), model, epochs=1, compare_blank_image=False)
    assert (
        json_.load(open(os.path.join(model, "assets.extra", "adpredict_model.json")))["csv_columns"]
        == (schema_doc["csv_columns"])
    )
    for source in (headerless, with_header):
        out = tmp_path / f"out-{source.stem}"
        argv = ["predict", "--model_dir", model, "--input", str(source), "--output_dir", str(out)]
        assert cli.main(argv) == 0, capsys.readouterr().err
        counts = json_.load(open(out / "run.json"))["counts"]
        assert (counts["read"], counts["predictions"], counts["errors"]) == (300, 300, 0), source
