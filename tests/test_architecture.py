"""The house's rules (docs/architecture.md): the import rule with no cycle, rooms of at most
600 lines, a contract and a package front that import nothing heavy."""

import re
import subprocess
import sys
from pathlib import Path

from pipeline.startup import started_as_command_module

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
MAX_MODULE_LINES = 600


def test_every_layer_imports_only_the_layers_below_it_and_nothing_imports_in_a_cycle():
    done = subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", done.stdout)
    assert kept and int(kept.group(1)) == 7, done.stdout[-2000:]
    for contract in ("each layer imports only the layers below it", "No import cycle", "imports no Beam"):
        assert contract in done.stdout


def test_no_module_is_longer_than_a_room_should_be():
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in ("pipeline", "transforms")
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(lengths) > 60
    assert {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_the_run_contract_and_the_packages_front_import_nothing_heavy():
    """`import pipeline` (the public API is imported on first use), the run contract the
    trainer reads and the `adpredict` command's module start without Beam or TensorFlow."""
    code = (
        "import sys, pipeline, pipeline.run_contract, pipeline.cli; "
        "print(sorted(m for m in ('apache_beam', 'tensorflow', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_command_module_is_recognised_from_the_interpreters_own_command_line():
    assert started_as_command_module(["python", "-m", "pipeline.predict", "--input", "x"])
    assert started_as_command_module(["python", "-X", "importtime", "-m", "pipeline.nightly"])
    assert started_as_command_module(["python", "-mpipeline.cli"])
    assert not started_as_command_module(["python", "-m", "pytest", "-m", "pipeline.predict"])
    assert not started_as_command_module(["python", "script.py", "-m", "pipeline.predict"])
    assert not started_as_command_module(["python", "-c", "import pipeline", "-m", "pipeline.predict"])
