"""The end of a run, inside the pipeline: counts as data, the check, `run.json`, `_SUCCESS`.

`run.json` records what ran (inputs, model and its fingerprint, runner, versions), what
came out (counts) and how long it took; `_SUCCESS` is written last and only when every
record is accounted for and the run met its error threshold, so a scheduler can trust it.

Both are written by the pipeline's last step, which runs only after every write has
finished: on Dataflow the launcher may exit as soon as the job is submitted, so nothing
that matters may happen after `wait_until_finish()`. The counts are data flowing to that
step as (name, number) pairs, not runner metrics, which differ from runner to runner.

The same step publishes the run's files: every sink writes into `.adpredict-staging/` under
the output directory, where no reader looks (Hadoop and Spark skip names starting with `.`
or `_`, and `prediction.results-*`, even as a Cloud Storage prefix, does not reach in), and
the last step moves them into place before `run.json` and `_SUCCESS`. A run killed before its
end leaves nothing in the output directory that looks like results. It also removes the
run's lock file (`.adpredict-run.lock`, taken at launch), so two runs cannot write into
one directory at once.

For `predict` it writes `report.html` too (`pipeline.report`), from summaries computed as data
like the counts, before `run.json` and `_SUCCESS`: a reader that waits for `_SUCCESS` finds
it, and a failed run has one, since it is what a person debugging the run reads.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import logging
import os
import platform
import socket
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.entrypoint import DEFAULT_MAX_ERROR_RATE
from pipeline.io import InputError
from pipeline.report import OutputSummariesFn, ThroughputFn, render_report
from pipeline.write import ERRORS_STATS, CountErrorsFn

RUN_MANIFEST = "run.json"
REPORT = "report.html"
SUCCESS_MARKER = "_SUCCESS"
STAGING_DIR = ".adpredict-staging"  # the sinks write here; the last step publishes
RUN_LOCK = ".adpredict-run.lock"  # one run at a time per output directory
BEAM_TEMP_PREFIX = "beam-temp-"  # Beam's file sinks write shards in such folders, then rename

# Names of the counts every run reports; other (name, number) pairs are reported as they come.
READ, PREDICTIONS, ERRORS = "read", "predictions", "errors"
SUCCEEDED = "succeeded"
FAILED_ERROR_RATE = "failed: error rate above --max_error_rate"
FAILED_LOST = "failed: records lost"

# FinalizeRun inputs that are summarized (with a CombineFn each), not writes to wait for.
ERROR_LISTS = "errors"  # lists of error records -> pipeline.write.CountErrorsFn -> prediction.errors_stats
OUTPUT_SUMMARIES = "output_summaries"  # ScoredBlocks -> pipeline.report.OutputSummariesFn
THROUGHPUT = "throughput"  # (time, records) stamps -> pipeline.report.ThroughputFn
REPORT_INPUTS = (OUTPUT_SUMMARIES, THROUGHPUT)


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


def staging_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, STAGING_DIR)


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def remove_trees(pattern: str) -> None:
    """Deletes the folders matching `pattern` with all they hold; on an object store, every
    object under the matching prefixes (a prefix is not a folder that can go at once)."""
    if is_local(pattern):
        folders = glob.glob(pattern)  # a pattern starting with "." matches hidden names
        if folders:
            FileSystems.delete(folders)
        return
    objects = FileSystems.match([f"{pattern.rstrip('/')}/**"])[0].metadata_list
    if objects:
        FileSystems.delete([m.path for m in objects])


def publish_staged(output_dir: str) -> list[str]:
    """Moves every file the run staged into `output_dir`, then removes the staging folder;
    returns the published paths.

    Each move is one rename (a copy and a delete on Cloud Storage): not atomic as a whole,
    but the window is the moves themselves, and `_SUCCESS` still comes after them. Files
    already moved are not staged any more, so a retried last step publishes the rest.
    """
    staged = staging_dir(output_dir)
    sources = [
        m.path
        for m in FileSystems.match([FileSystems.join(staged, "*")])[0].metadata_list
        if _publishable(m.path)
    ]
    targets = [FileSystems.join(output_dir, _basename(path)) for path in sources]
    if sources:
        FileSystems.rename(sources, targets)
    remove_trees(staged)
    return targets


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _publishable(path: str) -> bool:
    """A staged output, not a sink's temporary folder (Beam deletes those, but a folder it
    could not delete must not land among the results)."""
    name = _basename(path)
    return bool(name) and not name.startswith((".", BEAM_TEMP_PREFIX))


def finished_run(output_dir: str, max_error_rate: float, records: str = "records", after: str = "") -> dict:
    """The run.json the pipeline wrote, read by the launcher; raises when the run failed.

    `records` names what was counted in the message ("training records"), `after` says what
    the failure means for the outputs."""
    from pipeline.entrypoint import ErrorRateExceeded, RecordsLost

    manifest = read_manifest(output_dir)
    if manifest["status"] == FAILED_LOST:
        raise RecordsLost("; ".join(manifest["problems"]))
    if manifest["status"] == FAILED_ERROR_RATE:
        counts = manifest["counts"]
        raise ErrorRateExceeded(
            f"{counts['errors']} of {counts['read']} {records} failed ({counts['error_rate']:.2%}), above "
            f"--max_error_rate {max_error_rate:.2%}{after}; see {FileSystems.join(output_dir, ERRORS_STATS)}"
        )
    return manifest


def utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def judge(
    counts: dict, max_error_rate: float, loaded: dict | None = None, scored: str = PREDICTIONS
) -> tuple[str, list[str]]:
    """The run's status and, when records went missing, how many and where.

    `scored` names the count of records that made it (predictions; for analyze, the rows
    it analyzed)."""
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


class _WriteManifestFn(beam.DoFn):
    def __init__(
        self, output_dir: str, run_info: dict, max_error_rate: float, loaded_names: dict | None, scored: str
    ):
        self._output_dir = output_dir
        self._run_info = run_info
        self._max_error_rate = max_error_rate
        self._loaded_names = loaded_names
        self._scored = scored

    def process(
        self, _, counts: dict, written: list, error_kinds: str, output_summaries=None, throughput=None
    ):
        """Side inputs: the summed counts, what the writes emitted, `CountErrorsFn`'s JSON, and
        the report's summaries (None: no report, as for analyze)."""
        counts = {name: int(value) for name, value in sorted(counts.items())}
        for name in (READ, self._scored, ERRORS):
            counts.setdefault(name, 0)
        counts["error_rate"] = round(counts[ERRORS] / counts[READ], 6) if counts[READ] else 0.0
        loaded = None
        if self._loaded_names:
            loaded = {role: counts.pop(name, 0) for role, name in self._loaded_names.items()}
            counts["bigquery_rows_loaded"] = loaded
        status, lost = judge(counts, self._max_error_rate, loaded, self._scored)
        published = publish_staged(self._output_dir)
        write_errors_stats(self._output_dir, error_kinds)
        finished = time.time()
        started = self._run_info.get("started", finished)
        manifest = {
            **{k: v for k, v in self._run_info.items() if k != "started"},
            "status": status,
            "problems": lost,
            "counts": counts,
            "outputs_written": len(written),
            "files_published": len(published),
            "max_error_rate": self._max_error_rate,
            "timings": {
                "started": utc(started),
                "finished": utc(finished),
                "seconds": round(finished - started, 3),
            },
        }
        if output_summaries is not None:
            manifest["report"] = write_report(
                self._output_dir, manifest, error_kinds, output_summaries, throughput
            )
        write_manifest(self._output_dir, manifest, success=status == SUCCEEDED)
        release_run_lock(self._output_dir, self._run_info.get("run_id"))
        yield manifest


