"""Throughput of `adpredict predict` against the bare model and two common patterns.

    python -m bench.throughput [--work_dir DIR] [--runs 3] [--quick]

In one run, on the same machine and the same generated data, for a light (tabular) and a
heavy (MobileNetV2 at 128x128) model, it measures records per second of:

1. bare model: the SavedModel's `serving_default` in a loop on batches already turned
   into tensors, at the best batch size of a sweep; the ceiling.
2. adpredict predict: the real pipeline, files in and files out, DirectRunner, default
   settings; wall time from the start of the run to `_SUCCESS`, interpreter start-up
   reported apart.
3. naive Beam: ReadFromText -> json.loads -> BatchElements -> tensors from dicts ->
   WriteToText (bench/naive_beam.py).
4. peers (bench/peers.py), on the same records as tf.Example TFRecords: TFX BulkInferrer's
   way (tfx_bsl RunInference, `serving_tf_example`) and Beam's RunInference with a keyed
   tfx_bsl model handler; their predictions are checked equal to adpredict's (within the bf16
   check's tolerance: adpredict runs its default `--precision auto`).
5. per-record service: parse one record, one model call, on a sample.
6. adpredict as a Beam library (bench/library.py), on the light and demo models: Beam's
   RunInference with `pipeline.RecordModelHandler`, and `pipeline.ScoreRecords`, each behind
   ReadFromText + json.loads, as marginal rates beside predict's.

plus the pipeline's peak RSS at 100k and 1M light records, a parse-only floor (pyarrow
reading the light files, nothing else), the two steps of the path that floor and the bare model
leave out (input tensors from columns, JSON lines out) and the DirectRunner modes; the heavy
model's marginal rate (2k -> 20k records); the light model's marginal
rate on the same records as Parquet and TFRecord against their own parse floors; and the model
`make demo` trains (small CNN on 32x32 creatives): bare, predict and the two peers as marginal
rates; and the one-file rows (bench/one_file.py, issue 23 §2): the light and demo
records in ONE JSONL file, predict's marginal rate and fixed cost against a whole-file parse
floor (pyarrow, every core) and the bare model. Pipeline and naive
runs each get a fresh interpreter (bench/timed.py). Prints a table and writes
bench/results/throughput-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from bench.library import WAYS as LIBRARY_WAYS
from bench.peers import PEERS, write_examples
from pipeline.inference.precision import MAX_OUTPUT_CHANGE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
MODES = {
    "in_memory (default)": [],
    "multi_threading x2": ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"],
    "multi_processing x2": ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
}


def sizes(quick: bool) -> dict:
    """Records per data set; --quick is a smoke test of the script, not a measurement."""
    if quick:
        return {"light": 100_000, "light_small": 20_000, "heavy": 300, "heavy_small": 100, "demo": 4_000,
                "demo_small": 1_000,
                "files": 4, "service": 100}  # fmt: skip
    return {"light": 1_000_000, "light_small": 100_000, "heavy": 20_000, "heavy_small": 2_000, "demo": 40_000,
            "demo_small": 4_000,
            "files": 8, "service": 300}  # fmt: skip


# ---------------------------------------------------------------- data


def _generate_part(args) -> str:
    path, records, seed, schema, first_id, fmt = args
    from pipeline.sampledata.generate import generate_file

    generate_file(path, records, seed=seed, schema=schema, first_id=first_id, fmt=fmt)
    return path


def generate_shards(directory: str, schema: str, records: int, files: int, seed: int, fmt="jsonl") -> str:
    """`records` records in `files` shards of `fmt` (generated on 2 processes); returns a glob.
    The same arguments in another format give the same records."""
    os.makedirs(directory, exist_ok=True)
    per_file = records // files
    jobs = [
        (os.path.join(directory, f"part-{i:05d}.{fmt}"), per_file, seed + i, schema, i * per_file, fmt)
        for i in range(files)
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_generate_part, jobs))
    return os.path.join(directory, f"*.{fmt}")


# ---------------------------------------------------------------- in-process measurements


def load_table(model_dir: str, pattern: str, max_rows: int | None = None):
    """The records of `pattern` as one Arrow table, read by predict's own reader."""
    import glob

    import pyarrow as pa

    from pipeline.blocks import RecordLayout
    from pipeline.io import read_stream
    from transforms.model_contract import ModelDescription

    description = ModelDescription.read(model_dir)
    layout = RecordLayout(description.inputs, description.key_field, description.key_type)
    batches, rows = [], 0
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as stream:
            for block in read_stream(stream, path, layout, "jsonl"):
                batches.append(block.batch)
                rows += block.batch.num_rows
                if max_rows and rows >= max_rows:
                    return pa.Table.from_batches(batches).slice(0, max_rows)
    return pa.Table.from_batches(batches)


