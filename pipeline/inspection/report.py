"""What `adpredict inspect` reports of a model directory, as plain data (what --json prints)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import zlib

from pipeline.inspection.checks import bigquery_ml_check, contract_check, serving_check, tf_only_check
from pipeline.inspection.probe import PROBE_TIMEOUT_S, run_tf_only_probe
from transforms.model_contract import (
    DESCRIPTION_PATH,
    PRECISION_CHECK_FILE,
    RAW_SIGNATURE,
    TRAINING_METRICS_FILE,
    TRAINING_PROFILE_FILE,
    TRANSFORM_SIGNATURE,
    TUNING_FILE,
    ModelDescription,
    ModelDirectoryError,
    model_fingerprint,
)
from transforms.model_integrity import check_model_files


def inspect_model(model_dir: str, timeout: float = PROBE_TIMEOUT_S, show_probe_log: bool = False) -> dict:
    """Everything `inspect` reports about `model_dir`, as plain data (what --json prints)."""
    model_dir = _checked_directory(model_dir)
    description, description_error = _read_description(model_dir)
    example = example_instance(description) if description else None
    probe_input = example
    if description and description.example_input:  # the probe serializes it as a tf.Example
        probe_input = {"__tf_example__": description.example_input, "features": {
            f.name: [_EXAMPLE_LISTS[f.type], example[f.name] if f.type == "string_list" else [example[f.name]]]
            for f in description.inputs
        }}  # fmt: skip
    probe = run_tf_only_probe(model_dir, probe_input, timeout, show_log=show_probe_log)
    if probe.get("read_error"):
        raise ModelDirectoryError(
            f"{model_dir!r} holds a saved_model.pb TensorFlow cannot read ({probe['read_error']}); "
            "export the model again (`adpredict train`) or give the directory it was exported to"
        )
    size, files = directory_size(model_dir)
    files_problem = _files_problem(model_dir)
    signatures = _signatures(probe)
    report = {
        "model_dir": model_dir,
        "adpredict_description": description.origin if description else None,
        "example_input": description.example_input if description else None,
        "description_error": description_error,
        "schema": description.schema_name if description else None,
        "key": {"field": description.key_field, "type": description.key_type} if description else None,
        "label": description.label if description else None,
        "inputs": _inputs(
            description, signatures.get(description.signature if description else RAW_SIGNATURE)
        ),
        "outputs": _outputs(
            description, signatures.get(description.signature if description else RAW_SIGNATURE)
        ),
        "signatures": signatures,
        "transform": _transform(model_dir, probe),
        "batch_size": {
            "recorded": description.batch_size if description else None,
            "tuning": _read_json(model_dir, TUNING_FILE),
        },
        "training_metrics": _read_json(model_dir, TRAINING_METRICS_FILE),
        "golden_records": _golden_records(model_dir),
        "precision_check": _read_json(model_dir, PRECISION_CHECK_FILE),
        "training_profile": _training_profile(model_dir),
        "size_bytes": size,
        "files": files,
        "files_problem": files_problem,
        "fingerprints": {
            "adpredict": model_fingerprint(model_dir),
            "tensorflow": probe.get("tensorflow_fingerprint"),
        },
        "tensorflow": {
            "saved_with": probe.get("saved_with"),
            "graph_producer": probe.get("graph_producer"),
            "probe": probe.get("tensorflow_version"),
            "ops": probe.get("ops_used"),
        },
        "example": example,
    }
    report["checks"] = [
        contract_check(description, files_problem or description_error, signatures, probe),
        tf_only_check(probe, signatures),
        bigquery_ml_check(size, signatures, probe),
        serving_check(signatures, probe, description, example),
    ]
    return report


def _golden_records(model_dir: str) -> dict | None:
    """How many golden records the model holds, from which TensorFlow, and their tolerance."""
    from pipeline.inference.golden import read_golden_records  # TensorFlow: not on import

    stored = read_golden_records(model_dir)
    if stored is None:
        return None
    return {
        "count": len(stored["records"]),
        "tensorflow": stored.get("tensorflow"),
        "tolerance": stored["tolerance"],
    }


def _training_profile(model_dir: str) -> dict | None:
    """What the data-quality gate compares runs with: records and features profiled, outputs."""
    profile = _read_json(model_dir, TRAINING_PROFILE_FILE)
    if not profile:
        return None
    return {
        "records": profile.get("records"),
        "features": sorted(profile.get("features", {})),
        "outputs": sorted(profile.get("outputs", {})),
    }


def _files_problem(model_dir: str) -> str | None:
    """Why the directory is incomplete or corrupt (predict would stop on it), or None."""
    try:
        check_model_files(model_dir)
    except ModelDirectoryError as e:
        return str(e)
    return None


def _checked_directory(model_dir: str) -> str:
    """The absolute path of a local SavedModel directory, or one line saying what to give."""
    if "://" in model_dir:
        raise ModelDirectoryError(
            f"{model_dir!r}: inspect reads local directories only; copy it first "
            f"(gcloud storage cp -r {model_dir} .) and inspect the copy"
        )
    if not os.path.exists(model_dir):
        raise ModelDirectoryError(
            f"model directory {model_dir!r} does not exist; give the directory `adpredict train` "
            "exported (e.g. WORK_DIR/model)"
        )
    if not os.path.isdir(model_dir) or not any(
        os.path.isfile(os.path.join(model_dir, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
    ):
        raise ModelDirectoryError(
            f"{model_dir!r} is not a SavedModel (no saved_model.pb); give the directory that "
            "`adpredict train` exported (e.g. WORK_DIR/model)"
        )
    return os.path.abspath(model_dir)


def _read_description(model_dir: str):
    """(ModelDescription or None, why it could not be read or None).

    A model without the file (a TFX export) gets the description predict would derive from
    its signature; only then are TensorFlow's protocol buffers imported here.
    """
    path = os.path.join(model_dir, DESCRIPTION_PATH)
    if not os.path.isfile(path):
        from transforms.signature_reader import describe_model

        try:
            return describe_model(model_dir), None
        except ModelDirectoryError as e:
            return None, str(e)
    try:
        with open(path, encoding="utf-8") as f:
            return ModelDescription.from_json(f.read(), where=path), None
    except (ModelDirectoryError, OSError, UnicodeDecodeError) as e:
        return None, str(e)


def _read_json(model_dir: str, name: str):
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"unreadable": f"{name}: {e}"}


def directory_size(path: str) -> tuple[int, int]:
    """(bytes, files) under `path`: what BigQuery ML and Vertex AI would copy."""
    size = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            size += os.path.getsize(os.path.join(root, name))
            files += 1
    return size, files


def directory_sha256(path: str) -> str | None:
    """sha256 over the relative path and bytes of every file under `path` (None: no such dir)."""
    if not os.path.isdir(path):
        return None
    digest = hashlib.sha256()
    found = sorted(
        os.path.relpath(os.path.join(root, name), path) for root, _, names in os.walk(path) for name in names
    )
    for relative in found:
        with open(os.path.join(path, relative), "rb") as f:
            data = f.read()
        digest.update(f"{relative}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _signatures(probe: dict) -> dict:
    """name -> {method, inputs, outputs, composite_inputs}; TensorFlow's own `__...` ones left out."""
    found = {}
    for name, signature in sorted((probe.get("signatures") or {}).items()):
        if name.startswith("__"):
            continue
        found[name] = {**signature, "composite_inputs": (probe.get("composite_inputs") or {}).get(name, [])}
        error = (probe.get("composite_errors") or {}).get(name)
        if error:
            found[name]["composite_error"] = error
    return found


