"""Beam transforms that turn inputs into validated record blocks plus error records.

Shared by the `analyze` and `predict` pipelines, so training data and scoring data are
read and checked by the same code. Files of every format go through `ReadAdRecords`;
BigQuery tables and queries through `pipeline.io.bigquery`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import zlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import METRICS_NAMESPACE
from pipeline.blocks import RecordLayout
from pipeline.io import COMPRESSED_SUFFIX, InputError, describe_formats, format_for, is_bigquery
from pipeline.io import bigquery as bq
from pipeline.io.base import Prepended, read_ahead
from pipeline.io.text import DEFAULT_BLOCK_BYTES
from pipeline.validation import validate_block

BLOCKS = "blocks"
ERRORS = "errors"
COUNTS = "counts"  # ("read", number of records) pairs, for the run's final check
HEAD_BYTES = 4096
# Files whose first bytes are checked before the job starts (per pattern); the others are
# checked by the worker that reads them.
FILES_CHECKED_AT_START = 20


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Where a run's records come from: file patterns, bq:// tables, a BigQuery query."""

    patterns: tuple[str, ...] = ()
    input_format: str | None = None
    query: str | None = None
    row_filter: str | None = None
    connection: bq.Connection | None = None
    query_dataset: str | None = None

    @classmethod
    def from_options(cls, options) -> Inputs:
        from pipeline import options as opts

        io = options.view_as(opts.RecordIOOptions)
        return cls(
            tuple(io.input or ()),
            io.input_format,
            io.input_query,
            io.input_filter,
            opts.bigquery_connection(options),
            io.query_dataset,
        )

    @property
    def file_patterns(self) -> list[str]:
        return [p for p in self.patterns if not is_bigquery(p)]

    @property
    def bigquery_reads(self) -> list[bq.ReadSpec]:
        reads = [
            bq.ReadSpec(table=bq.TableRef.parse(p), row_filter=self.row_filter)
            for p in self.patterns
            if is_bigquery(p)
        ]
        return reads + (
            [bq.ReadSpec(query=self.query, query_dataset=self.query_dataset)] if self.query else []
        )


def check_inputs(inputs: Inputs | list[str], input_format: str | None, layout: RecordLayout) -> list:
    """Fails before the job starts if a pattern matches nothing, matches files of several
    formats, or a file does not look like its format, if a BigQuery table does not exist or
    a query does not parse; returns the matched files, and for BigQuery inputs what
    BigQuery reports before running (table size, bytes a query processes)."""
    if not isinstance(inputs, Inputs):
        inputs = Inputs(tuple(inputs), input_format)
    input_format = inputs.input_format
    if not inputs.patterns and not inputs.query:
        raise InputError("no --input given: pass one or more file patterns or bq:// tables")
    files = []
    for spec in inputs.bigquery_reads:  # size or bytes a query processes, for run.json
        files.append(bq.check_read(inputs.connection or bq.Connection(), spec))
    for pattern in inputs.file_patterns:
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


def input_fingerprint(inputs: Inputs) -> str:
    """sha256 over what the inputs are now: each file's path, size and modification time,
    each table's size and last change with its filter, a query's text. It changes when the
    data does, so a nightly re-run can tell that a date's inputs are the ones it scored."""
    digest = hashlib.sha256()
    for pattern in inputs.file_patterns:
        for m in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
            digest.update(f"{m.path}\0{m.size_in_bytes}\0{m.last_updated_in_seconds}\n".encode())
    for spec in inputs.bigquery_reads:
        described = bq.check_read(inputs.connection or bq.Connection(), spec)
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


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


_GZIP_FAILURES = (EOFError, gzip.BadGzipFile, zlib.error)


