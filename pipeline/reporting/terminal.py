"""What a command prints when it ends: a few lines a person reads instead of run.json.

Pure functions from what a run left (its run.json, its error counts by kind, the trainer's
metrics, a launcher's summary) to text, so the same lines come out of `adpredict predict`,
`python -m pipeline.predict` and `adpredict nightly`, and tests can check them without
running anything. `pipeline.entrypoint` prints them.
"""

from __future__ import annotations

import posixpath

from pipeline.reporting.cost import machines, money
from pipeline.run_contract import (
    AGAINST_PREVIOUS,
    AGAINST_TRAINING,
    ANALYZE_ERRORS_STATS,
    ANALYZE_JOB,
    ANALYZED,
    CHECK_BLOCK,
    CHECK_WARN,
    ERRORS,
    ERRORS_PREFIX,
    PREDICT_ERRORS_STATS,
    PREDICTIONS,
    PREDICTIONS_PREFIX,
    QUALITY_ACCEPTED,
    QUALITY_BLOCKED,
    QUALITY_PASSED,
    QUALITY_WARNED,
    READ,
    RUN_MANIFEST,
    STAGING_DIR,
    SUCCEEDED,
    SUCCESS_MARKER,
)

TOP_ERROR_KINDS = 3  # error kinds named in the summary; the errors_stats file has them all
LABEL_WIDTH = 15
FLAGGED_LINES = 10  # flagged subjects named one a line; report.html shows them all


def number(value) -> str:
    """12345 -> "12,345": counts are read at a glance."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def percent(rate: float) -> str:
    """A share as a percentage that never rounds a real error down to "0.00%"."""
    if 0 < rate < 0.0001:
        return "<0.01%"
    return f"{rate:.2%}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def _line(label: str, text: str) -> str:
    return f"  {label:<{LABEL_WIDTH}}{text}"


def _join(directory: str, name: str) -> str:
    """`directory/name` for local and gs:// paths alike (no FileSystems needed to print)."""
    return posixpath.join(directory, name) if "://" in directory else f"{directory.rstrip('/')}/{name}"


def error_kinds(errors_stats: dict | None, limit: int = TOP_ERROR_KINDS) -> str:
    """`{"by_kind": [...]}` -> "missing_field: age 3, malformed_record 1, +2 more kinds"."""
    kinds = (errors_stats or {}).get("by_kind") or []
    named = [
        f"{kind['code']}: {kind['field']} {number(kind['count'])}"
        if kind.get("field")
        else f"{kind['code']} {number(kind['count'])}"
        for kind in kinds[:limit]
    ]
    if len(kinds) > limit:
        named.append(f"+{len(kinds) - limit} more kinds")
    return ", ".join(named)


def _counts_lines(
    manifest: dict, errors_stats: dict | None, scored: str, scored_label: str, errors_label: str
):
    counts = manifest.get("counts", {})
    read = counts.get(READ, 0)
    files = [f for f in (manifest.get("inputs") or {}).get("files") or () if isinstance(f, str)]
    source = f" from {number(len(files))} file{'s' if len(files) != 1 else ''}" if files else ""
    errors = counts.get(ERRORS, 0)
    rate = f"{percent(counts.get('error_rate', 0.0))} of read"
    if manifest.get("max_error_rate") is not None:
        rate += f", limit {percent(manifest['max_error_rate'])}"
    kinds = error_kinds(errors_stats)
    width = len(number(max(read, counts.get(scored, 0), errors)))
    return [
        _line("read", f"{number(read):>{width}} records{source}"),
        _line(scored_label, f"{number(counts.get(scored, 0)):>{width}}"),
        _line(errors_label, f"{number(errors):>{width}} ({rate}){': ' + kinds if kinds else ''}"),
    ]


def _time_line(manifest: dict, wall_seconds: float | None) -> str:
    """Wall time of the command, and the pipeline's own time and speed from run.json."""
    seconds = (manifest.get("timings") or {}).get("seconds")
    read = manifest.get("counts", {}).get(READ, 0)
    pipeline = (
        f"{duration(seconds)} in the pipeline: {number(round(read / seconds))} records/s" if seconds else ""
    )
    if wall_seconds is None:
        return _line("time", pipeline or "not recorded")
    return _line("time", f"{duration(wall_seconds)}{f' ({pipeline})' if pipeline else ''}")


