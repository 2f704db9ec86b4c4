"""BigQuery: tables and queries in through the Storage Read API; predictions out by load jobs.

In: `bq://project.dataset.table` (optionally with `--input_filter`, a row restriction such
as `DATE(_PARTITIONTIME) = "2026-11-26"`) or a standard-SQL `--input_query`. A query's
result is written by `CREATE TABLE ... AS` into `--query_dataset` (which must be in the
location of the tables it reads), as a table that expires after a day. A read session (Arrow format, only the
columns the layout needs) is opened when the pipeline runs; its streams are spread over
workers, and each stream arrives as Arrow record batches that become record blocks with no
per-row Python. A column of the wrong type is one `wrong_type` error per affected row.

Out: predictions and error records are staged as files, then loaded by one load job per
table (load jobs are free; streaming inserts are billed per byte): staged on `gs://`, the
job loads the files by URI; staged elsewhere (a local run), each file is uploaded to a load
job, the first one truncating when `--write_disposition truncate`. Tables are created when
missing, with a schema derived from the model description.

Beam's own BigQuery connectors hard-code Google's endpoints and hand rows to Python as
dicts, so this module talks to BigQuery with the google-cloud clients directly; a
`Connection` carries the project and, for a private endpoint or a local emulator, where the
REST and Storage APIs listen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline import counters
from pipeline.blocks import RecordStream, conform
from pipeline.io import BIGQUERY_SCHEME
from pipeline.io.base import SHARD_TEMPLATE, PredictionColumns, scored_table
from pipeline.run_contract import QUALITY_BLOCKED, InputError, InputNotReady

_TABLE = re.compile(r"^bq://([A-Za-z0-9_.:-]+)[.:]([A-Za-z0-9_]+)\.([A-Za-z0-9_$-]+)$")
_BQ_TYPES = {pa.int64(): "INT64", pa.float64(): "FLOAT64", pa.float32(): "FLOAT64", pa.string(): "STRING"}
QUERY_SOURCE = "bq://query"
DISPOSITIONS = {"truncate": "WRITE_TRUNCATE", "append": "WRITE_APPEND"}


@dataclasses.dataclass(frozen=True)
class TableRef:
    project: str
    dataset: str
    table: str

    @classmethod
    def parse(cls, uri: str, flag: str = "--input") -> TableRef:
        match = _TABLE.match(uri)
        if not match:
            raise InputError(f"{flag} {uri!r} is not a BigQuery table; write bq://project.dataset.table")
        return cls(*match.groups())

    @property
    def spec(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def uri(self) -> str:
        return BIGQUERY_SCHEME + self.spec

    @property
    def path(self) -> str:
        return f"projects/{self.project}/datasets/{self.dataset}/tables/{self.table}"

    def with_suffix(self, suffix: str) -> TableRef:
        return dataclasses.replace(self, table=self.table + suffix)


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where BigQuery is and who pays: picklable, so workers build their own clients.

    `endpoint` (REST) and `storage_endpoint` (Storage API gRPC, host:port) default to
    Google's. An `http://` endpoint is a server without TLS (a local emulator), reached
    with plain-text gRPC; `anonymous` skips credentials (`--no_auth`).
    """

    project: str | None = None
    endpoint: str | None = None
    storage_endpoint: str | None = None
    anonymous: bool = False

    def _credentials(self):
        if self.anonymous:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        return None  # application default credentials

    def client(self, project: str | None = None):
        from google.api_core.client_options import ClientOptions
        from google.cloud import bigquery

        options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
        return bigquery.Client(
            project=project or self.project, credentials=self._credentials(), client_options=options
        )

    def read_client(self):
        from google.cloud import bigquery_storage_v1

        if not self.storage_endpoint:
            return bigquery_storage_v1.BigQueryReadClient(credentials=self._credentials())
        if self.endpoint and self.endpoint.startswith("http://"):
            import grpc
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            channel = grpc.insecure_channel(
                self.storage_endpoint, options=[("grpc.max_receive_message_length", -1)]
            )
            transport = BigQueryReadGrpcTransport(channel=channel, credentials=self._credentials())
            return bigquery_storage_v1.BigQueryReadClient(transport=transport)
        from google.api_core.client_options import ClientOptions

        return bigquery_storage_v1.BigQueryReadClient(
            credentials=self._credentials(), client_options=ClientOptions(api_endpoint=self.storage_endpoint)
        )


@dataclasses.dataclass(frozen=True)
class ReadSpec:
    """One BigQuery input: a table (with an optional row filter) or a query."""

    table: TableRef | None = None
    query: str | None = None
    row_filter: str | None = None
    query_dataset: str | None = None  # project.dataset that receives a query's result

    def results_table(self) -> TableRef:
        project, _, dataset = self.query_dataset.partition(".")
        return TableRef(project, dataset, f"adpredict_query_{uuid.uuid4().hex}")

    @property
    def source(self) -> str:
        return self.table.uri if self.table else QUERY_SOURCE


