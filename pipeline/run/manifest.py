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

from pipeline.run_contract import RUN_MANIFEST, SUCCESS_MARKER
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
    """The run.json in `output_dir`."""
    with FileSystems.open(FileSystems.join(output_dir, RUN_MANIFEST)) as f:
        return json.loads(f.read().decode("utf-8"))


def manifest_of_run(output_dir: str, run_id: str | None) -> dict | None:
    """The run.json run `run_id` wrote in `output_dir`, or None (none yet, another run's)."""
    if not run_id or not FileSystems.exists(FileSystems.join(output_dir, RUN_MANIFEST)):
        return None
    try:
        manifest = read_manifest(output_dir)
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("run_id") == run_id else None


def finished_run(output_dir: str, run) -> dict:
    """The run.json the pipeline wrote, read by the launcher; raises (with it) when the run
    failed. `run` is the run's `RunConfig`."""
    manifest = read_manifest(output_dir)
    failure = run.failure(manifest)
    if failure is not None:
        raise failure
    return manifest
