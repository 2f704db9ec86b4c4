"""docs/walkthrough.md, run as a user runs it: every ```bash block, in order, in one shell.

The blocks are read from the Markdown itself, so the page and the product cannot drift: a
command that stops working, a flag that is renamed or an output that moves fails this test.
They run with `set -euo pipefail` in a fresh temporary HOME (the walkthrough works in
`~/adpredict-walkthrough`), with this interpreter's bin directory (the venv) first on PATH in
place of the page's `source .venv/bin/activate`. Then the results are checked: analyze and
train succeeded, every record given to `predict` is exactly one prediction or one error
record, each run.json says succeeded, and `inspect` named the foreign model's inputs.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "walkthrough.md"
ACTIVATE = "source .venv/bin/activate"
BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = "@@@ walkthrough block"
SUBCOMMANDS = ("analyze", "train", "predict", "inspect")


def bash_blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def commands(name: str) -> list[list[str]]:
    """Every `adpredict <name> ...` command line of the page, as argv (continuations joined)."""
    found = []
    for block in bash_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(f"adpredict {name}"):
                found.append(shlex.split(line, comments=True))
    return found


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_the_page_is_commands_a_user_types():
    blocks = bash_blocks()
    assert blocks, f"no ```bash blocks in {DOC}"
    assert ACTIVATE in blocks[0].splitlines(), (
        f"the first block should start the user's shell with {ACTIVATE!r}"
    )
    for name in SUBCOMMANDS:
        assert commands(name), f"the walkthrough never runs `adpredict {name}`"
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split()
            if words[:1] == ["adpredict"]:
                assert words[1] in SUBCOMMANDS, f"unexpected command in the walkthrough: {line}"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Runs every block; returns {"cwd": the directory the walkthrough ended in, "blocks": output per block}."""
    home = tmp_path_factory.mktemp("walkthrough_home")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "adpredict").exists():
        pytest.fail(f"no adpredict next to {sys.executable}; run the tests with the venv's pytest")
    parts = ["set -euo pipefail"]
    for i, block in enumerate(bash_blocks()):
        lines = [
            ": the test put the venv on PATH" if line.strip() == ACTIVATE else line
            for line in block.splitlines()
        ]
        parts += [f"echo '{MARKER} {i}'", *lines]
    parts.append('echo "@@@ cwd $PWD"')
    script = home / "walkthrough.sh"
    script.write_text("\n".join(parts) + "\n", encoding="utf-8")
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(bin_dir.parent),
    )
    result = subprocess.run(
        ["bash", str(script)], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout
    if result.returncode != 0:
        failed = re.findall(rf"^{MARKER} (\d+)$", output, re.M)
        block = bash_blocks()[int(failed[-1])] if failed else "(before the first block)"
        pytest.fail(
            f"the walkthrough stopped with exit code {result.returncode} in this block:\n{block}\n"
            f"--- its output (last 6000 characters) ---\n{output[-6000:]}"
        )
    cwd = re.search(r"^@@@ cwd (.*)$", output, re.M).group(1)
    pieces = re.split(rf"^{MARKER} (\d+)\n", output, flags=re.M)
    blocks = {int(pieces[i]): pieces[i + 1] for i in range(1, len(pieces), 2)}
    return {"cwd": Path(cwd), "blocks": blocks}


def input_records(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def json_lines(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        rows += [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    return rows


def test_analyze_and_train_made_a_model(walkthrough):
    cwd = walkthrough["cwd"]
    (analyze,) = commands("analyze")
    transform = cwd / flag(analyze, "--output_dir")
    manifest = json.loads((transform / "run.json").read_text())
    assert manifest["status"] == "succeeded", manifest["status"]
    assert (transform / "_SUCCESS").exists()
    (train,) = commands("train")
    model = cwd / flag(train, "--model_dir")
    assert (model / "saved_model.pb").exists()
    description = json.loads((model / "assets.extra" / "adpredict_model.json").read_text())
    schema = yaml.safe_load((cwd / flag(analyze, "--schema")).read_text())
    assert [i["name"] for i in description["inputs"]] == [f["name"] for f in schema["features"]]
    assert description["key_field"] == schema["key"]["field"]


def test_every_record_is_one_prediction_or_one_error(walkthrough):
    cwd = walkthrough["cwd"]
    runs = commands("predict")
    assert len(runs) >= 2, "the walkthrough scores with its own model and with the TFX export"
    for argv in runs:
        out = cwd / flag(argv, "--output_dir")
        records = input_records(cwd / flag(argv, "--input"))
        predictions = json_lines(str(out / "prediction.results-*"))
        errors = json_lines(str(out / "errors-*"))
        assert predictions, f"no predictions in {out}"
        assert len(predictions) + len(errors) == len(records), (argv, len(predictions), len(errors))
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["status"] == "succeeded", (argv, manifest["status"])
        counts = manifest["counts"]
        assert (counts["read"], counts["predictions"], counts["errors"]) == (
            len(records),
            len(predictions),
            len(errors),
        ), argv
        assert (out / "_SUCCESS").exists() and (out / "report.html").exists()
        # what the page says: one record of new_visits.csv has a word for its age
        assert [(e["error"]["code"], e["error"]["field"]) for e in errors] == [("wrong_type", "age")], errors
        # each record's id comes back: as the key (a key field) or copied in (--passthrough_fields)
        ids = [p.get("visit_id", p["key"]) for p in predictions] + [e["instance"]["visit_id"] for e in errors]
        assert sorted(ids) == sorted(r["visit_id"] for r in records), argv


def test_inspect_names_the_foreign_models_inputs(walkthrough):
    (inspect,) = commands("inspect")
    model = walkthrough["cwd"] / inspect[2]
    assert not (model / "assets.extra" / "adpredict_model.json").exists(), "the TFX model should be foreign"
    index = next(i for i, block in enumerate(bash_blocks()) if "adpredict inspect" in block)
    output = walkthrough["blocks"][index]
    assert "raw inputs (features of each tf.Example" in output, output
    section = output.split("raw inputs", 1)[1].split("\noutputs", 1)[0]
    (analyze,) = commands("analyze")  # the TFX export parses the same fields as the schema file
    schema = yaml.safe_load((walkthrough["cwd"] / flag(analyze, "--schema")).read_text())
    for name in [f["name"] for f in schema["features"]]:
        assert re.search(rf"^\s+{name}\s", section, re.M), (name, section)
    assert re.search(r"PASS\s+adpredict predict", output), output
