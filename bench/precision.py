"""bf16 against fp32 on this CPU, per benchmark model: the bare model and where the time goes.

    python -m bench.precision [--work_dir DIR] [--models light,demo,heavy] [--quick] [--reuse]

For each model (bench/models.py), in one process and interleaved so a busy moment of the
machine favours neither: the bare model's records/s in fp32 and under oneDNN's bf16 rewrite
(`pipeline.inference.precision`), at the model's tuned batch size, over the same in-memory
batches; the largest output change; what `--precision auto` would choose here; then
`adpredict predict`'s marginal rate with `--precision fp32` and with `auto` (the default),
each against the fp32 bare model (`auto` must never be the slower of the two). With
`--profile`, a per-op profile of one bf16 and one fp32 call of each model (TensorFlow's
profiler: time per op type), the figure to read on a CPU where bf16 does not pay. Prints the
CPU and its kind (amx / avx512_bf16 / no_bf16); the issue's AMX targets are read on an AMX CPU.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import tempfile
import time

from bench.models import build_model_dir
from bench.throughput import generate_shards, marginal, pipeline_runs

PIPELINE_RECORDS = {
    "light": (100_000, 1_000_000),
    "demo": (4_000, 20_000),
    "heavy": (500, 2_500),
}  # small, large

TARGETS = {"heavy": 2.0, "demo": 1.3}  # bf16 / fp32 wanted on an AMX CPU (issue 23)


def bare_rates(model, batch, rows: int, seconds: float) -> dict:
    from pipeline.inference.precision import BF16, FP32
    from pipeline.inference.precision_check import measure_speed

    speed = measure_speed(lambda precision, b: model.outputs_in(precision, b), batch, rows, seconds)
    return {FP32: speed[FP32], BF16: speed[BF16]}


def op_profile(model, batch, precision: str, calls: int = 3) -> list:
    """(op type, ms per call, share) of the ops TensorFlow's profiler saw in `calls` calls."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    model.outputs_in(precision, batch)
    logdir = tempfile.mkdtemp(prefix="adpredict-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            model.outputs_in(precision, batch)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    per_op = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op = name.rsplit(":", 1)[-1].strip()
                if ":" in name and op not in ("Process", "Run") and "__inference" not in name:
                    per_op[op] += event.duration_ps  # "node:OpType" events; not the executor's own
    total = sum(per_op.values()) or 1
    return [(op, ps / calls / 1e9, ps / total) for op, ps in per_op.most_common(8)]


def measure(model_dir: str, schema_path: str, seconds: float, profile: bool) -> dict:
    from pipeline.inference.devices import this_cpu
    from pipeline.inference.model import LoadedModel
    from pipeline.inference.precision import AUTO, BF16, FP32, decide, read_precision_record
    from pipeline.inference.precision_check import scored_both_ways
    from pipeline.inference.tuning import first_rows, sample_table
    from transforms.schema import load_schema

    model = LoadedModel(model_dir)
    rows = model.description.batch_size
    batch = first_rows(sample_table(load_schema(schema_path), rows), rows)
    fp32, bf16 = scored_both_ways(model, batch)
    found = {
        "batch_size": rows,
        "records_per_second": bare_rates(model, batch, rows, seconds),
        "output_change": max(float(abs(fp32[k] - bf16[k]).max()) for k in fp32),
        "auto": decide(AUTO, read_precision_record(model_dir), this_cpu(), model_dir).reason,
    }
    if profile:
        found["ops"] = {p: op_profile(model, batch, p) for p in (FP32, BF16)}
    rates = found["records_per_second"]
    found["ratio"] = rates[BF16] / max(rates[FP32], 1)
    return found


def pipeline_marginals(work_dir: str, name: str, model_dir: str, schema_path: str, quick: bool) -> dict:
    """predict's marginal rate and fixed cost with --precision fp32 and auto, on the same files."""
    small, large = ((n // 10 if quick else n) // 4 * 4 for n in PIPELINE_RECORDS[name])  # 4 files each
    found = {}
    for precision in ("fp32", "auto"):
        rates = {}
        for records in (small, large):
            data = os.path.join(work_dir, f"{name}_precision_{records}")
            if not os.path.isdir(data):
                generate_shards(data, schema_path, records, 4, seed=21)
            out = os.path.join(work_dir, f"{name}_precision_out_{precision}_{records}")
            runs = pipeline_runs(model_dir, os.path.join(data, "*.jsonl"), out, records, 1 if quick else 2,
                                 ["--precision", precision])  # fmt: skip
            rates[records] = runs["runs"]
        with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
            ran = json.load(f)["workers"][0]["precision"]
        found[precision] = {**marginal(small, rates[small], large, rates[large]), "ran": ran}
    return found


def report(cpu: dict, results: dict) -> str:
    lines = [f"CPU: {cpu['name']} ({cpu['kind']}; {', '.join(cpu['features']) or 'no bf16 features'})", ""]
    lines.append(f"{'model':<7} {'batch':>6} {'fp32 rec/s':>11} {'bf16 rec/s':>11} {'bf16/fp32':>9} "
                 f"{'max |Δ|':>8}  target (AMX)")  # fmt: skip
    for name, r in results.items():
        rates = r["records_per_second"]
        target = TARGETS.get(name)
        wanted = f"≥ {target:.1f}x" if target else "no slower"
        met = "" if cpu["kind"] == "amx" or not target else " (no AMX here: not judged)"
        lines.append(f"{name:<7} {r['batch_size']:>6} {rates['fp32']:>11,.0f} {rates['bf16']:>11,.0f} "
                     f"{r['ratio']:>8.2f}x {r['output_change']:>8.4f}  {wanted}{met}")  # fmt: skip
    for name, r in results.items():
        lines.append(f"  {name}: --precision auto here: {r['auto']}")
    for name, r in results.items():
        bare = r["records_per_second"]["fp32"]
        for precision, m in (r.get("pipeline") or {}).items():
            lines.append(f"  {name} predict --precision {precision} (ran {m['ran']}): marginal "
                         f"{m['records_per_s']:,.0f} records/s = {m['records_per_s'] / bare:.2f}x fp32 bare, "
                         f"fixed {m['fixed_s']:.2f} s")  # fmt: skip
        if r.get("pipeline"):
            auto, fp32 = (r["pipeline"][p]["records_per_s"] for p in ("auto", "fp32"))
            lines.append(
                f"  {name} predict auto / fp32: {auto / fp32:.2f}x (auto is the default: it must not be < 1)"
            )
    for name, r in results.items():
        for precision, ops in (r.get("ops") or {}).items():
            shown = ", ".join(f"{op} {ms:.1f} ms ({share:.0%})" for op, ms, share in ops)
            lines.append(f"  {name} {precision} per call: {shown}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from pipeline.inference.devices import this_cpu

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work_dir", default=os.path.join(tempfile.gettempdir(), "adpredict-bench-precision")
    )
    parser.add_argument("--models", default="light,demo,heavy")
    parser.add_argument("--quick", action="store_true", help="a smoke test of the script, not a measurement")
    parser.add_argument("--reuse", action="store_true", help="reuse models built in --work_dir")
    parser.add_argument("--profile", action="store_true", help="add a per-op profile of each model")
    parser.add_argument("--no_pipeline", action="store_true", help="bare model only, no predict runs")
    args, _ = parser.parse_known_args(argv)
    results = {}
    for name in args.models.split(","):
        model_dir = os.path.join(args.work_dir, name, "model")
        schema_path = os.path.join(args.work_dir, name, f"ads_{name}.yaml")
        if not (args.reuse and os.path.exists(model_dir)):
            shutil.rmtree(os.path.join(args.work_dir, name), ignore_errors=True)
            schema_path, model_dir = build_model_dir(args.work_dir, name, 600 if args.quick else 4000)
        started = time.time()
        results[name] = measure(model_dir, schema_path, 1.0 if args.quick else 6.0, args.profile)
        if not args.no_pipeline:
            results[name]["pipeline"] = pipeline_marginals(
                args.work_dir, name, model_dir, schema_path, args.quick
            )
        results[name]["seconds"] = round(time.time() - started, 1)
    cpu = this_cpu().as_dict()
    print(report(cpu, results))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"precision-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"cpu": cpu, "results": results}, f, indent=1)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
