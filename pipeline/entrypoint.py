"""How a pipeline command runs and ends: its flags checked, one line per mistake, an exit code,
and the summary a person reads.

The pipelines' `main()` (predict, analyze) and the `adpredict` command both run through
`pipeline_main` / `run_reporting_errors`, so a mistake a user can fix prints one line naming
what to change (exit 2) and each other way a run ends has its own code (the table:
`pipeline.run_contract.EXIT_CODES`). The run's summary comes from the run.json the run
returned; only the error counts by kind are read from disk.
"""

from __future__ import annotations

import json
import logging
import sys

from pipeline import startup
from pipeline.io import stores
from pipeline.options import OptionsError, check_flags, print_help_if_asked
from pipeline.reporting import terminal
from pipeline.run_contract import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    GateFailed,
    InputError,
    InputNotReady,
    RecordsLost,
    RunFailed,
    errors_stats_file,
)
from transforms.model_contract import ModelDirectoryError
from transforms.schema import SchemaError

# Mistakes a user can fix: one line, exit 2.
USAGE_ERRORS = (OptionsError, InputError, ModelDirectoryError, SchemaError)


def run_reporting_errors(run, argv, summarize=None) -> int:
    """Runs `run(argv)`; turns the errors a user can act on into a message and exit code.

    `summarize(result)` prints the run's summary when it ended, also when it failed its
    error threshold or lost records (then with the run.json the failure carries), before
    the failure line.
    """
    try:
        try:
            result = run(argv)
        except RunFailed as e:
            if summarize:
                summarize(e.manifest)
            raise
        if summarize:
            summarize(result)
    except RecordsLost as e:
        print(
            f"adpredict: run failed, records lost: {e}; no _SUCCESS written, please report it",
            file=sys.stderr,
        )
        return e.exit_code
    except RunFailed as e:
        print(f"adpredict: run failed: {e}", file=sys.stderr)
        return e.exit_code
    except GateFailed as e:
        print(f"adpredict: stopped before scoring: {e}", file=sys.stderr)
        return e.exit_code
    except InputNotReady as e:
        print(f"adpredict: input not there yet: {e}; a later run may find it", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        found = f"no such file or directory: {e.filename!r}; check the path you passed" if e.filename else e
        print(f"adpredict: error: {found}", file=sys.stderr)
        return EXIT_USAGE
    except USAGE_ERRORS as e:
        print(f"adpredict: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        failed = stores.storage_failure(e)
        if failed is None:
            raise
        logging.debug("the store's error", exc_info=True)
        print(f"adpredict: run failed: {failed}; nothing published (no _SUCCESS): re-run when the store "
              "answers", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


def read_errors_stats(manifest: dict) -> dict | None:
    """The error counts by kind beside a finished run's run.json (None when it has none)."""
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(manifest.get("output_dir") or "", errors_stats_file(manifest))
    if not manifest.get("output_dir") or not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def print_pipeline_summary(prog: str, result, wall_seconds: float | None = None) -> None:
    """Prints the summary of a predict or analyze run that ended, from the run.json it returned
    (or raised with), or of a launch: a dry run, or a job not waited for. `wall_seconds`
    defaults to the time since the command began."""
    if not isinstance(result, dict):
        return
    if result.get("dry_run") or result.get("submitted"):
        print(terminal.launch_summary(prog, result, result.get("output_dir")), flush=True)
        return
    try:
        stats = read_errors_stats(result)
    except (OSError, ValueError) as e:  # the run's own outcome stands; say why no summary
        logging.warning(
            "no summary: cannot read the run's error counts in %s: %s", result.get("output_dir"), e
        )
        return
    wall_seconds = startup.seconds_since_start() if wall_seconds is None else wall_seconds
    print(terminal.run_summary(result, stats, wall_seconds, prog), flush=True)


def pipeline_main(run, argv, prog: str, doc: str, option_class) -> int:
    """`main()` of a pipeline module: --help with our and Beam's flags, unknown flags
    refused, then the run and its summary."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with startup.command(argv) as argv:
        if print_help_if_asked(argv, prog, doc.split("\n\n")[0], [option_class]):
            return EXIT_OK

        def checked_run(args):
            check_flags(args, [option_class])
            return run(args)

        return run_reporting_errors(
            checked_run, argv, summarize=lambda result: print_pipeline_summary(prog, result)
        )