def bare_model(model_dir: str, table, runs: int, seconds: float) -> dict:
    """Sweep of batch sizes, then `runs` timings at the best one; tensors built beforehand."""
    from pipeline.inference.model import LoadedModel
    from pipeline.inference.tensors import model_inputs
    from pipeline.inference.tuning import (
        CANDIDATE_BATCH_SIZES,
        first_rows,
        records_per_second,
        sweep_batch_sizes,
    )

    model = LoadedModel(model_dir)
    inputs = model.description.inputs

    def call(tensors):
        return model.signature(**tensors)

    def make_batches(size: int) -> list:
        rows = min(table.num_rows, max(size * 4, 20_000))
        if size > table.num_rows:
            return []
        return [
            model_inputs(first_rows(table.slice(start), size), inputs)
            for start in range(0, rows - size + 1, size)
        ]

    sweep = sweep_batch_sizes(call, make_batches, CANDIDATE_BATCH_SIZES, seconds=seconds / 2)
    best = max(sweep, key=sweep.get)
    batches = make_batches(best)
    rates = [records_per_second(call, batches, best, seconds)[0] for _ in range(runs)]
    return {"sweep": {str(k): round(v) for k, v in sweep.items()}, "batch_size": best, "runs": rates}


def conversion_and_output(model_dir: str, table, batch_size: int, seconds: float = 2.0) -> dict:
    """Records/s of the two steps of predict's path that neither the parse floor nor the bare
    model covers, each alone on one thread: Arrow columns -> the model's input tensors, and
    model outputs -> JSON lines (the default output)."""
    import numpy as np
    import pyarrow as pa

    from pipeline.blocks import ScoredBlock
    from pipeline.inference.model import LoadedModel, prediction_columns, prediction_layout
    from pipeline.inference.tensors import model_inputs
    from pipeline.inference.tuning import first_rows
    from pipeline.io.jsonl import format_predictions

    model = LoadedModel(model_dir)
    description = model.description
    batches = [first_rows(table.slice(start), batch_size) for start in range(0, table.num_rows, batch_size)]
    key = description.key_field or "id"
    scored = [
        ScoredBlock(
            batch.column(key).cast(pa.string()),
            {
                o.name: np.random.default_rng(0).random(batch.num_rows, np.float32)
                for o in description.outputs
            },
        )
        for batch in batches
    ]
    columns = prediction_columns(description, prediction_layout(description))

    def rate(step, items) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for item in items:
                step(item)
                done += len(item) if isinstance(item, ScoredBlock) else item.num_rows
        return done / (time.perf_counter() - started)

    return {
        "inputs": rate(lambda batch: model_inputs(batch, description.inputs), batches),
        "json_lines": rate(lambda block: format_predictions(block, columns), scored),
    }


def per_record_service(model_dir: str, pattern: str, records: int) -> dict:
    """json.loads one record, build batch-of-one tensors, call the model, dump the answer."""
    import glob

    import tensorflow as tf

    from pipeline.inference.model import LoadedModel

    model = LoadedModel(model_dir)
    description = model.description
    lines = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            lines.extend(line for _, line in zip(range(records - len(lines)), f, strict=False))

    def serve(line: str) -> str:
        record = json.loads(line)
        tensors = {}
        for field in description.inputs:
            value = record.get(field.name)
            if field.type == "string_list":
                tensors[field.name] = tf.constant([value or [""]], tf.string)
            else:
                value = field.fill_value if value is None else value
                dtype = {"int": tf.int64, "float": tf.float32}.get(field.type, tf.string)
                tensors[field.name] = tf.constant([value], dtype)
        probability = float(model.signature(**tensors)["probability"].numpy()[0])
        return json.dumps(
            {"key": record.get(description.key_field), "prediction": {"probability": probability}}
        )

    serve(lines[0])
    started = time.perf_counter()
    for line in lines:
        serve(line)
    return {"records": records, "runs": [records / (time.perf_counter() - started)]}


def parse_floor(model_dir: str, pattern: str, records: int, fmt: str = "jsonl") -> float:
    """Records/s of predict's reader alone (pyarrow, or tfx_bsl for TFRecord) turning files
    already in memory into typed columns: no model, no Beam."""
    import glob

    from pipeline.blocks import RecordLayout
    from pipeline.io import read_stream
    from transforms.model_contract import ModelDescription

    description = ModelDescription.read(model_dir)
    layout = RecordLayout(description.inputs, description.key_field, description.key_type)
    started = time.perf_counter()
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as f:
            data = f.read()
        for _ in read_stream(io.BytesIO(data), path, layout, fmt):
            pass
    return records / (time.perf_counter() - started)


# ---------------------------------------------------------------- subprocess measurements


