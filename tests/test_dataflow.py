"""run_dataflow.sh and offline Dataflow dry runs: the real job request, built with no network."""

import json
import os
import re
import socket
import subprocess
import tarfile
import time

import pytest

from pipeline.run_contract import EXIT_USAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"PROJECT": "my-project", "REGION": "europe-west1", "TEMP_LOCATION": "gs://my-bucket/tmp"}
CPU_IMAGE = "europe-docker.pkg.dev/my-project/adpredict/worker:0.1.0"
GPU_IMAGE = "europe-docker.pkg.dev/my-project/adpredict/worker-gpu:0.1.0"


def run_script(args, tmp_path, cwd=None, **settings):
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("GPU_")}
    for name in ("SDK_CONTAINER_IMAGE", "STORAGE_EMULATOR_HOST", "DRY_RUN", "JOB_NAME"):
        env.pop(name, None)
    env.update(PYTHON=os.path.join(ROOT, ".venv", "bin", "python"), DRY_RUN_DIR=str(tmp_path / "dry"))
    env.update(settings)
    return subprocess.run(
        [os.path.join(ROOT, "run_dataflow.sh"), *args], env=env, capture_output=True, text=True, timeout=300,
        cwd=cwd,
    )  # fmt: skip


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
    # Beam would try to create a default bucket instead (the network, even in a dry run)
    for name, location in [("TEMP_LOCATION", "gs://My_Bucket/tmp"), ("STAGING_LOCATION", "gs://b/staging")]:
        done = run_script(["--dry-run", "predict"], tmp_path, **{**SETTINGS, name: location})
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{name} must name a valid Cloud Storage bucket" in done.stderr and location in done.stderr
    assert not (tmp_path / "dry").exists()
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
    """On the worker image (SDK_CONTAINER_IMAGE): no setup.py install, and no GPU."""
    request, run_dir = dry_run(
        "analyze", ["--schema", "ads", "--input", "gs://my-bucket/train/*.jsonl", "--output_dir",
                    "gs://my-bucket/transform"], tmp_path, SDK_CONTAINER_IMAGE=CPU_IMAGE,
    )  # fmt: skip
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert (options["sdk_container_image"], options["sdk_location"]) == (CPU_IMAGE, "container")
    assert not options.get("setup_file") and not options.get("dataflow_service_options")
    assert "no_use_multiple_sdk_containers" not in options["experiments"]
    assert worker_images(request) == {CPU_IMAGE}
    steps = transform_names(run_dir)
    assert {"ReadAdRecords", "AnalyzeDataset", "WriteTransformFn"} <= steps


def worker_images(request) -> set[str]:
    (pool,) = request["environment"]["workerPools"]
    return {image["containerImage"] for image in pool["sdkHarnessContainerImages"]}


def test_a_gpu_job_without_the_gpu_image_stops_in_one_line(tmp_path):
    """setup.py and the CPU image have no CUDA libraries: TensorFlow would silently run on CPUs."""
    args = ["--dry-run", "predict", "--model_dir", "gs://my-bucket/model"]
    done = run_script(args, tmp_path, **SETTINGS, GPU_TYPE="nvidia-tesla-t4", SDK_CONTAINER_IMAGE=CPU_IMAGE)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "GPU_SDK_CONTAINER_IMAGE" in done.stderr and "docker build --target gpu" in done.stderr
    done = run_script(args, tmp_path, **SETTINGS, GPU_TYPE="nvidia-tesla-t4", GPU_SDK_CONTAINER_IMAGE=GPU_IMAGE,
                      GPU_MISSING="ignore")  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "GPU_MISSING must be require or warn" in done.stderr
    assert not (tmp_path / "dry").exists()  # stopped before the pipeline started


def pipeline_argv(tmp_path, job="predict", **settings) -> list[str]:
    """The arguments run_dataflow.sh gives the pipeline, caught by a stand-in for Python."""
    done, argv = launched(tmp_path, [job, "--output_dir", "gs://my-bucket/out"], **{**SETTINGS, **settings})
    assert done.returncode == 0, done.stderr
    return argv


