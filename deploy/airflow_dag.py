"""Airflow DAG: adpredict every night, with Beam's Python pipeline operator.

Each DAG run scores its logical date (`{{ ds }}`): a gate task runs `adpredict nightly
--parity_only` (the model's transform against the tf.Transform artifacts, on that date's
records), then Beam's operator runs the predict pipeline through `flex_template/launch.py`
(the Flex Template's entry point) on the runner in ADPREDICT_RUNNER. The pipeline writes
run.json and _SUCCESS itself; catchup=True makes Airflow backfill missed dates in order.

adpredict's stack (tfx-bsl needs google-api-python-client<2) cannot share an environment
with the Google provider the Beam operator needs (>=2), so both tasks run adpredict's own
virtual environment (ADPREDICT_HOME/.venv): the gate as a command, the pipeline through the
operator's `py_interpreter`. Copy this file to the DAGs folder and set the ADPREDICT_*
variables (or edit SETTINGS).
"""

import datetime
import os

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

HOME = os.environ.get("ADPREDICT_HOME", "/opt/adpredict")
SETTINGS = {
    "config": os.environ.get("ADPREDICT_NIGHTLY_CONFIG", "/etc/adpredict/nightly.yaml"),
    "model_dir": os.environ.get("ADPREDICT_MODEL_DIR", "gs://my-bucket/models/ctr-2026-11"),
    "input": os.environ.get("ADPREDICT_INPUT", "gs://my-bucket/ads/dt={date}/*.jsonl"),
    "output_dir": os.environ.get("ADPREDICT_OUTPUT_DIR", "gs://my-bucket/predictions/dt={date}"),
    "runner": os.environ.get("ADPREDICT_RUNNER", "DirectRunner"),
}

with DAG(
    dag_id="adpredict_nightly",
    schedule="15 3 * * *",
    start_date=datetime.datetime(2026, 11, 1),
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": datetime.timedelta(minutes=10)},
    tags=["adpredict"],
) as dag:
    gate = BashOperator(
        task_id="parity_gate",
        bash_command=f"{HOME}/.venv/bin/adpredict nightly --config {SETTINGS['config']} --date {{{{ ds }}}} --parity_only",
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
        },
    )
    gate >> predict
