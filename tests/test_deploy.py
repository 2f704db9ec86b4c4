"""Scheduling recipes in deploy/: each checked as far as this machine allows (no cron, systemd,
Cloud Scheduler or Airflow here; see docs/nightly.md for what each one needs)."""

import configparser
import json
import os
import re

import pytest
import yaml

from pipeline.nightly import load_config, predict_argv
from pipeline.run_contract import (
    EXIT_BLOCKED,
    EXIT_CODES,
    EXIT_ERROR_RATE,
    EXIT_FAILED,
    EXIT_GATE,
    EXIT_INPUT_NOT_READY,
    EXIT_OK,
    EXIT_RECORDS_LOST,
    EXIT_SKIPPED,
    EXIT_USAGE,
    RETRYABLE_EXIT_CODES,
    SUCCESS_EXIT_CODES,
    exit_code_summary,
    exit_code_table,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def test_example_nightly_config_loads_and_renders_a_date(tmp_path, monkeypatch):
    import datetime

    from apache_beam.io.filesystems import FileSystems

    from pipeline.io import stores
    from pipeline.run import manifest

    # The bucket as it would look (it answers): the 25th was blocked (no _SUCCESS), the 24th published.
    published = "gs://my-bucket/predictions/dt=2026-11-24/_SUCCESS"
    monkeypatch.setattr(stores, "check_store", lambda path, options=None, role="path": None)
    monkeypatch.setattr(FileSystems, "exists", lambda path: path == published)
    profiled = {"quality": {"profile": {"records": 1, "features": {}, "outputs": {}}}}
    monkeypatch.setattr(manifest, "read_manifest", lambda output_dir: profiled)
    config = load_config(os.path.join(DEPLOY, "nightly.example.yaml"))
    argv = predict_argv(config, datetime.date(2026, 11, 26), [])
    assert argv[argv.index("--input") + 1] == "gs://my-bucket/ads/dt=2026-11-26/*.jsonl"
    assert argv[argv.index("--output_dir") + 1] == "gs://my-bucket/predictions/dt=2026-11-26"
    assert argv[argv.index("--run_date") + 1] == "2026-11-26" and "--runner" in argv
    # The data-quality gate: the example's limits, and drift against the last published night.
    assert argv[argv.index("--drift_baseline") + 1] == "gs://my-bucket/predictions/dt=2026-11-24"
    limits = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--quality_threshold"]
    assert "distance=0.1:0.3" in limits and "--accept_drift" not in argv


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


class _Stand_ins:
    """Just enough of Airflow's names to import the DAG file: Airflow's Google provider and
    adpredict's stack cannot share an environment here (google-api-python-client >=2 vs <2)."""

    @staticmethod
    def modules() -> dict:
        import types

        class AirflowException(Exception):
            pass

        class AirflowFailException(AirflowException):
            pass

        class Task:
            made = []

            def __init__(self, **kwargs):
                self.kwargs, self.downstream = kwargs, []
                Task.made.append(self)

            def __rshift__(self, other):
                self.downstream.append(other)
                return other

        class DAG:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        def task(**kwargs):
            def decorate(fn):
                return lambda: Task(python_callable=fn, **kwargs)

            return decorate

        exceptions = types.ModuleType("airflow.exceptions")
        exceptions.AirflowException, exceptions.AirflowFailException = AirflowException, AirflowFailException
        beam = types.ModuleType("airflow.providers.apache.beam.operators.beam")
        beam.BeamRunPythonPipelineOperator = lambda **kwargs: Task(**kwargs)
        sdk = types.ModuleType("airflow.sdk")
        sdk.DAG, sdk.task = DAG, task
        modules = {name: types.ModuleType(name) for name in (
            "airflow", "airflow.providers", "airflow.providers.apache", "airflow.providers.apache.beam",
            "airflow.providers.apache.beam.operators")}  # fmt: skip
        modules.update({"airflow.exceptions": exceptions, beam.__name__: beam, "airflow.sdk": sdk})
        return modules, Task


def _load_dag(monkeypatch, **settings):
    import importlib.util
    import sys

    modules, task_class = _Stand_ins.modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("ADPREDICT_HOME", ROOT)
    for key, value in settings.items():
        monkeypatch.setenv(f"ADPREDICT_{key.upper()}", value)
    spec = importlib.util.spec_from_file_location("adpredict_dag", os.path.join(DEPLOY, "airflow_dag.py"))
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)
    return dag, {t.kwargs["task_id"]: t for t in task_class.made}


