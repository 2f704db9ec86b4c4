"""The file source: file patterns -> record blocks and error records, in any file format.

A small file is one read task; a large one several (byte ranges of a text file, runs of row
groups of a Parquet file: `pipeline.io.splitting`), spread over workers. Each part is read by
its format's reader (`pipeline.io.FILE_FORMATS`) and handed, block by block, to the
`checked` step the caller gives (validation and the read count: `pipeline.read.CheckedRecords`),
so a part is read, validated, scored and written in one fused stage.
"""

from __future__ import annotations

import gzip
import zlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from pipeline import counters, errors
from pipeline.blocks import RecordLayout, RecordStream
from pipeline.io import COMPRESSED_SUFFIX, describe_formats, format_for, splitting
from pipeline.io.base import Prepended, read_ahead
from pipeline.io.text import DEFAULT_BLOCK_BYTES
from pipeline.run_contract import InputError

HEAD_BYTES = 4096  # what is read of a file to tell whether it looks like its format


def check_file_head(path: str, input_format: str | None, layout: RecordLayout) -> None:
    fmt = format_for(path, input_format)
    with FileSystems.open(path, compression_type=_compression(fmt)) as stream:
        head = stream.read(HEAD_BYTES)
    problem = fmt.head_problem(head, layout)
    if problem:
        raise head_error(path, fmt, problem)


def first_blocks(path: str, input_format: str | None, layout: RecordLayout, rows: int):
    """The record blocks (and error records) at the start of a file, read as a run reads it,
    until `rows` records: a sample to check a model on before a run."""
    fmt = format_for(path, input_format)
    read = 0
    with FileSystems.open(path, compression_type=_compression(fmt)) as stream:
        for item in fmt.read(stream, path, layout, DEFAULT_BLOCK_BYTES):
            yield item
            read += len(item) if not isinstance(item, dict) else 1
            if read >= rows:
                return


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
    """A .gz file read in small pieces, so every byte before a cut is returned; the cut then
    raises on the next read (Python's gzip raises it, where Beam's reader ends silently).

    Pieces come from `GzipFile.read1`: one decompression step each. `GzipFile.read(n)` loops
    over such steps inside its buffered reader and, when a step raises, drops the bytes the
    earlier steps of that call produced (up to n: a whole 64 KiB piece of records, or all of a
    small file's records after its first 4 KiB).
    """

    PIECE = 1 << 16

    def __init__(self, raw):
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self._error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size if size is not None and size >= 0 else None
        while self._error is None and (wanted is None or wanted > 0):
            try:
                piece = self._gzip.read1(self.PIECE if wanted is None else min(self.PIECE, wanted))
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
    return errors.error_record(
        source=path,
        code=errors.MALFORMED_RECORD,
        message=(
            f"{path} ends before its gzip end marker ({error}): the file was cut short or is corrupt; "
            "the records before the cut were read, the rest is missing; replace it with a complete copy"
        ),
    )


class _ReadPartFn(beam.DoFn):
    """A file, or a part of a large one (pipeline.io.splitting) -> what `checked` makes of its
    record blocks and error records, in one stream. `starts`: for each byte range, the
    newlines before it and whether its file must be read whole."""

    def __init__(self, layout: RecordLayout, input_format: str | None, block_bytes: int, checked):
        self._layout = layout
        self._input_format = input_format
        self._block_bytes = block_bytes
        self._files = counters.counter(counters.FILES_READ)
        self._parts = counters.counter(counters.FILE_PARTS_READ)
        self._checked = checked

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
                    yield from self._checked([], part.path)
                    return
                blocks = fmt.read(
                    stream,
                    part.path,
                    self._layout,
                    self._block_bytes,
                    first_line=stream.first_line,
                    **options,
                )
                yield from self._checked(read_ahead(_errors_grouped(blocks)), part.path)
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
            yield from self._checked(read_ahead(_errors_grouped(blocks)), part.path)

    def _whole_file(self, path: str, fmt):
        gzipped = path.endswith(COMPRESSED_SUFFIX) and not fmt.needs_seekable_file
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            # Python's gzip reader, not Beam's: Beam ends a truncated .gz file silently.
            stream = _GzipStream(raw) if gzipped else raw
            try:
                head = stream.read(HEAD_BYTES)
            except _GZIP_FAILURES as e:
                yield from self._checked([_cut_short(path, e)], path)
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
            yield from self._checked(_until_cut(read_ahead(_errors_grouped(blocks)), path), path)


def _errors_grouped(items):
    """A reader's blocks as they come and its error records in lists of up to errors.ERROR_BATCH."""
    failed = []
    for item in items:
        if isinstance(item, dict):
            failed.append(item)
            if len(failed) >= errors.ERROR_BATCH:
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


class ReadFiles(beam.PTransform):
    """File patterns -> `checked.RECORDS` (what `checked` makes of the record blocks and error
    records) and `checked.COUNTS`; a small file is one read task, a large one several (byte
    ranges or row groups, see pipeline.io.splitting)."""

    def __init__(
        self,
        patterns,
        layout: RecordLayout,
        checked,
        input_format: str | None = None,
        split_bytes: int = splitting.DEFAULT_SPLIT_BYTES,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ):
        super().__init__()
        self._patterns = list(patterns)
        self._input_format = input_format
        self._layout = layout
        self._checked = checked
        self._block_bytes = block_bytes
        self._split_bytes = split_bytes

    def expand(self, pbegin):
        input_format, split_bytes = self._input_format, self._split_bytes

        def plan(metadata):
            fmt = format_for(metadata.path, input_format)
            return splitting.plan_parts(metadata.path, metadata.size_in_bytes, fmt, split_bytes)

        def count(part):
            quoted = format_for(part.path, input_format).name == "csv"
            return part.path, (part.index, splitting.count_range(part, quoted))

        if not self._may_split(pbegin.pipeline.options):
            split_bytes = 0  # no stages for splitting: 0.15 s less fixed cost for small runs
        parts = (
            pbegin
            | "ListPatterns" >> beam.Create(self._patterns)
            | "MatchFiles" >> fileio.MatchAll()
            | "PlanParts" >> beam.FlatMap(plan)
        )
        fn = _ReadPartFn(self._layout, self._input_format, self._block_bytes, self._checked)
        records, counts = self._checked.RECORDS, self._checked.COUNTS
        if not split_bytes:
            return (
                parts
                | "SpreadParts" >> beam.Reshuffle()
                | "ParseRecords"
                >> beam.ParDo(fn, starts={})
                .with_output_types(RecordStream)
                .with_outputs(counts, main=records)
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
            .with_outputs(counts, main=records)
        )

    def _may_split(self, options=None) -> bool:
        """Whether a file matched now is large enough to split (True when it cannot be told,
        e.g. in an offline dry run: the plan is made again, per file, when the job runs)."""
        if not self._split_bytes:
            return False
        if options is not None and options.view_as(TestOptions).dry_run:
            return True  # a dry run lists nothing: gs:// may be out of reach (Beam retries 120 s)
        try:
            for pattern in self._patterns:
                for found in FileSystems.match([pattern])[0].metadata_list:
                    if found.size_in_bytes > self._split_bytes:
                        return True
        except Exception:  # noqa: BLE001 - filesystems raise their own types
            return True
        return False
