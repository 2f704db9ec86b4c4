"""The `predict` pipeline: batch prediction with an all-in-one SavedModel.

    ReadAdRecords -> RunInference -> WritePredictions
          \\______________\\_______-> WriteErrors       -> FinalizeRun

Reads JSONL, CSV, TFRecord or Parquet files (or BigQuery) into Arrow blocks, validates them
against the description inside the model directory, scores them in batches with the model
loaded once per worker process, and writes `prediction.results-*` and `errors-*` (staged in
a hidden folder, moved into place at the end), then `prediction.errors_stats`, `report.html`,
`run.json` and `_SUCCESS`. Predictions are JSON lines by default, or CSV, Parquet or TFRecord
(`--output_format`), with `--passthrough_fields` copied from each input record. Every record
read ends as exactly one prediction or one error.

Run it as `python -m pipeline.predict --model_dir M --input 'in/*.jsonl' --output_dir OUT`
with any Beam options (e.g. `--runner DataflowRunner --project ...`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from pipeline import counters
from pipeline import options as opts
from pipeline.blocks import ScoredBlock
from pipeline.entrypoint import pipeline_main
from pipeline.inference.devices import this_cpu
from pipeline.inference.dofn import RunInferenceFn
from pipeline.inference.model import ModelConfig
from pipeline.inference.precision import FP32, decide
from pipeline.inference.precision_check import checked_on_first_use, first_records, needs_first_use_check
from pipeline.io import BIGQUERY, stores
from pipeline.io import bigquery as bq
from pipeline.quality.gate import QualityConfig
from pipeline.quality.profiling import CountDuplicateKeys
from pipeline.quality.references import previous_night, training_profile
from pipeline.read import COUNTS, RECORDS, Inputs, ReadAdRecords, check_inputs, input_fingerprint
from pipeline.read import ERRORS as ERROR_RECORDS
from pipeline.reporting.summaries import scored_at
from pipeline.run import finalize
from pipeline.run.finalize import FinalizeRun, JudgeQuality, RunConfig
from pipeline.run.lock import output_dir_lock
from pipeline.run.manifest import finished_run, model_fingerprint, versions
from pipeline.run.staging import staging_dir
from pipeline.run_contract import ERRORS, PREDICTIONS
from pipeline.runners import DATAFLOW_RUNNERS
from pipeline.runners.dataflow import is_dry_run
from pipeline.runners.launch import launch_run, make_pipeline
from pipeline.runners.local import ends_with_launch
from pipeline.runners.pickling import zlib_pickles
from pipeline.startup import freeze_imported_objects
from pipeline.write import BigQueryTarget, Outputs, WriteErrors, WritePredictions

SCORED = "scored"

__all__ = ["PredictPlan", "build_predict", "execute", "plan", "run"]


def build_predict(
    pipeline, inputs: Inputs | list[str], model: ModelConfig, outputs: Outputs, run: RunConfig | None = None
) -> dict:
    """Builds the graph; returns the `scored` blocks, `errors` (lists of error records) and
    `manifest` PCollections.

    `inputs` are file patterns (or an `Inputs` with BigQuery tables and queries); with
    `outputs.bigquery`, predictions and errors go to its tables instead of files. Files are
    written into `output_dir/.adpredict-staging/`; once every write is done, the last step
    moves them into `output_dir`, writes `report.html` (from summaries of the scored blocks
    and errors, computed as data like the counts), `run.json` (`run.info` plus the counts)
    and `_SUCCESS`, and removes the lock file of `run.info["run_id"]`.
    """
    records = pipeline | "ReadAdRecords" >> ReadAdRecords(inputs, model.layout)
    inference = records[RECORDS] | "RunInference" >> beam.ParDo(RunInferenceFn(model)).with_output_types(
        ScoredBlock
    ).with_outputs(RunInferenceFn.ERRORS, RunInferenceFn.COUNTS, RunInferenceFn.DEVICES, main=SCORED)
    # Read errors reach RunInference on the blocks' stream and leave with its own: no Flatten
    # (the local runner would hold every error record of the run in memory).
    scored, errors = inference[SCORED], inference[RunInferenceFn.ERRORS]
    staged = staging_dir(outputs.output_dir)  # published by FinalizeRun: a killed run shows no results
    quality = None
    if run is not None and run.quality is not None:  # profiled and judged before the writes end
        judged = {
            finalize.QUALITY_RECORDS: records[RECORDS],
            finalize.QUALITY_OUTPUTS: scored,
            finalize.READ_COUNTS: records[COUNTS],
        }
        if model.layout.key_field and run.quality.count_duplicate_keys:
            judged[finalize.DUPLICATE_KEYS] = records[RECORDS] | "DuplicateKeys" >> CountDuplicateKeys(
                model.layout.key_field
            )
        quality = judged | "JudgeQuality" >> JudgeQuality(
            run.quality, ((f.name, f.type) for f in model.layout.fields)
        )
    predictions_written = scored | "WritePredictions" >> WritePredictions(
        staged, model.prediction_columns(), outputs.output_format, outputs.bigquery, quality
    )
    errors_written = errors | "WriteErrors" >> WriteErrors(staged, outputs.bigquery, quality)
    counts = [
        records[COUNTS],
        inference[RunInferenceFn.COUNTS],
        scored | "CountPredictions" >> beam.Map(lambda block: (PREDICTIONS, len(block))),
        errors | "CountErrors" >> beam.Map(lambda failed: (ERRORS, len(failed))),
    ]
    loaded_names = None
    if outputs.bigquery:  # the loads emit (counter, rows loaded)
        counts += [predictions_written, errors_written]
        loaded_names = {
            PREDICTIONS: counters.BIGQUERY_PREDICTIONS_LOADED,
            ERRORS: counters.BIGQUERY_ERRORS_LOADED,
        }
    manifest = {
        **({finalize.QUALITY: quality} if quality is not None else {}),
        finalize.COUNTS: tuple(counts) | "AllCounts" >> beam.Flatten(),
        "written_0": predictions_written,
        "written_1": errors_written,
        # summarized for prediction.errors_stats and report.html, as data like the counts
        finalize.ERROR_LISTS: errors,
        finalize.OUTPUT_SUMMARIES: scored,
        finalize.THROUGHPUT: scored | "ScoredAt" >> beam.Map(scored_at),
        finalize.DEVICES: inference[RunInferenceFn.DEVICES],
    } | "FinalizeRun" >> FinalizeRun(
        outputs.output_dir,
        run or RunConfig(),
        loaded_names,
        output_names=(o.name for o in model.description.outputs),
    )
    return {SCORED: scored, ERROR_RECORDS: errors, "manifest": manifest}


@dataclasses.dataclass(frozen=True)
class PredictPlan:
    """A predict run checked and ready to launch: what it reads, scores with and writes, and
    what its run.json records (model and input fingerprints included, computed once)."""

    options: PipelineOptions
    inputs: Inputs
    model: ModelConfig
    outputs: Outputs
    run: RunConfig
    offline: bool  # a Dataflow dry run: nothing is read, checked or written

    @property
    def output_dir(self) -> str:
        return self.outputs.output_dir


def plan(options: PipelineOptions) -> PredictPlan:
    """Checks the flags, the model, the inputs and the outputs before anything runs.

    With `--dry_run=True` (DataflowRunner) nothing is read or checked remotely: the job
    request is built and staged offline (`pipeline.runners.dataflow`)."""
    opts.validate_predict(options)
    stores.use_run_options(options)  # gs:// checks before the run use the run's credentials
    io = options.view_as(opts.RecordIOOptions)
    predict = options.view_as(opts.PredictOptions)
    inputs = opts.inputs_from(options)
    offline = is_dry_run(options)
    check_model_reachable(options, predict.model_dir, offline)  # the flags alone tell this
    if not offline:  # a store (gs://, S3, Azure) that cannot be used: one line now, not minutes of retries
        stores.check_stores(
            options,
            [("--model_dir", predict.model_dir), *(("--input", p) for p in inputs.file_patterns),
             ("--output_dir", io.output_dir)],
        )  # fmt: skip
    model = ModelConfig.from_model_dir(
        predict.model_dir,
        input_schema=predict.input_schema,
        passthrough_fields=predict.passthrough_fields,
        csv_columns=io.csv_columns,
        batch_size=predict.batch_size,
        max_batch_bytes=predict.max_batch_bytes,
        tf_threads=opts.tf_threads(options),
        precision=predict.precision,
        gpu=predict.gpu,
    )
    files = ["not checked in a dry run"] if offline else check_inputs(inputs, io.input_format, model.layout)
    model = precision_checked(options, model, [] if offline else files, io.input_format)
    bigquery = bigquery_target(options, check=not offline) if predict.output_format == BIGQUERY else None
    outputs = Outputs(io.output_dir, predict.output_format, bigquery)
    info = run_info(options, inputs, model, outputs, files, offline)
    run = RunConfig(info, io.max_error_rate, quality=quality_config(options, offline))
    return PredictPlan(options, inputs, model, outputs, run, offline)


def precision_checked(options, model: ModelConfig, files: list, input_format: str | None) -> ModelConfig:
    """--precision bf16|auto: a model with no stored bf16 check (a foreign one) is checked here
    on the first records of the run's first file; a run on this machine refuses bf16 now, in
    one line, rather than on its first record."""
    if model.precision == FP32:
        return model
    paths = [f for f in files if isinstance(f, str)]
    if paths and needs_first_use_check(model):  # the sample is read only when it is needed
        sample = first_records(paths[0], input_format, model.layout)
        model = checked_on_first_use(model, sample, f"the first {len(sample or ())} records of {paths[0]}")
    if ends_with_launch(options):
        decide(model.precision, model.precision_record, this_cpu(), model.model_dir)
    return model


def quality_config(options, offline: bool) -> QualityConfig | None:
    """The data-quality gate of a run: its limits, the model's training profile (skew) and
    --drift_baseline's profile (drift); None with --quality_gate off."""
    policy = opts.quality_policy(options)
    if not policy.enabled:
        return None
    predict = options.view_as(opts.PredictOptions)
    training, training_why = training_profile(predict.model_dir)
    previous, previous_why = (
        None,
        (
            "no previous night to compare with (nightly: none published with a profile within its "
            "drift_lookback_days; predict: pass --drift_baseline)"
        ),
    )
    if predict.drift_baseline:
        previous, previous_why = (
            (None, "not read in a dry run") if offline else previous_night(predict.drift_baseline)
        )
    duplicates = predict.duplicate_keys == "on"
    return QualityConfig(policy, training, previous, training_why, previous_why, duplicates)


