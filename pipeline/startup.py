"""How a command starts: --verbose, logging, and TensorFlow's quiet start-up.

TensorFlow's native start-up lines (oneDNN, CUDA probing) are written by absl before its
logging is set up, so `TF_CPP_MIN_LOG_LEVEL` does not reach them: a command hides them by
catching file descriptor 2 while TensorFlow is imported and its devices are listed, and
passes on every other line written then. `--verbose` (every command) shows them, and INFO
logs.

A command's span starts before TensorFlow is imported: `adpredict` (`pipeline.cli`) opens
it first thing, and `python -m pipeline.predict` (or analyze, nightly, cli) through
`begin_if_command_module`, which `pipeline/__init__.py` runs before any of the package's
modules is imported. This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time

VERBOSE_FLAG = "--verbose"  # accepted by every command, anywhere on its command line
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Modules whose `python -m` run is a command (quiet start-up from their first import on).
COMMAND_MODULES = ("pipeline.cli", "pipeline.predict", "pipeline.analyze", "pipeline.nightly")

# TensorFlow's start-up lines, and absl's INFO lines written while it starts.
_STARTUP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|cuInit"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] "
)


def freeze_imported_objects() -> None:
    """Moves every object alive now (TensorFlow's and Beam's imports: millions) out of the
    cyclic garbage collector's sight, as a run starts.

    They live as long as the process, yet each full collection walked them all: 0.15 s a
    time on this project's benchmark, once or twice a run, inside what a nightly run of 100k
    records pays before its first record. Objects made after this are collected as usual.
    """
    import gc

    gc.freeze()


# ---------------------------------------------------------------------------------------------
# Start-up: --verbose, logging, TensorFlow's chatter.


@dataclasses.dataclass
class _Command:
    started: float | None = None  # time.monotonic() when the outermost command began
    verbose: bool = False


_command = _Command()


@contextlib.contextmanager
def hidden_startup_lines():
    """Catches what is written to file descriptor 2 (where absl writes) and passes on all
    but TensorFlow's start-up chatter when done."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_CHATTER.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, whoever asks first, inside `hidden_startup_lines`, then lists its
    devices there too (the CUDA probe happens then, not at the first model call)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with hidden_startup_lines():
                load(module)
                try:
                    module.config.list_physical_devices()
                except Exception as e:  # the run's own first TensorFlow call reports it
                    logging.debug("listing TensorFlow's devices at import failed: %s", e)

        spec.loader.exec_module = exec_module
        return spec


def configure_output(verbose: bool) -> None:
    """Logging at WARNING (INFO with --verbose); TensorFlow's start-up lines hidden unless
    verbose. Must run before TensorFlow is imported to hide them."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger().setLevel(level)
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def command(argv: list[str]):
    """The span of one command: its start time (for the summary), --verbose taken out of
    `argv` (yielded) and applied. Nested commands (`adpredict predict` -> predict's main)
    share the outermost one's start and verbosity."""
    outermost = _command.started is None
    if outermost:
        _command.started = time.monotonic()
    _command.verbose = _command.verbose or VERBOSE_FLAG in argv
    configure_output(_command.verbose)
    try:
        yield [arg for arg in argv if arg != VERBOSE_FLAG]
    finally:
        if outermost:
            _command.started, _command.verbose = None, False


def seconds_since_start() -> float | None:
    return None if _command.started is None else time.monotonic() - _command.started


def started_as_command_module(orig_argv=None) -> bool:
    """Whether this process is `python [options] -m <one of COMMAND_MODULES> ...`.

    Read from the interpreter's own command line (`sys.orig_argv`): while `python -m` imports
    the module's parent package, `__main__` is not that module yet."""
    args = iter(list(sys.orig_argv if orig_argv is None else orig_argv)[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) in COMMAND_MODULES
        if arg.startswith("-m"):
            return arg[2:] in COMMAND_MODULES
        if arg in ("-X", "-W"):
            next(args, None)  # the option's value
        elif not arg.startswith("-") or arg in ("-", "-c"):
            return False  # a script, stdin or a -c program: not a module run
    return False


def begin_if_command_module() -> None:
    """`python -m pipeline.predict` (and the other COMMAND_MODULES): starts the command's span
    and quiets TensorFlow's start-up before anything imports it. `pipeline/__init__.py`
    calls this first thing, so it runs before the module's own imports, whatever they are."""
    if _command.started is None and started_as_command_module():
        _command.started = time.monotonic()
        _command.verbose = VERBOSE_FLAG in sys.argv[1:]
        configure_output(_command.verbose)
