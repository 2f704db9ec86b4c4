"""TFRecord files of serialized `tf.Example`s (also `.gz`): what TFX pipelines read and write.

In: the record framing (length, masked CRC-32C of the length, data, masked CRC-32C of the
data) is walked over large reads, and each batch of serialized examples is decoded to Arrow
columns in C++ by tfx_bsl, typed by the layout (int -> int64_list, float -> float_list,
string/image/string_list -> bytes_list). A one-value feature becomes a scalar; raw JPEG/PNG
bytes in an image feature are base64-encoded, as `serving_default` expects. An example whose
feature has the wrong kind is one error record; a corrupt or truncated file ends with one
error record naming the byte offset where it broke, after the records before it.
Out: one tf.Example per prediction with `key`, each model output and the pass-through fields.
"""

from __future__ import annotations

import base64
import struct

import apache_beam as beam
import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import errors
from pipeline.blocks import ScoredBlock, as_list_columns, conform
from pipeline.io import base

RECORDS_PER_BLOCK = 8192
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_EXAMPLE_TYPES = {"int": "INT", "float": "FLOAT", "string": "BYTES", "image": "BYTES", "string_list": "BYTES"}


class CorruptRecord(Exception):
    """The framing of a TFRecord file is broken at `offset`."""

    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_records(stream, read_bytes: int = 8 << 20):
    """(byte offset, serialized record) for each record; raises CorruptRecord where it breaks."""
    buffer, position, consumed = b"", 0, 0  # consumed: file offset of buffer[0]
    eof = False

    def available(needed: int) -> bool:
        nonlocal buffer, position, consumed, eof
        while len(buffer) - position < needed and not eof:
            more = stream.read(max(read_bytes, needed))
            eof = not more
            buffer, consumed, position = buffer[position:] + (more or b""), consumed + position, 0
        return len(buffer) - position >= needed

    while True:
        if not available(_HEADER.size):
            if position == len(buffer):
                return
            raise CorruptRecord(consumed + position, "the file ends inside a record header (truncated)")
        offset = consumed + position
        length, length_crc = _HEADER.unpack_from(buffer, position)
        if masked_crc(buffer[position : position + 8]) != length_crc:
            raise CorruptRecord(offset, "record length fails its CRC check (corrupt data)")
        if not available(_HEADER.size + length + _FOOTER.size):
            raise CorruptRecord(offset, "the file ends inside a record (truncated)")
        start = position + _HEADER.size
        data = buffer[start : start + length]
        if masked_crc(data) != _FOOTER.unpack_from(buffer, start + length)[0]:
            raise CorruptRecord(offset, "record data fails its CRC check (corrupt data)")
        position = start + length + _FOOTER.size
        yield offset, data


def example_schema(layout):
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for field in layout.all_fields:
        feature = schema.feature.add()
        feature.name = field.name
        feature.type = getattr(schema_pb2, _EXAMPLE_TYPES[field.type])
    return schema


class _Decoder:
    def __init__(self, layout, source: str):
        from tfx_bsl.coders import example_coder

        self.layout = layout
        self.source = source
        self._schema = example_schema(layout).SerializeToString()
        self._new_decoder = lambda schema=None: example_coder.ExamplesToRecordBatchDecoder(schema)
        self._decoder = self._new_decoder(self._schema)

    def _decode(self, serialized: list[bytes], typed: bool = True) -> pa.RecordBatch:
        """Decodes with the layout's types (or none); a decoder is not reusable after it fails."""
        decoder = self._decoder if typed else self._new_decoder()
        try:
            return decoder.DecodeBatch(serialized)
        except RuntimeError:
            if typed:
                self._decoder = self._new_decoder(self._schema)
            raise

    def decode(self, numbered: list[tuple[int, bytes]]):
        """RecordBlock and error records for (record number, serialized example) pairs."""
        batches, lines, failures = [], [], []
        self._bisect(numbered, batches, lines, failures)
        for batch, batch_lines in zip(batches, lines, strict=True):
            block, wrong = conform(scalars(batch, self.layout), self.layout, self.source, batch_lines)
            failures += wrong
            if block is not None:
                yield block
        yield from failures

    def _bisect(self, numbered, batches, lines, failures):
        try:
            batches.append(self._decode([data for _, data in numbered]))
            lines.append(np.array([n for n, _ in numbered], np.int64))
            return
        except RuntimeError:
            if len(numbered) > 1:
                middle = len(numbered) // 2
                self._bisect(numbered[:middle], batches, lines, failures)
                self._bisect(numbered[middle:], batches, lines, failures)
                return
        failures.append(self._diagnose(*numbered[0]))

    def _diagnose(self, number: int, data: bytes) -> dict:
        where = f"{self.source}:{number}"
        try:
            decoded = self._decode([data], typed=False).to_pylist()[0]
            record = _json_like({k: v for k, v in decoded.items() if v is not None})
        except RuntimeError as e:
            return errors.error_record(
                source=where,
                code=errors.MALFORMED_RECORD,
                message=f"record is not a serialized tf.Example: {str(e)[:200]}",
                instance=f"<{len(data)} bytes>",
            )
        kinds = {"INT": "an int64_list", "FLOAT": "a float_list", "BYTES": "a bytes_list"}
        for field in self.layout.all_fields:
            if field.name in record:
                try:
                    self._decode([_only(data, field.name)])
                except RuntimeError:
                    return errors.error_record(
                        source=where,
                        code=errors.WRONG_TYPE,
                        field=field.name,
                        message=f"feature {field.name!r} must be {kinds[_EXAMPLE_TYPES[field.type]]} (declared "
                        f"{field.type}), got {_kind(data, field.name)}",
                        key=self.layout.record_key(self.source, number, record),
                        instance=record,
                    )
        return errors.error_record(
            source=where, code=errors.MALFORMED_RECORD, message="tf.Example could not be decoded",
            instance=record,
        )  # fmt: skip