def execute(plan: PredictPlan, test_pipeline=None) -> dict:
    """Builds and launches the planned run under the output directory's lock; returns its
    run.json (raising with it when the run failed), or the launch's summary for a dry run or
    a job not waited for."""
    options = plan.options
    run = dataclasses.replace(plan.run, info={**plan.run.info, "started": time.time()})
    holding = contextlib.nullcontext()
    if not plan.offline:
        force = options.view_as(opts.PredictOptions).force_unlock
        holding = output_dir_lock(
            plan.output_dir, run.info["run_id"], ends_with_launch(options), force, options
        )
    with zlib_pickles(options):  # pipeline.runners.pickling: a local run's pickles stay here
        pipeline = test_pipeline or make_pipeline(options)
        build_predict(pipeline, plan.inputs, plan.model, plan.outputs, run)
        with holding:
            launched = launch_run(pipeline, options, plan.output_dir, run)
    if launched:  # a dry run, or submitted without waiting
        return {**launched, "output_dir": plan.output_dir}
    # The pipeline wrote run.json and _SUCCESS itself; the launcher only reads and reports.
    return finished_run(plan.output_dir, run)


def run(argv=None, test_pipeline=None) -> dict:
    """Parses options, checks inputs and outputs, runs the pipeline; returns its run.json."""
    freeze_imported_objects()
    return execute(plan(opts.CachedViewOptions(argv)), test_pipeline)


