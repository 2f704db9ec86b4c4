"""The run contract: what a run leaves in its output directory, how it is judged, how it exits
(as `transforms/model_contract.py` is what a model directory holds).

The names of the files a run writes, the counts `run.json` holds, the statuses it can end
with, the verdict that picks one, and the exit code each failure gets. Every stage, the
launchers, the report and the trainer (which reads analyze's `run.json`) take these facts
from here, so this module imports nothing but the standard library: no Beam, no TensorFlow.
"""

from __future__ import annotations

import dataclasses

# --- What a run leaves in its output directory --------------------------------------------

RUN_MANIFEST = "run.json"
REPORT = "report.html"
SUCCESS_MARKER = "_SUCCESS"  # written last, only by a run that succeeded
PREDICTIONS_PREFIX = "prediction.results"  # + -SSSSS-of-NNNNN (Vertex AI batch prediction's naming)
ERRORS_PREFIX = "errors"
STAGING_DIR = ".adpredict-staging"  # the sinks write here; the run's last step publishes
RUN_LOCK = ".adpredict-run.lock"  # one run at a time per output directory

# Error records counted by (code, field): one file per job, named after it.
PREDICT_ERRORS_STATS = "prediction.errors_stats"
ANALYZE_ERRORS_STATS = "analyze.errors_stats"
ANALYZE_JOB = "analyze"
# analyze: a few raw eval records, which export scores into the model's golden records.
RAW_EVAL_SAMPLE = "raw_eval_sample.jsonl"  # run.json's "job" of an analyze run (predict runs have none)
# analyze: the training records' profile, which export completes into the model's training profile.
DATA_PROFILE = "data_profile.json"


def errors_stats_file(manifest: dict) -> str:
    """The name of the error summary beside a run's `run.json`."""
    return ANALYZE_ERRORS_STATS if manifest.get("job") == ANALYZE_JOB else PREDICT_ERRORS_STATS


# --- The counts of run.json ----------------------------------------------------------------

READ, PREDICTIONS, ERRORS = "read", "predictions", "errors"
ANALYZED = "analyzed"  # analyze's count of valid records analyzed, where predict has PREDICTIONS

# --- How a run ends -------------------------------------------------------------------------

SUCCEEDED = "succeeded"
FAILED_ERROR_RATE = "failed: error rate above --max_error_rate"
FAILED_LOST = "failed: records lost"
BLOCKED = "failed: blocked by the data-quality gate"  # written to staging, nothing published

# A run fails when more than this share of its records are errors: the odd bad record
# passes, a systematic problem (schema drift, the wrong file) is loud.
DEFAULT_MAX_ERROR_RATE = 0.01


def judge(
    counts: dict, max_error_rate: float, loaded: dict | None = None, scored: str = PREDICTIONS
) -> tuple[str, list[str]]:
    """The run's status and, when records went missing, how many and where.

    `scored` names the count of records that made it (predictions; for analyze, the rows
    it analyzed); `loaded` the rows BigQuery loaded, by role, when the outputs are tables.
    """
    read, predicted, errors = counts.get(READ, 0), counts.get(scored, 0), counts.get(ERRORS, 0)
    lost = []
    if read != predicted + errors:
        lost.append(f"records read ({read}) != {scored} ({predicted}) + errors ({errors})")
    if loaded is not None and loaded != {PREDICTIONS: predicted, ERRORS: errors}:
        lost.append(f"BigQuery loaded {loaded} rows, not predictions {predicted} and errors {errors}")
    if lost:
        return FAILED_LOST, lost
    error_rate = errors / read if read else 0.0
    return (SUCCEEDED if error_rate <= max_error_rate else FAILED_ERROR_RATE), []


# --- The data-quality gate's words in run.json's `quality` (pipeline.quality judges, the
# report and the summary show) --------------------------------------------------------------

QUALITY_PASSED, QUALITY_WARNED, QUALITY_BLOCKED, QUALITY_ACCEPTED = "pass", "warn", "block", "accepted"
CHECK_OK, CHECK_WARN, CHECK_BLOCK = "ok", "warn", "block"  # each check's level
AGAINST_TRAINING, AGAINST_PREVIOUS = "training", "previous night"  # what a check compares with


# --- Exit codes: one per way a command ends, and whether running again can help ----------


@dataclasses.dataclass(frozen=True)
class ExitCode:
    """How a command ended, as its exit status: `retry` says whether a scheduler should run it
    again later (the same command may succeed then) or stop and tell a person."""

    code: int
    name: str
    meaning: str
    retry: bool


