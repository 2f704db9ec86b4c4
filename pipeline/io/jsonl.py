"""JSON Lines: one JSON object per line (also `.gz`), in and out.

In: pyarrow parses each block of lines straight into the layout's columns. An image may
be a base64 string or, as Cloud ML Engine / Vertex AI instances write binary data,
`{"b64": "<base64>"}`. Out: `{"key": ..., "prediction": {name: value, ...}, <pass-through
fields>}` per line, built column-wise by Arrow kernels and written one block per call.
"""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from pipeline.blocks import ScoredBlock, string_buffer_view
from pipeline.io import base
from pipeline.io.text import BlockParser, split_records

B64_KEY = "b64"
BYTE_ORDER_MARK = b"\xef\xbb\xbf"


class JsonParser(BlockParser):
    """Parses blocks of JSON lines; an image column may hold `{"b64": ...}` objects instead."""

    def __init__(self, layout, source):
        super().__init__(layout, source)
        schema = layout.arrow_schema()
        self._images = [f.name for f in layout.all_fields if f.type == "image"]
        b64_schema = schema
        for name in self._images:
            index = b64_schema.get_field_index(name)
            b64_schema = b64_schema.set(index, pa.field(name, pa.struct([(B64_KEY, pa.string())])))
        # The variant that parsed the previous block is tried first.
        self._variants = [self._options(schema)] + ([self._options(b64_schema)] if self._images else [])

    @staticmethod
    def _options(schema):
        return pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

    def parse(self, data: bytes, chunk_bytes: int) -> pa.Table:
        for attempt, options in enumerate(self._variants):
            try:
                table = pa_json.read_json(
                    pa.BufferReader(data),
                    read_options=pa_json.ReadOptions(use_threads=True, block_size=chunk_bytes),
                    parse_options=options,
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                if attempt == len(self._variants) - 1:
                    raise
                continue
            if attempt:
                self._variants.insert(0, self._variants.pop(attempt))
            return self._b64_unwrapped(table.select([f.name for f in self.layout.all_fields]))
        raise AssertionError("unreachable")

    def _b64_unwrapped(self, table: pa.Table) -> pa.Table:
        for name in self._images:
            index = table.schema.get_field_index(name)
            column = table.column(index)
            if pa.types.is_struct(column.type):
                values = pc.struct_field(column, B64_KEY)
                if values.null_count > column.null_count:  # {"bytes": ...}: not the convention
                    raise pa.ArrowInvalid(f"field {name!r} holds an object without {B64_KEY!r}")
                table = table.set_column(index, name, values)
        return table

    def parse_problem(self, data: bytes) -> str:
        """pyarrow's reason, read the way the file's previous block parsed (its image convention)."""
        try:
            pa_json.read_json(
                pa.BufferReader(data),
                read_options=pa_json.ReadOptions(block_size=len(data) + 1),
                parse_options=self._variants[0],
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            return str(e).strip().splitlines()[0][:200]
        return super().parse_problem(data)

    def diagnose(self, line_number: int, text: bytes) -> dict:
        raw = text.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return self.not_utf8(line_number, e, _loads(raw.decode("utf-8", "surrogateescape")))
        record = _loads(text)
        if isinstance(record, Exception):
            return self.malformed(line_number, f"line is not valid JSON: {record}", text)
        if not isinstance(record, dict):
            return self.malformed(
                line_number, f"expected a JSON object per line, got {_json_kind(record)}", record
            )
        return self.wrong_type(line_number, record) or self.malformed(
            line_number,
            f"record could not be read as the declared types: {self.parse_problem(raw)}",
            record,
            record,
        )


def _loads(text: str):
    """The JSON value of `text`, or the exception saying why it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as e:
        return e
    except RecursionError:
        return ValueError("nested too deeply (more than Python's recursion limit of levels)")


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {list: "an array", str: "a string"}.get(type(value), "a number")


def read(stream, source: str, layout, block_bytes: int, first_line: int = 1):
    """`stream` from the start of a file, or from a record that is line `first_line`."""
    parser = JsonParser(layout, source)
    head = stream.read(len(BYTE_ORDER_MARK))
    if head != BYTE_ORDER_MARK:  # a UTF-8 BOM (Windows editors) is not part of the first record
        stream = base.Prepended(head, stream)
    for records in split_records(stream, block_bytes, first_line=first_line):
        yield from parser.parse_records(records)


def head_problem(head: bytes, layout) -> str | None:
    """A JSON Lines file starts with `{` (after blank space and a UTF-8 byte-order mark)."""
    text = head.lstrip(BYTE_ORDER_MARK + b" \t\r\n")
    if not text or text.startswith(b"{"):
        return None
    return f"it starts with {text[:16]!r}, not a JSON object"


def format_predictions(scored: ScoredBlock, columns: base.PredictionColumns) -> bytes:
    """The block's JSON lines, `{"key": ..., "prediction": {name: value, ...}, ...}`; an
    output with several values a record ([N, 2] scores, string classes) is a JSON array.

    Built column-wise with Arrow compute kernels, so no Python code runs per record.
    """
    parts = ['{"key": ', *_json_parts(scored.keys), ', "prediction": {']
    outputs = zip(columns.outputs, columns.output_types(), strict=True)
    for index, (name, arrow_type) in enumerate(outputs):
        column = base.output_array(scored.outputs[name], arrow_type)
        parts += [("" if index == 0 else ", ") + json.dumps(name) + ": ", *_json_parts(column)]
    parts.append("}")
    if scored.passthrough is not None:
        for name, column in zip(scored.passthrough.schema.names, scored.passthrough.columns, strict=True):
            parts += [", " + json.dumps(name) + ": ", *_json_parts(column)]
    parts.append("}\n")
    lines, _ = string_buffer_view(pc.binary_join_element_wise(*_merged(parts), ""))
    return lines[:-1].tobytes()  # one copy, less the last newline: the writer adds it


def _json_parts(values) -> list:
    """JSON text of a column as pieces of a line: a plain string column is [quote, column,
    quote] (the quotes join the neighbouring literals: one join for the whole line)."""
    array = values if isinstance(values, pa.Array) else pa.array(values)
    if (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)) and not _needs_escape(array):
        return ['"', array, '"']
    return [json_column(array)]


def _merged(parts: list) -> list:
    """Adjacent literal strings in `parts` joined into one."""
    merged = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def _needs_escape(array: pa.Array) -> bool:
    """Whether a string column has a null or a character JSON must escape (", \\, control)."""
    if array.null_count:
        return True
    data, _ = string_buffer_view(array)
    return bool(((data < 0x20) | (data == 0x22) | (data == 0x5C)).any())


def json_column(values) -> pa.Array:
    """Each value as JSON text: numbers (null when not finite), quoted strings, or lists."""
    array = values if isinstance(values, pa.Array) else pa.array(values)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        items = type(array).from_arrays(array.offsets, json_column(array.values), mask=array.is_null())
        return pc.fill_null(pc.binary_join_element_wise("[", pc.binary_join(items, ", "), "]", ""), "null")
    if pa.types.is_floating(array.type):
        text = pc.cast(array, pa.string())
        if not array.null_count and pc.all(pc.is_finite(array)).as_py():
            return text
        return pc.if_else(pc.fill_null(pc.is_finite(array), False), text, "null")
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        if pa.types.is_boolean(array.type):
            text = pc.if_else(array, "true", "false")
        else:
            text = pc.cast(pc.cast(array, pa.int64()), pa.string())
        return pc.fill_null(text, "null")
    if pa.types.is_binary(array.type):
        array = pc.cast(array, pa.string())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        if _needs_escape(array):
            return pa.array([json.dumps(v) for v in array.to_pylist()], pa.string())
        return pc.binary_join_element_wise('"', array, '"', "")
    return pa.array([json.dumps(v) for v in array.to_pylist()], pa.string())


class _FormatFn(beam.DoFn):
    def __init__(self, columns: base.PredictionColumns):
        self.columns = columns

    def process(self, scored: ScoredBlock):
        yield format_predictions(scored, self.columns)


class WritePredictions(base.PredictionWriter):
    """ScoredBlocks -> sharded JSON Lines files `<prefix>-SSSSS-of-NNNNN`."""

    def expand(self, scored):
        return (
            scored
            | "FormatJsonLines" >> beam.ParDo(_FormatFn(self.columns))
            | "WriteJsonLines" >> beam.io.WriteToText(self.prefix, shard_name_template=base.SHARD_TEMPLATE)
        )


FORMAT = base.FileFormat(
    name="jsonl",
    extensions=(".jsonl", ".json", ".ndjson"),
    read=read,
    head_problem=head_problem,
    write_predictions=WritePredictions,
    split="lines",
)
