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

from pipeline import METRICS_NAMESPACE, progress
from pipeline.blocks import RecordLayout, RecordStream
from pipeline.io import COMPRESSED_SUFFIX, InputError, describe_formats, format_for, is_bigquery, splitting
from pipeline.io import bigquery as bq
from pipeline.io.base import Prepended, read_ahead
from pipeline.io.text import DEFAULT_BLOCK_BYTES
from pipeline.validation import validate_block

RECORDS = "records"  # valid record blocks and error records, in one stream
BLOCKS = "blocks"
ERRORS = "errors"
COUNTS = "counts"  # ("read", number of records) pairs, for the run's final check
READ = "read"
ERROR_BATCH = 1024  # error records per element of an errors PCollection
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
    split_bytes: int = splitting.DEFAULT_SPLIT_BYTES  # files larger are read as several parts

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
            io.split_bytes,
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
            raise InputError(
                f"cannot list input pattern {pattern!r}: {e}; check its scheme (a local path or gs://) "
                "and that you may read it"
            ) from None
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
        raise head_error(path, fmt, problem)


def head_error(path: str, fmt, problem: str) -> InputError:
    """The error of a file whose first bytes do not look like its format (before the run or on a worker)."""
    return InputError(
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
            "the records before the cut were read, the rest is missing; replace it with a complete copy"
        ),
    )


class _ReadPartFn(beam.DoFn):
    """A file, or a part of a large one (pipeline.io.splitting) -> validated record blocks
    and error records, in one stream (see ReadAdRecords). `starts`: for each byte range,
    the newlines before it and whether its file must be read whole."""

    def __init__(self, layout: RecordLayout, input_format: str | None, block_bytes: int):
        self._layout = layout
        self._input_format = input_format
        self._block_bytes = block_bytes
        self._files = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.FILES_READ)
        self._parts = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.FILE_PARTS_READ)
        self._checked = CheckedRecords(layout)

    def process(self, part: splitting.FilePart, starts: dict):
        fmt = format_for(part.path, self._input_format)
        if part.index == 0:
            self._files.inc()
        self._parts.inc()
        if part.whole:
            yield from self._whole_file(part.path, fmt)
            return
        if part.kind == splitting.LINES:
            newlines_before, whole = starts[(part.path, part.index)]
            if whole:  # a CSV newline inside quotes: the first part reads it all
                if part.index == 0:
                    yield from self._whole_file(part.path, fmt)
                return
            options = {}
            if part.index == 0:
                check_file_head(part.path, self._input_format, self._layout)
            elif fmt.name == "csv":
                from pipeline.io.csv import file_header

                options["header"] = file_header(part.path, self._layout)
            stream = splitting.LineRange(part, newlines_before)
            try:
                if stream.empty:
                    yield from self._checked([])
                    return
                blocks = fmt.read(
                    stream,
                    part.path,
                    self._layout,
                    self._block_bytes,
                    first_line=stream.first_line,
                    **options,
                )
                yield from self._checked(read_ahead(_errors_grouped(blocks)))
            finally:
                stream.close()
            return
        if part.index == 0:
            check_file_head(part.path, self._input_format, self._layout)
        with FileSystems.open(part.path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            blocks = fmt.read(
                stream, part.path, self._layout, self._block_bytes,
                row_groups=(part.start, part.end), first_row=part.first_row,
            )  # fmt: skip
            yield from self._checked(read_ahead(_errors_grouped(blocks)))

    def _whole_file(self, path: str, fmt):
        gzipped = path.endswith(COMPRESSED_SUFFIX) and not fmt.needs_seekable_file
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            # Python's gzip reader, not Beam's: Beam ends a truncated .gz file silently.
            stream = _GzipStream(raw) if gzipped else raw
            try:
                head = stream.read(HEAD_BYTES)
            except _GZIP_FAILURES as e:
                yield from self._checked([_cut_short(path, e)])
                return
            problem = fmt.head_problem(head, self._layout)
            if problem:
                raise head_error(path, fmt, problem)
            if fmt.needs_seekable_file:
                stream.seek(0)
            else:
                stream = Prepended(head, stream)
            blocks = fmt.read(stream, path, self._layout, self._block_bytes)
            # Errors cross to this thread in lists: one queue hand-off per error record cost
            # 70 us (the threads take turns on the GIL), fourteen times the diagnosis itself.
            yield from self._checked(_until_cut(read_ahead(_errors_grouped(blocks)), path))


def _errors_grouped(items):
    """A reader's blocks as they come and its error records in lists of up to ERROR_BATCH."""
    failed = []
    for item in items:
        if isinstance(item, dict):
            failed.append(item)
            if len(failed) >= ERROR_BATCH:
                yield failed
                failed = []
            continue
        if failed:
            yield failed
            failed = []
        yield item
    if failed:
        yield failed


def _until_cut(items, path: str):
    """`items`, then the error record of a .gz file cut short if reading it stops there."""
    try:
        yield from items
    except _GZIP_FAILURES as e:
        yield _cut_short(path, e)


class CheckedRecords:
    """What a reader yields (record blocks, error records) -> validated blocks and lists of
    error records on one stream, plus ("read", n) on COUNTS: the records read, once per call.

    Validation happens in the reading step itself, so read errors and validation errors
    never need a Flatten: Beam's local runner materialises every multi-input Flatten, which
    held all error records of a run in memory (1.3 KB each; 2.1 GB for a million bad lines).
    Errors travel in lists of up to ERROR_BATCH: a step per list, not per error, is what
    makes a million bad lines cost about what a million good ones do.
    """

    RECORDS, COUNTS = RECORDS, COUNTS  # the output tags of a step that yields from it

    def __init__(self, layout: RecordLayout):
        self._layout = layout
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.RECORDS_READ)
        self._malformed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.RECORDS_MALFORMED)
        self._invalid = beam.metrics.Metrics.counter(METRICS_NAMESPACE, progress.RECORDS_INVALID)

    def __call__(self, items):
        read, failed = 0, []
        for item in items:
            if isinstance(item, (dict, list)):
                unread = [item] if isinstance(item, dict) else item
                read += len(unread)
                self._malformed.inc(len(unread))
                progress.add(read=len(unread), errors=len(unread))
                failed += unread
            else:
                read += len(item)
                valid, failures = validate_block(item, self._layout)
                self._invalid.inc(len(failures))
                progress.add(read=len(item), errors=len(failures))
                failed += failures
                if valid is not None:
                    yield valid
            if len(failed) >= ERROR_BATCH:
                yield failed
                failed = []
        if failed:
            yield failed
        self._read.inc(read)
        yield beam.pvalue.TaggedOutput(COUNTS, (READ, read))


