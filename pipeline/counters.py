"""The run's counters: Beam counters by stable names, and this process's live tally.

Beam counters (namespace METRICS_NAMESPACE) show in the Dataflow UI (Job metrics -> Custom
counters) and in the dashboards and alerts built on them, so their names are stable:
rename one only with a deprecation note; add new ones here. Every step makes its counters
with `counter(NAME)`, which refuses a name not listed in COUNTERS.

The tally is what a local run shows as progress (`pipeline.runners.progress`): the reading
and scoring steps add to it where they count, from any thread. Only steps that run in this
process reach it.
"""

from __future__ import annotations

import threading

METRICS_NAMESPACE = "adpredict"

FILES_READ = "files_read"
FILE_PARTS_READ = "file_parts_read"  # byte ranges or row-group runs of large files, and whole files
RECORDS_READ = "records_read"
RECORDS_MALFORMED = "records_malformed"
RECORDS_INVALID = "records_invalid"
MODEL_LOADS = "model_loads"
MODEL_BATCHES = "model_batches"
RECORDS_INFERENCE_FAILED = "records_inference_failed"
BATCH_SIZE_HALVINGS = "batch_size_halvings"
PREDICTIONS_WRITTEN = "predictions_written"
ERRORS_WRITTEN = "errors_written"
BIGQUERY_PREDICTIONS_LOADED = "bigquery_predictions_loaded"
BIGQUERY_ERRORS_LOADED = "bigquery_errors_loaded"
COUNTERS = (
    FILES_READ,
    FILE_PARTS_READ,
    RECORDS_READ,
    RECORDS_MALFORMED,
    RECORDS_INVALID,
    MODEL_LOADS,
    MODEL_BATCHES,
    RECORDS_INFERENCE_FAILED,
    BATCH_SIZE_HALVINGS,
    PREDICTIONS_WRITTEN,
    ERRORS_WRITTEN,
    BIGQUERY_PREDICTIONS_LOADED,
    BIGQUERY_ERRORS_LOADED,
)


def counter(name: str):
    """The Beam counter `name` of namespace METRICS_NAMESPACE (made in a DoFn's constructor)."""
    from apache_beam.metrics import Metrics

    if name not in COUNTERS:
        raise ValueError(f"counter {name!r} is not listed in pipeline.counters.COUNTERS; add it there")
    return Metrics.counter(METRICS_NAMESPACE, name)


class Tally:
    """Records read, scored and failed so far in this process; safe to add to from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._read = self._scored = self._errors = 0

    def add(self, read: int = 0, scored: int = 0, errors: int = 0) -> None:
        with self._lock:
            self._read += read
            self._scored += scored
            self._errors += errors

    def reset(self) -> None:
        with self._lock:
            self._read = self._scored = self._errors = 0

    def snapshot(self) -> tuple[int, int, int]:
        """(read, scored, errors), taken together."""
        with self._lock:
            return self._read, self._scored, self._errors


TALLY = Tally()


def add(read: int = 0, scored: int = 0, errors: int = 0) -> None:
    """Adds to this process's tally (what the pipeline's steps call)."""
    TALLY.add(read, scored, errors)
