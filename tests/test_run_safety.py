"""A run's outputs appear all at once at its end, and one output directory takes one run at a time.

The runs that must be caught in the middle run in a subprocess whose pipeline pauses at the
start of its last step (FinalizeRun): every sink has finished, nothing is published yet.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline import cli, predict
from pipeline.run.lock import OutputDirLocked, acquire_run_lock, lock_path
from pipeline.run_contract import EXIT_ERROR_RATE, EXIT_FAILED, EXIT_USAGE, RUN_LOCK, STAGING_DIR
from pipeline.sampledata.generate import generate_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 200  # plus one broken line: one error, under the default 1% threshold
RESULTS = ("prediction.results-*", "errors-*", "prediction.errors_stats")

# predict, with the pipeline's last step paused until the file argv[2] exists (or 300 s pass).
PAUSED_PREDICT = """
import os, sys, time
from pipeline import predict
from pipeline.run import finalize as last_step
ready, go = sys.argv[1], sys.argv[2]
finalize = last_step._FinishRunFn.process
def paused(self, element, *side_inputs, **named_side_inputs):
    open(ready, "w").close()
    deadline = time.monotonic() + 300
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield from finalize(self, element, *side_inputs, **named_side_inputs)
last_step._FinishRunFn.process = paused
sys.exit(predict.main(sys.argv[3:]))
"""


@pytest.fixture()
def records(tmp_path):
    path = tmp_path / "in" / "ads.jsonl"
    generate_file(str(path), RECORDS, seed=3, first_id=70_000)
    with open(path, "a") as f:
        f.write('{"id": "broken", "age": \n')
    return str(path)


def predict_argv(trained_ads, records, out, *flags):
    return ["--model_dir", trained_ads["model"], "--input", records, "--output_dir", str(out), *flags]


def start_paused(argv, tmp_path):
    """A predict subprocess; returns it once its pipeline is paused before FinalizeRun."""
    ready, go = tmp_path / "finalizing", tmp_path / "go"
    with open(tmp_path / "paused-run.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, "-c", PAUSED_PREDICT, str(ready), str(go), *argv],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 240
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(
                f"the run never reached FinalizeRun:\n{(tmp_path / 'paused-run.log').read_text()}"
            )
        time.sleep(0.05)
    process.go = go
    return process


def visible(out) -> list[str]:
    return sorted(os.path.basename(p) for pattern in RESULTS for p in glob.glob(str(out / pattern)))


def lines(out, prefix) -> list[dict]:
    return [json.loads(line) for path in glob.glob(str(out / f"{prefix}-*-of-*")) for line in open(path)]


def assert_complete(out, manifest):
    """Published, counted, and nothing of the run's machinery left behind."""
    counts = manifest["counts"]
    assert (counts["read"], counts["predictions"], counts["errors"]) == (RECORDS + 1, RECORDS, 1)
    keys = [row["key"] for row in lines(out, "prediction.results")]
    assert len(keys) == len(set(keys)) == RECORDS
    assert len(lines(out, "errors")) == 1
    assert json.loads((out / "prediction.errors_stats").read_text())["errors"] == 1
    assert (out / "_SUCCESS").exists() and manifest["files_published"] == 2
    assert not (out / STAGING_DIR).exists() and not (out / RUN_LOCK).exists()
    assert not glob.glob(str(out / "beam-temp-*"))


def test_a_run_killed_after_its_writes_leaves_nothing_that_looks_like_results(trained_ads, records, tmp_path):
    out = tmp_path / "out"
    process = start_paused(predict_argv(trained_ads, records, out), tmp_path)
    try:
        assert visible(out) == [], "shards visible before the run's last step"
        staged = sorted(os.listdir(out / STAGING_DIR))
        assert "prediction.results-00000-of-00001" in staged and "errors-00000-of-00001" in staged
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert visible(out) == [] and not (out / "_SUCCESS").exists()

    # The re-run takes over the dead run's lock and clears its staging folder.
    assert_complete(out, predict.run(predict_argv(trained_ads, records, out)))