def cost_line(manifest: dict) -> str | None:
    """run.json's `cost` in one line: speed per vCPU, worker-seconds, $ per million predictions."""
    cost = manifest.get("cost")
    if not isinstance(cost, dict):
        return None
    per_vcpu, vcpus = cost.get("records_per_second_per_vcpu"), cost.get("vcpus_per_worker")
    speed = f"{number(round(per_vcpu))} records/s per vCPU" if per_vcpu is not None else "vCPUs unknown"
    on = machines(cost) + (
        f", {vcpus:g} vCPUs{' each' if cost.get('workers', 1) > 1 else ''}" if vcpus else ""
    )
    if cost.get("usd_per_million_predictions") is not None:
        price = f"{money(cost['usd_per_million_predictions'])} per million predictions"
        price += " (example prices)" if cost.get("prices_are_examples") else ""
    else:
        price = "no price for this machine type" if cost.get("no_price") else "no predictions to price"
    return _line("cost", f"{speed} ({on}), {cost.get('worker_seconds') or 0:,.1f} worker-s, {price}")


def _header(job: str, manifest: dict) -> str:
    status = manifest.get("status", "unknown")
    if status != SUCCEEDED:
        marker = f"no {SUCCESS_MARKER}"
        status += f" (everything written, {marker})" if "error rate" in status else f" ({marker})"
    return f"{job}: {status}"


def held_back(manifest: dict) -> bool:
    """Whether the data-quality gate kept the run's outputs in staging (nothing published)."""
    return (manifest.get("quality") or {}).get("verdict") == QUALITY_BLOCKED


def _worst(checks: list) -> dict | None:
    """The check of a flagged subject furthest over its limit (block before warn)."""

    def over(check):
        limit = check.get(check.get("level")) if check.get("level") in (CHECK_WARN, CHECK_BLOCK) else None
        value = check.get("value")
        if not isinstance(value, int | float) or not isinstance(limit, int | float):
            return 0.0
        return value / max(limit + (check.get("allowance") or 0.0), 1e-9)

    ranked = [c for c in checks if isinstance(c, dict)]
    return max(ranked, key=lambda c: (c.get("level") == CHECK_BLOCK, over(c)), default=None)


def flagged_line(entry: dict) -> str:
    """One flagged subject and its worst check, e.g. "bid: Jensen-Shannon 1 against training
    (block above 0.3 + 0.16 for sample size)"."""
    subject = entry.get("subject", "?")
    check = _worst(entry.get("checks") or [])
    if check is None:
        return f"{subject}: {entry.get('level', '?')}"
    level = check.get("level") if check.get("level") in (CHECK_WARN, CHECK_BLOCK) else entry.get("level", "?")
    value, limit = check.get("value"), check.get(level)
    shown = f"{value:.3g}" if isinstance(value, int | float) else "not measured"
    text = f"{subject}: {check.get('measure')} {shown} against {check.get('against')}"
    if not isinstance(limit, int | float):
        return f"{text} ({level})"
    if "usual" in check:  # the volume: tonight's records against the usual count
        return f"{text} ({level} above {limit:g}: {number(check.get('records'))} records, usual {check['usual']:,.0f})"
    return f"{text} ({level} above {limit:g} + {check.get('allowance') or 0:.2g} for sample size)"


def checks_compared(checks: list) -> str:
    """What the gate compared, e.g. "16 checks against training and 17 against the previous
    night", and how many it could not judge (too few records); the report says it too."""
    counts: dict[str, int] = {}
    for check in checks:
        counts[check.get("against")] = counts.get(check.get("against"), 0) + 1
    named = [
        f"{number(count)}{' checks' if i == 0 else ''} against {'the ' if against == AGAINST_PREVIOUS else ''}{against}"
        for i, (against, count) in enumerate(sorted(counts.items(), key=lambda a: a[0] != AGAINST_TRAINING))
    ]
    if not named:
        return "no checks"
    too_few = [c for c in checks if c.get("too_few_records")]
    judged = (
        f" ({number(len(too_few))} not judged: under {too_few[0]['too_few_records']} records)"
        if too_few
        else ""
    )
    return " and ".join(named) + judged


def _checked(quality: dict) -> str:
    """`checks_compared`, then "; drift not checked: no previous night to compare with"."""
    text = checks_compared([c for c in quality.get("checks") or [] if isinstance(c, dict)])
    for key in ("skew", "drift"):
        found = quality.get(key) or {}
        if not found.get("checked", True):
            text += f"; {key} not checked: {str(found.get('why') or 'no reference').split(' (')[0]}"
    return text


