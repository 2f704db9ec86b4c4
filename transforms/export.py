"""Export: one SavedModel = tf.Transform graph + trained Keras model + input description.

The transform layer is attached to the exported module as an attribute, so its
vocabulary files and tables are tracked and copied into the model's own `assets/`: the
directory is hermetic and loads with TensorFlow alone. Two signatures:

- `serving_default`: one named input per raw feature, batch first (`age` int64 [B],
  `gender` string [B], `interests` string [B, N] padded with "", `bid` float32 [B] with NaN
  for missing, `image` base64 string [B]); output `probability` float32 [B].
- `serving_tf_example`: one string input `examples` of serialized tf.Example (TFX style:
  an image feature holds the JPEG/PNG bytes themselves, not base64 text).
- `transform_features`: the raw inputs of `serving_default` -> tf.Transform's outputs, for
  checking training/serving parity and debugging.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from transforms.batchnorm_folding import fold_batch_norms
from transforms.model_contract import (
    EXAMPLE_SIGNATURE,
    OUTPUT_NAME,
    RAW_SIGNATURE,
    TRANSFORM_SIGNATURE,
    ModelDescription,
    description_from_schema,
)
from transforms.preprocessing import transformed_feature_names
from transforms.schema import FLOAT, IMAGE, INT, STRING, STRING_LIST, Schema

_DTYPES = {INT: tf.int64, FLOAT: tf.float32, STRING: tf.string, IMAGE: tf.string, STRING_LIST: tf.string}


def raw_input_signature(schema: Schema) -> dict[str, tf.TensorSpec]:
    """TensorSpecs of `serving_default`'s inputs, derived from the schema."""
    return {
        f.name: tf.TensorSpec([None, None] if f.type == STRING_LIST else [None], _DTYPES[f.type], name=f.name)
        for f in schema.features
    }


def example_parsing_spec(schema: Schema) -> dict:
    """How `serving_tf_example` parses tf.Examples: absent optional values get the markers."""
    spec = {}
    for field in description_from_schema(schema).inputs:
        dtype = _DTYPES[field.type]
        if field.type == STRING_LIST:
            spec[field.name] = tf.io.VarLenFeature(dtype)
        elif field.required:
            spec[field.name] = tf.io.FixedLenFeature([], dtype)
        else:
            spec[field.name] = tf.io.FixedLenFeature([], dtype, default_value=field.fill_value)
    return spec


class ServingModule(tf.Module):
    """What the SavedModel holds: the transform layer, the Keras model, two signatures."""

    def __init__(self, model, tft_layer, schema: Schema):
        super().__init__()
        # Only the Keras model's variables are tracked, not the model object: tracking it
        # makes Keras save (and tf.saved_model.load re-create) a traced function per layer,
        # which took 8 s to load for a MobileNetV2 tower. The signatures below capture the
        # variables, which is all serving needs.
        self._keras_model = _NotTracked(model)
        self.model_variables = list(model.variables)
        self.tft_layer = tft_layer
        self._schema = schema
        self._model_inputs = transformed_feature_names(schema)
        self.serve_raw = tf.function(self._serve_raw, input_signature=[raw_input_signature(schema)])
        self.transform_features = tf.function(
            self._transform_features, input_signature=[raw_input_signature(schema)]
        )
        self.serve_tf_example = tf.function(
            self._serve_tf_example,
            input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
        )

    def transform(self, raw: dict) -> dict:
        """Raw tensors in tf.Transform's feature-spec form -> transformed features."""
        return self.tft_layer(raw)

    def score(self, raw: dict) -> dict:
        transformed = self.transform(raw)
        probability = self._keras_model.value(
            {name: transformed[name] for name in self._model_inputs}, training=False
        )
        return {OUTPUT_NAME: tf.reshape(probability, [-1])}

    def _as_feature_spec_form(self, inputs) -> dict:
        raw = dict(inputs)
        for feature in self._schema.features:
            if feature.type == STRING_LIST:
                raw[feature.name] = _padded_to_sparse(raw[feature.name])
        return raw

    def _serve_raw(self, inputs):
        return self.score(self._as_feature_spec_form(inputs))

    def _transform_features(self, inputs):
        transformed = self.transform(self._as_feature_spec_form(inputs))
        return {name: transformed[name] for name in self._model_inputs}

    def _serve_tf_example(self, examples):
        raw = tf.io.parse_example(examples, example_parsing_spec(self._schema))
        for feature in self._schema.features:
            if feature.type == IMAGE:  # TFX stores image bytes; the transform reads base64 text
                raw[feature.name] = tf.io.encode_base64(raw[feature.name], pad=True)
        return self.score(raw)


class _NotTracked:
    """Holds an object as an attribute of a tf.Module without the saver following it."""

    def __init__(self, value):
        self.value = value


def _padded_to_sparse(padded: tf.Tensor) -> tf.SparseTensor:
    """[B, N] strings padded with "" -> the SparseTensor a VarLenFeature gives."""
    indices = tf.where(tf.not_equal(padded, ""))
    return tf.SparseTensor(indices, tf.gather_nd(padded, indices), tf.shape(padded, out_type=tf.int64))


def export_model(
    model,
    transform_dir: str,
    schema: Schema,
    export_dir: str,
    batch_size: int,
) -> ModelDescription:
    """Writes the hermetic model directory and its description; returns the description.
    Batch norms are folded into their convolutions in the exported copy (same outputs, fewer
    ops; `transforms.batchnorm_folding`)."""
    tft_output = tft.TFTransformOutput(transform_dir)
    module = ServingModule(fold_batch_norms(model), tft_output.transform_features_layer(), schema)
    signatures = {
        RAW_SIGNATURE: module.serve_raw.get_concrete_function(),
        EXAMPLE_SIGNATURE: module.serve_tf_example.get_concrete_function(),
        TRANSFORM_SIGNATURE: module.transform_features.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    description = description_from_schema(schema, outputs=(OUTPUT_NAME,), batch_size=batch_size)
    description.write(export_dir)
    return description
