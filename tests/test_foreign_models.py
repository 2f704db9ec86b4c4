"""Models adpredict did not train: a TFX-style export (serialized tf.Example signature, no
adpredict_model.json, [N, 2] scores and string classes) and a plain Keras model with named
tensor inputs. Predictions must equal calling the signature directly, from every input
format and into every sink."""

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import cli, predict
from pipeline.run_contract import EXIT_GATE, EXIT_USAGE
from tests import tfx_census_model as census

RECORDS = 120
FORMATS = {"jsonl": "in.jsonl", "csv": "in.csv", "tfrecord": "in.tfrecord", "parquet": "in.parquet"}


@pytest.fixture(scope="module")
def census_model(tmp_path_factory):
    """The census_example_v2-style model, and records to score with what it says about them."""
    work = tmp_path_factory.mktemp("tfx_census")
    model_dir = census.build_census_model(str(work), census.census_records(400, seed=1))
    records = census.census_records(RECORDS, seed=2)
    assert any("education-num" not in r for r in records)  # the optional feature is missing in some
    expected = census.call_signature(model_dir, records)
    return {"work": work, "model": model_dir, "records": records, "expected": expected}


def write_inputs(records: list[dict], directory) -> dict[str, str]:
    """The same records as JSONL, CSV (header, empty cell when missing), TFRecord, Parquet."""
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    paths = {fmt: os.path.join(directory, name) for fmt, name in FORMATS.items()}
    with open(paths["jsonl"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    columns = list(census.CATEGORICAL) + census.NUMERIC + census.OPTIONAL_NUMERIC + [census.LABEL]
    with open(paths["csv"], "w") as f:
        f.write(",".join(columns) + "\n")
        for r in records:
            f.write(",".join("" if r.get(c) is None else str(r[c]) for c in columns) + "\n")
    with tf.io.TFRecordWriter(paths["tfrecord"]) as writer:
        for data in census.serialized_examples(records, with_label=True):
            writer.write(data)
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in records]), paths["parquet"])
    return paths


def run_predict(model_dir, input_path, out, *flags) -> dict:
    """A predict run in fp32 unless `flags` say otherwise: these tests compare outputs with the
    model's own fp32 ones (bf16 on a foreign model: tests/test_precision.py)."""
    precision = [] if "--precision" in flags else ["--precision", "fp32"]
    return predict.run(
        ["--model_dir", model_dir, "--input", input_path, "--output_dir", str(out), *precision, *flags]
    )


def read_jsonl(pattern: str) -> list[dict]:
    return [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path)]


