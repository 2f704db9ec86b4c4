"""What every command-line entry point shares: exit codes and user-facing failures.

The pipelines' `main()` and the `adpredict` command both run through `pipeline_main` /
`run_reporting_errors`, so a mistake a user can fix prints one line naming what to change
(exit 2) and a run over its error threshold exits 3. Only the CLI imports the pipelines;
this module imports none of them.
"""

from __future__ import annotations

import logging
import sys

EXIT_USAGE = 2
EXIT_ERROR_RATE = 3

# A run (predict or analyze) fails when more than this share of its records are errors: the
# odd bad record passes, a systematic problem (schema drift, the wrong file) is loud.
DEFAULT_MAX_ERROR_RATE = 0.01


EXIT_FAILED = 1


class ErrorRateExceeded(RuntimeError):
    """More records failed than --max_error_rate allows (everything was still written)."""


class RecordsLost(RuntimeError):
    """The run's counts do not add up: read != scored + errors (a bug; run.json says where)."""


def run_reporting_errors(run, argv) -> int:
    """Runs `run(argv)`; turns the errors a user can act on into a message and exit code."""
    from pipeline.io import InputError
    from pipeline.options import OptionsError
    from transforms.model_contract import ModelDirectoryError
    from transforms.schema import SchemaError

    try:
        run(argv)
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


def pipeline_main(run, argv, prog: str, doc: str, option_class) -> int:
    """`main()` of a pipeline module: --help with our and Beam's flags, then the run."""
    from pipeline.options import print_help_if_asked

    argv = sys.argv[1:] if argv is None else list(argv)
    if print_help_if_asked(argv, prog, doc.split("\n\n")[0], [option_class]):
        return 0
    logging.getLogger().setLevel(logging.INFO)
    return run_reporting_errors(run, argv)