def launched(tmp_path, args, cwd=None, **settings):
    """(the finished script, the arguments it gave Python: None when it started none)."""
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" > "$ARGV_FILE"\n')
    stub.chmod(0o755)
    argv_file = tmp_path / "argv"
    argv_file.unlink(missing_ok=True)
    done = run_script(args, tmp_path, cwd, **{"PYTHON": str(stub), "ARGV_FILE": str(argv_file), **settings})
    return done, argv_file.read_text().splitlines() if argv_file.exists() else None


def test_a_gpu_job_runs_the_gpu_image_and_asks_the_pipeline_for_a_gpu(tmp_path):
    gpu = {"GPU_TYPE": "nvidia-l4", "GPU_SDK_CONTAINER_IMAGE": GPU_IMAGE, "SDK_CONTAINER_IMAGE": CPU_IMAGE}
    argv = pipeline_argv(tmp_path, **gpu)
    assert argv[:2] == ["-m", "pipeline.predict"]
    flags = " ".join(argv)
    assert f"--sdk_container_image {GPU_IMAGE} --sdk_location container" in flags and CPU_IMAGE not in flags
    assert "--gpu require" in flags and "--setup_file" not in flags
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in argv
    assert "--gpu warn" in " ".join(pipeline_argv(tmp_path, **gpu, GPU_MISSING="warn"))
    flags = " ".join(pipeline_argv(tmp_path, SDK_CONTAINER_IMAGE=CPU_IMAGE, GPU_MISSING="warn"))
    assert "--gpu" not in flags and "worker_accelerator" not in flags and CPU_IMAGE in flags
    # analyze has no --gpu check (predict's option), but its workers run the GPU image too
    flags = " ".join(pipeline_argv(tmp_path, "analyze", **gpu))
    assert f"--sdk_container_image {GPU_IMAGE}" in flags and "--gpu" not in flags


def test_predict_gpu_dry_run_puts_the_gpu_image_and_the_driver_in_the_job(trained_ads, tmp_path):
    """Needs the pipeline's --gpu flag (require: a worker whose TensorFlow sees no GPU fails)."""
    request, run_dir = dry_run(
        "predict",
        ["--model_dir", trained_ads["model"], "--input", "gs://my-bucket/ads/*.jsonl", "--output_dir",
         "gs://my-bucket/predictions"],
        tmp_path, GPU_TYPE="nvidia-tesla-t4", GPU_COUNT="2", GPU_SDK_CONTAINER_IMAGE=GPU_IMAGE,
        SDK_CONTAINER_IMAGE=CPU_IMAGE,
    )  # fmt: skip
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert options["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver"
    ]
    assert "no_use_multiple_sdk_containers" in options["experiments"]
    assert (options["sdk_container_image"], options["sdk_location"]) == (GPU_IMAGE, "container")
    assert worker_images(request) == {GPU_IMAGE} and not options.get("setup_file")
    assert options["gpu"] == "require"
    packages = {p["name"] for p in request["environment"]["workerPools"][0]["packages"]}
    assert "workflow.tar.gz" not in packages  # nothing installed from setup.py on a GPU worker
    assert "RunInference" in transform_names(run_dir)


def test_a_real_dataflow_run_refuses_a_local_model(trained_ads, tmp_path, capsys):
    from pipeline import cli

    argv = ["predict", "--model_dir", trained_ads["model"], "--input", "gs://my-bucket/in/*.jsonl", "--output_dir",
            "gs://my-bucket/out", "--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west1",
            "--temp_location", "gs://my-bucket/tmp"]  # fmt: skip
    assert cli.main(argv) == EXIT_USAGE
    assert "is not on gs://" in capsys.readouterr().err


