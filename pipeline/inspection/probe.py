"""The TensorFlow-only child process of `adpredict inspect`.

Its program is the source of the `_probe_*` functions below (and two readers of
`transforms.signature_reader`), run by `python -I -c` (no working directory or PYTHONPATH on
sys.path): they import TensorFlow and the standard library only, and report any of
tf.Transform, tensorflow_text, Beam or adpredict's packages found imported, which would void
the check. This module itself imports neither.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time

from transforms.signature_reader import composite_inputs, signature_function

PROBE_TIMEOUT_S = 300
_PROBE_MARK = "ADPREDICT_PROBE_RESULT "


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
