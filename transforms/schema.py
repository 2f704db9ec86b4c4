"""The schema file: the single place where the facts about a dataset's features live.

A schema file (YAML) declares each raw feature once: its type, how it is encoded, whether
it is required and what to do when it is missing. The tf.Transform feature spec, the
`preprocessing_fn`, record validation, the model description and the sample-data
generator are all derived from it, so a user with another dataset writes a schema file,
not code. `load_schema` checks the file itself and reports mistakes with the feature name.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

# Raw value types a record may carry.
INT, FLOAT, STRING, STRING_LIST, IMAGE = "int", "float", "string", "string_list", "image"
TYPES = (INT, FLOAT, STRING, STRING_LIST, IMAGE)

# Encodings, and which raw types each applies to.
ENCODINGS = {
    "z_score": (INT, FLOAT),
    "min_max": (INT, FLOAT),
    "bucketize": (INT, FLOAT),
    "one_hot": (INT, STRING),  # INT: over the declared range; STRING: vocabulary + OOV
    "multi_hot": (STRING_LIST,),
    "image": (IMAGE,),
    "passthrough": (INT, FLOAT),
}

# Suffix of the 0/1 feature that an `indicator: true` missing rule adds.
MISSING_SUFFIX = "_is_missing"

BUILTIN_SCHEMAS = ("ads", "criteo")


class SchemaError(ValueError):
    """The schema file itself is wrong; the message names the file and the feature."""


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    channels: int


@dataclasses.dataclass(frozen=True)
class Feature:
    """One raw feature and its encoding."""

    name: str
    type: str
    encoding: str
    required: bool = True
    default: Any = None  # value used when an optional feature is missing
    indicator: bool = False  # add a `<name>_is_missing` 0/1 feature
    range: tuple[float, float] | None = None  # inclusive bounds; outside -> error record
    boundaries: tuple[float, ...] | None = None  # bucketize with fixed boundaries
    num_buckets: int | None = None  # bucketize on quantiles computed by tf.Transform
    top_k: int = 100  # vocabulary size kept for one_hot / multi_hot
    oov_buckets: int = 1
    separator: str = "|"  # how a string_list is written in one CSV cell
    image: ImageSpec | None = None
    sample: dict = dataclasses.field(default_factory=dict)  # sample-data generator hints

    @property
    def width(self) -> int:
        """Length of the encoded vector (1 for scalars, H*W*C is not used for images)."""
        if self.encoding == "bucketize":
            return (len(self.boundaries) + 1) if self.boundaries else self.num_buckets
        if self.encoding == "one_hot" and self.type == INT:
            return int(self.range[1] - self.range[0] + 1)
        if self.encoding in ("one_hot", "multi_hot"):
            return self.top_k + self.oov_buckets
        return 1

    @property
    def vocabulary_name(self) -> str:
        """Name of the vocabulary file tf.Transform writes for this feature."""
        return self.name


@dataclasses.dataclass(frozen=True)
class Schema:
    name: str
    features: tuple[Feature, ...]
    label: str | None
    key_field: str | None  # None: the key is the record's position "<file>:<line>"
    key_type: str = STRING
    label_sample: dict = dataclasses.field(default_factory=dict)
    path: str = ""
    csv_columns: tuple[str, ...] | None = None  # column order of CSV files without a header
    # `label: {values: {raw: 0|1}}`: raw label value -> class; None: the label is an int 0/1.
    label_values: dict | None = None

    @property
    def raw_label_type(self) -> str:
        """Type of the label as records carry it: int (0/1, or int keys of `values`) or string."""
        if self.label_values and not all(isinstance(k, int) for k in self.label_values):
            return STRING
        return INT

    def raw_label(self, cls: int):
        """A raw label value of class `cls` (the first one `values` maps to it), for generators."""
        if not self.label_values:
            return cls
        return next((raw for raw, mapped in self.label_values.items() if mapped == cls), cls)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def raw_feature_spec(self, with_label: bool = True) -> dict:
        """tf.Transform raw feature spec: dense scalars, VarLen string lists."""
        import tensorflow as tf

        dtypes = {INT: tf.int64, FLOAT: tf.float32, STRING: tf.string, IMAGE: tf.string}
        spec = {}
        for f in self.features:
            if f.type == STRING_LIST:
                spec[f.name] = tf.io.VarLenFeature(tf.string)
            else:
                spec[f.name] = tf.io.FixedLenFeature([], dtypes[f.type])
        if with_label and self.label:
            spec[self.label] = tf.io.FixedLenFeature([], tf.int64)
        return spec


def builtin_schema_path(name: str) -> str:
    """Path of a schema file shipped with the package (`ads` or `criteo`)."""
    return os.path.join(os.path.dirname(__file__), "schemas", f"{name}.yaml")


def resolve_schema_path(name_or_path: str) -> str:
    if name_or_path in BUILTIN_SCHEMAS:
        return builtin_schema_path(name_or_path)
    return name_or_path


def load_schema(name_or_path: str = "ads", for_scoring: bool = False) -> Schema:
    """Loads and checks a schema file; `name_or_path` is a built-in name or a file path.

    `for_scoring`: the file only tells `predict` the raw inputs of a model adpredict did not
    train, so features need no `encoding` and `key` defaults to the record's position.
    """
    path = resolve_schema_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise SchemaError(
            f"schema file {path!r} does not exist; give a YAML file or one of {', '.join(BUILTIN_SCHEMAS)}"
        ) from None
    except yaml.YAMLError as e:
        raise SchemaError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    return parse_schema(doc, path, for_scoring)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error on one line: where in the file (line, column) and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


_SCHEMA_KEYS = {"name", "key", "label", "features", "csv_columns"}
_KEY_KEYS = {"field", "type", "from"}
_LABEL_KEYS = {"field", "sample", "values"}


def _check_keys(mapping: dict, known: set[str], where: str) -> None:
    """A key the loader does not know is a mistake (a typo, or a setting it would ignore)."""
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise SchemaError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")


def parse_schema(doc: Any, path: str = "<schema>", for_scoring: bool = False) -> Schema:
    if not isinstance(doc, dict) or "features" not in doc:
        raise SchemaError(f"{path}: expected a mapping with a 'features' list")
    _check_keys(doc, _SCHEMA_KEYS, path)
    for section, known in (("key", _KEY_KEYS), ("label", _LABEL_KEYS)):
        if isinstance(doc.get(section), dict):
            _check_keys(doc[section], known, f"{path}: {section}")
    raw_features = doc["features"]
    if not isinstance(raw_features, list) or not raw_features:
        raise SchemaError(f"{path}: 'features' must be a non-empty list")
    features = tuple(_parse_feature(item, path, for_scoring) for item in raw_features)
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SchemaError(f"{path}: features declared twice: {', '.join(duplicates)}")

    key = doc.get("key") or ({"from": "line"} if for_scoring else {})
    if not isinstance(key, dict):
        key = {}  # `key: id` instead of `key: {field: id}`: the message below says how
    if "field" in key:
        key_field, key_type = key["field"], key.get("type", STRING)
        if key_type not in (STRING, INT):
            raise SchemaError(f"{path}: key type must be string or int, got {key_type!r}")
    elif key.get("from") == "line":
        key_field, key_type = None, STRING
    else:
        raise SchemaError(
            f"{path}: 'key' must be {{field: <name>}} or {{from: line}} (the record's position <file>:<line>)"
        )
    label = doc.get("label") or {}
    if not isinstance(label, dict):
        raise SchemaError(f"{path}: 'label' must be {{field: <name>}}, got {label!r}")
    label_name = label.get("field")
    label_values = _label_values(label, path) if "values" in label else None
    reserved = {key_field, label_name} & set(names)
    if reserved:
        raise SchemaError(
            f"{path}: {sorted(reserved)} is the key or label, not a feature; remove it from features"
        )
    csv_columns = doc.get("csv_columns")
    if csv_columns is not None:
        if not isinstance(csv_columns, list) or not all(isinstance(c, str) for c in csv_columns):
            raise SchemaError(f"{path}: csv_columns must be a list of column names")
        absent = sorted(set(names) - set(csv_columns))
        if absent:
            raise SchemaError(f"{path}: csv_columns lacks the features {absent}")
        csv_columns = tuple(csv_columns)
    return Schema(
        name=str(doc.get("name") or os.path.splitext(os.path.basename(path))[0]),
        features=features,
        label=label_name,
        key_field=key_field,
        key_type=key_type,
        label_sample=label.get("sample", {}),
        path=path,
        csv_columns=csv_columns,
        label_values=label_values,
    )


def _label_values(label: dict, path: str) -> dict:
    """`label.values`: a non-empty mapping of raw values (all strings or all ints) to 0 or 1."""
    where = f"{path}: label.values"
    values = label["values"]
    example = '{" >50K": 1, " <=50K": 0}'
    if not isinstance(values, dict) or not values:
        raise SchemaError(
            f"{where} must be a non-empty mapping of raw label values to 0 or 1, e.g. {example}; got {values!r}"
        )
    if not label.get("field"):
        raise SchemaError(f"{where} needs label.field, the field that carries the raw values")
    for raw, mapped in values.items():
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise SchemaError(
                f"{where}: key {raw!r} is a {type(raw).__name__}; keys must be strings or ints "
                '(quote it: "yes", "1.0")'
            )
        if isinstance(mapped, bool) or mapped not in (0, 1):
            raise SchemaError(f"{where}: {raw!r} maps to {mapped!r}; each raw value must map to 0 or 1")
    kinds = {isinstance(raw, int) for raw in values}
    if len(kinds) > 1:
        raise SchemaError(
            f"{where}: keys mix ints and strings ({sorted(map(repr, values))}); quote them all as strings"
        )
    return {raw: int(mapped) for raw, mapped in values.items()}


def _parse_feature(item: Any, path: str, for_scoring: bool = False) -> Feature:
    if not isinstance(item, dict) or "name" not in item:
        raise SchemaError(f"{path}: each feature needs a 'name': {item!r}")
    name = item["name"]
    where = f"{path}: feature {name!r}"
    known = {f.name for f in dataclasses.fields(Feature)} | {"missing", "height", "width", "channels"}
    _check_keys(item, known, where)
    ftype = item.get("type")
    if ftype not in TYPES:
        raise SchemaError(f"{where}: type must be one of {TYPES}, got {ftype!r}")
    encoding = item.get("encoding")
    if encoding is None and for_scoring:
        encoding = ""  # the model does its own encoding; only the type and missing rule matter
    elif encoding not in ENCODINGS:
        raise SchemaError(f"{where}: encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    if encoding and ftype not in ENCODINGS[encoding]:
        fitting = sorted(e for e, types in ENCODINGS.items() if ftype in types)
        raise SchemaError(
            f"{where}: encoding {encoding!r} does not apply to type {ftype!r}; use one of {fitting}"
        )

    kwargs: dict[str, Any] = {"name": name, "type": ftype, "encoding": encoding}
    for key in ("top_k", "oov_buckets", "num_buckets"):
        if key in item:
            kwargs[key] = _integer(item, key, where)
    if "separator" in item:
        kwargs["separator"] = str(item["separator"])
    if "sample" in item:
        if not isinstance(item["sample"], dict):
            raise SchemaError(f"{where}: sample must be a mapping of generator hints, got {item['sample']!r}")
        kwargs["sample"] = dict(item["sample"])
    if "range" in item:
        bounds = item["range"]
        if not (
            isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(_is_number(b) for b in bounds)
        ):
            raise SchemaError(f"{where}: range must be [min, max], two numbers, got {bounds!r}")
        lo, hi = bounds
        if lo > hi:
            raise SchemaError(f"{where}: range [{lo}, {hi}] is empty; write it [min, max]")
        kwargs["range"] = (lo, hi)
    if "boundaries" in item:
        given = item["boundaries"]
        try:
            b = tuple(float(x) for x in given)
        except (TypeError, ValueError):
            b = ()
        if list(b) != sorted(b) or not b:
            raise SchemaError(
                f"{where}: boundaries must be a non-empty increasing list of numbers, got {given!r}"
            )
        kwargs["boundaries"] = b
    if encoding == "bucketize" and not ("boundaries" in kwargs) ^ ("num_buckets" in kwargs):
        raise SchemaError(f"{where}: bucketize needs exactly one of boundaries or num_buckets")
    if encoding == "one_hot" and ftype == INT and "range" not in kwargs:
        raise SchemaError(f"{where}: one_hot of an int needs range: [min, max]")
    if ftype == IMAGE:
        try:
            kwargs["image"] = ImageSpec(
                _integer(item, "height", where),
                _integer(item, "width", where),
                _integer(item, "channels", where) if "channels" in item else 3,
            )
        except KeyError as e:
            raise SchemaError(f"{where}: images need height and width ({e} missing)") from None
        if kwargs["image"].channels not in (1, 3):
            raise SchemaError(f"{where}: channels must be 1 or 3, got {kwargs['image'].channels}")

    missing = item.get("missing")
    kwargs["required"] = bool(item.get("required", missing is None))
    if missing is not None:
        if kwargs["required"]:
            raise SchemaError(
                f"{where}: a required feature cannot have a missing rule; remove required: true or the missing rule"
            )
        if not isinstance(missing, dict) or not ({"default", "indicator"} >= set(missing)):
            raise SchemaError(f"{where}: missing must be {{default: <value>, indicator: true|false}}")
        kwargs["indicator"] = bool(missing.get("indicator", False))
        kwargs["default"] = _check_default(missing.get("default"), ftype, where)
        if ftype == INT and kwargs["indicator"]:
            raise SchemaError(
                f"{where}: an int has no missing marker inside the model; declare it "
                "type: float to get an is-missing indicator"
            )
    elif not kwargs["required"]:
        kwargs["default"] = _check_default(None, ftype, where)
    return Feature(**kwargs)


_TYPE_NAMES = {INT: "an int", FLOAT: "a float", STRING: "a string"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(item: dict, key: str, where: str) -> int:
    try:
        return int(item[key])
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: {key} must be an integer, got {item[key]!r}") from None


def _check_default(value: Any, ftype: str, where: str) -> Any:
    if ftype == STRING_LIST:
        if value not in (None, []):
            raise SchemaError(
                f"{where}: a missing string_list is the empty list; give no default (or default: [])"
            )
        return []
    if ftype == IMAGE:
        if value is not None:
            raise SchemaError(f"{where}: a missing image is all zeros; give no default")
        return None
    if value is None:
        return {INT: 0, FLOAT: 0.0, STRING: "__missing__"}[ftype]
    expected = {INT: int, FLOAT: (int, float), STRING: str}[ftype]
    if not isinstance(value, expected) or isinstance(value, bool):
        raise SchemaError(f"{where}: default {value!r} is not {_TYPE_NAMES[ftype]}, the feature's type")
    return float(value) if ftype == FLOAT else value