def timed(job: str, args: list[str]) -> dict:
    env = dict(os.environ, BENCH_SPAWNED_AT=repr(time.time()), TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "bench.timed", job, *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise RuntimeError(f"{job} {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def pipeline_runs(model_dir: str, pattern: str, out: str, records: int, runs: int, extra=()) -> dict:
    results = [
        timed("predict", ["--model_dir", model_dir, "--input", pattern, "--output_dir", out, *extra])
        for _ in range(runs)
    ]
    with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest["counts"]["predictions"] != records or not os.path.exists(os.path.join(out, "_SUCCESS")):
        raise RuntimeError(f"pipeline run in {out} did not score all {records} records: {manifest['counts']}")
    return {
        "runs": [records / r["run_s"] for r in results],
        "startup_s": [r["startup_s"] for r in results],
        "peak_rss_mb": [r["peak_rss_mb"] for r in results],
        "batch_size": manifest["batch_size"],
        "model_loads": manifest["counts"]["model_loads"],
    }


def peer_runs(
    peer: str, model_dir: str, examples: str, out: str, records: int, runs: int, expected: dict
) -> dict:
    """A peer (bench/peers.py) on the same records as tf.Examples; its predictions must be
    adpredict's (`expected`: key -> probability) to within float rounding."""
    from bench.peers import predictions

    results = [
        timed(peer, ["--model_dir", model_dir, "--input", examples, "--output_dir", out]) for _ in range(runs)
    ]
    found = predictions(out)
    if len(found) != records or not set(found) <= set(expected):
        raise RuntimeError(
            f"{peer} scored {len(found):,} keys of {records:,}, or keys adpredict did not score"
        )
    worst = max(abs(found[k] - expected[k]) for k in found)
    # adpredict runs its default --precision auto (bf16 where the model passed its check and
    # bf16 is faster); the peers run fp32: they agree within the check's tolerance.
    if worst > MAX_OUTPUT_CHANGE:
        raise RuntimeError(f"{peer} predictions differ from adpredict's by up to {worst:.3g}")
    return {
        "runs": [records / r["run_s"] for r in results],
        "startup_s": [r["startup_s"] for r in results],
        "max_difference": worst,
    }


def adpredict_predictions(out: str) -> dict:
    import glob

    rows = (
        json.loads(line)
        for path in glob.glob(os.path.join(out, "prediction.results-*"))
        for line in open(path)
    )
    return {row["key"]: row["prediction"]["probability"] for row in rows}


def library_marginals(
    model_dir: str, patterns: dict, work: str, sizes: dict, runs: int, expected: dict
) -> dict:
    """adpredict as a Beam library (bench/library.py) on the JSONL files predict read: each
    way's marginal rate from the small to the large set (`patterns`, `sizes`, `expected`
    predictions keyed "small" and "large")."""
    found = {}
    for way in LIBRARY_WAYS:
        print(f"-- {os.path.basename(work)}: {way} x{runs} on each size", flush=True)
        out = os.path.join(work, way)
        small = peer_runs(way, model_dir, patterns["small"], out, sizes["small"], runs, expected["small"])
        large = peer_runs(way, model_dir, patterns["large"], out, sizes["large"], runs, expected["large"])
        found[way] = {
            **large,
            "marginal": marginal(sizes["small"], small["runs"], sizes["large"], large["runs"]),
        }
    return found


def library_line(label: str, found: dict, predict_marginal: float) -> str:
    ways = {"record_model_handler": "RunInference + RecordModelHandler", "score_records": "ScoreRecords"}
    return (
        f"{label}, adpredict as a Beam library (ReadFromText + json.loads in front), marginal rates: "
        + ", ".join(
            f"{ways[way]} {m['marginal']['records_per_s']:,.0f} records/s = "
            f"{m['marginal']['records_per_s'] / predict_marginal:.3f} x predict's (fixed {m['marginal']['fixed_s']:.2f} s)"
            for way, m in found.items()
        )
    )


def naive_runs(model_dir: str, pattern: str, out: str, records: int, runs: int) -> dict:
    results = [
        timed("naive", ["--model_dir", model_dir, "--input", pattern, "--output_dir", out])
        for _ in range(runs)
    ]
    return {"runs": [records / r["run_s"] for r in results], "startup_s": [r["startup_s"] for r in results]}


def marginal(small: int, small_rates: list, large: int, large_rates: list) -> dict:
    """Marginal rate (large - small) / (time(large) - time(small)) and the fixed cost it
    leaves, time(small) - small / marginal: start-up costs do not hide in the rate."""
    small_s = statistics.median(small / rate for rate in small_rates)
    large_s = statistics.median(large / rate for rate in large_rates)
    rate = (large - small) / (large_s - small_s) if large_s > small_s else float("inf")
    return {
        "records_per_s": rate,
        "fixed_s": small_s - small / rate,
        "small_s": small_s,
        "large_s": large_s,
        "small_records": small,
    }


# ---------------------------------------------------------------- report


def median(values) -> float:
    return statistics.median(values)


def stage_limit(parse_only: float, bare: float) -> float:
    """Records/s of parsing then scoring, one after the other: 1 / (1/parse_only + 1/bare)."""
    return 1 / (1 / parse_only + 1 / bare)


def report(results: dict) -> str:
    lines = []
    for name in ("light", "heavy"):
        r = results[name]
        bare = median(r["bare"]["runs"])
        rows = [
            (f"bare model (batch {r['bare']['batch_size']})", r["bare"]["runs"]),
            (f"adpredict predict (batch {r['pipeline']['batch_size']})", r["pipeline"]["runs"]),
            ("naive Beam", r["naive"]["runs"]),
            *(
                (f"peer: {peer.replace('_', ' ')} ({r[peer]['records']:,})", r[peer]["runs"])
                for peer in PEERS
                if peer in r
            ),
            (f"per-record service ({r['service']['records']} records)", r["service"]["runs"]),
        ]
        lines.append(f"\n{name} model, {r['records']:,} records")
        lines.append(f"  {'method':<36}{'records/s (median)':>20}{'x bare':>9}   runs")
        for label, runs in rows:
            runs_text = ", ".join(f"{v:,.0f}" for v in runs)
            lines.append(f"  {label:<36}{median(runs):>20,.0f}{median(runs) / bare:>9.3f}   {runs_text}")
        startup = median(r["pipeline"]["startup_s"])
        lines.append(
            f"  pipeline start-up (interpreter + imports, not in the figures above): {startup:.2f} s"
        )
        if "parse_floor" in r:
            lines.append(
                f"  parse-only floor (pyarrow JSON -> columns, no model): {r['parse_floor']:,.0f} records/s "
                f"= {r['parse_floor'] / bare:.3f} x bare"
            )
        lines.append(
            "  DirectRunner modes (default: median above; others 1 run each), records/s: "
            + ", ".join(f"{mode} {rate:,.0f}" for mode, rate in r["modes"].items())
        )
        if "marginal" in r:
            m = r["marginal"]
            lines.append(
                f"  adpredict predict, marginal rate ({m['small_records']:,} -> {r['records']:,} records): "
                f"{m['records_per_s']:,.0f} records/s = {m['records_per_s'] / bare:.3f} x bare; "
                f"fixed cost per run {m['fixed_s']:.2f} s"
            )
            for peer in PEERS:
                pm = r[peer]["marginal"]
                lines.append(
                    f"  peer: {peer.replace('_', ' ')}, marginal rate ({pm['small_records']:,} -> "
                    f"{r[peer]['records']:,} records): {pm['records_per_s']:,.0f} records/s; "
                    f"fixed {pm['fixed_s']:.2f} s"
                )
    rss = results["memory"]
    lines.append(
        f"\npeak RSS of the light pipeline: {rss['small_records']:,} records {median(rss['small_mb']):,.0f} MB, "
        f"{rss['large_records']:,} records {median(rss['large_mb']):,.0f} MB "
        f"(ratio {median(rss['large_mb']) / median(rss['small_mb']):.2f})"
    )
    light, heavy = results["light"], results["heavy"]
    heavy_bare = median(heavy["bare"]["runs"])

    def ratio(a, b):
        return median(a["runs"]) / median(b["runs"])

    light_limit = stage_limit(light["parse_floor"], median(light["bare"]["runs"]))
    margin = results["marginal"]
    best_peer_marginal = max(m["records_per_s"] for m in results["peer_marginal"].values())
    lines.append(
        f"light marginal rate ({rss['small_records']:,} -> {rss['large_records']:,} records): "
        f"{margin['records_per_s']:,.0f} records/s; stage limit 1/(1/parse + 1/bare) = {light_limit:,.0f}; "
        f"fixed cost per run (beyond interpreter start-up) {margin['fixed_s']:.2f} s"
    )
    steps = light["other_steps"]

    def in_sequence(parse: float) -> float:
        """Records/s of parse, tensors, model and JSON lines one after the other."""
        return 1 / sum(
            1 / v for v in (parse, steps["inputs"], median(light["bare"]["runs"]), steps["json_lines"])
        )

    lines.append(
        f"  not in the stage limit, each alone: columns -> input tensors {steps['inputs']:,.0f} records/s, "
        f"outputs -> JSON lines {steps['json_lines']:,.0f}; parse, tensors, model and JSON one after "
        f"the other: {in_sequence(light['parse_floor']):,.0f} records/s "
        f"(marginal = {margin['records_per_s'] / in_sequence(light['parse_floor']):.3f} x that)"
    )
    for fmt, f in light.get("formats", {}).items():
        fmt_limit = stage_limit(f["parse_floor"], median(light["bare"]["runs"]))
        f["stage_limit"] = fmt_limit
        lines.append(
            f"light {fmt}: parse floor {f['parse_floor']:,.0f} records/s, stage limit {fmt_limit:,.0f}; "
            f"marginal {f['marginal']['records_per_s']:,.0f} records/s = "
            f"{f['marginal']['records_per_s'] / fmt_limit:.3f} x stage limit "
            f"({f['marginal']['records_per_s'] / in_sequence(f['parse_floor']):.3f} x all steps in sequence); "
            f"fixed {f['marginal']['fixed_s']:.2f} s"
        )
    lines.append(
        "light marginal rates of the peers: "
        + ", ".join(
            f"{peer.replace('_', ' ')} {m['records_per_s']:,.0f} records/s (fixed {m['fixed_s']:.2f} s)"
            for peer, m in results["peer_marginal"].items()
        )
    )
    if results.get("library"):
        lines.append(library_line("light", results["library"], margin["records_per_s"]))
    if results.get("gate"):
        lines.append(gate_line(results["gate"]))
    demo = results.get("demo")
    if demo:
        demo_bare = median(demo["bare"]["runs"])
        demo_limit = stage_limit(demo["parse_floor"], demo_bare)
        lines.append(
            f"\ndemo model (small CNN, 32x32 creatives), marginal rates {demo['small_records']:,} -> "
            f"{demo['records']:,} records"
        )
        lines.append(
            f"  bare model (batch {demo['bare']['batch_size']}) {demo_bare:,.0f} records/s; "
            f"parse floor {demo['parse_floor']:,.0f}; stage limit {demo_limit:,.0f}"
        )
        lines.append(
            f"  adpredict predict (batch {demo['pipeline']['batch_size']}): {demo['marginal']['records_per_s']:,.0f} "
            f"records/s = {demo['marginal']['records_per_s'] / demo_bare:.3f} x bare "
            f"({demo['marginal']['records_per_s'] / demo_limit:.3f} x stage limit); fixed {demo['marginal']['fixed_s']:.2f} s"
        )
        for peer in PEERS:
            lines.append(
                f"  peer: {peer.replace('_', ' ')}: {demo[peer]['marginal']['records_per_s']:,.0f} records/s "
                f"(fixed {demo[peer]['marginal']['fixed_s']:.2f} s)"
            )
        if demo.get("library"):
            lines.append("  " + library_line("demo", demo["library"], demo["marginal"]["records_per_s"]))
    checks = [  # (target, figure, met)
        ("light: marginal >= 0.70 x stage limit", margin["records_per_s"] / light_limit, lambda v: v >= 0.70),
        ("light: fixed cost <= 1.0 s", margin["fixed_s"], lambda v: v <= 1.0),
        (
            "light: marginal >= 30 x best peer's",
            margin["records_per_s"] / best_peer_marginal,
            lambda v: v >= 30,
        ),
        (
            "heavy: marginal >= 1.2 x best peer's",
            heavy["marginal"]["records_per_s"] / max(heavy[p]["marginal"]["records_per_s"] for p in PEERS),
            lambda v: v >= 1.2,
        ),
        (
            "heavy: marginal >= 0.95 x bare",
            heavy["marginal"]["records_per_s"] / heavy_bare,
            lambda v: v >= 0.95,
        ),
        ("light: pipeline >= 5 x naive Beam", ratio(light["pipeline"], light["naive"]), lambda v: v >= 5.0),
        ("RSS(1M) <= 1.3 x RSS(100k)", median(rss["large_mb"]) / median(rss["small_mb"]), lambda v: v <= 1.3),
    ]
    if results.get("gate"):
        gate = results["gate"]
        rate = {label: f["marginal"]["records_per_s"] for label, f in gate.items()}
        cost = 1 - rate["without duplicate keys"] / rate["off"]
        checks.append(("light: gate's profiling costs <= 5% of the rate", cost, lambda v: v <= 0.05))
    checks += [
        (f"light {fmt}: marginal >= 0.70 x its stage limit", f["marginal"]["records_per_s"] / f["stage_limit"],
         lambda v: v >= 0.70)
        for fmt, f in light.get("formats", {}).items()
    ]  # fmt: skip
    if demo:
        demo_marginal = demo["marginal"]["records_per_s"]
        demo_best_peer = max(demo[peer]["marginal"]["records_per_s"] for peer in PEERS)
        checks += [
            ("demo: marginal >= 0.85 x bare", demo_marginal / demo_bare, lambda v: v >= 0.85),
            ("demo: marginal >= 2 x best peer's", demo_marginal / demo_best_peer, lambda v: v >= 2.0),
        ]
    if results.get("one_file"):
        from bench import one_file

        multi = {"light": margin, **({"demo": demo["marginal"]} if demo else {})}
        lines.append(one_file.report(results["one_file"], multi, targets=False))
        checks += one_file.checks(results["one_file"])
    lines.append("\ntargets")
    results["targets"] = {}
    for label, figure, met in checks:
        results["targets"][label] = {"figure": round(figure, 3), "met": met(figure)}
        lines.append(f"  {label:<50} {figure:8.3f}   {'met' if met(figure) else 'MISSED'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def run_bench(work_dir: str, runs: int, quick: bool, reuse: bool = False) -> dict:
    from bench.models import build_model_dir

    n = sizes(quick)
    results: dict = {"started": datetime.datetime.now(datetime.UTC).isoformat(), "runs": runs, "quick": quick}
    for name, train_records in (("light", 20_000), ("heavy", 300)):
        score_dir = os.path.join(work_dir, name, "score")
        model_dir = os.path.join(work_dir, name, "model")
        if reuse and os.path.isdir(model_dir) and os.path.isdir(score_dir):
            print(f"-- {name}: reusing {model_dir} and {score_dir}", flush=True)
            pattern = os.path.join(score_dir, "*.jsonl")
            schema_path = os.path.join(work_dir, name, f"ads_{name}.yaml")
        else:
            print(f"-- {name}: building the model and {n[name]:,} records", flush=True)
            schema_path, model_dir = build_model_dir(work_dir, name, train_records)
            pattern = generate_shards(score_dir, schema_path, n[name], n["files"], seed=100)
        out = os.path.join(work_dir, name, "predictions")
        r: dict = {"records": n[name]}
        print(f"-- {name}: bare model", flush=True)
        table = load_table(model_dir, pattern, 200_000)
        r["bare"] = bare_model(model_dir, table, runs, seconds=3.0)
        print(f"-- {name}: adpredict predict x{runs}", flush=True)
        r["pipeline"] = pipeline_runs(model_dir, pattern, out, n[name], runs)
        expected = adpredict_predictions(out)
        # The heavy peers score a quarter of the files (at ~200 records/s the rest would add
        # half an hour); their rate is still far from fixed costs.
        files = n["files"] if name == "light" else max(1, n["files"] // 4)
        examples = write_examples(pattern, schema_path, os.path.join(work_dir, name, "examples"), files)
        for peer in PEERS:
            print(f"-- {name}: peer {peer} x{runs}", flush=True)
            peer_out = os.path.join(work_dir, name, peer)
            peer_records = n[name] * files // n["files"]
            r[peer] = peer_runs(peer, model_dir, examples, peer_out, peer_records, runs, expected)
            r[peer]["records"] = peer_records
        print(f"-- {name}: naive Beam x{runs}", flush=True)
        r["naive"] = naive_runs(model_dir, pattern, os.path.join(work_dir, name, "naive"), n[name], runs)
        print(f"-- {name}: per-record service", flush=True)
        r["service"] = per_record_service(model_dir, pattern, n["service"])
        print(f"-- {name}: DirectRunner modes", flush=True)
        r["modes"] = {"in_memory (default)": median(r["pipeline"]["runs"])}
        for mode, extra in MODES.items():
            if extra:
                r["modes"][mode] = pipeline_runs(model_dir, pattern, out, n[name], 1, extra)["runs"][0]
        if name == "heavy":  # its fixed cost (MobileNetV2's load and first call) apart too
            small = os.path.join(work_dir, name, "score_small")
            if not (reuse and os.path.isdir(small)):
                generate_shards(small, schema_path, n["heavy_small"], n["files"], seed=200)
            print(f"-- heavy: adpredict predict on {n['heavy_small']:,} records x{runs}", flush=True)
            small_runs = pipeline_runs(model_dir, os.path.join(small, "*.jsonl"), out, n["heavy_small"], runs)
            r["marginal"] = marginal(n["heavy_small"], small_runs["runs"], n[name], r["pipeline"]["runs"])
            small_expected = adpredict_predictions(out)
            small_examples = write_examples(
                os.path.join(small, "*.jsonl"),
                schema_path,
                os.path.join(work_dir, name, "examples_small"),
                files,
            )
            for peer in PEERS:
                print(f"-- heavy: peer {peer} on a quarter of the small set x{runs}", flush=True)
                small_records = n["heavy_small"] * files // n["files"]
                peer_out = os.path.join(work_dir, name, f"{peer}_small")
                peer_small = peer_runs(
                    peer, model_dir, small_examples, peer_out, small_records, runs, small_expected
                )
                r[peer]["marginal"] = marginal(
                    small_records, peer_small["runs"], r[peer]["records"], r[peer]["runs"]
                )
        if name == "light":
            r["parse_floor"] = parse_floor(model_dir, pattern, n[name])
            r["other_steps"] = conversion_and_output(model_dir, table, r["pipeline"]["batch_size"])
            small = generate_shards(
                os.path.join(work_dir, name, "score_small"),
                schema_path,
                n["light_small"],
                n["files"],
                seed=200,
            )
            print(f"-- memory: pipeline on {n['light_small']:,} records x{runs}", flush=True)
            small_runs = pipeline_runs(model_dir, small, out, n["light_small"], runs)
            results["marginal"] = marginal(
                n["light_small"], small_runs["runs"], n[name], r["pipeline"]["runs"]
            )
            small_expected = adpredict_predictions(out)
            small_examples = write_examples(
                small, schema_path, os.path.join(work_dir, name, "examples_small")
            )
            results["peer_marginal"] = {}
            for peer in PEERS:
                print(f"-- marginal: peer {peer} on {n['light_small']:,} records x{runs}", flush=True)
                peer_small = peer_runs(
                    peer, model_dir, small_examples, os.path.join(work_dir, name, f"{peer}_small"),
                    n["light_small"], runs, small_expected,
                )  # fmt: skip
                results["peer_marginal"][peer] = marginal(
                    n["light_small"], peer_small["runs"], n[name], r[peer]["runs"]
                )
            results["library"] = library_marginals(
                model_dir, {"small": small, "large": pattern}, os.path.join(work_dir, name),
                {"small": n["light_small"], "large": n[name]}, runs, {"small": small_expected, "large": expected},
            )  # fmt: skip
            print(f"-- light: data-quality gate on and off x{runs}", flush=True)
            results["gate"] = gate_cost(model_dir, pattern, small, out, n, runs)
            results["memory"] = {
                "small_records": n["light_small"],
                "small_mb": small_runs["peak_rss_mb"],
                "large_records": n[name],
                "large_mb": r["pipeline"]["peak_rss_mb"],
            }
        if name == "light":
            r["formats"] = other_formats(work_dir, model_dir, schema_path, n, runs, reuse)
        results[name] = r
    results["demo"] = demo_model(work_dir, n, runs, reuse)
    from bench import one_file

    results["one_file"] = one_file.in_full_bench(work_dir, n, runs, reuse, results)
    return results


GATE_VARIANTS = {  # label -> predict flags
    "on": [],
    "without duplicate keys": ["--duplicate_keys", "off"],
    "off": ["--quality_gate", "off"],
}


def gate_cost(model_dir: str, large: str, small: str, out: str, n: dict, runs: int) -> dict:
    """The data-quality gate's cost on the light model: marginal rates and peak RSS with the
    gate on (the default), on without counting duplicate keys, and off; the runs interleaved
    so drift of the machine hits all alike."""
    found: dict = {label: {"small": [], "large": [], "rss_large": []} for label in GATE_VARIANTS}
    for _ in range(runs):
        for label, extra in GATE_VARIANTS.items():
            small_run = pipeline_runs(model_dir, small, out, n["light_small"], 1, extra)
            large_run = pipeline_runs(model_dir, large, out, n["light"], 1, extra)
            found[label]["small"] += small_run["runs"]
            found[label]["large"] += large_run["runs"]
            found[label]["rss_large"] += large_run["peak_rss_mb"]
    for f in found.values():
        f["marginal"] = marginal(n["light_small"], f["small"], n["light"], f["large"])
    return found


def gate_line(gate: dict) -> str:
    rate = {label: f["marginal"]["records_per_s"] for label, f in gate.items()}
    fixed = {label: f["marginal"]["fixed_s"] for label, f in gate.items()}
    rss = {label: median(f["rss_large"]) for label, f in gate.items()}
    profiling = 1 - rate["without duplicate keys"] / rate["off"]
    keys = 1 - rate["on"] / rate["without duplicate keys"]
    return (
        "data-quality gate on the light model, marginal records/s: off "
        f"{rate['off']:,.0f}, profiling + verdict {rate['without duplicate keys']:,.0f} "
        f"(costs {profiling:.1%}), + duplicate keys {rate['on']:,.0f} (costs {keys:.1%} more; "
        f"{1 - rate['on'] / rate['off']:.1%} in all); fixed cost {fixed['off']:.2f} / "
        f"{fixed['without duplicate keys']:.2f} / {fixed['on']:.2f} s; peak RSS {rss['off']:,.0f} / "
        f"{rss['without duplicate keys']:,.0f} / {rss['on']:,.0f} MB"
    )


def gate_only(work_dir: str, runs: int, quick: bool, reuse: bool) -> dict:
    """Only the gate's cost (`--only gate`): the light model and its data, built or reused."""
    from bench.models import build_model_dir

    n = sizes(quick)
    model_dir = os.path.join(work_dir, "light", "model")
    score_dir, small_dir = (os.path.join(work_dir, "light", d) for d in ("score", "score_small"))
    if not (reuse and os.path.isdir(model_dir) and os.path.isdir(small_dir)):
        print("-- light: building the model and its records", flush=True)
        schema_path, model_dir = build_model_dir(work_dir, "light", 20_000)
        generate_shards(score_dir, schema_path, n["light"], n["files"], seed=100)
        generate_shards(small_dir, schema_path, n["light_small"], n["files"], seed=200)
    print(f"-- light: gate on and off x{runs}", flush=True)
    found = gate_cost(
        model_dir,
        os.path.join(score_dir, "*.jsonl"),
        os.path.join(small_dir, "*.jsonl"),
        os.path.join(work_dir, "light", "predictions"),
        n,
        runs,
    )
    return {"gate": found, "cpu": cpu_name()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def other_formats(work_dir: str, model_dir: str, schema_path: str, n: dict, runs: int, reuse: bool) -> dict:
    """The light model on the same records as Parquet and TFRecord: each format's parse floor
    and predict's marginal rate (n["light_small"] -> n["light"] records)."""
    found = {}
    for fmt in ("parquet", "tfrecord"):
        patterns = {}
        for size, seed in (("light", 100), ("light_small", 200)):
            directory = os.path.join(work_dir, "light", f"{size}_{fmt}")
            pattern = os.path.join(directory, f"*.{fmt}")
            if not (reuse and os.path.isdir(directory)):
                print(f"-- light {fmt}: {n[size]:,} records", flush=True)
                generate_shards(directory, schema_path, n[size], n["files"], seed=seed, fmt=fmt)
            patterns[size] = pattern
        out = os.path.join(work_dir, "light", f"predictions_{fmt}")
        print(f"-- light {fmt}: parse floor, adpredict predict x{runs} on each size", flush=True)
        floor = parse_floor(model_dir, patterns["light"], n["light"], fmt)
        large = pipeline_runs(model_dir, patterns["light"], out, n["light"], runs)
        small = pipeline_runs(model_dir, patterns["light_small"], out, n["light_small"], runs)
        found[fmt] = {
            "parse_floor": floor,
            "pipeline": large,
            "marginal": marginal(n["light_small"], small["runs"], n["light"], large["runs"]),
        }
    return found


def demo_model(work_dir: str, n: dict, runs: int, reuse: bool) -> dict:
    """The model `make demo` trains (small CNN, 32x32 creatives): bare, predict and the peers,
    each as a marginal rate from n["demo_small"] to n["demo"] records."""
    from bench.models import build_model_dir

    model_dir = os.path.join(work_dir, "demo", "model")
    schema_path = os.path.join(work_dir, "demo", "ads_demo.yaml")
    if not (reuse and os.path.isdir(model_dir)):
        print(f"-- demo: building the model and {n['demo']:,} + {n['demo_small']:,} records", flush=True)
        schema_path, model_dir = build_model_dir(work_dir, "demo", 2_000)
    patterns, examples = {}, {}
    for size, seed in (("demo", 100), ("demo_small", 200)):
        directory = os.path.join(work_dir, "demo", size)
        if not (reuse and os.path.isdir(directory)):
            generate_shards(directory, schema_path, n[size], n["files"], seed=seed)
        patterns[size] = os.path.join(directory, "*.jsonl")
        examples[size] = write_examples(
            patterns[size], schema_path, os.path.join(work_dir, "demo", f"examples_{size}")
        )
    r: dict = {"records": n["demo"], "small_records": n["demo_small"]}
    print("-- demo: bare model", flush=True)
    r["bare"] = bare_model(model_dir, load_table(model_dir, patterns["demo"], 40_000), runs, seconds=3.0)
    print(f"-- demo: adpredict predict x{runs} on each size", flush=True)
    out = os.path.join(work_dir, "demo", "predictions")
    small = pipeline_runs(model_dir, patterns["demo_small"], out, n["demo_small"], runs)
    small_expected = adpredict_predictions(out)
    r["pipeline"] = pipeline_runs(model_dir, patterns["demo"], out, n["demo"], runs)
    expected = adpredict_predictions(out)
    r["marginal"] = marginal(n["demo_small"], small["runs"], n["demo"], r["pipeline"]["runs"])
    r["parse_floor"] = parse_floor(model_dir, patterns["demo"], n["demo"])
    for peer in PEERS:
        print(f"-- demo: peer {peer} x{runs} on each size", flush=True)
        peer_out = os.path.join(work_dir, "demo", peer)
        peer_small = peer_runs(peer, model_dir, examples["demo_small"], peer_out, n["demo_small"], runs,
                               small_expected)  # fmt: skip
        r[peer] = peer_runs(peer, model_dir, examples["demo"], peer_out, n["demo"], runs, expected)
        r[peer]["marginal"] = marginal(n["demo_small"], peer_small["runs"], n["demo"], r[peer]["runs"])
    r["library"] = library_marginals(
        model_dir, {"small": patterns["demo_small"], "large": patterns["demo"]}, os.path.join(work_dir, "demo"),
        {"small": n["demo_small"], "large": n["demo"]}, runs, {"small": small_expected, "large": expected},
    )  # fmt: skip
    return r


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=os.path.join(REPO, "bench", "results", "work"))
    parser.add_argument("--runs", type=int, default=3, help="Timed runs per figure (the median is shown).")
    parser.add_argument(
        "--quick", action="store_true", help="Small data: checks the script, measures little."
    )
    parser.add_argument("--reuse", action="store_true", help="Reuse models and data left in --work_dir.")
    parser.add_argument(
        "--only",
        choices=("gate", "onefile"),
        help="Only one figure: gate = the data-quality gate's cost (light model); onefile = the "
        "light and demo models on their records in ONE JSONL file against 8 (bench/one_file.py).",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.time()
    if args.only == "gate":
        found = gate_only(os.path.abspath(args.work_dir), args.runs, args.quick, args.reuse)
        print(f"CPU: {found['cpu']}")
        print(gate_line(found["gate"]))
        return 0
    if args.only == "onefile":
        from bench import one_file

        found = one_file.only(os.path.abspath(args.work_dir), args.runs, args.quick, args.reuse)
        table = f"CPU: {cpu_name()}\n" + one_file.report(found)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, f"onefile-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                {"cpu": cpu_name(), "runs": args.runs, "quick": args.quick, "one_file": found}, f, indent=2
            )
        print(table)
        print(f"\n{time.time() - started:.0f} s; figures in {path}")
        return 0
    results = run_bench(os.path.abspath(args.work_dir), args.runs, args.quick, args.reuse)
    results["cpu"] = cpu_name()
    table = f"CPU: {results['cpu']}\n" + report(results)
    results["seconds"] = round(time.time() - started, 1)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(table)
    print(f"\nwhole benchmark {results['seconds']:.0f} s; figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
