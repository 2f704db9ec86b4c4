"""A label mapping in the schema (`" >50K"` -> 1) and `train`'s one-line errors about schemas."""

import glob
import json
import os
import shutil

import pytest
import yaml

from pipeline import cli
from pipeline.run_contract import EXIT_USAGE
from transforms.schema import SchemaError, parse_schema

VALUES = {" >50K": 1, " <=50K": 0, " >50K.": 1, " <=50K.": 0}
UNMAPPED = " 50000+."

# Modelled on transforms/schemas/ads.yaml, without the image (faster), with a census-like label.
SCHEMA = {
    "name": "census_like",
    "key": {"field": "id", "type": "string"},
    "label": {"field": "income", "values": VALUES, "sample": {"bias": -0.5}},
    "features": [
        {"name": "age", "type": "int", "range": [13, 100], "encoding": "bucketize",
         "boundaries": [25, 45, 65], "sample": {"min": 16, "max": 75, "effects": {"16-24": 1.2, "55-75": -1.2}}},
        {"name": "media", "type": "string", "encoding": "one_hot", "top_k": 8,
         "sample": {"values": {"Twitter": 1.0, "YouTube": -1.0, "TikTok": 0.3}}},
        {"name": "bid", "type": "float", "encoding": "z_score", "missing": {"default": 1.0, "indicator": True},
         "sample": {"min": 0.1, "max": 5.0, "slope": 0.5, "missing_rate": 0.05}},
    ],
}  # fmt: skip


def read_jsonl(pattern):
    return [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path)]