def check_read(connection: Connection, spec: ReadSpec) -> dict:
    """Fails before the job starts if the table does not exist or the query does not parse.

    Returns what the read will cost as far as BigQuery tells before running: the table's
    size, or the bytes the query would process (billed at on-demand rates).
    """
    from google.api_core import exceptions
    from google.cloud import bigquery

    try:
        if spec.table:
            table = connection.client(spec.table.project).get_table(spec.table.spec)
            return {
                "table": spec.table.uri,
                "filter": spec.row_filter,
                "rows": table.num_rows,
                "bytes": table.num_bytes,
                "modified": table.modified.isoformat() if table.modified else None,
            }
        if not spec.query_dataset or "." not in spec.query_dataset:
            raise InputError(
                "--input_query needs --query_dataset project.dataset: where the query's result is "
                "written to be read (a dataset in the location of the tables the query reads)"
            )
        job = connection.client().query(
            spec.query, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        )
        connection.client().get_dataset(spec.query_dataset)
        return {"query": spec.query, "bytes_processed": job.total_bytes_processed}
    except exceptions.NotFound as e:
        what = (
            f"BigQuery table {spec.table.uri}"
            if spec.table
            else "a table or --query_dataset of --input_query"
        )
        not_there = InputNotReady if spec.table else InputError  # tonight's table may be early
        raise not_there(
            f"{what} does not exist: {_first_line(e)}; check its project, dataset and table names"
        ) from None
    except exceptions.GoogleAPICallError as e:
        if isinstance(e, exceptions.BadRequest) and not spec.table:
            raise InputError(f"--input_query is not valid standard SQL: {_first_line(e)}") from None
        raise InputError(
            f"BigQuery refused {spec.table.uri if spec.table else '--input_query'}: {_first_line(e)}; "
            "check the name, --project and that your credentials may read it"
        ) from None


def check_write(connection: Connection, table: TableRef) -> None:
    """Fails before the job starts if the output table's dataset does not exist."""
    from google.api_core import exceptions

    try:
        connection.client(table.project).get_dataset(f"{table.project}.{table.dataset}")
    except exceptions.NotFound:
        raise InputError(
            f"--output_table {table.uri}: dataset {table.project}.{table.dataset} does not exist; "
            f"create it first (bq mk {table.project}:{table.dataset})"
        ) from None


def _first_line(error: Exception) -> str:
    return str(getattr(error, "message", error)).strip().splitlines()[0][:300]


class _OpenReadSessionFn(beam.DoFn):
    """Runs the query (if any) and opens a read session; emits (stream, schema, source)."""

    def __init__(self, connection: Connection, layout):
        self._connection = connection
        self._layout = layout

    def process(self, spec: ReadSpec):
        from google.cloud.bigquery_storage_v1 import types

        table = spec.table
        if spec.query:
            # A CREATE TABLE AS, not the query's anonymous result table: the Storage Read API
            # serves both on BigQuery, but only named tables on the emulator the tests use.
            table = spec.results_table()
            self._connection.client(table.project).query(
                f"CREATE TABLE `{table.spec}` OPTIONS(expiration_timestamp="
                f"TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)) AS\n{spec.query}"
            ).result()
        present = {f.name for f in self._connection.client(table.project).get_table(table.spec).schema}
        options = types.ReadSession.TableReadOptions(
            selected_fields=[f.name for f in self._layout.all_fields if f.name in present],
            row_restriction=spec.row_filter or "",
        )
        session = self._connection.read_client().create_read_session(
            parent=f"projects/{self._connection.project or table.project}",
            read_session=types.ReadSession(
                table=table.path, data_format=types.DataFormat.ARROW, read_options=options
            ),
            max_stream_count=0,  # as many as BigQuery offers: they are spread over workers
        )
        schema = session.arrow_schema.serialized_schema
        for index, stream in enumerate(session.streams):
            yield stream.name, schema, spec.source if len(session.streams) == 1 else f"{spec.source}/{index}"


class _ReadStreamFn(beam.DoFn):
    """Reads one stream's Arrow record batches into checked record blocks and error records."""

    def __init__(self, connection: Connection, layout, checked):
        self._connection = connection
        self._layout = layout
        self._checked = checked  # pipeline.read.CheckedRecords: validation and the read count

    def setup(self):
        self._client = self._connection.read_client()

    def process(self, stream):
        yield from self._checked(self._conformed(stream))

    def _conformed(self, stream):
        name, serialized_schema, source = stream
        schema = pa.ipc.read_schema(pa.py_buffer(serialized_schema))
        row = 1
        for response in self._client.read_rows(name):
            data = response.arrow_record_batch.serialized_record_batch
            if not data:
                continue
            batch = pa.ipc.read_record_batch(pa.py_buffer(data), schema)
            lines = np.arange(row, row + batch.num_rows, dtype=np.int64)
            row += batch.num_rows
            block, failures = conform(batch, self._layout, source, lines)
            yield from failures
            if block is not None and len(block):
                yield block


