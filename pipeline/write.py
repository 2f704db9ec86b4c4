"""Writing predictions, error records and the error summary.

Predictions go to `prediction.results-SSSSS-of-NNNNN` (the shard naming of Cloud ML Engine
and Vertex AI batch prediction) in the format the user chose (`pipeline.io`), or to a
BigQuery table. Error records go to `errors-SSSSS-of-NNNNN` as JSON lines whatever the
prediction format (their `instance` is the raw record, of any shape: a reader of errors is
a person or a script, not a warehouse schema), or to a BigQuery errors table; a per-kind
count goes to `prediction.errors_stats`.

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
        counted = scored | "CountPredictions" >> beam.ParDo(_CountPredictionsFn())
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


class WriteErrorStats(beam.PTransform):
    """Error records -> `prediction.errors_stats`: counts per (code, field). Returns the
    written file's name and the counts themselves (its JSON text, one element)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, errors):
        kinds = errors | "CountErrorKinds" >> beam.CombineGlobally(CountErrorsFn())
        written = kinds | "WriteErrorStats" >> beam.io.WriteToText(
            FileSystems.join(self._output_dir, ERRORS_STATS), shard_name_template="", num_shards=1
        )
        return written, kinds


class WriteErrors(beam.PTransform):
    """Error records -> sharded JSONL error files (or a BigQuery errors table) plus
    `prediction.errors_stats`; returns what each write wrote.

    With `with_kinds`, a third output is the counts per (code, field) as written to
    `prediction.errors_stats`, for the run report: one count, whoever reads it.
    """

    def __init__(self, output_dir: str, bigquery: BigQueryTarget | None = None, with_kinds: bool = False):
        super().__init__()
        self._output_dir = output_dir
        self._bigquery = bigquery
        self._with_kinds = with_kinds

    def expand(self, errors):
        files, stats, kinds = self._write(errors)
        return (files, stats, kinds) if self._with_kinds else (files, stats)

    def _write(self, errors):
        counted = errors | "CountErrors" >> beam.ParDo(CountErrors())
        stats, kinds = errors | "Summarize" >> WriteErrorStats(self._output_dir)
        if self._bigquery:
            target = self._bigquery
            table = counted | "WriteBigQuery" >> bq.WriteErrorsToBigQuery(
                target.connection, target.errors_table, target.staging_dir, target.disposition
            )
            return table, stats, kinds
        files = (
            counted
            | "FormatErrors" >> beam.Map(json_lines)
            | "WriteErrorFiles"
            >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, ERRORS_PREFIX), shard_name_template=base.SHARD_TEMPLATE
            )
        )
        return files, stats, kinds
