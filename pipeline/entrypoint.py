"""How a command runs and ends: its flags checked, one line per mistake, an exit code, its
--help, and the summary a person reads.

The pipelines' `main()` (predict, analyze) and the `adpredict` command both run through
`pipeline_main` / `run_reporting_errors`, so a mistake a user can fix prints one line naming
the command and what to change, `adpredict predict: error: ...` (exit 2; `CommandParser`
does the same for a command's argparse mistakes), and each other way a run ends has its own
code (the table: `pipeline.run_contract.EXIT_CODES`). A pipeline's --help shows adpredict's
flags by group, --help_beam Beam's and Dataflow's. The run's summary comes from the run.json
the run returned; only the error counts by kind are read from disk. Importing this module
starts neither Beam nor TensorFlow (`adpredict inspect` uses it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline import startup
from pipeline.reporting import terminal
from pipeline.run_contract import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    GateFailed,
    InputError,
    InputNotReady,
    OptionsError,
    RecordsLost,
    RunFailed,
    errors_stats_file,
)
from transforms.model_contract import ModelDirectoryError
from transforms.schema import SchemaError

# Mistakes a user can fix: one line, exit 2.
USAGE_ERRORS = (OptionsError, InputError, ModelDirectoryError, SchemaError)
VERBOSE_HELP = "Show TensorFlow's start-up lines and INFO logs (hidden by default)."
# A pipeline's --help ends with these (the Beam flags they use are in --help_beam).
EXAMPLES = {
    "adpredict predict": (
        "adpredict predict --model_dir model --input 'data/*.jsonl' --output_dir out",
        "adpredict predict --model_dir gs://b/model --input bq://p.ads.events \\\n"
        "    --input_filter 'DATE(_PARTITIONTIME) = \"2026-11-26\"' \\\n"
        "    --output_format bigquery --output_table bq://p.ads.scores --output_dir gs://b/runs/1126",
        "adpredict predict --model_dir gs://b/model --input 'gs://b/ads/*.jsonl' \\\n"
        "    --output_dir gs://b/out --runner DataflowRunner --project P --region R",
    ),
    "adpredict analyze": (
        "adpredict analyze --input 'data/*.jsonl' --output_dir transform",
        "adpredict analyze --schema criteo --input 'gs://b/criteo/*.csv' --eval_percent 10 \\\n"
        "    --output_dir gs://b/transform --runner DataflowRunner --project P --region R",
    ),
}
# Beam's option classes --help_beam lists, under these titles (every other Beam option works too).
BEAM_HELP = (
    ("StandardOptions", "Beam: the runner"),
    ("DirectOptions", "Beam: the local runner (DirectRunner)"),
    ("GoogleCloudOptions", "Google Cloud and Dataflow"),
    ("WorkerOptions", "Dataflow: workers"),
    ("SetupOptions", "Dataflow: staging the job's code"),
)


def error_line(prog: str, message) -> str:
    """The one line a mistake prints: `adpredict predict: error: --input is required ...`."""
    return f"{prog}: error: {message}"


class HelpFormatter(argparse.HelpFormatter):
    """A flag's help marked `(required)` and ended with its default, unless the help already
    says it; a description or epilog of several lines (examples, a table) as written."""

    def __init__(self, prog, **kwargs):
        kwargs.setdefault("max_help_position", 28)  # --input_format FORMAT: help on its line
        super().__init__(prog, **kwargs)

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings:
            return text
        if action.required:
            text = f"(required) {text}"
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


class CommandParser(argparse.ArgumentParser):
    """An `adpredict` command's parser: a mistake is one line naming the command, exit 2 (not
    argparse's usage text); --help marks required flags and defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, error_line(self.prog, message) + "\n")


