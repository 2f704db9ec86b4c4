"""The vectorised pieces of the predict hot path, checked against plain-Python answers."""

import json
import threading

import numpy as np
import pyarrow as pa
import pytest

from pipeline.blocks import BlockCoder, RecordBlock, RecordLayout, RecordStream, ScoredBlock, string_buffer
from pipeline.inference import tuning as batch_tuning
from pipeline.inference.batching import batch_slices
from pipeline.inference.tensors import padded_string_lists, string_tensor
from pipeline.io.base import PredictionColumns, read_ahead
from pipeline.io.jsonl import format_predictions
from pipeline.options import CachedViewOptions, PredictOptions, RecordIOOptions, tf_threads
from transforms.model_contract import InputField


def test_string_tensor_matches_python_values_for_slices_and_unicode():
    column = pa.array(["ad-1", "", "café", "x" * 300, "z"])
    assert string_tensor(column).numpy().tolist() == [v.encode() for v in column.to_pylist()]
    assert string_tensor(column.slice(2, 2)).numpy().tolist() == ["café".encode(), b"x" * 300]
    assert string_tensor(pa.array(["", ""]).slice(1)).numpy().tolist() == [b""]
    assert string_tensor(pa.array([], pa.string())).shape == (0,)
    assert string_tensor(pa.array(["a", "bc"], pa.large_string())).numpy().tolist() == [b"a", b"bc"]
    with pytest.raises(ValueError, match="without nulls"):
        string_tensor(pa.array(["a", None]))


def test_padded_string_lists_pads_with_empty_strings():
    column = pa.array([["a", "b"], None, [], ["c"], ["d", "e", "f"]])
    assert padded_string_lists(column).numpy().tolist() == [
        [b"a", b"b", b""],
        [b"", b"", b""],
        [b"", b"", b""],
        [b"c", b"", b""],
        [b"d", b"e", b"f"],
    ]
    assert padded_string_lists(column.slice(3)).numpy().tolist() == [[b"c", b"", b""], [b"d", b"e", b"f"]]
    assert padded_string_lists(pa.array([[], None], pa.list_(pa.string()))).shape == (2, 0)
    assert padded_string_lists(pa.array([], pa.list_(pa.string()))).shape == (0, 0)
    items = pa.array([[None, "é\x00"], ["x"]], pa.large_list(pa.large_string()))  # a null item is ""
    assert padded_string_lists(items).numpy().tolist() == [[b"", "é\x00".encode()], [b"x", b""]]


@pytest.mark.parametrize(
    ("rows", "batch", "sizes"), [(10, 4, [3, 3, 4]), (8, 4, [4, 4]), (3, 64, [3]), (0, 4, [])]
)
def test_batch_slices_cover_every_row_once_in_near_equal_batches(rows, batch, sizes):
    slices = batch_slices(rows, batch)
    assert [size for _, size in slices] == sizes
    covered = [row for start, size in slices for row in range(start, start + size)]
    assert covered == list(range(rows))


def test_format_predictions_is_valid_json_with_escaping_and_nulls():
    scored = ScoredBlock(
        pa.array(["plain", 'has "quote"', "back\\slash"]),
        {
            "probability": np.array([0.25, np.nan, 1 / 3], np.float32),
            "vector": np.array([[1, 2], [3, 4], [5, 6]]),
        },
    )
    columns = PredictionColumns(
        ("probability", "vector"), output_dtypes=("float32", "int64"), output_shapes=((), (2,))
    )
    lines = format_predictions(scored, columns).decode().split("\n")
    parsed = [json.loads(line) for line in lines]
    assert [p["key"] for p in parsed] == ["plain", 'has "quote"', "back\\slash"]
    assert [p["prediction"]["probability"] for p in parsed] == [0.25, None, pytest.approx(1 / 3, rel=1e-6)]
    assert [p["prediction"]["vector"] for p in parsed] == [[1, 2], [3, 4], [5, 6]]
    int_keys = ScoredBlock(pa.array([7, 8]), {"probability": np.array([0.5, 1e-9], np.float32)})
    assert [
        json.loads(line)
        for line in format_predictions(int_keys, PredictionColumns(("probability",))).decode().split("\n")
    ] == [
        {"key": 7, "prediction": {"probability": 0.5}},
        {"key": 8, "prediction": {"probability": 1e-9}},
    ]


def test_plain_strings_are_quoted_in_the_line_join_and_only_the_batch_is_copied():
    block_keys = pa.array(["k0", "k1", "k2", "k3"])
    media = pa.array(["Twitter", "TV", "web\u00e9", "radio"])
    scored = ScoredBlock(
        block_keys.slice(1, 2),  # a batch is a slice of its block's buffers
        {"probability": np.array([0.5, 0.25], np.float32)},
        pa.RecordBatch.from_arrays([media.slice(1, 2)], ["media"]),
    )
    columns = PredictionColumns(("probability",), passthrough=(InputField("media", "string"),))
    assert (
        format_predictions(scored, columns)
        == (
            '{"key": "k1", "prediction": {"probability": 0.5}, "media": "TV"}\n'
            '{"key": "k2", "prediction": {"probability": 0.25}, "media": "web\u00e9"}'
        ).encode()
    )
    data, offsets = string_buffer(block_keys.slice(1, 2))
    assert data == b"k1k2" and offsets.tolist() == [0, 2, 4]


