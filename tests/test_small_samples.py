"""Small real samples: a few clicks among 100 ads must still give a held-out AUC, and a
sample where none is possible must still give a model.

The split is stratified by label (pipeline.analyze.SplitTrainEval); train reports an
undefined AUC, with its reason, instead of stopping.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from pipeline.blocks import LINE_COLUMN, RecordBlock

LABEL = "clicked"


def _sample(path, clicks: set[int], records: int = 100) -> list[dict]:
    """`records` generated ads whose label is 1 exactly at the indices in `clicks`."""
    from pipeline.sampledata.generate import generate_records, write_records
    from transforms.schema import load_schema

    schema = load_schema("ads")
    rows = list(generate_records(schema, records, seed=3))
    for index, row in enumerate(rows):
        row[LABEL] = int(index in clicks)
    write_records(rows, str(path), schema, "jsonl")
    return rows


def _labels_in(transform: str, split: str) -> list[int]:
    import tensorflow as tf

    return [
        tf.train.Example.FromString(record).features.feature[LABEL].int64_list.value[0]
        for path in sorted(glob.glob(os.path.join(transform, "transformed", f"{split}-*")))
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
    ]


def _analyze_and_train(tmp_path, clicks: set[int]):
    from pipeline import analyze
    from pipeline.trainer.train import train_and_export
    from transforms.schema import load_schema

    data, transform, model = tmp_path / "ads.jsonl", str(tmp_path / "transform"), str(tmp_path / "model")
    _sample(data, clicks)
    analyze.run(["--schema", "ads", "--input", str(data), "--output_dir", transform])
    metrics = train_and_export(transform, load_schema("ads"), model, epochs=2, compare_blank_image=False)
    with open(os.path.join(model, "assets.extra", "training_metrics.json")) as f:
        stored = json.load(f)
    return transform, model, metrics, stored


def test_four_clicks_in_100_ads_reach_the_held_out_split_and_give_an_auc(tmp_path, capsys):
    transform, model, metrics, stored = _analyze_and_train(tmp_path, {5, 30, 61, 90})
    # 20% of each label: 19 of the 96 non-clicks, 1 of the 4 clicks (round(0.8), at least 1)
    assert sorted(_labels_in(transform, "eval")) == [0] * 19 + [1]
    assert sorted(_labels_in(transform, "train")) == [0] * 77 + [1] * 3
    assert 0.0 <= metrics["eval_auc"] <= 1.0
    assert "eval_auc_undefined" not in metrics
    assert stored == metrics
    assert (metrics["eval_records"], metrics["train_records"]) == (20, 80)
    assert os.path.exists(os.path.join(model, "saved_model.pb"))
    assert "AUC is undefined" not in capsys.readouterr().err


def test_one_click_trains_and_exports_with_the_auc_undefined_and_why(tmp_path, capsys):
    transform, model, metrics, stored = _analyze_and_train(tmp_path, {42})
    assert sorted(_labels_in(transform, "eval")) == [0] * 20  # round(20% of 99); the click trains
    assert _labels_in(transform, "train").count(1) == 1
    assert metrics["eval_auc"] is None
    reason = metrics["eval_auc_undefined"]
    assert reason.startswith(
        "the held-out split has 20 records, all with clicked 0; the only record with clicked 1"
    )
    assert "needs 2 or more records of each" in reason
    assert stored == metrics  # the metrics file says it too: "eval_auc": null and the reason
    assert os.path.exists(os.path.join(model, "saved_model.pb"))
    err = capsys.readouterr().err
    assert f"adpredict train: warning: the held-out AUC is undefined: {reason}\n" in err


def _split_ids(rows: list[dict], block_rows: int, reverse: bool) -> dict[str, list[str]]:
    """Ids of the held-out records, and the labels per split, with the sample cut into blocks
    of `block_rows` (two files: a.jsonl and b.jsonl), in order or reversed."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.analyze import EVAL, EVAL_SAMPLE, TRAIN, SplitTrainEval, training_layout
    from transforms.schema import load_schema

    schema = load_schema("ads")
    layout = training_layout(schema)
    blocks = []
    for name, part in (("a.jsonl", rows[:60]), ("b.jsonl", rows[60:])):
        lined = [{**row, LINE_COLUMN: line} for line, row in enumerate(part, start=1)]
        for start in range(0, len(lined), block_rows):
            batch = pa.RecordBatch.from_pylist(
                lined[start : start + block_rows], schema=layout.with_lines_schema()
            )
            blocks.append(RecordBlock(f"/data/{name}", batch))
    if reverse:
        blocks.reverse()
    _FOUND.clear()
    with TestPipeline() as p:
        split = p | beam.Create(blocks, reshuffle=False) | SplitTrainEval(schema, 20)
        for tag in (TRAIN, EVAL):
            _ = (
                split[tag]
                | f"Labels{tag}" >> beam.FlatMap(lambda batch: [v for [v] in batch.column(LABEL).to_pylist()])
                | f"All{tag}" >> beam.combiners.ToList()
                | f"Keep{tag}" >> beam.Map(_keep, tag)
            )
        _ = (
            split[EVAL_SAMPLE]
            | beam.Map(lambda r: r["id"])
            | beam.combiners.ToList()
            | beam.Map(_keep, "ids")
        )
    return dict(_FOUND)


