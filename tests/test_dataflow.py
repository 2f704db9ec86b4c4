"""run_dataflow.sh and offline Dataflow dry runs: the real job request, built with no network."""

import json
import os
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"PROJECT": "my-project", "REGION": "europe-west1", "TEMP_LOCATION": "gs://my-bucket/tmp"}


def run_script(args, tmp_path, **settings):
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("GPU_")}
    env.update(
        PYTHON=os.path.join(ROOT, ".venv", "bin", "python"), DRY_RUN_DIR=str(tmp_path / "dry"), **settings
    )
    return subprocess.run(
        [os.path.join(ROOT, "run_dataflow.sh"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def dry_run(job, args, tmp_path, **settings):
    done = run_script(
        ["--dry-run", job, *args], tmp_path, **SETTINGS, JOB_NAME=f"adpredict-{job}-test", **settings
    )
    assert done.returncode == 0, done.stderr[-3000:]
    job_file = tmp_path / "dry" / f"adpredict-{job}-test.json"
    request = json.loads(job_file.read_text())
    staging = tmp_path / "dry" / "staged" / "my-bucket" / "tmp" / "staging"
    (run_dir,) = staging.iterdir()
    return request, run_dir


def transform_names(run_dir) -> set[str]:
    from apache_beam.portability.api import beam_runner_api_pb2

    pipeline = beam_runner_api_pb2.Pipeline.FromString((run_dir / "pipeline.pb").read_bytes())
    return {t.unique_name for t in pipeline.components.transforms.values()}


def test_missing_settings_are_named_and_nothing_runs(tmp_path):
    done = run_script(["predict", "--model_dir", "gs://my-bucket/model"], tmp_path, REGION="europe-west1")
    assert done.returncode == 2
    assert "set PROJECT TEMP_LOCATION" in done.stderr and ".env.template" in done.stderr
    done = run_script(["predict"], tmp_path, **{**SETTINGS, "TEMP_LOCATION": "/tmp/local"})
    assert done.returncode == 2 and "TEMP_LOCATION must be a gs:// folder" in done.stderr
    assert run_script(["score"], tmp_path, **SETTINGS).returncode == 2


def test_predict_dry_run_builds_the_job_offline(trained_ads, tmp_path):
    request, run_dir = dry_run(
        "predict",
        ["--model_dir", trained_ads["model"], "--input", "gs://my-bucket/ads/dt=2026-11-26/*.jsonl",
         "--output_dir", "gs://my-bucket/predictions/dt=2026-11-26", "--output_format", "parquet"],
        tmp_path,
        MACHINE_TYPE="n1-highmem-8", MAX_WORKERS="7", SERVICE_ACCOUNT_EMAIL="sa@my-project.iam.gserviceaccount.com",
    )  # fmt: skip
    assert request["name"] == "adpredict-predict-test" and request["type"] == "JOB_TYPE_BATCH"
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert (options["project"], options["region"]) == ("my-project", "europe-west1")
    assert (options["machine_type"], options["max_num_workers"]) == ("n1-highmem-8", 7)
    assert options["service_account_email"] == "sa@my-project.iam.gserviceaccount.com"
    assert (
        options["output_dir"] == "gs://my-bucket/predictions/dt=2026-11-26"
        and options["setup_file"] == "./setup.py"
    )
    packages = {p["name"]: p["location"] for p in request["environment"]["workerPools"][0]["packages"]}
    assert packages["workflow.tar.gz"].startswith("storage.googleapis.com/my-bucket/tmp/staging/")
    with tarfile.open(run_dir / "workflow.tar.gz") as sdist:  # the workers' install of this package
        names = sdist.getnames()
    assert any(n.endswith("transforms/schemas/ads.yaml") for n in names)
    assert any(n.endswith("pipeline/io/bigquery.py") for n in names)
    steps = transform_names(run_dir)
    for step in ("ReadAdRecords", "RunInference", "WritePredictions", "WriteErrors", "FinalizeRun"):
        assert step in steps, sorted(steps)


def test_analyze_dry_run_builds_the_job_offline(tmp_path):
    request, run_dir = dry_run(
        "analyze", ["--schema", "ads", "--input", "gs://my-bucket/train/*.jsonl", "--output_dir",
                    "gs://my-bucket/transform"], tmp_path, GPU_TYPE="nvidia-tesla-t4", GPU_COUNT="2",
    )  # fmt: skip
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert options["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver"
    ]
    assert "no_use_multiple_sdk_containers" in options["experiments"]
    steps = transform_names(run_dir)
    assert {"ReadAdRecords", "AnalyzeDataset", "WriteTransformFn"} <= steps


def test_a_real_dataflow_run_refuses_a_local_model(trained_ads, tmp_path, capsys):
    from pipeline import cli

    argv = ["predict", "--model_dir", trained_ads["model"], "--input", "gs://my-bucket/in/*.jsonl", "--output_dir",
            "gs://my-bucket/out", "--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west1",
            "--temp_location", "gs://my-bucket/tmp"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "is not on gs://" in capsys.readouterr().err


def test_shell_scripts_pass_shellcheck():
    checker = os.path.join(ROOT, ".venv", "bin", "shellcheck")
    done = subprocess.run([checker, "run_dataflow.sh", ".ci/run"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
