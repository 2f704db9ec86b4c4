"""Command-line options of the pipelines, as PipelineOptions subclasses.

Beam parses every PipelineOptions subclass with one parser, so a flag is declared once
(shared ones in `RecordIOOptions`) and none is `required=True` there (that would make every
other pipeline demand it): a class's `REQUIRED` names the flags a run needs (--help marks
them), `validate_*` checks them before a graph is built and names the flag that is wrong.
Each flag names its --help group where it is declared. Beam only warns about a flag no
subclass declares and runs without it; `check_flags` refuses it first, naming the closest
declared flag, and a value its flag does not take (`--batch_size abc`), in one line.
"""

from __future__ import annotations

import argparse
import difflib
import re

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.inference.batching import DEFAULT_MAX_BATCH_BYTES
from pipeline.inference.devices import GPU_POLICIES
from pipeline.inference.precision import DEFAULT_PRECISION, PRECISIONS
from pipeline.io import INPUT_FORMATS, OUTPUT_FORMATS
from pipeline.io.splitting import DEFAULT_SPLIT_BYTES
from pipeline.quality.thresholds import DEFAULT_LIMITS, FEATURE_PREFIX
from pipeline.read import Inputs
from pipeline.run_contract import (
    DEFAULT_MAX_ERROR_RATE,
    EXIT_ERROR_RATE,
    EXIT_GATE,
    RUN_LOCK,
    OptionsError,
)
from pipeline.startup import VERBOSE_FLAG

# The groups of a pipeline's --help, in the order it shows them.
INPUT, OUTPUT, MODEL, QUALITY, RUN = "input", "output", "model and scoring", "data-quality gate", "run"
HELP_GROUPS = (INPUT, OUTPUT, MODEL, QUALITY, RUN)
HELP_BEAM = "--help_beam"  # lists Beam's and Dataflow's flags, which --help leaves out


class CachedViewOptions(PipelineOptions):
    """PipelineOptions whose views are made once per class.

    `view_as` builds an argparse parser of the class's flags and parses the command line
    again on every call, and Beam calls it on the pipeline's options for every transform it
    applies (type-check settings): about 600 times, 0.15 s, per predict run, a tenth of a
    small run's wall time. Views only proxy the shared option values, so one per class
    behaves the same. The cache is not pickled.
    """

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_views", None)
        return state