_FOUND: dict[str, list] = {}  # what the last `_split_ids` pipeline gave (it runs in this process)


def _keep(values: list, name: str) -> None:
    _FOUND[name] = sorted(values)


def test_the_split_is_the_same_whatever_the_blocks_and_run():
    rows = _sample_rows(clicks={3, 17, 64, 88, 99})
    first = _split_ids(rows, block_rows=100, reverse=False)
    assert first["eval"] == [0] * 19 + [1]  # round(20% of 95), round(20% of 5)
    assert first["train"] == [0] * 76 + [1] * 4
    assert len(first["ids"]) == 20
    again = _split_ids(rows, block_rows=7, reverse=True)
    assert again == first
    assert _split_ids(rows, block_rows=1, reverse=False) == first


def _sample_rows(clicks: set[int]) -> list[dict]:
    from pipeline.sampledata.generate import generate_records
    from transforms.schema import load_schema

    rows = list(generate_records(load_schema("ads"), 100, seed=5))
    return [{**row, LABEL: int(index in clicks)} for index, row in enumerate(rows)]


def _keys_block(source: str, labels: np.ndarray) -> RecordBlock:
    lines = np.arange(1, len(labels) + 1, dtype=np.int64)
    return RecordBlock(
        source, pa.RecordBatch.from_arrays([pa.array(labels), pa.array(lines)], [LABEL, LINE_COLUMN])
    )


def _held_out_of(blocks: list[RecordBlock], eval_percent: int) -> list[np.ndarray]:
    """The split of `blocks` as the pipeline makes it, its combine run by hand."""
    from pipeline.analyze import _label_key_summaries, _LabelKeysFn, held_out, split_keys

    combine, summaries = _LabelKeysFn(), {}
    for block in blocks:
        for value, summary in _label_key_summaries(block, LABEL):
            summaries[value] = combine.add_input(summaries.get(value, combine.create_accumulator()), summary)
    return [
        held_out(split_keys(b), b.batch.column(LABEL).to_numpy(), summaries, eval_percent) for b in blocks
    ]


@pytest.mark.parametrize("eval_percent", [1, 20, 50])
def test_large_data_keeps_the_eval_share_per_label(eval_percent):
    rng = np.random.default_rng(0)
    blocks = [_keys_block(f"part-{i}.jsonl", (rng.random(40_000) < 0.01).astype(np.int64)) for i in range(3)]
    masks = _held_out_of(blocks, eval_percent)
    labels = np.concatenate([b.batch.column(LABEL).to_numpy() for b in blocks])
    is_eval = np.concatenate(masks)
    for value in (0, 1):
        mine = labels == value
        share = is_eval[mine].mean()
        assert abs(share - eval_percent / 100) < 0.1 * eval_percent / 100 + 0.002, (value, share)
    # a label within EXACT_SPLIT_KEYS held-out rows gets its exact share
    assert is_eval[labels == 1].sum() == (int((labels == 1).sum()) * eval_percent + 50) // 100


def test_tiny_labels_reach_both_splits_when_they_can():
    two, one = np.array([0, 1, 0, 1, 0, 0], np.int64), np.array([0, 0, 1, 0], np.int64)
    for labels in (two, one):
        [is_eval] = _held_out_of([_keys_block("x.jsonl", labels)], 20)
        assert sorted(labels[is_eval]) == ([0, 1] if labels is two else [0])
        assert sorted(set(labels[~is_eval])) == [0, 1]  # the train split keeps every label
    [is_eval] = _held_out_of([_keys_block("x.jsonl", two)], 0)
    assert not is_eval.any()  # --eval_percent 0 holds nothing out


@pytest.mark.parametrize(
    ("held_out", "trained", "reason"),
    [
        ([0, 1], [0, 1], None),
        ([], [0, 1], "the held-out split is empty (analyze ran with --eval_percent 0, or no label had 2"),
        ([0, 0], [0, 0, 0], "the held-out split has 2 records, all with clicked 0, as have all training records"),
        ([1, 1], [0, 0, 1], "the held-out split has 2 records, all with clicked 1, though 2 training records have "
         "clicked 0: re-run `adpredict analyze`"),
    ],
)  # fmt: skip
def test_the_reason_an_auc_is_undefined(held_out, trained, reason):
    from pipeline.trainer.train import auc_undefined_reason

    found = auc_undefined_reason(np.array(held_out, np.int64), np.array(trained, np.int64), LABEL)
    assert found == reason if reason is None else found.startswith(reason)
