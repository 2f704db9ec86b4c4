"""One big file as fast as many (issue 23 §2): predict on the same records in ONE JSONL file.

    python -m bench.throughput --only onefile [--quick] [--reuse] [--work_dir DIR]

For the light and the demo model, the multi-file records of the main benchmark (the small and
the large set) are concatenated into one file each, so the one-file rows score exactly the
records the multi-file rows score. Per model: predict's marginal rate on one file (small ->
large) and the fixed cost it leaves, the bare model, and two parse floors of the one large
file: the whole file read by `pyarrow.json.read_json` with `use_threads=True` (both cores; the
floor the issue's checks use) and predict's own reader (blocks of `DEFAULT_BLOCK_BYTES`, each
parsed on pyarrow's threads). The stage limit 1/(1/parse_only + 1/bare) is computed from the
whole-file floor for the targets and from predict's reader beside it. With `--only onefile`,
predict on the multi-file sets runs too, interleaved with the one-file runs, so both layouts
meet the same machine noise; in the full benchmark the multi-file figures are the main rows'.

Targets (on any CPU): light one-file marginal >= 0.70 x the stage limit from the whole-file
floor, demo one-file marginal >= 0.85 x bare, fixed cost <= 1.0 s for a one-file run.
"""

from __future__ import annotations

import glob
import os
import shutil
import statistics
import time

from bench import throughput as tp

LIGHT_LIMIT_TARGET = 0.70
DEMO_BARE_TARGET = 0.85
FIXED_TARGET_S = 1.0
# model -> (large-set key, small-set key in tp.sizes(), records in the bare model's table)
MODELS = {"light": ("light", "light_small", 200_000), "demo": ("demo", "demo_small", 40_000)}
# model -> the folders (under <work_dir>/<model>) of its multi-file sets, as the main rows name them
SHARD_DIRS = {
    "light": {"large": "score", "small": "score_small"},
    "demo": {"large": "demo", "small": "demo_small"},
}


def one_file(pattern: str, path: str, reuse: bool) -> str:
    """The files of `pattern` (sorted) concatenated into `path`: the same records in one file;
    with `reuse`, a file already there of their total size is kept."""
    parts = sorted(glob.glob(pattern))
    if reuse and os.path.isfile(path) and os.path.getsize(path) == sum(map(os.path.getsize, parts)):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
    os.replace(partial, path)
    return path


def whole_file_floor(model_dir: str, path: str, records: int, runs: int) -> list[float]:
    """Records/s of `pyarrow.json.read_json` on the whole file, use_threads=True (every core),
    into the model's typed columns (explicit schema, other fields ignored); one per run."""
    import pyarrow.json as pa_json

    from pipeline.blocks import RecordLayout
    from transforms.model_contract import ModelDescription

    description = ModelDescription.read(model_dir)
    layout = RecordLayout(description.inputs, description.key_field, description.key_type)
    options = pa_json.ParseOptions(explicit_schema=layout.arrow_schema(), unexpected_field_behavior="ignore")
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        table = pa_json.read_json(
            path, read_options=pa_json.ReadOptions(use_threads=True), parse_options=options
        )
        rates.append(records / (time.perf_counter() - started))
        if table.num_rows != records:
            raise RuntimeError(f"{path}: pyarrow read {table.num_rows:,} rows, not {records:,}")
        del table
    return rates


