"""The `adpredict inspect` command line (also `python -m pipeline.inspection`)."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys

from pipeline.entrypoint import CommandParser, error_line
from pipeline.inspection.probe import PROBE_TIMEOUT_S
from pipeline.inspection.report import inspect_model
from pipeline.inspection.text import format_report
from pipeline.run_contract import EXIT_OK, EXIT_USAGE
from transforms.model_contract import ModelDirectoryError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(  # a mistake: one line, `adpredict inspect: error: ...`
        prog="adpredict inspect",
        description="Describe a model directory and check whether it is portable "
        "(TensorFlow alone, BigQuery ML import, TF Serving / Vertex AI).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="The directory `adpredict train` exported.")
    parser.add_argument("--json", action="store_true", help="Print the report as one JSON object.")
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT_S,
        help="Seconds the TensorFlow-only load and call may take.",
    )
    parser.add_argument("--verbose", action="store_true", help="Show the TensorFlow-only process's own log.")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [flag for action in parser._actions for flag in action.option_strings]
        close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; flags: {', '.join(flags)}"
        print(error_line(parser.prog, f"unknown argument {unknown[0]!r}{hint}"), file=sys.stderr)
        return EXIT_USAGE
    # `adpredict --verbose inspect` takes the flag out and sets INFO logging instead.
    show_log = args.verbose or logging.getLogger().isEnabledFor(logging.INFO)
    try:
        report = inspect_model(args.model_dir, timeout=args.timeout, show_probe_log=show_log)
    except ModelDirectoryError as e:  # one line naming the path and what to give
        print(error_line(parser.prog, e), file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