class ReadBigQueryRecords(beam.PTransform):
    """A BigQuery table or query -> `records` (checked blocks and error records) and `counts`."""

    def __init__(self, connection: Connection, layout, spec: ReadSpec, checked):
        super().__init__()
        self._connection = connection
        self._layout = layout
        self._spec = spec
        self._checked = checked

    def expand(self, pbegin):
        return (
            pbegin
            | "Spec" >> beam.Create([self._spec])
            | "OpenReadSession" >> beam.ParDo(_OpenReadSessionFn(self._connection, self._layout))
            | "SpreadStreams" >> beam.Reshuffle()
            | "ReadStreams"
            >> beam.ParDo(_ReadStreamFn(self._connection, self._layout, self._checked))
            .with_output_types(RecordStream)
            .with_outputs(self._checked.COUNTS, main=self._checked.RECORDS)
        )


def prediction_schema(columns: PredictionColumns):
    """The BigQuery schema of the predictions table: key, outputs, pass-through fields.

    An output with several values a record (TFX `scores` [N, 2], string `classes`) is a
    REPEATED column of its type; floats are FLOAT64 (BigQuery has one float type).
    """
    from google.cloud import bigquery

    fields = []
    for field in _load_schema(columns.arrow_schema()):
        if pa.types.is_list(field.type):
            fields.append(bigquery.SchemaField(field.name, _bq_type(field.type.value_type), mode="REPEATED"))
        else:
            fields.append(bigquery.SchemaField(field.name, _bq_type(field.type)))
    return fields


def _bq_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type):
        return "INT64"
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    return _BQ_TYPES.get(arrow_type, "FLOAT64")


def _load_schema(schema: pa.Schema) -> pa.Schema:
    """float32 outputs (and lists of them) are loaded as FLOAT64; other ints as int64."""

    def widened(t: pa.DataType) -> pa.DataType:
        if pa.types.is_list(t):
            return pa.list_(widened(t.value_type))
        if pa.types.is_floating(t):
            return pa.float64()
        if pa.types.is_integer(t):
            return pa.int64()
        return t

    return pa.schema([pa.field(f.name, widened(f.type)) for f in schema])


def error_schema():
    """The BigQuery schema of the errors table: the error record, `instance` as JSON text."""
    from google.cloud import bigquery

    return [
        bigquery.SchemaField("key", "STRING"),
        bigquery.SchemaField("source", "STRING"),
        bigquery.SchemaField("instance", "STRING"),
        bigquery.SchemaField(
            "error",
            "RECORD",
            fields=[
                bigquery.SchemaField("code", "STRING"),
                bigquery.SchemaField("field", "STRING"),
                bigquery.SchemaField("message", "STRING"),
            ],
        ),
    ]


def error_row(error: dict) -> str:
    """An error record as one NDJSON line of the errors table."""
    key = error["key"]
    instance = error["instance"]
    return json.dumps(
        {
            "key": None if key is None else str(key),
            "source": error["source"],
            "instance": None if instance is None else json.dumps(instance),
            "error": error["error"],
        }
    )


def _parquet_lists():
    """Parquet LIST columns load as REPEATED fields, not as RECORDs of `list.element`."""
    from google.cloud.bigquery.format_options import ParquetOptions

    options = ParquetOptions()
    options.enable_list_inference = True
    return options


