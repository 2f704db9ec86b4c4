"""Amazon S3 (s3://) and Azure Blob Storage (azfs://) in and out, on real local servers: moto's
S3-compatible server and Azure's own emulator, Azurite (tests/emulators.py).

Each store gets the model directory, the input files of every format, the outputs, the run
lock and the publish step of a run; what a run wrote is read back with the store's own SDK
(boto3, azure-storage-blob), not through adpredict, and compared per key with a local run.
The fault tests put a proxy that fails requests in front of each of them and of the Cloud
Storage emulator.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from pipeline import cli, predict
from pipeline.run_contract import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    RUN_LOCK,
    STAGING_DIR,
    SUCCESS_MARKER,
)
from pipeline.sampledata.generate import write_records
from tests import emulators
from tests.conftest import SCORE_RECORDS
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
        if scheme == "gs":  # the Cloud Storage emulator's bucket; Beam finds it by STORAGE_EMULATOR_HOST
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self.root = f"gs://{emulators.BUCKET}"
            self.flags = []
            client = storage.Client(project=emulators.PROJECT, credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": endpoint})  # fmt: skip
            self._gcs = client.bucket(emulators.BUCKET)
        elif scheme == "s3":
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

    def through(self, proxy: str, monkeypatch) -> list[str]:
        """The flags that point a run at `proxy` instead of the server (for Cloud Storage, the
        environment does, for this test; the emulator wants no credentials)."""
        if self.scheme == "gs":
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy)
            return ["--no_auth"]
        return [self.flags[0], self.flags[1].replace(self.endpoint, proxy)]

    def put(self, key: str, data: bytes) -> None:
        if self.scheme == "gs":
            self._gcs.blob(key).upload_from_string(data)
        elif self.scheme == "s3":
            self._s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        else:
            self._container.upload_blob(key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        if self.scheme == "gs":
            return self._gcs.blob(key).download_as_bytes()
        if self.scheme == "s3":
            return self._s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return self._container.download_blob(key).readall()

    def keys(self, prefix: str) -> list[str]:
        if self.scheme == "gs":
            return sorted(b.name for b in self._gcs.client.list_blobs(self._gcs, prefix=prefix))
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
def fault_stores(stores, google_cloud, trained_ads):
    """The stores a fault-injecting proxy goes in front of: S3, Azure and Cloud Storage (its
    emulator, whose model is read from this machine: TensorFlow's own gs:// client does not
    know the emulator), each with the model path a run uses."""
    gcs = Store("gs", os.environ["STORAGE_EMULATOR_HOST"])
    return {
        **{scheme: (store, store.path("model")) for scheme, store in stores.items()},
        "gs": (gcs, trained_ads["model"]),
    }


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
    assert not [k for k in published if STAGING_DIR in k or RUN_LOCK in k]  # staged files moved, lock gone
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


def adpredict(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
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


def refused_in_one_line(argv: list[str], capsys) -> tuple[str, float]:
    started = time.monotonic()
    code = cli.main(argv)
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE and len(err.splitlines()) == 1, (code, err)
    return err, seconds


@pytest.mark.parametrize(
    ("scheme", "problem", "message"),
    [
        ("s3", "no credentials", "no AWS credentials found"),
        ("s3", "no such bucket", "bucket 'no-such-bucket' does not exist"),
        ("s3", "endpoint down", "cannot reach the S3 endpoint"),
        ("azfs", "no credentials", "no Azure credentials"),
        ("azfs", "no such bucket", "container 'no-such-bucket' does not exist"),
        ("azfs", "endpoint down", "cannot reach the Azure Blob endpoint"),
        ("azfs", "other account", "names storage account 'otheraccount'"),
    ],
)
def test_a_store_that_cannot_be_used_stops_the_run_in_one_line_within_seconds(
    scheme, problem, message, stores, monkeypatch, capsys
):
    store = stores[scheme]
    flags, output = list(store.flags), store.path("refused/out")
    if problem == "no credentials":
        for name in AWS_ENV:
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for here
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
        flags = flags if scheme == "s3" else []
    elif problem == "no such bucket":
        output = output.replace(BUCKET, "no-such-bucket")
    elif problem == "endpoint down":
        down = f"http://127.0.0.1:{emulators.free_port()}"  # nothing listens there
        flags = [flags[0], flags[1].replace(store.endpoint, down)]
    else:
        output = output.replace(emulators.AZURITE_ACCOUNT, "otheraccount")
    err, seconds = refused_in_one_line(
        ["predict", "--model_dir", store.path("model"), "--input", store.path("refused/in/*.jsonl"),
         "--output_dir", output, *flags], capsys
    )  # fmt: skip
    assert message in err and output.split("/refused")[0] in err, err
    assert seconds < 20, seconds
    assert not store.keys("refused/")  # nothing written


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_a_night_on_the_store_runs_then_its_rerun_skips(scheme, stores, input_files, tmp_path, capsys):
    """`adpredict nightly` with {date} templates on the store; the store's flags on its command line."""
    import yaml

    store = stores[scheme]
    date = "2026-11-26"
    with open(input_files["jsonl"], "rb") as f:
        store.put(f"nightly/ads/dt={date}/part-0.jsonl", f.read())
    config = tmp_path / "nightly.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_dir": store.path("model"),
                "input": store.path("nightly/ads/dt={date}/*.jsonl"),
                "output_dir": store.path("nightly/out/dt={date}"),
            }
        )
    )
    argv = ["nightly", "--config", str(config), "--date", date, *store.flags]
    assert cli.main(argv) == EXIT_OK
    manifest = json.loads(store.get(f"nightly/out/dt={date}/run.json"))
    assert manifest["date"] == date and manifest["counts"]["predictions"] == SCORE_RECORDS
    capsys.readouterr()
    assert cli.main(argv) == EXIT_SKIPPED
    assert "skipped" in capsys.readouterr().out
    assert json.loads(store.get(f"nightly/out/dt={date}/run.json"))["run_id"] == manifest["run_id"]


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_a_run_killed_midway_then_run_again_publishes_one_set_of_outputs(
    scheme, stores, score_records, reference_predictions, tmp_path
):
    """SIGKILL once the run holds the lock and has begun writing (its first file is staged); the
    re-run takes over the dead run's lock, clears what it left and publishes every key exactly
    once."""
    import signal

    store = stores[scheme]
    records = score_records * 40  # 2,000 records, keys repeated: long enough to be caught midway
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    store.put("killed/in/in.jsonl", path.read_bytes())
    argv = ["predict", "--model_dir", store.path("model"), "--input", store.path("killed/in/in.jsonl"),
            "--output_dir", store.path("killed/out"), "--no_progress", "--duplicate_keys", "off", *store.flags]  # fmt: skip
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # Killed as soon as a file is staged, not after a fixed time: on Azurite the run stages its
    # first file 1.0 s after taking the lock and publishes 0.3 s later (2026-12-05).
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        if store.keys(f"killed/out/{STAGING_DIR}/"):
            break
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    assert f"killed/out/{SUCCESS_MARKER}" not in store.keys("killed/out/")
    manifest = predict.run(argv[1:])
    assert manifest["counts"]["predictions"] == len(records)
    rows = [json.loads(line) for key in store.keys("killed/out/prediction.results-")
            for line in store.get(key).decode().splitlines()]  # fmt: skip
    assert len(rows) == len(records)  # one set: no shard of the killed run is left beside them
    assert {row["key"] for row in rows} == set(reference_predictions)
    assert not [k for k in store.keys("killed/out/") if STAGING_DIR in k or RUN_LOCK in k]


