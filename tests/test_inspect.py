"""`adpredict inspect`: the report on a real exported model, and the portability checks on
small SavedModels built here to break them (a ragged input, no batch dimension, an op plain
TensorFlow does not know)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline import inspection
from pipeline.inspection import probe
from pipeline.inspection.report import directory_sha256
from transforms.model_contract import ModelDescription

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ads_report(trained_ads):
    return inspection.inspect_model(trained_ads["model"])


def _check(report, name):
    return next(check for check in report["checks"] if check["check"] == name)


def _measured_size(path):
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    )


def _description(model_dir):
    with open(os.path.join(model_dir, "assets.extra", "adpredict_model.json")) as f:
        return ModelDescription.from_json(f.read())


def test_report_lists_the_schemas_inputs_outputs_and_what_the_export_recorded(trained_ads, ads_report):
    from pipeline.run.manifest import model_fingerprint
    from transforms.schema import load_schema

    schema = load_schema("ads")
    assert [(i["name"], i["type"]) for i in ads_report["inputs"]] == [
        (f.name, f.type) for f in schema.features
    ]
    for item, feature in zip(ads_report["inputs"], schema.features, strict=True):
        assert (item["missing"] == "required") == feature.required
        assert item["shape"] == ([None, None] if feature.type == "string_list" else [None])
        assert item["dtype"] == {"int": "int64", "float": "float32"}.get(feature.type, "string")
        assert item["range"] == (list(feature.range) if feature.range else None)
    assert next(i for i in ads_report["inputs"] if i["name"] == "bid")["missing"] == "optional: absent -> NaN"
    assert {"name": "probability", "dtype": "float32", "shape": [None]} in ads_report["outputs"]
    assert set(ads_report["signatures"]) == {"serving_default", "serving_tf_example", "transform_features"}
    assert ads_report["signatures"]["serving_tf_example"]["inputs"]["examples"]["dtype"] == "string"
    assert ads_report["key"] == {"field": "id", "type": "string"} and ads_report["label"] == "clicked"
    assert ads_report["batch_size"]["recorded"] == _description(trained_ads["model"]).batch_size
    assert ads_report["training_metrics"] == trained_ads["metrics"]
    assert ads_report["size_bytes"] == _measured_size(trained_ads["model"])
    assert ads_report["fingerprints"]["adpredict"] == model_fingerprint(trained_ads["model"])
    assert _check(ads_report, "contract")["status"] == "PASS"


def test_tf_only_process_scores_the_example_as_predict_does(trained_ads, ads_report):
    import pyarrow as pa

    from pipeline.blocks import RecordLayout
    from pipeline.inference.model import LoadedModel

    check = _check(ads_report, "tensorflow_only")
    assert check["status"] == "PASS", check
    assert check["ops_missing"] == []
    probability = check["prediction"]["probability"]
    assert 0.0 <= probability <= 1.0
    assert f"probability {probability:.6g}" in check["reason"]

    description = _description(trained_ads["model"])
    layout = RecordLayout(description.inputs, description.key_field, description.key_type)
    record = {**ads_report["example"], description.key_field: "inspect-example"}
    batch = pa.Table.from_pylist([record], schema=layout.arrow_schema()).to_batches()[0]
    expected = LoadedModel(trained_ads["model"]).predict(batch)["probability"][0]
    assert probability == pytest.approx(float(expected), abs=1e-6)


def test_bigquery_ml_check_measures_the_directory_and_flags_the_padded_list(trained_ads, ads_report):
    check = _check(ads_report, "bigquery_ml")
    size = _measured_size(trained_ads["model"])
    assert check["size_bytes"] == size and check["limit_bytes"] == 450_000_000
    assert any(f"({size:,} bytes)" in note for note in check["notes"])
    # `interests` is a dense [B, N] string matrix: BigQuery's docs promise arrays of any length
    # only for SparseTensor inputs; everything else about the model is within the limits.
    assert check["status"] == "WARN" and "interests" in check["reason"]
    assert [note for note in check["notes"] if "interests" in note] == [check["reason"]]


def test_serving_check_passes_and_shows_a_vertex_request(ads_report):
    check = _check(ads_report, "serving")
    assert check["status"] == "PASS", check
    request = next(note for note in check["notes"] if note.startswith("request: "))
    instance = json.loads(request.removeprefix("request: "))["instances"][0]
    assert set(instance) == {i["name"] for i in ads_report["inputs"]}
    assert any('not {"b64": ...}' in note for note in check["notes"])


def test_transform_fingerprint_names_the_transform_not_the_export(trained_ads, ads_report, tmp_path):
    """Re-exporting the same transform (with another, untrained Keras model) keeps it; the
    analyzers' constants and the vocabularies are in it."""
    import tensorflow as tf
    import tensorflow_transform as tft
    from tensorflow.core.protobuf import saved_model_pb2

    from pipeline.trainer.model import build_model
    from transforms.export import export_model
    from transforms.schema import load_schema

    transform = ads_report["transform"]
    assert transform["fingerprint"] and transform["functions"] > 1 and transform["ops"] > 10
    assert transform["assets_sha256"] == directory_sha256(
        os.path.join(trained_ads["transform"], "transform_fn", "assets")
    )

    schema = load_schema("ads")
    spec = tft.TFTransformOutput(trained_ads["transform"]).transformed_feature_spec()
    again = str(tmp_path / "again")
    export_model(build_model(spec, schema.label), trained_ads["transform"], schema, again, batch_size=64)
    report = inspection.inspect_model(again)
    assert report["transform"] == transform
    assert report["fingerprints"]["adpredict"] != ads_report["fingerprints"]["adpredict"]
    assert report["batch_size"]["recorded"] == 64

    # Change the analyzers' float constants in the transform graph: the fingerprint changes.
    changed = tmp_path / "changed"
    changed.mkdir()
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(os.path.join(again, "saved_model.pb"), "rb").read())
    edits = 0
    for function in saved.meta_graphs[0].graph_def.library.function:
        if "pruned" in function.signature.name:
            for node in function.node_def:
                if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum:
                    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(1.5, tf.float32))
                    edits += 1
    assert edits
    (changed / "saved_model.pb").write_bytes(saved.SerializeToString())
    digest = probe._probe_read(tf, str(changed))["transform_graph"]["sha256"]
    assert digest != transform["graph_sha256"]
    assert probe._probe_read(tf, again)["transform_graph"]["sha256"] == transform["graph_sha256"]


