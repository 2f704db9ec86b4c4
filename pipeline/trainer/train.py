"""Training on tf.Transform's output, held-out AUC, and export of the all-in-one model.

Reads `ANALYZE_OUTPUT/transformed/{train,eval}-*.tfrecord.gz` (what `TransformDataset`
wrote), trains the Keras model, reports the AUC on the held-out split and, with
`compare_blank_image`, the AUC of the same model trained and evaluated with every image
blanked, which shows how much the image tower contributes. Then exports the model
directory with the transform graph attached.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from pipeline.run_contract import DATA_PROFILE, RUN_MANIFEST, SUCCEEDED, InputError, errors_stats_file
from pipeline.trainer.model import build_model
from transforms.data_profile import outputs_profile
from transforms.export import export_model
from transforms.metrics import roc_auc
from transforms.model_contract import OUTPUT_NAME, TRAINING_METRICS_FILE, TRAINING_PROFILE_FILE
from transforms.schema import IMAGE, Schema, load_schema, parse_schema

# Predict batch size recorded when none is given; `adpredict train` then times the exported
# model (pipeline.inference.tuning) and records the fastest instead.
DEFAULT_BATCH_SIZE = 256


@dataclasses.dataclass
class TrainingResult:
    model: keras.Model
    eval_auc: float
    eval_records: int
    train_records: int
    eval_scores: np.ndarray  # the model's outputs on the eval split


def make_dataset(transform_dir: str, split: str, schema: Schema, batch_size: int, blank_images: bool):
    files = sorted(glob.glob(os.path.join(transform_dir, "transformed", f"{split}-*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(
            f"no transformed {split} data under {transform_dir}/transformed; run `adpredict analyze` first"
        )
    spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    image_names = [f.name for f in schema.features if f.type == IMAGE]

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        label = features.pop(schema.label)
        if blank_images:
            for name in image_names:
                features[name] = tf.zeros_like(features[name])
        return features, label

    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).cache()


def _check_analyze_succeeded(transform_dir: str) -> None:
    """Refuses the output of an analyze run that failed its error threshold (see its run.json)."""
    manifest = _analyze_manifest(transform_dir)
    if manifest and manifest.get("status") != SUCCEEDED:  # no run.json: analyze from before it wrote one
        counts = manifest.get("counts", {})
        raise InputError(
            f"analyze of {transform_dir!r} ended {manifest.get('status')!r} ({counts.get('errors')} of "
            f"{counts.get('read')} records were errors; see its run.json and {errors_stats_file(manifest)}): "
            "fix the records, or re-run analyze with a higher --max_error_rate if they are acceptable"
        )


def _analyze_manifest(transform_dir: str) -> dict:
    path = os.path.join(transform_dir, RUN_MANIFEST)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def _comparable(schema: Schema) -> Schema:
    return dataclasses.replace(schema, path="")


def schema_for_training(transform_dir: str, schema_arg: str | None = None) -> Schema:
    """The schema analyze used for `transform_dir` (its run.json keeps the file), or
    `schema_arg` when given, which must then be that schema.

    Without a record (analyze output from before it kept one) `schema_arg` or `ads` is used,
    and `train_model` checks that the transformed data has what the schema declares.
    """
    import yaml

    recorded = _analyze_manifest(transform_dir).get("schema_file")
    used = None
    if recorded:
        used = parse_schema(yaml.safe_load(recorded["text"]), recorded["path"])
    if schema_arg is None:
        return used or load_schema("ads")
    schema = load_schema(schema_arg)
    if used is not None and _comparable(used) != _comparable(schema):
        raise InputError(
            f"--schema {schema_arg!r} is not the schema `adpredict analyze` used for {transform_dir!r} "
            f"({recorded['path']}, kept in its run.json): leave --schema out to train with that one, or "
            f"re-run analyze with --schema {schema_arg}"
        )
    return schema


def _check_transformed_matches(transform_dir: str, schema: Schema, spec: dict) -> None:
    """The transformed data must hold the label and every feature the schema declares."""
    from transforms.preprocessing import transformed_feature_names

    wanted = transformed_feature_names(schema) + ([schema.label] if schema.label else [])
    absent = [name for name in wanted if name not in spec]
    if not schema.label or absent:
        problem = f"lacks {absent}" if absent else "has no label"
        raise InputError(
            f"the analyze output in {transform_dir!r} {problem}, which schema {schema.path or schema.name!r} "
            "declares: pass the --schema that `adpredict analyze` was run with"
            if schema.label
            else f"schema {schema.path or schema.name!r} declares no label (label: {{field: <name>}}); "
            "training needs one"
        )


def train_model(
    transform_dir: str,
    schema: Schema,
    epochs: int = 12,
    batch_size: int = 64,
    seed: int = 0,
    blank_images: bool = False,
    image_tower: str = "small",
) -> TrainingResult:
    keras.utils.set_random_seed(seed)
    if not tf.io.gfile.exists(os.path.join(transform_dir, tft.TFTransformOutput.TRANSFORMED_METADATA_DIR)):
        raise FileNotFoundError(
            f"--transform_dir {transform_dir!r} holds no tf.Transform output (no "
            f"{tft.TFTransformOutput.TRANSFORMED_METADATA_DIR}/); give the --output_dir of `adpredict analyze`"
        )
    _check_analyze_succeeded(transform_dir)
    spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()
    _check_transformed_matches(transform_dir, schema, spec)
    model = build_model(spec, schema.label, image_tower=image_tower)
    train = make_dataset(transform_dir, "train", schema, batch_size, blank_images)
    evaluation = make_dataset(transform_dir, "eval", schema, 1024, blank_images)
    labels = np.concatenate([y.numpy() for _, y in evaluation] or [np.zeros(0, np.int64)])
    if len(np.unique(labels)) < 2:  # checked before training: no AUC could be computed
        found = f"{len(labels)} records, all with {schema.label} {labels[0]}" if len(labels) else "no records"
        raise InputError(
            f"the held-out split in {transform_dir}/transformed has {found}: the AUC needs both labels; run "
            "`adpredict analyze` on records of both labels (more records, or a larger --eval_percent)"
        )
    model.fit(train.shuffle(64, seed=seed), epochs=epochs, verbose=0)
    scores = model.predict(evaluation, verbose=0).reshape(-1)
    train_records = sum(int(y.shape[0]) for _, y in train)
    return TrainingResult(model, roc_auc(labels, scores), len(labels), train_records, scores)


def train_and_export(
    transform_dir: str,
    schema: Schema,
    export_dir: str,
    epochs: int = 12,
    seed: int = 0,
    compare_blank_image: bool = True,
    batch_size: int | None = None,
    image_tower: str = "small",
) -> dict:
    """Trains, evaluates, exports; returns (and stores in the model) the metrics.

    The model directory records `batch_size` (or DEFAULT_BATCH_SIZE) as its predict batch
    size; timing the exported model for a better one is the caller's step, since it runs
    the model the way `predict` does.
    """
    result = train_model(transform_dir, schema, epochs=epochs, seed=seed, image_tower=image_tower)
    metrics = {
        "eval_auc": round(result.eval_auc, 4),
        "eval_records": result.eval_records,
        "train_records": result.train_records,
        "epochs": epochs,
    }
    has_image = any(f.type == IMAGE for f in schema.features)
    if compare_blank_image and has_image:
        blank = train_model(
            transform_dir, schema, epochs=epochs, seed=seed, blank_images=True, image_tower=image_tower
        )
        metrics["eval_auc_blank_image"] = round(blank.eval_auc, 4)
        metrics["image_auc_gain"] = round(result.eval_auc - blank.eval_auc, 4)
    logging.info("training metrics: %s", metrics)
    export_model(result.model, transform_dir, schema, export_dir, batch_size=batch_size or DEFAULT_BATCH_SIZE)
    with tf.io.gfile.GFile(os.path.join(export_dir, TRAINING_METRICS_FILE), "w") as f:
        f.write(json.dumps(metrics, indent=2))
    write_training_profile(transform_dir, export_dir, result.eval_scores)
    return metrics


def write_training_profile(transform_dir: str, export_dir: str, eval_scores: np.ndarray) -> bool:
    """Stores analyze's profile of the training records, plus the model's outputs on the eval
    split, as the model's training profile (what every run's data-quality gate compares
    with); returns False when analyze wrote no profile (output of an older analyze)."""
    path = os.path.join(transform_dir, DATA_PROFILE)
    if not tf.io.gfile.exists(path):
        logging.warning("%s does not exist: the model gets no training profile (runs skip skew checks)", path)
        return False
    with tf.io.gfile.GFile(path) as f:
        profile = json.loads(f.read())
    profile["outputs"] = outputs_profile({OUTPUT_NAME: np.asarray(eval_scores).reshape(-1)})
    with tf.io.gfile.GFile(os.path.join(export_dir, TRAINING_PROFILE_FILE), "w") as f:
        f.write(json.dumps(profile, indent=1))
    return True
