"""Writing predictions, error records and the error summary.

Predictions go to `prediction.results-SSSSS-of-NNNNN` (the shard naming of Cloud ML Engine
and Vertex AI batch prediction), one JSON line per input record; errors to
`errors-SSSSS-of-NNNNN`; a per-error-kind count to `prediction.errors_stats`. Each
element written is a whole block of lines, so the writer does one call per block.
"""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from pipeline import METRICS_NAMESPACE
from pipeline.inference import ScoredBlock
from pipeline.sources import string_buffer

PREDICTIONS_PREFIX = "prediction.results"
ERRORS_PREFIX = "errors"
ERRORS_STATS = "prediction.errors_stats"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


_NEEDS_JSON_ESCAPE = r'["\\\x00-\x1f]'


def format_predictions(scored: ScoredBlock, output_names: list[str]) -> bytes:
    """The block's JSON lines, `{"key": ..., "prediction": {name: value, ...}}`, newline-joined.

    Built column-wise with Arrow compute kernels, so no Python code runs per record.
    """
    parts = ['{"key": ', _json_column(scored.keys), ', "prediction": {']
    for index, name in enumerate(output_names):
        parts += [("" if index == 0 else ", ") + json.dumps(name) + ": ", _json_column(scored.outputs[name])]
    parts.append("}}\n")
    data, _ = string_buffer(pc.binary_join_element_wise(*parts, ""))
    return data[:-1]  # the writer adds the last newline


def _json_column(values) -> pa.Array:
    """Each value as JSON text: numbers (null when not finite), quoted strings, or lists."""
    if isinstance(values, np.ndarray) and values.ndim > 1:
        return pa.array([json.dumps(row) for row in values.tolist()], pa.string())
    array = values if isinstance(values, pa.Array) else pa.array(values)
    if pa.types.is_floating(array.type):
        text = pc.cast(array, pa.string())
        return pc.if_else(pc.fill_null(pc.is_finite(array), False), text, "null")
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        return pc.fill_null(pc.cast(pc.cast(array, pa.int64()), pa.string()), "null")
    if pa.types.is_binary(array.type):
        array = pc.cast(array, pa.string())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        if array.null_count or pc.any(pc.match_substring_regex(array, _NEEDS_JSON_ESCAPE)).as_py():
            return pa.array([json.dumps(v) for v in array.to_pylist()], pa.string())
        return pc.binary_join_element_wise('"', array, '"', "")
    return pa.array([json.dumps(v) for v in array.to_pylist()], pa.string())


class _FormatPredictionsFn(beam.DoFn):
    def __init__(self, output_names: list[str]):
        self._output_names = output_names
        self._written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "predictions_written")

    def process(self, scored: ScoredBlock):
        self._written.inc(len(scored))
        yield format_predictions(scored, self._output_names)


class WritePredictions(beam.PTransform):
    """ScoredBlocks -> sharded JSONL prediction files under `output_dir`."""

    def __init__(self, output_dir: str, output_names: list[str]):
        super().__init__()
        self._output_dir = output_dir
        self._output_names = output_names

    def expand(self, scored):
        return (
            scored
            | "FormatPredictions" >> beam.ParDo(_FormatPredictionsFn(self._output_names))
            | "WritePredictionFiles"
            >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, PREDICTIONS_PREFIX),
                shard_name_template=SHARD_TEMPLATE,
            )
        )


class _CountErrorsFn(beam.CombineFn):
    """Counts error records per (code, field), keeping one example message each."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, error):
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


class WriteErrors(beam.PTransform):
    """Error records -> sharded JSONL error files plus `prediction.errors_stats`."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, errors):
        written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "errors_written")

        def to_json(error):
            written.inc()
            return json.dumps(error)

        files = (
            errors
            | "FormatErrors" >> beam.Map(to_json)
            | "WriteErrorFiles"
            >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, ERRORS_PREFIX), shard_name_template=SHARD_TEMPLATE
            )
        )
        stats = (
            errors
            | "CountErrorKinds" >> beam.CombineGlobally(_CountErrorsFn())
            | "WriteErrorStats"
            >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, ERRORS_STATS), shard_name_template="", num_shards=1
            )
        )
        return files, stats