def measure(model: str, model_dir: str, shards: dict, n: dict, work: str, runs: int, reuse: bool,
            bare: dict | None = None, multi: bool = False) -> dict:  # fmt: skip
    """One model's one-file rows. `shards`: {"small": glob, "large": glob} of the multi-file
    sets; `bare`: the bare model's figure when already measured; `multi`: also time predict on
    the multi-file sets, each multi-file run beside its one-file run."""
    large_key, small_key, bare_rows = MODELS[model]
    sizes = {"small": n[small_key], "large": n[large_key]}
    files = {
        size: one_file(shards[size], os.path.join(work, "one_file", f"{size}.jsonl"), reuse) for size in sizes
    }
    r: dict = {
        "records": sizes["large"],
        "small_records": sizes["small"],
        "files_in_multi": len(glob.glob(shards["large"])),
        "file_mb": os.path.getsize(files["large"]) / 2**20,
    }
    if bare is None:
        print(f"-- {model}: bare model", flush=True)
        bare = tp.bare_model(
            model_dir, tp.load_table(model_dir, shards["large"], bare_rows), runs, seconds=3.0
        )
    r["bare"] = bare
    print(f"-- {model}: parse floors of one file and of {r['files_in_multi']} files", flush=True)
    r["load_before"] = os.getloadavg()[0]
    floor_runs = whole_file_floor(model_dir, files["large"], sizes["large"], 2)
    r["floor_reader"] = tp.parse_floor(model_dir, files["large"], sizes["large"])
    r["floor_reader_multi"] = tp.parse_floor(model_dir, shards["large"], sizes["large"])
    layouts = {"one": files} | ({"multi": shards} if multi else {})
    found = {layout: {"small": [], "large": [], "startup_s": []} for layout in layouts}
    print(f"-- {model}: adpredict predict x{runs} on each size, {' and '.join(layouts)} file(s)", flush=True)
    for _ in range(runs):  # interleaved: drift of the machine hits floor, sizes and layouts alike
        floor_runs += whole_file_floor(model_dir, files["large"], sizes["large"], 1)
        for layout, inputs in layouts.items():
            out = os.path.join(work, "one_file", f"predictions_{layout}")
            for size in ("small", "large"):
                run = tp.pipeline_runs(model_dir, inputs[size], out, sizes[size], 1)
                found[layout][size] += run["runs"]
                found[layout]["startup_s"] += run["startup_s"]
                r["batch_size"] = run["batch_size"]
    r["load_after"] = os.getloadavg()[0]
    r["floor_whole_file_runs"] = floor_runs
    r["floor_whole_file"] = statistics.median(floor_runs)
    for layout, f in found.items():
        r[layout] = {
            **f,
            "marginal": tp.marginal(sizes["small"], f["small"], sizes["large"], f["large"]),
        }
    return r


def limits(r: dict) -> dict:
    bare = statistics.median(r["bare"]["runs"])
    return {
        "bare": bare,
        "whole_file": tp.stage_limit(r["floor_whole_file"], bare),
        "reader": tp.stage_limit(r["floor_reader"], bare),
    }


def checks(found: dict) -> list:
    """(target, figure, met) of the one-file targets."""
    out = []
    if "light" in found:
        r = found["light"]
        rate = r["one"]["marginal"]["records_per_s"]
        out.append(("light one file: marginal >= 0.70 x stage limit",
                    rate / limits(r)["whole_file"], lambda v: v >= LIGHT_LIMIT_TARGET))  # fmt: skip
    if "demo" in found:
        r = found["demo"]
        rate = r["one"]["marginal"]["records_per_s"]
        out.append(
            (
                "demo one file: marginal >= 0.85 x bare",
                rate / limits(r)["bare"],
                lambda v: v >= DEMO_BARE_TARGET,
            )
        )
    out += [
        (
            f"{model} one file: fixed cost <= 1.0 s",
            r["one"]["marginal"]["fixed_s"],
            lambda v: v <= FIXED_TARGET_S,
        )
        for model, r in found.items()
    ]
    return out