def test_json_has_the_same_content_as_the_report(trained_ads, ads_report, capsys):
    assert inspection.main([trained_ads["model"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("model_dir", "inputs", "outputs", "signatures", "transform", "batch_size", "training_metrics",
                "size_bytes", "files", "fingerprints", "example"):  # fmt: skip
        assert report[key] == ads_report[key], key
    assert [c["status"] for c in report["checks"]] == [c["status"] for c in ads_report["checks"]]
    assert _check(report, "bigquery_ml")["size_bytes"] == _measured_size(trained_ads["model"])
    assert _check(report, "tensorflow_only")["prediction"]["probability"] == pytest.approx(
        _check(ads_report, "tensorflow_only")["prediction"]["probability"], abs=1e-6
    )


def test_text_report_shows_the_same_facts(trained_ads, ads_report):
    text = inspection.format_report(ads_report)
    assert text.startswith(f"model directory  {os.path.abspath(trained_ads['model'])}")
    assert "  interests  string_list  string [None, None]  optional: absent -> [] (no items)" in text
    assert "  probability  float32 [None]" in text
    assert f"transform fingerprint  {ads_report['transform']['fingerprint']}" in text
    assert f"batch size  {ads_report['batch_size']['recorded']}" in text
    assert f"training metrics  eval_auc {trained_ads['metrics']['eval_auc']}," in text
    probability = _check(ads_report, "tensorflow_only")["prediction"]["probability"]
    assert "PASS  TensorFlow only" in text and f"probability {probability:.6g}" in text
    assert "WARN  BigQuery ML import" in text and "PASS  TF Serving / Vertex AI" in text


def test_a_bad_model_dir_is_one_line_and_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert inspection.main([missing]) == 2
    err = capsys.readouterr().err
    assert missing in err and "does not exist" in err and len(err.strip().splitlines()) == 1

    (tmp_path / "empty").mkdir()
    assert inspection.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "not a SavedModel (no saved_model.pb)" in err

    assert inspection.main([str(tmp_path / "empty"), "--jsn"]) == 2
    assert "did you mean --json?" in capsys.readouterr().err


def test_runs_as_a_module_without_beam_or_tensorflow(tmp_path):
    """`python -m pipeline.inspection` works alone, and importing it starts nothing heavy."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, pipeline.inspection; "
         "print(sorted(m for m in ('apache_beam', 'tensorflow') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert imported.stdout.strip() == "[]"
    missing = str(tmp_path / "gone")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.inspection", missing], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2 and missing in run.stderr


# ---------------------------------------------------------------------------------------------
# Models built here to fail the checks.


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    """{"scalar": a scalar (no batch dimension) input, "ragged": a RaggedTensor input,
    "unknown_op": the scalar model with its Mul renamed to an op no library registers}."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    work = tmp_path_factory.mktemp("broken_models")

    class Scalar(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="x")])
        def score(self, x):
            return {"y": x * 2.0}

    class Ragged(tf.Module):
        @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.string)])
        def score(self, words):
            return {"count": tf.cast(words.row_lengths(), tf.float32)}

    paths = {}
    for name, module in (("scalar", Scalar()), ("ragged", Ragged())):
        paths[name] = str(work / name)
        tf.saved_model.save(
            module, paths[name], signatures={"serving_default": module.score.get_concrete_function()}
        )
    paths["unknown_op"] = str(work / "unknown_op")
    shutil.copytree(paths["scalar"], paths["unknown_op"])
    saved = saved_model_pb2.SavedModel()
    pb = os.path.join(paths["unknown_op"], "saved_model.pb")
    saved.ParseFromString(open(pb, "rb").read())
    for function in saved.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "Mul":
                node.op = "AdpredictNoSuchOp"
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())
    return paths


