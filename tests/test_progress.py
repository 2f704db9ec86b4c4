"""Progress on local runs: the tally, the line, the terminal and log renderings, a real run."""

import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import counters
from pipeline import options as _declares_no_progress  # noqa: F401
from pipeline.runners import progress
from pipeline.sampledata.generate import generate_file

ROOT = Path(__file__).resolve().parent.parent
ADPREDICT = str(Path(sys.executable).parent / "adpredict")
LINE = re.compile(r"read ([\d,]+) · scored ([\d,]+) · errors ([\d,]+) · ([\d,]+) records/s · (\d+:\d\d)")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_tally_adds_from_many_threads_and_resets():
    tally = counters.Tally()

    def work():
        for _ in range(1000):
            tally.add(read=3, scored=2, errors=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.snapshot() == (24000, 16000, 8000)
    tally.reset()
    assert tally.snapshot() == (0, 0, 0)


def test_the_line():
    assert progress.progress_line(1_234_567, 1_230_000, 4_567, 8.1) == (
        "read 1,234,567 · scored 1,230,000 · errors 4,567 · 152,416 records/s · 0:08"
    )
    assert progress.progress_line(0, 0, 0, 0) == "read 0 · scored 0 · errors 0 · 0 records/s · 0:00"
    assert progress.elapsed_text(754) == "12:34" and progress.elapsed_text(3723) == "1:02:03"


def test_a_terminal_gets_one_line_rewritten_in_place_then_a_newline():
    terminal, clock, tally = FakeTerminal(), Clock(), counters.Tally()
    reporter = progress.Reporter(terminal, tally, period=3600, clock=clock)
    assert reporter.tty
    reporter.start()
    tally.add(read=100_000, scored=99_000, errors=10)
    clock.now += 10
    reporter.show()
    tally.reset()  # a narrower line must not leave the end of the wider one behind
    tally.add(read=5)
    reporter.show()
    tally.add(scored=5)
    clock.now += 1
    reporter.stop()
    first = "read 100,000 · scored 99,000 · errors 10 · 10,000 records/s · 0:10"
    second = "read 5 · scored 0 · errors 0 · 0 records/s · 0:10"
    last = "read 5 · scored 5 · errors 0 · 0 records/s · 0:11"
    assert terminal.getvalue() == (
        "\r" + first + "\r" + second + " " * (len(first) - len(second)) + "\r" + last + "\n"
    )
    assert terminal.getvalue().count("\n") == 1


def test_the_reporter_thread_redraws_on_a_terminal_and_logs_otherwise():
    terminal, tally = FakeTerminal(), counters.Tally()
    with progress.Reporter(terminal, tally, period=0.02):
        tally.add(read=7, scored=6, errors=1)
        threading.Event().wait(0.2)
    text = terminal.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n") and text.count("\n") == 1
    assert LINE.search(text.rsplit("\r", 1)[1]).groups()[:3] == ("7", "6", "1")

    log, tally = io.StringIO(), counters.Tally()
    with progress.Reporter(log, tally, period=0.02):
        tally.add(read=7)
        threading.Event().wait(0.2)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith(progress.LOG_PREFIX) for line in lines)
    assert "\r" not in log.getvalue() and LINE.search(lines[-1]).group(1) == "7"


def test_a_short_run_off_a_terminal_prints_nothing():
    log = io.StringIO()
    with progress.Reporter(log, counters.Tally(), period=3600):
        pass
    assert log.getvalue() == ""


def test_the_period_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(progress.PERIOD_ENV, raising=False)
    assert progress.log_period() == 30
    monkeypatch.setenv(progress.PERIOD_ENV, "0.2")
    assert progress.log_period() == 0.2
    monkeypatch.setenv(progress.PERIOD_ENV, "soon")
    assert progress.log_period() == 30


def test_only_runs_in_this_process_get_a_reporter():
    def reporter(*flags):
        return progress.reporter_for(PipelineOptions(list(flags)), io.StringIO())

    assert isinstance(reporter(), progress.Reporter)
    assert isinstance(
        reporter("--runner", "DirectRunner", "--direct_running_mode", "multi_threading"), progress.Reporter
    )
    assert reporter("--direct_running_mode", "multi_processing") is None
    assert reporter("--runner", "DataflowRunner") is None
    assert reporter("--no_progress") is None


def test_every_counter_the_pipeline_declares_has_a_stable_listed_name():
    """Counters are made in one place, `counters.counter`, which refuses a name not listed."""
    made_elsewhere = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "pipeline").rglob("*.py")
        if "Metrics.counter(" in path.read_text() and path.name != "counters.py"
    ]
    assert made_elsewhere == []
    used = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        used |= set(re.findall(r"counters\.counter\(\s*counters\.(\w+)", path.read_text()))
    declared = {getattr(counters, name) for name in used}
    assert declared and declared <= set(counters.COUNTERS), declared - set(counters.COUNTERS)
    assert {counters.BIGQUERY_PREDICTIONS_LOADED, counters.BIGQUERY_ERRORS_LOADED} <= set(counters.COUNTERS)
    assert len(set(counters.COUNTERS)) == len(counters.COUNTERS)
    with pytest.raises(ValueError, match="not listed"):
        counters.counter("records_readd")


def test_a_real_run_logs_progress_that_ends_at_run_json_counts(trained_ads, tmp_path):
    data = tmp_path / "in.jsonl"
    generate_file(str(data), 3000, seed=11)
    lines = data.read_text().splitlines()
    lines[10:10] = ["{not json"] * 5  # malformed
    lines[:7] = [line.replace('"age":', '"age_years":') for line in lines[:7]]  # invalid
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    env = {**os.environ, progress.PERIOD_ENV: "0.2"}
    done = subprocess.run(
        [ADPREDICT, "predict", "--model_dir", trained_ads["model"], "--input", str(data)]
        + ["--output_dir", str(out), "--max_error_rate", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stderr.splitlines() if line.startswith(progress.LOG_PREFIX)]
    assert len(logged) >= 2, done.stderr
    final = LINE.search(logged[-1])
    assert final, logged[-1]
    counts = json.loads((out / "run.json").read_text())["counts"]
    read, scored, errors = (int(final.group(i).replace(",", "")) for i in (1, 2, 3))
    assert (read, scored, errors) == (counts["read"], counts["predictions"], counts["errors"])
    assert (read, errors) == (3005, 12)
    assert "adpredict progress" not in done.stdout
