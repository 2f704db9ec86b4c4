"""Is a model directory whole? One cheap look before TensorFlow loads it.

A half-finished copy of a SavedModel (a `gsutil cp` cut short, a full disk) is something
TensorFlow reports badly or not at all: a truncated `variables/variables.data-*` shard can
crash the checkpoint restore with a segmentation fault. `check_model_files` reads only the
small files (saved_model.pb, variables/variables.index), looks at the *sizes* of the data
shards and at the asset files' existence, never at their contents, and raises
ModelDirectoryError with one line naming the file, what is wrong and what to do.

What TensorFlow needs, as `tf.saved_model.load` decides it:
- saved_model.pb (or saved_model.pbtxt): a SavedModel proto with at least one MetaGraph;
- variables/variables.index: a TF2 SavedModel (one MetaGraph with an object graph) always
  restores its checkpoint, even one with no variables, so it always needs the index; a TF1
  SavedModel needs it only if it has a saver (MetaGraph.saver_def) or variables in its
  collections (tensorflow/python/training/saver.py, _create_saver_from_imported_meta_graph);
- every data shard the index names, at least as long as the end of its furthest tensor;
- every asset file the MetaGraphs name (asset_file_def; the object graph's SavedAsset nodes
  point into that list), under assets/.

The checkpoint index is an SSTable, TensorFlow's copy of LevelDB's table format
(tensorflow/core/lib/io/{table_builder,block_builder,format}.cc):

    [data block][trailer] ... [metaindex block][trailer] [index block][trailer] [footer]

- footer, the last 48 bytes: two block handles (metaindex, index), each a varint64 offset
  and a varint64 size, zero-padded to 40 bytes, then the magic 0xdb4775248b80fb57 as a
  little-endian fixed64;
- trailer, the 5 bytes after each block: a compression type byte (0: none, all that the
  tensor bundle writes) and the masked crc32c of the block and that byte, fixed32;
- block: entries, then the restart array (fixed32 offsets of the entries whose key is
  stored whole) and its length (fixed32). An entry is varint32 shared, varint32 non_shared,
  varint32 value_length, the key's bytes after the first `shared` (those are the previous
  key's), then the value;
- the index block maps, in order, a key at or after each data block's last key to that
  block's handle. The data blocks map tensor names to serialized BundleEntryProto
  (shard_id, offset, size) and the empty key to the BundleHeaderProto (num_shards)
  (tensorflow/core/util/tensor_bundle/tensor_bundle.cc).
"""

from __future__ import annotations

from collections.abc import Iterator

from transforms.model_contract import ModelDescription, ModelDirectoryError, model_files

INDEX_FILE = "variables/variables.index"
_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_TRAILER_SIZE = 5
_CRC_MASK_DELTA = 0xA282EAD8
# Variables a TF1 MetaGraph restores without a saver_def (tf.GraphKeys), see the docstring.
_VARIABLE_COLLECTIONS = ("variables", "saveable_objects")


class CheckpointIndexError(ValueError):
    """The bytes are not a whole checkpoint index; the message says what is wrong."""


def check_model_files(model_dir: str) -> None:
    """Raises ModelDirectoryError unless `model_dir` holds, whole, every file TensorFlow
    reads to load it (see the module docstring). Reads saved_model.pb and
    variables/variables.index, and only the sizes of everything else."""
    ModelDescription.check_saved_model(model_dir)  # the directory and a saved_model.pb(txt) exist
    saved_model = _read_saved_model(model_dir)
    _check_checkpoint(model_dir, _restores_checkpoint(saved_model))
    _check_assets(model_dir, saved_model)


