"""The exported model directory: hermetic, two serving signatures, training/serving parity."""

import json
import shutil
import subprocess
import sys
import textwrap

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.testing.util import assert_that

from pipeline.analyze import tensor_adapter_config, to_tfxio_batch, training_layout
from pipeline.blocks import LINE_COLUMN, RecordBlock
from pipeline.inference.tensors import model_inputs
from transforms.model_contract import TRANSFORM_SIGNATURE, description_from_schema
from transforms.preprocessing import transformed_feature_names
from transforms.schema import load_schema

SAMPLE = 24

# Runs in a fresh interpreter that imports only TensorFlow: the model must need nothing else.
HERMETIC_SCRIPT = textwrap.dedent(
    """
    import base64, json, sys
    import tensorflow as tf
    model_dir, records_path = sys.argv[1], sys.argv[2]
    records = [json.loads(line) for line in open(records_path)]
    model = tf.saved_model.load(model_dir)
    raw = model.signatures["serving_default"](
        age=tf.constant([r["age"] for r in records], tf.int64),
        gender=tf.constant([r["gender"] for r in records]),
        media=tf.constant([r["media"] for r in records]),
        interests=tf.ragged.constant([r.get("interests", []) for r in records], tf.string).to_tensor(""),
        bid=tf.constant([r.get("bid", float("nan")) for r in records], tf.float32),
        hour=tf.constant([r["hour"] for r in records], tf.int64),
        image=tf.constant([r["image"] for r in records]),
    )["probability"].numpy()

    def feature(value):
        if isinstance(value, list):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in value]))
        if isinstance(value, str):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        if isinstance(value, float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    examples = [  # as TFX stores them: the image's JPEG/PNG bytes, not base64 text
        tf.train.Example(features=tf.train.Features(feature={
            k: feature(v) if k != "image" else tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[base64.b64decode(v)])) for k, v in r.items() if k not in ("id", "clicked")
        })).SerializeToString()
        for r in records
    ]
    from_examples = model.signatures["serving_tf_example"](examples=tf.constant(examples))["probability"].numpy()
    extra = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow_transform", "apache_beam", "tfx_bsl", "pipeline", "transforms"))
    print(json.dumps({"raw": raw.tolist(), "examples": from_examples.tolist(), "extra_modules": extra}))
    """
)


def read_sample(path, n=SAMPLE):
    with open(path) as f:
        return [json.loads(next(f)) for _ in range(n)]


def sample_block(records, schema):
    layout = training_layout(schema)
    arrow_schema = layout.arrow_schema().append(pa.field(LINE_COLUMN, pa.int64()))
    rows = [{**r, LINE_COLUMN: i + 1} for i, r in enumerate(records)]
    return RecordBlock("sample", pa.RecordBatch.from_pylist(rows, schema=arrow_schema))


