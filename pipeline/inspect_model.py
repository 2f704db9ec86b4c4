"""`adpredict inspect MODEL_DIR`: what a model directory holds, and where else it would run.

    adpredict inspect demo_output/model            # readable report
    adpredict inspect demo_output/model --json     # the same content as one JSON object
    python -m pipeline.inspect_model demo_output/model

It lists the raw inputs (types, missing rules), outputs, every signature, the transform
fingerprint, the recorded batch size and training metrics, then checks portability, each
check PASS, WARN or FAIL with a one-line reason:

- TensorFlow only: a fresh `python -I -c` process that imports TensorFlow and nothing else
  (no tensorflow_transform, no adpredict) loads the SavedModel and calls `serving_default`
  on one example built from the description; ops plain TensorFlow lacks are named.
- BigQuery ML import (`CREATE MODEL ... MODEL_TYPE='TENSORFLOW'`), against its documented
  limits: at most 450 MB, about 250 MB in memory, core ops only, supported dtypes, no
  RaggedTensors.
- TF Serving / Vertex AI prebuilt containers: a `serving_default` signature whose inputs
  and outputs are batch-first, so the `{"instances": [...]}` row format can feed it.

This module imports neither Beam nor TensorFlow, so the command starts at once; all that
needs TensorFlow happens in that one child process. Exit codes: 0 when the directory was
inspected (whatever the checks say: read `checks` in --json), 2 when it is not a model
directory.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import inspect
import json
import logging
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
import zlib

from pipeline.entrypoint import EXIT_USAGE
from transforms.model_contract import (
    DESCRIPTION_PATH,
    RAW_SIGNATURE,
    TRANSFORM_SIGNATURE,
    ModelDescription,
    ModelDirectoryError,
)
from transforms.signature_reader import composite_inputs, signature_function

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
TRAINING_METRICS_FILE = os.path.join("assets.extra", "training_metrics.json")  # trainer.train
TUNING_FILE = os.path.join("assets.extra", "batch_size_tuning.json")  # pipeline.batch_tuning
PROBE_TIMEOUT_S = 300

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

_PROBE_MARK = "ADPREDICT_PROBE_RESULT "


# ---------------------------------------------------------------------------------------------
# The report.


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
        "size_bytes": size,
        "files": files,
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
        contract_check(description, description_error, signatures, probe),
        tf_only_check(probe, signatures),
        bigquery_ml_check(size, signatures, probe),
        serving_check(signatures, probe, description, example),
    ]
    return report


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


def model_fingerprint(model_dir: str) -> str:
    """pipeline.manifest.model_fingerprint without Beam: the `model.fingerprint` of run.json."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(f.read())
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


# ---------------------------------------------------------------------------------------------
# One example record, from the description.


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


# ---------------------------------------------------------------------------------------------
# The TensorFlow-only child process. Its program is the source of the `_probe_*` functions
# below, run by `python -I -c` (no working directory or PYTHONPATH on sys.path): they import
# TensorFlow and the standard library only, and report any of tf.Transform, tensorflow_text,
# Beam or adpredict's packages found imported, which would void the check.


