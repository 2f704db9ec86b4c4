"""`run.json`: what a run was (inputs, model, runner, versions) and how it ended (counts,
status, timings), written by the run's last step and read by launchers and nightly re-runs.

It goes through Beam's FileSystems, so it is written and read where the run's outputs are
(local, gs://), with the workers' credentials.
"""

from __future__ import annotations

import datetime
import json
import platform

from apache_beam.io.filesystems import FileSystems

from pipeline.run_contract import (
    FAILED_ERROR_RATE,
    FAILED_LOST,
    RUN_MANIFEST,
    SUCCESS_MARKER,
    ErrorRateExceeded,
    RecordsLost,
    errors_stats_file,
)
from transforms import model_contract

PACKAGES = ("adpredict", "apache-beam", "tensorflow", "tensorflow-transform", "pyarrow")


def model_fingerprint(model_dir: str) -> str:
    """run.json's `model.fingerprint` (`transforms.model_contract.model_fingerprint`), read
    through FileSystems so a gs:// model is fingerprinted too."""

    def read(path: str) -> bytes | None:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return f.read()

    return model_contract.model_fingerprint(model_dir, read)


def versions() -> dict:
    """The versions a run ran with: Python and the packages that decide its results."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def write_manifest(output_dir: str, manifest: dict, success: bool) -> str:
    """Writes `run.json`, then `_SUCCESS` when the run succeeded; returns run.json's path."""
    path = FileSystems.join(output_dir, RUN_MANIFEST)
    with FileSystems.create(path) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    if success:
        with FileSystems.create(FileSystems.join(output_dir, SUCCESS_MARKER)):
            pass
    return path


def read_manifest(output_dir: str) -> dict:
    with FileSystems.open(FileSystems.join(output_dir, RUN_MANIFEST)) as f:
        return json.loads(f.read().decode("utf-8"))


def finished_run(output_dir: str, max_error_rate: float, records: str = "records", after: str = "") -> dict:
    """The run.json the pipeline wrote, read by the launcher; raises (with it) when the run failed.

    `records` names what was counted in the message ("training records"), `after` says what
    the failure means for the outputs."""
    manifest = read_manifest(output_dir)
    if manifest["status"] == FAILED_LOST:
        raise RecordsLost("; ".join(manifest["problems"]), manifest)
    if manifest["status"] == FAILED_ERROR_RATE:
        counts = manifest["counts"]
        stats = FileSystems.join(output_dir, errors_stats_file(manifest))
        raise ErrorRateExceeded(
            f"{counts['errors']} of {counts['read']} {records} failed ({counts['error_rate']:.2%}), above "
            f"--max_error_rate {max_error_rate:.2%}{after}; see {stats}",
            manifest,
        )
    return manifest