def test_exported_model_is_hermetic(trained_ads, tmp_path):
    records = read_sample(trained_ads["data"])
    # Some records without the optional fields, to exercise the missing-value markers.
    for record in records[:4]:
        record.pop("bid", None)
        record.pop("interests", None)
    schema = load_schema("ads")
    block = sample_block(records, schema)
    model = tf.saved_model.load(trained_ads["model"])
    inputs = model_inputs(block.batch, description_from_schema(schema).inputs)
    before = model.signatures["serving_default"](**inputs)["probability"].numpy()

    copied = tmp_path / "model"
    shutil.copytree(trained_ads["model"], copied)
    shutil.rmtree(trained_ads["transform"] + "_moved", ignore_errors=True)
    shutil.move(trained_ads["transform"], trained_ads["transform"] + "_moved")  # transform artifacts gone
    records_path = tmp_path / "records.jsonl"
    records_path.write_text("\n".join(json.dumps(r) for r in records))
    try:
        done = subprocess.run(
            [sys.executable, "-c", HERMETIC_SCRIPT, str(copied), str(records_path)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    finally:
        shutil.move(trained_ads["transform"] + "_moved", trained_ads["transform"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["extra_modules"] == []
    np.testing.assert_allclose(result["raw"], before, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result["examples"], before, rtol=1e-6, atol=1e-7)
    assert len(set(np.round(before, 4))) > 5  # real, varied predictions


def test_training_serving_parity(trained_ads):
    """The exported model's features == tf.Transform's TransformDataset output, per record."""
    schema = load_schema("ads")
    records = read_sample(trained_ads["data"])
    for record in records[:3]:
        record.pop("bid", None)
    block = sample_block(records, schema)
    model = tf.saved_model.load(trained_ads["model"])
    inputs = model_inputs(block.batch, description_from_schema(schema).inputs)
    served = {k: v.numpy() for k, v in model.signatures[TRANSFORM_SIGNATURE](**inputs).items()}
    names = transformed_feature_names(schema)
    assert sorted(served) == sorted(names)

    def check(transformed_rows):
        assert len(transformed_rows) == SAMPLE
        for row_index, row in enumerate(transformed_rows):
            for name in names:
                expected = np.asarray(row[name]).reshape(served[name][row_index].shape)
                if name in ("image", "bid"):  # floats computed from pixels / a z-score
                    np.testing.assert_allclose(served[name][row_index], expected, atol=1e-6)
                else:  # one-hot / multi-hot / indicators come from integers: exact
                    np.testing.assert_array_equal(served[name][row_index], expected)

    with tft_beam.Context(temp_dir=str(trained_ads["work"] / "parity_tmp")):
        with beam.Pipeline() as p:
            transform_fn = p | tft_beam.ReadTransformFn(trained_ads["transform"])
            raw = p | beam.Create([to_tfxio_batch(block, schema)])
            (transformed, _) = (
                (raw, tensor_adapter_config(schema)),
                transform_fn,
            ) | tft_beam.TransformDataset()
            assert_that(transformed | beam.combiners.ToList(), lambda lists: check(lists[0]))


def test_export_folds_batch_norms_into_their_convolutions_with_the_same_outputs():
    """transforms.batchnorm_folding on the MobileNetV2 tower adpredict trains (nested model),
    with batch-norm statistics far from their initial values so that folding them matters."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.trainer.model import build_model
    from transforms.batchnorm_folding import fold_batch_norms

    spec = {
        "age": tf.io.FixedLenFeature([1], tf.float32),
        "image": tf.io.FixedLenFeature([32, 32, 3], tf.float32),
        "clicked": tf.io.FixedLenFeature([], tf.int64),
    }
    model = build_model(spec, "clicked", image_tower="mobilenet_v2")
    rng = np.random.default_rng(3)
    (backbone,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        gamma, beta, mean, variance = layer.get_weights()
        layer.set_weights([gamma * rng.uniform(0.5, 1.5, gamma.shape), beta + rng.normal(0, 0.1, beta.shape),
                           mean + rng.normal(0, 0.1, mean.shape), variance * rng.uniform(0.5, 2, variance.shape)])  # fmt: skip
    folded = fold_batch_norms(model)
    (folded_backbone,) = [layer for layer in folded.layers if isinstance(layer, keras.Model)]
    assert len(norms) == 52 and not any(
        isinstance(x, keras.layers.BatchNormalization) for x in folded_backbone.layers
    )
    inputs = {"age": rng.random((16, 1), np.float32), "image": rng.random((16, 32, 32, 3), np.float32)}
    before, after = model(inputs, training=False).numpy(), folded(inputs, training=False).numpy()
    assert np.abs(before - after).max() < 1e-5 and before.std() > 0
    assert fold_batch_norms(folded_backbone) is folded_backbone  # nothing left to fold
    tabular = build_model({"age": spec["age"], "clicked": spec["clicked"]}, "clicked")
    assert fold_batch_norms(tabular) is tabular  # no batch norm: the model itself
