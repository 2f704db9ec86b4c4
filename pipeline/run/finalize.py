"""The end of a run, inside the pipeline: counts as data, the verdict, `run.json`, `_SUCCESS`.

`run.json` records what ran (inputs, model and its fingerprint and training figures,
runner, versions), what came out (counts, per input too), how long it took and what it cost
(`pipeline.reporting.cost`); `_SUCCESS` is written last and only when every record is
accounted for and the run met its error threshold, so a scheduler can trust it.

Both are written by the pipeline's last step, which runs only after every write has
finished: on Dataflow the launcher may exit as soon as the job is submitted, so nothing
that matters may happen after `wait_until_finish()`. The counts are data flowing to that
step as (name, number) pairs, not runner metrics, which differ from runner to runner.

The same step publishes the staged files (`pipeline.run.staging`), writes the error counts by
kind and, for `predict`, `report.html` (`pipeline.reporting`, from summaries computed as data
like the counts) before `run.json` and `_SUCCESS`: a reader that waits for `_SUCCESS` finds
it, and a failed run has one, since it is what a person debugging the run reads. Last, it
removes the run's lock file (`pipeline.run.lock`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from pipeline.quality.gate import QualityConfig
from pipeline.quality.profiling import DuplicateKeysFn, ProfileOutputsFn, ProfileRecordsFn
from pipeline.reporting import cost
from pipeline.reporting.page import render_report
from pipeline.reporting.summaries import CountErrorsFn, OutputSummariesFn, ThroughputFn, errors_stats
from pipeline.run.lock import release_run_lock
from pipeline.run.manifest import manifest_of_run, model_training, utc, write_manifest
from pipeline.run.staging import publish_staged
from pipeline.run_contract import (
    BLOCKED,
    DEFAULT_MAX_ERROR_RATE,
    ERRORS,
    PREDICTIONS,
    QUALITY_BLOCKED,
    READ,
    REPORT,
    SUCCEEDED,
    RunFailed,
    errors_stats_file,
    judge,
    run_failure,
)

_LOGGER = logging.getLogger(__name__)

# FinalizeRun inputs that are summarized (with a CombineFn each), not writes to wait for.
COUNTS = "counts"  # (name, number) pairs, summed per name; ((READ, input), n): read per input
ERROR_LISTS = "errors"  # lists of error records -> CountErrorsFn -> errors_stats, counts_by_input
OUTPUT_SUMMARIES = "output_summaries"  # ScoredBlocks -> OutputSummariesFn
THROUGHPUT = "throughput"  # (time, records) stamps -> ThroughputFn
REPORT_INPUTS = (OUTPUT_SUMMARIES, THROUGHPUT)
# The data-quality gate (with RunConfig.quality): JudgeQuality's inputs, profiled then judged,
# and FinalizeRun's input of its verdict.
QUALITY_RECORDS = "quality_records"  # the record stream -> ProfileRecordsFn
QUALITY_OUTPUTS = "quality_outputs"  # ScoredBlocks -> ProfileOutputsFn
DUPLICATE_KEYS = "duplicate_keys"  # per key part, its repeats -> DuplicateKeysFn
READ_COUNTS = "read_counts"  # the reading step's (name, number) pairs: tonight's volume
QUALITY = "quality"  # JudgeQuality's output: run.json's `quality`, one element
DEVICES = "devices"  # each model load's device report -> DevicesFn: run.json's `workers`


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What the last step records and judges a run by: run.json's fields known at launch
    (`info`: run_id, started, inputs, model, ...) and the error threshold; how its failure
    line names the records ("training records") and what a failure means for the outputs."""

    info: dict = dataclasses.field(default_factory=dict)
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    records: str = "records"
    failed_means: str = ""
    quality: QualityConfig | None = None  # None: no data-quality gate (analyze, --quality_gate off)

    def failure(self, manifest: dict) -> RunFailed | None:
        """The failure `manifest` (this run's run.json) records, with its one line, or None."""
        return run_failure(manifest, self.records, self.failed_means)