def _probe_main():
    """In the child: reads the SavedModel, loads it and calls serving_default; prints JSON."""
    import json
    import sys
    import time

    model_dir, example = sys.argv[1], json.loads(sys.argv[2])
    result = {"loaded": False, "called": False}
    try:
        import tensorflow as tf

        result["tensorflow_version"] = tf.__version__
    except Exception as e:  # noqa: BLE001 - reported to the parent as text
        result["probe_error"] = f"importing TensorFlow failed: {type(e).__name__}: {str(e).strip()[:2000]}"
        print("ADPREDICT_PROBE_RESULT " + json.dumps(result), flush=True)
        return
    try:
        result.update(_probe_read(tf, model_dir))
    except Exception as e:  # noqa: BLE001 - reported to the parent as text
        result["read_error"] = f"{type(e).__name__}: {str(e).strip()[:2000]}"
        print("ADPREDICT_PROBE_RESULT " + json.dumps(result), flush=True)
        return
    signature_spec = result["signatures"].get("serving_default")
    try:
        started = time.perf_counter()
        loaded = tf.saved_model.load(model_dir)
        result["loaded"], result["load_seconds"] = True, round(time.perf_counter() - started, 3)
        if signature_spec is None:
            result["not_called"] = "the model has no serving_default signature"
        elif result["composite_inputs"].get("serving_default") and example is None:
            result["not_called"] = "a ragged or sparse input cannot be made up from the signature alone"
        else:
            inputs = _probe_example_tensors(tf, signature_spec["inputs"], example)
            started = time.perf_counter()
            outputs = loaded.signatures["serving_default"](**inputs)
            result["call_seconds"] = round(time.perf_counter() - started, 3)
            result["outputs"] = {
                name: _probe_plain(value.numpy().tolist()) for name, value in outputs.items()
            }
            result["called"] = True
    except Exception as e:  # noqa: BLE001 - reported to the parent as text
        result["error"] = f"{type(e).__name__}: {str(e).strip()[:2000]}"
    result["foreign_modules"] = sorted(
        name for name in ("tensorflow_transform", "tensorflow_text", "tfx_bsl", "apache_beam", "pipeline",
                          "transforms", "trainer") if name in sys.modules
    )  # fmt: skip
    print("ADPREDICT_PROBE_RESULT " + json.dumps(result), flush=True)


