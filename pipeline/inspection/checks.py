"""The portability checks of `adpredict inspect`: adpredict predict, TensorFlow alone, BigQuery
ML import, TF Serving / Vertex AI. Each is {"check", "title", "status", "reason", "notes",
...numbers}, PASS, WARN or FAIL with a one-line reason, from the probe's findings."""

from __future__ import annotations

import json
import re

from transforms.model_contract import DESCRIPTION_PATH, RAW_SIGNATURE

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# BigQuery ML, "The CREATE MODEL statement for importing TensorFlow models", Limitations and
# "Supported data types for input and output columns".
BQML_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-tensorflow"
BQML_MAX_BYTES = 450_000_000  # "Models are limited to 450 MB in size" (MB read as 10^6 bytes)
BQML_MEMORY_BYTES = 250_000_000  # "a memory limit (typically 250 MB)" when loaded for predictions
BQML_MIN_GRAPH_PRODUCER = 20  # "GraphDef earlier than version 20 aren't supported"
BQML_DTYPES = {
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "bfloat16", "bool", "string",
}  # fmt: skip
BIGQUERY_COLUMN = r"[A-Za-z_][A-Za-z0-9_]{0,299}"  # ML.PREDICT matches input columns by name
TENSOR_NAME = r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*"  # TensorFlow's rule for names in a graph


def _check(
    check: str, title: str, problems: list[str], concerns: list[str], passed: str, notes=(), **numbers
):
    status = FAIL if problems else WARN if concerns else PASS
    reason = (problems or concerns or [passed])[0]
    return {"check": check, "title": title, "status": status, "reason": reason,
            "notes": [*problems, *concerns, *notes], **numbers}  # fmt: skip


def tensor_text(spec: dict) -> str:
    if spec.get("feature"):
        return f"tf.Example {spec['dtype']}"
    shape = "unknown rank" if spec.get("shape") is None else json.dumps(spec["shape"]).replace("null", "None")
    kind = "" if spec.get("encoding", "dense") == "dense" else f" {spec['encoding']}"
    return f"{spec.get('dtype') or spec.get('composite') or '?'}{kind} {shape}"


_DTYPE_OF_TYPE = {
    "int": "int64",
    "float": "float32",
    "string": "string",
    "image": "string",
    "string_list": "string",
}


def contract_check(description, description_error, signatures: dict, probe: dict) -> dict:
    """Whether `adpredict predict` can score the model: a description that fits the signature."""
    title = "adpredict predict"
    if description_error:
        return _check("contract", title, [description_error], [], "")
    if description is None:
        return _check("contract", title, [], [
            f"no {DESCRIPTION_PATH}: predict cannot score it until that file describes its raw inputs"
        ], "")  # fmt: skip
    signature = signatures.get(description.signature)
    if signature is None:
        return _check("contract", title, [_no_signature(signatures, probe)], [], "")
    if description.example_input:
        spec = signature["inputs"].get(description.example_input)
        if list(signature["inputs"]) != [description.example_input] or spec["dtype"] != "string":
            return _check("contract", title, [
                f"example_input {description.example_input!r} is not the only input of {description.signature} "
                "as a string vector"
            ], [], "")  # fmt: skip
        return _check("contract", title, [], [], (
            f"{description.signature} takes serialized tf.Examples; predict encodes each record's "
            f"{len(description.inputs)} fields as one ({description.origin})"
        ))  # fmt: skip
    problems = []
    for field in description.inputs:
        spec = signature["inputs"].get(field.name)
        if spec is None:
            problems.append(f"input {field.name!r} of the description is not an input of {RAW_SIGNATURE}")
            continue
        rank = 2 if field.type == "string_list" else 1
        if spec["dtype"] != _DTYPE_OF_TYPE.get(field.type) or (
            spec["shape"] is not None and len(spec["shape"]) != rank
        ):
            problems.append(
                f"input {field.name!r} is {field.type} in the description but {tensor_text(spec)} in {RAW_SIGNATURE}"
            )
    extra = sorted(set(signature["inputs"]) - {f.name for f in description.inputs})
    if extra:
        problems.append(f"{RAW_SIGNATURE} also needs {', '.join(extra)}, which the description does not list")
    missing = [o.name for o in description.outputs if o.name not in signature["outputs"]]
    if missing:
        problems.append(f"outputs {', '.join(missing)} of the description are not outputs of {RAW_SIGNATURE}")
    return _check("contract", title, problems, [], f"the description matches {RAW_SIGNATURE}")