def help_group(parser, title: str):
    """`parser`'s argument group `title`, made on first use: --help shows the flags by group."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


class RecordIOOptions(PipelineOptions):
    """Flags every adpredict pipeline has: where records come from and where results go."""

    REQUIRED = ("--input", "--output_dir")  # --input or --input_query; see _validate_io

    @classmethod
    def _add_argparse_args(cls, parser):
        read = help_group(parser, INPUT)
        read.add_argument(
            "--input",
            action="append",
            default=None,
            metavar="PATTERN",
            help="Input records: a file pattern (local, gs://, s3://, azfs://; globs allowed) or a BigQuery table "
            "bq://project.dataset.table; repeatable.",
        )
        read.add_argument(
            "--input_format",
            choices=INPUT_FORMATS,
            default=None,
            metavar="FORMAT",
            help="%(choices)s; default: told from the file names.",
        )
        read.add_argument(
            "--csv_columns",
            default=None,
            metavar="COLS",
            help="Column order of CSV files without a header row, comma-separated; default: the "
            "schema's csv_columns, else the first row is the header.",
        )
        read.add_argument(
            "--input_query",
            default=None,
            metavar="SQL",
            help="Standard-SQL query whose result rows are the input records, instead of --input.",
        )
        read.add_argument(
            "--query_dataset",
            default=None,
            metavar="DATASET",
            help="project.dataset where --input_query's result is written for reading (expires in a day).",
        )
        read.add_argument(
            "--input_filter",
            default=None,
            metavar="SQL",
            help="Row restriction for a bq:// --input table, e.g. 'DATE(_PARTITIONTIME) = \"2026-11-26\"'.",
        )
        read.add_argument(
            "--split_bytes",
            type=int,
            default=None,
            metavar="BYTES",
            help="Read a JSONL, CSV or Parquet file larger than this as parts in parallel; default "
            f"{DEFAULT_SPLIT_BYTES >> 20} MiB where parts run in parallel (Dataflow, Dask, a local "
            "multi_threading/multi_processing run), else 0 (one reader per file).",
        )
        help_group(parser, OUTPUT).add_argument(
            "--output_dir",
            default=None,
            metavar="DIR",
            help="Directory the run writes into (local, gs://, s3://, azfs://): run.json, _SUCCESS, error files.",
        )
        help_group(parser, RUN).add_argument(
            "--max_error_rate",
            type=float,
            default=DEFAULT_MAX_ERROR_RATE,
            metavar="RATE",
            help=f"Fail the run (exit {EXIT_ERROR_RATE}: all written, no _SUCCESS) when more than "
            "this share of the records read are errors; 1: never.",
        )
        help_group(parser, RUN).add_argument(
            "--price_table",
            default=None,
            metavar="FILE",
            help="YAML price table (machine type -> usd_per_hour, vcpus) for the run's cost estimate; "
            "default: the example prices of pipeline/reporting/prices.yaml.",
        )


class BigQueryOptions(PipelineOptions):
    """Where BigQuery listens, for a private endpoint or a local emulator (default: Google's)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        run = help_group(parser, RUN)
        run.add_argument(
            "--bigquery_endpoint",
            default=None,
            metavar="URL",
            help="BigQuery REST endpoint, e.g. http://127.0.0.1:9050; default: Google's.",
        )
        run.add_argument(
            "--bigquery_storage_endpoint",
            default=None,
            metavar="HOST:PORT",
            help="BigQuery Storage API (gRPC) endpoint; plain text when --bigquery_endpoint is http://.",
        )


class PredictOptions(PipelineOptions):
    REQUIRED = ("--model_dir",)

    @classmethod
    def _add_argparse_args(cls, parser):
        model, read, write = help_group(parser, MODEL), help_group(parser, INPUT), help_group(parser, OUTPUT)
        quality, run = help_group(parser, QUALITY), help_group(parser, RUN)
        model.add_argument(
            "--model_dir", default=None, metavar="DIR", help="The model directory `adpredict train` exported."
        )
        read.add_argument(
            "--input_schema",
            default=None,
            metavar="FILE",
            help="Schema (YAML) of the input records, for a model without adpredict_model.json (a TFX "
            "export); default: from the model's signature (docs/model_description.md).",
        )
        write.add_argument(
            "--output_format",
            choices=OUTPUT_FORMATS,
            default="jsonl",
            metavar="FORMAT",
            help="%(choices)s; error records are JSON lines.",
        )
        write.add_argument(
            "--output_table",
            default=None,
            metavar="TABLE",
            help="Predictions table bq://project.dataset.table (with --output_format bigquery).",
        )
        write.add_argument(
            "--output_errors_table",
            default=None,
            metavar="TABLE",
            help="Errors table; default: the predictions table's name + _errors.",
        )
        write.add_argument(
            "--write_disposition",
            choices=("truncate", "append"),
            default="truncate",
            metavar="MODE",
            help="truncate: replace the tables' rows (a re-run gives the same tables), or append.",
        )
        write.add_argument(
            "--passthrough_fields",
            default=None,
            metavar="FIELDS",
            help="Input fields copied into every prediction, comma-separated; one that is not a "
            "model input may give its type: name:int|float|string (default string).",
        )
        model.add_argument(
            "--batch_size",
            type=int,
            default=None,
            metavar="N",
            help="Records per model call; default: the batch size recorded in the model.",
        )
        model.add_argument(
            "--max_batch_bytes",
            type=int,
            default=DEFAULT_MAX_BATCH_BYTES,
            metavar="BYTES",
            help="Most bytes of text and image values in one model call (default "
            f"{DEFAULT_MAX_BATCH_BYTES >> 20} MiB; 0: no cap).",
        )
        write.add_argument(
            "--force_unlock",
            action="store_true",
            default=False,
            help=f"Remove the lock file ({RUN_LOCK}) a run that is no longer running left, then run.",
        )
        run.add_argument(
            "--run_date",
            default=None,
            metavar="DATE",
            help="The date this run scores (recorded in run.json; set by `adpredict nightly`).",
        )
        model.add_argument(
            "--tf_threads",
            type=int,
            default=None,
            metavar="N",
            help="TensorFlow threads per worker process; default: cores / processes on the host.",
        )
        model.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=DEFAULT_PRECISION,
            metavar="MODE",
            help="fp32, bf16 (AVX-512 BF16 or AMX CPUs), or auto: bf16 where the model passes its "
            "bf16 check and bf16 is faster here (docs/precision.md).",
        )
        model.add_argument(
            "--gpu",
            choices=GPU_POLICIES,
            default="auto",
            metavar="MODE",
            help=f"auto: use a GPU if TensorFlow sees one; require: stop (exit {EXIT_GATE}) on a "
            "worker with none; warn: score on the CPU with a warning.",
        )
        run.add_argument(
            "--no_progress",
            action="store_true",
            default=False,
            help="No progress line (records read / scored / errors) on stderr in a local run.",
        )
        quality.add_argument(
            "--quality_gate",
            choices=("on", "off"),
            default="on",
            metavar="on|off",
            help="Compare records and predictions with the training profile and --drift_baseline; "
            "block a gross shift (docs/data_quality.md).",
        )
        quality.add_argument(
            "--duplicate_keys",
            choices=("on", "off"),
            default="on",
            metavar="on|off",
            help="Count repeated keys (holds each key: its length + 4 bytes; off for huge runs).",
        )
        quality.add_argument(
            "--quality_threshold",
            action="append",
            default=None,
            metavar="NAME=WARN:BLOCK",
            help="A limit of the gate, repeatable (defaults: "
            + ", ".join(f"{name}={limits}" for name, limits in DEFAULT_LIMITS.items())
            + f"), or {FEATURE_PREFIX}NAME for one feature's distance; off: no limit.",
        )
        quality.add_argument(
            "--accept_drift",
            action="store_true",
            default=False,
            help="Publish even if the gate blocks (a night a person reviewed); recorded as accepted.",
        )
        quality.add_argument(
            "--drift_baseline",
            default=None,
            metavar="DIR",
            help="Output directory (or run.json) of an earlier run to check drift against "
            "(`adpredict nightly` passes the previous night's).",
        )