def _probe_read(tf, model_dir):
    """Signatures, ops plain TensorFlow lacks, versions, and the transform graph's digest."""
    import os

    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    saved_model = saved_model_pb2.SavedModel()
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        from google.protobuf import text_format

        with open(os.path.join(model_dir, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    if not saved_model.meta_graphs:
        raise ValueError("saved_model.pb holds no MetaGraph")
    meta_graph = next(
        (m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags), saved_model.meta_graphs[0]
    )
    library = meta_graph.graph_def.library
    functions = {f.signature.name for f in library.function}
    ops = {node.op for node in meta_graph.graph_def.node}
    ops |= {node.op for function in library.function for node in function.node_def}
    result = {
        "saved_with": meta_graph.meta_info_def.tensorflow_version or None,
        "graph_producer": meta_graph.graph_def.versions.producer,
        "ops_used": len(ops - functions),
        "ops_missing": sorted(op for op in ops - functions if op_def_registry.get(op) is None),
        "signatures": {},
        "composite_inputs": {},
        "transform_graph": None,
        "tensorflow_fingerprint": None,
    }
    for name, signature in meta_graph.signature_def.items():
        result["signatures"][name] = {
            "method": signature.method_name,
            "inputs": {key: _probe_tensor_info(tf, info) for key, info in signature.inputs.items()},
            "outputs": {key: _probe_tensor_info(tf, info) for key, info in signature.outputs.items()},
        }
        try:
            result["composite_inputs"][name] = composite_inputs(tf, meta_graph, name, signature.inputs)
        except Exception as e:  # noqa: BLE001 - private TensorFlow API; say so rather than fail
            result["composite_inputs"][name] = []
            result.setdefault("composite_errors", {})[name] = f"{type(e).__name__}: {str(e)[:300]}"
    root = signature_function(meta_graph, "transform_features")
    if root is not None:
        result["transform_graph"] = _probe_graph_digest(library, root)
    try:
        result["tensorflow_fingerprint"] = tf.saved_model.experimental.read_fingerprint(
            model_dir
        ).singleprint()
    except Exception:  # noqa: BLE001 - no fingerprint.pb (TensorFlow before 2.12)
        pass
    return result


def _probe_tensor_info(tf, info):
    encoding = info.WhichOneof("encoding")
    shape = (
        None
        if info.tensor_shape.unknown_rank
        else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    )
    spec = {
        "dtype": tf.dtypes.as_dtype(info.dtype).name if info.dtype else None,
        "shape": shape,
        "encoding": {"name": "dense", "coo_sparse": "sparse", "composite_tensor": "composite"}.get(
            encoding, encoding
        ),
    }
    if encoding == "composite_tensor":
        spec["composite"] = info.composite_tensor.type_spec.type_spec_class_name
    return spec


def _probe_graph_digest(library, root):
    """sha256 of function `root` and all it calls, by content, not by TensorFlow's names.

    A node's digest is its op, attributes (constants included; `_`-prefixed ones, shared
    names and containers left out) and its inputs' digests, and a function's is its
    argument and result types and its results' digests (a Merkle DAG), so the numbers
    TensorFlow puts in function and node names per process do not count.
    """
    import hashlib
    import json

    functions = {f.signature.name: f for f in library.function}
    digests = {}

    def function_digest(name, active):
        if name in digests:
            return digests[name]
        if name in active:
            return "recursive"
        function = functions[name]
        arguments = {a.name: index for index, a in enumerate(function.signature.input_arg)}
        nodes = {node.name: node for node in function.node_def}
        done = {}

        def source(text):
            control = text.startswith("^")
            head, _, rest = text.lstrip("^").partition(":")
            if head in nodes:
                base = done.get(head, "cycle")
            else:
                base = f"arg{arguments.get(head, head)}"
            return ("^" if control else "") + base + (":" + rest if rest else "")

        for start in nodes:
            stack, visiting = [(start, False)], set()
            while stack:
                node_name, ready = stack.pop()
                if node_name in done:
                    continue
                node = nodes[node_name]
                if not ready:
                    if node_name in visiting:
                        continue
                    visiting.add(node_name)
                    stack.append((node_name, True))
                    for text in node.input:
                        head = text.lstrip("^").partition(":")[0]
                        if head in nodes and head not in done and head not in visiting:
                            stack.append((head, False))
                    continue
                digest = hashlib.sha256(node.op.encode())
                if node.op in functions:
                    digest.update(function_digest(node.op, active | {name}).encode())
                for key in sorted(node.attr):
                    if key.startswith("_") or key in ("shared_name", "container"):
                        continue
                    value = type(node.attr[key])()
                    value.CopyFrom(node.attr[key])
                    called = ([value.func] if value.HasField("func") else []) + (
                        list(value.list.func) if value.HasField("list") else []
                    )
                    for function_ref in called:
                        if function_ref.name in functions:
                            function_ref.name = function_digest(function_ref.name, active | {name})
                    digest.update(key.encode() + b"\0" + value.SerializeToString(deterministic=True))
                inputs = [source(text) for text in node.input]
                data = [i for i in inputs if not i.startswith("^")]
                digest.update(json.dumps([data, sorted(set(inputs) - set(data))]).encode())
                done[node_name] = digest.hexdigest()
        digest = hashlib.sha256(
            json.dumps(
                [
                    [a.type for a in function.signature.input_arg],
                    [a.type for a in function.signature.output_arg],
                ]
            ).encode()
        )
        for output in function.signature.output_arg:
            digest.update(source(function.ret[output.name]).encode())
        for node_name in sorted(function.control_ret.values()):
            digest.update(done.get(node_name, "").encode())
        digests[name] = digest.hexdigest()
        return digests[name]

    result = function_digest(root, frozenset())
    return {
        "sha256": result,
        "functions": len(digests),
        "nodes": sum(len(functions[n].node_def) for n in digests),
    }


def _probe_example_tensors(tf, specs, example):
    """Batch-of-one tensors for a signature: the example's values, else zeros and "";
    or one serialized tf.Example when the example says which input takes it."""
    if example is not None and "__tf_example__" in example:
        feature = {}
        for name, (kind, values) in example["features"].items():
            if kind == "bytes_list":
                values = [v.encode() for v in values]
            lists = {
                "int64_list": tf.train.Int64List,
                "float_list": tf.train.FloatList,
                "bytes_list": tf.train.BytesList,
            }
            feature[name] = tf.train.Feature(**{kind: lists[kind](value=values)})
        data = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        return {example["__tf_example__"]: tf.constant([data])}
    tensors = {}
    for name, spec in specs.items():
        dtype = tf.dtypes.as_dtype(spec["dtype"])
        shape = spec["shape"]
        if example is not None and name in example:
            value = example[name]
            tensors[name] = tf.constant(value if shape == [] else [value], dtype)
        else:
            dims = [1] if shape is None else [1 if d is None else d for d in shape]
            tensors[name] = tf.fill(dims, "") if dtype == tf.string else tf.zeros(dims, dtype)
    return tensors


def _probe_plain(value):
    if isinstance(value, list):
        return [_probe_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


_PROBE_FUNCTIONS = (
    _probe_main,
    _probe_read,
    _probe_tensor_info,
    signature_function,
    composite_inputs,
    _probe_graph_digest,
    _probe_example_tensors,
    _probe_plain,
)


def probe_program() -> str:
    """The child's whole program: the probe functions' source and a call."""
    sources = [textwrap.dedent(inspect.getsource(function)) for function in _PROBE_FUNCTIONS]
    return "\n\n".join(sources) + "\n\n_probe_main()\n"


def run_tf_only_probe(model_dir: str, example: dict | None, timeout: float, show_log: bool = False) -> dict:
    """Runs the probe in a fresh `python -I -c` process; its findings, or why it failed."""
    env = dict(os.environ)
    if show_log:
        env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, "-I", "-c", probe_program(), model_dir, json.dumps(example)]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"probe_error": f"the TensorFlow-only process did not finish within {timeout:g} s (--timeout)"}
    if show_log and done.stderr:
        sys.stderr.write(done.stderr)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_PROBE_MARK):
            result = json.loads(line[len(_PROBE_MARK) :])
            result["probe_seconds"] = round(time.monotonic() - started, 1)
            return result
    last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
    return {"probe_error": f"the TensorFlow-only process exited {done.returncode}: {last[0][:500]}"}