def needed_shard_sizes(index: bytes, prefix: str = "variables") -> dict[str, int]:
    """Data file name (`{prefix}.data-SSSSS-of-NNNNN`) -> the bytes it must hold at least,
    from the contents of `{prefix}.index`: the end (offset + size) of its furthest tensor.

    Raises CheckpointIndexError for an index that is truncated, corrupt or not an index."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import tensor_bundle_pb2

    header, needed = None, {}
    try:
        for key, value in table_entries(index):
            if key == b"":
                header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
                continue
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
            if entry.slices:  # a partitioned tensor's whole: its slices are entries of their own
                continue
            needed[entry.shard_id] = max(needed.get(entry.shard_id, 0), entry.offset + entry.size)
    except DecodeError as e:
        raise CheckpointIndexError(f"an entry is not a tensor bundle proto ({_one_line(e)})") from None
    if header is None:
        raise CheckpointIndexError("no header entry")
    shards = header.num_shards
    if needed and max(needed) >= shards:
        raise CheckpointIndexError(f"a tensor in shard {max(needed)} of a {shards}-shard checkpoint")
    return {f"{prefix}.data-{shard:05d}-of-{shards:05d}": size for shard, size in sorted(needed.items())}


def table_entries(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable's contents, in key order.

    Checks what TensorFlow's reader checks (magic number, block checksums, entry bounds)
    and that keys ascend, raising CheckpointIndexError at the first thing that is wrong."""
    if len(table) < _FOOTER_SIZE:
        raise CheckpointIndexError(f"shorter than the {_FOOTER_SIZE}-byte table footer")
    if int.from_bytes(table[-8:], "little") != _MAGIC:
        raise CheckpointIndexError("no table magic number at its end (truncated, or not an index)")
    footer = table[-_FOOTER_SIZE:-8]
    _, pos = _varint(footer, 0)  # the metaindex block's handle: offset, size (TF writes it empty)
    _, pos = _varint(footer, pos)
    previous = None
    for _, handle in _block_entries(_block(table, footer[pos:])):
        for key, value in _block_entries(_block(table, handle)):
            if previous is not None and key <= previous:
                raise CheckpointIndexError("keys out of order")
            previous = key
            yield key, value


