"""Amazon S3 (s3://) and Azure Blob Storage (azfs://) in and out, on real local servers: moto's
S3-compatible server and Azure's own emulator, Azurite (tests/emulators.py).

Each store gets the model directory, the input files of every format, the outputs, the run
lock and the publish step of a run; what a run wrote is read back with the store's own SDK
(boto3, azure-storage-blob), not through adpredict, and compared per key with a local run.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from pipeline import predict
from pipeline.run_contract import EXIT_OK, EXIT_USAGE, RUN_LOCK, SUCCESS_MARKER
from pipeline.sampledata.generate import write_records
from tests import emulators
from tests.test_formats_end_to_end import read_sink
from transforms.schema import load_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = CONTAINER = "adpredict-test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Files of each format as a night would deliver them (CSV and TFRecord gzipped).
INPUT_NAMES = {"jsonl": "in.jsonl", "csv": "in.csv.gz", "parquet": "in.parquet", "tfrecord": "in.tfrecord.gz"}


class Store:
    """One bucket (S3) or container (Azure) of a local server: its root path for adpredict, the
    flags that point Beam at the server, and plain SDK access to check what a run wrote."""

    def __init__(self, scheme: str, endpoint: str):
        self.scheme = scheme
        self.endpoint = endpoint
        if scheme == "s3":
            import boto3

            self.root = f"s3://{BUCKET}"
            self.flags = ["--s3_endpoint_url", endpoint]
            self._s3 = boto3.client("s3", endpoint_url=endpoint, **_aws_keys())
            self._s3.create_bucket(Bucket=BUCKET)
        else:
            from azure.storage.blob import BlobServiceClient

            self.connection = emulators.azurite_connection_string(endpoint)
            self.root = f"azfs://{emulators.AZURITE_ACCOUNT}/{CONTAINER}"
            self.flags = ["--azure_connection_string", self.connection]
            self._container = BlobServiceClient.from_connection_string(self.connection).create_container(
                CONTAINER
            )

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        if self.scheme == "s3":
            self._s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        else:
            self._container.upload_blob(key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        if self.scheme == "s3":
            return self._s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return self._container.download_blob(key).readall()

    def keys(self, prefix: str) -> list[str]:
        if self.scheme == "s3":
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
        return sorted(b.name for b in self._container.list_blobs(name_starts_with=prefix))

    def upload_dir(self, local: str, prefix: str) -> None:
        for folder, _, names in os.walk(local):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    self.put(f"{prefix}/{os.path.relpath(path, local)}", f.read())

    def download(self, prefix: str, local: str) -> str:
        """The objects under `prefix`/ as files under `local` (for the readers of the tests)."""
        for key in self.keys(prefix + "/"):
            target = os.path.join(local, key[len(prefix) + 1 :])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(self.get(key))
        return local


def _aws_keys() -> dict:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """moto and Azurite for the module, credentials for S3 in the environment (boto3's chain)."""
    work = str(tmp_path_factory.mktemp("object_stores"))
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        with emulators.s3_server(work) as s3, emulators.azurite(work) as azure:
            yield {"s3": s3, "azfs": azure, "work": work}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def stores(servers, trained_ads):
    """Each store with the test model uploaded under model/."""
    found = {}
    for scheme in ("s3", "azfs"):
        store = Store(scheme, servers[scheme])
        store.upload_dir(trained_ads["model"], "model")
        found[scheme] = store
    return found


@pytest.fixture(scope="module")
def input_files(score_records, tmp_path_factory):
    """The score records in each input format, as local files."""
    import gzip
    import shutil

    work = tmp_path_factory.mktemp("store_inputs")
    paths = {}
    for fmt, name in INPUT_NAMES.items():
        path = str(work / name)
        plain = path.removesuffix(".gz")
        write_records(score_records, plain, load_schema("ads"), fmt)
        if path != plain:
            with open(plain, "rb") as src, gzip.open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        paths[fmt] = path
    return paths


def predictions_in(store: Store, prefix: str, fmt: str = "jsonl") -> dict:
    """key -> probability of the prediction shards a run published under `prefix`."""
    import pathlib

    local = pathlib.Path(tempfile.mkdtemp(prefix="store-out-"))
    store.download(prefix, str(local))
    return {row["key"]: row["probability"] for row in read_sink(fmt, local)}


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "tfrecord"])
def test_every_format_in_and_out_of_the_store_gives_the_local_predictions(
    scheme, fmt, stores, input_files, reference_predictions
):
    """Model, input and outputs all on the store; the run's files read back with the store's SDK."""
    store = stores[scheme]
    run = f"formats-{fmt}"
    with open(input_files[fmt], "rb") as f:
        store.put(f"{run}/in/{INPUT_NAMES[fmt]}", f.read())
    manifest = predict.run(
        ["--model_dir", store.path("model"), "--input", store.path(f"{run}/in/*"),
         "--output_dir", store.path(f"{run}/out"), "--output_format", fmt, "--no_progress", *store.flags]
    )  # fmt: skip
    assert (
        manifest["counts"]["predictions"] == len(reference_predictions) and manifest["counts"]["errors"] == 0
    )
    got = predictions_in(store, f"{run}/out", fmt)
    assert sorted(got) == sorted(reference_predictions)
    assert max(abs(got[key] - reference_predictions[key]) for key in got) < 1e-6
    published = store.keys(f"{run}/out/")
    assert f"{run}/out/{SUCCESS_MARKER}" in published and f"{run}/out/run.json" in published
    assert not [
        k for k in published if ".adpredict-staging" in k or RUN_LOCK in k
    ]  # staged files moved, lock gone
    assert json.loads(store.get(f"{run}/out/run.json"))["model"]["dir"] == store.path("model")


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_one_file_read_in_byte_ranges_from_the_store(scheme, stores, input_files, reference_predictions):
    """--split_bytes cuts the store's file into ranges (seeks and ranged reads), as on Dataflow."""
    store = stores[scheme]
    with open(input_files["jsonl"], "rb") as f:
        store.put("ranges/in/in.jsonl", f.read())
    manifest = predict.run(
        ["--model_dir", store.path("model"), "--input", store.path("ranges/in/in.jsonl"),
         "--output_dir", store.path("ranges/out"), "--split_bytes", "4000", "--no_progress", *store.flags]
    )  # fmt: skip
    assert manifest["counts"]["read"] == len(reference_predictions)
    assert predictions_in(store, "ranges/out") == pytest.approx(reference_predictions, abs=1e-6)


def adpredict(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_two_runs_into_one_output_directory_one_wins_and_nothing_is_lost(
    scheme, stores, input_files, reference_predictions
):
    """Started together, both reach the store's conditional create of the lock: one holds it
    and runs; the other stops in one line, exit 2, without touching the outputs."""
    store = stores[scheme]
    with open(input_files["jsonl"], "rb") as f:
        store.put("race/in/in.jsonl", f.read())
    argv = ["predict", "--model_dir", store.path("model"), "--input", store.path("race/in/*.jsonl"),
            "--output_dir", store.path("race/out"), "--no_progress", *store.flags]  # fmt: skip
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *argv],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    done = [(run.wait(300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in done)
    assert codes == [EXIT_OK, EXIT_USAGE], done
    loser = next(err for code, _, err in done if code == EXIT_USAGE)
    assert "is in use by another run" in loser and len(loser.strip().splitlines()) == 1, loser
    assert predictions_in(store, "race/out") == pytest.approx(reference_predictions, abs=1e-6)
    assert f"race/out/{RUN_LOCK}" not in store.keys("race/out/")