def test_a_second_run_into_the_same_output_dir_exits_2_and_the_first_finishes(
    trained_ads, records, tmp_path, capsys
):
    out = tmp_path / "out"
    first = start_paused(predict_argv(trained_ads, records, out), tmp_path)
    try:
        staged = sorted(os.listdir(out / STAGING_DIR))
        code = cli.main(["predict", *predict_argv(trained_ads, records, out)])
        err = capsys.readouterr().err.strip()
        assert code == EXIT_USAGE and len(err.splitlines()) == 1, err
        assert f"lock file {out / RUN_LOCK}" in err and f"pid {first.pid}" in err and "--force_unlock" in err
        assert sorted(os.listdir(out / STAGING_DIR)) == staged  # the second run touched nothing
        first.go.touch()
        assert first.wait(120) == 0, (tmp_path / "paused-run.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    assert_complete(out, json.loads((out / "run.json").read_text()))


def write_lock(out, **holder):
    out.mkdir(parents=True, exist_ok=True)
    holder = {"run_id": "0123abcd", "host": socket.gethostname(), "in_process": True, **holder}
    (out / RUN_LOCK).write_text(json.dumps(holder))


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(trained_ads, records, tmp_path, caplog):
    out = tmp_path / "out"
    write_lock(out, pid=dead_pid())
    (out / STAGING_DIR / "beam-temp-prediction.results-0a1b").mkdir(parents=True)  # the killed run's writes
    (out / STAGING_DIR / "prediction.results-00000-of-00002").write_text('{"key": "stale"}\n')
    manifest = predict.run(predict_argv(trained_ads, records, out))
    assert_complete(out, manifest)
    assert any("taking over" in r.getMessage() and "run 0123abcd" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "holder",
    [
        {"host": "another-host", "pid": 1},  # its pid means nothing here
        {"pid": os.getppid()},  # alive on this host
        {"pid": 1, "in_process": False},  # a Dataflow launcher: the job outlives it
        None,  # unreadable
    ],
    ids=["other_host", "live_pid", "remote_job", "garbled"],
)
def test_a_lock_that_may_be_live_stops_the_run_naming_the_file(
    holder, trained_ads, records, tmp_path, capsys
):
    out = tmp_path / "out"
    if holder is None:
        out.mkdir()
        (out / RUN_LOCK).write_text("{not json")
    else:
        write_lock(out, **holder)
    previous = out / "prediction.results-00000-of-00001"
    previous.write_text('{"key": "from the run holding the lock"}\n')
    code, err = cli.main(["predict", *predict_argv(trained_ads, records, out)]), capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert f"lock file {out / RUN_LOCK}" in err and f"delete {out / RUN_LOCK}" in err
    assert previous.exists() and (out / RUN_LOCK).exists()  # nothing touched


def test_force_unlock_replaces_a_live_lock(tmp_path, caplog):
    out = tmp_path / "out"
    write_lock(out, host="another-host", pid=1)
    with pytest.raises(OutputDirLocked):
        acquire_run_lock(str(out), "mine", in_process=True)
    holder = acquire_run_lock(str(out), "mine", in_process=True, force=True)
    assert json.loads((out / RUN_LOCK).read_text()) == holder and holder["run_id"] == "mine"
    assert any("--force_unlock: removing" in r.getMessage() for r in caplog.records)


def test_a_run_that_fails_before_its_last_step_removes_its_lock(trained_ads, records, tmp_path, monkeypatch):
    def crashes(pipeline, options):
        assert os.path.exists(lock_path(str(tmp_path / "out")))
        raise RuntimeError("worker lost")

    from pipeline.runners import launch

    monkeypatch.setattr(launch, "launch", crashes)
    with pytest.raises(RuntimeError, match="worker lost"):
        predict.run(predict_argv(trained_ads, records, tmp_path / "out"))
    assert not (tmp_path / "out" / RUN_LOCK).exists()


def test_a_failed_run_publishes_its_errors_and_removes_its_lock(trained_ads, records, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["predict", *predict_argv(trained_ads, records, out, "--max_error_rate", "0")])
    assert code == EXIT_ERROR_RATE
    assert visible(out) == [
        "errors-00000-of-00001",
        "prediction.errors_stats",
        "prediction.results-00000-of-00001",
    ]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"].startswith("failed") and not (out / "_SUCCESS").exists()
    assert not (out / STAGING_DIR).exists() and not (out / RUN_LOCK).exists()


def test_cloud_storage_lock_staging_and_publish(gcs_emulator, trained_ads, records, capsys):
    from apache_beam.io.filesystems import FileSystems

    out = f"{gcs_emulator}/run-safety/out"
    lock = f"{out}/{RUN_LOCK}"
    argv = ["predict", *predict_argv(trained_ads, records, out, "--no_auth")]

    def put(path, text):
        with FileSystems.create(path, compression_type="uncompressed") as f:
            f.write(text.encode())

    def names():
        return sorted(
            m.path.removeprefix(out + "/") for m in FileSystems.match([f"{out}/**"])[0].metadata_list
        )

    put(lock, json.dumps({"run_id": "elsewhere", "host": "another-host", "pid": 1, "in_process": True}))
    put(f"{out}/{STAGING_DIR}/prediction.results-00000-of-00001", '{"key": "half-written"}\n')
    code, err = cli.main(argv), capsys.readouterr().err
    assert code == EXIT_USAGE and f"lock file {lock}" in err, err
    assert RUN_LOCK in names()

    dead = {"run_id": "killed", "host": socket.gethostname(), "pid": dead_pid(), "in_process": True}
    put(lock, json.dumps(dead))
    code, err = cli.main(argv), capsys.readouterr().err
    assert code == 0, err
    published = names()
    left = [name for name in published if name.startswith((STAGING_DIR, RUN_LOCK, "beam-temp-"))]
    assert not left, published
    expected = {"prediction.results-00000-of-00001", "errors-00000-of-00001", "run.json", "_SUCCESS"}
    assert expected <= set(published), published
    with FileSystems.open(f"{out}/run.json") as f:
        counts = json.loads(f.read())["counts"]
    assert (counts["read"], counts["predictions"], counts["errors"]) == (RECORDS + 1, RECORDS, 1)


def force_unlock_is_an_option() -> bool:
    from apache_beam.options.pipeline_options import PipelineOptions

    import pipeline.options  # noqa: F401 - registers the pipeline's options

    return bool(PipelineOptions(["--force_unlock"]).get_all_options().get("force_unlock"))


@pytest.mark.skipif(not force_unlock_is_an_option(), reason="pipeline/options.py has no --force_unlock yet")
def test_the_force_unlock_flag_runs_over_a_lock_held_elsewhere(trained_ads, records, tmp_path):
    out = tmp_path / "out"
    write_lock(out, host="another-host", pid=1)
    assert cli.main(["predict", *predict_argv(trained_ads, records, out, "--force_unlock")]) == 0
    assert_complete(out, json.loads((out / "run.json").read_text()))


def _limited_file_size(limit: int):
    """For a child process: files may grow to `limit` bytes, then a write fails with EFBIG
    ("File too large"), the OS error a full disk gives as ENOSPC, without a disk to fill."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_a_sink_that_cannot_write_is_one_line_naming_the_path_and_nothing_is_published(
    trained_ads, tmp_path, output_format
):
    data = tmp_path / "in" / "ads.jsonl"
    generate_file(str(data), 2_000, seed=5, first_id=80_000)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pipeline.predict", *predict_argv(trained_ads, str(data), out)]
    done = subprocess.run(
        [*argv, "--output_format", output_format],
        capture_output=True,
        text=True,
        preexec_fn=_limited_file_size(16_000),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == EXIT_FAILED, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("adpredict")]
    assert lines == [
        f"adpredict predict: run failed: cannot write {out}/{STAGING_DIR} (step WritePredictions): [Errno 27] File too "
        "large; nothing was published and the staging folder was cleared; free space or fix the permissions, "
        "then run again"
    ], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert os.listdir(out) == []  # no shard, no run.json, no _SUCCESS, no staging, no lock


def test_a_write_error_reported_as_text_by_a_remote_runner_is_recognised(tmp_path):
    from pipeline.run.staging import sink_write_failure

    out = tmp_path / "out"
    (out / STAGING_DIR / "beam-temp-x").mkdir(parents=True)
    remote = RuntimeError(
        "Error message from worker: Traceback ...\nOSError: [Errno 28] No space left on device: "
        "'/var/lib/worker/tmp/part-1' [while running 'WriteErrors/WriteJsonl/Write/WriteImpl/WriteBundles']"
    )
    failure = sink_write_failure(remote, str(out))
    assert str(failure).startswith(
        "cannot write /var/lib/worker/tmp/part-1 (step WriteErrors): [Errno 28] No space left on device; "
        "nothing was published and the staging folder was cleared"
    )
    assert failure.exit_code == EXIT_FAILED and not (out / STAGING_DIR).exists()
    reading = RuntimeError("OSError: [Errno 5] Input/output error [while running 'ReadAdRecords/Read']")
    assert sink_write_failure(reading, str(out)) is None  # not a write: a crash, told as it came
