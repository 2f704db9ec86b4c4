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


def model_training(model_dir: str) -> dict | None:
    """run.json's `model.training`: what the model directory says of its training, for the
    report to put beside the run (`transforms.model_contract`'s training metrics and
    training profile): the AUC on the held-out split, its records and the training
    records, and each output's mean prediction on the held-out split. None for a model
    without them (a foreign model); a file that cannot be read counts as absent."""
    metrics = _model_json(model_dir, model_contract.TRAINING_METRICS_FILE) or {}
    profile = _model_json(model_dir, model_contract.TRAINING_PROFILE_FILE) or {}
    outputs = profile.get("outputs") if isinstance(profile.get("outputs"), dict) else {}
    means = {
        name: output["mean"]
        for name, output in outputs.items()
        if isinstance(output, dict) and isinstance(output.get("mean"), int | float)
    }
    found = {key: metrics.get(key) for key in ("eval_auc", "eval_records", "train_records")}
    found["mean_prediction"] = means or None
    return found if any(value is not None for value in found.values()) else None


def _model_json(model_dir: str, relative_path: str) -> dict | None:
    path = FileSystems.join(model_dir, *relative_path.split("/"))
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            found = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


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
