"""What a command prints when it ends: a few lines a person reads instead of run.json.

Pure functions from what a run left (its run.json, its error counts by kind, the trainer's
metrics, a launcher's summary) to text, so the same lines come out of `adpredict predict`,
`python -m pipeline.predict` and `adpredict nightly`, and tests can check them without
running anything. `pipeline.entrypoint` prints them.
"""

from __future__ import annotations

import posixpath

from pipeline.run_contract import (
    ANALYZE_ERRORS_STATS,
    ANALYZE_JOB,
    ANALYZED,
    ERRORS,
    ERRORS_PREFIX,
    PREDICT_ERRORS_STATS,
    PREDICTIONS,
    PREDICTIONS_PREFIX,
    READ,
    RUN_MANIFEST,
    SUCCEEDED,
    SUCCESS_MARKER,
)

TOP_ERROR_KINDS = 3  # error kinds named in the summary; the errors_stats file has them all
LABEL_WIDTH = 15


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


def _header(job: str, manifest: dict) -> str:
    status = manifest.get("status", "unknown")
    if status != SUCCEEDED:
        marker = f"no {SUCCESS_MARKER}"
        status += f" (everything written, {marker})" if "error rate" in status else f" ({marker})"
    return f"{job}: {status}"


def predict_summary(manifest: dict, errors_stats: dict | None, wall_seconds: float | None = None,
                    job: str = "adpredict predict") -> str:  # fmt: skip
    """The summary of a predict run from its run.json and its error counts by kind."""
    output_dir = manifest.get("output_dir", "")
    tables = manifest.get("output_tables")
    if tables:
        predictions = f"{tables['predictions']} (BigQuery)"
        error_records = f"{tables['errors']} (BigQuery)"
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
            _line("predictions", predictions),
            _line("error records", f"{error_records}; by code and field: {PREDICT_ERRORS_STATS}"),
            *([_line("report", _join(output_dir, manifest["report"]))] if manifest.get("report") else []),
            _line("run.json", _join(output_dir, RUN_MANIFEST)),
        ]
    )


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


def train_summary(metrics: dict, model_dir: str, wall_seconds: float | None = None) -> str:
    """The summary of `adpredict train` from the metrics it stored in the model."""
    auc = f"{metrics['eval_auc']:.4f} on the held-out rows"
    if metrics.get("eval_auc_blank_image") is not None:
        auc += f" (images blanked: {metrics['eval_auc_blank_image']:.4f})"
    lines = [
        "adpredict train: done",
        _line(
            "rows",
            f"{number(metrics['train_records'])} trained on, {number(metrics['eval_records'])} held out",
        ),
        _line("AUC", auc),
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
    if wall_seconds is not None:
        lines.append(_line("time", f"{duration(wall_seconds)} in all, {metrics.get('epochs', '?')} epochs"))
    lines.append(_line("model", model_dir))
    return "\n".join(lines)


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