def test_airflow_dag_gates_then_predicts_and_retries_only_the_retryable_codes(monkeypatch):
    import sys

    dag, tasks = _load_dag(monkeypatch)
    assert dag.dag.kwargs["dag_id"] == "adpredict_nightly"
    gate, predict = tasks["parity_gate"], tasks["predict"]
    assert gate.downstream == [predict] and predict.kwargs["retries"] == 0 and gate.kwargs["retries"] > 0
    assert predict.kwargs["py_file"].endswith("flex_template/launch.py")
    assert predict.kwargs["pipeline_options"]["run_date"] == "{{ ds }}"
    assert predict.kwargs["pipeline_options"]["drift_baseline"] == (
        "gs://my-bucket/predictions/dt={{ macros.ds_add(ds, -1) }}"
    )  # the data-quality gate's drift against the previous date
    exceptions = sys.modules["airflow.exceptions"]
    for code in (EXIT_OK, EXIT_SKIPPED):  # done: the task succeeds
        dag.run_adpredict([sys.executable, "-c", f"raise SystemExit({code})"])
    for code in (EXIT_INPUT_NOT_READY, EXIT_FAILED):  # retried
        with pytest.raises(exceptions.AirflowException) as raised:
            dag.run_adpredict([sys.executable, "-c", f"raise SystemExit({code})"])
        assert not isinstance(raised.value, exceptions.AirflowFailException), code
    # Failed at once, no retries: a person must look (a wrong config, a gate, a blocked night).
    for code in (EXIT_USAGE, EXIT_ERROR_RATE, EXIT_RECORDS_LOST, EXIT_GATE, EXIT_BLOCKED):
        with pytest.raises(exceptions.AirflowFailException, match=f"exited {code} "):
            dag.run_adpredict([sys.executable, "-c", f"raise SystemExit({code})"])


def test_a_night_over_the_error_threshold_fails_the_launcher_and_the_dags_predict_task(
    trained_ads, tmp_path, monkeypatch
):
    """flex_template/launch.py always adds --no_wait_until_finish; the pipeline itself fails
    when its run failed, so the launcher exits non-zero on the DirectRunner, and the command
    Beam's Airflow operator runs (interpreter, py_file, --key=value options) turns the task red."""
    import subprocess
    import sys

    lines = open(trained_ads["data"]).read().splitlines()[:100]
    night = tmp_path / "ads" / "dt=2026-12-03"
    night.mkdir(parents=True)
    (night / "part-0.jsonl").write_text("\n".join(lines + ['{"id": "no-fields"}'] * 10) + "\n")
    dag, tasks = _load_dag(
        monkeypatch,
        model_dir=trained_ads["model"],
        input=str(tmp_path / "ads" / "dt={date}" / "*.jsonl"),
        output_dir=str(tmp_path / "out" / "dt={date}"),
    )
    operator = tasks["predict"].kwargs
    options = {  # as Airflow renders them for the DAG run of 2026-12-03
        key: value.replace("{{ ds }}", "2026-12-03").replace(dag.PREVIOUS_DS, "2026-12-02")
        for key, value in operator["pipeline_options"].items()
    }
    command = [sys.executable, operator["py_file"], f"--runner={operator['runner']}"]
    command += [f"--{key}={value}" for key, value in options.items()]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    out = tmp_path / "out" / "dt=2026-12-03"
    assert done.returncode == EXIT_ERROR_RATE, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("_", "run"))) == ["run.json"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"]["errors"] == 10 and manifest["status"].startswith("failed")
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("adpredict predict: run failed: 10 of 110 records failed (9.09%)"), last
    assert "Traceback" not in done.stderr


def test_deploy_files_and_the_readme_give_the_run_contracts_exit_codes():
    summary = exit_code_summary()
    assert f"# Exit codes: {summary}" in open(os.path.join(DEPLOY, "crontab")).read()
    unit = open(os.path.join(DEPLOY, "adpredict-nightly.service")).read()
    assert f"# Exit codes: {summary}" in unit
    service = configparser.ConfigParser(strict=False)
    service.read(os.path.join(DEPLOY, "adpredict-nightly.service"))
    not_retried = sorted(
        e.code for e in EXIT_CODES if e.code not in SUCCESS_EXIT_CODES and e.code not in RETRYABLE_EXIT_CODES
    )
    assert service["Service"]["RestartPreventExitStatus"].split() == [str(c) for c in not_retried]
    assert service["Service"]["Restart"] == "on-failure"
    assert exit_code_table() in open(os.path.join(ROOT, "docs", "nightly.md")).read()


def test_the_nightly_docs_document_every_recipe():
    readme = open(os.path.join(ROOT, "docs", "nightly.md")).read()
    for needle in ("deploy/crontab", "adpredict-nightly.timer", "cloud_scheduler_predict.json", "airflow_dag.py",
                   "gcloud scheduler jobs create http"):  # fmt: skip
        assert needle in readme, needle
    assert yaml.safe_load(open(os.path.join(DEPLOY, "nightly.example.yaml")))["timezone"]
