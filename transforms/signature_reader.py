"""What a SavedModel's serving signature takes and returns, read from `saved_model.pb`.

`predict` needs a description of the model's raw inputs. adpredict's own exports carry one
(`assets.extra/adpredict_model.json`); a model exported elsewhere (TFX, a tf.Transform
example, hand-written Keras) does not, so it is derived here from the signature itself:

- a signature taking one batch of serialized `tf.Example`s (TFX's `serving_default`) is
  described by the `ParseExampleV2` op inside it: each dense feature is a required field
  (or optional, when the op has a default for it), each VarLen/Ragged string feature a
  string list, each VarLen/Ragged number an optional number;
- a signature taking named tensors has one field per tensor (int64/int32 -> int,
  float -> float, string [N] -> string, string [N, M] -> string_list);
- the outputs are the signature's, with their dtype and per-record shape.

A schema file given with `predict --input_schema` replaces the derived inputs (key, types,
missing rules) and is checked against the signature. A description file, derived or
written by hand, is checked against the signature before anything runs, so a mismatch is
one line naming the input, not a TensorFlow traceback from a worker.

Only the graph's protocol buffer is read: no variables are loaded, so this costs
milliseconds even for a model of gigabytes.
"""

from __future__ import annotations

import dataclasses

from transforms.model_contract import (
    DESCRIPTION_PATH,
    RAW_SIGNATURE,
    InputField,
    ModelDescription,
    ModelDirectoryError,
    OutputField,
    description_from_schema,
    model_files,
)