def tf_only_check(probe: dict, signatures: dict) -> dict:
    """Loads and calls in a process with TensorFlow alone (no tf.Transform, no adpredict)."""
    title = "TensorFlow only"
    numbers = {
        "load_seconds": probe.get("load_seconds"),
        "call_seconds": probe.get("call_seconds"),
        "prediction": {name: _first(value) for name, value in (probe.get("outputs") or {}).items()},
        "ops_missing": probe.get("ops_missing", []),
        "probe_seconds": probe.get("probe_seconds"),
    }
    problems, concerns = [], []
    if probe.get("probe_error"):
        problems.append(probe["probe_error"])
    if probe.get("foreign_modules"):
        concerns.append(
            f"the probe imported {', '.join(probe['foreign_modules'])} too, so it did not test TensorFlow alone"
        )
    if probe.get("ops_missing"):
        problems.append(
            f"ops plain TensorFlow {probe.get('tensorflow_version')} does not know: {', '.join(probe['ops_missing'])} "
            "(registered by another library, e.g. tensorflow_text or a custom op)"
        )
    if probe.get("error"):
        where = "load" if not probe.get("loaded") else f"call of {RAW_SIGNATURE}"
        problems.append(f"{where} failed: {_one_line(probe['error'])}")
    elif probe.get("not_called") and not problems:
        concerns.append(f"loaded in {probe.get('load_seconds')} s but not called: {probe['not_called']}")
    scores = ", ".join(f"{name} {number(value)}" for name, value in numbers["prediction"].items())
    passed = (
        f"a process that imported TensorFlow {probe.get('tensorflow_version')} alone loaded it in "
        f"{probe.get('load_seconds')} s and scored the example: {scores}"
    )
    return _check("tensorflow_only", title, problems, concerns, passed, **numbers)


def bigquery_ml_check(size: int, signatures: dict, probe: dict) -> dict:
    """BigQuery ML's documented limits for imported TensorFlow models, on serving_default."""
    title = "BigQuery ML import"
    problems, concerns = [], []
    size_note = (
        f"size {megabytes(size)} ({size:,} bytes) of the {megabytes(BQML_MAX_BYTES)} BigQuery ML accepts"
    )
    if size > BQML_MAX_BYTES:
        problems.append(f"{size_note}: too large to import")
    elif size > BQML_MEMORY_BYTES:
        concerns.append(
            f"{size_note}; over the ~{megabytes(BQML_MEMORY_BYTES)} it loads into memory for predictions"
        )
    producer = probe.get("graph_producer")
    if producer is not None and producer < BQML_MIN_GRAPH_PRODUCER:
        problems.append(f"GraphDef version {producer}: BigQuery ML needs {BQML_MIN_GRAPH_PRODUCER} or later")
    saved_with = probe.get("saved_with") or ""
    if any(tag in saved_with for tag in ("dev", "rc", "nightly")):
        concerns.append(f"saved with TensorFlow {saved_with}: BigQuery ML refuses unreleased versions")
    if probe.get("ops_missing"):
        problems.append(f"ops outside core TensorFlow: {', '.join(probe['ops_missing'])}")
    signature = signatures.get(RAW_SIGNATURE)
    if signature is None:
        problems.append(_no_signature(signatures, probe))
    else:
        if signature.get("composite_error"):
            concerns.append(f"could not tell whether inputs are ragged: {signature['composite_error']}")
        for composite in signature["composite_inputs"]:
            problems.append(
                f"input {composite['name']} is a {composite['kind']} (fed as {', '.join(composite['fed_as']) or '?'}): "
                + (
                    "RaggedTensors aren't supported"
                    if composite["kind"] == "RaggedTensor"
                    else "not a documented input type"
                )
            )
        for direction in ("inputs", "outputs"):
            for name, spec in sorted(signature[direction].items()):
                what = f"{direction[:-1]} {name}"
                if spec["encoding"] == "composite":
                    problems.append(f"{what} is a {spec.get('composite')}: RaggedTensors aren't supported")
                elif spec["dtype"] not in BQML_DTYPES:
                    problems.append(f"{what} is {spec['dtype']}, a type BigQuery ML does not support")
                if not _matches(BIGQUERY_COLUMN, name):
                    concerns.append(
                        f"{what}: {name!r} is not a BigQuery column name, and columns are matched by name"
                    )
                if spec["shape"] is None:
                    concerns.append(f"{what} has unknown rank: BigQuery cannot tell a value from an ARRAY")
                elif direction == "inputs" and spec["encoding"] == "dense" and None in spec["shape"][1:]:
                    concerns.append(
                        f"input {name} is dense {tensor_text(spec)}: pad its ARRAY column to one length per row; "
                        "the docs promise arrays of any length only for SparseTensor inputs"
                    )
    dtypes = sorted(
        {s["dtype"] or "?" for d in ("inputs", "outputs") for s in (signature or {}).get(d, {}).values()}
    )
    passed = f"{size_note}; {RAW_SIGNATURE} types {', '.join(dtypes)} are supported; core ops only"
    return _check("bigquery_ml", title, problems, concerns, passed, notes=[size_note, f"limits: {BQML_DOC}"],
                  size_bytes=size, limit_bytes=BQML_MAX_BYTES)  # fmt: skip


