"""A corrupt or incomplete model directory is one ModelDirectoryError line, before TensorFlow
loads anything (transforms/model_integrity.py).

The models are real SavedModels written by TensorFlow into temporary directories; each test
breaks a copy of one the way a half-finished copy would.
"""

import os
import shutil
import time

import pytest

from transforms.model_contract import ModelDirectoryError
from transforms.model_integrity import (
    CheckpointIndexError,
    _block,
    _block_entries,
    _varint,
    check_model_files,
    needed_shard_sizes,
)

DATA = "variables/variables.data-00000-of-00001"
INDEX = "variables/variables.index"
KERNEL_BYTES = 256 * 1024 * 4  # the dense model's float32 [256, 1024] kernel
BIAS_BYTES = 1024 * 4


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def models(tf, tmp_path_factory):
    """name -> directory of a SavedModel: dense (two variables), vocab (an asset),
    stateless (TF2, no variables), tf1_stateless (TF1, no variables and no checkpoint)."""
    root = tmp_path_factory.mktemp("models")

    class Dense(tf.Module):
        def __init__(self):
            self.kernel = tf.Variable(tf.fill([256, 1024], 0.5))
            self.bias = tf.Variable(tf.zeros([1024]))

        @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.kernel) + self.bias

    vocab_file = root / "vocab.txt"
    vocab_file.write_text("red\ngreen\nblue\n")

    class Vocab(tf.Module):
        def __init__(self):
            init = tf.lookup.TextFileInitializer(
                str(vocab_file), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            )  # fmt: skip
            self.table = tf.lookup.StaticHashTable(init, default_value=-1)
            self.scale = tf.Variable(tf.ones([3], tf.int64))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, words):
            return self.table.lookup(words) * self.scale[0]

    class Stateless(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * 2.0

    dirs = {name: str(root / name) for name in ("dense", "vocab", "stateless", "tf1_stateless")}
    tf.saved_model.save(Dense(), dirs["dense"])
    tf.saved_model.save(Vocab(), dirs["vocab"])
    tf.saved_model.save(Stateless(), dirs["stateless"])
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        builder = tf.compat.v1.saved_model.Builder(dirs["tf1_stateless"])
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": x * 3.0})
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()
    return dirs


@pytest.fixture
def copy_of(models, tmp_path):
    """A fresh copy of one of `models`, to break."""

    def copy(name):
        target = str(tmp_path / name)
        shutil.copytree(models[name], target)
        return target

    return copy


def error_of(model_dir: str) -> str:
    with pytest.raises(ModelDirectoryError) as caught:
        check_model_files(model_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"model directory {model_dir} is ")
    return message


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_intact_models_pass_and_the_index_needs_exactly_the_data_files_sizes(models):
    for name in ("dense", "vocab", "stateless"):
        data = os.path.join(models[name], DATA)
        needed = needed_shard_sizes(read(os.path.join(models[name], INDEX)))
        assert needed == {"variables.data-00000-of-00001": os.path.getsize(data)}
        check_model_files(models[name])
    # The dense model's shard holds its two float32 variables (and the object graph).
    assert (
        needed_shard_sizes(read(os.path.join(models["dense"], INDEX)))["variables.data-00000-of-00001"]
        >= KERNEL_BYTES + BIAS_BYTES
    )
    assert os.path.exists(os.path.join(models["vocab"], "assets", "vocab.txt"))


def test_the_check_is_fast(models):
    started = time.perf_counter()
    for _ in range(10):
        check_model_files(models["dense"])
    assert (time.perf_counter() - started) / 10 < 0.5


def test_a_truncated_data_shard_names_the_file_and_both_sizes(copy_of):
    model = copy_of("dense")
    full = os.path.getsize(os.path.join(model, DATA))
    for length in (full // 2, full - 1, 0):
        os.truncate(os.path.join(model, DATA), length)
        assert error_of(model) == (
            f"model directory {model} is incomplete: {DATA} is {length:,} bytes, "
            f"the checkpoint index needs {full:,}; copy the model again"
        )


def test_a_missing_data_shard(copy_of):
    model = copy_of("dense")
    full = os.path.getsize(os.path.join(model, DATA))
    os.remove(os.path.join(model, DATA))
    assert error_of(model) == (
        f"model directory {model} is incomplete: {DATA} is missing "
        f"(the checkpoint index needs {full:,} bytes of it); copy the model again"
    )


def test_a_missing_index(copy_of):
    model = copy_of("dense")
    os.remove(os.path.join(model, INDEX))
    assert error_of(model) == (
        f"model directory {model} is incomplete: {INDEX} is missing; "
        "TensorFlow restores the variables from it; copy the model again"
    )


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda b: b[: len(b) // 2], "no table magic number at its end"),
        (lambda b: b[:-1], "no table magic number at its end"),
        (lambda b: b[:20], "shorter than the 48-byte table footer"),
        (lambda b: b"", "shorter than the 48-byte table footer"),
        (lambda b: bytes(range(256)) * 4, "no table magic number at its end"),
        (lambda b: b[:10] + bytes([b[10] ^ 0x40]) + b[11:], "checksum mismatch in the block at byte 0"),
        (lambda b: b"\0" * 60 + b[-48:], "runs past the end"),
    ],
    ids=["half", "one_byte_short", "20_bytes", "empty", "garbage", "bit_flip", "footer_only"],
)
def test_a_corrupt_index_is_one_line(copy_of, damage, problem):
    model = copy_of("dense")
    path = os.path.join(model, INDEX)
    broken = damage(read(path))
    with open(path, "wb") as f:
        f.write(broken)
    message = error_of(model)
    assert message.startswith(
        f"model directory {model} is corrupt: {INDEX} ({len(broken):,} bytes) is not a readable checkpoint index: "
    )
    assert problem in message and message.endswith("; copy the model again")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_broken_saved_model_pb_names_it(copy_of, damage):
    model = copy_of("dense")
    path = os.path.join(model, "saved_model.pb")
    original = read(path)
    broken = {
        "truncated": original[: len(original) // 2],
        "garbage": b"not a protobuf at all" * 50,
        "empty": b"",
    }
    with open(path, "wb") as f:
        f.write(broken[damage])
    message = error_of(model)
    prefix = f"model directory {model} is corrupt: saved_model.pb ({len(broken[damage]):,} bytes) "
    assert message.startswith(
        prefix + ("holds no MetaGraph" if damage == "empty" else "is not a SavedModel (")
    )
    assert message.endswith("; copy the model again")


def test_a_missing_asset_names_it(copy_of):
    model = copy_of("vocab")
    os.remove(os.path.join(model, "assets", "vocab.txt"))
    assert error_of(model) == (
        f"model directory {model} is incomplete: assets/vocab.txt is missing; "
        "the model reads it when it loads; copy the model again"
    )


def test_an_asset_number_past_the_asset_list_is_a_corrupt_graph(copy_of):
    from tensorflow.core.protobuf import saved_model_pb2

    model = copy_of("vocab")
    path = os.path.join(model, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel.FromString(read(path))
    assets = [
        n.asset for n in saved_model.meta_graphs[0].object_graph_def.nodes if n.WhichOneof("kind") == "asset"
    ]
    assert len(assets) == 1 and len(saved_model.meta_graphs[0].asset_file_def) == 1
    assets[0].asset_file_def_index = 3
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())
    assert error_of(model) == (
        f"model directory {model} is corrupt: saved_model.pb names asset #3 of 1; copy the model again"
    )


def test_a_text_saved_model_is_read_too(tf, copy_of):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    model = copy_of("dense")
    saved_model = saved_model_pb2.SavedModel.FromString(read(os.path.join(model, "saved_model.pb")))
    os.remove(os.path.join(model, "saved_model.pb"))
    with open(os.path.join(model, "saved_model.pbtxt"), "w") as f:
        f.write(text_format.MessageToString(saved_model))
    check_model_files(model)
    with open(os.path.join(model, "saved_model.pbtxt"), "w") as f:
        f.write("meta_graphs { no_such_field: 1 }")
    assert error_of(model) == (
        f"model directory {model} is corrupt: saved_model.pbtxt (32 bytes) is not a SavedModel (1:15 : "
        'Message type "tensorflow.MetaGraphDef" has no field named "no_such_field".); copy the model again'
    )


def test_an_unreadable_index_says_so(copy_of):
    model = copy_of("dense")
    os.remove(os.path.join(model, INDEX))
    os.mkdir(os.path.join(model, INDEX))  # there, but not a file (root reads any chmod 0 file)
    message = error_of(model)
    assert message.startswith(f"model directory {model} is unreadable: {INDEX} cannot be read (")
    assert message.endswith("; check its permissions, or copy the model again")


def test_a_missing_directory_is_the_contracts_error(tmp_path):
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        check_model_files(str(tmp_path / "nowhere"))


def test_a_tf2_model_without_variables_still_needs_its_checkpoint(tf, copy_of):
    """tf.saved_model.load restores a TF2 model's checkpoint even when it holds no variable."""
    model = copy_of("stateless")
    shutil.rmtree(os.path.join(model, "variables"))
    with pytest.raises(FileNotFoundError):
        tf.saved_model.load(model)
    assert f"{INDEX} is missing" in error_of(model)


def test_a_tf1_model_without_variables_needs_no_checkpoint(tf, models):
    model = models["tf1_stateless"]
    assert not os.path.exists(os.path.join(model, INDEX))
    check_model_files(model)
    loaded = tf.saved_model.load(model).signatures["serving_default"]
    assert loaded(x=tf.constant([2.0]))["y"].numpy().tolist() == [6.0]


@pytest.fixture(scope="module")
def big_checkpoint(tf, models, tmp_path_factory):
    """A 10,000-tensor, 2-shard checkpoint (SaveV2 twice, then MergeV2Checkpoints), as
    variables/ of a model directory: an index of several blocks, and two data shards."""
    root = tmp_path_factory.mktemp("big")
    names = [f"model/layer_{i:05d}/kernel/.ATTRIBUTES/VARIABLE_VALUE" for i in range(10_000)]
    tensors = [tf.fill([i % 7 + 1], float(i)) for i in range(len(names))]
    parts = []
    for part in range(2):
        prefix = str(root / f"part{part}")
        chunk = slice(part, None, 2)
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=names[chunk],
            shape_and_slices=[""] * len(names[chunk]),
            tensors=tensors[chunk],
        )
        parts.append(prefix)
    model = root / "model"
    shutil.copytree(models["dense"], model)  # for its saved_model.pb
    shutil.rmtree(model / "variables")
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=parts, destination_prefix=str(model / "variables" / "variables")
    )
    return {"model": str(model), "names": names}


