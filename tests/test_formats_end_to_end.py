"""The same records through every source and into every sink give the same prediction per key."""

import glob
import json
import os

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from pipeline import predict
from pipeline.sampledata.generate import write_records
from transforms.schema import load_schema

SOURCES = {"jsonl": "in.jsonl", "csv": "in.csv.gz", "tfrecord": "in.tfrecord.gz", "parquet": "in.parquet"}
PASSTHROUGH = "media,hour,campaign:int"
RECORDS = 50


@pytest.fixture(scope="module")
def inputs(score_records, tmp_path_factory):
    """The same records in every input format (CSV and TFRecord gzipped), plus a campaign id."""
    import gzip
    import shutil

    schema = load_schema("ads")
    work = tmp_path_factory.mktemp("formats")
    paths = {}
    for fmt, name in SOURCES.items():
        path = str(work / fmt / name)
        if fmt == "csv":  # written plain, then gzipped
            write_records(score_records, path.removesuffix(".gz"), schema, fmt)
            with open(path.removesuffix(".gz"), "rb") as src, gzip.open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            write_records(score_records, path, schema, fmt)
        paths[fmt] = path
    # A pass-through field the model does not use, in JSONL only (for the sink tests).
    with_campaign = work / "campaign" / "in.jsonl"
    with_campaign.parent.mkdir()
    with open(with_campaign, "w") as f:
        for index, record in enumerate(score_records):
            f.write(json.dumps({**record, "campaign": 100 + index % 3}) + "\n")
    return {
        "paths": paths,
        "records": {r["id"]: r for r in score_records},
        "with_campaign": str(with_campaign),
    }


@pytest.fixture(scope="module")
def reference(reference_predictions):
    return reference_predictions


def run_predict(model_dir, input_path, out, *flags):
    manifest = predict.run(
        ["--model_dir", model_dir, "--input", input_path, "--output_dir", str(out), *flags]
    )
    counts = manifest["counts"]
    assert counts["read"] == RECORDS and counts["predictions"] + counts["errors"] == RECORDS
    return manifest


def jsonl_predictions(out) -> dict:
    rows = [json.loads(line) for path in glob.glob(str(out / "prediction.results-*")) for line in open(path)]
    return {row["key"]: row for row in rows}


@pytest.mark.parametrize("source", ["csv", "tfrecord", "parquet"])
def test_every_source_format_gives_the_same_predictions(source, trained_ads, inputs, reference, tmp_path):
    manifest = run_predict(trained_ads["model"], inputs["paths"][source], tmp_path)
    assert manifest["counts"]["errors"] == 0
    got = {key: row["prediction"]["probability"] for key, row in jsonl_predictions(tmp_path).items()}
    assert sorted(got) == sorted(reference)
    assert max(abs(got[key] - reference[key]) for key in reference) < 1e-6


def read_sink(sink: str, out) -> list[dict]:
    paths = sorted(glob.glob(str(out / "prediction.results-*-of-*")))
    assert paths, f"no prediction shards in {out}"
    if sink == "jsonl":
        return [
            {
                "key": r["key"],
                **r["prediction"],
                **{k: v for k, v in r.items() if k not in ("key", "prediction")},
            }
            for r in jsonl_predictions(out).values()
        ]
    if sink == "csv":
        return pa.concat_tables([pa_csv.read_csv(p) for p in paths]).to_pylist()
    if sink == "parquet":
        return pa.concat_tables([pq.read_table(p) for p in paths]).to_pylist()
    import tensorflow as tf

    rows = []
    for path in paths:
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            example = tf.train.Example.FromString(serialized).features.feature
            row = {}
            for name, feature in example.items():
                kind = feature.WhichOneof("kind")
                value = getattr(feature, kind).value[0] if kind else None
                row[name] = value.decode() if isinstance(value, bytes) else value
            rows.append(row)
    return rows


@pytest.mark.parametrize("sink", ["jsonl", "csv", "parquet", "tfrecord"])
def test_every_sink_format_holds_the_same_predictions_and_passthrough_fields(
    sink, trained_ads, inputs, reference, tmp_path
):
    flags = ["--output_format", sink, "--passthrough_fields", PASSTHROUGH]
    manifest = run_predict(trained_ads["model"], inputs["with_campaign"], tmp_path, *flags)
    assert manifest["output_format"] == sink and manifest["counts"]["errors"] == 0
    rows = read_sink(sink, tmp_path)
    assert sorted(row["key"] for row in rows) == sorted(reference)
    for row in rows:
        assert abs(row["probability"] - reference[row["key"]]) < 1e-6
        record = inputs["records"][row["key"]]
        assert (row["media"], row["hour"]) == (record["media"], record["hour"])
        assert row["campaign"] == 100 + (int(row["key"].removeprefix("ad-")) - 9000) % 3


@pytest.mark.parametrize(
    ("source", "sink"), [("jsonl", "jsonl"), ("parquet", "csv"), ("tfrecord", "parquet")]
)
def test_cloud_storage_in_and_out(source, sink, gcs_emulator, trained_ads, inputs, reference, tmp_path):
    """gs:// -> gs:// against a local Cloud Storage server; the files are read back and compared."""
    from apache_beam.io.filesystems import FileSystems

    local = inputs["paths"][source]
    remote_in = f"{gcs_emulator}/{source}-{sink}/in/{os.path.basename(local)}"
    remote_out = f"{gcs_emulator}/{source}-{sink}/out"
    with open(local, "rb") as src, FileSystems.create(remote_in, compression_type="uncompressed") as dst:
        dst.write(src.read())
    with FileSystems.create(f"{remote_out}/.temp-beam-crashed/shard-1") as stale:  # a killed run's shard
        stale.write(b"half-written\n")
    manifest = predict.run(
        ["--model_dir", trained_ads["model"], "--input", remote_in, "--output_dir", remote_out,
         "--output_format", sink, "--no_auth"]
    )  # fmt: skip
    assert manifest["counts"]["predictions"] == RECORDS and manifest["inputs"]["files"] == [remote_in]
    listed = FileSystems.match([f"{remote_out}/*"])[0].metadata_list
    names = sorted(os.path.basename(m.path) for m in listed)
    everything = FileSystems.match([f"{remote_out}/**"])[0].metadata_list
    assert everything and not [m.path for m in everything if ".temp-beam" in m.path]
    assert "_SUCCESS" in names and "run.json" in names and "prediction.errors_stats" in names
    for metadata in listed:
        with FileSystems.open(metadata.path, compression_type="uncompressed") as src:
            (tmp_path / os.path.basename(metadata.path)).write_bytes(src.read())
    rows = read_sink(sink, tmp_path)
    assert sorted(row["key"] for row in rows) == sorted(reference)
    assert max(abs(row["probability"] - reference[row["key"]]) for row in rows) < 1e-6