def serving_check(signatures: dict, probe: dict, description, example: dict | None) -> dict:
    """TF Serving (and Vertex AI's prebuilt TensorFlow containers, which run it): a
    `serving_default` with batch-first inputs and outputs, fed as `{"instances": [...]}`."""
    title = "TF Serving / Vertex AI"
    signature = signatures.get(RAW_SIGNATURE)
    if signature is None:
        return _check("serving", title, [_no_signature(signatures, probe)], [], "")
    problems, concerns, notes = [], [], []
    if signature["method"] not in ("tensorflow/serving/predict", ""):
        concerns.append(
            f"{RAW_SIGNATURE} is a {signature['method']} signature: the predict API wants tensorflow/serving/predict"
        )
    for composite in signature["composite_inputs"]:
        problems.append(
            f"input {composite['name']} is a {composite['kind']} flattened into {', '.join(composite['fed_as']) or '?'}, "
            "whose first dimensions differ: the instances format cannot feed it"
        )
    for direction in ("inputs", "outputs"):
        for name, spec in sorted(signature[direction].items()):
            what = f"{direction[:-1]} {name}"
            shape = spec["shape"]
            if not _matches(TENSOR_NAME, name):
                concerns.append(f"{what}: {name!r} is not a valid TensorFlow tensor name")
            if shape is None:
                concerns.append(f"{what} has unknown rank: cannot tell whether it is batch-first")
            elif not shape:
                (problems if direction == "inputs" else concerns).append(
                    f"{what} is a scalar, no batch dimension: the instances format stacks one value per "
                    "instance along the first dimension"
                    + ("" if direction == "inputs" else "; only the columnar format returns it")
                )
            elif shape[0] is not None:
                concerns.append(
                    f"{what} has a fixed first dimension {shape[0]}: requests must hold exactly that many instances"
                )
    if example is not None and description.example_input:
        notes.append(
            "request: "
            + json.dumps({"instances": [{"b64": "<one serialized tf.Example, base64>"}]})
            + f" ({description.example_input} takes serialized tf.Examples)"
        )
    elif example is not None:
        lists = [f.name for f in description.inputs if f.type == "string_list"]
        images = [f.name for f in description.inputs if f.type == "image"]
        notes.append("request: " + json.dumps({"instances": [_shortened(example)]}))
        if images:
            notes.append(
                f'{", ".join(images)}: send base64 text as a plain JSON string, not {{"b64": ...}}, which TF Serving '
                "decodes to raw bytes before the model (which decodes base64 itself) sees them"
            )
        if lists:
            notes.append(
                f'{", ".join(lists)}: all instances of one request need lists of one length (pad with "")'
            )
        floats = [f.name for f in description.inputs if f.type == "float" and not f.required]
        if floats:
            notes.append(
                f"{', '.join(floats)}: a missing value is NaN, which TF Serving's REST API takes as a bare NaN token"
            )
    else:
        binary = [
            name
            for name, spec in signature["inputs"].items()
            if spec["dtype"] == "string" and name.endswith("_bytes")
        ]
        if binary:
            notes.append(f'{", ".join(binary)}: binary strings go as {{"b64": "<base64>"}}')
    passed = f'{RAW_SIGNATURE} takes and returns batch-first tensors: fits {{"instances": [...]}} requests'
    return _check("serving", title, problems, concerns, passed, notes=notes)


def _no_signature(signatures: dict, probe: dict) -> str:
    if probe.get("probe_error"):
        return f"signatures unknown: {probe['probe_error']}"
    return f"no {RAW_SIGNATURE} signature (signatures: {', '.join(signatures) or 'none'})"


def _matches(pattern: str, name: str) -> bool:
    return re.fullmatch(pattern, name) is not None


def _first(value):
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _one_line(text: str, limit: int = 400) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    found = " / ".join(lines[:3])
    return found if len(found) <= limit else found[: limit - 3] + "..."


def number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def megabytes(size: int) -> str:
    """Decimal megabytes, as BigQuery's limits are written."""
    return f"{size / 1e6:,.0f} MB" if size >= 10e6 else f"{size / 1e6:.2f} MB"


def _shortened(instance: dict) -> dict:
    return {k: (v[:16] + "..." if isinstance(v, str) and len(v) > 24 else v) for k, v in instance.items()}
