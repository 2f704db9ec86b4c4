"""The same pipelines on a second distributed engine: a real Dask scheduler with two worker
processes on loopback (dask.distributed's LocalCluster), through pipeline.runners.dask.
Outputs and counts must equal the DirectRunner's."""

import glob
import json
import os

import pytest


@pytest.fixture(scope="module")
def dask_scheduler():
    """The address of a 2-worker local Dask cluster (one thread each), for this module."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def read_lines(pattern: str) -> list[str]:
    return [line for path in sorted(glob.glob(pattern)) for line in open(path)]


def predictions_of(out) -> dict:
    return {
        row["key"]: row["prediction"]["probability"]
        for row in map(json.loads, read_lines(str(out / "prediction.results-*")))
    }


def test_predict_on_dask_equals_the_direct_runner(trained_ads, dask_scheduler, tmp_path):
    from pipeline import predict

    lines = open(trained_ads["data"]).read().splitlines()[:300]
    lines[10] = json.dumps({**json.loads(lines[10]), "gender": 3})
    lines[200] = "{broken"
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    runs = {}
    for name, flags in (
        ("direct", []),
        ("dask", ["--runner", "DaskRunner", "--dask_client_address", dask_scheduler]),
    ):
        out = tmp_path / name
        # Byte ranges of ~60 KB: several read tasks and the counting pass's side input.
        manifest = predict.run(["--model_dir", trained_ads["model"], "--input", str(path), "--output_dir", str(out),
                                "--split_bytes", "60000", "--max_error_rate", "0.05", *flags])  # fmt: skip
        runs[name] = (manifest, predictions_of(out), sorted(read_lines(str(out / "errors-*"))), out)
    (direct, direct_predictions, direct_errors, _), (dask, dask_predictions, dask_errors, out) = runs.values()
    counted = ("read", "predictions", "errors", "error_rate")
    assert dask["runner"] == "DaskRunner"
    assert {k: dask["counts"][k] for k in counted} == {k: direct["counts"][k] for k in counted}
    assert dask["counts"]["model_loads"] <= 2  # once per worker process, not per task
    assert direct["counts"]["read"] == 300 and direct["counts"]["errors"] == 2
    assert sorted(dask_predictions) == sorted(direct_predictions)
    assert max(abs(dask_predictions[k] - direct_predictions[k]) for k in direct_predictions) < 1e-6
    assert dask_errors == direct_errors
    assert os.path.exists(out / "_SUCCESS") and os.path.exists(out / "report.html")
    assert not glob.glob(str(out / "beam-temp-*")) and not glob.glob(str(out / ".adpredict-staging"))


def transformed_records(out) -> list[str]:
    """Every tf.Example analyze wrote (train and eval) as sorted feature values, in a stable
    order (the bytes of two equal Examples may differ: a proto map has no fixed order)."""
    import tensorflow as tf

    records = []
    for path in sorted(glob.glob(str(out / "transformed" / "*.tfrecord.gz"))):
        for data in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            features = tf.train.Example.FromString(data.numpy()).features.feature
            records.append(
                repr(sorted((name, str(value).replace("\n", " ")) for name, value in features.items()))
            )
    return sorted(records)


def test_analyze_on_dask_equals_the_direct_runner(trained_ads, dask_scheduler, tmp_path):
    from pipeline import analyze

    path = tmp_path / "train.jsonl"
    path.write_text("".join(open(trained_ads["data"]).readlines()[:300]))
    outputs = {}
    for name, flags in (
        ("direct", []),
        ("dask", ["--runner", "DaskRunner", "--dask_client_address", dask_scheduler]),
    ):
        out = tmp_path / name
        analyze.run(["--schema", "ads", "--input", str(path), "--output_dir", str(out), *flags])
        manifest = json.load(open(out / "run.json"))
        vocabularies = {
            os.path.basename(p): open(p, "rb").read()
            for p in glob.glob(str(out / "transform_fn" / "assets" / "*"))
        }
        outputs[name] = (manifest["counts"], vocabularies, transformed_records(out))
    assert outputs["direct"][0]["read"] == 300
    assert outputs["dask"][0] == outputs["direct"][0]
    assert outputs["dask"][1] == outputs["direct"][1] and outputs["direct"][1]  # the same vocabularies
    assert outputs["dask"][2] == outputs["direct"][2] and len(outputs["direct"][2]) == 300


def test_a_worker_that_runs_only_beams_own_dofns_has_the_file_system_fixes():
    """A Dask worker that only finalizes a write (Beam's DoFn, none of adpredict's code) must
    still have pipeline/io/beam_fixes.py applied: without it an empty errors shard on S3 fails
    the night ("MalformedXML"), on whichever worker happens to get it. A fresh process stands
    for such a worker; the run's flags carry `--beam_plugins` as make_pipeline sets it."""
    import subprocess
    import sys

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners.dask import _flags
    from pipeline.runners.launch import make_pipeline

    options = PipelineOptions(["--runner", "DaskRunner"])
    make_pipeline(options)
    worker = """
import json, sys
from apache_beam.internal import pickler
from apache_beam.transforms import core, window
from apache_beam.utils.windowed_value import WindowedValue
from pipeline.runners.dask import _tagged_dofn_bundle

fn = pickler.dumps(core.CallableWrapperDoFn(lambda x: [x * 2]))
items = [WindowedValue(x, 0, [window.GlobalWindow()]) for x in (1, 2)]
print(_tagged_dofn_bundle(items, fn, window.GlobalWindows(), "Double", [], [], {}, json.loads(sys.argv[1])))
from apache_beam.io.aws import s3io
from apache_beam.io.azure import blobstorageio
print(getattr(s3io.S3Uploader.finish, "adpredict_fixed", False),
      getattr(blobstorageio.BlobStorageIO.exists, "adpredict_fixed", False))
"""
    done = subprocess.run(
        [sys.executable, "-c", worker, json.dumps(_flags(options))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2:] == ["[(None, 2), (None, 4)]", "True True"]
