"""A run that went systematically wrong fails loudly by default, in predict and in analyze.

The default --max_error_rate (1%) lets the odd bad record through and fails a run where
schema drift or the wrong file turned most records into errors: exit code 3, everything
written, no `_SUCCESS`.
"""

import json
import os

from pipeline import cli
from pipeline.run_contract import DEFAULT_MAX_ERROR_RATE, EXIT_ERROR_RATE, EXIT_USAGE
from pipeline.sampledata.generate import generate_file


def drifted(path, records: int, bad: int) -> str:
    """`records` generated ad records, the first `bad` of them with `age` renamed (schema drift)."""
    generate_file(str(path), records, seed=5)
    lines = path.read_text().splitlines()
    lines[:bad] = [line.replace('"age":', '"age_years":') for line in lines[:bad]]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_the_default_threshold_is_stated_and_small():
    assert 0 < DEFAULT_MAX_ERROR_RATE <= 0.05


def test_predict_where_every_record_failed_exits_3_by_default(trained_ads, tmp_path, capsys):
    data = drifted(tmp_path / "in.jsonl", 40, 40)
    out = tmp_path / "out"
    code = cli.main(
        ["predict", "--model_dir", trained_ads["model"], "--input", data, "--output_dir", str(out)]
    )
    assert code == EXIT_ERROR_RATE
    assert "40 of 40 records failed (100.00%), above --max_error_rate 1.00%" in capsys.readouterr().err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"].startswith("failed") and manifest["max_error_rate"] == DEFAULT_MAX_ERROR_RATE
    assert not os.path.exists(out / "_SUCCESS")
    assert json.loads((out / "prediction.errors_stats").read_text())["by_kind"][0]["field"] == "age"


def test_predict_lets_the_odd_bad_record_through_by_default(trained_ads, tmp_path):
    data = drifted(tmp_path / "in.jsonl", 200, 1)  # 0.5%
    out = tmp_path / "out"
    code = cli.main(
        ["predict", "--model_dir", trained_ads["model"], "--input", data, "--output_dir", str(out)]
    )
    assert code == 0 and os.path.exists(out / "_SUCCESS")
    assert json.loads((out / "run.json").read_text())["counts"]["errors"] == 1


def test_analyze_where_most_records_failed_exits_3_and_is_not_marked_usable(tmp_path, capsys):
    data = drifted(tmp_path / "train.jsonl", 100, 93)  # 93% drifted: 7% would be analyzed
    out = tmp_path / "transform"
    code = cli.main(["analyze", "--schema", "ads", "--input", data, "--output_dir", str(out)])
    assert code == EXIT_ERROR_RATE
    assert "93 of 100 training records failed (93.00%)" in capsys.readouterr().err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"].startswith("failed")
    assert manifest["counts"] == {**manifest["counts"], "read": 100, "analyzed": 7, "errors": 93}
    assert not os.path.exists(out / "_SUCCESS")
    # ... and the trainer refuses it.
    code = cli.main(["train", "--transform_dir", str(out), "--model_dir", str(tmp_path / "model")])
    assert code == EXIT_USAGE
    assert "analyze of" in capsys.readouterr().err


def test_analyze_of_clean_records_is_marked_usable(tmp_path):
    data = drifted(tmp_path / "train.jsonl", 100, 0)
    out = tmp_path / "transform"
    assert cli.main(["analyze", "--schema", "ads", "--input", data, "--output_dir", str(out)]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["counts"]["analyzed"] == 100
    assert os.path.exists(out / "_SUCCESS")
