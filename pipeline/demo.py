"""`adpredict demo`: the whole flow on generated data, on the DirectRunner, with no cloud.

WORK_DIR/data/       generated training records (JSONL) and records to score (JSONL + CSV)
WORK_DIR/transform/  tf.Transform artifacts and transformed train/eval data
WORK_DIR/model/      the exported all-in-one model directory
WORK_DIR/predictions/ prediction.results-*, errors-*, prediction.errors_stats, run.json
"""

from __future__ import annotations

import os
import time

SCORE_SEEDS = {"jsonl": 101, "csv": 102}


def run_demo(work_dir: str, records: int = 5000, seed: int = 0) -> dict:
    from pipeline import analyze, predict
    from pipeline.batch_tuning import tune_batch_size
    from sampledata.generate import generate_file
    from trainer.train import train_and_export
    from transforms.schema import load_schema

    started = time.time()
    work_dir = os.path.abspath(work_dir)
    data_dir = os.path.join(work_dir, "data")
    transform_dir = os.path.join(work_dir, "transform")
    model_dir = os.path.join(work_dir, "model")
    predictions_dir = os.path.join(work_dir, "predictions")

    _step("generate", f"{records} training records and {records // 2} records to score")
    generate_file(os.path.join(data_dir, "train.jsonl"), records, seed=seed)
    for index, (fmt, score_seed) in enumerate(SCORE_SEEDS.items()):
        generate_file(
            os.path.join(data_dir, f"score.{fmt}"),
            records // 4,
            seed=score_seed + seed,
            fmt=fmt,
            first_id=records + index * (records // 4),  # keys unique across all demo files
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
    metrics["predict_batch_size"] = tune_batch_size(model_dir, load_schema("ads"))

    _step("predict", "Beam batch prediction on JSONL and CSV inputs")
    manifest = predict.run(
        [
            "--model_dir",
            model_dir,
            "--input",
            os.path.join(data_dir, "score.jsonl"),
            "--input",
            os.path.join(data_dir, "score.csv"),
            "--output_dir",
            predictions_dir,
        ]
    )
    counts = manifest["counts"]
    print(
        "\n== adpredict demo summary ==\n"
        f"model:        {model_dir}\n"
        f"  held-out AUC {metrics['eval_auc']} (image blanked: {metrics.get('eval_auc_blank_image')})\n"
        f"predictions:  {os.path.join(predictions_dir, 'prediction.results-*')}\n"
        f"errors:       {os.path.join(predictions_dir, 'errors-*')}\n"
        f"manifest:     {os.path.join(predictions_dir, 'run.json')}\n"
        f"records read {counts['read']} = predicted {counts['predictions']} + errors {counts['errors']}\n"
        f"predict took {manifest['timings']['seconds']} s; whole demo {time.time() - started:.1f} s"
    )
    return {"metrics": metrics, "manifest": manifest}


def _step(name: str, what: str) -> None:
    print(f"-- {name}: {what}", flush=True)
