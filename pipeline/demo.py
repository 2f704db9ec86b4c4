"""`adpredict demo`: the whole flow on generated data, on the DirectRunner, with no cloud.

WORK_DIR/data/       generated training records (JSONL) and records to score, the same
                     number in each of JSONL, CSV, Parquet and TFRecord
WORK_DIR/transform/  tf.Transform artifacts and transformed train/eval data
WORK_DIR/model/      the exported all-in-one model directory
WORK_DIR/predictions/ prediction.results-*, errors-*, prediction.errors_stats, run.json
"""

from __future__ import annotations

import os
import time

SCORE_FILES = {"jsonl": ("score.jsonl", 101), "csv": ("score.csv", 102), "parquet": ("score.parquet", 103),
               "tfrecord": ("score.tfrecord.gz", 104)}  # fmt: skip


def run_demo(work_dir: str, records: int = 5000, seed: int = 0) -> dict:
    from pipeline import analyze, predict
    from pipeline.inference.exported import measure_export
    from pipeline.reporting.terminal import held_out_auc, worker_lines
    from pipeline.sampledata.generate import generate_file
    from pipeline.trainer.train import train_and_export
    from transforms.schema import load_schema

    started = time.time()
    work_dir = os.path.abspath(work_dir)
    data_dir = os.path.join(work_dir, "data")
    transform_dir = os.path.join(work_dir, "transform")
    model_dir = os.path.join(work_dir, "model")
    predictions_dir = os.path.join(work_dir, "predictions")

    per_file = records // (2 * len(SCORE_FILES))
    _step(
        "generate", f"{records} training records and {per_file} to score in each of {', '.join(SCORE_FILES)}"
    )
    generate_file(os.path.join(data_dir, "train.jsonl"), records, seed=seed)
    for index, (fmt, (name, score_seed)) in enumerate(SCORE_FILES.items()):
        generate_file(
            os.path.join(data_dir, name),
            per_file,
            seed=score_seed + seed,
            fmt=fmt,
            first_id=records + index * per_file,  # keys unique across all demo files
        )

    _step("analyze", "tf.Transform AnalyzeDataset + TransformDataset (Beam DirectRunner)")
    analyze.run(
        [
            "--schema",
            "ads",
            "--input",
            os.path.join(data_dir, "train.jsonl"),
            "--output_dir",
            transform_dir,
        ]
    )

    _step(
        "train + export",
        "Keras model on the transformed data; transform graph attached",
    )
    metrics = train_and_export(transform_dir, load_schema("ads"), model_dir, seed=seed)
    metrics.update(measure_export(model_dir, transform_dir, load_schema("ads")))

    _step("predict", f"Beam batch prediction on {', '.join(SCORE_FILES)} inputs")
    inputs = [arg for name, _ in SCORE_FILES.values() for arg in ("--input", os.path.join(data_dir, name))]
    manifest = predict.run(["--model_dir", model_dir, *inputs, "--output_dir", predictions_dir])
    counts = manifest["counts"]
    quality = manifest.get("quality", {})
    checks = quality.get("checks", [])
    print(
        "\n== adpredict demo summary ==\n"
        f"model:        {model_dir}\n"
        f"  AUC {held_out_auc(metrics)}\n"
        f"predictions:  {os.path.join(predictions_dir, 'prediction.results-*')}\n"
        f"errors:       {os.path.join(predictions_dir, 'errors-*')}\n"
        f"manifest:     {os.path.join(predictions_dir, 'run.json')}\n"
        f"records read {counts['read']} = predicted {counts['predictions']} + errors {counts['errors']}\n"
        f"ran on:       {'; '.join(worker_lines(manifest))}\n"
        f"data quality: {quality.get('verdict', 'off')} ({len(checks)} checks against the training "
        f"profile; report: {os.path.join(predictions_dir, 'report.html')})\n"
        f"predict took {manifest['timings']['seconds']} s; whole demo {time.time() - started:.1f} s"
    )
    return {"metrics": metrics, "manifest": manifest}


def _step(name: str, what: str) -> None:
    print(f"-- {name}: {what}", flush=True)