class SeparateErrors(beam.DoFn):
    """A stream of record blocks and lists of error records -> blocks (main) and `errors`."""

    def process(self, item):
        yield beam.pvalue.TaggedOutput(ERRORS, item) if isinstance(item, list) else item


class ReadAdRecords(beam.PTransform):
    """Reads and validates ad records from files and BigQuery.

    Outputs `records`: valid record blocks and, in lists, one error record per record that
    cannot be scored, in one PCollection (a consumer tells them apart: a block or a list),
    and `counts`: ("read", n) pairs, every record read, before validation. One stream, not
    two joined by a Flatten, keeps the errors flowing through the fused steps instead of
    piling up in memory.
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
                | f"ReadBigQuery{index or ''}"
                >> bq.ReadBigQueryRecords(connection, self._layout, spec, CheckedRecords(self._layout))
            )
        # One part (the usual run) needs no Flatten; files and tables together do.
        return {
            RECORDS: tuple(part[RECORDS] for part in parts) | "MergeRecords" >> beam.Flatten(),
            COUNTS: tuple(part[COUNTS] for part in parts) | "MergeCounts" >> beam.Flatten(),
        }


def separate_errors(records, label: str = "SeparateErrors") -> dict:
    """{"blocks", "errors"} of a ReadAdRecords `records` stream (for steps that want both apart)."""
    return records | label >> beam.ParDo(SeparateErrors()).with_outputs(ERRORS, main=BLOCKS)


class _ReadFiles(beam.PTransform):
    """File patterns -> validated record blocks and error records; a small file is one read
    task, a large one several (byte ranges or row groups, see pipeline.io.splitting)."""

    def __init__(self, inputs: Inputs, layout: RecordLayout, block_bytes: int):
        super().__init__()
        self._patterns = inputs.file_patterns
        self._input_format = inputs.input_format
        self._layout = layout
        self._block_bytes = block_bytes
        self._split_bytes = inputs.split_bytes

    def expand(self, pbegin):
        input_format, split_bytes = self._input_format, self._split_bytes

        def plan(metadata):
            fmt = format_for(metadata.path, input_format)
            return splitting.plan_parts(metadata.path, metadata.size_in_bytes, fmt, split_bytes)

        def count(part):
            quoted = format_for(part.path, input_format).name == "csv"
            return part.path, (part.index, splitting.count_range(part, quoted))

        if not self._may_split():
            split_bytes = 0  # no stages for splitting: 0.15 s less fixed cost for small runs
        parts = (
            pbegin
            | "ListPatterns" >> beam.Create(self._patterns)
            | "MatchFiles" >> fileio.MatchAll()
            | "PlanParts" >> beam.FlatMap(plan)
        )
        fn = _ReadPartFn(self._layout, self._input_format, self._block_bytes)
        if not split_bytes:
            return (
                parts
                | "SpreadParts" >> beam.Reshuffle()
                | "ParseRecords"
                >> beam.ParDo(fn, starts={})
                .with_output_types(RecordStream)
                .with_outputs(COUNTS, main=RECORDS)
            )
        # Byte ranges need the newlines before them (line numbers): counted in parallel.
        starts = (
            parts
            | "ByteRanges" >> beam.Filter(lambda part: part.kind == splitting.LINES)
            | "SpreadRanges" >> beam.Reshuffle()
            | "CountNewlines" >> beam.Map(count)
            | "ByFile" >> beam.GroupByKey()
            | "RangeStarts" >> beam.FlatMap(lambda item: splitting.part_starts(item[0], list(item[1])))
        )
        # Parts, not blocks, are spread over workers: each part is then read, validated,
        # scored and written in one fused stage, so no stage ever holds the whole input.
        return (
            parts
            | "SpreadParts" >> beam.Reshuffle()
            | "ParseRecords"
            >> beam.ParDo(fn, starts=beam.pvalue.AsDict(starts))
            .with_output_types(RecordStream)
            .with_outputs(COUNTS, main=RECORDS)
        )

    def _may_split(self) -> bool:
        """Whether a file matched now is large enough to split (True when it cannot be told,
        e.g. in an offline dry run: the plan is made again, per file, when the job runs)."""
        if not self._split_bytes:
            return False
        try:
            for pattern in self._patterns:
                for found in FileSystems.match([pattern])[0].metadata_list:
                    if found.size_in_bytes > self._split_bytes:
                        return True
        except Exception:  # noqa: BLE001 - filesystems raise their own types
            return True
        return False
