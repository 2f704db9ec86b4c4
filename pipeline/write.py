"""Writing predictions and error records.

Predictions go to `prediction.results-SSSSS-of-NNNNN` (the shard naming of Cloud ML Engine
and Vertex AI batch prediction) in the format the user chose (`pipeline.io`), or to a
BigQuery table. Error records go to `errors-SSSSS-of-NNNNN` as JSON lines whatever the
prediction format (their `instance` is the raw record, of any shape: a reader of errors is
a person or a script, not a warehouse schema), or to a BigQuery errors table; the run's last
step (`pipeline.run.finalize.FinalizeRun`) writes their count per kind.

`predict` points these writers at `<output_dir>/.adpredict-staging/`, and the run's last step
moves the files into the output directory (`pipeline.run.staging.publish_staged`): a run
killed before its end leaves no shard where readers look.
"""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import counters
from pipeline.blocks import ScoredBlock
from pipeline.io import FILE_FORMATS, base
from pipeline.io import bigquery as bq
from pipeline.run_contract import ERRORS_PREFIX, PREDICTIONS_PREFIX


@dataclasses.dataclass(frozen=True)
class BigQueryTarget:
    """Where predictions and error records go when the output is BigQuery."""

    connection: bq.Connection
    table: bq.TableRef
    errors_table: bq.TableRef
    staging_dir: str  # files are staged here, then loaded (gs:// loads by URI)
    disposition: str = "truncate"


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where a run's predictions and error records go: files of `output_format` under
    `output_dir`, or BigQuery tables (`bigquery`)."""

    output_dir: str
    output_format: str = "jsonl"
    bigquery: BigQueryTarget | None = None


class _CountPredictionsFn(beam.DoFn):
    def __init__(self):
        self._written = counters.counter(counters.PREDICTIONS_WRITTEN)

    def process(self, scored: ScoredBlock):
        self._written.inc(len(scored))
        yield scored


class WritePredictions(beam.PTransform):
    """ScoredBlocks -> sharded prediction files of `output_format` under `output_dir`, or a
    BigQuery table when `bigquery` is given; with `quality` (the data-quality verdict as one
    element) a blocked run's rows are not loaded (files are held back by the run's last step)."""

    def __init__(
        self,
        output_dir: str,
        columns: base.PredictionColumns,
        output_format: str = "jsonl",
        bigquery: BigQueryTarget | None = None,
        quality=None,
    ):
        super().__init__()
        self._output_dir = output_dir
        self._columns = columns
        self._bigquery = bigquery
        self._quality = quality  # the data-quality verdict (one element): a blocked run loads nothing
        self._format = None if bigquery else FILE_FORMATS[output_format]

    def expand(self, scored):
        counted = scored | "CountPredictions" >> beam.ParDo(_CountPredictionsFn()).with_output_types(
            ScoredBlock
        )
        if self._bigquery:
            target = self._bigquery
            return counted | "WriteBigQuery" >> bq.WriteToBigQuery(
                target.connection,
                target.table,
                self._columns,
                target.staging_dir,
                target.disposition,
                self._quality,
            )
        prefix = FileSystems.join(self._output_dir, PREDICTIONS_PREFIX)
        return counted | f"Write{self._format.name.title()}" >> self._format.write_predictions(
            prefix, self._columns
        )


# One encoder for every record: json.dumps with options builds a new one per call (half its cost).
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def json_lines(errors: list) -> str:
    """A list of error records as JSON lines (strict JSON: no bare NaN), one write per list."""
    return "\n".join(map(_STRICT_JSON.encode, errors))


class CountErrors(beam.DoFn):
    """Passes lists of error records through, counting the records as written."""

    def __init__(self):
        self._written = counters.counter(counters.ERRORS_WRITTEN)

    def process(self, errors: list):
        self._written.inc(len(errors))
        yield errors


class WriteErrors(beam.PTransform):
    """Error records -> sharded JSONL error files (or a BigQuery errors table); returns what
    the write wrote. Their counts by kind are written by the run's last step,
    `pipeline.run.finalize.FinalizeRun`, which summarizes the same lists."""

    def __init__(self, output_dir: str, bigquery: BigQueryTarget | None = None, quality=None):
        super().__init__()
        self._output_dir = output_dir
        self._bigquery = bigquery
        self._quality = quality

    def expand(self, errors):
        counted = errors | "CountErrors" >> beam.ParDo(CountErrors())
        if self._bigquery:
            target = self._bigquery
            return counted | "WriteBigQuery" >> bq.WriteErrorsToBigQuery(
                target.connection, target.errors_table, target.staging_dir, target.disposition, self._quality
            )
        return (
            counted
            | "FormatErrors" >> beam.Map(json_lines)
            | "WriteErrorFiles"
            >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, ERRORS_PREFIX), shard_name_template=base.SHARD_TEMPLATE
            )
        )
