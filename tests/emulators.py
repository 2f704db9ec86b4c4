"""Local servers for the tests, started, waited for, stopped: Google Cloud's (Cloud Storage,
BigQuery), an S3-compatible one (moto), Azure's storage emulator (Azurite), and a proxy that
fails a share of the requests put through it (mitmproxy with tests/faults_addon.py).

They live in `.venv-emulators`, `emulators/azurite` and `.venv-proxy` (`make emulators`),
apart from the pipeline's pinned stack, and listen on free loopback ports only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATOR_BIN = os.path.join(ROOT, ".venv-emulators", "bin")
AZURITE_BIN = os.path.join(ROOT, "emulators", "azurite", "node_modules", ".bin", "azurite-blob")
PROXY_BIN = os.path.join(ROOT, ".venv-proxy", "bin", "mitmdump")
FAULTS_ADDON = os.path.join(ROOT, "tests", "faults_addon.py")
PROJECT = "adpredict-test"
BUCKET = "adpredict-test-bucket"
# Azurite's well-known development account (public: the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emulator exited with code {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"emulator did not listen on 127.0.0.1:{port} within {seconds} s")


@contextlib.contextmanager
def running(argv: list[str], ports: list[int], log_path: str, env: dict | None = None):
    """Runs a server process until the block ends; its output goes to `log_path`."""
    executable = argv[0] if os.path.isabs(argv[0]) else os.path.join(EMULATOR_BIN, argv[0])
    if not os.path.exists(executable):
        raise RuntimeError(f"{executable} is missing: run `make emulators` (make test does it)")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [executable, *argv[1:]], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            for port in ports:
                wait_for_port(port, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def cloud_storage(work_dir: str):
    """gcp-storage-emulator with one bucket, its objects under `work_dir`/.cloudstorage (so
    the BigQuery emulator can load gs:// files); yields its http:// address."""
    port = free_port()
    argv = ["gcp-storage-emulator", "-d", work_dir, "start", "--host", "127.0.0.1", "--port", str(port),
            "--default-bucket", BUCKET, "-q"]  # fmt: skip
    with running(argv, [port], os.path.join(work_dir, "gcs-emulator.log")):
        yield f"http://127.0.0.1:{port}"


# bqemulator 1.4.0 loads DuckDB's spatial extension at start, which it downloads; offline
# that fails, and it has no setting to skip it (GEOGRAPHY is the only thing that needs it).
_BQEMULATOR_OFFLINE = (
    "import os, sys; os.environ.setdefault('BQEMU_ENABLE_FORMAT_EXTENSIONS', 'false');"
    "from bqemulator.storage import engine; engine.DuckDBEngine._load_spatial = lambda self: None;"
    "from bqemulator.cli import main; sys.exit(main())"
)


@contextlib.contextmanager
def bigquery(work_dir: str, storage_dir: str | None = None):
    """bqemulator (REST + Storage API gRPC); yields (REST address, gRPC host:port).

    With `storage_dir` (a `cloud_storage` work_dir), load jobs read gs:// URIs from the
    Cloud Storage emulator's files, as real BigQuery reads Cloud Storage.
    """
    rest, grpc = free_port(), free_port()
    argv = ["python", "-c", _BQEMULATOR_OFFLINE, "start", "--rest-host", "127.0.0.1", "--rest-port", str(rest),
            "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc), "--project", PROJECT,
            "--log-level", "warning"]  # fmt: skip
    env = {"BQEMU_GCS_LOCAL_ROOT": os.path.join(storage_dir, ".cloudstorage")} if storage_dir else {}
    with running(argv, [rest, grpc], os.path.join(work_dir, "bq-emulator.log"), env):
        yield f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc}"


@contextlib.contextmanager
def s3_server(work_dir: str):
    """moto's S3-compatible server; yields its http:// address. Any access key works."""
    port = free_port()
    with running(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)], [port], os.path.join(work_dir, "moto.log")
    ):
        yield f"http://127.0.0.1:{port}"


def azurite_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


@contextlib.contextmanager
def azurite(work_dir: str):
    """Azurite's Blob service, its data under `work_dir`; yields its http:// address."""
    port = free_port()
    argv = [AZURITE_BIN, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
            os.path.join(work_dir, "azurite"), "--skipApiVersionCheck", "--loose", "--disableTelemetry"]  # fmt: skip
    with running(argv, [port], os.path.join(work_dir, "azurite.log")):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def fault_proxy(
    target: str,
    work_dir: str,
    rate: float,
    kinds: str = "503,500,throttle,cut",
    seed: int = 1,
    path: str = "",
):
    """mitmdump in front of `target` (an http:// address) failing `rate` of the requests (whose
    path matches the regex `path`, if given) with `kinds` (tests/faults_addon.py); yields the
    proxy's http:// address."""
    port = free_port()
    argv = [PROXY_BIN, "--mode", f"reverse:{target}", "--listen-host", "127.0.0.1", "-p", str(port),
            "-s", FAULTS_ADDON, "--set", "keep_host_header=true", "--set", "connection_strategy=lazy", "--set", f"fault_rate={rate}",
            "--set", f"fault_kinds={kinds}", "--set", f"fault_seed={seed}",
            "--set", f"fault_log={os.path.join(work_dir, f'faults-{port}.jsonl')}", "--set", f"fault_path={path}",
            "-q"]  # fmt: skip
    with running(argv, [port], os.path.join(work_dir, f"proxy-{port}.log")):
        yield f"http://127.0.0.1:{port}"


if __name__ == "__main__":  # python tests/emulators.py: start both and wait (for manual runs)
    import tempfile

    work = tempfile.mkdtemp(prefix="adpredict-emulators-")
    with cloud_storage(work) as gcs, bigquery(work, work) as (bq_rest, bq_grpc):
        print(f"STORAGE_EMULATOR_HOST={gcs}\nBigQuery REST {bq_rest}, Storage API gRPC {bq_grpc}", flush=True)
        sys.stdin.read()