FAULT_KINDS = "503,500,throttle,cut,drop"


@pytest.mark.parametrize("scheme", ["s3", "azfs", "gs"])
def test_at_5_percent_of_requests_failing_the_run_ends_with_the_clean_outputs(
    scheme, fault_stores, servers, input_files, reference_predictions, monkeypatch
):
    """Between adpredict and the server, a proxy fails 5% of the requests (errors, throttling,
    answers cut mid-body, dropped connections): retries with back-off absorb them."""
    store, model = fault_stores[scheme]
    with open(input_files["parquet"], "rb") as f:
        store.put("faults5/in/in.parquet", f.read())
    with emulators.fault_proxy(store.endpoint, servers["work"], 0.05, FAULT_KINDS, seed=5) as proxy:
        flags = store.through(proxy, monkeypatch)
        manifest = predict.run(
            ["--model_dir", model, "--input", store.path("faults5/in/*"),
             "--output_dir", store.path("faults5/out"), "--no_progress", *flags]
        )  # fmt: skip
        log = os.path.join(servers["work"], f"faults-{proxy.rsplit(':', 1)[1]}.jsonl")
        injected = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
    assert len(injected) >= 2, injected  # the run did meet faults
    assert manifest["counts"]["predictions"] == len(reference_predictions)
    assert predictions_in(store, "faults5/out") == pytest.approx(reference_predictions, abs=1e-6)