def missing_rule(field, in_tf_example: bool = False) -> str:
    """How an absent value reaches the model (transforms.model_contract.InputField)."""
    if field.required:
        return "required"
    if in_tf_example:
        default = "" if field.default is None else f" (the model's default {json.dumps(field.default)})"
        return f"optional: left out of the tf.Example{default}"
    marker = {
        "float": "NaN",
        "string": '""',
        "image": '"" (an all-zero image)',
        "string_list": "[] (no items)",
    }
    return f"optional: absent -> {marker.get(field.type, json.dumps(field.fill_value))}"


def _inputs(description, signature) -> list[dict]:
    specs = (signature or {}).get("inputs", {})
    if description is None:
        return [
            {
                "name": name,
                "type": None,
                **spec,
                "missing": "unknown (no adpredict description)",
                "range": None,
            }
            for name, spec in sorted(specs.items())
        ]
    if description.example_input:  # features of one tf.Example, not tensors of the signature
        specs = {
            f.name: {"dtype": _EXAMPLE_LISTS[f.type], "shape": None, "feature": True}
            for f in description.inputs
        }
    return [
        {
            "name": field.name,
            "type": field.type,
            "dtype": specs.get(field.name, {}).get("dtype"),
            "shape": specs.get(field.name, {}).get("shape"),
            **({"feature": True} if description.example_input else {}),
            "missing": missing_rule(field, bool(description.example_input)),
            "range": list(field.range) if field.range else None,
        }
        for field in description.inputs
    ]


