"""What every command-line entry point shares: exit codes, user-facing failures, quiet start-up,
and the summary a run ends with.

The pipelines' `main()` and the `adpredict` command both run through `pipeline_main` /
`run_reporting_errors`, so a mistake a user can fix prints one line naming what to change
(exit 2) and a run over its error threshold exits 3. Only the CLI imports the pipelines;
this module imports none of them.

TensorFlow's native start-up lines (oneDNN, CUDA probing) are written by absl before its
logging is set up, so `TF_CPP_MIN_LOG_LEVEL` does not reach them: a command hides them by
catching file descriptor 2 while TensorFlow is imported and its devices are listed, and
passes on every other line written then. `--verbose` (every command) shows them, and INFO
logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import time

EXIT_USAGE = 2
EXIT_ERROR_RATE = 3

# A run (predict or analyze) fails when more than this share of its records are errors: the
# odd bad record passes, a systematic problem (schema drift, the wrong file) is loud.
DEFAULT_MAX_ERROR_RATE = 0.01


EXIT_FAILED = 1

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


class ErrorRateExceeded(RuntimeError):
    """More records failed than --max_error_rate allows (everything was still written)."""


class RecordsLost(RuntimeError):
    """The run's counts do not add up: read != scored + errors (a bug; run.json says where)."""


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


def _started_as_command_module() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) in COMMAND_MODULES


if _started_as_command_module():  # `python -m pipeline.predict`: before its imports reach TensorFlow
    _command.started = time.monotonic()
    _command.verbose = VERBOSE_FLAG in sys.argv[1:]
    configure_output(_command.verbose)


# ---------------------------------------------------------------------------------------------
# Running a command and reporting how it ended.


def run_reporting_errors(run, argv, summarize=None) -> int:
    """Runs `run(argv)`; turns the errors a user can act on into a message and exit code.

    `summarize(result)` prints the run's summary when it ended, also when it failed its
    error threshold or lost records (then with result None), before the failure line.
    """
    from pipeline.io import InputError
    from pipeline.options import OptionsError
    from transforms.model_contract import ModelDirectoryError
    from transforms.schema import SchemaError

    try:
        try:
            result = run(argv)
        except (ErrorRateExceeded, RecordsLost):
            if summarize:
                summarize(None)
            raise
        if summarize:
            summarize(result)
    except ErrorRateExceeded as e:
        print(f"adpredict: run failed: {e}", file=sys.stderr)
        return EXIT_ERROR_RATE
    except RecordsLost as e:
        print(
            f"adpredict: run failed, records lost: {e}; no _SUCCESS written, please report it",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except FileNotFoundError as e:
        found = f"no such file or directory: {e.filename!r}; check the path you passed" if e.filename else e
        print(f"adpredict: error: {found}", file=sys.stderr)
        return EXIT_USAGE
    except (OptionsError, InputError, ModelDirectoryError, SchemaError) as e:
        print(f"adpredict: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def read_run_files(output_dir: str) -> tuple[dict, dict | None]:
    """A finished run's run.json and `prediction.errors_stats` (None when it has none)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.manifest import read_manifest
    from pipeline.write import ERRORS_STATS

    manifest = read_manifest(output_dir)
    stats_path = FileSystems.join(output_dir, ERRORS_STATS)
    if not FileSystems.exists(stats_path):
        return manifest, None
    with FileSystems.open(stats_path) as f:
        return manifest, json.loads(f.read().decode("utf-8"))


def print_pipeline_summary(prog: str, argv: list[str], result, wall_seconds: float | None = None) -> None:
    """Prints the summary of a predict or analyze run that ended (or was launched): from its
    run.json, or from the launcher's summary for a dry run or a job not waited for.
    `wall_seconds` defaults to the time since the command began."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    from pipeline import summary
    from pipeline.options import RecordIOOptions

    options = PipelineOptions(argv)
    output_dir = options.view_as(RecordIOOptions).output_dir
    if isinstance(result, dict) and (result.get("dry_run") or result.get("submitted")):
        cloud = options.view_as(GoogleCloudOptions)
        url = summary.console_url(result.get("job_id"), cloud.region, cloud.project)
        text = summary.launch_summary(prog, {**result, "console_url": url}, output_dir)
    else:
        try:
            manifest, stats = read_run_files(output_dir)
        except (OSError, ValueError) as e:  # the run's own outcome stands; say why no summary
            logging.warning("no summary: cannot read the run's files in %s: %s", output_dir, e)
            return
        wall_seconds = seconds_since_start() if wall_seconds is None else wall_seconds
        text = summary.run_summary(manifest, stats, wall_seconds, prog)
    print(text, flush=True)


def pipeline_main(run, argv, prog: str, doc: str, option_class) -> int:
    """`main()` of a pipeline module: --help with our and Beam's flags, unknown flags
    refused, then the run and its summary."""
    from pipeline.options import check_flags, print_help_if_asked

    argv = sys.argv[1:] if argv is None else list(argv)
    with command(argv) as argv:
        if print_help_if_asked(argv, prog, doc.split("\n\n")[0], [option_class]):
            return 0

        def checked_run(args):
            check_flags(args, [option_class])
            return run(args)

        return run_reporting_errors(
            checked_run, argv, summarize=lambda result: print_pipeline_summary(prog, argv, result)
        )