def summed_counts(counts: dict, scored: str, loaded_names: dict | None) -> tuple[dict, dict | None]:
    """The counts of run.json (read, `scored`, errors always there; the error rate) and, for
    BigQuery outputs, the rows each load reported, by role. Counts per input ((READ, input)
    keys) are not among them: `counts_by_input` lists them."""
    counts = {name: int(counts[name]) for name in sorted(n for n in counts if isinstance(n, str))}
    for name in (READ, scored, ERRORS):
        counts.setdefault(name, 0)
    counts["error_rate"] = round(counts[ERRORS] / counts[READ], 6) if counts[READ] else 0.0
    loaded = None
    if loaded_names:
        loaded = {role: counts.pop(name, 0) for role, name in loaded_names.items()}
        counts["bigquery_rows_loaded"] = loaded
    return counts, loaded


def read_by_input(counts: dict) -> dict:
    """The records read per input, from the counts keyed (READ, input): {input: records}."""
    return {
        name[1]: int(value)
        for name, value in counts.items()
        if isinstance(name, tuple) and len(name) == 2 and name[0] == READ
    }


def counts_by_input(files: list, read: dict, errors: dict, scored: str) -> list[dict] | None:
    """run.json's `counts_by_input`: per input (the files in `inputs.files` order, then any
    other input an error names, e.g. a table), the records read, scored and failed. "read"
    and `scored` are None where the reading step gave no count for the input (none at all
    from a reading step that counts only totals); "errors" comes from the error records'
    sources. None: no input is known."""
    names = [f for f in files or () if isinstance(f, str)]
    names += sorted((set(read) | set(errors)) - set(names))
    if not names:
        return None
    rows = []
    for name in names:
        n = read.get(name)
        failed = errors.get(name, 0)
        rows.append({"input": name, "read": n, scored: None if n is None else n - failed, "errors": failed})
    return rows


def mean_predictions(output_summaries) -> dict | None:
    """run.json's `mean_prediction`: each numeric model output's mean over this run's finite
    values (what the report puts beside the model's mean in training)."""
    means = {s["name"]: round(s["mean"], 6) for s in output_summaries or () if s.get("mean") is not None}
    return means or None


def launch_facts(options) -> dict:
    """What the last step records of the launch that only the options say: the Dataflow job's
    name (None when it has none) and the basis of the run's cost."""
    return {"job_name": options.view_as(GoogleCloudOptions).job_name, "cost_basis": cost.basis(options)}


def write_errors_stats(output_dir: str, name: str, error_kinds: str) -> None:
    """The error counts by kind, straight into `output_dir` like `run.json`: the step that
    publishes the run's files has them already (they feed the report too), so a file sink
    of its own (four stages and a second combine) would add nothing."""
    with FileSystems.create(FileSystems.join(output_dir, name), mime_type="application/json") as f:
        f.write((error_kinds + "\n").encode("utf-8"))


def write_report(
    output_dir: str, manifest: dict, error_summary: dict, output_summaries, throughput, published=()
) -> str | None:
    """Writes `report.html` straight into `output_dir` (not staged: it is made here, after
    the publishing, and like `run.json` it describes the run rather than being one of its
    results); returns its name for `run.json`, or None when it could not be made: a report
    is for people, and its failure must not fail a run whose results are all written."""
    manifest = {**manifest, "report": REPORT}
    try:
        files = [path.rstrip("/").rsplit("/", 1)[-1] for path in published]
        page = render_report(manifest, error_summary, output_summaries, throughput, published=files)
        with FileSystems.create(FileSystems.join(output_dir, REPORT), mime_type="text/html") as f:
            f.write(page.encode("utf-8"))
    except Exception:  # noqa: BLE001 - see the docstring
        logging.exception("could not write %s", FileSystems.join(output_dir, REPORT))
        return None
    return REPORT


