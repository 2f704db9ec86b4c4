"""Writing predictions and error records; counting error records by kind.

Predictions go to `prediction.results-SSSSS-of-NNNNN` (the shard naming of Cloud ML Engine
and Vertex AI batch prediction) in the format the user chose (`pipeline.io`), or to a
BigQuery table. Error records go to `errors-SSSSS-of-NNNNN` as JSON lines whatever the
prediction format (their `instance` is the raw record, of any shape: a reader of errors is
a person or a script, not a warehouse schema), or to a BigQuery errors table; the run's last step
(`pipeline.manifest.FinalizeRun`) writes their count per kind to `prediction.errors_stats`.

`predict` points these writers at `<output_dir>/.adpredict-staging/`, and the run's last step
moves the files into the output directory (`pipeline.manifest.publish_staged`): a run
killed before its end leaves no shard where readers look.
"""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import METRICS_NAMESPACE
from pipeline.blocks import ScoredBlock
from pipeline.io import FILE_FORMATS, base
from pipeline.io import bigquery as bq

PREDICTIONS_PREFIX = "prediction.results"
ERRORS_PREFIX = "errors"
ERRORS_STATS = "prediction.errors_stats"


@dataclasses.dataclass(frozen=True)
class BigQueryTarget:
    """Where predictions and error records go when the output is BigQuery."""

    connection: bq.Connection
    table: bq.TableRef
    errors_table: bq.TableRef
    staging_dir: str  # files are staged here, then loaded (gs:// loads by URI)
    disposition: str = "truncate"


class _CountPredictionsFn(beam.DoFn):
    def __init__(self):
        self._written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "predictions_written")

    def process(self, scored: ScoredBlock):
        self._written.inc(len(scored))
        yield scored


class WritePredictions(beam.PTransform):
    """ScoredBlocks -> sharded prediction files of `output_format` under `output_dir`, or a
    BigQuery table when `bigquery` is given."""

    def __init__(
        self,
        output_dir: str,
        columns: base.PredictionColumns,
        output_format: str = "jsonl",
        bigquery: BigQueryTarget | None = None,
    ):
        super().__init__()
        self._output_dir = output_dir
        self._columns = columns
        self._bigquery = bigquery
        self._format = None if bigquery else FILE_FORMATS[output_format]

    def expand(self, scored):
        counted = scored | "CountPredictions" >> beam.ParDo(_CountPredictionsFn()).with_output_types(
            ScoredBlock
        )
        if self._bigquery:
            target = self._bigquery
            return counted | "WriteBigQuery" >> bq.WriteToBigQuery(
                target.connection, target.table, self._columns, target.staging_dir, target.disposition
            )
        prefix = FileSystems.join(self._output_dir, PREDICTIONS_PREFIX)
        return counted | f"Write{self._format.name.title()}" >> self._format.write_predictions(
            prefix, self._columns
        )


class CountErrorsFn(beam.CombineFn):
    """Counts error records per (code, field), keeping one example message each."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, errors: list):
        for error in errors:
            kind = (error["error"]["code"], error["error"]["field"])
            count, example = accumulator.get(kind, (0, error["error"]["message"]))
            accumulator[kind] = (count + 1, example)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for kind, (count, example) in accumulator.items():
                merged[kind] = (merged.get(kind, (0, example))[0] + count, example)
        return merged

    def extract_output(self, accumulator):
        rows = [
            {"code": code, "field": field, "count": count, "example_message": example}
            for (code, field), (count, example) in accumulator.items()
        ]
        rows.sort(key=lambda row: (-row["count"], row["code"], row["field"] or ""))
        return json.dumps({"errors": sum(r["count"] for r in rows), "by_kind": rows}, indent=2)


# One encoder for every record: json.dumps with options builds a new one per call (half its cost).
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def json_lines(errors: list) -> str:
    """A list of error records as JSON lines (strict JSON: no bare NaN), one write per list."""
    return "\n".join(map(_STRICT_JSON.encode, errors))


class CountErrors(beam.DoFn):
    """Passes lists of error records through, counting the records as written."""

    def __init__(self):
        self._written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "errors_written")

    def process(self, errors: list):
        self._written.inc(len(errors))
        yield errors


class WriteErrors(beam.PTransform):
    """Error records -> sharded JSONL error files (or a BigQuery errors table); returns what
    the write wrote. Their counts by kind (`prediction.errors_stats`) are written by the run's
    last step, `pipeline.manifest.FinalizeRun`, which summarizes the same lists."""

    def __init__(self, output_dir: str, bigquery: BigQueryTarget | None = None):
        super().__init__()
        self._output_dir = output_dir
        self._bigquery = bigquery

    def expand(self, errors):
        counted = errors | "CountErrors" >> beam.ParDo(CountErrors())
        if self._bigquery:
            target = self._bigquery
            return counted | "WriteBigQuery" >> bq.WriteErrorsToBigQuery(
                target.connection, target.errors_table, target.staging_dir, target.disposition
            )
        return (
            counted
            | "FormatErrors" >> beam.Map(json_lines)
            | "WriteErrorFiles"
            >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, ERRORS_PREFIX), shard_name_template=base.SHARD_TEMPLATE
            )
        )