def test_read_ahead_keeps_order_raises_errors_and_stops_its_thread():
    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk went away")

    consumed = []
    with pytest.raises(OSError, match="disk went away"):
        for item in read_ahead(failing()):
            consumed.append(item)
    assert consumed == [1]

    started = threading.active_count()
    reader = read_ahead(iter(range(1000)))
    assert next(reader) == 0
    reader.close()  # consumer stops early: the producer must not stay blocked
    assert threading.active_count() == started


def test_sweep_stops_when_larger_batches_stop_paying_and_choice_prefers_smaller():
    cost_per_call = {16: 0.001, 32: 0.001, 64: 0.0015, 128: 0.005, 256: 0.02, 512: 0.05}
    timed = []

    def call(size):
        timed.append(size)
        import time

        time.sleep(cost_per_call[size])

    measured = batch_tuning.sweep_batch_sizes(call, lambda size: [size], list(cost_per_call), seconds=0.02)
    assert list(measured) == [16, 32, 64, 128, 256]  # 128 and 256 fell below 80% of 64's rate
    assert batch_tuning.choose_batch_size({16: 100.0, 64: 196.0, 128: 200.0}) == 64
    assert batch_tuning.choose_batch_size({16: 100.0, 64: 150.0, 128: 200.0}) == 128


def test_cached_views_share_values_parse_once_and_are_not_pickled(monkeypatch):
    import pickle

    from apache_beam.options.pipeline_options import PipelineOptions

    options = CachedViewOptions(["--output_dir", "/out", "--batch_size", "64"])
    parses = []
    real_view_as = PipelineOptions.view_as
    monkeypatch.setattr(
        PipelineOptions, "view_as", lambda self, cls: parses.append(cls) or real_view_as(self, cls)
    )
    first, again = options.view_as(PredictOptions), options.view_as(PredictOptions)
    assert first is again and parses == [PredictOptions] and first.batch_size == 64
    first.batch_size = 8  # a view writes the shared values, which every view reads
    assert (
        options.view_as(RecordIOOptions).output_dir == "/out" and options.get_all_options()["batch_size"] == 8
    )
    restored = pickle.loads(pickle.dumps(options))
    assert "_views" not in restored.__dict__ and restored.view_as(PredictOptions).batch_size == 8


def test_blocks_are_sized_from_their_buffers_and_their_pcollections_use_that_coder(tmp_path):
    import apache_beam as beam

    from pipeline.read import RECORDS, ReadAdRecords

    records = RecordBlock(
        "in.jsonl", pa.record_batch({"age": pa.array(range(1000)), "__line__": pa.array(range(1, 1001))})
    )
    scored = ScoredBlock(pa.array([f"ad-{i}" for i in range(1000)]), {"p": np.zeros(1000, np.float32)})
    coder = BlockCoder()
    assert coder.estimate_size(records) == records.batch.nbytes == 16_000
    assert coder.estimate_size(scored) == scored.keys.nbytes + 4_000
    assert coder.decode(coder.encode(records)).batch.equals(records.batch)
    errors = [{"error": {"code": "x"}}]
    assert coder.decode(coder.encode(errors)) == errors and isinstance(errors, RecordStream)
    (tmp_path / "in.jsonl").write_text('{"id": "a", "age": 3}\n')
    layout = RecordLayout((InputField("age", "int"),), "id", "string")
    read = beam.Pipeline() | ReadAdRecords([str(tmp_path / "in.jsonl")], layout)
    assert isinstance(beam.coders.registry.get_coder(read[RECORDS].element_type), BlockCoder)
    assert isinstance(beam.coders.registry.get_coder(ScoredBlock), BlockCoder)


def test_tf_threads_divides_cores_between_local_worker_processes(monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert tf_threads(PipelineOptions([])) is None
    assert (
        tf_threads(PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])) == 4
    )
    assert (
        tf_threads(PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_threading"]))
        is None
    )
    assert tf_threads(PipelineOptions(["--tf_threads=3"])) == 3


def test_a_record_the_model_rejects_is_found_by_bisection_in_logarithmic_calls():
    """At 1,024 rows a row-by-row retry costs 1,024 model calls; bisection about 2 log2(n)."""
    import tensorflow as tf

    from pipeline.blocks import LINE_COLUMN, RecordBlock, RecordLayout
    from pipeline.inference.dofn import RunInferenceFn
    from pipeline.inference.model import ModelConfig

    calls = []

    class RejectsPoison:  # stands in for LoadedModel.predict: TensorFlow fails on one record
        def predict(self, batch):
            calls.append(batch.num_rows)
            if "poison" in batch.column("id").to_pylist():
                raise tf.errors.InvalidArgumentError(None, None, "Invalid JPEG data")
            return {"probability": np.arange(batch.num_rows, dtype=np.float32)}

    ids = [f"ad-{i}" for i in range(1024)]
    ids[700] = "poison"
    batch = pa.RecordBatch.from_pydict({"id": ids, LINE_COLUMN: list(range(1, 1025))})
    block = RecordBlock("f.jsonl", batch)
    fn = RunInferenceFn(ModelConfig("unused", RecordLayout((), "id"), 1024))
    fn._model = RejectsPoison()
    search = fn._isolate_failures(block, batch, batch.column("id"), 0)
    errors = []
    try:
        while True:
            errors += next(search).value
    except StopIteration as done:
        rows, outputs = done.value
    assert [(e["key"], e["source"], e["error"]["code"]) for e in errors] == [
        ("poison", "f.jsonl:701", "inference_failed")
    ]
    assert rows == [r for r in range(1024) if r != 700] and len(outputs["probability"]) == 1023
    assert len(calls) <= 2 * 10 + 1, calls