_VERDICTS = {
    QUALITY_PASSED: "passed",
    QUALITY_WARNED: "warnings, published",
    QUALITY_BLOCKED: "blocked, nothing published",
    QUALITY_ACCEPTED: "blocked, published by --accept_drift",
}


def quality_lines(manifest: dict) -> list[str]:
    """The data-quality gate: its verdict and what it compared, one line per flagged subject
    (its worst check), and the duplicate keys; none for a run without the gate."""
    quality = manifest.get("quality")
    if not isinstance(quality, dict):
        return []
    verdict = quality.get("verdict")
    lines = [_line("quality", f"{_VERDICTS.get(verdict, verdict)}: {_checked(quality)}")]
    flagged = [f for f in quality.get("flagged") or [] if isinstance(f, dict)]
    lines += [_line("", flagged_line(entry)) for entry in flagged[:FLAGGED_LINES]]
    if len(flagged) > FLAGGED_LINES:
        lines.append(_line("", f"+{len(flagged) - FLAGGED_LINES} more flagged: see the report"))
    duplicates = quality.get("duplicate_keys") or {}
    if duplicates.get("extra_records"):
        examples = duplicates.get("examples") or []
        example = f", e.g. {examples[0][0]} x{examples[0][1]}" if examples else ""
        lines.append(
            _line(
                "duplicates",
                f"{number(duplicates['extra_records'])} records repeat a key "
                f"({number(duplicates.get('keys', 0))} keys{example}): an upstream join went wrong?",
            )
        )
    return lines


def predict_summary(manifest: dict, errors_stats: dict | None, wall_seconds: float | None = None,
                    job: str = "adpredict predict") -> str:  # fmt: skip
    """The summary of a predict run from its run.json and its error counts by kind."""
    output_dir = manifest.get("output_dir", "")
    tables = manifest.get("output_tables")
    if tables:
        predictions = f"{tables['predictions']} (BigQuery)"
        error_records = f"{tables['errors']} (BigQuery)"
    elif held_back(manifest):  # the gate blocked the run: its outputs stay in staging
        staging = _join(output_dir, STAGING_DIR)
        predictions = f"held back in {staging} (not published)"
        error_records = f"{_join(staging, ERRORS_PREFIX + '-*')} (held back)"
    else:
        predictions = (
            f"{_join(output_dir, PREDICTIONS_PREFIX + '-*')} ({manifest.get('output_format', 'jsonl')})"
        )
        error_records = _join(output_dir, ERRORS_PREFIX + "-*")
    return "\n".join(
        [
            _header(job, manifest),
            *_counts_lines(manifest, errors_stats, PREDICTIONS, "predicted", "errors"),
            _time_line(manifest, wall_seconds),
            *[_line("ran on", line) for line in worker_lines(manifest)],
            *[line for line in (cost_line(manifest),) if line],
            *quality_lines(manifest),
            _line("predictions", predictions),
            _line("error records", f"{error_records}; by code and field: {PREDICT_ERRORS_STATS}"),
            *([_line("report", _join(output_dir, manifest["report"]))] if manifest.get("report") else []),
            _line("run.json", _join(output_dir, RUN_MANIFEST)),
        ]
    )


def worker_lines(manifest: dict) -> list[str]:
    """What the model ran on, one line per distinct kind of process (run.json's `workers`):
    device, CPU, precision and why."""
    lines = []
    for worker in manifest.get("workers") or ():
        cpu = worker.get("cpu") or {}
        device = ", ".join(worker.get("gpus") or ()) or f"CPU {cpu.get('name')} ({cpu.get('kind')})"
        processes = worker.get("processes", 1)
        many = f"{processes} processes: " if processes > 1 else ""
        lines.append(f"{many}{device}, {worker.get('precision')} ({worker.get('precision_reason')})")
    return lines


def analyze_summary(manifest: dict, errors_stats: dict | None, wall_seconds: float | None = None,
                    job: str = "adpredict analyze") -> str:  # fmt: skip
    """The summary of an analyze run from its run.json and its error counts by kind."""
    output_dir = manifest.get("output_dir", "")
    return "\n".join(
        [
            _header(job, manifest),
            *_counts_lines(manifest, errors_stats, ANALYZED, "analyzed", "rejected"),
            _time_line(manifest, wall_seconds),
            _line("transform", f"{output_dir} (transform_fn/, transformed/train-*, transformed/eval-*)"),
            _line(
                "error records",
                f"{_join(output_dir, ERRORS_PREFIX + '-*')}; by code and field: {ANALYZE_ERRORS_STATS}",
            ),
            _line("run.json", _join(output_dir, RUN_MANIFEST)),
        ]
    )