def report(found: dict, multi_marginals: dict | None = None, targets: bool = True) -> str:
    """The one-file rows, and with `targets` their targets; `multi_marginals` (model ->
    marginal) from the main rows when the multi-file sets were not timed here."""
    lines = []
    for model, r in found.items():
        lim = limits(r)
        m = r["one"]["marginal"]
        rate = m["records_per_s"]
        lines.append(
            f"\none file, {model} model: {r['small_records']:,} -> {r['records']:,} records, the multi-file "
            f"records in ONE JSONL file ({r['file_mb']:,.0f} MB at {r['records']:,}); 1-min load average "
            f"{r['load_before']:.2f} before, {r['load_after']:.2f} after"
        )
        lines.append(
            f"  parse floors, records/s: whole file, pyarrow read_json use_threads=True {r['floor_whole_file']:,.0f} "
            f"(median of {len(r['floor_whole_file_runs'])}: {min(r['floor_whole_file_runs']):,.0f} to "
            f"{max(r['floor_whole_file_runs']):,.0f}); "
            f"predict's reader on the one file {r['floor_reader']:,.0f}; on the {r['files_in_multi']} files "
            f"{r['floor_reader_multi']:,.0f}"
        )
        lines.append(
            f"  bare model (batch {r['bare']['batch_size']}) {lim['bare']:,.0f} records/s (runs "
            f"{', '.join(f'{v:,.0f}' for v in r['bare']['runs'])}); stage limit "
            f"1/(1/parse + 1/bare): {lim['whole_file']:,.0f} with the whole-file floor, "
            f"{lim['reader']:,.0f} with predict's reader"
        )
        lines.append(
            f"  adpredict predict (batch {r['batch_size']}), one file: marginal {rate:,.0f} records/s = "
            f"{rate / lim['whole_file']:.3f} x stage limit (whole-file floor; {rate / lim['reader']:.3f} x with "
            f"predict's reader) = {rate / lim['bare']:.3f} x bare; fixed {m['fixed_s']:.2f} s "
            f"(small {m['small_s']:.2f} s, large {m['large_s']:.2f} s; interpreter start-up "
            f"{statistics.median(r['one']['startup_s']):.2f} s apart)"
        )
        multi = r["multi"]["marginal"] if "multi" in r else (multi_marginals or {}).get(model)
        if multi:
            when = "interleaved with the one-file runs" if "multi" in r else "from the main rows"
            lines.append(
                f"  adpredict predict, {r['files_in_multi']} files ({when}): marginal {multi['records_per_s']:,.0f} "
                f"records/s = {multi['records_per_s'] / lim['whole_file']:.3f} x stage limit (whole-file floor) = "
                f"{multi['records_per_s'] / lim['bare']:.3f} x bare; fixed {multi['fixed_s']:.2f} s "
                f"(small {multi['small_s']:.2f} s, large {multi['large_s']:.2f} s); one file / "
                f"{r['files_in_multi']} files: marginal {rate / multi['records_per_s']:.3f}, large-set time "
                f"{m['large_s'] / multi['large_s']:.3f}"
            )
    if not targets:
        return "\n".join(lines)
    lines.append("\ntargets, one file (issue 23 §2; stage limit with the whole-file floor)")
    for label, figure, met in checks(found):
        lines.append(f"  {label:<50} {figure:8.3f}   {'met' if met(figure) else 'MISSED'}")
    return "\n".join(lines)


def in_full_bench(work_dir: str, n: dict, runs: int, reuse: bool, results: dict) -> dict:
    """The one-file rows of `make bench`, on the data, models and bare figures it built."""
    found = {}
    for model in MODELS:
        base = os.path.join(work_dir, model)
        shards = {size: os.path.join(base, d, "*.jsonl") for size, d in SHARD_DIRS[model].items()}
        found[model] = measure(
            model, os.path.join(base, "model"), shards, n, base, runs, reuse, bare=results[model]["bare"]
        )
    return found


def only(work_dir: str, runs: int, quick: bool, reuse: bool) -> dict:
    """`--only onefile`: the light and the demo model and their multi-file sets, built or
    reused, then the one-file rows with the multi-file runs interleaved."""
    from bench.models import build_model_dir

    n = tp.sizes(quick)
    found = {}
    for model, (large_key, small_key, _) in MODELS.items():
        base = os.path.join(work_dir, model)
        dirs = SHARD_DIRS[model]
        shards = {size: os.path.join(base, d, "*.jsonl") for size, d in dirs.items()}
        model_dir = os.path.join(base, "model")
        ready = os.path.isdir(model_dir) and all(os.path.isdir(os.path.join(base, d)) for d in dirs.values())
        if not (reuse and ready):
            print(
                f"-- {model}: building the model and {n[large_key]:,} + {n[small_key]:,} records", flush=True
            )
            schema_path, model_dir = build_model_dir(work_dir, model, 20_000 if model == "light" else 2_000)
            for size, seed in (("large", 100), ("small", 200)):
                key = large_key if size == "large" else small_key
                shutil.rmtree(os.path.join(base, dirs[size]), ignore_errors=True)  # no stale shards
                tp.generate_shards(os.path.join(base, dirs[size]), schema_path, n[key], n["files"], seed=seed)
        else:
            print(f"-- {model}: reusing {model_dir} and its records", flush=True)
        found[model] = measure(model, model_dir, shards, n, base, runs, reuse, multi=True)
    return found
