"""Scheduling recipes in deploy/: each checked as far as this machine allows (no cron, systemd,
Cloud Scheduler or Airflow here; see the README for what each one needs)."""

import ast
import configparser
import json
import os
import re

import yaml

from pipeline.nightly import load_config, predict_argv
from pipeline.run_contract import EXIT_SKIPPED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def test_example_nightly_config_loads_and_renders_a_date(tmp_path):
    import datetime

    config = load_config(os.path.join(DEPLOY, "nightly.example.yaml"))
    argv = predict_argv(config, datetime.date(2026, 11, 26), [])
    assert argv[argv.index("--input") + 1] == "gs://my-bucket/ads/dt=2026-11-26/*.jsonl"
    assert argv[argv.index("--output_dir") + 1] == "gs://my-bucket/predictions/dt=2026-11-26"
    assert argv[argv.index("--run_date") + 1] == "2026-11-26" and "--runner" in argv


def test_crontab_line_has_five_time_fields_and_runs_nightly():
    lines = [
        line for line in open(os.path.join(DEPLOY, "crontab")) if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    minute, hour, day, month, weekday, command = lines[0].split(maxsplit=5)
    assert (minute, hour, day, month, weekday) == ("15", "3", "*", "*", "*")
    assert "adpredict nightly --config" in command


def test_systemd_timer_and_service_run_nightly_and_treat_skipped_as_success():
    service = configparser.ConfigParser(strict=False)
    service.read(os.path.join(DEPLOY, "adpredict-nightly.service"))
    assert service["Service"]["Type"] == "oneshot"
    assert re.search(r"adpredict nightly --config \S+$", service["Service"]["ExecStart"])
    assert service["Service"]["SuccessExitStatus"] == str(EXIT_SKIPPED)
    timer = configparser.ConfigParser(strict=False)
    timer.read(os.path.join(DEPLOY, "adpredict-nightly.timer"))
    assert (
        timer["Timer"]["OnCalendar"] == "*-*-* 03:15:00"
        and timer["Timer"]["Unit"] == "adpredict-nightly.service"
    )


def test_cloud_scheduler_body_launches_the_flex_template_with_real_parameters():
    import sys

    sys.path.insert(0, os.path.join(ROOT, "flex_template"))
    from launch import with_dates

    body = json.load(open(os.path.join(DEPLOY, "cloud_scheduler_predict.json")))["launchParameter"]
    assert body["containerSpecGcsPath"].startswith("gs://") and body["jobName"]
    metadata = json.load(open(os.path.join(ROOT, "flex_template", "predict_metadata.json")))
    parameters = {p["name"]: p for p in metadata["parameters"]}
    for name, value in body["parameters"].items():
        assert re.match(parameters[name]["regexes"][0], value), name
    required = {name for name, p in parameters.items() if not p["isOptional"]}
    assert required <= set(body["parameters"])
    argv = with_dates([f"--{k}={v}" for k, v in body["parameters"].items()] + ["--run_date=2026-11-26"])
    assert "--input=gs://my-bucket/ads/dt=2026-11-26/*.jsonl" in argv


def test_airflow_dag_defines_the_gate_then_predict_tasks():
    """Airflow and its Beam provider install beside the stack, but the Beam operator needs the
    Google provider, which needs google-api-python-client>=2 while tfx-bsl 1.21 needs <2: the
    DAG cannot be imported here, so its task graph is checked in its source."""
    tree = ast.parse(open(os.path.join(DEPLOY, "airflow_dag.py")).read())
    calls = {
        node.func.id: {kw.arg: kw.value for kw in node.keywords}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert ast.literal_eval(calls["DAG"]["dag_id"]) == "adpredict_nightly"
    assert ast.literal_eval(calls["BashOperator"]["task_id"]) == "parity_gate"
    assert "--parity_only" in ast.unparse(calls["BashOperator"]["bash_command"])
    assert ".venv/bin/python" in ast.unparse(calls["BeamRunPythonPipelineOperator"]["py_interpreter"])
    assert ast.literal_eval(calls["BeamRunPythonPipelineOperator"]["task_id"]) == "predict"
    edges = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.RShift)]
    assert [(e.left.id, e.right.id) for e in edges] == [("gate", "predict")]
    options = ast.literal_eval(calls["BeamRunPythonPipelineOperator"]["pipeline_options"].values[-1])
    assert options == "{{ ds }}"


def test_readme_documents_every_recipe():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for needle in ("deploy/crontab", "adpredict-nightly.timer", "cloud_scheduler_predict.json", "airflow_dag.py",
                   "gcloud scheduler jobs create http"):  # fmt: skip
        assert needle in readme, needle
    assert yaml.safe_load(open(os.path.join(DEPLOY, "nightly.example.yaml")))["timezone"]