def _only(data: bytes, name: str) -> bytes:
    """The serialized example with only feature `name` (to find which feature is wrong)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(data)
    kept = tf.train.Example()
    kept.features.feature[name].CopyFrom(example.features.feature[name])
    return kept.SerializeToString()


def _kind(data: bytes, name: str) -> str:
    """Which list feature `name` of a serialized example holds, for an error message."""
    import tensorflow as tf

    kind = tf.train.Example.FromString(data).features.feature[name].WhichOneof("kind")
    return {"int64_list": "an int64_list", "float_list": "a float_list", "bytes_list": "a bytes_list"}.get(
        kind, "no values"
    )


def _json_like(record: dict) -> dict:
    """A decoded example for an error record: one value unlisted, bytes as text or base64."""

    def text(value):
        if not isinstance(value, bytes):
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")

    return {
        k: text(v[0]) if isinstance(v, list) and len(v) == 1 else [text(x) for x in v]
        for k, v in record.items()
    }


def scalars(batch: pa.RecordBatch, layout) -> pa.Table:
    """tf.Example's one-list-per-feature columns -> scalars where the layout wants one value.

    A feature with several values where one is declared keeps its list, so `conform`
    reports it as a wrong type.
    """
    columns = {}
    for field in layout.all_fields:
        if field.name not in batch.schema.names:
            continue
        column = batch.column(field.name)
        if field.type == "string_list":
            columns[field.name] = column
            continue
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        if (lengths > 1).any():
            columns[field.name] = column
            continue
        flat = pc.list_flatten(column)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        columns[field.name] = flat.take(pa.array(starts, mask=lengths == 0))
    return pa.table(columns) if columns else pa.table({"__empty__": pa.nulls(batch.num_rows)})


def read(stream, source: str, layout, block_bytes: int):
    decoder = _Decoder(layout, source)
    pending: list[tuple[int, bytes]] = []
    number = 0
    try:
        for _, data in iter_records(stream, block_bytes):
            number += 1
            pending.append((number, data))
            if len(pending) >= RECORDS_PER_BLOCK:
                yield from decoder.decode(pending)
                pending = []
    except CorruptRecord as e:
        if pending:
            yield from decoder.decode(pending)
        yield errors.error_record(
            source=f"{source}:{number + 1}",
            code=errors.MALFORMED_RECORD,
            message=f"{e} at byte {e.offset} of {source}; records after it cannot be read: replace the file "
            "with a complete copy",
            instance=None,
        )
        return
    except Exception:
        # The stream itself failed (a .gz file cut short): the records before are scored, the
        # caller reports the failure (pipeline.io.files).
        if pending:
            yield from decoder.decode(pending)
        raise
    if pending:
        yield from decoder.decode(pending)


def head_problem(head: bytes, layout) -> str | None:
    """The first record header's length CRC must check out."""
    if not head:
        return None
    if len(head) >= _HEADER.size and masked_crc(head[:8]) == _HEADER.unpack_from(head, 0)[1]:
        return None
    return f"its first bytes {head[:12]!r} are not a TFRecord header (length + CRC)"


def _as_lists(table: pa.Table) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(as_list_columns(table.columns), table.schema.names)


def encode_examples(scored: ScoredBlock, columns: base.PredictionColumns) -> list[bytes]:
    from tfx_bsl.coders import example_coder

    return example_coder.RecordBatchToExamplesEncoder().encode(_as_lists(base.scored_table(scored, columns)))


class WritePredictions(base.PredictionWriter):
    """ScoredBlocks -> sharded TFRecord files of tf.Examples, `<prefix>-SSSSS-of-NNNNN`."""

    def expand(self, scored):
        columns = self.columns
        return (
            scored
            | "EncodeExamples" >> beam.FlatMap(lambda block: encode_examples(block, columns))
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(self.prefix, shard_name_template=base.SHARD_TEMPLATE)
        )


FORMAT = base.FileFormat(
    name="tfrecord",
    extensions=(".tfrecord", ".tfrecords", ".tfr"),
    read=read,
    head_problem=head_problem,
    write_predictions=WritePredictions,
)