def run_info(
    options, inputs: Inputs, model: ModelConfig, outputs: Outputs, files: list, offline: bool
) -> dict:
    """What run.json records of a run before it starts (the last step adds how it ended)."""
    io = options.view_as(opts.RecordIOOptions)
    predict = options.view_as(opts.PredictOptions)
    description, bigquery = model.description, outputs.bigquery
    return {
        "run_id": uuid.uuid4().hex,
        "date": predict.run_date,
        "input_fingerprint": None if offline else input_fingerprint(inputs),
        "inputs": {
            "patterns": io.input,
            "query": io.input_query,
            "filter": io.input_filter,
            "files": files,
            "format": io.input_format or "from file names",
        },
        "output_dir": outputs.output_dir,
        "output_format": outputs.output_format,
        "output_tables": bigquery
        and {"predictions": bigquery.table.uri, "errors": bigquery.errors_table.uri},
        "model": {
            "dir": model.model_dir,
            "description": description.origin,
            "signature": description.signature,
            "fingerprint": None if offline else model_fingerprint(model.model_dir),
        },
        "batch_size": model.batch_size,
        "max_batch_bytes": model.max_batch_bytes,
        "tf_threads": model.tf_threads or "TensorFlow default (all cores)",
        "precision_requested": model.precision,
        "precision_check": (model.precision_record or {}).get("check"),
        "gpu_requested": model.gpu,
        "runner": options.view_as(StandardOptions).runner or "DirectRunner",
        "versions": versions(),
    }


def check_model_reachable(options, model_dir: str, offline: bool) -> None:
    """Dataflow workers read the model themselves: it must be on gs:// (a dry run only warns)."""
    if options.view_as(StandardOptions).runner not in DATAFLOW_RUNNERS or model_dir.startswith("gs://"):
        return
    if not offline:
        raise opts.OptionsError(
            f"--model_dir {model_dir!r} is not on gs://: Dataflow workers cannot read a local model; "
            "copy it to gs:// (gsutil -m cp -r) and pass that path"
        )
    logging.warning("--model_dir %s is local: a real Dataflow job needs it on gs://", model_dir)


def bigquery_target(options, check: bool = True) -> BigQueryTarget:
    """The BigQuery tables a run writes, checked before it starts (unless `check` is off,
    for an offline dry run); files are staged in --temp_location (gs:// loads by URI), else
    under --output_dir."""
    predict = options.view_as(opts.PredictOptions)
    connection = opts.bigquery_connection(options)
    table = bq.TableRef.parse(predict.output_table, "--output_table")
    errors_table = (
        bq.TableRef.parse(predict.output_errors_table, "--output_errors_table")
        if predict.output_errors_table
        else table.with_suffix("_errors")
    )
    for target in (table, errors_table) if check else ():
        bq.check_write(connection, target)
    temp = options.view_as(GoogleCloudOptions).temp_location
    staging = FileSystems.join(temp or options.view_as(opts.RecordIOOptions).output_dir, "_bigquery_staging")
    return BigQueryTarget(connection, table, errors_table, staging, predict.write_disposition)


def main(argv=None) -> int:
    return pipeline_main(run, argv, "adpredict predict", __doc__, opts.PredictOptions)


if __name__ == "__main__":
    sys.exit(main())