def test_no_batch_dimension_fails_tf_serving(broken_models):
    report = inspection.inspect_model(broken_models["scalar"])
    serving = _check(report, "serving")
    assert serving["status"] == "FAIL"
    assert serving["reason"].startswith("input x is a scalar, no batch dimension")
    assert any(note.startswith("output y is a scalar") for note in serving["notes"])
    assert _check(report, "tensorflow_only")["status"] == "PASS"  # scored x = 0.0
    assert _check(report, "tensorflow_only")["prediction"] == {"y": 0.0}
    contract = _check(report, "contract")
    # No adpredict_model.json, and nothing a record could feed: predict cannot score it.
    assert (
        contract["status"] == "FAIL"
        and "input 'x' is float32 of shape [], which no record" in contract["reason"]
    )
    assert "write assets.extra/adpredict_model.json by hand" in contract["reason"]
    assert report["inputs"] == [
        {"name": "x", "type": None, "dtype": "float32", "shape": [], "encoding": "dense",
         "missing": "unknown (no adpredict description)", "range": None}
    ]  # fmt: skip
    assert (
        report["transform"]["fingerprint"] is None
        and "no transform_features" in report["transform"]["covers"]
    )


def test_ragged_input_fails_bigquery_ml_and_tf_serving(broken_models):
    report = inspection.inspect_model(broken_models["ragged"])
    # TensorFlow writes the ragged argument into the signature as two dense tensors
    # (values and row splits); the report finds the RaggedTensor behind them.
    signature = report["signatures"]["serving_default"]
    assert sorted(signature["inputs"]) == ["words", "words_1"]
    assert signature["composite_inputs"] == [
        {"name": "words", "kind": "RaggedTensor", "dtype": "string", "shape": [None, None],
         "fed_as": ["words", "words_1"]}
    ]  # fmt: skip
    bigquery = _check(report, "bigquery_ml")
    assert bigquery["status"] == "FAIL"
    assert bigquery["reason"] == (
        "input words is a RaggedTensor (fed as words, words_1): RaggedTensors aren't supported"
    )
    serving = _check(report, "serving")
    assert serving["status"] == "FAIL" and serving["reason"].startswith("input words is a RaggedTensor")
    tf_only = _check(report, "tensorflow_only")
    assert tf_only["status"] == "WARN" and "not called" in tf_only["reason"]


def test_op_plain_tensorflow_lacks_fails_the_tf_only_load(broken_models):
    report = inspection.inspect_model(broken_models["unknown_op"])
    tf_only = _check(report, "tensorflow_only")
    assert tf_only["status"] == "FAIL" and tf_only["ops_missing"] == ["AdpredictNoSuchOp"]
    assert "AdpredictNoSuchOp" in tf_only["reason"]
    assert any(note.startswith("load failed: ") and "AdpredictNoSuchOp" in note for note in tf_only["notes"])
    bigquery = _check(report, "bigquery_ml")
    assert (
        bigquery["status"] == "FAIL" and "ops outside core TensorFlow: AdpredictNoSuchOp" in bigquery["notes"]
    )
