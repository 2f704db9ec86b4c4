"""The `predict` pipeline: batch prediction with an all-in-one SavedModel.

    ReadAdRecords -> RunInference -> WritePredictions
          \\______________\\_______-> WriteErrors

Reads JSONL, CSV, TFRecord or Parquet files into Arrow blocks, validates them against the description inside
the model directory, scores them in batches with the model loaded once per worker
process, and writes `prediction.results-*` and `errors-*` (staged in a hidden folder, moved
into place at the end), then `prediction.errors_stats`, `report.html`, `run.json` and `_SUCCESS`. Predictions are JSON lines by default, or CSV, Parquet or
TFRecord (`--output_format`), with `--passthrough_fields` copied from each input record. Every record read ends as exactly one prediction or one error.

Run it as `python -m pipeline.predict --model_dir M --input 'in/*.jsonl' --output_dir OUT`
with any Beam options (e.g. `--runner DataflowRunner --project ...`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from pipeline import options as opts
from pipeline.blocks import RecordLayout, ScoredBlock
from pipeline.dataflow import is_dry_run, launch, waits
from pipeline.entrypoint import DEFAULT_MAX_ERROR_RATE, ErrorRateExceeded, freeze_imported_objects
from pipeline.inference import RunInferenceFn
from pipeline.io import BIGQUERY, InputError
from pipeline.io import bigquery as bq
from pipeline.io.base import KEY_COLUMN, PredictionColumns
from pipeline.manifest import (
    BEAM_TEMP_PREFIX,
    ERROR_LISTS,
    ERRORS,
    LOCAL_RUNNERS,
    OUTPUT_SUMMARIES,
    PREDICTIONS,
    REPORT,
    RUN_MANIFEST,
    STAGING_DIR,
    SUCCESS_MARKER,
    THROUGHPUT,
    FinalizeRun,
    acquire_run_lock,
    finished_run,
    lock_path,
    model_fingerprint,
    release_run_lock,
    remove_trees,
    staging_dir,
    versions,
)
from pipeline.read import COUNTS, RECORDS, Inputs, ReadAdRecords, check_inputs, input_fingerprint
from pipeline.read import ERRORS as ERROR_RECORDS
from pipeline.report import scored_at
from pipeline.write import (
    ERRORS_PREFIX,
    ERRORS_STATS,
    PREDICTIONS_PREFIX,
    BigQueryTarget,
    WriteErrors,
    WritePredictions,
)
from transforms.model_contract import InputField, ModelDescription
from transforms.signature_reader import describe_model

SCORED = "scored"
# Where Beam's file sinks write shards before renaming them (older Beam: .temp-beam*).
BEAM_TEMP_FOLDERS = (f"{BEAM_TEMP_PREFIX}*", ".temp-beam*")
PASSTHROUGH_TYPES = ("int", "float", "string")

__all__ = ["ErrorRateExceeded", "build_predict", "run"]


def prediction_layout(
    description: ModelDescription, passthrough: str | None = None, csv_columns: str | None = None
) -> RecordLayout:
    """What predict reads from each record: model inputs, key, and pass-through fields."""
    fields = passthrough_fields(passthrough, description)
    declared = {item.partition(":")[0].strip() for item in (passthrough or "").split(",") if ":" in item}
    model_fields = {f.name for f in description.inputs} | {description.key_field}
    return RecordLayout(
        description.inputs,
        description.key_field,
        description.key_type,
        passthrough=fields,
        csv_columns=tuple(c.strip() for c in csv_columns.split(",")) if csv_columns else None,
        untyped=frozenset(f.name for f in fields if f.name not in declared | model_fields),
        require_key=bool(description.key_field),
    )


def passthrough_fields(text: str | None, description: ModelDescription) -> tuple[InputField, ...]:
    """`--passthrough_fields a,b:int` -> fields; a model input or the key keeps its own type."""
    if not text:
        return ()
    known = {f.name: f.type for f in description.inputs}
    if description.key_field:
        known[description.key_field] = description.key_type
    reserved = {KEY_COLUMN, "prediction", *(o.name for o in description.outputs)}
    fields = []
    for item in (part.strip() for part in text.split(",")):
        name, _, declared = item.partition(":")
        if not name:
            raise opts.OptionsError(
                f"--passthrough_fields has an empty name in {text!r}; remove the empty item"
            )
        if name in reserved:
            raise opts.OptionsError(
                f"--passthrough_fields: {name!r} is a column of every prediction (key, outputs) already; "
                "leave it out of --passthrough_fields"
            )
        if declared and declared not in PASSTHROUGH_TYPES:
            raise opts.OptionsError(
                f"--passthrough_fields: type of {name!r} must be one of {', '.join(PASSTHROUGH_TYPES)}, "
                f"got {declared!r}"
            )
        ftype = known.get(name) or declared or "string"
        fields.append(InputField(name, "string" if ftype == "image" else ftype, required=False))
    return tuple(fields)


def build_predict(
    pipeline,
    model_dir: str,
    description: ModelDescription,
    inputs: Inputs | list[str],
    output_dir: str,
    input_format: str | None = None,
    batch_size: int | None = None,
    shared_handle=None,
    tf_threads: int | None = None,
    layout: RecordLayout | None = None,
    output_format: str = "jsonl",
    bigquery: BigQueryTarget | None = None,
    run_info: dict | None = None,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    max_batch_bytes: int = opts.DEFAULT_MAX_BATCH_BYTES,
) -> dict:
    """Builds the graph; returns the `scored` blocks, `errors` (lists of error records) and
    `manifest` PCollections.

    `inputs` are file patterns (or an `Inputs` with BigQuery tables and queries); with
    `bigquery`, predictions and errors go to its tables instead of files. Files are written
    into `output_dir/.adpredict-staging/`; once every write is done, the last step moves them
    into `output_dir`, writes `report.html` (from summaries of the scored blocks and errors,
    computed as data like the counts), `run.json` (`run_info` plus the counts) and `_SUCCESS`,
    and removes the lock file of `run_info["run_id"]`.
    """
    layout = layout or prediction_layout(description)
    records = pipeline | "ReadAdRecords" >> ReadAdRecords(inputs, layout, input_format)
    inference = records[RECORDS] | "RunInference" >> beam.ParDo(
        RunInferenceFn(
            model_dir,
            layout,
            batch_size or description.batch_size,
            shared_handle,
            tf_threads,
            description,
            max_batch_bytes,
        )
    ).with_output_types(ScoredBlock).with_outputs(RunInferenceFn.ERRORS, RunInferenceFn.COUNTS, main=SCORED)
    # Read errors reach RunInference on the blocks' stream and leave with its own: no Flatten
    # (the local runner would hold every error record of the run in memory).
    errors = inference[RunInferenceFn.ERRORS]
    columns = prediction_columns(description, layout)
    staged = staging_dir(output_dir)  # published by FinalizeRun, so a killed run shows no results
    predictions_written = inference[SCORED] | "WritePredictions" >> WritePredictions(
        staged, columns, output_format, bigquery
    )
    errors_written = errors | "WriteErrors" >> WriteErrors(staged, bigquery)
    counts = [
        records[COUNTS],
        inference[RunInferenceFn.COUNTS],
        inference[SCORED] | "CountPredictions" >> beam.Map(lambda scored: (PREDICTIONS, len(scored))),
        errors | "CountErrors" >> beam.Map(lambda errors: (ERRORS, len(errors))),
    ]
    loaded_names = None
    if bigquery:  # the loads emit (counter, rows loaded)
        counts += [predictions_written, errors_written]
        loaded_names = {PREDICTIONS: bq.PREDICTIONS_LOADED, ERRORS: bq.ERRORS_LOADED}
    scored = inference[SCORED]
    manifest = {
        "counts": tuple(counts) | "AllCounts" >> beam.Flatten(),
        "written_0": predictions_written,
        "written_1": errors_written,
        # summarized for prediction.errors_stats and report.html, as data like the counts
        ERROR_LISTS: errors,
        OUTPUT_SUMMARIES: scored,
        THROUGHPUT: scored | "ScoredAt" >> beam.Map(scored_at),
    } | "FinalizeRun" >> FinalizeRun(
        output_dir,
        run_info or {},
        max_error_rate,
        loaded_names,
        output_names=(o.name for o in description.outputs),
    )
    return {SCORED: inference[SCORED], ERROR_RECORDS: errors, "manifest": manifest}


def prediction_columns(description: ModelDescription, layout: RecordLayout) -> PredictionColumns:
    return PredictionColumns(
        outputs=tuple(o.name for o in description.outputs),
        passthrough=layout.passthrough,
        key_type=description.key_type if description.key_field else "string",
        output_dtypes=tuple(o.dtype for o in description.outputs),
        output_shapes=tuple(o.shape for o in description.outputs),
    )


def clear_previous_outputs(output_dir: str) -> None:
    """Removes a previous run's files first (the marker first), so no stale shard survives,
    then what a killed run left unpublished: its staging folder, and Beam's temporary
    folders (inside it now; beside the outputs before staging). Runs under the lock only."""
    for name in (
        SUCCESS_MARKER,
        RUN_MANIFEST,
        REPORT,
        ERRORS_STATS,
        f"{PREDICTIONS_PREFIX}-*",
        f"{ERRORS_PREFIX}-*",
    ):
        matched = FileSystems.match([FileSystems.join(output_dir, name)])[0].metadata_list
        if matched:
            FileSystems.delete([m.path for m in matched])
    for folder in (STAGING_DIR, *BEAM_TEMP_FOLDERS):
        remove_trees(FileSystems.join(output_dir, folder))


def bigquery_target(options, check: bool = True) -> BigQueryTarget:
    """The BigQuery tables a run writes, checked before it starts (unless `check` is off,
    for an offline dry run); files are staged in --temp_location (gs:// loads by URI), else
    under --output_dir."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

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


def run(argv=None, test_pipeline=None) -> dict:
    """Parses options, checks inputs and outputs, runs the pipeline; returns its run.json.

    With `--dry_run=True` (DataflowRunner) nothing is read, written or submitted: the job
    request is built and staged offline (`pipeline.dataflow`), and its summary returned.
    """
    freeze_imported_objects()
    options = opts.CachedViewOptions(argv)
    opts.validate_predict(options)
    FileSystems.set_options(options)  # gs:// checks before the run use the run's credentials
    io = options.view_as(opts.RecordIOOptions)
    predict = options.view_as(opts.PredictOptions)
    description = describe_model(predict.model_dir, predict.input_schema)
    layout = prediction_layout(description, predict.passthrough_fields, io.csv_columns)
    inputs = Inputs.from_options(options)
    offline = is_dry_run(options)
    if options.view_as(StandardOptions).runner == "DataflowRunner" and not predict.model_dir.startswith(
        "gs://"
    ):
        if not offline:
            raise opts.OptionsError(
                f"--model_dir {predict.model_dir!r} is not on gs://: Dataflow workers cannot read a local model; "
                "copy it to gs:// (gsutil -m cp -r) and pass that path"
            )
        logging.warning("--model_dir %s is local: a real Dataflow job needs it on gs://", predict.model_dir)
    files = ["not checked in a dry run"] if offline else check_inputs(inputs, io.input_format, layout)
    bigquery = bigquery_target(options, check=not offline) if predict.output_format == BIGQUERY else None
    runner = options.view_as(StandardOptions).runner
    run_info = {
        "run_id": uuid.uuid4().hex,
        "started": time.time(),
        "date": predict.run_date,
        "input_fingerprint": None if offline else input_fingerprint(inputs),
        "inputs": {
            "patterns": io.input,
            "query": io.input_query,
            "filter": io.input_filter,
            "files": files,
            "format": io.input_format or "from file names",
        },
        "output_dir": io.output_dir,
        "output_format": predict.output_format,
        "output_tables": bigquery
        and {"predictions": bigquery.table.uri, "errors": bigquery.errors_table.uri},
        "model": {
            "dir": predict.model_dir,
            "description": description.origin,
            "signature": description.signature,
            "fingerprint": None if offline else model_fingerprint(predict.model_dir),
        },
        "batch_size": predict.batch_size or description.batch_size,
        "max_batch_bytes": predict.max_batch_bytes,
        "tf_threads": opts.tf_threads(options) or "TensorFlow default (all cores)",
        "runner": runner or "DirectRunner",
        "versions": versions(),
    }
    pipeline = test_pipeline or opts.make_pipeline(options)
    build_predict(
        pipeline,
        predict.model_dir,
        description,
        inputs,
        io.output_dir,
        io.input_format,
        predict.batch_size,
        tf_threads=opts.tf_threads(options),
        layout=layout,
        output_format=predict.output_format,
        bigquery=bigquery,
        run_info=run_info,
        max_error_rate=io.max_error_rate,
        max_batch_bytes=predict.max_batch_bytes,
    )
    # Only a pipeline that runs in this process is over when this process is.
    in_process = runner in LOCAL_RUNNERS and waits(options)
    force = bool(options.get_all_options().get("force_unlock"))  # if pipeline/options.py defines it
    holding = (
        contextlib.nullcontext()
        if offline
        else output_dir_lock(io.output_dir, run_info["run_id"], in_process, force, options)
    )
    with holding:
        summary = launch(pipeline, options)
    if summary:  # a dry run, or submitted without waiting
        return summary
    # The pipeline wrote run.json and _SUCCESS itself; the launcher only reads and reports.
    return finished_run(io.output_dir, io.max_error_rate)


@contextlib.contextmanager
def output_dir_lock(output_dir: str, run_id: str, in_process: bool, force: bool, options):
    """Creates the output directory and takes its lock (a second run stops here, exit 2,
    before touching anything), then clears what a previous run left.

    The pipeline's last step removes the lock; this removes it too when the pipeline ran in
    this process and stopped before that step. A job elsewhere (Dataflow) may outlive a
    failed launcher, so its lock stays, with a warning naming it.
    """
    unusable = f"cannot create or clear --output_dir {output_dir!r}"
    try:
        if not FileSystems.exists(output_dir):
            FileSystems.mkdirs(output_dir)
        acquire_run_lock(output_dir, run_id, in_process, force, options)
    except OSError as e:
        raise InputError(f"{unusable}: {e}") from None
    try:
        clear_previous_outputs(output_dir)
    except OSError as e:
        release_run_lock(output_dir, run_id)
        raise InputError(f"{unusable}: {e}") from None
    try:
        yield
    except BaseException:
        if not in_process and FileSystems.exists(lock_path(output_dir)):
            logging.warning(
                "%s stays: the job may still run; delete it once it has ended", lock_path(output_dir)
            )
        raise
    finally:
        if in_process:
            release_run_lock(output_dir, run_id)


def main(argv=None) -> int:
    from pipeline.entrypoint import pipeline_main

    return pipeline_main(run, argv, "adpredict predict", __doc__, opts.PredictOptions)


if __name__ == "__main__":
    sys.exit(main())