_EXAMPLE_LISTS = {
    "int": "int64_list",
    "float": "float_list",
    "string": "bytes_list",
    "image": "bytes_list",
    "string_list": "bytes_list",
}


def _outputs(description, signature) -> list[dict]:
    specs = (signature or {}).get("outputs", {})
    names = [o.name for o in description.outputs] if description else []
    names += [name for name in sorted(specs) if name not in names]
    return [{"name": name, "dtype": specs.get(name, {}).get("dtype"), "shape": specs.get(name, {}).get("shape")}
            for name in names]  # fmt: skip


def _transform(model_dir: str, probe: dict) -> dict:
    """The tf.Transform graph attached to the model, identified by content.

    The export records no id of the transform_fn it attached, so this hashes what the
    model holds of it; names TensorFlow numbers per process are left out, so exporting the
    same transform again gives the same fingerprint.
    """
    graph = probe.get("transform_graph")
    assets = directory_sha256(os.path.join(model_dir, "assets"))
    if not graph:
        return {
            "fingerprint": None,
            "graph_sha256": None,
            "assets_sha256": assets,
            "covers": f"no {TRANSFORM_SIGNATURE} signature: nothing in the model identifies a tf.Transform graph"
            + ("; assets_sha256 covers the files in assets/" if assets else ""),
        }
    combined = hashlib.sha256(f"{graph['sha256']}:{assets or ''}".encode()).hexdigest()
    return {
        "fingerprint": combined,
        "graph_sha256": graph["sha256"],
        "assets_sha256": assets,
        "functions": graph["functions"],
        "ops": graph["nodes"],
        "covers": (
            f"the {graph['functions']} functions ({graph['nodes']} ops) the {TRANSFORM_SIGNATURE} signature "
            "runs: op types, attributes, constants (the analyzers' results: means, variances, bucket "
            "boundaries) and wiring, without TensorFlow's generated names; plus every file in assets/ "
            "(tf.Transform's vocabularies, the same files as TRANSFORM_DIR/transform_fn/assets)"
        ),
    }


def example_instance(description) -> dict:
    """One valid raw record for `serving_default`: what the TF-only check scores, and the
    Vertex AI instance shown (an image is base64 text, which this model decodes itself)."""
    values = {}
    for field in description.inputs:
        low, high = field.range if field.range else (None, None)
        if field.type == "int":
            values[field.name] = int((low + high) // 2) if field.range else 1
        elif field.type == "float":
            values[field.name] = float((low + high) / 2) if field.range else 1.0
        elif field.type == "string_list":
            values[field.name] = ["example"]
        elif field.type == "image":
            values[field.name] = base64.b64encode(tiny_png()).decode("ascii")
        else:
            values[field.name] = "example"
    return values


def tiny_png(width: int = 4, height: int = 4) -> bytes:
    """A valid grey RGB PNG, built with zlib alone (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\x80\x80\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