def line_number(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


def test_the_signature_tells_the_raw_inputs_and_outputs(census_model):
    from transforms.signature_reader import describe_model

    description = describe_model(census_model["model"])
    fields = {f.name: f for f in description.inputs}
    assert sorted(fields) == sorted([*census.CATEGORICAL, *census.NUMERIC, *census.OPTIONAL_NUMERIC])
    assert {fields[n].type for n in census.CATEGORICAL} == {"string"}
    assert {fields[n].type for n in census.NUMERIC} == {"float"}
    assert all(fields[n].required for n in [*census.CATEGORICAL, *census.NUMERIC])
    assert fields["education-num"].type == "float" and not fields["education-num"].required  # RaggedFeature
    assert census.LABEL not in fields  # the serving spec has no label
    assert description.example_input == "inputs" and description.key_field is None
    assert [(o.name, o.dtype, o.shape) for o in description.outputs] == [
        ("classes", "string", (2,)),
        ("scores", "float32", (2,)),
    ]
    assert "no assets.extra/adpredict_model.json" in description.origin


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_input_format_gives_what_the_signature_gives(census_model, fmt, tmp_path):
    paths = write_inputs(census_model["records"], tmp_path / "in")
    manifest = run_predict(census_model["model"], paths[fmt], tmp_path / "out")
    assert manifest["counts"]["predictions"] == RECORDS and manifest["counts"]["errors"] == 0
    predictions = read_jsonl(str(tmp_path / "out" / "prediction.results-*"))
    # The key is the record's position: line numbers (CSV: after the header), record numbers.
    first = 2 if fmt == "csv" else 1
    order = [line_number(p["key"]) - first for p in predictions]
    assert sorted(order) == list(range(RECORDS))
    scores = np.array([p["prediction"]["scores"] for p in predictions])
    np.testing.assert_allclose(scores, census_model["expected"]["scores"][order], rtol=1e-6, atol=1e-7)
    classes = [p["prediction"]["classes"] for p in predictions]
    assert classes == [[c.decode() for c in row] for row in census_model["expected"]["classes"][order]]


def test_bad_records_are_error_records_and_the_rest_still_match(census_model, tmp_path):
    records = [dict(r) for r in census_model["records"][:20]]
    del records[3]["age"]  # required by the model's parse spec
    records[7]["hours-per-week"] = "forty"
    records[9]["sex"] = ["Male"]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = run_predict(census_model["model"], str(path), tmp_path / "out", "--max_error_rate", "0.5")
    assert manifest["counts"]["predictions"] == 17 and manifest["counts"]["errors"] == 3
    errors = {
        line_number(e["key"] or e["source"]): e["error"]
        for e in read_jsonl(str(tmp_path / "out" / "errors-*"))
    }
    assert {line: (e["code"], e["field"]) for line, e in errors.items()} == {
        4: ("missing_field", "age"),
        8: ("wrong_type", "hours-per-week"),
        10: ("wrong_type", "sex"),
    }
    good = [i for i in range(20) if i not in (3, 7, 9)]
    expected = census.call_signature(census_model["model"], [records[i] for i in good])["scores"]
    predictions = sorted(
        read_jsonl(str(tmp_path / "out" / "prediction.results-*")), key=lambda p: line_number(p["key"])
    )
    np.testing.assert_allclose(
        [p["prediction"]["scores"] for p in predictions], expected, rtol=1e-6, atol=1e-7
    )


def test_vector_and_string_outputs_in_every_file_sink(census_model, tmp_path):
    import tensorflow as tf

    paths = write_inputs(census_model["records"], tmp_path / "in")
    expected = census_model["expected"]
    for fmt in ("csv", "parquet", "tfrecord"):
        out = tmp_path / fmt
        run_predict(census_model["model"], paths["jsonl"], out, "--output_format", fmt)
        shards = sorted(glob.glob(str(out / "prediction.results-*")))
        if fmt == "csv":
            import csv

            rows = [row for shard in shards for row in csv.DictReader(open(shard))]
            keys = [r["key"] for r in rows]
            scores = [[float(v) for v in r["scores"].split("|")] for r in rows]
            classes = [r["classes"].split("|") for r in rows]
        elif fmt == "parquet":
            table = pa.concat_tables([pq.read_table(s) for s in shards])
            assert table.schema.field("scores").type == pa.list_(pa.float32())
            assert table.schema.field("classes").type == pa.list_(pa.string())
            keys, scores, classes = (table.column(n).to_pylist() for n in ("key", "scores", "classes"))
        else:
            examples = [
                tf.train.Example.FromString(r.numpy()) for s in shards for r in tf.data.TFRecordDataset(s)
            ]
            keys = [e.features.feature["key"].bytes_list.value[0].decode() for e in examples]
            scores = [list(e.features.feature["scores"].float_list.value) for e in examples]
            classes = [[c.decode() for c in e.features.feature["classes"].bytes_list.value] for e in examples]
        order = [line_number(k) - 1 for k in keys]
        assert sorted(order) == list(range(RECORDS)), fmt
        np.testing.assert_allclose(scores, expected["scores"][order], rtol=1e-6, atol=1e-7, err_msg=fmt)
        assert classes == [["0", "1"]] * RECORDS, fmt


def test_vector_and_string_outputs_in_bigquery(census_model, google_cloud, tmp_path):
    from pipeline.io.bigquery import Connection

    flags = google_cloud["flags"]
    project = google_cloud["project"]
    client = Connection(project, flags[3], flags[5], anonymous=True).client()
    client.create_dataset("foreign", exists_ok=True)
    paths = write_inputs(census_model["records"], tmp_path / "in")
    table = f"bq://{project}.foreign.census_predictions"
    manifest = run_predict(census_model["model"], paths["parquet"], tmp_path / "out", "--output_format",
                           "bigquery", "--output_table", table, *flags)  # fmt: skip
    assert manifest["counts"]["bigquery_rows_loaded"] == {"predictions": RECORDS, "errors": 0}
    fields = {
        f.name: (f.field_type, f.mode)
        for f in client.get_table(f"{project}.foreign.census_predictions").schema
    }
    assert fields["scores"] == ("FLOAT", "REPEATED") or fields["scores"] == ("FLOAT64", "REPEATED")
    assert fields["classes"] == ("STRING", "REPEATED")
    rows = [dict(r) for r in client.query(f"SELECT * FROM `{project}.foreign.census_predictions`").result()]
    rows.sort(key=lambda r: line_number(r["key"]))
    np.testing.assert_allclose(
        [r["scores"] for r in rows], census_model["expected"]["scores"], rtol=1e-6, atol=1e-7
    )
    assert [r["classes"] for r in rows] == [["0", "1"]] * RECORDS


def test_an_input_schema_file_gives_the_key_and_is_checked_against_the_model(census_model, tmp_path, capsys):
    records = [{**r, "person": f"p-{i}"} for i, r in enumerate(census_model["records"][:10])]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    features = [{"name": n, "type": "string"} for n in census.CATEGORICAL]
    features += [{"name": n, "type": "float"} for n in census.NUMERIC]
    features.append({"name": "education-num", "type": "float", "missing": {"default": 0.0}})
    schema = {"name": "census", "key": {"field": "person"}, "features": features}
    schema_path = tmp_path / "census.yaml"
    schema_path.write_text(yaml.safe_dump(schema))
    run_predict(census_model["model"], str(path), tmp_path / "out", "--input_schema", str(schema_path))
    predictions = {
        p["key"]: p["prediction"] for p in read_jsonl(str(tmp_path / "out" / "prediction.results-*"))
    }
    assert sorted(predictions) == sorted(f"p-{i}" for i in range(10))
    expected = census_model["expected"]["scores"][:10]
    np.testing.assert_allclose(
        [predictions[f"p-{i}"]["scores"] for i in range(10)], expected, rtol=1e-6, atol=1e-7
    )

    # A schema that contradicts the model's parse spec, or leaves out what it requires.
    wrong = {
        **schema,
        "features": [f if f["name"] != "age" else {"name": "age", "type": "string"} for f in features],
    }
    schema_path.write_text(yaml.safe_dump(wrong))
    argv = ["predict", "--model_dir", census_model["model"], "--input", str(path), "--output_dir",
            str(tmp_path / "out2"), "--input_schema", str(schema_path)]  # fmt: skip
    err = one_error_line(argv, capsys)
    assert "input 'age' is declared string, but the model parses it as dense float32; declare it float" in err
    schema_path.write_text(yaml.safe_dump({**schema, "features": features[1:]}))
    err = one_error_line(argv, capsys)
    assert "requires tf.Example feature 'workclass' (string), which the inputs do not list; add it" in err


def one_error_line(argv, capsys) -> str:
    capsys.readouterr()
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"adpredict {argv[0]}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    """A plain Keras model saved with tf.saved_model.save: named tensor inputs of other
    dtypes and shapes than adpredict's (int32 [N, 1], float64 [N], string [N, M]) and a
    softmax over three classes."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    media = tf.keras.layers.StringLookup(vocabulary=["Twitter", "YouTube", "TikTok"], output_mode="one_hot")
    topics = tf.keras.layers.StringLookup(vocabulary=["sports", "travel", "music"], output_mode="multi_hot")
    dense = tf.keras.layers.Dense(3, activation="softmax")

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.media, self.topics, self.dense = media, topics, dense

        @tf.function(input_signature=[{
            "age": tf.TensorSpec([None, 1], tf.int32, name="age"),
            "bid": tf.TensorSpec([None], tf.float64, name="bid"),
            "media": tf.TensorSpec([None], tf.string, name="media"),
            "interests": tf.TensorSpec([None, None], tf.string, name="interests"),
        }])  # fmt: skip
        def serve(self, inputs):
            features = tf.concat([
                tf.cast(inputs["age"], tf.float32) / 100.0,
                tf.cast(inputs["bid"], tf.float32)[:, None],
                self.media(inputs["media"]),
                self.topics(inputs["interests"]),
            ], axis=1)  # fmt: skip
            return {"class_probabilities": self.dense(features)}

    scorer = Scorer()
    model_dir = str(tmp_path_factory.mktemp("keras") / "model")
    tf.saved_model.save(
        scorer, model_dir, signatures={"serving_default": scorer.serve.get_concrete_function()}
    )
    return model_dir


def test_a_model_with_named_tensor_inputs_of_other_dtypes(keras_model, tmp_path):
    import tensorflow as tf

    records = [
        {"age": 20 + i, "bid": 0.5 * i, "media": ["Twitter", "YouTube", "Snap"][i % 3],
         "interests": [["sports"], ["travel", "music"], []][i % 3]}
        for i in range(30)
    ]  # fmt: skip
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run_predict(keras_model, str(path), tmp_path / "out")
    predictions = sorted(
        read_jsonl(str(tmp_path / "out" / "prediction.results-*")), key=lambda p: line_number(p["key"])
    )
    assert len(predictions) == 30
    signature = tf.saved_model.load(keras_model).signatures["serving_default"]
    width = max(len(r["interests"]) for r in records)
    expected = signature(
        age=tf.constant([[r["age"]] for r in records], tf.int32),
        bid=tf.constant([r["bid"] for r in records], tf.float64),
        media=tf.constant([r["media"] for r in records]),
        interests=tf.constant([r["interests"] + [""] * (width - len(r["interests"])) for r in records]),
    )["class_probabilities"].numpy()
    got = np.array([p["prediction"]["class_probabilities"] for p in predictions])
    assert got.shape == (30, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_a_hand_written_description_that_does_not_fit_is_one_line(keras_model, tmp_path, capsys):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(keras_model, model_dir)
    (model_dir / "assets.extra").mkdir(exist_ok=True)
    description = {
        "format_version": 1,
        "inputs": [{"name": "age", "type": "int"}, {"name": "bid", "type": "float"},
                   {"name": "medium", "type": "string"}, {"name": "interests", "type": "string_list"}],
        "outputs": [{"name": "class_probabilities", "dtype": "float32", "shape": [3]}],
        "key_field": None,
    }  # fmt: skip
    path = model_dir / "assets.extra" / "adpredict_model.json"
    path.write_text(json.dumps(description))
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"age": 30, "bid": 1.0, "media": "Twitter", "interests": []}) + "\n")
    argv = [
        "predict",
        "--model_dir",
        str(model_dir),
        "--input",
        str(records),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    err = one_error_line(argv, capsys)
    assert "the signature takes input 'media' (string), which the description does not list; add it" in err
    description["inputs"][2]["name"] = "media"
    description["outputs"][0]["name"] = "probabilities"
    path.write_text(json.dumps(description))
    err = one_error_line(argv, capsys)
    assert (
        "output 'probabilities' is not an output of the signature, which returns class_probabilities" in err
    )
    path.write_text(json.dumps({**description, "ouputs": []}))
    err = one_error_line(argv, capsys)
    assert "unknown keys ['ouputs']" in err
    description["outputs"][0]["name"] = "class_probabilities"
    path.write_text(json.dumps(description))
    assert cli.main(argv) == 0
    (prediction,) = read_jsonl(str(tmp_path / "out" / "prediction.results-*"))
    assert len(prediction["prediction"]["class_probabilities"]) == 3


def test_inspect_shows_what_predict_reads_from_the_signature(census_model):
    from pipeline import inspection

    report = inspection.inspect_model(census_model["model"])
    inputs = {i["name"]: i for i in report["inputs"]}
    assert report["example_input"] == "inputs"
    assert inputs["age"]["type"] == "float" and inputs["age"]["dtype"] == "float_list"
    assert inputs["age"]["missing"] == "required"
    assert inputs["education-num"]["missing"] == "optional: left out of the tf.Example"
    assert inputs["workclass"]["dtype"] == "bytes_list"
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["contract"]["status"] == "PASS", checks["contract"]
    assert "takes serialized tf.Examples" in checks["contract"]["reason"]
    # The TensorFlow-only process scored one made-up tf.Example: two scores, two classes.
    assert checks["tensorflow_only"]["status"] == "PASS"
    text = inspection.format_report(report)
    assert "raw inputs (features of each tf.Example in inputs)" in text
    assert "education-num   float   tf.Example float_list  optional: left out of the tf.Example" in text


def test_one_string_input_that_is_not_a_tf_example_is_a_text_field(tmp_path):
    """A signature with one string input and no tf.Example parsing inside takes text."""
    import tensorflow as tf

    class Words(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def count(self, text):
            return {"words": tf.strings.split(text).row_lengths(), "upper": tf.strings.upper(text)}

    module = Words()
    model_dir = str(tmp_path / "words")
    tf.saved_model.save(
        module, model_dir, signatures={"serving_default": module.count.get_concrete_function()}
    )
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one two", "a b c", "ünï cödé"]))
    manifest = run_predict(model_dir, str(path), tmp_path / "out")
    assert manifest["model"]["description"].endswith("(no assets.extra/adpredict_model.json)")
    predictions = sorted(read_jsonl(str(tmp_path / "out" / "prediction.results-*")), key=lambda p: p["key"])
    assert [p["prediction"] for p in predictions] == [
        {"upper": "ONE TWO", "words": 2},
        {"upper": "A B C", "words": 3},
        {"upper": "üNï CöDé", "words": 2},
    ]


def test_a_fixed_length_feature_with_a_default_is_an_optional_field(tmp_path):
    """tf.io.FixedLenFeature(default_value=...) in the model's parse spec: a record without the
    field gets the default (TensorFlow keeps it behind a Reshape in the graph)."""
    import tensorflow as tf

    from transforms.signature_reader import describe_model

    spec = {
        "x": tf.io.FixedLenFeature([], tf.float32, default_value=0.5),
        "y": tf.io.FixedLenFeature([], tf.float32),
    }

    class Sum(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            parsed = tf.io.parse_example(examples, spec)
            return {"total": parsed["x"] + parsed["y"]}

    module = Sum()
    model_dir = str(tmp_path / "sum")
    tf.saved_model.save(
        module, model_dir, signatures={"serving_default": module.serve.get_concrete_function()}
    )
    fields = {f.name: f for f in describe_model(model_dir).inputs}
    assert fields["y"].required and not fields["x"].required
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"x": 2.0, "y": 1.0}) + "\n" + json.dumps({"y": 3.0}) + "\n")
    manifest = run_predict(model_dir, str(path), tmp_path / "out")
    assert manifest["counts"]["predictions"] == 2 and manifest["counts"]["errors"] == 0
    totals = sorted(
        p["prediction"]["total"] for p in read_jsonl(str(tmp_path / "out" / "prediction.results-*"))
    )
    assert totals == [3.0, 3.5]


