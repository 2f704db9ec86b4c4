"""adpredict as a Beam library, in the pipeline a Beam user would write around it.

1. `record_model_handler`: Beam's `RunInference` with `pipeline.RecordModelHandler`.
2. `score_records`: `pipeline.ScoreRecords`.

Both read the same JSONL files as `adpredict predict` with Beam's own `ReadFromText` +
`json.loads` (one Python dict per record, as a user's pipeline has them) and write one
`key,probability` line each, which the benchmark checks against adpredict's predictions.

Run: python -m bench.library {record_model_handler|score_records} --model_dir M
         --input 'score/*.jsonl' --output_dir OUT
"""

from __future__ import annotations

import argparse
import json
import os

import apache_beam as beam

WAYS = ("record_model_handler", "score_records")
KEY_FIELD = "id"


def build(p, way: str, model_dir: str, pattern: str, output_dir: str):
    import pipeline as adpredict

    records = p | "ReadFromText" >> beam.io.ReadFromText(pattern) | "ParseJson" >> beam.Map(json.loads)
    if way == "record_model_handler":
        from apache_beam.ml.inference.base import RunInference

        lines = (
            records
            | "RunInference" >> RunInference(adpredict.RecordModelHandler(model_dir))
            | "Format" >> beam.Map(lambda r: f"{r.example[KEY_FIELD]},{r.inference['probability']!r}")
        )
    else:
        lines = (records | "ScoreRecords" >> adpredict.ScoreRecords(model_dir))[
            "predictions"
        ] | "Format" >> beam.Map(lambda p: f"{p['key']},{p['prediction']['probability']!r}")
    return lines | "Write" >> beam.io.WriteToText(os.path.join(output_dir, "predictions"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("way", choices=WAYS)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--input", required=True, help="JSONL files of raw records.")
    parser.add_argument("--output_dir", required=True)
    args, beam_args = parser.parse_known_args(argv)
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners.launch import make_pipeline

    with make_pipeline(PipelineOptions(beam_args)) as p:
        build(p, args.way, args.model_dir, args.input, args.output_dir)


if __name__ == "__main__":
    main()