def pipeline_help(prog: str, description: str, option_classes) -> str:
    """A pipeline's --help: adpredict's flags by group, required ones first in the usage line,
    defaults shown, examples, and where Beam's flags are."""
    from pipeline import options as opts

    examples = "".join(f"\n  {example}" for example in EXAMPLES.get(prog, ()))
    parser = CommandParser(
        prog=prog,
        description=description,
        add_help=False,
        epilog=(f"examples:{examples}\n\n" if examples else "")
        + f"Beam/Dataflow flags (--runner, --project, ...): {prog} {opts.HELP_BEAM}",
    )
    for title in opts.HELP_GROUPS:
        parser.add_argument_group(title)
    classes = (opts.RecordIOOptions, opts.BigQueryOptions, *option_classes)
    for cls in classes:
        cls._add_argparse_args(parser)
    required = [flag for cls in classes[::-1] for flag in cls.__dict__.get("REQUIRED", ())]
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    for flag in required:
        by_flag[flag].required = True
    parser.usage = " ".join(["%(prog)s", *(f"{flag} {by_flag[flag].metavar}" for flag in required), "..."])
    run = opts.help_group(parser, opts.RUN)
    run.add_argument(startup.VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)
    run.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    run.add_argument(opts.HELP_BEAM, action="store_true", help="List Beam's and Dataflow's flags and exit.")
    return parser.format_help()


def beam_help(prog: str) -> str:
    """--help_beam: the Beam and Dataflow flags a pipeline passes on to Beam."""
    from apache_beam.options import pipeline_options

    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [adpredict's flags: --help] [BEAM FLAG ...]",
        description=f"The Beam and Dataflow flags {prog} passes to Beam; every other Beam option "
        "is accepted too.",
        add_help=False,
    )
    for name, title in BEAM_HELP:
        try:
            getattr(pipeline_options, name)._add_argparse_args(parser.add_argument_group(title))
        except (argparse.ArgumentError, AttributeError, TypeError):
            continue  # a Beam without that class, or a flag declared twice
    return parser.format_help()


def run_reporting_errors(run, argv, summarize=None, *, prog: str) -> int:
    """Runs `run(argv)`; turns the errors a user can act on into a message and exit code.
    `prog` ("adpredict predict") begins every line it prints: one prefix per command.

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
            f"{prog}: run failed, records lost: {e}; no _SUCCESS written, please report it",
            file=sys.stderr,
        )
        return e.exit_code
    except RunFailed as e:
        print(f"{prog}: run failed: {e}", file=sys.stderr)
        return e.exit_code
    except GateFailed as e:
        print(f"{prog}: stopped before scoring: {e}", file=sys.stderr)
        return e.exit_code
    except InputNotReady as e:
        print(f"{prog}: input not there yet: {e}; a later run may find it", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        found = f"no such file or directory: {e.filename!r}; check the path you passed" if e.filename else e
        print(error_line(prog, found), file=sys.stderr)
        return EXIT_USAGE
    except USAGE_ERRORS as e:
        print(error_line(prog, e), file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        from pipeline.io import stores  # (Beam's filesystems: not imported before a run needs them)

        failed = stores.storage_failure(e)
        if failed is None:
            raise
        logging.debug("the store's error", exc_info=True)
        print(f"{prog}: run failed: {failed}; nothing published (no _SUCCESS): re-run when the store "
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
    """`main()` of a pipeline module: --help (adpredict's flags) and --help_beam (Beam's),
    unknown flags and wrong values refused, then the run and its summary."""
    from pipeline.options import HELP_BEAM, check_flags

    argv = sys.argv[1:] if argv is None else list(argv)
    with startup.command(argv) as argv:
        if HELP_BEAM in argv:
            print(beam_help(prog), end="")
            return EXIT_OK
        if {"-h", "--help"} & set(argv):
            print(pipeline_help(prog, doc.split("\n\n")[0], [option_class]), end="")
            return EXIT_OK

        def checked_run(args):
            check_flags(args, [option_class])
            return run(args)

        return run_reporting_errors(
            checked_run, argv, summarize=lambda result: print_pipeline_summary(prog, result), prog=prog
        )