def test_the_parity_gate_checks_a_foreign_models_transform(census_model, tmp_path, capsys):
    """A TFX-style model (no adpredict_model.json; `transform_features` takes serialized
    tf.Examples) read with --input_schema, against its own transform, then another one."""
    path = tmp_path / "ads" / "dt=2026-11-26" / "in.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(
        "".join(json.dumps({**r, "person": f"p-{i}"}) + "\n" for i, r in enumerate(census_model["records"]))
    )
    features = [{"name": n, "type": "string"} for n in census.CATEGORICAL]
    features += [{"name": n, "type": "float"} for n in census.NUMERIC]
    features.append({"name": "education-num", "type": "float", "missing": {"default": 0.0}})
    schema_path = tmp_path / "census.yaml"
    schema_path.write_text(
        yaml.safe_dump({"name": "census", "key": {"field": "person"}, "features": features})
    )
    settings = {"model_dir": census_model["model"], "input": str(tmp_path / "ads" / "dt={date}" / "*.jsonl"),
                "output_dir": str(tmp_path / "out" / "dt={date}"), "input_schema": str(schema_path),
                "transform_dir": str(census_model["work"] / "transform")}  # fmt: skip
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump(settings))
    argv = ["nightly", "--config", str(config), "--date", "2026-11-26", "--parity_only"]
    assert cli.main(argv) == 0
    assert "parity gate passed" in capsys.readouterr().out

    other = census.analyze(census.census_records(60, seed=9), str(tmp_path / "other"))
    config.write_text(yaml.safe_dump({**settings, "transform_dir": other}))
    assert cli.main(argv) == EXIT_GATE
    err = capsys.readouterr().err
    assert other in err and "set transform_dir to the analyze output" in err, err