def _block(table: bytes, handle: bytes) -> bytes:
    """The contents of the block a handle (varint64 offset, varint64 size) points to."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size
    if end + _TRAILER_SIZE > len(table) - _FOOTER_SIZE:
        raise CheckpointIndexError(f"the block at byte {offset:,} runs past the end")
    compression, stored_crc = table[end], int.from_bytes(table[end + 1 : end + _TRAILER_SIZE], "little")
    if _masked_crc32c(table[offset : end + 1]) != stored_crc:
        raise CheckpointIndexError(f"checksum mismatch in the block at byte {offset:,}")
    if compression != 0:
        raise CheckpointIndexError(f"the block at byte {offset:,} is compressed, which indexes never are")
    return table[offset:end]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) entries of one block, undoing the keys' prefix compression."""
    if len(block) < 4:
        raise CheckpointIndexError("a block too short for its restart count")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 * (restarts + 1)  # the entries end where the restart array begins
    if limit < 0:
        raise CheckpointIndexError("a block with more restart points than room for them")
    key, pos = b"", 0
    while pos < limit:
        shared, pos = _varint(block, pos, limit)
        non_shared, pos = _varint(block, pos, limit)
        value_length, pos = _varint(block, pos, limit)
        if shared > len(key) or pos + non_shared + value_length > limit:
            raise CheckpointIndexError("a bad entry in a block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared + value_length
        yield key, block[pos - value_length : pos]


def _varint(data: bytes, pos: int, limit: int | None = None) -> tuple[int, int]:
    """(value, position after it) of the little-endian base-128 varint at data[pos]."""
    limit = len(data) if limit is None else limit
    value = shift = 0
    while pos < limit and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise CheckpointIndexError("a bad varint")


def _crc32c_table() -> list[int]:
    """crc32c (Castagnoli, reflected polynomial 0x82F63B78) of each byte value."""
    table = []
    for value in range(256):
        for _ in range(8):
            value = (value >> 1) ^ (0x82F63B78 if value & 1 else 0)
        table.append(value)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """crc32c of `data`, masked as LevelDB stores it (rotated right 15 bits, plus a delta).

    Pure Python, about 0.13 s a MiB: indexes are small (tens of bytes a tensor)."""
    crc, table = 0xFFFFFFFF, _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _read_saved_model(model_dir: str):
    """The SavedModel proto, or ModelDirectoryError naming the file that is not one."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    gfile = model_files()
    name = "saved_model.pb" if gfile.exists(gfile.join(model_dir, "saved_model.pb")) else "saved_model.pbtxt"
    data = _read(model_dir, name)
    saved_model = saved_model_pb2.SavedModel()
    try:
        if name.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), saved_model)
        else:
            saved_model.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        what = f"{name} ({len(data):,} bytes) is not a SavedModel ({_one_line(e)})"
        raise _problem(model_dir, what, "corrupt") from None
    if not saved_model.meta_graphs:
        raise _problem(model_dir, f"{name} ({len(data):,} bytes) holds no MetaGraph", "corrupt")
    return saved_model


def _restores_checkpoint(saved_model) -> bool:
    """Whether tf.saved_model.load restores variables/ for this SavedModel."""
    graphs = saved_model.meta_graphs
    if len(graphs) == 1 and graphs[0].HasField("object_graph_def"):
        return True  # TF2 (load.py): restores the checkpoint even with no variables in it
    for graph in graphs:  # TF1 (load_v1_in_v2.py): restores if the import makes a Saver
        if graph.HasField("saver_def"):
            return True
        for collection in filter(None, map(graph.collection_def.get, _VARIABLE_COLLECTIONS)):
            kind = collection.WhichOneof("kind")
            if kind and len(getattr(collection, kind).value):
                return True
    return False


def _check_checkpoint(model_dir: str, restores: bool) -> None:
    import tensorflow as tf

    gfile = model_files()
    if not gfile.exists(gfile.join(model_dir, INDEX_FILE)):
        if restores:
            raise _problem(model_dir, f"{INDEX_FILE} is missing; TensorFlow restores the variables from it")
        return
    index = _read(model_dir, INDEX_FILE)
    try:
        needed = needed_shard_sizes(index)
    except CheckpointIndexError as e:
        what = f"{INDEX_FILE} ({len(index):,} bytes) is not a readable checkpoint index: {e}"
        raise _problem(model_dir, what, "corrupt") from None
    for name, size in needed.items():
        try:
            have = gfile.stat(gfile.join(model_dir, "variables", name)).length
        except tf.errors.NotFoundError:
            what = f"variables/{name} is missing (the checkpoint index needs {size:,} bytes of it)"
            raise _problem(model_dir, what) from None
        if have < size:
            raise _problem(
                model_dir, f"variables/{name} is {have:,} bytes, the checkpoint index needs {size:,}"
            )


def _check_assets(model_dir: str, saved_model) -> None:
    gfile = model_files()
    for graph in saved_model.meta_graphs:
        files = [asset.filename for asset in graph.asset_file_def]
        for node in graph.object_graph_def.nodes:  # TF2: each SavedAsset is an index into `files`
            if node.WhichOneof("kind") == "asset" and not 0 <= node.asset.asset_file_def_index < len(files):
                what = f"saved_model.pb names asset #{node.asset.asset_file_def_index} of {len(files)}"
                raise _problem(model_dir, what, "corrupt")
        for filename in files:
            if not gfile.exists(gfile.join(model_dir, "assets", filename)):
                raise _problem(model_dir, f"assets/{filename} is missing; the model reads it when it loads")


def _read(model_dir: str, name: str) -> bytes:
    import tensorflow as tf

    gfile = model_files()
    try:
        with gfile.GFile(gfile.join(model_dir, name), "rb") as f:
            return f.read()
    except tf.errors.OpError as e:
        what = f"{name} cannot be read ({_one_line(e.message)})"
        raise _problem(
            model_dir, what, "unreadable", "check its permissions, or copy the model again"
        ) from None


def _problem(
    model_dir: str, what: str, state="incomplete", todo="copy the model again"
) -> ModelDirectoryError:
    """The one line: `model directory DIR is STATE: WHAT; WHAT TO DO`."""
    return ModelDirectoryError(f"model directory {model_dir} is {state}: {what}; {todo}")


def _one_line(error: object, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