def test_a_big_sharded_index_is_read_whole_and_fast(tf, big_checkpoint):
    model = big_checkpoint["model"]
    index = read(os.path.join(model, INDEX))
    started = time.perf_counter()
    needed = needed_shard_sizes(index)
    parse_seconds = time.perf_counter() - started
    sizes = {name: os.path.getsize(os.path.join(model, "variables", name)) for name in needed}
    assert needed == sizes and list(sizes) == [
        "variables.data-00000-of-00002",
        "variables.data-00001-of-00002",
    ]
    # Several data blocks, so the index block and the restart points are exercised too.
    footer = index[-48:-8]
    _, pos = _varint(footer, _varint(footer, 0)[1])
    assert len(list(_block_entries(_block(index, footer[pos:])))) > 1
    # Every tensor name TensorFlow's reader sees, and no other.
    reader = tf.train.load_checkpoint(os.path.join(model, "variables", "variables"))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(big_checkpoint["names"])
    started = time.perf_counter()
    check_model_files(model)
    check_seconds = time.perf_counter() - started
    print(f"index {len(index):,} bytes: parsed in {parse_seconds:.3f}s, whole check {check_seconds:.3f}s")
    assert check_seconds < 5
    os.truncate(os.path.join(model, "variables", "variables.data-00001-of-00002"), 100)
    assert "variables/variables.data-00001-of-00002 is 100 bytes, the checkpoint index needs" in error_of(
        model
    )


