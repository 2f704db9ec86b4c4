import csv
import json

import numpy as np

from pipeline.sampledata.generate import generate_file, generate_records, generate_records_with_logits
from transforms.metrics import roc_auc
from transforms.schema import load_schema


def test_generation_is_deterministic_for_a_seed():
    schema = load_schema("ads")
    first = list(generate_records(schema, 20, seed=3))
    assert first == list(generate_records(schema, 20, seed=3))
    assert first != list(generate_records(schema, 20, seed=4))


def test_planted_signal_needs_both_table_and_image():
    rows = list(generate_records_with_logits(load_schema("ads"), 4000, seed=0))
    labels = np.array([r["clicked"] for r, _ in rows])
    tabular = np.array([p["tabular"] for _, p in rows])
    image = np.array([p["image"] for _, p in rows])
    both, table_only = roc_auc(labels, tabular + image), roc_auc(labels, tabular)
    # The best possible model uses both parts; neither alone comes close.
    assert both > 0.83
    assert both - table_only > 0.1
    assert both - roc_auc(labels, image) > 0.03


def test_jsonl_and_csv_files(tmp_path):
    jsonl, csv_path = tmp_path / "a.jsonl", tmp_path / "a.csv"
    assert generate_file(str(jsonl), 30, seed=1) == 30
    assert generate_file(str(csv_path), 30, seed=1, fmt="csv") == 30
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    with_interests = next(r for r in records if len(r.get("interests", [])) > 1)
    row = next(r for r in rows if r["id"] == with_interests["id"])
    assert row["interests"].split("|") == with_interests["interests"]
    assert records[0]["image"][:4] in ("/9j/", "iVBO")  # JPEG or PNG, base64
