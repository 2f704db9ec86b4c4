"""The parity gate: the model's own transform against tf.Transform's, on tonight's records.

The exported model carries the tf.Transform graph it was trained with; `transform_features`
exposes its output. Before a night is scored, a sample of that night's records goes through
both it and the transform artifacts (`TFTransformOutput` of the analyze run); any feature
that differs by more than a tolerance means the model and the artifacts the team believes
it was trained with have drifted apart, and the night fails with the feature's name.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.blocks import RecordLayout
from pipeline.inference.model import ModelConfig
from pipeline.io import format_for
from pipeline.run_contract import GateFailed
from pipeline.validation import validate_block

DEFAULT_SAMPLE = 256
DEFAULT_TOLERANCE = 1e-5


class ParityError(GateFailed):
    """The model's transform and the transform artifacts disagree (or cannot be compared)."""


def sample_records(
    files: list[str], layout: RecordLayout, rows: int = DEFAULT_SAMPLE, input_format: str | None = None
) -> pa.RecordBatch:
    """The first `rows` valid records of `files`, read as predict reads them (`input_format`:
    the run's --input_format, for files whose names do not tell it)."""
    from apache_beam.io.filesystems import FileSystems

    batches, found = [], 0
    for path in files:
        fmt = format_for(path, input_format)
        compression = "uncompressed" if fmt.needs_seekable_file else "auto"
        with FileSystems.open(path, compression_type=compression) as stream:
            for item in fmt.read(stream, path, layout, 1 << 20):
                if isinstance(item, dict):
                    continue
                valid, _ = validate_block(item, layout)
                if valid is not None:
                    batches.append(valid.batch)
                    found += len(valid)
                if found >= rows:
                    break
        if found >= rows:
            break
    if not batches:
        raise ParityError(
            f"no valid record to compare in {files[:3]}: none of their records passes validation; score "
            "them without transform_dir to see the error records"
        )
    return pa.Table.from_batches(batches).slice(0, rows).combine_chunks().to_batches()[0]


def compare(
    config: ModelConfig, transform_dir: str, batch: pa.RecordBatch, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    """{feature: largest absolute difference}; raises ParityError when one passes `tolerance`.

    `config` is the model as the run scores it: its description comes from
    adpredict_model.json or, for a foreign model, from its signature and --input_schema. The
    model's `transform_features` signature takes the raw inputs (adpredict's exports) or, as
    TFX's templates export it, serialized tf.Examples; both sides get the same records."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from transforms.model_contract import TRANSFORM_SIGNATURE

    model_dir = config.model_dir
    model = tf.saved_model.load(model_dir)
    if TRANSFORM_SIGNATURE not in model.signatures:
        raise ParityError(
            f"{model_dir} has no {TRANSFORM_SIGNATURE!r} signature, so its transform cannot be compared; "
            "remove transform_dir from the nightly config to run without the gate"
        )
    served, raw = _served_and_raw(model.signatures[TRANSFORM_SIGNATURE], config, batch)
    expected = tft.TFTransformOutput(transform_dir).transform_raw_features(raw, drop_unused_features=True)
    differences = {
        name: _largest_difference(name, value, expected, transform_dir) for name, value in served.items()
    }
    worst = max(differences, key=differences.get)
    if differences[worst] > tolerance:
        raise ParityError(
            f"training/serving skew: feature {worst!r} differs by up to {differences[worst]:.6g} (tolerance "
            f"{tolerance:g}) between the model in {model_dir} and the transform in {transform_dir}, on "
            f"{batch.num_rows} of tonight's records; set transform_dir to the analyze output the model was "
            "trained on, or re-train the model on this one"
        )
    return differences


def _served_and_raw(signature, config: ModelConfig, batch: pa.RecordBatch) -> tuple[dict, dict]:
    """What the model's transform gives for `batch` (numpy, by feature), and the raw features
    tf.Transform's own graph takes for the same records."""
    import tensorflow as tf

    from pipeline.inference.tensors import fitted_to, model_inputs, serialized_examples

    description = config.description
    specs = signature.structured_input_signature[1]
    (only, spec), *rest = specs.items()
    if not rest and spec.dtype == tf.string and only not in {f.name for f in description.inputs}:
        # serialized tf.Examples (TFX): the reference parses them as the signature does
        examples = tf.constant(serialized_examples(batch, description.inputs))
        raw = tf.io.parse_example(examples, _parse_spec(config.model_dir))
        return _numpy(signature(**{only: examples})), raw
    inputs = model_inputs(batch, description.inputs)
    served = signature(**fitted_to(inputs, specs))
    raw = dict(inputs)
    for field in description.inputs:
        if field.type == "string_list":  # padded [B, N] -> the SparseTensor tf.Transform was fed
            padded = inputs[field.name]
            where = tf.where(tf.not_equal(padded, ""))
            raw[field.name] = tf.SparseTensor(
                where, tf.gather_nd(padded, where), tf.shape(padded, out_type=tf.int64)
            )
    if description.label:
        raw[description.label] = tf.zeros([batch.num_rows], tf.int64)  # analysed with the label; unused here
    return _numpy(served), raw


def _parse_spec(model_dir: str) -> dict:
    """The tf.io feature spec the model's transform signature parses its tf.Examples with."""
    import tensorflow as tf

    from transforms.model_contract import TRANSFORM_SIGNATURE, ModelDirectoryError
    from transforms.signature_reader import read_signature

    try:
        features = read_signature(model_dir, TRANSFORM_SIGNATURE).example_features
    except ModelDirectoryError as e:
        features, problem = None, f": {e}"
    else:
        problem = ""
    if not features:
        raise ParityError(
            f"{model_dir}'s {TRANSFORM_SIGNATURE!r} signature takes serialized tf.Examples but how it parses "
            f"them cannot be read{problem}; remove transform_dir from the nightly config to run without the gate"
        )
    spec = {}
    for feature in features:
        dtype = tf.as_dtype(feature.dtype)
        if feature.kind == "dense":
            spec[feature.name] = tf.io.FixedLenFeature(
                list(feature.shape), dtype, default_value=feature.default
            )
        elif feature.kind == "sparse":
            spec[feature.name] = tf.io.VarLenFeature(dtype)
        else:
            spec[feature.name] = tf.io.RaggedFeature(
                dtype, value_key=feature.name, partitions=[], row_splits_dtype=tf.int64
            )
    return spec


def _numpy(outputs: dict) -> dict:
    return {name: value.numpy() for name, value in sorted(outputs.items())}


def _largest_difference(name: str, value: np.ndarray, expected: dict, transform_dir: str) -> float:
    import tensorflow as tf

    if name not in expected:
        raise ParityError(
            f"feature {name!r} of the model is not produced by the transform in {transform_dir}; set "
            "transform_dir to the analyze output the model was trained on"
        )
    reference = expected[name]
    if isinstance(reference, tf.SparseTensor):
        reference = tf.sparse.to_dense(reference)
    elif isinstance(reference, tf.RaggedTensor):
        reference = reference.to_tensor()
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size != value.size:
        raise ParityError(
            f"feature {name!r}: the model gives shape {value.shape}, the transform in {transform_dir} "
            f"{reference.shape}; set transform_dir to the analyze output the model was trained on"
        )
    return float(np.max(np.abs(value.astype(np.float64) - reference.reshape(value.shape))))
