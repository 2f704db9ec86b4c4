"""The `predict` pipeline: batch prediction with an all-in-one SavedModel.

    ReadAdRecords -> RunInference -> WritePredictions
          \\______________\\_______-> WriteErrors

Reads JSONL, CSV, TFRecord or Parquet files into Arrow blocks, validates them against the description inside
the model directory, scores them in batches with the model loaded once per worker
process, and writes `prediction.results-*`, `errors-*`, `prediction.errors_stats`, then
`run.json` and `_SUCCESS`. Predictions are JSON lines by default, or CSV, Parquet or
TFRecord (`--output_format`), with `--passthrough_fields` copied from each input record. Every record read ends as exactly one prediction or one error.

Run it as `python -m pipeline.predict --model_dir M --input 'in/*.jsonl' --output_dir OUT`
with any Beam options (e.g. `--runner DataflowRunner --project ...`).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import options as opts
from pipeline.blocks import RecordLayout
from pipeline.dataflow import is_dry_run, launch
from pipeline.entrypoint import DEFAULT_MAX_ERROR_RATE, ErrorRateExceeded
from pipeline.inference import RunInferenceFn
from pipeline.io import BIGQUERY, InputError
from pipeline.io import bigquery as bq
from pipeline.io.base import KEY_COLUMN, PredictionColumns
from pipeline.manifest import (
    ERRORS,
    FAILED_ERROR_RATE,
    FAILED_LOST,
    PREDICTIONS,
    RUN_MANIFEST,
    SUCCESS_MARKER,
    FinalizeRun,
    model_fingerprint,
    read_manifest,
    versions,
)
from pipeline.read import BLOCKS, COUNTS, Inputs, ReadAdRecords, check_inputs, input_fingerprint
from pipeline.read import ERRORS as ERROR_RECORDS
from pipeline.write import (
    ERRORS_PREFIX,
    ERRORS_STATS,
    PREDICTIONS_PREFIX,
    BigQueryTarget,
    WriteErrors,
    WritePredictions,
)
from transforms.model_contract import InputField, ModelDescription

SCORED = "scored"
BEAM_TEMP_FOLDERS = ".temp-beam*"  # where Beam's file sinks write shards before the final rename
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
            raise opts.OptionsError(f"--passthrough_fields has an empty name in {text!r}")
        if name in reserved:
            raise opts.OptionsError(
                f"--passthrough_fields: {name!r} is a column of every prediction (key, outputs) already"
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
) -> dict:
    """Builds the graph; returns the `scored` blocks, `errors` and `manifest` PCollections.

    `inputs` are file patterns (or an `Inputs` with BigQuery tables and queries); with
    `bigquery`, predictions and errors go to its tables instead of files. The last step
    writes `run.json` (`run_info` plus the counts) and `_SUCCESS` once every write is done.
    """
    layout = layout or prediction_layout(description)
    records = pipeline | "ReadAdRecords" >> ReadAdRecords(inputs, layout, input_format)
    inference = records[BLOCKS] | "RunInference" >> beam.ParDo(
        RunInferenceFn(model_dir, layout, batch_size or description.batch_size, shared_handle, tf_threads)
    ).with_outputs(RunInferenceFn.ERRORS, RunInferenceFn.COUNTS, main=SCORED)
    errors = (records[ERROR_RECORDS], inference[RunInferenceFn.ERRORS]) | "MergeErrors" >> beam.Flatten()
    columns = prediction_columns(description, layout)
    predictions_written = inference[SCORED] | "WritePredictions" >> WritePredictions(
        output_dir, columns, output_format, bigquery
    )
    errors_written = errors | "WriteErrors" >> WriteErrors(output_dir, bigquery)
    counts = [
        records[COUNTS],
        inference[RunInferenceFn.COUNTS],
        inference[SCORED] | "CountPredictions" >> beam.Map(lambda scored: (PREDICTIONS, len(scored))),
        errors | "CountErrors" >> beam.Map(lambda _: (ERRORS, 1)),
    ]
    loaded_names = None
    if bigquery:  # the loads emit (counter, rows loaded)
        counts += [predictions_written, errors_written[0]]
        loaded_names = {PREDICTIONS: bq.PREDICTIONS_LOADED, ERRORS: bq.ERRORS_LOADED}
    written = {
        f"written_{index}": pcoll for index, pcoll in enumerate([predictions_written, *errors_written])
    }
    manifest = {
        "counts": tuple(counts) | "AllCounts" >> beam.Flatten(),
        **written,
    } | "FinalizeRun" >> FinalizeRun(output_dir, run_info or {}, max_error_rate, loaded_names)
    return {SCORED: inference[SCORED], ERROR_RECORDS: errors, "manifest": manifest}


def prediction_columns(description: ModelDescription, layout: RecordLayout) -> PredictionColumns:
    return PredictionColumns(
        outputs=tuple(o.name for o in description.outputs),
        passthrough=layout.passthrough,
        key_type=description.key_type if description.key_field else "string",
        output_dtypes=tuple(o.dtype for o in description.outputs),
    )


def clear_previous_outputs(output_dir: str) -> None:
    """Removes a previous run's files first (the marker first), so no stale shard survives,
    and the temporary folders of a run that was killed while writing."""
    for name in (SUCCESS_MARKER, RUN_MANIFEST, ERRORS_STATS, f"{PREDICTIONS_PREFIX}-*", f"{ERRORS_PREFIX}-*"):
        matched = FileSystems.match([FileSystems.join(output_dir, name)])[0].metadata_list
        if matched:
            FileSystems.delete([m.path for m in matched])
    if FileSystems.get_scheme(output_dir) is None:  # a local folder is removed whole
        temp_dirs = glob.glob(os.path.join(output_dir, BEAM_TEMP_FOLDERS))
    else:  # an object store has prefixes, not folders: "prefix/" deletes what is under it
        pattern = FileSystems.join(output_dir, f"{BEAM_TEMP_FOLDERS}/**")
        start = len(output_dir.rstrip("/")) + 1
        temp_dirs = {
            m.path[: m.path.index("/", start) + 1] for m in FileSystems.match([pattern])[0].metadata_list
        }
    if temp_dirs:
        FileSystems.delete(sorted(temp_dirs))


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
    options = PipelineOptions(argv)
    opts.validate_predict(options)
    FileSystems.set_options(options)  # gs:// checks before the run use the run's credentials
    io = options.view_as(opts.RecordIOOptions)
    predict = options.view_as(opts.PredictOptions)
    description = ModelDescription.read(predict.model_dir)
    layout = prediction_layout(description, predict.passthrough_fields, io.csv_columns)
    inputs = Inputs.from_options(options)
    offline = is_dry_run(options)
    if options.view_as(StandardOptions).runner == "DataflowRunner" and not predict.model_dir.startswith(
        "gs://"
    ):
        if not offline:
            raise opts.OptionsError(
                f"--model_dir {predict.model_dir!r} is not on gs://: Dataflow workers cannot read a local model"
            )
        logging.warning("--model_dir %s is local: a real Dataflow job needs it on gs://", predict.model_dir)
    files = ["not checked in a dry run"] if offline else check_inputs(inputs, io.input_format, layout)
    bigquery = bigquery_target(options, check=not offline) if predict.output_format == BIGQUERY else None
    if not offline:
        try:
            if not FileSystems.exists(io.output_dir):
                FileSystems.mkdirs(io.output_dir)
            clear_previous_outputs(io.output_dir)
        except OSError as e:
            raise InputError(f"cannot create or clear --output_dir {io.output_dir!r}: {e}") from None

    run_info = {
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
            "fingerprint": None if offline else model_fingerprint(predict.model_dir),
        },
        "batch_size": predict.batch_size or description.batch_size,
        "tf_threads": opts.tf_threads(options) or "TensorFlow default (all cores)",
        "runner": options.view_as(StandardOptions).runner or "DirectRunner",
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
    )
    summary = launch(pipeline, options)
    if summary:  # a dry run, or submitted without waiting
        return summary
    # The pipeline wrote run.json and _SUCCESS itself; the launcher only reads and reports.
    manifest = read_manifest(io.output_dir)
    if manifest["status"] == FAILED_LOST:
        raise AssertionError("; ".join(manifest["problems"]))
    if manifest["status"] == FAILED_ERROR_RATE:
        counts = manifest["counts"]
        raise ErrorRateExceeded(
            f"{counts['errors']} of {counts['read']} records failed ({counts['error_rate']:.2%}), above "
            f"--max_error_rate {io.max_error_rate:.2%}; see {FileSystems.join(io.output_dir, ERRORS_STATS)}"
        )
    return manifest


def main(argv=None) -> int:
    from pipeline.entrypoint import pipeline_main

    return pipeline_main(run, argv, "adpredict predict", __doc__, opts.PredictOptions)


if __name__ == "__main__":
    sys.exit(main())