@pytest.mark.parametrize("scheme", ["s3", "azfs", "gs"])
@pytest.mark.parametrize("when", ["at the start", "while writing"])
def test_a_store_that_fails_every_request_ends_the_run_red_in_one_line_publishing_nothing(
    scheme, when, fault_stores, servers, input_files, monkeypatch
):
    """100% of the requests fail: at once (the check before the run names the store and its
    answer), or only the writes of the run's outputs (reads and the lock work): the run still
    ends within a bounded time, non-zero, with one line, and no _SUCCESS."""
    store, model = fault_stores[scheme]
    run = f"faults100-{when.replace(' ', '-')}"
    with open(input_files["jsonl"], "rb") as f:
        store.put(f"{run}/in/in.jsonl", f.read())
    # While writing: the uploads into the staging folder (Cloud Storage's name the object in
    # the query, its slashes escaped).
    staging = (
        rf"^/upload/.*{run}%2Fout%2F\.adpredict-staging"
        if scheme == "gs"
        else rf"{run}/out/\.adpredict-staging"
    )
    path = "" if when == "at the start" else staging
    with emulators.fault_proxy(
        store.endpoint, servers["work"], 1.0, "503,throttle", seed=1, path=path
    ) as proxy:
        flags = store.through(proxy, monkeypatch)
        started = time.monotonic()
        done = adpredict("predict", "--model_dir", model, "--input", store.path(f"{run}/in/*"),
                         "--output_dir", store.path(f"{run}/out"), "--no_progress", *flags)  # fmt: skip
        seconds = time.monotonic() - started
    err = done.stderr.strip().splitlines()
    assert done.returncode != EXIT_OK and len(err) == 1, done.stderr[-3000:]
    assert proxy.rsplit(":", 1)[1] in err[0] or store.root in err[0], err
    assert any(code in err[0] for code in ("503", "ServiceUnavailable", "ServerBusy", "SlowDown")), err
    if when == "at the start":  # the check before the run: a store that cannot be used is a usage error
        assert done.returncode == EXIT_USAGE and " answered " in err[0], err
    else:  # the run's writes failed after the clients' retries
        assert (
            done.returncode == EXIT_FAILED and "failed: " in err[0] and "nothing was published" in err[0]
        ), err
    # Bounded by the clients' own retries: boto3's (3 attempts), Azure's (3 retries 15-24 s
    # apart), Cloud Storage's (for 120 s).
    assert seconds < 300, seconds
    assert f"{run}/out/{SUCCESS_MARKER}" not in store.keys(f"{run}/out/")
    assert not [k for k in store.keys(f"{run}/out/") if "prediction.results" in k]


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_analyze_train_and_predict_with_everything_on_the_store(scheme, stores, score_records, tmp_path):
    """The whole flow with no local paths: training records on the store, analyze's output
    written there (run.json, the transform, the transformed splits, _SUCCESS), train reading
    it and exporting its model there, predict scoring with that model."""
    from pipeline import analyze
    from pipeline.sampledata.generate import write_records

    store, schema = stores[scheme], load_schema("ads")
    rows = [{**row, "clicked": index % 4 == 0} for index, row in enumerate(score_records)]
    local = tmp_path / "train.jsonl"
    write_records([{**r, "clicked": int(r["clicked"])} for r in rows], str(local), schema, "jsonl")
    store.put("flow/train/train.jsonl", local.read_bytes())
    manifest = analyze.run(["--schema", "ads", "--input", store.path("flow/train/*.jsonl"),
                            "--output_dir", store.path("flow/transform"), *store.flags])  # fmt: skip
    assert manifest["status"] == "succeeded" and manifest["output_dir"] == store.path("flow/transform")
    written = store.keys("flow/transform/")
    assert {"flow/transform/_SUCCESS", "flow/transform/run.json"} <= set(written)
    assert any(k.startswith("flow/transform/transform_fn/") for k in written)
    assert any(k.startswith("flow/transform/transformed/train-") for k in written)
    assert not [k for k in written if "/tmp/" in k]  # tf.Transform's temporary files stay local
    env = {"AZURE_STORAGE_CONNECTION_STRING": store.connection} if scheme == "azfs" else {
        "AWS_ENDPOINT_URL": store.endpoint}  # fmt: skip
    done = adpredict("train", "--transform_dir", store.path("flow/transform"), "--model_dir",
                     store.path("flow/model"), "--epochs", "1", "--skip_blank_image_baseline", env=env)  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr[-2000:]
    model_keys = store.keys("flow/model/")
    assert (
        "flow/model/saved_model.pb" in model_keys
        and "flow/model/assets.extra/training_metrics.json" in model_keys
    )
    store.put("flow/score/in.jsonl", (tmp_path / "train.jsonl").read_bytes())
    scored = predict.run(["--model_dir", store.path("flow/model"), "--input", store.path("flow/score/*"),
                          "--output_dir", store.path("flow/out"), "--no_progress", *store.flags])  # fmt: skip
    assert scored["counts"]["predictions"] == len(rows) and scored["counts"]["errors"] == 0


