"""Beam transforms that turn file patterns into validated record blocks plus error records.

Shared by the `analyze` and `predict` pipelines, so training data and scoring data are
read and checked by the same code.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import METRICS_NAMESPACE, sources
from pipeline.validation import validate_block

BLOCKS = "blocks"
ERRORS = "errors"


class InputError(ValueError):
    """An input pattern matches no file, or a file's format cannot be told."""


def check_inputs(patterns: list[str], input_format: str | None) -> list[str]:
    """Fails before the job starts if a pattern matches nothing; returns the matched files."""
    if not patterns:
        raise InputError("no --input given: pass one or more file patterns")
    files = []
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # noqa: BLE001 - filesystems raise their own types
            raise InputError(f"cannot list input pattern {pattern!r}: {e}") from None
        if not matched:
            raise InputError(f"input pattern {pattern!r} matches no file; check the path and the glob")
        for metadata in matched:
            try:
                sources.format_for(metadata.path, input_format)
            except ValueError as e:
                raise InputError(str(e)) from None
            files.append(metadata.path)
    return sorted(files)


class _ReadFileFn(beam.DoFn):
    def __init__(self, layout: sources.RecordLayout, input_format: str | None, block_bytes: int):
        self._layout = layout
        self._input_format = input_format
        self._block_bytes = block_bytes
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._malformed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_malformed")
        self._files = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "files_read")

    def process(self, readable_file: fileio.ReadableFile):
        path = readable_file.metadata.path
        fmt = sources.format_for(path, self._input_format)
        self._files.inc()
        with readable_file.open(compression_type=CompressionTypes.AUTO) as stream:
            blocks = sources.read_records(stream, path, self._layout, fmt, self._block_bytes)
            for item in sources.read_ahead(blocks):
                if isinstance(item, dict):
                    self._read.inc()
                    self._malformed.inc()
                    yield beam.pvalue.TaggedOutput(ERRORS, item)
                else:
                    self._read.inc(len(item))
                    yield item


class _ValidateFn(beam.DoFn):
    def __init__(self, layout: sources.RecordLayout):
        self._layout = layout
        self._invalid = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_invalid")

    def process(self, block: sources.RecordBlock):
        valid, failures = validate_block(block, self._layout)
        self._invalid.inc(len(failures))
        for failure in failures:
            yield beam.pvalue.TaggedOutput(ERRORS, failure)
        if valid is not None:
            yield valid


class ReadAdRecords(beam.PTransform):
    """Reads and validates ad records from file patterns: `blocks` and `errors` outputs."""

    def __init__(
        self,
        patterns: list[str],
        layout: sources.RecordLayout,
        input_format: str | None = None,
        block_bytes: int = sources.DEFAULT_BLOCK_BYTES,
    ):
        super().__init__()
        self._patterns = list(patterns)
        self._layout = layout
        self._input_format = input_format
        self._block_bytes = block_bytes

    def expand(self, pbegin):
        # Files, not blocks, are spread over workers: each file is then read, validated,
        # scored and written in one fused stage, so no stage ever holds the whole input.
        read = (
            pbegin
            | "ListPatterns" >> beam.Create(self._patterns)
            | "MatchFiles" >> fileio.MatchAll()
            | "SpreadFiles" >> beam.Reshuffle()
            | "OpenFiles" >> fileio.ReadMatches()
            | "ParseRecords"
            >> beam.ParDo(_ReadFileFn(self._layout, self._input_format, self._block_bytes)).with_outputs(
                ERRORS, main=BLOCKS
            )
        )
        validated = read[BLOCKS] | "ValidateRecords" >> beam.ParDo(_ValidateFn(self._layout)).with_outputs(
            ERRORS, main=BLOCKS
        )
        errors = (read[ERRORS], validated[ERRORS]) | "MergeReadErrors" >> beam.Flatten()
        return {BLOCKS: validated[BLOCKS], ERRORS: errors}
