"""Reading a run's inputs: where records come from, checked before the job starts, then read
and validated into record blocks plus error records.

Shared by the `analyze` and `predict` pipelines, so training data and scoring data are
read and checked by the same code. Files of every format go through `pipeline.io.files`,
BigQuery tables and queries through `pipeline.io.bigquery`; `ReadAdRecords` joins them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.blocks import RecordLayout
from pipeline.io import bigquery as bq
from pipeline.io import format_for, is_bigquery, splitting
from pipeline.io.files import ReadFiles, check_file_head
from pipeline.io.text import DEFAULT_BLOCK_BYTES
from pipeline.run_contract import InputError, InputNotReady
from pipeline.validation import COUNTS, RECORDS, CheckedRecords

BLOCKS = "blocks"
ERRORS = "errors"
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
            raise InputNotReady(f"input pattern {pattern!r} matches no file; check the path and the glob")
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
        inputs = self._inputs
        if inputs.file_patterns:
            files = ReadFiles(
                inputs.file_patterns,
                self._layout,
                CheckedRecords(self._layout),
                inputs.input_format,
                inputs.split_bytes,
                self._block_bytes,
            )
            parts.append(pbegin | "ReadFiles" >> files)
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
