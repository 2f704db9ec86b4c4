"""Training on tf.Transform's output, held-out AUC, and export of the all-in-one model.

Reads `ANALYZE_OUTPUT/transformed/{train,eval}-*.tfrecord.gz` (what `TransformDataset`
wrote), trains the Keras model, reports the AUC on the held-out split (or, where that split
lacks a label, why there is none: a small sample still gives a model) and, with
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
import sys

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
    eval_auc: float | None  # None: undefined, see auc_undefined
    eval_records: int
    train_records: int
    eval_scores: np.ndarray  # the model's outputs on the eval split
    auc_undefined: str | None = None  # why the held-out split gives no AUC


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
    labels = _labels_of(evaluation)
    train_labels = _labels_of(train)
    model.fit(train.shuffle(64, seed=seed), epochs=epochs, verbose=0)
    scores = model.predict(evaluation, verbose=0).reshape(-1) if len(labels) else np.zeros(0, np.float32)
    undefined = auc_undefined_reason(labels, train_labels, schema.label)
    auc = None if undefined else roc_auc(labels, scores)
    return TrainingResult(model, auc, len(labels), len(train_labels), scores, undefined)


def _labels_of(dataset) -> np.ndarray:
    return np.concatenate([y.numpy().reshape(-1) for _, y in dataset] or [np.zeros(0, np.int64)])


def auc_undefined_reason(eval_labels: np.ndarray, train_labels: np.ndarray, label: str) -> str | None:
    """Why the held-out split gives no AUC (it needs both labels), or None when it does.

    Small samples get there (one record of the minority label stays in training), so
    training goes on and the reason is reported instead of stopping.
    """
    held_out = np.unique(eval_labels)
    if len(held_out) == 2:
        return None
    if not len(held_out):
        return (
            "the held-out split is empty (analyze ran with --eval_percent 0, or no label had 2 or more "
            "records): analyze more records to measure the model"
        )
    value = int(held_out[0])
    other = int(np.sum(train_labels != value))
    found = f"the held-out split has {len(eval_labels)} records, all with {label} {value}"
    if not other:
        return f"{found}, as have all training records: analyze records of both labels to measure the model"
    if other == 1:
        return (
            f"{found}; the only record with {label} {1 - value} is in training: a held-out split with both "
            "labels needs 2 or more records of each, so analyze more records"
        )
    return (
        f"{found}, though {other} training records have {label} {1 - value}: re-run `adpredict analyze`, "
        "whose split holds out records of each label"
    )


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

    Where the held-out split lacks a label, `eval_auc` is None and `eval_auc_undefined` says
    why (also on stderr); no blanked-image model is trained then, as there is no AUC to compare.

    The model directory records `batch_size` (or DEFAULT_BATCH_SIZE) as its predict batch
    size; timing the exported model for a better one is the caller's step, since it runs
    the model the way `predict` does.
    """
    result = train_model(transform_dir, schema, epochs=epochs, seed=seed, image_tower=image_tower)
    metrics = {
        "eval_auc": None if result.eval_auc is None else round(result.eval_auc, 4),
        "eval_records": result.eval_records,
        "train_records": result.train_records,
        "epochs": epochs,
    }
    if result.auc_undefined:
        metrics["eval_auc_undefined"] = result.auc_undefined
        print(
            f"adpredict train: warning: the held-out AUC is undefined: {result.auc_undefined}",
            file=sys.stderr,
        )
    has_image = any(f.type == IMAGE for f in schema.features)
    if compare_blank_image and has_image and result.eval_auc is not None:
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