class _GzipStream:
    """A .gz file read in small pieces, so the data before a cut is returned; the cut then
    raises on the next read (Python's gzip raises it, where Beam's reader ends silently)."""

    PIECE = 1 << 16

    def __init__(self, raw):
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self._error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size if size is not None and size >= 0 else None
        while self._error is None and (wanted is None or wanted > 0):
            try:
                piece = self._gzip.read(self.PIECE if wanted is None else min(self.PIECE, wanted))
            except _GZIP_FAILURES as e:
                self._error = e
                break
            if not piece:
                break
            parts.append(piece)
            if wanted is not None:
                wanted -= len(piece)
        if not parts and self._error is not None:
            raise self._error
        return b"".join(parts)


def _cut_short(path: str, error: Exception) -> dict:
    """The error record of a compressed file that ends early: the records before were read."""
    from pipeline import errors

    return errors.error_record(
        source=path,
        code=errors.MALFORMED_RECORD,
        message=(
            f"{path} ends before its gzip end marker ({error}): the file was cut short or is corrupt; "
            "the records before the cut were read, the rest of the file is missing"
        ),
    )


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
        gzipped = path.endswith(COMPRESSED_SUFFIX) and not fmt.needs_seekable_file
        with readable_file.open(compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            # Python's gzip reader, not Beam's: Beam ends a truncated .gz file silently.
            stream = _GzipStream(raw) if gzipped else raw
            try:
                head = stream.read(HEAD_BYTES)
            except _GZIP_FAILURES as e:
                yield from self.counted([_cut_short(path, e)])
                return
            problem = fmt.head_problem(head, self._layout)
            if problem:
                raise InputError(f"{path} does not look like {fmt.name}: {problem}")
            if fmt.needs_seekable_file:
                stream.seek(0)
            else:
                stream = Prepended(head, stream)
            blocks = fmt.read(stream, path, self._layout, self._block_bytes)
            try:
                yield from self.counted(read_ahead(blocks))
            except _GZIP_FAILURES as e:
                yield from self.counted([_cut_short(path, e)])

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
    """Reads and validates ad records from files and BigQuery.

    Outputs `blocks` (valid rows), `errors` (one per record that cannot be scored) and
    `counts` (("read", n) pairs: every record read, before validation).
    """

    def __init__(
        self,
        inputs: Inputs | list[str],
        layout: RecordLayout,
        input_format: str | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ):
        super().__init__()
        self._inputs = inputs if isinstance(inputs, Inputs) else Inputs(tuple(inputs), input_format)
        self._layout = layout
        self._block_bytes = block_bytes

    def expand(self, pbegin):
        parts = []
        if self._inputs.file_patterns:
            parts.append(pbegin | "ReadFiles" >> _ReadFiles(self._inputs, self._layout, self._block_bytes))
        connection = self._inputs.connection or bq.Connection()
        for index, spec in enumerate(self._inputs.bigquery_reads):
            parts.append(
                pbegin
                | f"ReadBigQuery{index or ''}" >> bq.ReadBigQueryRecords(connection, self._layout, spec)
            )
        read = {
            tag: tuple(part[tag] for part in parts) | f"Merge{tag.title()}" >> beam.Flatten()
            for tag in (BLOCKS, ERRORS)
        }
        counts = (
            read[BLOCKS] | "CountBlockRows" >> beam.Map(lambda block: ("read", len(block))),
            read[ERRORS] | "CountUnreadable" >> beam.Map(lambda _: ("read", 1)),
        ) | "ReadCounts" >> beam.Flatten()
        return {**(read | "Validate" >> ValidateRecords(self._layout)), COUNTS: counts}


class _ReadFiles(beam.PTransform):
    """File patterns -> record blocks and error records, a whole file per worker task."""

    def __init__(self, inputs: Inputs, layout: RecordLayout, block_bytes: int):
        super().__init__()
        self._patterns = inputs.file_patterns
        self._input_format = inputs.input_format
        self._layout = layout
        self._block_bytes = block_bytes

    def expand(self, pbegin):
        # Files, not blocks, are spread over workers: each file is then read, validated,
        # scored and written in one fused stage, so no stage ever holds the whole input.
        return (
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
