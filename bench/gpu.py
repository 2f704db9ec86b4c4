"""The heavy model on whatever device TensorFlow sees (a GPU where there is one): bare vs predict.

    python -m bench.gpu [--work_dir DIR] [--records 20000] [--runs 2] [--reuse]

Sized to finish in under five minutes on a GPU machine: builds the heavy benchmark model
(MobileNetV2 at 128x128, bench/models.py), sweeps the bare model's batch size on the device
(the sweep a GPU worker runs when it loads the model, `tuning.tune_on_gpu`), then runs
`adpredict predict` on a small and a large input for its marginal rate and fixed cost, and
prints marginal / best bare, with run.json's `workers` (device, batch size chosen there,
precision). On a machine without a GPU it measures the CPU and says so: a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from bench.models import build_model_dir
from bench.throughput import generate_shards, marginal, pipeline_runs


def bare_sweep(model_dir: str, schema_path: str) -> dict:
    from pipeline.inference.model import LoadedModel
    from pipeline.inference.tuning import CANDIDATE_BATCH_SIZES, first_rows, sample_table, sweep_batch_sizes
    from transforms.schema import load_schema

    model = LoadedModel(model_dir)
    table = sample_table(load_schema(schema_path), 4096)
    sizes = [size for size in CANDIDATE_BATCH_SIZES if size <= 4096]
    measured = sweep_batch_sizes(model.predict, lambda size: [first_rows(table, size)], sizes, seconds=1.0)
    return {"gpus": model.gpus, "records_per_second": measured}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "adpredict-bench-gpu"))
    parser.add_argument("--records", type=int, default=20_000, help="records of the large input")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    model_dir = os.path.join(args.work_dir, "heavy", "model")
    schema_path = os.path.join(args.work_dir, "heavy", "ads_heavy.yaml")
    if not (args.reuse and os.path.exists(model_dir)):
        shutil.rmtree(args.work_dir, ignore_errors=True)
        schema_path, model_dir = build_model_dir(args.work_dir, "heavy", 1000)
    built = time.time() - started
    bare = bare_sweep(model_dir, schema_path)
    small, large = max(args.records // 10, 200), args.records
    rates = {}
    for records in (small, large):
        data = os.path.join(args.work_dir, f"score_{records}")
        if not (args.reuse and os.path.isdir(data)):
            generate_shards(data, schema_path, records, 4, seed=5)
        out = os.path.join(args.work_dir, f"out_{records}")
        rates[records] = pipeline_runs(model_dir, os.path.join(data, "*.jsonl"), out, records, args.runs)
    with open(os.path.join(args.work_dir, f"out_{large}", "run.json"), encoding="utf-8") as f:
        workers = json.load(f).get("workers")
    found = marginal(small, rates[small]["runs"], large, rates[large]["runs"])
    best_size, best = max(bare["records_per_second"].items(), key=lambda item: item[1])
    device = ", ".join(bare["gpus"]) or "no GPU: CPU only (a smoke test of this mode, not a GPU figure)"
    print(f"device: {device}")
    print("bare model, records/s by batch size: "
          + ", ".join(f"{size}: {rate:,.0f}" for size, rate in bare["records_per_second"].items()))  # fmt: skip
    print(f"best bare: {best:,.0f} records/s at batch {best_size}")
    print(f"predict: marginal {found['records_per_s']:,.0f} records/s = {found['records_per_s'] / best:.2f}x "
          f"bare; fixed cost {found['fixed_s']:.2f} s ({small:,} -> {large:,} records)")  # fmt: skip
    for worker in workers or ():
        print(f"worker: {worker['device']} {worker['gpus']}, batch {worker['batch_size']}, "
              f"{worker['precision']} ({worker['precision_reason']})")  # fmt: skip
    print(f"model built in {built:.0f} s; whole bench {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