EXIT_CODES = (
    ExitCode(0, "ok", "done: outputs published, _SUCCESS written", retry=False),
    ExitCode(1, "failed", "failed: a crash, a lost worker, a cloud or write error (full disk)", retry=True),
    ExitCode(2, "usage", "a flag, config, path, schema or model directory is wrong: fix it", retry=False),
    ExitCode(
        3, "error_rate", "more error records than --max_error_rate (all written, no _SUCCESS)", retry=False
    ),
    ExitCode(4, "skipped", "the date was done already (same model and inputs): nothing to do", retry=False),
    ExitCode(5, "input_not_ready", "the input is not there yet (no file matches, no such table)", retry=True),
    ExitCode(
        6, "records_lost", "records read != predictions + errors: a bug, run.json says where", retry=False
    ),
    ExitCode(
        7, "gate", "a gate stopped the run before scoring (parity, golden records, no GPU)", retry=False
    ),
    ExitCode(
        8,
        "blocked",
        "the data-quality gate blocked a gross shift: nothing published, no _SUCCESS; "
        "review report.html, then re-run with --accept_drift",
        retry=False,
    ),
)
_BY_NAME = {exit_code.name: exit_code.code for exit_code in EXIT_CODES}
EXIT_OK = _BY_NAME["ok"]
EXIT_FAILED = _BY_NAME["failed"]
EXIT_USAGE = _BY_NAME["usage"]
EXIT_ERROR_RATE = _BY_NAME["error_rate"]
EXIT_SKIPPED = _BY_NAME["skipped"]
EXIT_INPUT_NOT_READY = _BY_NAME["input_not_ready"]
EXIT_RECORDS_LOST = _BY_NAME["records_lost"]
EXIT_GATE = _BY_NAME["gate"]
EXIT_BLOCKED = _BY_NAME["blocked"]
RETRYABLE_EXIT_CODES = tuple(e.code for e in EXIT_CODES if e.retry)
# Not a failure for a scheduler: systemd's SuccessExitStatus, Airflow's skip.
SUCCESS_EXIT_CODES = (EXIT_OK, EXIT_SKIPPED)


def exit_code_summary() -> str:
    """The exit codes on one line, as the deploy files' comments give them."""
    return ", ".join(f"{e.code} {e.name}" + (" (retry later)" if e.retry else "") for e in EXIT_CODES)


def exit_code_table() -> str:
    """The exit codes as text, for --help, docs/nightly.md and the deploy files' comments."""
    return "\n".join(
        f"  {e.code}  {e.name:<16} {e.meaning}{'; retry later' if e.retry else ''}" for e in EXIT_CODES
    )


class OptionsError(ValueError):
    """A flag is missing or wrong; the message names it."""


class InputError(ValueError):
    """An input or output location a user gave cannot be used (matches nothing, is not in the
    format it claims, is locked by another run); the message says which and what to do."""

    exit_code = EXIT_USAGE


class InputNotReady(InputError):
    """The input is not there yet: a file pattern matches nothing, a table does not exist.
    Tonight's files may still be on their way, so a scheduler retries later."""

    exit_code = EXIT_INPUT_NOT_READY


class GateFailed(RuntimeError):
    """A check before scoring stopped the run: the model's transform disagrees with the
    transform artifacts, the model no longer gives its own golden records' outputs, or a run
    that needs a GPU has none."""

    exit_code = EXIT_GATE


class RunFailed(RuntimeError):
    """A run ended and wrote everything, but failed; `manifest` is its run.json."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, manifest: dict | None = None):
        super().__init__(message)
        self.manifest = manifest


class ErrorRateExceeded(RunFailed):
    """More records failed than --max_error_rate allows (everything was still written)."""

    exit_code = EXIT_ERROR_RATE


class RecordsLost(RunFailed):
    """The run's counts do not add up: read != scored + errors (a bug; run.json says where)."""

    exit_code = EXIT_RECORDS_LOST


class DataQualityBlocked(RunFailed):
    """The data-quality gate found a gross shift: everything was written to staging, nothing
    published; re-running with --accept_drift publishes a night a person reviewed."""

    exit_code = EXIT_BLOCKED


class WriteFailed(RunFailed):
    """A sink or the run's last step could not write (a full disk, no permission): nothing
    was published, and the message names the path and the OS error."""


def run_failure(manifest: dict, records: str = "records", after: str = "") -> RunFailed | None:
    """The failure a finished run's run.json records (None when it succeeded), with its one
    line: `records` names what was counted ("training records"), `after` what the failure
    means for the outputs."""
    if manifest.get("status") == FAILED_LOST:
        return RecordsLost("; ".join(manifest["problems"]), manifest)
    if manifest.get("status") == FAILED_ERROR_RATE:
        counts, limit = manifest["counts"], manifest["max_error_rate"]
        stats = f"{str(manifest.get('output_dir', '')).rstrip('/')}/{errors_stats_file(manifest)}"
        return ErrorRateExceeded(
            f"{counts['errors']} of {counts['read']} {records} failed ({counts['error_rate']:.2%}), above "
            f"--max_error_rate {limit:.2%}{after}; see {stats}",
            manifest,
        )
    if manifest.get("status") == BLOCKED:
        return DataQualityBlocked(blocked_line(manifest), manifest)
    return None


def blocked_line(manifest: dict) -> str:
    """Why the gate blocked a run, what it kept back, what to do: one line."""
    checks = [c for c in manifest.get("quality", {}).get("checks", []) if c.get("level") == CHECK_BLOCK]
    shown = "; ".join(
        f"{c['subject']}: {c['measure']} {c['value']:.3g} against {c['against']} "
        f"(block above {c['block']:g} + {c['allowance']:.2g} for sample size)"
        for c in checks[:3]
    )
    more = f" and {len(checks) - 3} more" if len(checks) > 3 else ""
    output_dir = str(manifest.get("output_dir", "")).rstrip("/")
    return (
        f"the data-quality gate blocked publishing: {shown}{more}; the outputs stay in "
        f"{output_dir}/{STAGING_DIR}, see {output_dir}/{REPORT}; if the shift is real, re-run with "
        "--accept_drift to publish"
    )
