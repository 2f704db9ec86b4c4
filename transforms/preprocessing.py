"""The tf.Transform `preprocessing_fn`, derived feature by feature from the schema.

Written once: tf.Transform analyzes it over the training data (vocabularies, quantiles,
means) and the resulting graph is attached to the exported model, so serving computes
exactly what training saw. Every output is a dense float32 tensor with a static shape
(`[batch, feature.width]`, or `[batch, H, W, C]` for images) named after its feature.
"""

from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft

from transforms import image_ops
from transforms.schema import FLOAT, IMAGE, INT, MISSING_SUFFIX, STRING, STRING_LIST, Feature, Schema


def make_preprocessing_fn(schema: Schema) -> Callable[[dict], dict]:
    """Returns the `preprocessing_fn` for `schema`: a pure function of its inputs."""

    def preprocessing_fn(inputs):
        outputs = {}
        for feature in schema.features:
            value, is_missing = _fill_missing(feature, inputs[feature.name])
            outputs[feature.name] = _encode(feature, value)
            if feature.indicator:
                outputs[feature.name + MISSING_SUFFIX] = tf.cast(is_missing, tf.float32)[:, None]
        if schema.label and schema.label in inputs:
            outputs[schema.label] = inputs[schema.label]
        return outputs

    return preprocessing_fn


def transformed_feature_names(schema: Schema) -> list[str]:
    """Names of the model inputs the `preprocessing_fn` produces (label excluded)."""
    names = []
    for feature in schema.features:
        names.append(feature.name)
        if feature.indicator:
            names.append(feature.name + MISSING_SUFFIX)
    return names


def _fill_missing(feature: Feature, value):
    """Replaces the missing marker (NaN, "" or an empty list) with the declared default."""
    if feature.type == FLOAT:
        is_missing = tf.math.is_nan(value)
        return tf.where(is_missing, tf.constant(feature.default or 0.0, value.dtype), value), is_missing
    if feature.type == STRING and not feature.required:
        is_missing = tf.equal(value, "")
        return tf.where(is_missing, tf.constant(feature.default), value), is_missing
    if feature.type == IMAGE:
        return value, tf.equal(value, "")
    if feature.type == STRING_LIST:
        batch_size = tf.shape(value, out_type=tf.int64)[0]
        counts = tf.math.unsorted_segment_sum(
            tf.ones_like(value.values, tf.int32), value.indices[:, 0], batch_size
        )
        return value, tf.equal(counts, 0)
    return value, tf.zeros_like(value, tf.bool)


def _encode(feature: Feature, value) -> tf.Tensor:
    encoding, width = feature.encoding, feature.width
    if encoding == "z_score":
        return tft.scale_to_z_score(tf.cast(value, tf.float32))[:, None]
    if encoding == "min_max":
        return tft.scale_to_0_1(tf.cast(value, tf.float32))[:, None]
    if encoding == "passthrough":
        return tf.cast(value, tf.float32)[:, None]
    if encoding == "bucketize":
        as_float = tf.cast(value, tf.float32)
        if feature.boundaries:
            buckets = tft.apply_buckets(as_float, [list(feature.boundaries)])
        else:
            buckets = tft.bucketize(as_float, feature.num_buckets)
        return tf.one_hot(buckets, width, dtype=tf.float32)
    if encoding == "one_hot" and feature.type == INT:
        index = tf.clip_by_value(value - int(feature.range[0]), 0, width - 1)
        return tf.one_hot(index, width, dtype=tf.float32)
    if encoding == "one_hot" and feature.type == STRING:
        index = _vocabulary_index(feature, value)
        return tf.one_hot(index, width, dtype=tf.float32)
    if encoding == "multi_hot":
        ids = _vocabulary_index(feature, value)
        return tf.cast(tf.sparse.to_indicator(ids, width), tf.float32)
    if encoding == "image":
        return image_ops.decode_base64_images(value, feature.image)
    raise ValueError(f"feature {feature.name!r}: no encoding {encoding!r} for {feature.type}")


def _vocabulary_index(feature: Feature, value):
    """Vocabulary of the `top_k` most frequent values; others go to OOV buckets.

    With `top_k` fixed, indices stay below `top_k + oov_buckets` whatever the data holds,
    so the encoded width is known before analysis.
    """
    return tft.compute_and_apply_vocabulary(
        value,
        top_k=feature.top_k,
        num_oov_buckets=feature.oov_buckets,
        vocab_filename=feature.vocabulary_name,
    )