def run_summary(manifest: dict, errors_stats: dict | None, wall_seconds: float | None = None,
                job: str | None = None) -> str:  # fmt: skip
    """The summary of whichever pipeline wrote `manifest` (analyze's says so in "job")."""
    if manifest.get("job") == ANALYZE_JOB:
        return analyze_summary(manifest, errors_stats, wall_seconds, job or "adpredict analyze")
    return predict_summary(manifest, errors_stats, wall_seconds, job or "adpredict predict")


def held_out_auc(metrics: dict) -> str:
    """The held-out AUC of training metrics, or why there is none (one label held out)."""
    if metrics.get("eval_auc") is None:
        return f"undefined: {metrics.get('eval_auc_undefined') or 'no held-out AUC'}"
    auc = f"{metrics['eval_auc']:.4f} on the held-out rows"
    if metrics.get("eval_auc_blank_image") is not None:
        auc += f" (images blanked: {metrics['eval_auc_blank_image']:.4f})"
    return auc


def train_summary(metrics: dict, model_dir: str, wall_seconds: float | None = None) -> str:
    """The summary of `adpredict train` from the metrics it stored in the model."""
    lines = [
        "adpredict train: done",
        _line(
            "rows",
            f"{number(metrics['train_records'])} trained on, {number(metrics['eval_records'])} held out",
        ),
        _line("AUC", held_out_auc(metrics)),
    ]
    if metrics.get("predict_batch_size"):
        lines.append(_line("batch size", f"{number(metrics['predict_batch_size'])} records per model call"))
    if "golden_records" in metrics:
        golden = metrics["golden_records"]
        lines.append(
            _line(
                "golden",
                f"{golden} eval records with their outputs; every run checks them first"
                if golden
                else "none: the analyze output holds no raw eval sample (re-run analyze to get one)",
            )
        )
    if "precision_check" in metrics:
        lines.append(_line("bf16", precision_line(metrics["precision_check"])))
    if wall_seconds is not None:
        lines.append(_line("time", f"{duration(wall_seconds)} in all, {metrics.get('epochs', '?')} epochs"))
    lines.append(_line("model", model_dir))
    return "\n".join(lines)


def precision_line(summary: dict) -> str:
    """The bf16 check in one line: its verdict, by how much outputs moved, the speeds here."""
    if "passed" not in summary:
        return f"not checked: {summary.get('not_checked')}; --precision bf16|auto will use fp32"
    auc = "" if summary.get("auc_change") is None else f", AUC by {summary['auc_change']:.4f}"
    line = (
        f"check {'passed' if summary['passed'] else 'FAILED: --precision bf16 refused, auto keeps fp32'} "
        f"(outputs moved by up to {summary['output_change']:.4f}{auc} on {number(summary['records'])} records)"
    )
    speed = summary.get("speed")
    if speed:
        line += f"; {speed['bf16'] / max(speed['fp32'], 1):.2f}x fp32 here ({speed['cpu_kind']})"
    return line


def launch_summary(job: str, summary: dict, output_dir: str | None = None) -> str:
    """A dry run or a job submitted without waiting: what happened and where to look."""
    if summary.get("dry_run"):
        where = ", ".join(x for x in (summary.get("project"), summary.get("region")) if x)
        return "\n".join(
            [
                f"{job}: dry run, nothing read, written or submitted",
                _line("job", f"{summary.get('job_name')}{f' ({where})' if where else ''}"),
                _line("request", str(summary.get("job_file"))),
                _line(
                    "staged",
                    f"{number(len(summary.get('staged', [])))} files under {summary.get('staging_mirror')}",
                ),
            ]
        )
    lines = [
        f"{job}: submitted to {summary.get('runner') or 'DirectRunner'}, not waited for",
        _line("job", f"{summary.get('job_id') or 'id not reported'} (state {summary.get('state')})"),
    ]
    if summary.get("console_url"):
        lines.append(_line("follow", summary["console_url"]))
    if output_dir:
        lines.append(
            _line("when done", f"{_join(output_dir, RUN_MANIFEST)}, then {_join(output_dir, SUCCESS_MARKER)}")
        )
    return "\n".join(lines)


def console_url(job_id: str | None, region: str | None, project: str | None) -> str | None:
    """The Dataflow console page of a job, when the job, region and project are known."""
    if not (job_id and region and project):
        return None
    return f"https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"
