"""The `adpredict` command: one entry point, a subcommand per job.

    adpredict generate --output PATH --records N --seed S [--format jsonl|csv]
    adpredict analyze  --schema ads --input PATTERN --output_dir DIR [Beam options...]
    adpredict train    --transform_dir DIR --model_dir DIR [--schema ads]
    adpredict predict  --model_dir DIR --input PATTERN --output_dir DIR [Beam options...]
    adpredict nightly  --config nightly.yaml [--date D | --backfill START END] [--force]
    adpredict demo     --work_dir DIR [--records N]
    adpredict inspect  MODEL_DIR [--json]
    adpredict --version

`analyze` and `predict` hand their arguments to the pipelines as Beam options, so
`adpredict predict ... --runner DataflowRunner` works as `python -m pipeline.predict` does.
A flag no command declares (neither adpredict nor Beam) is refused, naming the closest one.
`adpredict <command> --help` lists the command's own flags (`--help_beam` Beam's). Errors a
user can fix are printed as one line naming the command and what to change,
`adpredict predict: error: ...`, with exit code 2 (3 when a run wrote everything but passed
--max_error_rate). A run ends with a short summary on stdout. `--verbose`, on any command,
shows TensorFlow's start-up lines and INFO logs.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.run_contract import EXIT_ERROR_RATE, EXIT_USAGE
from pipeline.startup import VERBOSE_FLAG, command, seconds_since_start
from pipeline.trainer import IMAGE_TOWERS

__all__ = ["EXIT_ERROR_RATE", "EXIT_USAGE", "build_parser", "main"]

PROG = "adpredict"
# Commands whose module's main() parses the flags (Beam's included) and runs the job.
PIPELINE_COMMANDS = {
    "analyze": "Analyze training records with tf.Transform",
    "predict": "Score ad records with an exported model",
    "nightly": "Score one date's records (or a range of dates) from a config file, unattended",
}


def _generate(args) -> int:
    from pipeline.entrypoint import run_reporting_errors
    from pipeline.io import describe_formats, format_for
    from pipeline.run_contract import InputError
    from pipeline.sampledata.generate import generate_file

    def run(_):
        fmt = args.format
        if fmt is None:
            try:
                fmt = format_for(args.output).name
            except InputError:
                raise InputError(
                    f"cannot tell the format of --output {args.output!r} from its name; name it after its "
                    f"format or pass --format. Formats: {describe_formats()}"
                ) from None
        count = generate_file(
            args.output, args.records, seed=args.seed, fmt=fmt, schema=args.schema, first_id=args.first_id
        )
        print(f"wrote {count:,} records to {args.output}")

    return run_reporting_errors(run, None, prog=args.prog)


def _train(args) -> int:
    from pipeline.entrypoint import run_reporting_errors
    from pipeline.inference.exported import measure_export
    from pipeline.io import stores
    from pipeline.reporting.terminal import train_summary
    from pipeline.trainer.train import schema_for_training, train_and_export

    def run(_):
        # S3 and Azure (TensorFlow reads and writes neither): the analyze output is copied
        # here, and the model exported here is uploaded once it is complete.
        from apache_beam.options.pipeline_options import PipelineOptions

        stores.use_run_options(PipelineOptions([]))  # credentials and endpoints from the environment
        stores.check_stores(None, [("--transform_dir", args.transform_dir), ("--model_dir", args.model_dir)])
        transform_dir = stores.local_model_dir(args.transform_dir, "--transform_dir")
        with stores.written_locally(args.model_dir, "--model_dir", keep_failed=False) as model_dir:
            schema = schema_for_training(transform_dir, args.schema)
            metrics = train_and_export(
                transform_dir,
                schema,
                model_dir,
                epochs=args.epochs,
                seed=args.seed,
                compare_blank_image=not args.skip_blank_image_baseline,
                batch_size=args.batch_size,
                image_tower=args.image_tower,
            )
            metrics.update(measure_export(model_dir, transform_dir, schema, args.batch_size))
        print(train_summary(metrics, args.model_dir, seconds_since_start()), flush=True)

    return run_reporting_errors(run, None, prog=args.prog)


def _demo(args) -> int:
    from pipeline.demo import run_demo
    from pipeline.entrypoint import run_reporting_errors

    return run_reporting_errors(
        lambda _: run_demo(args.work_dir, args.records, args.seed), None, prog=args.prog
    )


def version() -> str:
    """`adpredict --version`: the installed package's version (setup.py's), then the stack it
    pins (TensorFlow, Beam)."""
    from importlib import metadata

    try:
        pins = [r for r in metadata.requires(PROG) or () if "==" in r and ";" not in r]
        return f"{PROG} {metadata.version(PROG)}\npinned: {', '.join(pins)}"
    except metadata.PackageNotFoundError:
        return f"{PROG} (not installed: pip install -e . gives it a version)"


def build_parser() -> argparse.ArgumentParser:
    from pipeline.entrypoint import VERBOSE_HELP, CommandParser
    from pipeline.sampledata.generate import FORMATS as GENERATED_FORMATS

    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="Write synthetic ad records with a planted signal.")
    generate.add_argument(
        "--output", required=True, help="File to write (.jsonl, .csv, .tfrecord[.gz] or .parquet)."
    )
    generate.add_argument("--records", type=int, required=True, help="How many records.")
    generate.add_argument("--seed", type=int, default=0, help="Random seed (same seed, same file).")
    generate.add_argument("--format", choices=GENERATED_FORMATS, default=None, help="Default: from --output.")
    generate.add_argument("--schema", default="ads", help="Schema file or built-in name (ads, criteo).")
    generate.add_argument(
        "--first_id", type=int, default=0, help="Keys are ad-<first_id>, ad-<first_id+1>, ..."
    )
    generate.set_defaults(handler=_generate)

    for name, what in PIPELINE_COMMANDS.items():
        sub = commands.add_parser(
            name, help=f"{what} (Beam options accepted); see `adpredict {name} --help`.", add_help=False
        )
        sub.set_defaults(pipeline_module=f"pipeline.{name}")

    train = commands.add_parser("train", help="Train on analyze's output and export the model directory.")
    train.add_argument(
        "--transform_dir",
        required=True,
        help="The --output_dir of `adpredict analyze` (local, gs://, s3://, azfs://).",
    )
    train.add_argument(
        "--model_dir",
        required=True,
        help="Where to export the model directory (local, gs://, s3://, azfs://).",
    )
    train.add_argument(
        "--schema",
        default=None,
        help="Schema file or built-in name; default: the one analyze used (kept in its run.json).",
    )
    train.add_argument("--epochs", type=int, default=12, help="Passes over the training split.")
    train.add_argument(
        "--seed", type=int, default=0, help="Random seed of the initial weights and of the batch shuffling."
    )
    train.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="Predict batch size to record in the model; default: the fastest, timed at export.",
    )
    train.add_argument(
        "--image_tower",
        choices=IMAGE_TOWERS,
        default="small",
        help="CNN for image features: a small 2-layer CNN, or MobileNetV2 (trained from scratch).",
    )
    train.add_argument(
        "--skip_blank_image_baseline",
        action="store_true",
        help="Do not train the blanked-image model used to measure the image tower's gain.",
    )
    train.set_defaults(handler=_train)

    demo = commands.add_parser("demo", help="Generate -> analyze -> train -> export -> predict, locally.")
    demo.add_argument(
        "--work_dir", required=True, help="Directory for data/, transform/, model/, predictions/."
    )
    demo.add_argument("--records", type=int, default=5000, help="Training records to generate.")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)
    commands.add_parser(
        "inspect",
        help="Describe a model directory and check it is portable "
        "(TensorFlow alone, BigQuery ML, TF Serving / Vertex AI); see `adpredict inspect --help`.",
        add_help=False,
    )
    # The commands parsed here (the pipelines parse their own flags): main() checks their flags.
    parser.subcommands = {
        name: sub for name, sub in commands.choices.items() if name not in (*PIPELINE_COMMANDS, "inspect")
    }
    for sub in (parser, *parser.subcommands.values()):
        sub.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)
        sub.set_defaults(prog=sub.prog)  # "adpredict generate": how its error lines begin
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with command(argv) as argv:  # before anything imports TensorFlow: --verbose, quiet start-up
        if argv and argv[0] == "inspect":  # its own parser; imports neither Beam nor TensorFlow
            from pipeline.inspection.command import main as inspect_main

            return inspect_main(argv[1:])
        if argv and argv[0] in PIPELINE_COMMANDS:
            import importlib

            module = importlib.import_module(f"pipeline.{argv[0]}")
            return module.main(argv[1:])
        parser = build_parser()
        if argv and argv[0] in parser.subcommands:
            from pipeline.entrypoint import error_line
            from pipeline.options import OptionsError, check_argv

            sub = parser.subcommands[argv[0]]
            try:
                check_argv(argv[1:], sub._option_string_actions)
            except OptionsError as e:
                print(error_line(sub.prog, e), file=sys.stderr)
                return EXIT_USAGE
        args = parser.parse_args(argv)
        return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