# ---------------------------------------------------------------------------------------------
# Checks: each {"check", "title", "status", "reason", "notes", ...numbers}.


def _check(
    check: str, title: str, problems: list[str], concerns: list[str], passed: str, notes=(), **numbers
):
    status = FAIL if problems else WARN if concerns else PASS
    reason = (problems or concerns or [passed])[0]
    return {"check": check, "title": title, "status": status, "reason": reason,
            "notes": [*problems, *concerns, *notes], **numbers}  # fmt: skip


def _tensor_text(spec: dict) -> str:
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
                f"input {field.name!r} is {field.type} in the description but {_tensor_text(spec)} in {RAW_SIGNATURE}"
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
    scores = ", ".join(f"{name} {_number(value)}" for name, value in numbers["prediction"].items())
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
        f"size {_megabytes(size)} ({size:,} bytes) of the {_megabytes(BQML_MAX_BYTES)} BigQuery ML accepts"
    )
    if size > BQML_MAX_BYTES:
        problems.append(f"{size_note}: too large to import")
    elif size > BQML_MEMORY_BYTES:
        concerns.append(
            f"{size_note}; over the ~{_megabytes(BQML_MEMORY_BYTES)} it loads into memory for predictions"
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
                        f"input {name} is dense {_tensor_text(spec)}: pad its ARRAY column to one length per row; "
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


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _megabytes(size: int) -> str:
    """Decimal megabytes, as BigQuery's limits are written."""
    return f"{size / 1e6:,.0f} MB" if size >= 10e6 else f"{size / 1e6:.2f} MB"


def _shortened(instance: dict) -> dict:
    return {k: (v[:16] + "..." if isinstance(v, str) and len(v) > 24 else v) for k, v in instance.items()}


# ---------------------------------------------------------------------------------------------
# Text.


def format_report(report: dict) -> str:
    """The readable report: the model first, then one line per portability check."""
    lines = [f"model directory  {report['model_dir']}"]
    tf_info = report["tensorflow"]
    lines.append(
        f"  SavedModel saved with TensorFlow {tf_info['saved_with'] or '?'} (GraphDef {tf_info['graph_producer']}), "
        f"{report['files']} files, {_megabytes(report['size_bytes'])}"
    )
    if report["adpredict_description"]:
        key = report["key"]
        key_text = (
            f"key field {key['field']} ({key['type']})" if key["field"] else "key: the record's <file>:<line>"
        )
        origin = report["adpredict_description"]
        source = (
            "" if origin.endswith(DESCRIPTION_PATH) else f" read from the signature (no {DESCRIPTION_PATH})"
        )
        lines.append(
            f"  adpredict description{source}: schema {report['schema'] or '-'}, {key_text}, label {report['label']}"
        )
    else:
        lines.append(f"  no adpredict description ({DESCRIPTION_PATH})" + (
            f": {report['description_error']}" if report["description_error"] else ""))  # fmt: skip
    lines += [
        "",
        f"raw inputs (features of each tf.Example in {report['example_input']})"
        if report.get("example_input")
        else f"raw inputs ({RAW_SIGNATURE})",
    ]
    rows = [(i["name"], i["type"] or "-", _tensor_text(i) if i.get("dtype") else "(not in signature)",
             i["missing"] + (f", range {i['range']}" if i["range"] else "")) for i in report["inputs"]]  # fmt: skip
    lines += _table(rows)
    lines += ["", "outputs"]
    lines += _table(
        [(o["name"], _tensor_text(o) if o.get("dtype") else "(not in signature)") for o in report["outputs"]]
    )
    lines += ["", "signatures"]
    for name, signature in report["signatures"].items():
        lines.append(f"  {name} ({signature['method']})")
        for direction, label in (("inputs", "in: "), ("outputs", "out:")):
            specs = ", ".join(f"{k} {_tensor_text(v)}" for k, v in sorted(signature[direction].items()))
            lines += _wrapped(f"{label} {specs}", 4, 9)
        for composite in signature["composite_inputs"]:
            lines.append(
                f"    {composite['name']}: {composite['kind']} {composite.get('dtype')}, fed as {composite['fed_as']}"
            )
    transform = report["transform"]
    lines += ["", f"transform fingerprint  {transform['fingerprint'] or '(none)'}"]
    if transform["fingerprint"]:
        lines.append(
            f"  graph {transform['graph_sha256'][:16]}..., assets/ {str(transform['assets_sha256'])[:16]}..."
        )
    lines += _wrapped("covers: " + transform["covers"], 2, 4)
    batch = report["batch_size"]
    tuning = batch["tuning"] or {}
    timed = tuning.get("records_per_second") or {}
    best = (
        f" (timed at export: {int(timed[str(batch['recorded'])]):,} records/s)"
        if str(batch["recorded"]) in timed
        else ""
    )
    lines += [
        "",
        f"batch size  {batch['recorded'] if batch['recorded'] is not None else '(not recorded)'}{best}",
    ]
    metrics = ", ".join(f"{k} {_number(v)}" for k, v in (report["training_metrics"] or {}).items())
    lines += _wrapped(f"training metrics  {metrics or '(none recorded)'}", 0, 4)
    lines.append(f"model fingerprint  {report['fingerprints']['adpredict']} (run.json model.fingerprint)")
    lines += ["", "portability"]
    for check in report["checks"]:
        lines += _wrapped(f"{check['status']:<5} {check['title']:<24}{check['reason']}", 2, 32)
        for note in check["notes"]:
            if note != check["reason"]:
                lines += _wrapped("- " + note, 32, 34)
    return "\n".join(lines)


def _wrapped(text: str, indent: int, hanging: int, width: int = 100) -> list[str]:
    """Wrapped at spaces only: paths, URLs and JSON stay whole."""
    return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * hanging,
                         break_long_words=False, break_on_hyphens=False)  # fmt: skip


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))] if rows else []
    return [
        "  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adpredict inspect",
        description="Describe a model directory and check whether it is portable "
        "(TensorFlow alone, BigQuery ML import, TF Serving / Vertex AI).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="The directory `adpredict train` exported.")
    parser.add_argument("--json", action="store_true", help="Print the report as one JSON object.")
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT_S,
        help="Seconds the TensorFlow-only load and call may take.",
    )
    parser.add_argument("--verbose", action="store_true", help="Show the TensorFlow-only process's own log.")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [flag for action in parser._actions for flag in action.option_strings]
        close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; flags: {', '.join(flags)}"
        print(f"adpredict inspect: error: unknown argument {unknown[0]!r}{hint}", file=sys.stderr)
        return EXIT_USAGE
    # `adpredict --verbose inspect` takes the flag out and sets INFO logging instead.
    show_log = args.verbose or logging.getLogger().isEnabledFor(logging.INFO)
    try:
        report = inspect_model(args.model_dir, timeout=args.timeout, show_probe_log=show_log)
    except ModelDirectoryError as e:  # one line naming the path and what to give
        print(f"adpredict: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
