"""The `adpredict` command: one entry point, a subcommand per job.

    adpredict generate --output PATH --records N --seed S [--format jsonl|csv]
    adpredict analyze  --schema ads --input PATTERN --output_dir DIR [Beam options...]
    adpredict train    --transform_dir DIR --model_dir DIR [--schema ads]
    adpredict predict  --model_dir DIR --input PATTERN --output_dir DIR [Beam options...]
    adpredict nightly  --config nightly.yaml [--date D | --backfill START END] [--force]
    adpredict demo     --work_dir DIR [--records N]

`analyze` and `predict` hand their arguments to the pipelines as Beam options, so
`adpredict predict ... --runner DataflowRunner` works as `python -m pipeline.predict` does.
Errors a user can fix are printed as one line naming what to change, with exit code 2
(3 when a run wrote everything but passed --max_error_rate).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.entrypoint import EXIT_ERROR_RATE, EXIT_USAGE, run_reporting_errors
from trainer import IMAGE_TOWERS

__all__ = ["EXIT_ERROR_RATE", "EXIT_USAGE", "build_parser", "main"]


def _generate(args) -> int:
    from pipeline.io import InputError, describe_formats, format_for
    from sampledata.generate import generate_file

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
        print(f"wrote {count} records to {args.output}")

    return run_reporting_errors(run, None)


def _train(args) -> int:
    from pipeline.batch_tuning import tune_batch_size
    from trainer.train import train_and_export
    from transforms.schema import load_schema

    def run(_):
        schema = load_schema(args.schema)
        metrics = train_and_export(
            args.transform_dir,
            schema,
            args.model_dir,
            epochs=args.epochs,
            seed=args.seed,
            compare_blank_image=not args.skip_blank_image_baseline,
            batch_size=args.batch_size,
            image_tower=args.image_tower,
        )
        metrics["predict_batch_size"] = args.batch_size or tune_batch_size(args.model_dir, schema)
        print(f"exported model to {args.model_dir}; metrics: {metrics}")

    return run_reporting_errors(run, None)


def _demo(args) -> int:
    from pipeline.demo import run_demo

    return run_reporting_errors(lambda _: run_demo(args.work_dir, args.records, args.seed), None)


def build_parser() -> argparse.ArgumentParser:
    from sampledata.generate import FORMATS as GENERATED_FORMATS

    parser = argparse.ArgumentParser(prog="adpredict", description=__doc__.split("\n\n")[0])
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

    for name, module in (
        ("analyze", "pipeline.analyze"),
        ("predict", "pipeline.predict"),
        ("nightly", "pipeline.nightly"),
    ):
        sub = commands.add_parser(
            name,
            help=f"Run the {name} pipeline (all Beam options accepted; see --help).",
            add_help=False,
        )
        sub.set_defaults(pipeline_module=module)

    train = commands.add_parser("train", help="Train on analyze's output and export the model directory.")
    train.add_argument("--transform_dir", required=True, help="The --output_dir of `adpredict analyze`.")
    train.add_argument("--model_dir", required=True, help="Where to export the model directory.")
    train.add_argument("--schema", default="ads", help="Schema file or built-in name used by analyze.")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--seed", type=int, default=0)
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
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("analyze", "predict", "nightly"):
        import importlib

        module = importlib.import_module(f"pipeline.{argv[0]}")
        return module.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
