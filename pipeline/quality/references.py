"""What a run's gate compares with: the model's training profile and the previous night's
run.json, read before the run starts (a missing one is not an error: the gate says which
comparison it could not make, and why)."""

from __future__ import annotations

import json

from apache_beam.io.filesystems import FileSystems

from pipeline.io.stores import local_model_dir
from pipeline.run_contract import RUN_MANIFEST, SUCCEEDED, InputError
from transforms.model_contract import TRAINING_PROFILE_FILE, model_files


def training_profile(model_dir: str) -> tuple[dict | None, str]:
    """(the model's training profile, "") or (None, why there is none)."""
    gfile = model_files()
    path = gfile.join(local_model_dir(model_dir), TRAINING_PROFILE_FILE)
    if not gfile.exists(path):
        return (
            None,
            f"the model has no training profile ({TRAINING_PROFILE_FILE}; adpredict train writes one)",
        )
    try:
        with gfile.GFile(path) as f:
            profile = json.loads(f.read())
        profile["features"], profile.setdefault("outputs", {})
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{path} is not a training profile ({e}); export the model again, or delete the file to run "
            "without skew checks"
        ) from None
    profile["source"] = f"training profile ({profile.get('records', 0)} records)"
    return profile, ""


def previous_night(path: str) -> tuple[dict | None, str]:
    """The profile of the run whose output directory (or run.json) is `path`, as the gate's
    previous night; (None, why) when it has none or did not succeed."""
    manifest_path = path if path.endswith(".json") else FileSystems.join(path, RUN_MANIFEST)
    if not FileSystems.exists(manifest_path):
        return None, f"{manifest_path} does not exist"
    with FileSystems.open(manifest_path) as f:
        try:
            manifest = json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            raise InputError(f"--drift_baseline {manifest_path} is not a run.json ({e})") from None
    if manifest.get("status") != SUCCEEDED:
        return None, f"the run in {manifest_path} did not succeed ({manifest.get('status')})"
    profile = manifest.get("quality", {}).get("profile")
    if not profile:
        return (
            None,
            f"the run in {manifest_path} has no profile (made before the data-quality gate, or with it off)",
        )
    history = manifest["quality"].get("volume_history") or [manifest.get("counts", {}).get("read", 0)]
    date = manifest.get("date") or manifest.get("timings", {}).get("started", "")
    return {
        **profile,
        "volume_history": history,
        "source": f"run of {date} ({manifest_path}, {profile.get('records', 0)} records)",
        "run": manifest_path,
    }, ""
