"""What a person sees: the summary every run ends with, one line for a mistyped flag, and no
TensorFlow start-up chatter unless asked for (`--verbose`)."""

import json
import os
import re
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.options import OptionsError, PredictOptions, check_flags
from pipeline.reporting import terminal as summary
from pipeline.run_contract import EXIT_ERROR_RATE, EXIT_USAGE
from tests.test_loud_failures import drifted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADPREDICT = os.path.join(ROOT, ".venv", "bin", "adpredict")
CHATTER = (
    "All log messages before absl::InitializeLog",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
)


def summary_lines(out: str) -> dict[str, str]:
    """The summary's "  label   value" lines as {label: value}, spacing collapsed."""
    lines = {}
    for line in out.splitlines():
        match = re.match(r"^  (\S+(?: \S+)?)\s{2,}(.*)$", line)
        if match:
            lines[match[1]] = " ".join(match[2].split())
    return lines


# ---------------------------------------------------------------------------------------------
# Summaries of real runs.


def test_predict_prints_what_it_read_predicted_and_rejected(trained_ads, tmp_path, capsys):
    data = drifted(tmp_path / "in.jsonl", 40, 3)
    out = str(tmp_path / "out")
    argv = ["predict", "--model_dir", trained_ads["model"], "--input", data, "--output_dir", out]
    assert cli.main([*argv, "--max_error_rate", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "adpredict predict: succeeded"
    lines = summary_lines(printed)
    assert lines["read"] == "40 records from 1 file"
    assert lines["predicted"] == "37"
    assert lines["errors"] == "3 (7.50% of read, limit 10.00%): missing_field: age 3"
    manifest = json.load(open(f"{out}/run.json"))
    assert lines["time"].endswith(
        f"({manifest['timings']['seconds']:.1f} s in the pipeline: {round(40 / manifest['timings']['seconds']):,} records/s)"
    )
    assert lines["predictions"] == f"{out}/prediction.results-* (jsonl)"
    assert lines["error records"] == f"{out}/errors-*; by code and field: prediction.errors_stats"
    assert lines["run.json"] == f"{out}/run.json"
    if manifest.get("report"):  # report.html, when the run wrote one
        assert lines["report"] == f"{out}/{manifest['report']}"
    checks = len(manifest["quality"]["checks"])  # 40 records: measured, too few to judge
    assert lines["quality"] == (
        f"passed: {checks} checks against training ({checks} not judged: under 100 records); "
        "drift not checked: no previous night to compare with"
    )
    assert (
        lines["ran on"].startswith("CPU ") and len(manifest["workers"]) == 1
    )  # one line per kind of process
    cost = manifest["cost"]  # a local run: this machine's vCPUs, priced at the table's `local` (0)
    assert lines["cost"].startswith(
        f"{round(cost['records_per_second_per_vcpu']):,} records/s per vCPU (this machine, "
    )
    assert f"{cost['worker_seconds']:,.1f} worker-s" in lines["cost"]
    assert len(printed.splitlines()) == 11 + bool(manifest.get("report"))


def test_a_run_over_its_error_threshold_prints_the_summary_then_fails(trained_ads, tmp_path, capsys):
    data = drifted(tmp_path / "in.jsonl", 40, 3)
    out = str(tmp_path / "out")
    code = cli.main(["predict", "--model_dir", trained_ads["model"], "--input", data, "--output_dir", out])
    assert code == EXIT_ERROR_RATE
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        "adpredict predict: failed: error rate above --max_error_rate (everything written, no _SUCCESS)"
    )
    assert summary_lines(captured.out)["errors"] == "3 (7.50% of read, limit 1.00%): missing_field: age 3"
    assert captured.err.strip().splitlines() == [
        f"adpredict predict: run failed: 3 of 40 records failed (7.50%), above --max_error_rate 1.00%; "
        f"see {out}/prediction.errors_stats"
    ]


def test_analyze_prints_rows_analyzed_and_rejected(tmp_path, capsys):
    data = drifted(tmp_path / "train.jsonl", 100, 5)
    out = str(tmp_path / "transform")
    argv = ["analyze", "--input", data, "--output_dir", out, "--max_error_rate", "0.1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "adpredict analyze: succeeded"
    lines = summary_lines(printed)
    assert lines["read"] == "100 records"
    assert lines["analyzed"] == "95"
    assert lines["rejected"] == "5 (5.00% of read, limit 10.00%): missing_field: age 5"
    assert lines["transform"] == f"{out} (transform_fn/, transformed/train-*, transformed/eval-*)"
    assert lines["run.json"] == f"{out}/run.json"
    # Its error counts are named after the job, not after predict's prediction.* files.
    assert lines["error records"] == f"{out}/errors-*; by code and field: analyze.errors_stats"
    assert json.loads(open(f"{out}/analyze.errors_stats").read())["errors"] == 5
    assert not os.path.exists(f"{out}/prediction.errors_stats")


def test_the_summary_comes_from_the_run_json_the_run_returned(trained_ads, tmp_path, monkeypatch, capsys):
    """run.json is read once, by the launcher checking how the run ended; the summary
    printed after it uses that copy."""
    from pipeline.run import manifest

    reads = []
    original = manifest.read_manifest
    monkeypatch.setattr(
        manifest, "read_manifest", lambda output_dir: reads.append(output_dir) or original(output_dir)
    )
    data = drifted(tmp_path / "in.jsonl", 40, 1)
    out = str(tmp_path / "out")
    argv = ["predict", "--model_dir", trained_ads["model"], "--input", data, "--output_dir", out]
    assert cli.main([*argv, "--max_error_rate", "0.5"]) == 0
    assert reads == [out] and summary_lines(capsys.readouterr().out)["errors"].startswith("1 (2.50% of read")
    reads.clear()
    assert cli.main([*argv, "--max_error_rate", "0"]) == EXIT_ERROR_RATE  # a failed run: its summary too
    assert reads == [out] and summary_lines(capsys.readouterr().out)["errors"].startswith("1 (2.50% of read")


def test_train_prints_rows_auc_and_where_the_model_went(trained_ads, tmp_path, capsys):
    model = str(tmp_path / "model")
    argv = ["train", "--transform_dir", trained_ads["transform"], "--model_dir", model, "--epochs", "1",
            "--skip_blank_image_baseline", "--batch_size", "128"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.load(open(f"{model}/assets.extra/training_metrics.json"))
    assert printed.splitlines()[0] == "adpredict train: done"
    lines = summary_lines(printed)
    assert lines["rows"] == f"{metrics['train_records']} trained on, {metrics['eval_records']} held out"
    assert metrics["train_records"] + metrics["eval_records"] == 600
    assert lines["AUC"] == f"{metrics['eval_auc']:.4f} on the held-out rows"
    assert lines["batch size"] == "128 records per model call"
    assert lines["golden"] == "32 eval records with their outputs; every run checks them first"
    assert lines["model"] == model


def test_summary_formatting():
    stats = {"by_kind": [{"code": "wrong_type", "field": "bid", "count": 1200},
                         {"code": "malformed_record", "field": None, "count": 7},
                         {"code": "out_of_range", "field": "age", "count": 2},
                         {"code": "missing_field", "field": "id", "count": 1}]}  # fmt: skip
    assert summary.error_kinds(stats) == (
        "wrong_type: bid 1,200, malformed_record 7, out_of_range: age 2, +1 more kinds"
    )
    assert summary.percent(0.00001) == "<0.01%" and summary.percent(0.0) == "0.00%"
    assert summary.duration(59.94) == "59.9 s" and summary.duration(3725) == "1 h 02 min"
    manifest = {"status": "succeeded", "output_dir": "gs://b/out", "output_format": "jsonl",
                "output_tables": {"predictions": "bq://p.d.t", "errors": "bq://p.d.t_errors"},
                "counts": {"read": 1234567, "predictions": 1233367, "errors": 1200, "error_rate": 0.000972},
                "max_error_rate": 0.01, "timings": {"seconds": 10.0}}  # fmt: skip
    lines = summary_lines(summary.predict_summary({**manifest, "report": "report.html"}, stats, 12.5))
    assert lines["read"] == "1,234,567 records"
    assert lines["predicted"] == "1,233,367"
    assert lines["time"] == "12.5 s (10.0 s in the pipeline: 123,457 records/s)"
    assert lines["predictions"] == "bq://p.d.t (BigQuery)"
    assert lines["run.json"] == "gs://b/out/run.json" and lines["report"] == "gs://b/out/report.html"


def test_dry_run_and_submitted_job_summaries():
    dry = {"dry_run": True, "job_name": "adpredict-predict-x", "project": "p", "region": "europe-west1",
           "job_file": "/d/x.json", "staged": ["gs://b/a", "gs://b/c"], "staging_mirror": "/d/staged"}  # fmt: skip
    text = summary.launch_summary("adpredict predict", dry)
    assert text.splitlines()[0] == "adpredict predict: dry run, nothing read, written or submitted"
    assert summary_lines(text) == {
        "job": "adpredict-predict-x (p, europe-west1)",
        "request": "/d/x.json",
        "staged": "2 files under /d/staged",
    }
    submitted = {"submitted": True, "runner": "DataflowRunner", "job_id": "2026-11-27_01", "state": "RUNNING",
                 "console_url": summary.console_url("2026-11-27_01", "europe-west1", "p")}  # fmt: skip
    lines = summary_lines(summary.launch_summary("adpredict predict", submitted, "gs://b/out"))
    assert (
        lines["follow"]
        == "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-11-27_01?project=p"
    )
    assert lines["when done"] == "gs://b/out/run.json, then gs://b/out/_SUCCESS"


# ---------------------------------------------------------------------------------------------
# Unknown flags: exit 2, one line naming the closest real flag.

MISSPELLED = {
    "predict_space": (["predict", "--model_dir", "m", "--output_fromat", "csv"], "--output_fromat", "--output_format"),
    "predict_equals": (["predict", "--output_fromat=csv", "--model_dir=m"], "--output_fromat", "--output_format"),
    "predict_rate": (["predict", "--max_eror_rate", "0.5"], "--max_eror_rate", "--max_error_rate"),
    "predict_beam": (["predict", "--experiments", "a", "--experimnts=b"], "--experimnts", "--experiments"),
    "predict_runner": (["predict", "--runer", "DirectRunner"], "--runer", "--runner"),
    "predict_verbose": (["predict", "--verbos"], "--verbos", "--verbose"),
    "analyze": (["analyze", "--schema", "ads", "--eval_precent", "10"], "--eval_precent", "--eval_percent"),
    "nightly_own": (["nightly", "--config", "n.yaml", "--forse"], "--forse", "--force"),
    "nightly_predict": (["nightly", "--config", "n.yaml", "--output_fromat", "csv"], "--output_fromat",
                        "--output_format"),
    "train": (["train", "--transform_dir", "t", "--model_dir", "m", "--epoch", "3"], "--epoch", "--epochs"),
    "generate": (["generate", "--output", "x.jsonl", "--recrods", "5"], "--recrods", "--records"),
    "demo": (["demo", "--work_dir", "w", "--record=5"], "--record", "--records"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "flag", "meant"), list(MISSPELLED.values()), ids=list(MISSPELLED))
def test_an_unknown_flag_is_refused_naming_the_closest(argv, flag, meant, capsys):
    assert cli.main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err == f"adpredict {argv[0]}: error: unknown flag {flag}; did you mean {meant}?\n"
    assert captured.out == ""


def test_another_commands_flag_and_a_stray_value_are_refused(capsys):
    assert cli.main(["predict", "--model_dir", "m", "--schema", "ads"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("adpredict predict: error: unknown flag --schema;")
    assert cli.main(["predict", "--input", "a.jsonl", "b.jsonl", "--output_dir", "o"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(
        "adpredict predict: error: unexpected argument 'b.jsonl' after --input a.jsonl: a flag takes at most "
        "one value"
    )


def test_values_are_not_taken_for_flags_and_beams_flags_pass():
    check_flags(
        ["--input", "a.jsonl", "--input=-odd-name.jsonl", "--input_filter", "-hour > 3", "--tf_threads", "-1",
         "--max_error_rate", "-.5", "--experiments", "no_use_multiple_sdk_containers", "--experiments=x",
         "--runner", "DataflowRunner", "--dry_run=True", "--no_auth", "--sdk_location", "container",
         "--dataflow_service_options", "worker_accelerator=type:t4", "--update_compatibility_version",
         "--direct_num_workers", "2", "--verbose", "--help"],
        [PredictOptions],
    )  # fmt: skip
    with pytest.raises(OptionsError, match="unexpected argument 'True' after --no_auth"):
        check_flags(["--no_auth", "True"], [PredictOptions])


def test_a_misspelled_flag_in_the_nightly_configs_pipeline_args(tmp_path, capsys):
    config = tmp_path / "n.yaml"
    config.write_text(
        "model_dir: m\ninput: in/{date}.jsonl\noutput_dir: out/{date}\npipeline_args: [--runer, X]\n"
    )
    assert cli.main(["nightly", "--config", str(config), "--date", "2026-11-26"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"adpredict nightly: error: {config}: pipeline_args: unknown flag --runer; did you mean --runner?\n"
    )


def test_the_module_entry_point_refuses_an_unknown_flag_too():
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", "--model_dir", "m", "--output_fromat", "csv"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr
        == "adpredict predict: error: unknown flag --output_fromat; did you mean --output_format?\n"
    )


# ---------------------------------------------------------------------------------------------
# TensorFlow's start-up lines: hidden by default, shown with --verbose.


def _run(args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def test_no_tensorflow_chatter_by_default(tmp_path):
    helped = _run([ADPREDICT, "predict", "--help"])
    assert helped.returncode == 0 and "--output_format" in helped.stdout and "--verbose" in helped.stdout
    generated = _run([ADPREDICT, "generate", "--output", str(tmp_path / "a.tfrecord.gz"), "--records", "3"])
    assert (
        generated.returncode == 0 and generated.stdout == f"wrote 3 records to {tmp_path / 'a.tfrecord.gz'}\n"
    )
    for done in (helped, generated):
        assert not [line for line in CHATTER if line in done.stderr], done.stderr
        assert done.stderr == ""


def test_verbose_is_accepted_and_shows_what_was_hidden(tmp_path):
    done = _run(
        [ADPREDICT, "generate", "--verbose", "--output", str(tmp_path / "a.tfrecord.gz"), "--records", "3"]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote 3 records to {tmp_path / 'a.tfrecord.gz'}\n"
    assert any(line in done.stderr for line in CHATTER), done.stderr  # the pinned TensorFlow writes them


# ---------------------------------------------------------------------------------------------
# --version, --help and argparse's mistakes: what a person reads before a run.


def _main_exit(argv) -> int:
    """cli.main's exit code, also when argparse exits (--help, --version, its mistakes)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_version_is_the_installed_packages():
    from importlib import metadata

    done = subprocess.run([ADPREDICT, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"adpredict {metadata.version('adpredict')}"
    assert "tensorflow==" in lines[1] and "apache-beam" in lines[1]


def _help(argv, monkeypatch, capsys) -> list[str]:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    assert _main_exit(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


def test_predict_help_shows_adpredicts_flags_by_group_and_beams_only_behind_help_beam(monkeypatch, capsys):
    from pipeline.options import HELP_GROUPS

    lines = _help(["predict", "--help"], monkeypatch, capsys)
    titles = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == [*HELP_GROUPS, "examples"]
    assert len(lines) < 120, len(lines)
    text = "\n".join(lines)
    assert lines[0].startswith("usage: adpredict predict --model_dir DIR --input PATTERN --output_dir DIR")
    for flag in ("--model_dir DIR", "--input PATTERN", "--output_dir DIR"):
        assert re.search(rf"^  {flag} +\(required\) ", text, re.M), flag
    assert re.search(r"^  --output_format FORMAT .*\n.*\(default: jsonl\)", text, re.M)
    assert text.count("\n  adpredict predict ") >= 2  # examples
    assert lines[-1] == "Beam/Dataflow flags (--runner, --project, ...): adpredict predict --help_beam"
    for beam_flag in ("--temp_location", "--staging_location", "--num_workers", "--direct_num_workers"):
        assert beam_flag not in text
    beam = "\n".join(_help(["predict", "--help_beam"], monkeypatch, capsys))
    for beam_flag in ("--temp_location", "--runner", "--project", "--region", "--num_workers"):
        assert f"  {beam_flag} " in beam, beam_flag
    assert "--model_dir" not in beam


def test_analyze_help_has_its_own_flags_and_groups(monkeypatch, capsys):
    lines = _help(["analyze", "--help"], monkeypatch, capsys)
    titles = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["input", "output", "run", "examples"]
    text = "\n".join(lines)
    assert "--schema SCHEMA" in text and "--eval_percent N" in text and "--model_dir" not in text
    assert "--temp_location" not in text and lines[-1].endswith("adpredict analyze --help_beam")


def test_nightly_help_lists_every_exit_code_and_what_passes_to_predict(monkeypatch, capsys):
    from pipeline.run_contract import EXIT_CODES

    text = "\n".join(_help(["nightly", "--help"], monkeypatch, capsys))
    for exit_code in EXIT_CODES:
        assert re.search(
            rf"^  {exit_code.code}  {exit_code.name} +{re.escape(exit_code.meaning)}", text, re.M
        )
    assert "--runner DataflowRunner" in text and "--help_beam" in text and "pipeline_args" in text
    assert re.search(r"^  --config FILE +\(required\) ", text, re.M)


ARGPARSE_MISTAKES = {
    "generate": ["generate", "--output", "a.jsonl", "--records", "many"],
    "analyze": ["analyze", "--input", "a.jsonl", "--output_dir", "o", "--eval_percent", "x"],
    "predict": ["predict", "--model_dir", "m", "--batch_size", "abc"],
    "predict_choice": ["predict", "--output_format", "xml"],
    "nightly": ["nightly", "--date", "2026-11-26"],
    "nightly_value": ["nightly", "--date", "yesterday", "--config", "n.yaml"],
    "nightly_predict_value": ["nightly", "--config", "n.yaml", "--tf_threads", "all"],
    "train": ["train", "--model_dir", "m"],
    "demo": ["demo", "--records", "5"],
    "inspect": ["inspect"],
}


@pytest.mark.parametrize("argv", list(ARGPARSE_MISTAKES.values()), ids=list(ARGPARSE_MISTAKES))
def test_an_argparse_mistake_is_one_line_naming_the_command(argv, capsys):
    assert _main_exit(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err.startswith(f"adpredict {argv[0]}: error: ") and captured.err.count("\n") == 1, (
        captured.err
    )
    assert captured.out == ""


def test_no_command_names_adpredict_alone(capsys):
    assert _main_exit(["frobnicate"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert (
        err.startswith("adpredict: error: argument command: invalid choice: 'frobnicate'")
        and err.count("\n") == 1
    )