def write_errors_stats(output_dir: str, error_kinds: str) -> None:
    """`prediction.errors_stats`, straight into `output_dir` like `run.json`: the step that
    publishes the run's files has the counts by kind already (they feed the report too), so a
    file sink of its own (four stages and a second combine) would add nothing."""
    with FileSystems.create(FileSystems.join(output_dir, ERRORS_STATS), mime_type="application/json") as f:
        f.write((error_kinds + "\n").encode("utf-8"))


def write_report(
    output_dir: str, manifest: dict, error_kinds: str, output_summaries, throughput
) -> str | None:
    """Writes `report.html` straight into `output_dir` (not staged: it is made here, after
    the publishing, and like `run.json` it describes the run rather than being one of its
    results); returns its name for `run.json`, or None when it could not be made: a report
    is for people, and its failure must not fail a run whose results are all written."""
    manifest = {**manifest, "report": REPORT}
    try:
        page = render_report(manifest, json.loads(error_kinds), output_summaries, throughput)
        with FileSystems.create(FileSystems.join(output_dir, REPORT), mime_type="text/html") as f:
            f.write(page.encode("utf-8"))
    except Exception:  # noqa: BLE001 - see the docstring
        logging.exception("could not write %s", FileSystems.join(output_dir, REPORT))
        return None
    return REPORT


def summary_side_input(pcoll, label: str, fn: beam.CombineFn):
    """`fn` over all of `pcoll`, as a singleton side input.

    Combined without Beam's default branch (an Impulse, a stage and four transforms per
    combine, about 15 ms of a run each): an empty input's summary is the side input's
    default instead, `fn`'s result for no input."""
    combined = pcoll | label >> beam.CombineGlobally(fn).without_defaults()
    return beam.pvalue.AsSingleton(combined, default_value=fn.extract_output(fn.create_accumulator()))