def script_settings() -> set[str]:
    """The environment variables run_dataflow.sh reads: the required ones, and each it reads
    with a default or an emptiness check (${NAME:-...}, ${NAME-...})."""
    with open(os.path.join(ROOT, "run_dataflow.sh"), encoding="utf-8") as f:
        text = f.read()
    return {"PROJECT", "REGION", "TEMP_LOCATION"} | set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):?-", text))


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--dry-run", "--help", "predict"]])
def test_help_shows_the_usage_every_setting_and_examples(args, tmp_path):
    done, argv = launched(tmp_path, args)  # no PROJECT, REGION, TEMP_LOCATION needed
    assert done.returncode == 0 and argv is None and done.stderr == "", done.stderr
    assert done.stdout.startswith("usage: run_dataflow.sh [--dry-run] analyze|predict [pipeline flags...]\n")
    assert "--dry-run, --dry_run" in done.stdout
    settings = script_settings()
    assert {"GPU_MISSING", "DRY_RUN_DIR", "JOB_NAME", "PYTHON", "STORAGE_EMULATOR_HOST"} <= settings
    for name in settings:
        assert re.search(rf"^  (\S+, )?{name}\b", done.stdout, re.M), f"{name} missing from --help"
    examples = [line for line in done.stdout.splitlines() if line.startswith("  ./run_dataflow.sh ")]
    assert [e.split()[1:3] for e in examples] == [
        ["predict", "--model_dir"],
        ["analyze", "--schema"],
        ["--dry-run", "predict"],
    ]


def test_the_pipelines_own_help_needs_no_settings(tmp_path):
    done, argv = launched(tmp_path, ["analyze", "--help"])
    assert done.returncode == 0, done.stderr
    assert argv == ["-m", "pipeline.analyze", "--help"]
    assert "run_dataflow.sh --help" in done.stderr


@pytest.mark.parametrize(
    "args, named",
    [
        (["--dryrun", "predict"], "'--dryrun'"),
        (["--input", "data.jsonl", "predict"], "'--input'"),  # a pipeline flag before the job
        (["--dry_run=yes", "predict"], "'yes'"),
        ([], "give the job"),
        (["--dry-run", "score"], "unknown job 'score'"),
    ],
)
def test_a_wrong_option_or_job_stops_in_one_line_and_runs_nothing(args, named, tmp_path):
    done, argv = launched(tmp_path, args, **SETTINGS)
    assert done.returncode == 2 and argv is None, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and named in done.stderr, done.stderr
    assert done.stderr.startswith("run_dataflow.sh: ")
    assert "run_dataflow.sh --help" in done.stderr or "True or False" in done.stderr


def test_a_missing_python_is_named_in_one_line(tmp_path):
    done = run_script(["predict"], tmp_path, **SETTINGS, PYTHON="venv/bin/python")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"no Python at '{os.getcwd()}/venv/bin/python': run make" in done.stderr  # the caller's path