class _FinishRunFn(beam.DoFn):
    """The run's last step, run once after every write: judge, publish, write the error
    counts, the report, run.json and _SUCCESS, unlock. Yields run.json's content."""

    def __init__(
        self,
        output_dir: str,
        run: RunConfig,
        loaded_names: dict | None,
        scored: str,
        launch: dict | None = None,
    ):
        self._output_dir = output_dir
        self._run = run
        self._loaded_names = loaded_names
        self._scored = scored
        self._launch = launch  # `launch_facts`; None: a local run's, worked out when needed

    def process(self, _, written: list, summaries: dict, quality=None):
        """Side inputs: what the writes emitted; `summaries` (`FinalizeRun`'s one combine): the
        summed `counts`, `error_kinds` (`CountErrorsFn`'s summary, or the errors_stats file's
        JSON), the report's `output_summaries` and `throughput` (absent: no report, as for
        analyze) and the model loads' `devices`; the data-quality verdict (None: no gate)."""
        counts, error_kinds = summaries["counts"], summaries["error_kinds"]
        output_summaries, throughput = summaries.get("output_summaries"), summaries.get("throughput")
        devices = summaries.get("devices")
        output_dir, info = self._output_dir, self._run.info
        earlier = manifest_of_run(output_dir, info.get("run_id"))
        if earlier is not None:  # Beam retries a failed bundle: the run was finished already
            yield self._ended(earlier)
            return
        if isinstance(error_kinds, str):
            error_kinds = json.loads(error_kinds)
        launch = self._launch or launch_facts(PipelineOptions([]))
        by_input = read_by_input(counts)
        counts, loaded = summed_counts(counts, self._scored, self._loaded_names)
        held_back = quality is not None and quality["verdict"] == QUALITY_BLOCKED
        # A blocked run's BigQuery loads loaded nothing, by design: not records lost.
        status, lost = judge(counts, self._run.max_error_rate, None if held_back else loaded, self._scored)
        if held_back and status == SUCCEEDED:
            status = BLOCKED
        published = [] if held_back else publish_staged(output_dir)
        write_errors_stats(output_dir, errors_stats_file(info), errors_stats(error_kinds))
        finished = time.time()
        started = info.get("started", finished)
        seconds = round(finished - started, 3)
        predictions = counts[PREDICTIONS] if self._scored == PREDICTIONS else None
        manifest = {
            **{k: v for k, v in info.items() if k != "started"},
            "job_name": launch["job_name"],
            "output_dir": info.get(
                "output_dir", output_dir
            ),  # where it lands (an S3 analyze writes here first)
            "status": status,
            "problems": lost,
            "counts": counts,
            "counts_by_input": counts_by_input(
                (info.get("inputs") or {}).get("files"),
                by_input,
                error_kinds.get("by_input") or {},
                self._scored,
            ),
            "outputs_written": len(written),
            "files_published": len(published),
            "max_error_rate": self._run.max_error_rate,
            "timings": {"started": utc(started), "finished": utc(finished), "seconds": seconds},
            "cost": cost.estimate(
                launch["cost_basis"], seconds, counts[READ], predictions, cost.this_machine_cpus()
            ),
        }
        if isinstance(info.get("model"), dict) and info["model"].get("dir"):
            manifest["model"] = {**info["model"], "training": model_training(info["model"]["dir"])}
        if quality is not None:
            manifest["quality"] = quality
        if devices is not None:
            manifest["workers"] = devices
        if output_summaries is not None:
            manifest["mean_prediction"] = mean_predictions(output_summaries)
            manifest["report"] = write_report(
                output_dir, manifest, error_kinds, output_summaries, throughput, published
            )
        write_manifest(output_dir, manifest, success=status == SUCCEEDED)
        release_run_lock(output_dir, info.get("run_id"))
        yield self._ended(manifest)

    def _ended(self, manifest: dict) -> dict:
        """`manifest` if the run succeeded; else the pipeline itself fails, with the one line
        run.json's status stands for, so that whoever launched it sees the job fail (a Dataflow
        job's state is FAILED, a Flex Template's or a launcher's that does not wait too)."""
        failure = self._run.failure(manifest)
        if failure is None:
            return manifest
        line = f"adpredict: run failed: {failure}"
        _LOGGER.error("%s", line)  # the job's log: one line to find, before Beam's traceback
        raise RunFailedInPipeline(line)


class RunFailedInPipeline(RuntimeError):
    """Raised by a run's last step after it wrote run.json (and no _SUCCESS) for a failed run."""


# Where a run's failure is logged: here (its one line), and where Beam logs a step's exception.
FAILURE_LOGGERS = (__name__, "apache_beam.runners.common")


