"""Beam transforms that turn inputs into validated record blocks plus error records.

Shared by the `analyze` and `predict` pipelines, so training data and scoring data are
read and checked by the same code. Files of every format go through `ReadAdRecords`;
BigQuery tables and queries through `pipeline.io.bigquery`.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import METRICS_NAMESPACE
from pipeline.blocks import RecordLayout
from pipeline.io import InputError, describe_formats, format_for
from pipeline.io.base import Prepended, read_ahead
from pipeline.io.text import DEFAULT_BLOCK_BYTES
from pipeline.validation import validate_block

BLOCKS = "blocks"
ERRORS = "errors"
HEAD_BYTES = 4096
# Files whose first bytes are checked before the job starts (per pattern); the others are
# checked by the worker that reads them.
FILES_CHECKED_AT_START = 20


def check_inputs(patterns: list[str], input_format: str | None, layout: RecordLayout) -> list[str]:
    """Fails before the job starts if a pattern matches nothing, matches files of several
    formats, or a file does not look like its format; returns the matched files."""
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
        paths = sorted(m.path for m in matched)
        formats = {path: format_for(path, input_format).name for path in paths}
        if len(set(formats.values())) > 1:
            examples = ", ".join(f"{p} ({f})" for p, f in list(formats.items())[:4])
            raise InputError(
                f"input pattern {pattern!r} matches files of several formats: {examples}; "
                "give each format its own --input pattern"
            )
        for path in paths[:FILES_CHECKED_AT_START]:
            check_file_head(path, input_format, layout)
        files += paths
    return files


def check_file_head(path: str, input_format: str | None, layout: RecordLayout) -> None:
    fmt = format_for(path, input_format)
    with FileSystems.open(path, compression_type=_compression(fmt)) as stream:
        head = stream.read(HEAD_BYTES)
    problem = fmt.head_problem(head, layout)
    if problem:
        raise InputError(
            f"{path} does not look like {fmt.name}: {problem}. Formats: {describe_formats()}; "
            "pass --input_format to declare the format when the file name does not tell it"
        )


def _compression(fmt) -> str:
    return CompressionTypes.UNCOMPRESSED if fmt.needs_seekable_file else CompressionTypes.AUTO


class _ReadFileFn(beam.DoFn):
    def __init__(self, layout: RecordLayout, input_format: str | None, block_bytes: int):
        self._layout = layout
        self._input_format = input_format
        self._block_bytes = block_bytes
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._malformed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_malformed")
        self._files = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "files_read")

    def process(self, readable_file: fileio.ReadableFile):
        path = readable_file.metadata.path
        fmt = format_for(path, self._input_format)
        self._files.inc()
        with readable_file.open(compression_type=_compression(fmt)) as stream:
            head = stream.read(HEAD_BYTES)
            problem = fmt.head_problem(head, self._layout)
            if problem:
                raise InputError(f"{path} does not look like {fmt.name}: {problem}")
            if fmt.needs_seekable_file:
                stream.seek(0)
            else:
                stream = Prepended(head, stream)
            blocks = fmt.read(stream, path, self._layout, self._block_bytes)
            yield from self.counted(read_ahead(blocks))

    def counted(self, items):
        for item in items:
            if isinstance(item, dict):
                self._read.inc()
                self._malformed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, item)
            else:
                self._read.inc(len(item))
                yield item


class ValidateRecords(beam.PTransform):
    """RecordBlocks -> the rows that pass validation (`blocks`) and one error per other row."""

    def __init__(self, layout: RecordLayout):
        super().__init__()
        self._layout = layout

    def expand(self, read):
        validated = read[BLOCKS] | "ValidateRecords" >> beam.ParDo(_ValidateFn(self._layout)).with_outputs(
            ERRORS, main=BLOCKS
        )
        errors = (read[ERRORS], validated[ERRORS]) | "MergeReadErrors" >> beam.Flatten()
        return {BLOCKS: validated[BLOCKS], ERRORS: errors}


class _ValidateFn(beam.DoFn):
    def __init__(self, layout: RecordLayout):
        self._layout = layout
        self._invalid = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records_invalid")

    def process(self, block):
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
        layout: RecordLayout,
        input_format: str | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
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
        return {BLOCKS: read[BLOCKS], ERRORS: read[ERRORS]} | "Validate" >> ValidateRecords(self._layout)