class AnalyzeOptions(PipelineOptions):
    REQUIRED = ()

    @classmethod
    def _add_argparse_args(cls, parser):
        help_group(parser, INPUT).add_argument(
            "--schema", default="ads", help="Schema file (YAML) or a built-in name: ads, criteo."
        )
        help_group(parser, OUTPUT).add_argument(
            "--eval_percent",
            type=int,
            default=20,
            metavar="N",
            help="Percent of each label's records held out for evaluation (chosen by file and line).",
        )


def _validate_io(io: RecordIOOptions) -> None:
    if not io.input and not io.input_query:
        raise OptionsError(
            "--input is required: a file pattern (local, gs://, s3://, azfs://) or bq://project.dataset.table of input "
            "records, or --input_query"
        )
    if io.input_filter and not any(i.startswith("bq://") for i in io.input or ()):
        raise OptionsError(
            "--input_filter applies to a bq:// --input table only; remove it (with --input_query, "
            "put the condition in the query's WHERE clause)"
        )
    if not io.output_dir:
        raise OptionsError(
            "--output_dir is required: the directory (local, gs://, s3://, azfs://) the run writes into"
        )
    if not 0.0 <= io.max_error_rate <= 1.0:
        raise OptionsError(f"--max_error_rate must be between 0 and 1, got {io.max_error_rate}")
    if io.split_bytes is not None and io.split_bytes < 0:
        raise OptionsError(f"--split_bytes must be 0 (never split) or a size in bytes, got {io.split_bytes}")


