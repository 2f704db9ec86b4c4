"""Shared fixtures: a small model trained end to end once per test session.

generate -> analyze (Beam + tf.Transform) -> train -> export, on a few hundred records,
so every pipeline test scores with a real all-in-one SavedModel, not a fake.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CRITEO_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "criteo_sample.txt")


@pytest.fixture(scope="session")
def trained_ads(tmp_path_factory):
    """Paths of a trained ads model: {"work", "data", "transform", "model", "metrics"}."""
    from pipeline import analyze
    from pipeline.inference.golden import store_golden_records_from
    from pipeline.inference.precision_check import store_precision_check_from
    from pipeline.sampledata.generate import generate_file
    from pipeline.trainer.train import train_and_export
    from transforms.schema import load_schema

    work = tmp_path_factory.mktemp("ads")
    data = str(work / "train.jsonl")
    generate_file(data, 600, seed=7)
    transform = str(work / "transform")
    analyze.run(["--schema", "ads", "--input", data, "--output_dir", transform])
    model = str(work / "model")
    metrics = train_and_export(transform, load_schema("ads"), model, epochs=4, compare_blank_image=False)
    store_golden_records_from(model, transform)  # so that every run in the tests checks them
    # and its bf16 check, as `adpredict train` stores it: --precision auto (the default) decides the same way in every test
    store_precision_check_from(model, transform, load_schema("ads"))
    return {"work": work, "data": data, "transform": transform, "model": model, "metrics": metrics}


@pytest.fixture(scope="session")
def google_cloud(tmp_path_factory):
    """Local Cloud Storage and BigQuery servers on loopback ports, for the whole session.

    Beam's gs:// filesystem finds the storage server through STORAGE_EMULATOR_HOST; the
    pipelines reach BigQuery through `flags` (--bigquery_endpoint ... --no_auth).
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from tests import emulators

    work = str(tmp_path_factory.mktemp("google_cloud"))
    with emulators.cloud_storage(work) as storage, emulators.bigquery(work, work) as (rest, grpc):
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = storage
        FileSystems.set_options(PipelineOptions(["--no_auth"]))  # no search for credentials
        try:
            yield {
                "bucket": f"gs://{emulators.BUCKET}",
                "project": emulators.PROJECT,
                "flags": [
                    "--project",
                    emulators.PROJECT,
                    "--bigquery_endpoint",
                    rest,
                    "--bigquery_storage_endpoint",
                    grpc,
                    "--no_auth",
                ],  # fmt: skip
                "work": work,
            }
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def gcs_emulator(google_cloud):
    """The bucket of the local Cloud Storage server, as gs://bucket."""
    return google_cloud["bucket"]


SCORE_RECORDS = 50


@pytest.fixture(scope="session")
def score_records():
    """50 generated ad records (keys ad-9000..), the same for every format test."""
    from pipeline.sampledata.generate import generate_records
    from transforms.schema import load_schema

    return list(generate_records(load_schema("ads"), SCORE_RECORDS, seed=11, first_id=9000))


@pytest.fixture(scope="session")
def reference_predictions(trained_ads, score_records, tmp_path_factory):
    """key -> probability for `score_records`, from a plain JSONL -> JSONL run."""
    import glob
    import json

    from pipeline import predict

    work = tmp_path_factory.mktemp("reference")
    with open(work / "in.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in score_records)
    predict.run(["--model_dir", trained_ads["model"], "--input", str(work / "in.jsonl"), "--output_dir",
                 str(work / "out")])  # fmt: skip
    rows = [
        json.loads(line)
        for path in glob.glob(str(work / "out" / "prediction.results-*"))
        for line in open(path)
    ]
    predictions = {row["key"]: row["prediction"]["probability"] for row in rows}
    assert sorted(predictions) == sorted(r["id"] for r in score_records)
    return predictions