def test_analyze_into_a_store_refuses_a_runner_whose_workers_are_elsewhere(stores, capsys):
    store = stores["s3"]
    code = cli.main(["analyze", "--schema", "ads", "--input", store.path("flow/train/*.jsonl"), "--output_dir",
                     store.path("flow/transform2"), "--runner", "DaskRunner", *store.flags])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == EXIT_USAGE and len(err) == 1 and "runs on the DirectRunner only, not DaskRunner" in err[0]
    ), err


def test_a_night_with_no_google_account_dask_workers_and_s3(
    stores, input_files, reference_predictions, tmp_path
):
    """The README's recipe: `adpredict nightly` on a Dask cluster (two worker processes here)
    against S3, model and records and outputs all on the store; no Google credentials anywhere."""
    import yaml
    from distributed import LocalCluster

    store, date = stores["s3"], "2026-11-27"
    with open(input_files["jsonl"], "rb") as f:
        store.put(f"dask-night/ads/dt={date}/part-0.jsonl", f.read())
    config = tmp_path / "nightly.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_dir": store.path("model"),
                "input": store.path("dask-night/ads/dt={date}/*.jsonl"),
                "output_dir": store.path("dask-night/out/dt={date}"),
            }
        )
    )
    env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GOOGLE_")}
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:  # fmt: skip
            code = cli.main(["nightly", "--config", str(config), "--date", date, "--runner", "DaskRunner",
                             "--dask_client_address", cluster.scheduler_address, *store.flags])  # fmt: skip
    finally:
        os.environ.update(env)
    assert code == EXIT_OK
    manifest = json.loads(store.get(f"dask-night/out/dt={date}/run.json"))
    assert manifest["runner"] == "DaskRunner" and manifest["status"] == "succeeded"
    assert f"dask-night/out/dt={date}/{SUCCESS_MARKER}" in store.keys("dask-night/out/")
    assert predictions_in(store, f"dask-night/out/dt={date}") == pytest.approx(
        reference_predictions, abs=1e-6
    )


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_analyze_reads_training_records_from_the_store(scheme, stores, trained_ads, tmp_path):
    """Training records on the store, the transform written to a local directory."""
    from pipeline import analyze

    store = stores[scheme]
    lines = open(trained_ads["data"]).read().splitlines()[:200]
    store.put("analyze/in/train.jsonl", ("\n".join(lines) + "\n").encode())
    manifest = analyze.run(["--schema", "ads", "--input", store.path("analyze/in/*.jsonl"),
                            "--output_dir", str(tmp_path / "transform"), *store.flags])  # fmt: skip
    assert manifest["counts"]["read"] == 200 and manifest["counts"]["errors"] == 0
    assert (tmp_path / "transform" / "transform_fn" / "saved_model.pb").exists()


@pytest.mark.parametrize("scheme", ["s3", "azfs"])
def test_the_library_handler_scores_with_a_model_on_the_store_found_through_the_environment(
    scheme, stores, score_records, reference_predictions, monkeypatch
):
    """Beam's RunInference with RecordModelHandler("s3://…" or "azfs://…"), no flags at all: the
    endpoint and credentials as each ecosystem's environment gives them."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    import pipeline as adpredict

    store = stores[scheme]
    if scheme == "s3":
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint)
    else:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", store.connection)
    from pipeline.io import stores as model_stores

    FileSystems.set_options(PipelineOptions([]))  # what a user's launcher has: no adpredict flags
    monkeypatch.setattr(model_stores, "_LOCAL_COPIES", {})  # list the store again, whatever ran before
    handler = adpredict.RecordModelHandler(store.path("model"))

    def matches(scored):
        got = dict(scored)
        assert sorted(got) == sorted(reference_predictions)
        assert max(abs(got[k] - reference_predictions[k]) for k in got) < 1e-3

    with TestPipeline(options=PipelineOptions([])) as p:
        scored = (
            p
            | beam.Create(score_records)
            | RunInference(handler)
            | beam.Map(lambda r: (r.example["id"], float(r.inference["probability"])))
        )
        assert_that(scored, matches)