def validate_predict(options: PipelineOptions) -> None:
    _validate_io(options.view_as(RecordIOOptions))
    predict = options.view_as(PredictOptions)
    if not predict.model_dir:
        raise OptionsError("--model_dir is required: the model directory `adpredict train` exported")
    if predict.batch_size is not None and predict.batch_size < 1:
        raise OptionsError(f"--batch_size must be at least 1, got {predict.batch_size}")
    if predict.max_batch_bytes < 0:
        raise OptionsError(
            f"--max_batch_bytes must be 0 (no cap) or a size in bytes, got {predict.max_batch_bytes}"
        )
    if predict.tf_threads is not None and predict.tf_threads < 1:
        raise OptionsError(f"--tf_threads must be at least 1, got {predict.tf_threads}")
    if predict.output_format == "bigquery" and not predict.output_table:
        raise OptionsError("--output_format bigquery needs --output_table bq://project.dataset.table")
    if predict.output_table and predict.output_format != "bigquery":
        raise OptionsError(
            f"--output_table needs --output_format bigquery, got --output_format {predict.output_format}"
        )
    quality_policy(options)  # a wrong --quality_threshold fails here


def quality_policy(options: PipelineOptions):
    """The data-quality gate's policy from the flags."""
    from pipeline.quality.thresholds import parse_policy

    predict = options.view_as(PredictOptions)
    return parse_policy(
        predict.quality_threshold, accept=predict.accept_drift, enabled=predict.quality_gate == "on"
    )


def validate_analyze(options: PipelineOptions) -> None:
    _validate_io(options.view_as(RecordIOOptions))
    analyze = options.view_as(AnalyzeOptions)
    if not 0 <= analyze.eval_percent < 100:
        raise OptionsError(f"--eval_percent must be in [0, 100), got {analyze.eval_percent}")


# What argparse reads as a value even though it starts with "-" (a negative number).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _beam_parser() -> argparse.ArgumentParser:
    """A parser like the one Beam builds (value-provider arguments too), tolerating a flag
    declared twice (a PipelineOptions subclass imported under two names); a value its flag
    does not take is an OptionsError, not argparse's usage text and exit."""
    try:
        from apache_beam.options.pipeline_options import _BeamArgumentParser as Parser
    except ImportError:  # a Beam without it: only value-provider flags would be missed
        Parser = argparse.ArgumentParser

    class CheckingParser(Parser):
        def error(self, message):
            raise OptionsError(message)

    return CheckingParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")


def _subclasses(cls) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _declared_parser(option_classes) -> argparse.ArgumentParser:
    """A parser of the flags a pipeline passes to Beam: Beam's (every PipelineOptions subclass
    that is not adpredict's), adpredict's shared ones and `option_classes`'.

    Beam parses flags with every subclass it knows and only warns about the rest; this is
    the set a flag must belong to, so a typo is refused instead of ignored. Another
    command's flags (analyze's --schema on predict) are not in it.
    """
    ours = {RecordIOOptions, BigQueryOptions, PredictOptions, AnalyzeOptions}
    classes = {}
    for cls in _subclasses(PipelineOptions):
        if cls not in ours:
            classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    parser = _beam_parser()
    for cls in (*classes.values(), RecordIOOptions, BigQueryOptions, *option_classes):
        try:
            cls._add_argparse_args(parser)
        except (argparse.ArgumentError, TypeError, ValueError):
            continue  # a broken third-party options class must not stop ours
    return parser


def declared_flags(option_classes) -> dict[str, argparse.Action]:
    """Every flag a pipeline command takes, by name: those it passes to Beam (see
    `_declared_parser`), -h/--help, --help_beam and --verbose."""
    return _with_command_flags(_flags_of(_declared_parser(option_classes)))


def _with_command_flags(flags: dict[str, argparse.Action]) -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    for names in (("-h", "--help"), (HELP_BEAM,), (VERBOSE_FLAG,)):
        parser.add_argument(*names, action="store_true")
    return {**flags, **_flags_of(parser)}


def _flags_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _is_value(token: str) -> bool:
    """Whether argparse would read `token` as a value rather than as a flag."""
    return not token.startswith("-") or token == "-" or " " in token or bool(_NEGATIVE_NUMBER.match(token))