def test_needed_shard_sizes_raises_its_own_error_for_bad_bytes():
    with pytest.raises(CheckpointIndexError, match="table magic number"):
        needed_shard_sizes(b"\0" * 100)


def test_the_trained_ads_model_is_whole_and_its_vocabularies_are_checked(trained_ads, tmp_path):
    check_model_files(trained_ads["model"])
    index = read(os.path.join(trained_ads["model"], INDEX))
    data = os.path.join(trained_ads["model"], DATA)
    assert needed_shard_sizes(index) == {"variables.data-00000-of-00001": os.path.getsize(data)}
    model = str(tmp_path / "model")
    shutil.copytree(trained_ads["model"], model)
    os.remove(os.path.join(model, "assets", "gender"))  # tf.Transform's vocabulary of `gender`
    assert "assets/gender is missing" in error_of(model)


def _damaged_copy(trained_ads, tmp_path, damage: str) -> tuple[str, str]:
    """A copy of the trained ads model with one kind of damage, and the file it names."""
    model = str(tmp_path / "model")
    shutil.copytree(trained_ads["model"], model)
    variables = os.path.join(model, "variables")
    data = [name for name in os.listdir(variables) if name.startswith("variables.data-")][0]
    if damage == "truncated_variables":
        path = os.path.join(variables, data)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        return model, f"variables/{data}"
    if damage == "missing_index":
        os.remove(os.path.join(variables, "variables.index"))
        return model, "variables/variables.index"
    if damage == "unreadable_saved_model":
        with open(os.path.join(model, "saved_model.pb"), "wb") as f:
            f.write(b"\x08\x01garbage, not a SavedModel")
        return model, "saved_model.pb"
    asset = sorted(os.listdir(os.path.join(model, "assets")))[0]
    os.remove(os.path.join(model, "assets", asset))
    return model, f"assets/{asset}"