class SumPerKeyFn(beam.CombineFn):
    """(key, number) pairs -> {key: their sum} (`CombinePerKey(sum)` as one combine's part)."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, pair):
        key, number = pair
        accumulator[key] = accumulator.get(key, 0) + number
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for key, number in accumulator.items():
                merged[key] = merged.get(key, 0) + number
        return merged

    def extract_output(self, accumulator):
        return accumulator


class DevicesFn(SumPerKeyFn):
    """Model loads' device reports -> each distinct report once, with how many processes gave
    it (run.json's `workers`: did the run use the bf16 units, the GPU it asked for?)."""

    def add_input(self, accumulator, report):
        return super().add_input(accumulator, (json.dumps(report, sort_keys=True), 1))

    def extract_output(self, accumulator):
        return [{**json.loads(key), "processes": n} for key, n in sorted(accumulator.items())]


class SummariesFn(beam.CombineFn):
    """Several CombineFns as one: (name, accumulator of that name's fn) pairs in (see
    `PartialCombineFn`), {name: that fn's result over everything} out; a name that saw no
    input gets its fn's result for none."""

    def __init__(self, fns: dict):
        self._fns = dict(fns)

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, item):
        name, partial = item
        return self.merge_accumulators([accumulator, {name: partial}])

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for name, held in accumulator.items():
                merged[name] = (
                    held if name not in merged else self._fns[name].merge_accumulators([merged[name], held])
                )
        return merged

    def extract_output(self, accumulator):
        return {
            name: fn.extract_output(accumulator[name] if name in accumulator else fn.create_accumulator())
            for name, fn in self._fns.items()
        }


class PartialCombineFn(beam.DoFn):
    """A bundle's values -> one (name, `fn`'s accumulator of them), emitted when the bundle
    ends: the combine's first half, done where the values are made, as Beam does for one
    combine. Only accumulators (a few kilobytes) then cross to `SummariesFn`, not the record
    and scored blocks themselves."""

    def __init__(self, name: str, fn: beam.CombineFn):
        self._name = name
        self._fn = fn

    def setup(self):
        self._fn.setup()

    def start_bundle(self):
        self._accumulator = None

    def process(self, value):
        if self._accumulator is None:
            self._accumulator = self._fn.create_accumulator()
        self._accumulator = self._fn.add_input(self._accumulator, value)

    def finish_bundle(self):
        if self._accumulator is not None:
            accumulator, self._accumulator = self._accumulator, None
            yield GlobalWindows.windowed_value((self._name, accumulator))

    def teardown(self):
        self._fn.teardown()


def summaries_side_input(parts: dict, label: str):
    """{name: (pcoll, fn)} -> one singleton side input {name: `fn` over all of `pcoll`}.

    One combine for all of them: each input is accumulated per bundle where it is made
    (`PartialCombineFn`), and the accumulators, tagged with their names, are merged by one
    combine. A local run pays about 6 ms per combine stage, and Dataflow a shuffle each.
    Combined without Beam's default branch (an Impulse, a stage and four transforms, ~15 ms):
    for no input at all the side input's default is every fn's result for none."""
    fn = SummariesFn({name: part_fn for name, (_, part_fn) in parts.items()})
    partials = tuple(
        pcoll | f"{label}/Accumulate/{name}" >> beam.ParDo(PartialCombineFn(name, part_fn))
        for name, (pcoll, part_fn) in sorted(parts.items())
    )
    combined = (
        partials | f"{label}/Flatten" >> beam.Flatten() | label >> beam.CombineGlobally(fn).without_defaults()
    )
    return beam.pvalue.AsSingleton(combined, default_value=fn.extract_output({}))


