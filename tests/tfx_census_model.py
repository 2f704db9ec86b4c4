"""A model exported the way tf.Transform's `census_example_v2.py` (and TFX's Keras
templates) export one, built inside the test suite: the foreign model adpredict must score.

What makes it foreign: no `adpredict_model.json`; one `serving_default` signature whose only
input is a batch of serialized `tf.Example`s, parsed inside the graph with
`tf.io.parse_example` (fixed-length strings and floats, one optional number as a
`RaggedFeature`); a tf.Transform layer (scale_to_0_1, vocabularies, sparse one-hot);
a `tf_keras` model with two sigmoid outputs; and outputs `scores` float32 [N, 2] and
`classes` string [N, 2], as a TFX classifier returns them; and, as TFX's templates export
one, a `transform_features` signature from serialized tf.Examples to transformed features.
Records are census-like (hyphenated names, labels " >50K" / " <=50K") and generated here,
with a fixed seed.
"""

from __future__ import annotations

import os

import numpy as np

CATEGORICAL = {
    "workclass": ["Private", "Self-emp-not-inc", "Local-gov", "State-gov", "?"],
    "education": ["HS-grad", "Bachelors", "Masters", "Some-college", "Doctorate"],
    "marital-status": ["Never-married", "Married-civ-spouse", "Divorced"],
    "occupation": ["Sales", "Exec-managerial", "Craft-repair", "Tech-support", "?"],
    "relationship": ["Husband", "Not-in-family", "Own-child", "Wife"],
    "race": ["White", "Black", "Asian-Pac-Islander"],
    "sex": ["Male", "Female"],
    "native-country": ["United-States", "Mexico", "India", "Germany"],
}
NUMERIC = ["age", "capital-gain", "capital-loss", "hours-per-week"]
OPTIONAL_NUMERIC = ["education-num"]
LABEL = "label"
CLASS_NAMES = ["0", "1"]


def raw_feature_spec(with_label: bool = True) -> dict:
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in CATEGORICAL}
    spec.update({name: tf.io.FixedLenFeature([], tf.float32) for name in NUMERIC})
    spec.update(
        {
            name: tf.io.RaggedFeature(tf.float32, value_key=name, partitions=[], row_splits_dtype=tf.int64)
            for name in OPTIONAL_NUMERIC
        }
    )
    if with_label:
        spec[LABEL] = tf.io.FixedLenFeature([], tf.string)
    return spec


def census_records(count: int, seed: int = 11) -> list[dict]:
    """Census-like records as a user would have them in JSON: values with census's own
    leading spaces in labels, `education-num` absent in about one record in eight."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        record = {name: str(rng.choice(values)) for name, values in CATEGORICAL.items()}
        age = float(rng.integers(17, 80))
        hours = float(rng.integers(10, 70))
        gain = float(rng.choice([0.0, 0.0, 0.0, rng.integers(100, 20000)]))
        record.update({"age": age, "capital-gain": gain, "capital-loss": float(rng.choice([0, 0, 1500])),
                       "hours-per-week": hours})  # fmt: skip
        if rng.random() > 0.125:
            record["education-num"] = float(rng.integers(1, 17))
        logit = (
            0.04 * (age - 40)
            + 0.03 * (hours - 40)
            + (1.0 if record["education"] in ("Masters", "Doctorate") else -0.5)
        )
        record[LABEL] = " >50K" if rng.random() < 1 / (1 + np.exp(-logit)) else " <=50K"
        records.append(record)
    return records


def serialized_examples(records: list[dict], with_label: bool = False) -> list[bytes]:
    """tf.Example bytes for `records`, typed like the raw feature spec (how TFX stores them)."""
    import tensorflow as tf

    out = []
    for record in records:
        feature = {}
        for name in CATEGORICAL:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[record[name].encode()]))
        for name in NUMERIC + OPTIONAL_NUMERIC:
            values = [record[name]] if record.get(name) is not None else []
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        if with_label:
            feature[LABEL] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[record[LABEL].encode()]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def preprocessing_fn(inputs):
    """census_example_v2's preprocessing: scale numbers, one-hot categories (sparse), label."""
    import tensorflow as tf
    import tensorflow_transform as tft

    outputs = inputs.copy()
    for key in NUMERIC:
        outputs[key] = tft.scale_to_0_1(inputs[key])
    for key in OPTIONAL_NUMERIC:
        outputs[key] = tft.scale_to_0_1(inputs[key]).to_tensor(default_value=0.0, shape=[None, 1])
    for key in CATEGORICAL:
        integerized = tft.compute_and_apply_vocabulary(
            tf.strings.strip(inputs[key]), num_oov_buckets=1, vocab_filename=key
        )
        depth = tft.experimental.get_vocabulary_size_by_name(key) + 1
        one_hot = tf.one_hot(
            integerized, depth=tf.cast(depth, tf.int32), on_value=1, off_value=0, dtype=tf.int64
        )
        outputs[key] = tf.sparse.from_dense(tf.reshape(one_hot, [-1, depth]))
        tft.experimental.annotate_sparse_output_shape(outputs[key], depth)
    table_keys = [">50K", "<=50K"]
    with tf.init_scope():
        initializer = tf.lookup.KeyValueTensorInitializer(
            keys=table_keys, values=tf.cast(tf.range(len(table_keys)), tf.int64),
            key_dtype=tf.string, value_dtype=tf.int64,
        )  # fmt: skip
        table = tf.lookup.StaticHashTable(initializer, default_value=-1)
    label = tf.strings.strip(tf.strings.regex_replace(inputs[LABEL], r"\.", ""))
    outputs[LABEL] = tf.reshape(
        tf.one_hot(table.lookup(label), depth=2, on_value=1.0, off_value=0.0), [-1, 2]
    )
    return outputs


