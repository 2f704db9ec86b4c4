"""Reduced precision: the bf16 check at export and on first use, what bf16/auto refuse, the
fp32 path on a CPU without bf16, and the devices each run records (pipeline.inference.precision,
pipeline.inference.devices)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.inference.devices import AMX, AVX512_BF16, NO_BF16, Cpu, this_cpu
from pipeline.inference.precision import (
    AUTO,
    BF16,
    FASTER_BY,
    FP32,
    MAX_OUTPUT_CHANGE,
    PrecisionRefused,
    decide,
    read_precision_record,
    write_precision_record,
)
from pipeline.inference.precision_check import store_precision_check_from
from pipeline.run_contract import EXIT_GATE, EXIT_OK, EXIT_USAGE
from transforms.model_contract import PRECISION_CHECK_FILE
from transforms.schema import load_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_CPU = Cpu("a CPU with AVX-512 BF16", frozenset({"avx512f", "avx512_bf16"}), onednn=True)
PLAIN_CPU = Cpu("a CPU without bf16", frozenset({"avx512f", "avx2"}), onednn=True)


def _record(change=0.004, auc_change=0.0005, fp32=1000, bf16=1300, kind=AVX512_BF16) -> dict:
    return {
        "check": {
            "records": 500,
            "source": "the eval split sample (500 records)",
            "output_change": {"probability": change},
            "auc_fp32": 0.8,
            "auc_bf16": 0.8 + auc_change,
        },
        "speed": {kind: {"cpu": "x", "batch_size": 512, FP32: fp32, BF16: bf16}},
    }


@pytest.fixture(scope="module")
def checked_model(trained_ads, tmp_path_factory):
    """A copy of the trained test model with its bf16 check stored, as `adpredict train` stores it."""
    model = str(tmp_path_factory.mktemp("precision") / "model")
    shutil.copytree(trained_ads["model"], model)
    record = store_precision_check_from(model, trained_ads["transform"], load_schema("ads"))
    return model, record


def test_cpu_kinds_come_from_the_units_and_onednn():
    assert BF16_CPU.kind == AVX512_BF16 and BF16_CPU.has_bf16
    assert Cpu("spr", frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}), True).kind == AMX
    assert PLAIN_CPU.kind == NO_BF16 and not PLAIN_CPU.has_bf16
    assert Cpu("spr", frozenset({"amx_bf16", "amx_tile"}), onednn=False).kind == NO_BF16
    assert this_cpu().as_dict()["kind"] in (AMX, AVX512_BF16, NO_BF16)


def test_auto_keeps_bf16_only_where_it_passed_the_check_and_measured_faster():
    assert decide(AUTO, _record(), BF16_CPU, "m").precision == BF16
    slower = decide(AUTO, _record(bf16=int(1000 * FASTER_BY) - 1), BF16_CPU, "m")
    assert slower.precision == FP32 and f"needs {FASTER_BY:g}x" in slower.reason
    elsewhere = decide(AUTO, _record(kind=AMX), BF16_CPU, "m")  # timed on another kind of CPU only
    assert elsewhere.precision == FP32 and "not timed on this CPU kind (avx512_bf16)" in elsewhere.reason
    failed = decide(AUTO, _record(change=0.03), BF16_CPU, "m")
    assert failed.precision == FP32 and "moves by up to 0.03 (limit 0.01)" in failed.reason
    assert decide(FP32, _record(), BF16_CPU, "m").precision == FP32


def test_on_a_cpu_without_bf16_auto_is_exactly_fp32_and_bf16_is_refused():
    assert decide(AUTO, _record(), PLAIN_CPU, "m").precision == FP32
    with pytest.raises(
        PrecisionRefused, match=r"--precision bf16: this CPU \(a CPU without bf16\) has no bf16"
    ):
        decide(BF16, _record(), PLAIN_CPU, "m")


def test_bf16_is_refused_by_how_much_the_check_moved():
    with pytest.raises(PrecisionRefused) as refused:
        decide(BF16, _record(change=0.02, auc_change=0.004), BF16_CPU, "models/m")
    line = str(refused.value)
    assert line.startswith(
        "--precision bf16 refused for model models/m: in bf16 output 'probability' moves by "
    )
    assert "up to 0.02 (limit 0.01); the AUC moves by 0.004 (limit 0.002)" in line and "\n" not in line
    with pytest.raises(PrecisionRefused, match="has no bf16 check"):
        decide(BF16, None, BF16_CPU, "m")


def test_export_stores_the_check_on_the_eval_split_and_both_speeds(checked_model):
    model, record = checked_model
    assert read_precision_record(model) == record
    if not this_cpu().has_bf16:
        assert "no bf16" in record["not_checked"] and "check" not in record
        return
    check = record["check"]
    assert check["records"] >= 100 and check["source"].startswith("the eval split sample (")
    change = check["output_change"]["probability"]
    assert 0.0 < change <= MAX_OUTPUT_CHANGE  # bf16 really ran (outputs moved), within the tolerance
    assert 0.5 < check["auc_fp32"] <= 1.0 and check["auc_change"] == pytest.approx(
        abs(check["auc_bf16"] - check["auc_fp32"]), abs=1e-6
    )
    speed = record["speed"][this_cpu().kind]
    assert speed[FP32] > 0 and speed[BF16] > 0 and speed["cpu"] == this_cpu().name


def _predict(model, trained_ads, out, *flags) -> int:
    return cli.main(
        ["predict", "--model_dir", model, "--input", trained_ads["data"], "--output_dir", str(out), *flags]
    )


def test_each_run_records_the_precision_and_devices_its_workers_used(checked_model, trained_ads, tmp_path):
    model, record = checked_model
    assert _predict(model, trained_ads, tmp_path / "fp32", "--precision", "fp32") == EXIT_OK
    assert _predict(model, trained_ads, tmp_path / "auto") == EXIT_OK  # auto: the default
    fp32 = json.load(open(tmp_path / "fp32" / "run.json"))
    auto = json.load(open(tmp_path / "auto" / "run.json"))
    (worker,) = fp32["workers"]
    assert worker["precision"] == FP32 and worker["device"] == "CPU" and worker["gpus"] == []
    assert worker["cpu"]["kind"] == this_cpu().kind and worker["processes"] == 1
    assert fp32["precision_requested"] == FP32 and auto["precision_requested"] == AUTO
    (chosen,) = auto["workers"]
    expected = decide(AUTO, record, this_cpu(), model)
    assert (chosen["precision"], chosen["precision_reason"]) == (expected.precision, expected.reason)


def test_a_model_that_fails_its_check_refuses_bf16_in_one_line_and_auto_keeps_fp32(
    checked_model, trained_ads, tmp_path, capsys
):
    model = str(tmp_path / "model")
    shutil.copytree(checked_model[0], model)
    record = _record(change=0.05)
    record["speed"] = {this_cpu().kind: record["speed"][AVX512_BF16]}
    write_precision_record(model, record)
    expected = EXIT_USAGE
    assert _predict(model, trained_ads, tmp_path / "bf16", "--precision", "bf16") == expected
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("adpredict")]
    assert len(lines) == 1 and "moves by up to 0.05 (limit 0.01)" in lines[0], lines
    assert not os.path.exists(tmp_path / "bf16" / "run.json")
    assert _predict(model, trained_ads, tmp_path / "auto", "--precision", "auto") == EXIT_OK
    (worker,) = json.load(open(tmp_path / "auto" / "run.json"))["workers"]
    assert worker["precision"] == FP32


def test_a_model_without_a_check_is_checked_on_the_first_records_it_is_given(trained_ads, tmp_path):
    model = str(tmp_path / "model")
    shutil.copytree(trained_ads["model"], model)
    os.remove(os.path.join(model, PRECISION_CHECK_FILE))  # no check, as a foreign model
    assert _predict(model, trained_ads, tmp_path / "out", "--precision", "auto") == EXIT_OK
    (worker,) = json.load(open(tmp_path / "out" / "run.json"))["workers"]
    if not this_cpu().has_bf16:
        assert worker["precision"] == FP32 and "no bf16 units" in worker["precision_reason"]
        return
    check = read_precision_record(model)["check"]
    assert check["source"] == f"the first {check['records']} records of {trained_ads['data']}"
    assert check["records"] > 100 and check["auc_change"] is None  # no labels read: outputs only
    assert 0.0 < check["output_change"]["probability"] <= MAX_OUTPUT_CHANGE


def test_with_onednn_off_auto_runs_exactly_fp32(checked_model, trained_ads, tmp_path):
    """The path of a CPU with no bf16, forced for real: TensorFlow without its oneDNN ops."""
    model, _ = checked_model
    out = tmp_path / "out"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    argv = ["predict", "--model_dir", model, "--input", trained_ads["data"], "--output_dir", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv, "--precision", "auto"],
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    assert done.returncode == EXIT_OK, done.stderr.decode()[-2000:]
    (worker,) = json.load(open(out / "run.json"))["workers"]
    assert worker["precision"] == FP32 and worker["cpu"]["kind"] == NO_BF16 and not worker["cpu"]["onednn"]
    assert worker["precision_reason"] == "auto: TensorFlow's oneDNN ops are off (TF_ENABLE_ONEDNN_OPTS=0)"


def test_a_run_that_requires_a_gpu_stops_on_a_machine_without_one(trained_ads, tmp_path, capsys):
    assert _predict(trained_ads["model"], trained_ads, tmp_path / "req", "--gpu", "require") == EXIT_GATE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("adpredict")]
    assert len(lines) == 1 and "--gpu require: TensorFlow 2.21.0" in lines[0], lines
    assert "sees no GPU in this process" in lines[0] and "GPU_SDK_CONTAINER_IMAGE" in lines[0]
    assert not os.path.exists(tmp_path / "req" / "_SUCCESS")
    assert _predict(trained_ads["model"], trained_ads, tmp_path / "warn", "--gpu", "warn") == EXIT_OK
    (worker,) = json.load(open(tmp_path / "warn" / "run.json"))["workers"]
    assert worker["device"] == "CPU" and worker["gpus"] == []


def test_a_gpu_process_times_its_batch_size_from_the_exports_up(trained_ads):
    """What a process that sees a GPU runs before its first record (golden.load_checked), run here
    on the CPU: the golden records repeated, sizes from the export's up, the choice recorded."""
    from pipeline.inference.golden import load_checked, read_golden_records
    from pipeline.inference.model import ModelConfig
    from pipeline.inference.tuning import tune_on_gpu
    from pipeline.io.records import read_records

    config = ModelConfig.from_model_dir(trained_ads["model"], batch_size=64)
    model = load_checked(config)
    assert model.gpus == [] and model.batch_size == 64  # no GPU here: nothing re-timed
    assert "batch_size_tuning" not in model.device and model.device["batch_size"] == 64
    stored = read_golden_records(trained_ads["model"])
    (block,) = read_records([e["record"] for e in stored["records"]], "golden", config.layout)
    chosen = tune_on_gpu(model, block.batch)
    measured = {int(size): rate for size, rate in model.device["batch_size_tuning"].items()}
    assert min(measured) == 64 and all(rate > 0 for rate in measured.values())
    assert chosen == model.batch_size == model.device["batch_size"] and chosen in measured
    assert measured[chosen] >= 0.95 * max(measured.values())
    assert tune_on_gpu(model, None) == chosen and "no golden records" in model.device["batch_size_tuning"]