class FinalizeRun(beam.PTransform):
    """{"counts": (name, number) pairs, ERROR_LISTS: lists of error records, the
    `REPORT_INPUTS` (optional, all or none), any other name: a write's output} -> the staged
    files published, `prediction.errors_stats` (the error records counted by kind),
    `report.html` (when the report's inputs are given), `run.json`, then `_SUCCESS`, then the
    run's lock file removed.

    A failed run (error rate over the threshold, records lost) publishes its files too: its
    errors and `prediction.errors_stats` are what a person debugging it reads, the contract is
    "everything written, no `_SUCCESS`", and `_SUCCESS`, not the presence of shards, says a run
    can be used. Staging guards against the run that never reaches this step.

    The writes' outputs (file names, loaded tables) reach the last step as a side input, so
    it runs only once all of them are complete; the summaries and the summed counts too.
    `output_names`: the model's outputs, in the report's order.
    `loaded_names` maps "predictions"/"errors" to the counts of rows BigQuery loaded;
    `scored` names the count of records that made it ("predictions"; analyze: "analyzed").
    """

    def __init__(
        self,
        output_dir: str,
        run_info: dict,
        max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
        loaded_names=None,
        scored: str = PREDICTIONS,
        output_names=(),
    ):
        super().__init__()
        self._fn = _WriteManifestFn(output_dir, run_info, max_error_rate, loaded_names, scored)
        self._output_names = tuple(output_names)

    def expand(self, inputs: dict):
        counts = inputs["counts"]
        report = [name for name in REPORT_INPUTS if name in inputs]
        if report and len(report) != len(REPORT_INPUTS):
            raise ValueError(f"FinalizeRun needs all of {REPORT_INPUTS} for a report, got {sorted(report)}")
        summaries = {
            "error_kinds": summary_side_input(inputs[ERROR_LISTS], "CountErrorKinds", CountErrorsFn())
        }
        if report:
            summaries["output_summaries"] = summary_side_input(
                inputs[OUTPUT_SUMMARIES], "SummarizeOutputs", OutputSummariesFn(self._output_names)
            )
            summaries["throughput"] = summary_side_input(inputs[THROUGHPUT], "Throughput", ThroughputFn())
        written = [
            pcoll
            for name, pcoll in sorted(inputs.items())
            if name not in ("counts", ERROR_LISTS, *REPORT_INPUTS)
        ]
        totals = counts | "SumCounts" >> beam.CombinePerKey(sum)
        writes = tuple(written) | "AllWrites" >> beam.Flatten()
        return (
            counts.pipeline
            | "Once" >> beam.Create([None])
            | "WriteManifest"
            >> beam.ParDo(self._fn, beam.pvalue.AsDict(totals), beam.pvalue.AsList(writes), **summaries)
        )


# --- One run at a time per output directory -------------------------------------------------

LOCAL_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


class OutputDirLocked(InputError):
    """Another run holds the output directory's lock file (exit 2, like any fixable mistake)."""


def lock_path(output_dir: str) -> str:
    return FileSystems.join(output_dir, RUN_LOCK)


def acquire_run_lock(
    output_dir: str, run_id: str, in_process: bool, force: bool = False, options=None
) -> dict:
    """Creates `<output_dir>/.adpredict-run.lock` if no run holds it; returns what it holds.

    Created exclusively: `O_CREAT|O_EXCL` locally, `if_generation_match=0` on Cloud Storage,
    so of two runs starting together one wins. On other object stores Beam's FileSystems has
    no exclusive create: there it is check-then-create, with a race window of one request.

    A lock whose holder ran the pipeline in its own process (a local runner that waits), on
    this host, with a pid that is gone, was left by a killed run and is taken over with a
    warning. Any other lock (a Dataflow job may outlive its launcher) stops the run with a
    message naming the file; `force` (--force_unlock) removes it first.
    """
    holder = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "in_process": in_process,
        "started": utc(time.time()),
        "output_dir": output_dir,
    }
    path = lock_path(output_dir)
    store = _lock_store(path, options)
    payload = json.dumps(holder, indent=2).encode("utf-8")
    for _ in range(3):  # a lock that disappears or is taken over under us: look again
        found = store.read()
        if found is None:
            if store.create(payload):
                return holder
            continue
        content, token = found
        other = _parse_lock(content)
        if force:
            logging.warning("--force_unlock: removing %s of run %s", path, _describe(other))
        elif _holder_is_gone(other):
            logging.warning("taking over %s: its run (%s) is no longer running", path, _describe(other))
        else:
            raise OutputDirLocked(locked_message(output_dir, other))
        store.remove(token)
    found = store.read()
    raise OutputDirLocked(locked_message(output_dir, _parse_lock(found[0]) if found else {}))


