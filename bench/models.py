"""The two benchmark models, built from the `ads` schema so they share its feature facts.

- light: `ads` without the image feature; the tabular model trained for a couple of
  epochs. Scoring it is bound by parsing and data movement, not arithmetic.
- heavy: `ads` with creatives at 128x128 and a MobileNetV2 image tower (random weights;
  throughput does not depend on them). Scoring it is bound by the CNN.
- demo: `ads` as it is, the small CNN on 32x32 creatives that `make demo` trains.
"""

from __future__ import annotations

import copy
import os

import yaml

from transforms.schema import builtin_schema_path

HEAVY_IMAGE_SIZE = 128


def write_variant_schema(work_dir: str, variant: str) -> str:
    """Writes the `ads` schema changed for `variant` (light | heavy | demo); returns its path."""
    with open(builtin_schema_path("ads"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc = copy.deepcopy(doc)
    if variant == "light":
        doc["features"] = [f for f in doc["features"] if f["type"] != "image"]
    elif variant == "heavy":
        for feature in doc["features"]:
            if feature["type"] == "image":
                feature["height"] = feature["width"] = HEAVY_IMAGE_SIZE
                feature["sample"] = dict(feature.get("sample", {}), size=HEAVY_IMAGE_SIZE)
    elif variant != "demo":
        raise ValueError(f"unknown model variant {variant!r}")
    doc["name"] = f"ads_{variant}"
    path = os.path.join(work_dir, f"ads_{variant}.yaml")
    os.makedirs(work_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def build_model_dir(work_dir: str, variant: str, train_records: int) -> tuple[str, str]:
    """Generates training data, runs analyze, trains (light) or initialises (heavy), exports.

    Returns (schema path, model directory).
    """
    from pipeline import analyze
    from pipeline.inference.exported import measure_export
    from pipeline.sampledata.generate import generate_file
    from pipeline.trainer.train import train_and_export
    from transforms.schema import load_schema

    variant_dir = os.path.join(work_dir, variant)
    schema_path = write_variant_schema(variant_dir, variant)
    train_file = os.path.join(variant_dir, "train.jsonl")
    generate_file(train_file, train_records, seed=7, schema=schema_path)
    transform_dir = os.path.join(variant_dir, "transform")
    analyze.run(["--schema", schema_path, "--input", train_file, "--output_dir", transform_dir])
    model_dir = os.path.join(variant_dir, "model")
    train_and_export(
        transform_dir,
        load_schema(schema_path),
        model_dir,
        epochs=1 if variant == "heavy" else 2,
        compare_blank_image=False,
        image_tower="mobilenet_v2" if variant == "heavy" else "small",
    )
    measure_export(model_dir, transform_dir, load_schema(schema_path))  # as `adpredict train` does
    return schema_path, model_dir
