"""Command-line options of the pipelines, as PipelineOptions subclasses.

Beam parses every PipelineOptions subclass with one parser, so a flag is declared once
(shared ones in `RecordIOOptions`) and none is `required=True` there (that would make every
other pipeline demand it); `validate_*` checks them before a graph is built and names the
flag that is wrong.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.io import INPUT_FORMATS, OUTPUT_FORMATS


class OptionsError(ValueError):
    """A flag is missing or wrong; the message names it."""


class RecordIOOptions(PipelineOptions):
    """Flags every adpredict pipeline has: where records come from and where results go."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input",
            action="append",
            default=None,
            help="File pattern of input records (local path or gs://, globs allowed); repeatable.",
        )
        parser.add_argument(
            "--input_format",
            choices=INPUT_FORMATS,
            default=None,
            help="Format of the input files; by default told from the file names.",
        )
        parser.add_argument(
            "--csv_columns",
            default=None,
            help="Column order of CSV files without a header row, comma-separated "
            "(default: the schema file's csv_columns, else the first row is the header).",
        )
        parser.add_argument("--output_dir", default=None, help="Directory the run writes into.")


class PredictOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model_dir", default=None, help="Exported model directory (required).")
        parser.add_argument(
            "--output_format",
            choices=OUTPUT_FORMATS,
            default="jsonl",
            help="Format of the prediction files (errors are always JSON lines), or bigquery.",
        )
        parser.add_argument(
            "--passthrough_fields",
            default=None,
            help="Input fields copied into every prediction, comma-separated; a field that is not "
            "a model input may declare its type as name:int|float|string (default string).",
        )
        parser.add_argument(
            "--batch_size",
            type=int,
            default=None,
            help="Records per model call; default: the batch size recorded in the model.",
        )
        parser.add_argument(
            "--max_error_rate",
            type=float,
            default=1.0,
            help="Fail the run (after writing everything) if errors/read exceeds this (0..1).",
        )
        parser.add_argument(
            "--tf_threads",
            type=int,
            default=None,
            help="TensorFlow threads per worker process; default: the host's cores divided "
            "by the worker processes sharing it (so N processes do not each take every core).",
        )


class AnalyzeOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--schema", default="ads", help="Schema file (YAML) or a built-in name: ads, criteo."
        )
        parser.add_argument(
            "--eval_percent",
            type=int,
            default=20,
            help="Percent of records held out for evaluation (chosen by file and line).",
        )


def _validate_io(io: RecordIOOptions) -> None:
    if not io.input:
        raise OptionsError("--input is required: a file pattern of input records")
    if not io.output_dir:
        raise OptionsError("--output_dir is required")


def validate_predict(options: PipelineOptions) -> None:
    _validate_io(options.view_as(RecordIOOptions))
    predict = options.view_as(PredictOptions)
    if not predict.model_dir:
        raise OptionsError("--model_dir is required: the exported model directory")
    if predict.batch_size is not None and predict.batch_size < 1:
        raise OptionsError(f"--batch_size must be at least 1, got {predict.batch_size}")
    if predict.tf_threads is not None and predict.tf_threads < 1:
        raise OptionsError(f"--tf_threads must be at least 1, got {predict.tf_threads}")
    if not 0.0 <= predict.max_error_rate <= 1.0:
        raise OptionsError(f"--max_error_rate must be between 0 and 1, got {predict.max_error_rate}")


def validate_analyze(options: PipelineOptions) -> None:
    _validate_io(options.view_as(RecordIOOptions))
    analyze = options.view_as(AnalyzeOptions)
    if not 0 <= analyze.eval_percent < 100:
        raise OptionsError(f"--eval_percent must be in [0, 100), got {analyze.eval_percent}")


def print_help_if_asked(argv, prog: str, description: str, option_classes) -> bool:
    """Prints our flags and Beam's main ones for `-h/--help` (Beam's own parser hides them)."""
    import argparse

    from apache_beam.options.pipeline_options import (
        DirectOptions,
        GoogleCloudOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    if not argv or not ({"-h", "--help"} & set(argv)):
        return False
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for cls in (RecordIOOptions, *option_classes):
        cls._add_argparse_args(parser.add_argument_group(cls.__name__))
    beam_group = parser.add_argument_group("Beam options (all others are accepted too)")
    for cls in (StandardOptions, DirectOptions, GoogleCloudOptions, WorkerOptions, SetupOptions):
        try:
            cls._add_argparse_args(beam_group)
        except argparse.ArgumentError:
            continue
    parser.print_help()
    return True


def make_pipeline(options: PipelineOptions):
    """A Beam pipeline for `options`; local runs go straight to the FnApiRunner.

    Beam's DirectRunner first tries the Prism runner (a separate Go process that is
    downloaded on first use) and falls back to the FnApiRunner when it cannot start it; the
    attempt cost 0.5 s per run here and, on a machine with internet access, would run a
    different engine than the one measured in bench/. The FnApiRunner still honours
    --direct_num_workers and --direct_running_mode.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "SwitchingDirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


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