class FinalizeRun(beam.PTransform):
    """{COUNTS: (name, number) pairs, ERROR_LISTS: lists of error records, the
    `REPORT_INPUTS` (optional, all or none), any other name: a write's output} -> the staged
    files published, the error records counted by kind (`prediction.errors_stats`),
    `report.html` (when the report's inputs are given), `run.json`, then `_SUCCESS`, then the
    run's lock file removed.

    A failed run (error rate over the threshold, records lost) publishes its files too: its
    errors and their counts are what a person debugging it reads, the contract is
    "everything written, no `_SUCCESS`", and `_SUCCESS`, not the presence of shards, says a run
    can be used. Staging guards against the run that never reaches this step.

    The writes' outputs (file names, loaded tables) reach the last step as a side input, so
    it runs only once all of them are complete; the summaries and the summed counts too.
    `output_names`: the model's outputs, in the report's order.
    `loaded_names` maps "predictions"/"errors" to the counts of rows BigQuery loaded;
    `scored` names the count of records that made it ("predictions"; analyze: "analyzed").
    `QUALITY`: the data-quality verdict (`JudgeQuality`); a run it blocks publishes nothing
    and ends `BLOCKED`.
    """

    def __init__(
        self,
        output_dir: str,
        run: RunConfig,
        loaded_names: dict | None = None,
        scored: str = PREDICTIONS,
        output_names=(),
    ):
        super().__init__()
        self._finish = (output_dir, run, loaded_names, scored)
        self._output_names = tuple(output_names)

    def expand(self, inputs: dict):
        counts = inputs[COUNTS]
        report = [name for name in REPORT_INPUTS if name in inputs]
        if report and len(report) != len(REPORT_INPUTS):
            raise ValueError(f"FinalizeRun needs all of {REPORT_INPUTS} for a report, got {sorted(report)}")
        parts = {"counts": (counts, SumPerKeyFn()), "error_kinds": (inputs[ERROR_LISTS], CountErrorsFn())}
        if report:
            started = self._finish[1].info.get("started", 0.0)  # buckets start with the run
            parts["output_summaries"] = (inputs[OUTPUT_SUMMARIES], OutputSummariesFn(self._output_names))
            parts["throughput"] = (inputs[THROUGHPUT], ThroughputFn(started))
        if DEVICES in inputs:
            parts["devices"] = (inputs[DEVICES], DevicesFn())
        side = {"summaries": summaries_side_input(parts, "Summaries")}
        if QUALITY in inputs:
            side["quality"] = beam.pvalue.AsSingleton(inputs[QUALITY])
        written = [
            pcoll
            for name, pcoll in sorted(inputs.items())
            if name not in (COUNTS, ERROR_LISTS, QUALITY, DEVICES, *REPORT_INPUTS)
        ]
        writes = tuple(written) | "AllWrites" >> beam.Flatten()
        finish = _FinishRunFn(*self._finish, launch_facts(counts.pipeline.options))
        return (
            counts.pipeline
            | "Once" >> beam.Create([None])
            | "WriteManifest" >> beam.ParDo(finish, beam.pvalue.AsList(writes), **side)
        )


class _JudgeQualityFn(beam.DoFn):
    """The data-quality verdict, once every profile is complete: run.json's `quality`."""

    def __init__(self, quality: QualityConfig):
        self._quality = quality

    def process(self, _, profiles: dict):
        read_counts, profile, output_profile = (
            profiles[k] for k in ("read_counts", "profile", "output_profile")
        )
        tonight = {
            "records": int(read_counts.get(READ, 0)),
            "features": profile["features"],
            "outputs": output_profile["features"],
        }
        quality = self._quality.judge(tonight)
        quality["profile"] = tonight  # the next night's drift baseline
        quality["duplicate_keys"] = profiles.get("duplicate_keys")
        yield quality


class JudgeQuality(beam.PTransform):
    """{QUALITY_RECORDS: the record stream, QUALITY_OUTPUTS: ScoredBlocks, READ_COUNTS: the
    reading step's counts, DUPLICATE_KEYS (optional): `CountDuplicateKeys`' parts} -> one
    element, run.json's `quality`: the run profiled (`fields`: (name, type) of the inputs)
    and judged by `quality` (a `QualityConfig`).

    A separate step before the writes' end, so that a BigQuery load can wait for the verdict
    and load nothing for a blocked run; `FinalizeRun` holds back a blocked run's files."""

    def __init__(self, quality: QualityConfig, fields):
        super().__init__()
        self._quality = quality
        self._fields = tuple(fields)

    def expand(self, inputs: dict):
        parts = {
            "read_counts": (inputs[READ_COUNTS], SumPerKeyFn()),
            "profile": (inputs[QUALITY_RECORDS], ProfileRecordsFn(self._fields, self._quality.vocabularies)),
            "output_profile": (inputs[QUALITY_OUTPUTS], ProfileOutputsFn()),
        }
        if DUPLICATE_KEYS in inputs:
            parts["duplicate_keys"] = (inputs[DUPLICATE_KEYS], DuplicateKeysFn())
        return (
            inputs[QUALITY_RECORDS].pipeline
            | "OnceProfiled" >> beam.Create([None])
            | "Judge" >> beam.ParDo(_JudgeQualityFn(self._quality), summaries_side_input(parts, "Profiles"))
        )