@pytest.mark.parametrize(
    "damage", ["truncated_variables", "missing_index", "unreadable_saved_model", "missing_asset"]
)
def test_predict_stops_on_a_damaged_model_in_one_line_before_it_starts(trained_ads, tmp_path, capsys, damage):
    from pipeline import cli
    from pipeline.run_contract import EXIT_USAGE

    model, named = _damaged_copy(trained_ads, tmp_path, damage)
    out = tmp_path / "out"
    argv = ["predict", "--model_dir", model, "--input", trained_ads["data"], "--output_dir", str(out)]
    assert cli.main(argv) == EXIT_USAGE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"adpredict predict: error: model directory {model} is "
    ), lines
    assert named in lines[0] and lines[0].endswith("copy the model again"), lines[0]
    assert not out.exists()  # nothing was created or cleared


def test_a_worker_loading_a_model_cut_short_after_the_launch_stops_with_the_same_line(trained_ads, tmp_path):
    """The launcher checked the model; a worker's copy (or the same path, changed since) is
    checked again before TensorFlow restores it."""
    from pipeline.inference.model import LoadedModel, ModelConfig

    model, named = _damaged_copy(trained_ads, tmp_path, "truncated_variables")
    description = ModelConfig.from_model_dir(trained_ads["model"]).description
    with pytest.raises(ModelDirectoryError, match=f"is incomplete: {named} is "):
        LoadedModel(model, description=description)
