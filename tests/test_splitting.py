"""One large file read as several parts (pipeline.io.splitting): every record exactly once,
with the line numbers a whole-file read gives, for JSONL, CSV and Parquet."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import counters
from pipeline.blocks import RecordLayout
from pipeline.io import format_for, splitting
from pipeline.read import RECORDS, Inputs, ReadAdRecords
from transforms.model_contract import InputField

LAYOUT = RecordLayout(
    (InputField("age", "int"), InputField("media", "string"), InputField("bid", "float", required=False)),
    "id",
)


def parts_of(path: str, split_bytes: int) -> list[tuple[splitting.FilePart, tuple]]:
    """The parts of a file and what the counting pass tells each (as the pipeline does)."""
    fmt = format_for(path)
    parts = splitting.plan_parts(path, os.path.getsize(path), fmt, split_bytes)
    if parts[0].kind != splitting.LINES:
        return [(p, (0, False)) for p in parts]
    counted = [(p.index, splitting.count_range(p, fmt.name == "csv")) for p in parts]
    starts = dict(splitting.part_starts(path, counted))
    return [(p, starts[(p.path, p.index)]) for p in parts]


def range_lines(path: str, split_bytes: int) -> list[tuple[int, bytes]]:
    """(line number, line) of every line each byte range reads, ranges in order."""
    found = []
    for part, (before, whole) in parts_of(path, split_bytes):
        assert not whole
        stream = splitting.LineRange(part, before)
        data = b"".join(iter(lambda s=stream: s.read(7), b""))
        stream.close()
        if stream.empty:
            assert data == b""
            continue
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        found += [(stream.first_line + i, line) for i, line in enumerate(lines)]
    return found


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_every_range_size_reads_each_line_once_with_its_number(tmp_path, trailing_newline):
    lines = [b'{"id": "a"}', b"", b'{"id": "bb", "x": 1}', b"x" * 40, b"", b"", b'{"id": "c"}', b"{}"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))
    expected = list(enumerate(lines, start=1))
    size = os.path.getsize(path)
    for split_bytes in range(1, size + 1):  # ranges ending mid-line, on a newline, on an empty line
        assert range_lines(str(path), split_bytes) == expected, split_bytes


def test_csv_splits_at_newlines_unless_a_value_holds_one(tmp_path):
    path = tmp_path / "in.csv"
    rows = ["id,media,age", '"x,1",Twitter,30', 'y,"say ""hi""",40', "z,TikTok,50"] * 20
    path.write_text("\n".join(rows) + "\n")
    assert range_lines(str(path), 50) == [(i + 1, row.encode()) for i, row in enumerate(rows)]
    # A newline inside quotes anywhere (or a quote that never closes): read whole.
    for text in ('id,media\na,"two\nlines"\n' + "b,c\n" * 40, 'id,media\na,"open\n' + "b,c\n" * 40):
        path.write_text(text)
        planned = parts_of(str(path), 32)
        assert len(planned) > 2 and all(whole for _, (_, whole) in planned)


def read_with(path: str, split_bytes: int, out, options=None) -> list:
    """Each record's (source, line, id, age, media, bid) and each error record's (source,
    code, field), as ReadAdRecords gives them, in a stable order."""

    def rows(item):
        if isinstance(item, list):
            return [json.dumps(["error", e["source"], e["error"]["code"], e["error"]["field"]]) for e in item]
        table = item.batch.to_pydict()
        columns = [table[c] for c in ("__line__", "id", "age", "media", "bid")]
        return [json.dumps(["record", item.source, *values]) for values in zip(*columns, strict=True)]

    inputs = Inputs((path,), split_bytes=split_bytes)
    with beam.Pipeline(options=PipelineOptions(options or [])) as pipeline:
        read = pipeline | ReadAdRecords(inputs, LAYOUT)
        _ = read[RECORDS] | beam.FlatMap(rows) | beam.io.WriteToText(str(out))
    return [
        json.loads(line) for line in sorted(line for shard in glob.glob(f"{out}*") for line in open(shard))
    ]


def bad_and_good_records(count: int) -> list[str]:
    rng = np.random.default_rng(4)
    lines = []
    for i in range(count):
        record = {"id": f"ad-{i}", "age": int(rng.integers(18, 80)), "media": ["Twitter", "YouTube"][i % 2]}
        if i % 3:
            record["bid"] = round(float(rng.random()), 4)
        lines.append(json.dumps(record))
    lines[17] = '{"id": "ad-17", "age": "old", "media": "Twitter"}'
    lines[400] = "not json"
    lines[401] = ""
    return lines


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_split_read_equals_a_whole_file_read(tmp_path, fmt):
    lines = bad_and_good_records(3000)
    path = str(tmp_path / f"in.{fmt}")
    if fmt == "jsonl":
        open(path, "w").write("\n".join(lines) + "\n")
    elif fmt == "csv":
        with open(path, "w") as f:
            f.write("id,age,media,bid\n")
            for line in lines:
                r = json.loads(line) if line.startswith("{") else {"id": "broken", "age": "x"}
                f.write(",".join(str(r.get(c, "")) for c in ("id", "age", "media", "bid")) + "\n")
    else:
        records = [json.loads(line) for line in lines if line.startswith("{")]
        records[17]["age"] = None
        table = pa.Table.from_pylist([{**r, "age": r.get("age")} for r in records])
        pq.write_table(table, path, row_group_size=250)
    whole = read_with(path, 0, tmp_path / "whole")
    split = read_with(path, 16 << 10, tmp_path / "split")
    assert len(splitting.plan_parts(path, os.path.getsize(path), format_for(path), 16 << 10)) >= 3
    assert split == whole
    errors = [row for row in whole if row[0] == "error"]
    assert (
        len(whole) == {"jsonl": 2999, "csv": 3000, "parquet": 2998}[fmt] and len(errors) >= 1
    )  # JSONL: an empty line is no record


