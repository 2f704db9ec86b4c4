"""The model directory contract: what `predict` needs to know, stored inside the model.

An exported model directory is a standard TF2 SavedModel plus
`assets.extra/adpredict_model.json`, which describes the raw inputs of the
`serving_default` signature (name, type, required, missing value, valid range), its
outputs, and which record field is the key. `predict` reads only this file and the
SavedModel, so it scores any model that follows the contract, not just ours.
This module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

FORMAT_VERSION = 1
DESCRIPTION_PATH = os.path.join("assets.extra", "adpredict_model.json")
RAW_SIGNATURE = "serving_default"
EXAMPLE_SIGNATURE = "serving_tf_example"
TRANSFORM_SIGNATURE = "transform_features"  # raw inputs -> tf.Transform's outputs (parity checks)
OUTPUT_NAME = "probability"  # the one output of the models adpredict trains
# What else adpredict's exports carry under assets.extra/ (optional for any other model).
TUNING_FILE = os.path.join("assets.extra", "batch_size_tuning.json")  # records/s by batch size
TRAINING_METRICS_FILE = os.path.join("assets.extra", "training_metrics.json")
# Raw eval records with the outputs the model gave at export: the canary every run checks.
GOLDEN_RECORDS_FILE = os.path.join("assets.extra", "golden_records.json")
# The training data's profile and the model's outputs on the eval split: what the data-quality
# gate compares every run with (`transforms.data_profile`).
TRAINING_PROFILE_FILE = os.path.join("assets.extra", "training_profile.json")
# bf16 outputs against fp32 (the check `--precision bf16|auto` needs) and both speeds by CPU kind.
PRECISION_CHECK_FILE = os.path.join("assets.extra", "precision_check.json")
# The files whose bytes identify a model (run.json's model.fingerprint, `adpredict inspect`).
FINGERPRINTED_FILES = ("saved_model.pb", "variables/variables.index")


# "signatures" was written by adpredict 0.x exports and is ignored.
_DESCRIPTION_KEYS = {
    "format_version", "inputs", "outputs", "key_field", "key_type", "label", "schema_name",
    "batch_size", "signature", "example_input", "signatures", "csv_columns",
}  # fmt: skip


class ModelDirectoryError(ValueError):
    """The model directory is missing or does not follow the contract."""


@dataclasses.dataclass(frozen=True)
class InputField:
    """One raw input of `serving_default` (and one field of an input record)."""

    name: str
    type: str  # int | float | string | string_list | image
    required: bool = True
    default: Any = None  # value an absent optional int takes before the model
    range: tuple[float, float] | None = None
    separator: str = "|"  # joins a string_list inside one CSV cell

    @property
    def fill_value(self) -> Any:
        """Marker an absent optional value carries into the model (see schema.Feature)."""
        if self.type == "float":
            return math.nan
        if self.type in ("string", "image"):
            return ""
        if self.type == "string_list":
            return []
        return 0 if self.default is None else self.default  # required ints never get here


@dataclasses.dataclass(frozen=True)
class OutputField:
    """One output of the signature, per record: `dtype` (a numpy name, or "string") and
    `shape` (() for one value a record, (2,) for [N, 2] scores; written as a list)."""

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] = ()

    @property
    def values_per_record(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    inputs: tuple[InputField, ...]
    outputs: tuple[OutputField, ...]
    key_field: str | None  # None: the key is the record's position "<file>:<line>"
    key_type: str = "string"
    label: str | None = None
    schema_name: str = ""
    batch_size: int = 256  # default rows per model call, chosen at export
    signature: str = RAW_SIGNATURE  # the signature predict calls
    # None: the signature takes one tensor per input field. A name: its only input, a batch
    # of serialized tf.Examples holding the input fields (how TFX exports models).
    example_input: str | None = None
    # The column order of the headerless CSV files the model was trained on (the schema's
    # `csv_columns`): predict reads such files the same way without --csv_columns.
    csv_columns: tuple[str, ...] | None = None
    # Where this description came from (not written): the file, or how it was derived.
    origin: str = dataclasses.field(default=DESCRIPTION_PATH, compare=False)

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc.pop("origin")
        doc["format_version"] = FORMAT_VERSION
        return json.dumps(doc, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "<description>") -> ModelDescription:
        try:
            doc = json.loads(text)
            unknown = sorted(set(doc) - _DESCRIPTION_KEYS)
            if unknown:
                raise ModelDirectoryError(
                    f"{where}: unknown keys {unknown}; known keys are {sorted(_DESCRIPTION_KEYS)} "
                    "(docs/model_description.md)"
                )
            if doc.get("format_version") != FORMAT_VERSION:
                raise ModelDirectoryError(
                    f"{where}: format_version {doc.get('format_version')!r} is not "
                    f"{FORMAT_VERSION}; re-export the model with this adpredict version"
                )
            inputs = tuple(
                InputField(**{**i, "range": tuple(i["range"]) if i.get("range") else None})
                for i in doc["inputs"]
            )
            outputs = tuple(
                OutputField(**{**o, "shape": tuple(o.get("shape") or ())}) for o in doc["outputs"]
            )
            return cls(
                inputs=inputs,
                outputs=outputs,
                key_field=doc.get("key_field"),
                key_type=doc.get("key_type", "string"),
                label=doc.get("label"),
                schema_name=doc.get("schema_name", ""),
                batch_size=int(doc.get("batch_size", 256)),
                signature=doc.get("signature", RAW_SIGNATURE),
                example_input=doc.get("example_input"),
                csv_columns=tuple(doc["csv_columns"]) if doc.get("csv_columns") else None,
                origin=where,
            )
        except ModelDirectoryError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # ValueError: bad JSON, numbers
            raise ModelDirectoryError(
                f"{where}: not a valid model description: {e!r}; re-export the model with `adpredict train`"
            ) from None

    def write(self, model_dir: str) -> str:
        gfile = model_files()
        path = gfile.join(model_dir, DESCRIPTION_PATH)
        gfile.makedirs(gfile.join(model_dir, os.path.dirname(DESCRIPTION_PATH)))
        with gfile.GFile(path, "wb") as f:
            f.write(self.to_json().encode("utf-8"))
        return path

    @staticmethod
    def check_saved_model(model_dir: str) -> None:
        """Raises ModelDirectoryError unless `model_dir` exists and holds a SavedModel."""
        gfile = model_files()
        if not gfile.exists(model_dir):
            raise ModelDirectoryError(
                f"model directory {model_dir!r} does not exist; check --model_dir: the directory "
                "`adpredict train` exported (e.g. WORK_DIR/model)"
            )
        if not any(
            gfile.exists(gfile.join(model_dir, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
        ):
            raise ModelDirectoryError(
                f"{model_dir!r} is not a SavedModel (no saved_model.pb); give the directory "
                "that `adpredict train` exported (e.g. WORK_DIR/model)"
            )

    @classmethod
    def read(cls, model_dir: str) -> ModelDescription:
        """Reads the description file, with errors that say what is wrong with the directory.

        A model without one is described from its signature: see
        transforms.signature_reader.describe_model, which is what predict calls.
        """
        gfile = model_files()
        cls.check_saved_model(model_dir)
        path = gfile.join(model_dir, DESCRIPTION_PATH)
        if not gfile.exists(path):
            raise ModelDirectoryError(
                f"{model_dir!r} is a SavedModel without {DESCRIPTION_PATH}, which tells "
                "predict its raw inputs; export it with `adpredict train` or write that file"
            )
        with gfile.GFile(path, "rb") as f:
            return cls.from_json(f.read().decode("utf-8"), where=path)


def description_from_schema(schema, outputs=(OUTPUT_NAME,), batch_size=256) -> ModelDescription:
    """The description of a model exported from `schema` (a transforms.schema.Schema)."""
    inputs = tuple(
        InputField(
            name=f.name,
            type=f.type,
            required=f.required,
            default=f.default if f.type == "int" else None,
            range=f.range,
            separator=f.separator,
        )
        for f in schema.features
    )
    return ModelDescription(
        inputs=inputs,
        outputs=tuple(OutputField(name) for name in outputs),
        key_field=schema.key_field,
        key_type=schema.key_type,
        label=schema.label,
        schema_name=schema.name,
        batch_size=batch_size,
        csv_columns=schema.csv_columns,
    )


def read_model_json(model_dir: str, relative_path: str) -> dict | None:
    """A JSON file of the model directory (one of the files above), or None if it has none."""
    gfile = model_files()
    path = gfile.join(model_dir, relative_path)
    if not gfile.exists(path):
        return None
    with gfile.GFile(path) as f:
        return json.loads(f.read())


def model_files():
    """TensorFlow's file access (`tf.io.gfile`), for everything read in a model directory.

    TensorFlow loads the SavedModel itself, so whatever it can load from (a local path,
    gs://) its description is read from too, the same way. Imported on first use: this
    module stays standard-library only for `adpredict inspect`."""
    import tensorflow as tf

    return tf.io.gfile


def model_fingerprint(model_dir: str, read=None) -> str:
    """sha256 over the SavedModel graph and variable index: changes when the model does.

    `read(path)` returns a file's bytes, or None when it does not exist; by default local
    files are read. The pipeline passes a reader over Beam's FileSystems (gs:// models)."""
    import hashlib

    def read_local(path: str) -> bytes | None:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    digest = hashlib.sha256()
    for name in FINGERPRINTED_FILES:
        data = (read or read_local)(f"{model_dir.rstrip('/')}/{name}")
        if data is not None:
            digest.update(data)
    return digest.hexdigest()
