"""The run contract: what a run leaves in its output directory, how it is judged, how it exits
(as `transforms/model_contract.py` is what a model directory holds).

The names of the files a run writes, the counts `run.json` holds, the statuses it can end
with, the verdict that picks one, and the exit code each failure gets. Every stage, the
launchers, the report and the trainer (which reads analyze's `run.json`) take these facts
from here, so this module imports nothing but the standard library: no Beam, no TensorFlow.
"""

from __future__ import annotations

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
ANALYZE_JOB = "analyze"  # run.json's "job" of an analyze run (predict runs have none)


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


# --- Exit codes: one per way a command ends (a scheduler acts on them) ----------------------

EXIT_OK = 0
EXIT_FAILED = 1  # lost records, a failed parity gate, a crash
EXIT_USAGE = 2  # a flag, path, input, schema or config the user can fix
EXIT_ERROR_RATE = 3  # more errors than --max_error_rate allows (everything still written)
EXIT_SKIPPED = 4  # nightly: the date was done already


class OptionsError(ValueError):
    """A flag is missing or wrong; the message names it."""


class InputError(ValueError):
    """An input or output location a user gave cannot be used (matches nothing, is not in the
    format it claims, is locked by another run); the message says which and what to do."""


class RunFailed(RuntimeError):
    """A run ended and wrote everything, but failed; `manifest` is its run.json."""

    def __init__(self, message: str, manifest: dict | None = None):
        super().__init__(message)
        self.manifest = manifest


class ErrorRateExceeded(RunFailed):
    """More records failed than --max_error_rate allows (everything was still written)."""


class RecordsLost(RunFailed):
    """The run's counts do not add up: read != scored + errors (a bug; run.json says where)."""
