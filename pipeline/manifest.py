"""The run manifest `run.json` and the `_SUCCESS` marker, written after the job finishes.

`run.json` records what ran (inputs, model and its fingerprint, runner, versions), what
came out (counts and files) and how long it took; `_SUCCESS` is written last and only
when the run met its error threshold, so a scheduler can trust its presence.
"""

from __future__ import annotations

import hashlib
import json
import platform

from apache_beam.io.filesystems import FileSystems

RUN_MANIFEST = "run.json"
SUCCESS_MARKER = "_SUCCESS"


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the SavedModel graph and variable index: changes when the model does."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "variables/variables.index"):
        path = FileSystems.join(model_dir, name)
        if FileSystems.exists(path):
            with FileSystems.open(path) as f:
                digest.update(f.read())
    return digest.hexdigest()


def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("adpredict", "apache-beam", "tensorflow", "tensorflow-transform", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def write_manifest(output_dir: str, manifest: dict, success: bool) -> str:
    path = FileSystems.join(output_dir, RUN_MANIFEST)
    with FileSystems.create(path) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    if success:
        with FileSystems.create(FileSystems.join(output_dir, SUCCESS_MARKER)):
            pass
    return path
