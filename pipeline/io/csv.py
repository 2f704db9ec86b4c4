"""CSV (RFC 4180, also `.gz`): quoted fields may hold commas, doubled quotes and newlines.

In: the first record is the header, unless the layout declares the column order (schema
file `csv_columns:`, or `predict --csv_columns`) for files without one; a model trained on such
files remembers their order, used when a first row names no field. A newline inside
quotes does not end a record (see `pipeline.io.text`), an empty cell, quoted or not, is a
missing value, and a `string_list` cell is split on its separator (`sports|travel`).
Out: a header row `key,<outputs>,<pass-through fields>`, then one row per prediction; an
output with several values a record (TFX `scores` [N, 2]) is one cell, `0.25|0.75`.
"""

from __future__ import annotations

import csv
import io
import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipeline.blocks import ScoredBlock
from pipeline.io import base
from pipeline.io.text import MAX_RECORD_BYTES, BlockParser, Records, split_records


class CsvParser(BlockParser):
    def __init__(self, layout, source, header: list[str]):
        super().__init__(layout, source)
        self.header = header
        csv_types = {"int": pa.int64(), "float": pa.float64()}
        # Newlines inside quoted values cost pyarrow a third more time: only blocks with quotes.
        self._parse_options = {
            True: pa_csv.ParseOptions(newlines_in_values=True),
            False: pa_csv.ParseOptions(),
        }
        self._convert_options = pa_csv.ConvertOptions(
            column_types={f.name: csv_types.get(f.type, pa.string()) for f in layout.all_fields},
            include_columns=[f.name for f in layout.all_fields],
            include_missing_columns=True,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=[""],
        )

    def parse(self, data: bytes, chunk_bytes: int) -> pa.Table:
        return pa_csv.read_csv(
            pa.BufferReader(data),
            read_options=pa_csv.ReadOptions(
                column_names=self.header, use_threads=True, block_size=chunk_bytes
            ),
            parse_options=self._parse_options[self.has_quotes],
            convert_options=self._convert_options,
        )

    def normalize(self, table: pa.Table) -> pa.Table:
        """Splits string_list cells ("sports|travel") into lists, in Arrow."""
        for field in self.layout.all_fields:
            if field.type == "string_list":
                index = table.schema.get_field_index(field.name)
                column = pc.cast(table.column(index), pa.string())
                table = table.set_column(index, field.name, pc.split_pattern(column, field.separator))
        return table

    def diagnose(self, line_number: int, text: bytes) -> dict:
        data = text
        try:
            undecodable = None
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            undecodable, text = e, text.decode("utf-8", "surrogateescape")
        # A record may be as long as the reader allows (a large image), not Python's 128 KiB.
        csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))
        try:
            rows = list(csv.reader(io.StringIO(text)))
            values, problem = (rows[0], None) if len(rows) == 1 else (None, "line is not one CSV record")
        except csv.Error as e:
            values, problem = None, f"line is not valid CSV: {_csv_reason(e)}"
        if values is not None and len(values) != len(self.header):
            where = (
                "as the declared csv_columns"
                if self.layout.csv_columns
                else f"as in the header of {self.source}"
            )
            problem = f"expected {len(self.header)} columns {where}, got {len(values)}"
            # The key is still named when its column is there: the record can be found.
            partial = dict(zip(self.header, values, strict=False))
            return self.malformed(line_number, problem, text.rstrip("\r\n"), self.typed(partial))
        text = text.rstrip("\r\n")
        if values is None:
            return self.malformed(line_number, problem, text)
        record = dict(zip(self.header, values, strict=True))
        if undecodable is not None:
            return self.not_utf8(line_number, undecodable, record)
        return self.wrong_type(line_number, self.typed(record)) or self.malformed(
            line_number,
            f"row could not be read as the declared types: {self.parse_problem(data)}",
            record,
            record,
        )

    def parse_problem(self, data: bytes) -> str:
        """pyarrow's reason, its 0-based "column #N" named after the header."""
        reason = super().parse_problem(data)
        match = re.match(r"In CSV column #(\d+): ", reason)
        if match and int(match[1]) < len(self.header):
            reason = f"column {self.header[int(match[1])]!r}: {reason[match.end() :]}"
        return reason

    def typed(self, record: dict) -> dict:
        """The row with its numeric cells as numbers (bad ones left as text for wrong_type)."""
        typed = {}
        for field in self.layout.all_fields:
            cell = record.get(field.name, "")
            if cell == "":
                continue
            if field.type == "string_list":  # as normalize() splits it, so it is not blamed
                typed[field.name] = cell.split(field.separator)
                continue
            try:
                typed[field.name] = {"int": int, "float": float}.get(field.type, str)(cell)
            except ValueError:
                typed[field.name] = cell
        return {**record, **typed}


def _csv_reason(error: csv.Error) -> str:
    if "new-line character seen in unquoted field" in str(error):  # Python's advice is for its API
        return "a field holds a carriage return (\\r) outside quotes; quote that field"
    return str(error)


BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def parse_header(text: bytes) -> list[str]:
    rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
    return rows[0] if rows else []


def read(stream, source: str, layout, block_bytes: int, first_line: int = 1, header: list[str] | None = None):
    """`stream` from the start of a file, or (a byte range of a large file) from a record
    that is line `first_line`, with the file's `header` read beforehand."""
    columns = list(layout.csv_columns) if layout.csv_columns else header
    parser = CsvParser(layout, source, columns) if columns is not None else None
    for records in split_records(stream, block_bytes, quoted=True, first_line=first_line):
        if parser is None:
            if not isinstance(records, Records):
                parser = CsvParser(layout, source, [])
                yield from parser.parse_records(records)  # the header line itself is broken
                return
            header_end = int(records.ends[0])
            header = parse_header(records.data[:header_end])
            if layout.trained_csv_columns and not names_a_field(header, layout):
                parser = CsvParser(layout, source, list(layout.trained_csv_columns))  # no header row
                yield from parser.parse_records(records)
                continue
            parser = CsvParser(layout, source, header)
            records = Records(
                records.data[header_end:],
                records.lines[1:],
                records.ends[1:] - header_end,
                records.has_quotes,
                records.rejected,
            )
            if not len(records) and not records.rejected:
                continue
        yield from parser.parse_records(records)


def names_a_field(header, layout) -> bool:
    """Whether a first row names any of the layout's fields (a header, not a data row)."""
    return bool(set(header) & {f.name for f in layout.all_fields})


def file_header(path: str, layout) -> list[str] | None:
    """The column names of a CSV file (its first record), for a reader that starts mid-file."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if layout.csv_columns:
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for records in split_records(f, 1 << 20, quoted=True):
            if isinstance(records, Records) and len(records):
                header = parse_header(records.data[: int(records.ends[0])])
                if layout.trained_csv_columns and not names_a_field(header, layout):
                    return list(layout.trained_csv_columns)  # a headerless file, in the trained order
                return header
            return None
    return None


def head_problem(head: bytes, layout) -> str | None:
    """Why the file cannot be CSV, or its first row cannot be its header; None if it can.

    A header that names none of the layout's fields is a data row: the file has no header
    and its column order must be declared.
    """
    if b"\x00" in head:
        return "it holds binary data (NUL bytes)"
    if layout.csv_columns or not head.lstrip(BYTE_ORDER_MARK).strip(b" \t\r\n"):
        return None  # an empty file (or one of blank lines) is no records, as in every format
    first_line = head.split(b"\n", 1)[0]
    try:
        names = set(parse_header(first_line))
    except (csv.Error, UnicodeDecodeError):
        return "its first line is not a CSV header in UTF-8 (re-encode the file as UTF-8)"
    if names_a_field(names, layout) or layout.trained_csv_columns:
        return None  # a header, or a headerless file in the column order the model was trained on
    return (
        f"its first row {first_line[:80].decode('utf-8', 'replace')!r} names none of the fields "
        f"{[f.name for f in layout.fields][:8]}; if the file has no header row, declare the column "
        "order (schema file `csv_columns:`, or --csv_columns a,b,c)"
    )


def _csv_cell_column(column: pa.Array) -> pa.Array:
    """A list cell is its values joined by `|`, as string lists are read (`0.25|0.75`)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        values = column.values
        if not pa.types.is_string(values.type):
            values = pc.cast(values, pa.string())
        return pc.binary_join(type(column).from_arrays(column.offsets, values, mask=column.is_null()), "|")
    return column


def format_rows(scored: ScoredBlock, columns: base.PredictionColumns) -> bytes:
    table = base.scored_table(scored, columns)
    table = pa.Table.from_arrays(
        [_csv_cell_column(c.combine_chunks()) for c in table.columns], table.schema.names
    )
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue().rstrip(b"\n")


def header_row(columns: base.PredictionColumns) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(
        [base.KEY_COLUMN, *columns.outputs, *columns.passthrough_names]
    )
    return out.getvalue()


class _FormatFn(beam.DoFn):
    def __init__(self, columns):
        self.columns = columns

    def process(self, scored: ScoredBlock):
        if len(scored):
            yield format_rows(scored, self.columns)


class WritePredictions(base.PredictionWriter):
    """ScoredBlocks -> sharded CSV files with a header row, `<prefix>-SSSSS-of-NNNNN`."""

    def expand(self, scored):
        return (
            scored
            | "FormatCsvRows" >> beam.ParDo(_FormatFn(self.columns))
            | "WriteCsv"
            >> beam.io.WriteToText(
                self.prefix, shard_name_template=base.SHARD_TEMPLATE, header=header_row(self.columns)
            )
        )


FORMAT = base.FileFormat(
    name="csv",
    extensions=(".csv", ".txt"),
    read=read,
    head_problem=head_problem,
    write_predictions=WritePredictions,
    split="lines",
)
