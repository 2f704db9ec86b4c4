"""The end of a run, inside the pipeline: counts as data, the check, `run.json`, `_SUCCESS`.

`run.json` records what ran (inputs, model and its fingerprint, runner, versions), what
came out (counts) and how long it took; `_SUCCESS` is written last and only when every
record is accounted for and the run met its error threshold, so a scheduler can trust it.

Both are written by the pipeline's last step, which runs only after every write has
finished: on Dataflow the launcher may exit as soon as the job is submitted, so nothing
that matters may happen after `wait_until_finish()`. The counts are data flowing to that
step as (name, number) pairs, not runner metrics, which differ from runner to runner.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

RUN_MANIFEST = "run.json"
SUCCESS_MARKER = "_SUCCESS"

# Names of the counts every run reports; other (name, number) pairs are reported as they come.
READ, PREDICTIONS, ERRORS = "read", "predictions", "errors"
SUCCEEDED = "succeeded"
FAILED_ERROR_RATE = "failed: error rate above --max_error_rate"
FAILED_LOST = "failed: records lost"


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the SavedModel graph and variable index: changes when the model does."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "variables/variables.index"):
        path = FileSystems.join(model_dir, name)
        if FileSystems.exists(path):
            with FileSystems.open(path) as f:
                digest.update(f.read())
    return digest.hexdigest()


def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("adpredict", "apache-beam", "tensorflow", "tensorflow-transform", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def write_manifest(output_dir: str, manifest: dict, success: bool) -> str:
    path = FileSystems.join(output_dir, RUN_MANIFEST)
    with FileSystems.create(path) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    if success:
        with FileSystems.create(FileSystems.join(output_dir, SUCCESS_MARKER)):
            pass
    return path


def read_manifest(output_dir: str) -> dict:
    with FileSystems.open(FileSystems.join(output_dir, RUN_MANIFEST)) as f:
        return json.loads(f.read().decode("utf-8"))


def utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def judge(counts: dict, max_error_rate: float, loaded: dict | None = None) -> tuple[str, list[str]]:
    """The run's status and, when records went missing, how many and where."""
    read, predicted, errors = counts.get(READ, 0), counts.get(PREDICTIONS, 0), counts.get(ERRORS, 0)
    lost = []
    if read != predicted + errors:
        lost.append(f"records read ({read}) != predictions ({predicted}) + errors ({errors})")
    if loaded is not None and loaded != {PREDICTIONS: predicted, ERRORS: errors}:
        lost.append(f"BigQuery loaded {loaded} rows, not predictions {predicted} and errors {errors}")
    if lost:
        return FAILED_LOST, lost
    error_rate = errors / read if read else 0.0
    return (SUCCEEDED if error_rate <= max_error_rate else FAILED_ERROR_RATE), []


class _WriteManifestFn(beam.DoFn):
    def __init__(self, output_dir: str, run_info: dict, max_error_rate: float, loaded_names: dict | None):
        self._output_dir = output_dir
        self._run_info = run_info
        self._max_error_rate = max_error_rate
        self._loaded_names = loaded_names

    def process(self, _, counts: dict, written: int):
        counts = {name: int(value) for name, value in sorted(counts.items())}
        for name in (READ, PREDICTIONS, ERRORS):
            counts.setdefault(name, 0)
        counts["error_rate"] = round(counts[ERRORS] / counts[READ], 6) if counts[READ] else 0.0
        loaded = None
        if self._loaded_names:
            loaded = {role: counts.pop(name, 0) for role, name in self._loaded_names.items()}
            counts["bigquery_rows_loaded"] = loaded
        status, lost = judge(counts, self._max_error_rate, loaded)
        finished = time.time()
        started = self._run_info.get("started", finished)
        manifest = {
            **{k: v for k, v in self._run_info.items() if k != "started"},
            "status": status,
            "problems": lost,
            "counts": counts,
            "outputs_written": written,
            "max_error_rate": self._max_error_rate,
            "timings": {
                "started": utc(started),
                "finished": utc(finished),
                "seconds": round(finished - started, 3),
            },
        }
        write_manifest(self._output_dir, manifest, success=status == SUCCEEDED)
        yield manifest


class FinalizeRun(beam.PTransform):
    """{"counts": (name, number) pairs, any other name: a write's output} -> `run.json`,
    then `_SUCCESS`.

    The writes' outputs (file names, loaded tables) reach the last step as a side input, so
    it runs only once all of them are complete.
    `loaded_names` maps "predictions"/"errors" to the counts of rows BigQuery loaded.
    """

    def __init__(self, output_dir: str, run_info: dict, max_error_rate: float = 1.0, loaded_names=None):
        super().__init__()
        self._fn = _WriteManifestFn(output_dir, run_info, max_error_rate, loaded_names)

    def expand(self, inputs: dict):
        counts = inputs["counts"]
        written = [pcoll for name, pcoll in sorted(inputs.items()) if name != "counts"]
        totals = counts | "SumCounts" >> beam.CombinePerKey(sum)
        done = (
            tuple(written)
            | "AllWrites" >> beam.Flatten()
            | "Finished" >> beam.Map(lambda _: 1)
            | "CountOutputs" >> beam.CombineGlobally(sum)
        )
        return (
            counts.pipeline
            | "Once" >> beam.Create([None])
            | "WriteManifest"
            >> beam.ParDo(self._fn, beam.pvalue.AsDict(totals), beam.pvalue.AsSingleton(done))
        )