def analyze(records: list[dict], work_dir: str) -> str:
    """tf.Transform's analysis on the DirectRunner; returns the transform output directory."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(raw_feature_spec())
    instances = [
        {**r, **{name: [r[name]] if r.get(name) is not None else [] for name in OPTIONAL_NUMERIC}}
        for r in records
    ]
    transform_dir = os.path.join(work_dir, "transform")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(work_dir, "tft_tmp")):
        raw = pipeline | beam.Create(instances, reshuffle=False)
        transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    return transform_dir


def build_census_model(work_dir: str, records: list[dict], epochs: int = 3) -> str:
    """Analyze, train and export; returns the SavedModel directory (TF Serving's `<dir>/1`);
    the transform output is `<work_dir>/transform`."""
    import tensorflow as tf
    import tensorflow_transform as tft
    from tensorflow_transform.keras_lib import tf_keras

    tf.keras.utils.set_random_seed(5)
    output = tft.TFTransformOutput(analyze(records, work_dir))
    tft_layer = output.transform_features_layer()
    spec = raw_feature_spec()

    def transformed(serialized):
        features = tft_layer(tf.io.parse_example(serialized, spec))
        label = features.pop(LABEL)
        return features, label

    data = (
        tf.data.Dataset.from_tensor_slices(serialized_examples(records, with_label=True))
        .batch(64)
        .map(transformed)
    )
    feature_spec = output.transformed_feature_spec().copy()
    feature_spec.pop(LABEL)
    inputs, dense, sparse = {}, [], []
    for key, feature in feature_spec.items():
        if isinstance(feature, tf.io.FixedLenFeature):
            inputs[key] = tf_keras.layers.Input(shape=feature.shape or [1], name=key, dtype=feature.dtype)
            dense.append(inputs[key])
        else:
            inputs[key] = tf_keras.layers.Input(
                shape=feature.size, name=key, dtype=feature.dtype, sparse=True
            )
            sparse.append(tf_keras.layers.Dense(4, activation="relu")(inputs[key]))
    stacked = tf.concat([tf.cast(x, tf.float32) for x in dense] + sparse, axis=1)
    hidden = tf_keras.layers.Dense(16, activation="relu")(stacked)
    model = tf_keras.Model(inputs=inputs, outputs=tf_keras.layers.Dense(2, activation="sigmoid")(hidden))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(data, epochs=epochs, verbose=0)

    model.tft_layer = tft_layer  # tracked, so its vocabularies travel in the SavedModel

    @tf.function
    def serve_tf_examples_fn(serialized_tf_examples):
        parsed = tf.io.parse_example(serialized_tf_examples, raw_feature_spec(with_label=False))
        features = model.tft_layer(parsed)
        features.pop(LABEL, None)
        outputs = model(features)
        classes = tf.tile(tf.constant([CLASS_NAMES]), [tf.shape(outputs)[0], 1])
        return {"classes": classes, "scores": outputs}

    @tf.function
    def transform_features_fn(serialized_tf_examples):
        """TFX's templates export this too: the transformed features, for checks like parity."""
        parsed = tf.io.parse_example(serialized_tf_examples, raw_feature_spec(with_label=False))
        features = model.tft_layer(parsed)
        features.pop(LABEL, None)
        return {
            name: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
            for name, value in features.items()
        }

    serving = serve_tf_examples_fn.get_concrete_function(
        tf.TensorSpec(shape=[None], dtype=tf.string, name="inputs")
    )
    transform = transform_features_fn.get_concrete_function(
        tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")
    )
    export_dir = os.path.join(work_dir, "exported_model_dir", "1")
    model.save(
        export_dir, save_format="tf", signatures={"serving_default": serving, "transform_features": transform}
    )
    return export_dir


def call_signature(model_dir: str, records: list[dict]) -> dict:
    """What the model says for `records`, asked directly: the reference predictions."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    outputs = signature(inputs=tf.constant(serialized_examples(records)))
    return {name: tensor.numpy() for name, tensor in outputs.items()}