class _LoadFilesFn(beam.DoFn):
    """Loads all staged files of one table in the last step, deletes them, and emits
    (counter, rows loaded).

    A load job is all or nothing (no bad records allowed), so once the jobs succeed the
    table holds every staged row; the staged rows are counted for the run's check that
    nothing was lost.
    """

    def __init__(
        self, connection, table: TableRef, schema, source_format: str, disposition: str, counter: str
    ):
        self._connection = connection
        self._table = table
        self._schema = schema
        self._format = source_format
        self._disposition = DISPOSITIONS[disposition]
        self._counter_name = counter
        self._loaded = counters.counter(counter)

    def process(self, paths: list[str], quality: dict | None = None):
        """`quality`: the run's data-quality verdict (run.json's `quality`), when the gate
        runs: a blocked run loads nothing, and its staged files stay for a person to read."""
        from apache_beam.io.filesystems import FileSystems
        from google.cloud import bigquery

        if quality is not None and quality.get("verdict") == QUALITY_BLOCKED:
            logging.warning(
                "the data-quality gate blocked the run: %s not loaded; its %d staged files stay in %s",
                self._table.uri,
                len(paths),
                paths[0].rsplit("/", 2)[0] if paths else "(none)",
            )
            yield self._counter_name, 0
            return
        client = self._connection.client(self._table.project)
        client.create_table(bigquery.Table(self._table.spec, schema=self._schema), exists_ok=True)
        all_paths = sorted(paths)
        rows = {path: self._rows(path) for path in all_paths}
        staged_rows = sum(rows.values())
        paths = [path for path in all_paths if rows[path]]  # an empty file is no load job (and
        # an empty upload is refused by some servers)

        def config(disposition):
            job = bigquery.LoadJobConfig(
                schema=self._schema,
                source_format=self._format,
                write_disposition=disposition,
                create_disposition="CREATE_IF_NEEDED",
                max_bad_records=0,
            )
            if self._format == "PARQUET":
                job.parquet_options = _parquet_lists()
            return job

        if paths and all(p.startswith("gs://") for p in paths):
            # One job for every file: the table changes once, whatever the number of shards.
            client.load_table_from_uri(paths, self._table.spec, job_config=config(self._disposition)).result()
        else:
            for index, path in enumerate(paths):
                disposition = self._disposition if index == 0 else "WRITE_APPEND"
                with FileSystems.open(path, compression_type="uncompressed") as staged:
                    client.load_table_from_file(
                        staged, self._table.spec, job_config=config(disposition)
                    ).result()
            if not paths and self._disposition == "WRITE_TRUNCATE":
                client.query(f"DELETE FROM `{self._table.spec}` WHERE TRUE").result()
        self._loaded.inc(staged_rows)
        if all_paths:
            FileSystems.delete(all_paths)
        yield self._counter_name, staged_rows

    def _rows(self, path: str) -> int:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type="uncompressed") as staged:
            if self._format == "PARQUET":
                import pyarrow.parquet as pq

                return pq.ParquetFile(staged).metadata.num_rows
            return sum(chunk.count(b"\n") for chunk in iter(lambda: staged.read(1 << 20), b""))


class _StageAndLoad(beam.PTransform):
    """Elements -> files written by `stage(prefix)` -> one load of them into `table`."""

    def __init__(
        self,
        connection,
        table: TableRef,
        staging_dir: str,
        disposition: str,
        stage,
        schema,
        fmt,
        counter,
        quality=None,
    ):
        super().__init__()
        self._stage = stage(f"{staging_dir.rstrip('/')}/{uuid.uuid4().hex}/{table.table}")
        self._load = _LoadFilesFn(connection, table, schema, fmt, disposition, counter)
        self._quality = quality

    def expand(self, pcoll):
        side = {}
        if self._quality is not None:  # the load waits for the data-quality verdict
            side["quality"] = beam.pvalue.AsSingleton(self._quality)
        return (
            pcoll
            | "Stage" >> self._stage
            | "AllStagedFiles" >> beam.combiners.ToList()
            | "LoadTable" >> beam.ParDo(self._load, **side)
        )


def WriteToBigQuery(connection, table: TableRef, columns: PredictionColumns, staging_dir: str, disposition,  # noqa: N802 - a PTransform factory
                    quality=None):  # fmt: skip
    """ScoredBlocks -> Parquet files in `staging_dir` -> one load into the predictions table
    (none when `quality`, the data-quality verdict as one element, blocks the run)."""
    schema = _load_schema(columns.arrow_schema())

    def stage(prefix):
        return beam.Map(
            lambda block: scored_table(block, columns).cast(schema)
        ) | beam.io.WriteToParquetBatched(prefix, schema=schema, shard_name_template=SHARD_TEMPLATE)

    return _StageAndLoad(
        connection,
        table,
        staging_dir,
        disposition,
        stage,
        prediction_schema(columns),
        "PARQUET",
        counters.BIGQUERY_PREDICTIONS_LOADED,
        quality,
    )


def WriteErrorsToBigQuery(connection, table: TableRef, staging_dir: str, disposition, quality=None):  # noqa: N802 - a PTransform factory
    """Lists of error records -> NDJSON files in `staging_dir` -> one load into the errors table
    (none when `quality` blocks the run)."""

    def stage(prefix):
        return beam.Map(lambda errors: "\n".join(map(error_row, errors))) | beam.io.WriteToText(
            prefix, shard_name_template=SHARD_TEMPLATE
        )

    return _StageAndLoad(
        connection,
        table,
        staging_dir,
        disposition,
        stage,
        error_schema(),
        "NEWLINE_DELIMITED_JSON",
        counters.BIGQUERY_ERRORS_LOADED,
        quality,
    )