def locked_message(output_dir: str, holder: dict) -> str:
    path = lock_path(output_dir)
    return (
        f"--output_dir {output_dir} is in use by another run ({_describe(holder)}): lock file {path}. "
        f"Wait for that run to end; if it is not running any more, delete {path} or re-run with --force_unlock"
    )


def release_run_lock(output_dir: str, run_id: str | None) -> bool:
    """Removes the lock file if it is still `run_id`'s (a run forced out leaves the new
    holder's lock alone); True when it did. Runs where the pipeline's last step runs, so it
    uses Beam's FileSystems (the workers' credentials)."""
    if not run_id:
        return False
    path = lock_path(output_dir)
    try:
        if not FileSystems.exists(path):
            return False
        with FileSystems.open(path, compression_type="uncompressed") as f:
            holder = _parse_lock(f.read())
        if holder.get("run_id") != run_id:
            logging.warning(
                "%s is held by run %s now, not by this run: left in place", path, _describe(holder)
            )
            return False
        FileSystems.delete([path])
    except Exception as e:  # noqa: BLE001 - a lock left behind is reported, it must not fail the run
        logging.warning("could not remove the lock file %s: %s", path, e)
        return False
    return True


def _parse_lock(content: bytes) -> dict:
    try:
        holder = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("run_id"):
        return "unknown run: the lock file is empty or unreadable"
    return (
        f"run {holder['run_id']}, host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started')}"
    )


def _holder_is_gone(holder: dict) -> bool:
    """True only when the holder surely died: it ran the pipeline in its own process on this
    host, and that pid no longer exists (our own pid counts as alive)."""
    pid = holder.get("pid")
    if not (holder.get("in_process") and holder.get("host") == socket.gethostname()):
        return False
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def _lock_store(path: str, options):
    scheme = FileSystems.get_scheme(path)
    if scheme is None:
        return _LocalLock(path)
    if scheme == "gs":
        return _CloudStorageLock(path, options)
    return _FileSystemsLock(path)


class _LocalLock:
    """A lock file on a local (or mounted) file system."""

    def __init__(self, path: str):
        self.path = path

    def read(self):
        try:
            with open(self.path, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            return None
        return content, content

    def create(self, payload: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        return True

    def remove(self, token: bytes) -> bool:
        """Removes the lock only if it still holds `token`: moved aside first (atomic), and
        put back if another run had replaced it meanwhile."""
        aside = f"{self.path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != token:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            return False
        os.remove(aside)
        return True


class _CloudStorageLock:
    """A lock object on Cloud Storage, created and deleted with generation preconditions.

    Beam's FileSystems cannot express a precondition, so this uses the Cloud Storage client
    Beam itself builds from the pipeline options (same credentials, same endpoint)."""

    def __init__(self, path: str, options):
        from apache_beam.io.gcp import gcsio

        bucket, self._name = gcsio.parse_gcs_path(path)
        self._bucket = gcsio.GcsIO(pipeline_options=options).client.bucket(bucket)

    def read(self):
        from google.api_core import exceptions

        try:
            blob = self._bucket.get_blob(self._name)
            if blob is None:
                return None
            return blob.download_as_bytes(), blob.generation
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPIError as e:
            raise OSError(f"cannot read the lock file gs://{self._bucket.name}/{self._name}: {e}") from e

    def create(self, payload: bytes) -> bool:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name).upload_from_string(
                payload, content_type="application/json", if_generation_match=0
            )
        except exceptions.PreconditionFailed:
            return False
        except exceptions.GoogleAPIError as e:
            raise OSError(f"cannot create the lock file gs://{self._bucket.name}/{self._name}: {e}") from e
        return True

    def remove(self, generation) -> bool:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name).delete(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return False
        return True


class _FileSystemsLock:
    """Any other Beam file system: check-then-create, racy by one request (documented)."""

    def __init__(self, path: str):
        self.path = path

    def read(self):
        if not FileSystems.exists(self.path):
            return None
        with FileSystems.open(self.path, compression_type="uncompressed") as f:
            content = f.read()
        return content, content

    def create(self, payload: bytes) -> bool:
        if FileSystems.exists(self.path):
            return False
        with FileSystems.create(self.path, compression_type="uncompressed") as f:
            f.write(payload)
        return True

    def remove(self, token: bytes) -> bool:
        found = self.read()
        if found is None or found[0] != token:
            return False
        FileSystems.delete([self.path])
        return True
