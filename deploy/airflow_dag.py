"""Airflow DAG: adpredict every night, with Beam's Python pipeline operator.

Each DAG run scores its logical date (`{{ ds }}`): a gate task runs `adpredict nightly
--parity_only` (the date's input must be there, and the model's transform must match the
tf.Transform artifacts on its records), then Beam's operator runs the predict pipeline
through `flex_template/launch.py` (the Flex Template's entry point) on the runner in
ADPREDICT_RUNNER. catchup=True makes Airflow backfill missed dates in order.

Retries follow adpredict's exit codes (`pipeline/run_contract.py`, loaded from the checkout:
it is standard library only): the gate is retried while the date's input has not arrived
(exit 5) or after a crash (1), and fails at once, without retries, on anything a re-run
cannot fix (a wrong config, a failed gate). The predict task has no retries: once the gate
saw the input, what fails it (error rate, records lost, a corrupt model) needs a person, and
a run that failed ends its pipeline in failure (launch.py exits non-zero, a Dataflow job's
state is FAILED), so the task turns red.

The predict run's data-quality gate (docs/data_quality.md) checks skew against the model's
training profile and drift against the previous date's output directory (`--drift_baseline`;
a date that did not publish is no baseline, and the run's run.json then says drift was not
checked). A gross shift blocks the night: exit 8, nothing published, the task red without
retries. To publish a night a person reviewed, run `adpredict nightly --config CONFIG --date
DS --accept_drift` and mark the predict task successful. Limits other than the defaults go in
`pipeline_options` (e.g. "quality_threshold": ["feature.media=0.1:off"], a repeated flag).

adpredict's stack (tfx-bsl needs google-api-python-client<2) cannot share an environment
with the Google provider the Beam operator needs (>=2), so both tasks run adpredict's own
virtual environment (ADPREDICT_HOME/.venv): the gate as a command, the pipeline through the
operator's `py_interpreter`. Copy this file to the DAGs folder and set the ADPREDICT_*
variables (or edit SETTINGS).
"""

import datetime
import importlib.util
import os
import subprocess
import sys

from airflow.exceptions import AirflowException, AirflowFailException
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, task

HOME = os.environ.get("ADPREDICT_HOME", "/opt/adpredict")
SETTINGS = {
    "config": os.environ.get("ADPREDICT_NIGHTLY_CONFIG", "/etc/adpredict/nightly.yaml"),
    "model_dir": os.environ.get("ADPREDICT_MODEL_DIR", "gs://my-bucket/models/ctr-2026-11"),
    "input": os.environ.get("ADPREDICT_INPUT", "gs://my-bucket/ads/dt={date}/*.jsonl"),
    "output_dir": os.environ.get("ADPREDICT_OUTPUT_DIR", "gs://my-bucket/predictions/dt={date}"),
    "runner": os.environ.get("ADPREDICT_RUNNER", "DirectRunner"),
}


def _run_contract():
    """adpredict's exit codes, from the one place they are defined."""
    spec = importlib.util.spec_from_file_location(
        "adpredict_run_contract", os.path.join(HOME, "pipeline", "run_contract.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


CONTRACT = _run_contract()

# The day before the DAG run's date, as Airflow renders it in the operator's options.
PREVIOUS_DS = "{{ macros.ds_add(ds, -1) }}"
PREVIOUS_DS_NODASH = "{{ macros.ds_format(macros.ds_add(ds, -1), '%Y-%m-%d', '%Y%m%d') }}"


def previous_output_dir(output_dir: str) -> str | None:
    """The previous date's output directory (the drift baseline), or None when every date
    writes to the same one (no {date} in it: no earlier night to find)."""
    if "{date" not in output_dir:
        return None
    return output_dir.replace("{date_nodash}", PREVIOUS_DS_NODASH).replace("{date}", PREVIOUS_DS)


def run_adpredict(argv: list[str]) -> None:
    """Runs an adpredict command; a failure is retried only when its exit code says a later
    run may succeed."""
    code = subprocess.run(argv, check=False).returncode
    if code in CONTRACT.SUCCESS_EXIT_CODES:
        return
    meaning = {e.code: f"{e.name}: {e.meaning}" for e in CONTRACT.EXIT_CODES}.get(code, "unknown")
    message = f"{' '.join(argv[:2])} exited {code} ({meaning})"
    if code in CONTRACT.RETRYABLE_EXIT_CODES:
        raise AirflowException(message)  # retried after retry_delay
    raise AirflowFailException(message)  # no retries


with DAG(
    dag_id="adpredict_nightly",
    schedule="15 3 * * *",
    start_date=datetime.datetime(2026, 11, 1),
    catchup=True,
    max_active_runs=1,
    tags=["adpredict"],
) as dag:

    @task(task_id="parity_gate", retries=12, retry_delay=datetime.timedelta(minutes=10))
    def gate(ds=None):
        run_adpredict(
            [
                f"{HOME}/.venv/bin/adpredict",
                "nightly",
                "--config",
                SETTINGS["config"],
                "--date",
                ds,
                "--parity_only",
            ]
        )

    predict = BeamRunPythonPipelineOperator(
        task_id="predict",
        py_file=f"{HOME}/flex_template/launch.py",
        py_interpreter=f"{HOME}/.venv/bin/python",
        runner=SETTINGS["runner"],
        pipeline_options={
            "model_dir": SETTINGS["model_dir"],
            "input": SETTINGS["input"],
            "output_dir": SETTINGS["output_dir"],
            "run_date": "{{ ds }}",
            **(
                {"drift_baseline": previous_output_dir(SETTINGS["output_dir"])}
                if previous_output_dir(SETTINGS["output_dir"])
                else {}
            ),
        },
        retries=0,
    )
    gate() >> predict