def check_argv(argv, flags: dict[str, argparse.Action]) -> None:
    """Refuses a flag not in `flags` (naming the closest one) and a value no flag takes.

    Walks the arguments as argparse would: `--flag=value`, a flag and its values (how many,
    from its declaration), negative numbers as values. Values themselves are not checked
    here; their flag's parser does that.
    """
    argv = list(argv)
    i, previous = 0, None
    while i < len(argv):
        token = argv[i]
        i += 1
        if _is_value(token):
            after = f" after {' '.join(previous)}" if previous else ""
            raise OptionsError(
                f"unexpected argument {token!r}{after}: a flag takes at most one value; quote a glob pattern "
                "(--input 'data/*.jsonl') and repeat a flag for more values (--input a --input b)"
            )
        name, has_value, _ = token.partition("=")
        action = flags.get(name)
        if action is None:
            close = difflib.get_close_matches(name, [f for f in flags if f.startswith("--")], n=1)
            hint = f"did you mean {close[0]}?" if close else "--help lists the flags"
            raise OptionsError(f"unknown flag {name}; {hint}")
        previous = [token]
        if has_value or action.nargs == 0:
            continue
        if action.nargs in (None, "?"):
            most = 1
        elif isinstance(action.nargs, int):
            most = action.nargs
        else:  # "*", "+", REMAINDER
            most = len(argv)
        taken = 0
        while taken < most and i < len(argv) and _is_value(argv[i]):
            previous.append(argv[i])
            i, taken = i + 1, taken + 1


def check_flags(argv, option_classes) -> None:
    """Refuses a flag that neither adpredict's `option_classes` nor Beam declares, then a value
    its flag does not take (`--batch_size abc`, `--output_format xml`), as Beam would."""
    register_runner_options(argv)
    parser = _declared_parser(option_classes)
    check_argv(argv, _with_command_flags(_flags_of(parser)))
    parser.parse_known_args(list(argv))  # (without -h, which would take "-hour > 3" as -h our > 3)


def register_runner_options(argv) -> None:
    """Declares the flags of a runner Beam does not import by itself (Dask's), when `argv`
    names it, before the flags are checked."""
    if any("dask" in str(arg).lower() for arg in argv or ()):
        _register_dask_options()


def _register_dask_options() -> None:
    """Beam declares --dask_* flags in a module it does not import by itself (0.25 s)."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions
    except ImportError:
        pass  # dask not installed: running on it fails with Beam's message


def tf_threads(options: PipelineOptions) -> int | None:
    """TensorFlow threads per process: --tf_threads, else cores / local worker processes.

    None leaves TensorFlow's default (every core), right for one process per machine.
    """
    import os

    from apache_beam.options.pipeline_options import DirectOptions

    chosen = options.view_as(PredictOptions).tf_threads
    if chosen:
        return chosen
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        cores = os.cpu_count() or 1
        processes = direct.direct_num_workers or cores  # 0 means one per core
        return max(1, cores // processes)
    return None


def bigquery_connection(options: PipelineOptions):
    """The BigQuery project, endpoints and credentials of a run (`--project`, `--no_auth`)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from pipeline.io.bigquery import Connection

    cloud = options.view_as(GoogleCloudOptions)
    bigquery = options.view_as(BigQueryOptions)
    return Connection(
        project=cloud.project,
        endpoint=bigquery.bigquery_endpoint,
        storage_endpoint=bigquery.bigquery_storage_endpoint,
        anonymous=bool(cloud.no_auth),
    )


def inputs_from(options: PipelineOptions) -> Inputs:
    """Where a run's records come from, as its flags say."""
    io = options.view_as(RecordIOOptions)
    return Inputs(
        tuple(io.input or ()),
        io.input_format,
        io.input_query,
        io.input_filter,
        bigquery_connection(options),
        io.query_dataset,
        split_bytes(options),
    )


def split_bytes(options: PipelineOptions) -> int:
    """--split_bytes as given; by default DEFAULT_SPLIT_BYTES where a file's parts can be read
    in parallel, and 0 (each file read whole) in a local run of Beam's in_memory mode, whose
    one thread reads the parts one after the other: there cutting a file only adds the pass
    that counts each part's newlines (0.15-0.2 s for a 119 MB file, bench/one_file.py)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from pipeline.runners import LOCAL_RUNNERS

    chosen = options.view_as(RecordIOOptions).split_bytes
    if chosen is not None:
        return chosen
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    return 0 if runner in LOCAL_RUNNERS and mode == "in_memory" else DEFAULT_SPLIT_BYTES