# Signature input dtypes -> record field types.
_INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")
_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
# tf.Example value lists -> record field types (int64_list, float_list, bytes_list).
_EXAMPLE_TYPES = {"int64": "int", "float32": "float", "string": "string"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: str  # TensorFlow's name: float32, int64, string, ...
    shape: tuple[int | None, ...] | None  # None: unknown rank
    composite: bool = False  # ragged or sparse (TF2 writes such an argument as components)


@dataclasses.dataclass(frozen=True)
class ExampleFeature:
    """One feature a `ParseExampleV2` op reads from each tf.Example."""

    name: str
    dtype: str  # int64 | float32 | string
    kind: str  # dense | sparse | ragged
    shape: tuple[int, ...] = ()  # dense only
    default: object = None  # dense only: None = required


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    example_features: tuple[ExampleFeature, ...] | None  # None: no tf.Example parsing found
    # Why the tf.Example parsing inside could not be read (then --input_schema must tell).
    parse_problem: str | None = None

    @property
    def example_input(self) -> str | None:
        """The name of the signature's one input when it is a batch of serialized strings."""
        if len(self.inputs) == 1:
            ((name, info),) = self.inputs.items()
            if info.dtype == "string" and info.shape is not None and len(info.shape) == 1:
                return name
        return None


def describe_model(model_dir: str, schema_path: str | None = None) -> ModelDescription:
    """The description `predict` scores `model_dir` with, checked against its signature.

    Its own `adpredict_model.json` if it has one, else one derived from the signature;
    with `schema_path`, the schema file's fields as the inputs.
    """
    gfile = model_files()
    has_file = gfile.exists(gfile.join(model_dir, DESCRIPTION_PATH))
    if has_file:
        description = ModelDescription.read(model_dir)
    else:
        ModelDescription.check_saved_model(model_dir)
        description = None
    signature = read_signature(model_dir, description.signature if description else RAW_SIGNATURE)
    if schema_path:
        description = _with_schema(description, schema_path, signature)
    elif description is None:
        description = _derived(signature, model_dir)
    check_description(description, signature)
    return description


def read_signature(model_dir: str, name: str = RAW_SIGNATURE) -> SignatureInfo:
    """The inputs and outputs of signature `name`, and the tf.Example features it parses."""
    meta_graph = _serving_meta_graph(model_dir)
    if name not in meta_graph.signature_def:
        known = ", ".join(sorted(n for n in meta_graph.signature_def if not n.startswith("__"))) or "none"
        raise ModelDirectoryError(
            f'{model_dir!r} has no signature {name!r} (it has: {known}); set "signature" in '
            f"{DESCRIPTION_PATH} to the one that scores records"
        )
    signature = meta_graph.signature_def[name]
    inputs = {key: _tensor_info(info) for key, info in signature.inputs.items()}
    outputs = {key: _tensor_info(info) for key, info in signature.outputs.items()}
    features, problem = None, None
    if len(inputs) == 1 and next(iter(inputs.values())).dtype == "string":
        try:
            features = _parsed_features(meta_graph, name, model_dir)
        except _UnreadableParsing as e:
            problem = str(e)
    else:
        import tensorflow as tf

        try:
            composites = composite_inputs(tf, meta_graph, name, signature.inputs)
        except Exception:  # noqa: BLE001 - private TensorFlow API; then the call itself tells
            composites = []
        fed_as = {component for c in composites for component in c["fed_as"]}
        inputs = {k: dataclasses.replace(v, composite=True) if k in fed_as else v for k, v in inputs.items()}
    return SignatureInfo(name, inputs, outputs, features, problem)


def check_description(description: ModelDescription, signature: SignatureInfo) -> None:
    """Raises ModelDirectoryError naming the first input or output that does not fit."""
    where = description.origin
    if "signature" not in where:
        where += f" (signature {signature.name!r})"
    if description.example_input:
        if description.example_input != signature.example_input:
            raise ModelDirectoryError(
                f"{where}: example_input {description.example_input!r} is not the signature's only input "
                f"(a batch of serialized tf.Examples); its inputs are {_listed(signature.inputs)}"
            )
        if signature.example_features is not None:
            fields = {f.name: f for f in description.inputs}
            for feature in signature.example_features:
                field = fields.get(feature.name)
                required = feature.kind == "dense" and feature.default is None
                if field is None and required:
                    raise ModelDirectoryError(
                        f"{where}: the model requires tf.Example feature {feature.name!r} "
                        f"({feature.dtype}), which the inputs do not list; add it"
                    )
                if field is not None and not _example_type_fits(field, feature):
                    raise ModelDirectoryError(
                        f"{where}: input {feature.name!r} is declared {field.type}, but the model parses "
                        f"it as {feature.kind} {feature.dtype}; declare it {_field_type_for(feature)}"
                    )
    else:
        described = {f.name for f in description.inputs}
        for name, info in signature.inputs.items():
            if name not in described:
                raise ModelDirectoryError(
                    f"{where}: the signature takes input {name!r} ({info.dtype}), which the description "
                    "does not list; add it to inputs"
                )
        for field in description.inputs:
            info = signature.inputs.get(field.name)
            if info is None:
                raise ModelDirectoryError(
                    f"{where}: input {field.name!r} is not an input of the signature, which takes "
                    f"{_listed(signature.inputs)}; rename it or remove it"
                )
            problem = _tensor_problem(field, info)
            if problem:
                raise ModelDirectoryError(f"{where}: input {field.name!r}: {problem}")
    for output in description.outputs:
        if output.name not in signature.outputs:
            raise ModelDirectoryError(
                f"{where}: output {output.name!r} is not an output of the signature, which returns "
                f"{_listed(signature.outputs)}"
            )


def _derived(signature: SignatureInfo, model_dir: str) -> ModelDescription:
    """A description read off the signature: what a model exported without adpredict gets."""
    origin = f"{model_dir} signature {signature.name!r} (no {DESCRIPTION_PATH})"
    if signature.parse_problem:
        raise ModelDirectoryError(signature.parse_problem)
    if signature.example_features is not None:
        inputs = tuple(_field_from_feature(f, origin) for f in signature.example_features)
    else:
        inputs = tuple(
            _field_from_tensor(name, info, origin) for name, info in sorted(signature.inputs.items())
        )
    return ModelDescription(
        inputs=inputs,
        outputs=outputs_of(signature),
        key_field=None,
        signature=signature.name,
        example_input=signature.example_input if signature.example_features is not None else None,
        origin=origin,
    )


def _with_schema(
    base: ModelDescription | None, schema_path: str, signature: SignatureInfo
) -> ModelDescription:
    """The schema file's fields as the inputs; outputs and batch size as before."""
    from transforms.schema import load_schema

    schema = load_schema(schema_path, for_scoring=True)
    from_schema = description_from_schema(schema, batch_size=base.batch_size if base else 256)
    return dataclasses.replace(
        from_schema,
        outputs=base.outputs if base else outputs_of(signature),
        signature=signature.name,
        example_input=signature.example_input
        if signature.example_features is not None or signature.parse_problem
        else None,
        origin=f"{schema.path} (--input_schema) with signature {signature.name!r}",
    )


def outputs_of(signature: SignatureInfo) -> tuple[OutputField, ...]:
    """Each output with its per-record shape ([N] and [N, 1] are one value a record)."""
    fields = []
    for name, info in sorted(signature.outputs.items()):
        shape = tuple(-1 if d is None else d for d in (info.shape or (None, None))[1:])
        if shape == (1,):
            shape = ()
        fields.append(OutputField(name, info.dtype, shape))
    return tuple(fields)


def _field_from_feature(feature: ExampleFeature, origin: str) -> InputField:
    if feature.dtype not in _EXAMPLE_TYPES:
        raise ModelDirectoryError(f"{origin}: tf.Example feature {feature.name!r} has dtype {feature.dtype}")
    if feature.kind == "dense":
        if feature.shape not in ((), (1,)):
            raise ModelDirectoryError(
                f"{origin}: tf.Example feature {feature.name!r} is a fixed-length list of shape "
                f"{list(feature.shape)}; adpredict's record fields hold one number or string, or a "
                "list of strings, so this model cannot be scored from records"
            )
        ftype = _EXAMPLE_TYPES[feature.dtype]
        default = feature.default
        return InputField(
            feature.name,
            ftype,
            required=default is None,
            default=default,
        )
    return InputField(feature.name, _field_type_for(feature), required=False)


def _field_type_for(feature: ExampleFeature) -> str:
    """Record type for a parsed feature: a variable-length number is one optional number."""
    if feature.kind != "dense" and feature.dtype == "string":
        return "string_list"
    return _EXAMPLE_TYPES[feature.dtype]


def _example_type_fits(field: InputField, feature: ExampleFeature) -> bool:
    if field.type == "image":
        return feature.dtype == "string" and feature.kind == "dense"
    return field.type == _field_type_for(feature)


def _field_from_tensor(name: str, info: TensorInfo, origin: str) -> InputField:
    rank = None if info.shape is None else len(info.shape)
    inner = None if not rank else tuple(info.shape[1:])  # None: no batch dimension to fill
    if not info.composite and info.dtype in _INT_DTYPES and inner in ((), (1,)):
        return InputField(name, "int")
    if not info.composite and info.dtype in _FLOAT_DTYPES and inner in ((), (1,)):
        return InputField(name, "float")
    if not info.composite and info.dtype == "string" and inner in ((), (1,)):
        return InputField(name, "string")
    if not info.composite and info.dtype == "string" and rank == 2:
        return InputField(name, "string_list", required=False)
    raise ModelDirectoryError(
        f"{origin}: input {name!r} is {'a ragged or sparse ' if info.composite else ''}{info.dtype} of "
        f"shape {_shape_text(info.shape)}, which no record field type gives (int, float, string: [N]; "
        f"string_list: string [N, M]); write {DESCRIPTION_PATH} by hand if its inputs can be described"
    )


def _tensor_problem(field: InputField, info: TensorInfo) -> str | None:
    """Why `field`'s tensor would not fit `info`, or None."""
    if info.composite:
        return "the signature takes a ragged or sparse tensor, which predict cannot feed"
    if info.shape is not None and not info.shape:
        return "the signature takes a scalar (no batch dimension), which predict cannot feed a batch"
    inner = () if info.shape is None else tuple(info.shape[1:])
    if field.type == "string_list":
        fits = info.dtype == "string" and (info.shape is None or len(info.shape) == 2)
        want = "string [N, M]"
    elif field.type in ("string", "image"):
        fits = info.dtype == "string" and inner in ((), (1,))
        want = "string [N]"
    else:
        dtypes = _INT_DTYPES if field.type == "int" else _FLOAT_DTYPES
        fits = info.dtype in dtypes + (_FLOAT_DTYPES if field.type == "int" else ()) and inner in ((), (1,))
        want = f"{field.type} [N]"
    if fits:
        return None
    return (
        f"declared {field.type} (fed as {want}), but the signature takes {info.dtype} of shape "
        f"{_shape_text(info.shape)}; change its type"
    )


def _shape_text(shape) -> str:
    return (
        "unknown"
        if shape is None
        else "["
        + ", ".join(
            "N" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(shape)
        )
        + "]"
    )


def _listed(tensors: dict[str, TensorInfo]) -> str:
    return (
        ", ".join(
            f"{name} ({info.dtype} {_shape_text(info.shape)})" for name, info in sorted(tensors.items())
        )
        or "nothing"
    )


# --- reading saved_model.pb ------------------------------------------------------------


def _serving_meta_graph(model_dir: str):
    from tensorflow.core.protobuf import saved_model_pb2

    gfile = model_files()
    saved_model = saved_model_pb2.SavedModel()
    binary = gfile.join(model_dir, "saved_model.pb")
    try:
        if gfile.exists(binary):
            with gfile.GFile(binary, "rb") as f:
                saved_model.ParseFromString(f.read())
        else:
            from google.protobuf import text_format

            with gfile.GFile(gfile.join(model_dir, "saved_model.pbtxt"), "rb") as f:
                text_format.Parse(f.read().decode("utf-8"), saved_model)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and parse errors share no base
        raise ModelDirectoryError(
            f"{model_dir!r}: saved_model.pb cannot be read ({type(e).__name__}: {str(e)[:200]}); "
            "export the model again"
        ) from None
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    if saved_model.meta_graphs:
        return saved_model.meta_graphs[0]
    raise ModelDirectoryError(f"{model_dir!r}: saved_model.pb holds no MetaGraph; export the model again")


def _tensor_info(info) -> TensorInfo:
    from tensorflow.python.framework import dtypes

    shape = (
        None
        if info.tensor_shape.unknown_rank
        else tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    )
    return TensorInfo(
        dtype=dtypes.as_dtype(info.dtype).name if info.dtype else "unknown",
        shape=shape,
        composite=info.WhichOneof("encoding") != "name",
    )


# The two functions below also run in `adpredict inspect`'s TensorFlow-only probe process
# (pipeline/inspect_model.py copies their source), so they import what they use themselves.


def signature_function(meta_graph, signature_name):
    """Name of the function a TF2 signature runs (None: a TF1 SavedModel, or no such signature)."""
    graph = meta_graph.object_graph_def
    if not graph.nodes:
        return None
    for child in graph.nodes[0].children:
        if child.local_name == "signatures":
            for signature in graph.nodes[child.node_id].children:
                node = graph.nodes[signature.node_id]
                if (
                    signature.local_name == signature_name
                    and node.WhichOneof("kind") == "bare_concrete_function"
                ):
                    return node.bare_concrete_function.concrete_function_name
    return None


def composite_inputs(tf, meta_graph, signature_name, signature_inputs):
    """Ragged or sparse arguments of the function a signature wraps.

    TensorFlow 2 writes such an argument into the SignatureDef as its dense components
    (`x`, `x_1`, ...), so only the wrapped function's own input signature tells.
    """
    import re

    from tensorflow.python.saved_model import nested_structure_coder

    wrapper = signature_function(meta_graph, signature_name)
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    if wrapper not in functions:
        return []

    def stem(name):
        return re.sub(r"^__inference_(.*)_\d+$", r"\1", name)

    called = {
        stem(value.func.name)
        for node in functions[wrapper].node_def
        for value in node.attr.values()
        if value.HasField("func")
    }
    graph = meta_graph.object_graph_def
    argument_names = {}
    for node in graph.nodes:
        if node.WhichOneof("kind") == "function":
            spec = nested_structure_coder.decode_proto(node.function.function_spec.fullargspec)
            names = list(getattr(spec, "args", None) or [])
            if node.function.function_spec.is_method and names[:1] == ["self"]:
                names = names[1:]
            for concrete in node.function.concrete_functions:
                argument_names[concrete] = names
    found = {}
    for name, saved in graph.concrete_functions.items():
        if stem(name) not in called:
            continue
        leaves = [((), nested_structure_coder.decode_proto(saved.canonicalized_input_signature))]
        while leaves:
            path, value = leaves.pop()
            if isinstance(value, dict):
                leaves += [(path + (key,), item) for key, item in value.items()]
            elif isinstance(value, (list, tuple)):
                leaves += [(path + (index,), item) for index, item in enumerate(value)]
            elif isinstance(value, tf.TypeSpec) and not isinstance(value, tf.TensorSpec):
                keys = [p for p in path if isinstance(p, str)]
                positional = argument_names.get(name, [])
                if keys:
                    label = keys[-1]
                elif len(path) >= 2 and path[0] == 0 and path[1] < len(positional):
                    label = positional[path[1]]
                else:
                    label = "/".join(str(p) for p in path)
                found[label] = {
                    "name": label,
                    "kind": type(value).__name__.removesuffix("Spec"),
                    "dtype": value.dtype.name if hasattr(value, "dtype") else None,
                    "shape": value.shape.as_list()
                    if getattr(value, "shape", None) is not None and value.shape.rank is not None
                    else None,
                    "fed_as": sorted(
                        k
                        for k in signature_inputs
                        if k == label or re.fullmatch(re.escape(label) + r"_\d+", k)
                    ),
                }
    return sorted(found.values(), key=lambda item: item["name"])


def _called_functions(node, functions: dict) -> list[str]:
    called = [node.op] if node.op in functions else []
    for value in node.attr.values():
        if value.HasField("func"):
            called.append(value.func.name)
        if value.HasField("list"):
            called += [f.name for f in value.list.func]
    return [name for name in called if name in functions]


class _UnreadableParsing(ModelDirectoryError):
    """The signature parses tf.Examples in a way this reader cannot follow."""


def _parsed_features(meta_graph, signature_name: str, model_dir: str) -> tuple[ExampleFeature, ...] | None:
    """The features of the one ParseExampleV2 op the signature runs (None if it runs none)."""
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    root = signature_function(meta_graph, signature_name)
    if root is None:  # TF1: the whole graph is the signature's
        scopes = [list(meta_graph.graph_def.node)]
        pending = [name for node in meta_graph.graph_def.node for name in _called_functions(node, functions)]
    else:
        scopes, pending = [], [root]
    seen = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        scopes.append(list(functions[name].node_def))
        pending += [
            called for node in functions[name].node_def for called in _called_functions(node, functions)
        ]
    found = [(node, nodes) for nodes in scopes for node in nodes if node.op == "ParseExampleV2"]
    legacy = [
        node.op for nodes in scopes for node in nodes if node.op in ("ParseExample", "ParseSingleExample")
    ]
    if not found:
        if legacy:
            raise _UnreadableParsing(
                f"{model_dir!r} parses tf.Examples with the old {legacy[0]} op; give predict --input_schema FILE "
                "listing the raw fields (docs/model_description.md)"
            )
        return None
    if len(found) > 1:
        raise _UnreadableParsing(
            f"{model_dir!r}: signature {signature_name!r} parses tf.Examples {len(found)} times; give "
            "predict --input_schema FILE listing the raw fields (docs/model_description.md)"
        )
    return _features_of(*found[0])


def _features_of(node, nodes) -> tuple[ExampleFeature, ...]:
    from tensorflow.python.framework import dtypes, tensor_util

    by_name = {n.name: n for n in nodes}

    def constant(text: str):
        source = by_name.get(text.lstrip("^").split(":")[0])
        # tf.io.parse_example puts a FixedLenFeature's default behind a Reshape to its shape:
        # the values (all that is read here) are the constant's.
        while source is not None and source.op in ("Identity", "Reshape"):
            source = by_name.get(source.input[0].split(":")[0])
        if source is None or source.op != "Const":
            raise _UnreadableParsing(
                f"the model's ParseExampleV2 op takes {text!r}, which is not a constant; give predict "
                "--input_schema FILE listing the raw fields (docs/model_description.md)"
            )
        return tensor_util.MakeNdarray(source.attr["value"].tensor)

    def names(values) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1).tolist()]

    data_inputs = [i for i in node.input if not i.startswith("^")]
    sparse_keys, dense_keys, ragged_keys = (names(constant(i)) for i in data_inputs[2:5])
    defaults = [constant(i) for i in data_inputs[5 : 5 + len(dense_keys)]]
    attr = node.attr
    dense_types = [dtypes.as_dtype(t).name for t in attr["Tdense"].list.type]
    dense_shapes = [
        tuple(d.size for d in shape.dim) if not shape.unknown_rank else (-1,)
        for shape in attr["dense_shapes"].list.shape
    ]
    sparse_types = [dtypes.as_dtype(t).name for t in attr["sparse_types"].list.type]
    ragged_types = [dtypes.as_dtype(t).name for t in attr["ragged_value_types"].list.type]
    features = []
    for key, dtype, shape, default in zip(dense_keys, dense_types, dense_shapes, defaults, strict=True):
        value = None
        if default.size:
            value = default.reshape(-1)[0]
            value = value.decode() if isinstance(value, bytes) else value.item()
        features.append(ExampleFeature(key, dtype, "dense", shape, value))
    features += [ExampleFeature(k, t, "sparse") for k, t in zip(sparse_keys, sparse_types, strict=True)]
    features += [ExampleFeature(k, t, "ragged") for k, t in zip(ragged_keys, ragged_types, strict=True)]
    return tuple(sorted(features, key=lambda f: f.name))