@pytest.mark.parametrize(
    "args",
    [
        ["--dry-run", "predict"],
        ["--dry_run", "predict"],
        ["predict", "--dry_run"],  # after the job too: Beam's --dry_run takes a value
        ["predict", "--dry_run=True"],  # Beam's spelling: the script's whole dry run, not half of it
    ],
)
def test_both_spellings_of_dry_run_make_the_offline_dry_run(args, tmp_path):
    """A local model: nothing on gs:// is read, so unreachable Cloud Storage does not matter."""
    done, argv = launched(
        tmp_path, [*args, "--model_dir", str(tmp_path), "--output_dir", "gs://my-bucket/out"],
        **SETTINGS, JOB_NAME="adpredict-predict-test", STORAGE_EMULATOR_HOST="http://127.0.0.1:9",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_file = str(tmp_path / "dry" / "adpredict-predict-test.json")
    assert argv.count("--dry_run=True") == 1 and "--dry_run" not in argv and "--dry-run" not in argv
    assert argv[argv.index("--dataflow_job_file") + 1] == job_file and "--no_auth" in argv
    assert argv[-4:] == ["--model_dir", str(tmp_path), "--output_dir", "gs://my-bucket/out"]
    assert f"job request in {job_file}, nothing submitted" in done.stderr


def test_relative_paths_are_the_callers_not_the_repositorys(tmp_path):
    from transforms.schema import BUILTIN_SCHEMAS

    caller = tmp_path / "caller"
    caller.mkdir()
    args = [
        "--dry-run", "predict", "--model_dir", "models/ads", "--input", "data/*.jsonl", "--input=./more/b.csv",
        "--input", "gs://my-bucket/in/*.jsonl", "--input", "bq://my-project.ads.today", "--output_dir=out",
        "--input_schema", "../schemas/ads.yaml", "--drift_baseline", "/runs/yesterday", "--batch_size", "64",
        "--requirements_file", "reqs.txt",
    ]  # fmt: skip
    done, argv = launched(tmp_path, args, cwd=caller, **SETTINGS, JOB_NAME="job", DRY_RUN_DIR="dry")
    assert done.returncode == 0, done.stderr
    given = argv[argv.index("--model_dir") :]
    assert given == [
        "--model_dir", f"{caller}/models/ads", "--input", f"{caller}/data/*.jsonl", f"--input={caller}/more/b.csv",
        "--input", "gs://my-bucket/in/*.jsonl", "--input", "bq://my-project.ads.today", f"--output_dir={caller}/out",
        "--input_schema", f"{caller}/../schemas/ads.yaml", "--drift_baseline", "/runs/yesterday",
        "--batch_size", "64", "--requirements_file", f"{caller}/reqs.txt",
    ]  # fmt: skip
    assert argv[argv.index("--dataflow_job_file") + 1] == f"{caller}/dry/job.json"
    assert argv[argv.index("--setup_file") + 1] == "./setup.py"  # the repository's, where Python runs
    # analyze's --schema: a file is the caller's, a built-in name stays a name
    for schema, expected in [
        ("my_schema.yaml", f"{caller}/my_schema.yaml"),
        *((n, n) for n in BUILTIN_SCHEMAS),
    ]:
        done, argv = launched(tmp_path, ["analyze", "--schema", schema], cwd=caller, **SETTINGS)
        assert done.returncode == 0 and argv[-2:] == ["--schema", expected], (schema, argv)


def test_a_dry_run_from_another_directory_builds_the_job_from_the_callers_files(trained_ads, tmp_path):
    work = trained_ads["work"]
    model, data = (os.path.relpath(trained_ads[name], work) for name in ("model", "data"))
    done = run_script(
        ["--dry_run", "predict", "--model_dir", model, "--input", data, "--output_dir", "gs://my-bucket/out"],
        tmp_path, cwd=work, **SETTINGS, JOB_NAME="adpredict-predict-test",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    request = json.loads((tmp_path / "dry" / "adpredict-predict-test.json").read_text())
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert (options["model_dir"], options["input"]) == (str(trained_ads["model"]), [str(trained_ads["data"])])


def test_a_dry_run_stops_at_once_when_cloud_storage_refuses(tmp_path):
    args = ["--dry-run", "predict", "--model_dir", "gs://my-bucket/models/ads/", "--input",
            "gs://my-bucket/in/*.jsonl", "--output_dir", "gs://my-bucket/out"]  # fmt: skip
    started = time.monotonic()
    done = run_script(args, tmp_path, **SETTINGS, STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
    assert time.monotonic() - started < 20
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        "run_dataflow.sh: dry run: cannot read --model_dir gs://my-bucket/models/ads/ "
    )
    assert "Cloud Storage at http://127.0.0.1:9 did not answer" in done.stderr
    assert (
        "copy the model here (gsutil -m cp -r gs://my-bucket/models/ads .) and pass --model_dir ./ads"
        in done.stderr
    )
    assert not (tmp_path / "dry").exists()  # the pipeline never started


def test_a_dry_run_waits_seconds_not_minutes_for_cloud_storage_that_does_not_answer(tmp_path):
    """A server that takes the connection and never answers (a black hole: how a firewall or
    a dead proxy looks) held a dry run for minutes of the clients' retries."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        done = run_script(["--dry-run", "predict", "--model_dir", "gs://my-bucket/model", "--output_dir",
                           "gs://my-bucket/out"], tmp_path, **SETTINGS,
                          STORAGE_EMULATOR_HOST=f"127.0.0.1:{port}")  # fmt: skip
        took = time.monotonic() - started
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"Cloud Storage at http://127.0.0.1:{port} did not answer (no answer within 5 s)" in done.stderr
    assert 4 < took < 20, took


def test_shell_scripts_pass_shellcheck():
    checker = os.path.join(ROOT, ".venv", "bin", "shellcheck")
    done = subprocess.run([checker, "run_dataflow.sh", ".ci/run"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_worker_image_versions_agree_with_the_pinned_stack():
    import re
    import sys

    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    setup = open(os.path.join(ROOT, "setup.py")).read()
    lock = open(os.path.join(ROOT, "requirements.lock")).read()
    assert f'"apache-beam[gcp]=={args["BEAM_VERSION"]}"' in setup
    assert f"apache-beam=={args['BEAM_VERSION']}\n" in lock
    assert args["PYTHON_VERSION"] == f"{sys.version_info.major}.{sys.version_info.minor}"  # CI's Python
    launcher_python = args["PYTHON_VERSION"].replace(".", "")
    assert f"python{launcher_python}-template-launcher-base" in dockerfile
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in dockerfile
    # Workers read and write s3:// and azfs:// with the clients the tests ran against.
    assert "pip install --no-cache-dir -r requirements.lock -r requirements-clouds.lock" in dockerfile
    assert not set(lock_pins("requirements-clouds.lock")) & set(lock_pins("requirements.lock"))


def dockerfile_stages() -> list[tuple[str, str, str]]:
    """(base, name, instructions) of each stage of Dockerfile, in order."""
    import re

    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    dockerfile = re.sub(r"^\s*#.*\n", "", dockerfile, flags=re.M).replace("\\\n", " ")
    parts = re.split(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", dockerfile, flags=re.M | re.I)
    return [(parts[i], parts[i + 1] or "", parts[i + 2].strip()) for i in range(1, len(parts), 3)]


def lock_pins(name: str) -> dict[str, str]:
    lines = open(os.path.join(ROOT, name)).read().splitlines()
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))


def test_gpu_worker_image_versions_agree_with_the_pinned_stack():
    """Dockerfile's gpu target: the CPU worker image (Beam's SDK image at the pinned Beam and
    Python, checked above) plus the CUDA wheels of tensorflow[and-cuda] at the locked TensorFlow."""
    import re

    stages = {name: (base, body) for base, name, body in dockerfile_stages()}
    default_base, _, default_body = dockerfile_stages()[-1]
    assert (default_base, default_body) == ("cpu", "")  # no --target: the CPU image, unchanged
    assert stages["cpu"][0] == "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}"
    assert "requirements-gpu.lock" not in stages["cpu"][1] and "nvidia" not in stages["cpu"][1]
    base, gpu = stages["gpu"]
    assert base == "cpu"  # so its Beam, Python, stack and package are the worker image's
    assert "COPY requirements-gpu.lock" in gpu
    assert "pip install --no-cache-dir -r requirements-gpu.lock -c requirements.lock" in gpu
    assert "LD_LIBRARY_PATH=/usr/local/nvidia/lib64" in gpu  # where Dataflow mounts the driver
    stack, cuda = lock_pins("requirements.lock"), lock_pins("requirements-gpu.lock")
    assert cuda.pop("tensorflow[and-cuda]") == stack["tensorflow"]
    assert all(name.startswith("nvidia-") and name.endswith("-cu12") for name in cuda), cuda
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"} <= set(cuda)
    assert all(re.fullmatch(r"\d+(\.\d+)+", version) for version in cuda.values()), cuda
    assert not set(cuda) & set(stack)  # the CPU image and setup.py installs carry no CUDA


def pipeline_option_names(job: str) -> set[str]:
    import argparse

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import options as opts

    parser = argparse.ArgumentParser(add_help=False)
    job_options = opts.PredictOptions if job == "predict" else opts.AnalyzeOptions
    for cls in (opts.RecordIOOptions, opts.BigQueryOptions, job_options):
        cls._add_argparse_args(parser)
    names = {action.dest for action in parser._actions}
    assert names <= set(PipelineOptions([]).get_all_options())  # Beam parses them all
    return names


@pytest.mark.parametrize(
    ("job", "required"), [("predict", {"model_dir", "output_dir"}), ("analyze", {"output_dir"})]
)
def test_flex_template_metadata_matches_the_pipeline_options(job, required):
    import re

    metadata = json.loads(open(os.path.join(ROOT, "flex_template", f"{job}_metadata.json")).read())
    parameters = {p["name"]: p for p in metadata["parameters"]}
    assert set(parameters) <= pipeline_option_names(job)  # every parameter is a real option
    assert {name for name, p in parameters.items() if not p["isOptional"]} == required
    assert {"input", "input_query"} <= set(parameters)  # one of them is needed: checked by the pipeline
    for parameter in parameters.values():
        assert parameter["helpText"] and parameter["label"] and parameter["regexes"]
        for regex in parameter["regexes"]:
            re.compile(regex)
    good = {"model_dir": "gs://b/model", "input": "bq://p.d.t", "output_dir": "gs://b/out/dt=2026-11-26",
            "output_table": "bq://my-project.ads.predictions", "passthrough_fields": "media,campaign:int",
            "max_error_rate": "0.05", "csv_columns": "id,age"}  # fmt: skip
    for name, value in good.items():
        if name in parameters:
            assert re.match(parameters[name]["regexes"][0], value), (name, value)
    assert not re.match(parameters["output_dir"]["regexes"][0], "/local/out")


def test_flex_launcher_submits_and_returns_while_the_pipeline_writes_its_own_end(trained_ads, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "flex_template", "launch.py"),
         f"--model_dir={trained_ads['model']}", f"--input={trained_ads['data']}", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"submitted": true' in done.stdout
    manifest = json.loads((out / "run.json").read_text())  # written by the pipeline, not the launcher
    assert manifest["counts"]["predictions"] == 600 and (out / "_SUCCESS").exists()


def test_the_sdist_installs_and_imports_the_pipelines_outside_the_source_tree(tmp_path):
    """What Dataflow workers do with --setup_file: build the sdist, pip install it."""
    import glob
    import sys
    import sysconfig

    python = os.path.join(ROOT, ".venv", "bin", "python")
    subprocess.run([python, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    (sdist,) = glob.glob(str(tmp_path / "dist" / "adpredict-*.tar.gz"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The pinned stack comes from the project's venv (a worker has it from requirements);
    # adpredict itself only from the sdist.
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stack = sysconfig.get_paths()["purelib"]
    with open(os.path.join(site, "stack.pth"), "w") as f:
        f.write(stack + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation", sdist],
                   check=True, capture_output=True)  # fmt: skip
    probe = (
        "import sys; sys.path = [p for p in sys.path if not p.endswith('/main') and p != '']\n"
        "import pipeline.predict, pipeline.analyze, pipeline.io.bigquery, pipeline.trainer.model\n"
        "from transforms.schema import load_schema\n"
        "print(pipeline.predict.__file__); print(len(load_schema('ads').features), len(load_schema('criteo').features))\n"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    module_path, counts = done.stdout.strip().splitlines()[-2:]
    assert module_path.startswith(site) and counts == "7 39"
    # Beside a user's own code, the distribution adds the two names the layout requires.
    (top_level,) = glob.glob(os.path.join(site, "adpredict-*.dist-info", "top_level.txt"))
    assert open(top_level).read().split() == ["pipeline", "transforms"]


def test_a_job_not_waited_for_says_where_to_follow_it(capsys):
    """What a launcher that returns at once (Flex Template) reports: the job, and its
    Dataflow console page from the job id, region and project."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners.launch import launch

    class Submitted:
        state = "RUNNING"

        def job_id(self):
            return "2026-12-04_01_02_03-123"

    class Pipeline:
        def run(self):
            return Submitted()

    flags = [
        "--runner",
        "DataflowRunner",
        "--no_wait_until_finish",
        "--region",
        "europe-west1",
        "--project",
        "p",
    ]
    summary = launch(Pipeline(), PipelineOptions(flags))
    assert summary["submitted"] and summary["job_id"] == "2026-12-04_01_02_03-123"
    assert summary["console_url"] == (
        "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-12-04_01_02_03-123?project=p"
    )
    assert '"submitted": true' in capsys.readouterr().out