def one_error_line(argv, capsys) -> str:
    capsys.readouterr()
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"adpredict {argv[0]}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """Census-like records (raw string labels, two unmapped) analyzed with the mapping schema."""
    from pipeline.sampledata.generate import generate_records, write_records
    from transforms.schema import load_schema

    work = tmp_path_factory.mktemp("label_mapping")
    schema_path = str(work / "census_like.yaml")
    with open(schema_path, "w") as f:
        yaml.safe_dump(SCHEMA, f)
    schema = load_schema(schema_path)
    records = list(generate_records(schema, 400, seed=3))
    # The generator writes the first raw value of each class; use every raw spelling.
    spellings = {1: [" >50K", " >50K."], 0: [" <=50K", " <=50K."]}
    for i, record in enumerate(records):
        record["income"] = spellings[VALUES[record["income"]]][i % 2]
    for record in records[7:9]:
        record["income"] = UNMAPPED
    data = str(work / "train.jsonl")
    write_records(records, data, schema, "jsonl")
    transform = str(work / "transform")
    argv = ["analyze", "--schema", schema_path, "--input", data, "--output_dir", transform]
    assert cli.main(argv) == 0
    return {"schema": schema_path, "records": records, "transform": transform, "work": work}


def _transformed_labels(transform: str, split: str) -> list[int]:
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(transform, "transformed", f"{split}-*")))
    return [
        tf.train.Example.FromString(r).features.feature["income"].int64_list.value[0]
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator()
    ]


def test_analyze_maps_raw_labels_and_train_uses_the_recorded_schema(analyzed, tmp_path):
    mapped = [VALUES[r["income"]] for r in analyzed["records"] if r["income"] != UNMAPPED]
    train, evaluation = (_transformed_labels(analyzed["transform"], s) for s in ("train", "eval"))
    assert sorted(train + evaluation) == sorted(mapped)
    assert set(evaluation) == {0, 1}

    model = str(tmp_path / "model")
    argv = ["train", "--transform_dir", analyzed["transform"], "--model_dir", model, "--epochs", "2",
            "--batch_size", "64"]  # fmt: skip
    assert cli.main(argv) == 0  # no --schema: the one analyze kept in its run.json
    with open(os.path.join(model, "assets.extra", "training_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["eval_records"] == len(evaluation)
    assert metrics["train_records"] + metrics["eval_records"] == len(mapped)


def test_an_unmapped_label_is_one_error_record_naming_the_accepted_values(analyzed):
    errors = read_jsonl(os.path.join(analyzed["transform"], "errors-*"))
    assert len(errors) == 2
    for error in errors:
        assert error["error"]["code"] == "out_of_range"
        assert error["error"]["field"] == "income"
        message = error["error"]["message"]
        for part in (
            repr(UNMAPPED),
            repr(" >50K"),
            repr(" <=50K."),
            "add it to label.values",
            analyzed["schema"],
        ):
            assert part in message, message
        assert error["instance"]["income"] == UNMAPPED
    with open(os.path.join(analyzed["transform"], "run.json")) as f:
        run = json.load(f)
    assert run["counts"]["errors"] == 2
    assert run["schema_file"]["path"] == os.path.abspath(analyzed["schema"])


def test_int_keys_read_ints_and_without_values_the_label_is_an_int():
    schema = parse_schema({**SCHEMA, "label": {"field": "income", "values": {2: 1, 1: 0}}}, "s.yaml")
    assert schema.raw_label_type == "int" and schema.raw_label(1) == 2
    plain = parse_schema({**SCHEMA, "label": {"field": "income"}}, "s.yaml")
    assert plain.label_values is None and plain.raw_label_type == "int" and plain.raw_label(1) == 1


SCHEMA_MISTAKES = {
    "empty": ({}, ["label.values", "non-empty mapping", '" >50K": 1']),
    "a_list": ([" >50K"], ["label.values", "non-empty mapping"]),
    "not_a_class": ({" >50K": 2}, ["label.values", "' >50K' maps to 2", "0 or 1"]),
    "bool_class": ({" >50K": True}, ["label.values", "maps to True", "0 or 1"]),
    "float_key": ({1.5: 1}, ["label.values", "key 1.5 is a float", "strings or ints"]),
    "mixed_keys": ({1: 1, "no": 0}, ["label.values", "mix ints and strings"]),
    "unknown_key": (None, ["label: unknown keys ['value']", "known keys are ['field', 'sample', 'values']"]),
}  # fmt: skip


@pytest.mark.parametrize(("values", "parts"), list(SCHEMA_MISTAKES.values()), ids=list(SCHEMA_MISTAKES))
def test_schema_file_mistakes_in_values_are_one_line_naming_the_key(values, parts, tmp_path, capsys):
    label = (
        {"field": "income", "value": {" >50K": 1}}
        if values is None
        else {"field": "income", "values": values}
    )
    path = str(tmp_path / "bad.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({**SCHEMA, "label": label}, f)
    with pytest.raises(SchemaError) as raised:
        parse_schema(yaml.safe_load(open(path)), path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert all(part in message for part in parts), message
    # analyze refuses it before reading anything, in one line
    err = one_error_line(
        ["analyze", "--schema", path, "--input", path, "--output_dir", str(tmp_path / "o")], capsys
    )
    assert all(part in err for part in parts), err


def test_train_with_another_schema_than_analyze_used_says_what_to_change(analyzed, tmp_path, capsys):
    model = str(tmp_path / "model")
    argv = ["train", "--transform_dir", analyzed["transform"], "--model_dir", model, "--epochs", "1"]
    err = one_error_line([*argv, "--schema", "ads"], capsys)
    for part in (
        "--schema 'ads' is not the schema",
        analyzed["transform"],
        analyzed["schema"],
        "leave --schema out",
    ):
        assert part in err, err
    err = one_error_line([*argv, "--schema", str(tmp_path / "nowhere.yaml")], capsys)
    assert "nowhere.yaml" in err and "does not exist" in err
    assert not os.path.exists(model)


def test_train_on_output_without_a_recorded_schema_names_what_is_missing(analyzed, tmp_path, capsys):
    """Analyze output from before run.json kept the schema: the default (ads) does not fit."""
    transform = str(tmp_path / "transform")
    shutil.copytree(analyzed["transform"], transform)
    with open(os.path.join(transform, "run.json")) as f:
        run = json.load(f)
    del run["schema_file"]
    with open(os.path.join(transform, "run.json"), "w") as f:
        json.dump(run, f)
    model = str(tmp_path / "model")
    err = one_error_line(
        ["train", "--transform_dir", transform, "--model_dir", model, "--epochs", "1"], capsys
    )
    for part in (
        transform,
        "lacks ['gender'",
        "ads.yaml",
        "pass the --schema that `adpredict analyze` was run with",
    ):
        assert part in err, err
    assert not os.path.exists(model)