def digest(item) -> tuple:
    """Order-free summary of a ReadAdRecords element: records, sums weighted by line number."""
    if isinstance(item, list):
        lines = [int(e["source"].rsplit(":", 1)[1]) for e in item]
        return (0, 0, 0, len(item), sum(lines))
    lines = item.lines.astype(np.int64)
    ages = item.batch.column("age").to_numpy().astype(np.int64)
    return (len(item), int(lines.sum()), int((lines * ages).sum()), 0, 0)


def read_digest(path: str, split_bytes: int, options: list[str]) -> tuple[tuple, int]:
    """(the summed digests of everything read, file parts read) on the DirectRunner."""
    from apache_beam.metrics.metric import MetricsFilter

    out = f"{path}.{split_bytes}.digest"
    pipeline = beam.Pipeline(options=PipelineOptions(options))
    read = pipeline | ReadAdRecords(Inputs((path,), split_bytes=split_bytes), LAYOUT)
    _ = (
        read[RECORDS]
        | beam.Map(digest)
        | beam.CombineGlobally(
            lambda rows: tuple(int(sum(column)) for column in zip(*rows, strict=True)) if rows else ()
        )
        | beam.Map(json.dumps)
        | beam.io.WriteToText(out, shard_name_template="")
    )
    result = pipeline.run()
    result.wait_until_finish()
    parts = result.metrics().query(MetricsFilter().with_name(counters.FILE_PARTS_READ))["counters"]
    return tuple(json.loads(open(out).read())), sum(c.committed for c in parts)


def test_a_200_mb_file_is_read_in_ranges_by_two_workers_like_one_reader(tmp_path):
    path = str(tmp_path / "big.jsonl")
    padding = "p" * 130
    with open(path, "w") as f:
        for start in range(0, 1_000_000, 100_000):
            f.write("".join(
                f'{{"id": "ad-{i}", "age": {18 + i % 60}, "media": "{("Twitter", "YouTube")[i % 2]}", '
                f'"bid": {i % 7 / 10}, "note": "{padding}"}}\n' if i % 99_991 != 5000 else "not a record\n"
                for i in range(start, start + 100_000)
            ))  # fmt: skip
    assert os.path.getsize(path) > 200_000_000
    two_workers = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    one_reader, one_part = read_digest(path, 0, two_workers)
    ranges, parts = read_digest(path, splitting.DEFAULT_SPLIT_BYTES, two_workers)
    assert one_part == 1 and parts >= 2  # 64 MiB ranges: 4 of them
    assert ranges == one_reader
    assert one_reader[0] + one_reader[3] == 1_000_000 and one_reader[3] == 10  # every record, 10 bad lines


def test_predict_from_byte_ranges_writes_what_a_whole_file_read_writes(trained_ads, tmp_path):
    """The ads model on its training records (with images), two of them broken, read whole
    and as ~40 KB ranges: the same predictions and the same error records, line for line."""
    from pipeline import predict

    lines = open(trained_ads["data"]).read().splitlines()[:200]
    lines[50] = json.dumps({**json.loads(lines[50]), "age": "old"})
    lines[120] = lines[120][:40]  # cut mid-record
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    outputs = {}
    for name, split_bytes in (("whole", 0), ("ranges", 40_000)):
        out = tmp_path / name
        manifest = predict.run(["--model_dir", trained_ads["model"], "--input", str(path), "--output_dir", str(out),
                                "--split_bytes", str(split_bytes), "--max_error_rate", "0.05"])  # fmt: skip
        rows = [json.loads(line) for p in glob.glob(str(out / "prediction.results-*")) for line in open(p)]
        predictions = {row["key"]: row["prediction"]["probability"] for row in rows}
        errors = sorted(line for p in glob.glob(str(out / "errors-*")) for line in open(p))
        outputs[name] = (manifest["counts"]["read"], predictions, errors)
    assert os.path.getsize(path) > 5 * 40_000
    (read, predictions, errors), (whole_read, whole_predictions, whole_errors) = (
        outputs["ranges"],
        outputs["whole"],
    )
    assert (read, sorted(predictions), errors) == (whole_read, sorted(whole_predictions), whole_errors)
    # Other batches (parts end where ranges do): float sums may differ in the last bits.
    assert max(abs(predictions[k] - whole_predictions[k]) for k in predictions) < 1e-6
    assert outputs["whole"][0] == 200 and len(outputs["whole"][2]) == 2
    assert {json.loads(e)["source"].rsplit(":", 1)[1] for e in outputs["whole"][2]} == {"51", "121"}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], 0),  # Beam's in_memory mode: one thread reads the parts one after the other
        (["--runner", "DirectRunner"], 0),
        (
            ["--direct_running_mode", "multi_threading", "--direct_num_workers", "2"],
            splitting.DEFAULT_SPLIT_BYTES,
        ),
        (["--direct_running_mode", "multi_processing"], splitting.DEFAULT_SPLIT_BYTES),
        (["--runner", "DataflowRunner"], splitting.DEFAULT_SPLIT_BYTES),
        (["--runner", "DaskRunner"], splitting.DEFAULT_SPLIT_BYTES),
        (["--split_bytes", "1000"], 1000),
        (["--runner", "DataflowRunner", "--split_bytes", "0"], 0),
    ],
)
def test_files_are_cut_by_default_only_where_parts_are_read_in_parallel(flags, expected):
    from pipeline import options as opts

    options = opts.CachedViewOptions(["--input", "in.jsonl", "--output_dir", "out", *flags])
    assert opts.inputs_from(options).split_bytes == expected
