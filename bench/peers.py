"""The two standard ways to score the same model with Beam, as peers of `adpredict predict`.

1. `bulk_inferrer`: what TFX's BulkInferrer runs: tf.Examples read from TFRecord files,
   `tfx_bsl.public.beam.RunInference` with the model's `serving_tf_example` signature,
   PredictionLogs out (here written as one `key,probability` line each).
2. `keyed_run_inference`: Beam's own `apache_beam.ml.inference.RunInference` with a
   `KeyedModelHandler` around tfx_bsl's model handler: (key, tf.Example) pairs in,
   (key, PredictionLog) pairs out.

Same model, same records (the JSONL records written as tf.Examples once, beforehand, not
timed), same runner as the measured pipeline. `predictions()` reads what each wrote, so
the benchmark checks that they agree with adpredict's predictions.

Run: python -m bench.peers {bulk_inferrer|keyed_run_inference} --model_dir M
         --input 'examples/*.tfrecord' --output_dir OUT
"""

from __future__ import annotations

import argparse
import glob
import os

import apache_beam as beam

PEERS = ("bulk_inferrer", "keyed_run_inference")
KEY_FEATURE = "id"


def write_examples(records_pattern: str, schema_path: str, out_dir: str, max_files: int | None = None) -> str:
    """The JSONL records of `records_pattern` (its first `max_files` files) as tf.Example
    TFRecord files, one per JSONL file."""
    import json

    from pipeline.sampledata.generate import write_records
    from transforms.schema import load_schema

    schema = load_schema(schema_path)
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "*.tfrecord")):
        os.remove(stale)
    for path in sorted(glob.glob(records_pattern))[:max_files]:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        name = os.path.basename(path).replace(".jsonl", ".tfrecord")
        write_records(records, os.path.join(out_dir, name), schema, "tfrecord")
    return os.path.join(out_dir, "*.tfrecord")


def _inference_spec(model_dir: str):
    from tfx_bsl.public.proto import model_spec_pb2

    from transforms.model_contract import EXAMPLE_SIGNATURE

    return model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=model_dir, signature_name=[EXAMPLE_SIGNATURE]
        )
    )


def _key_of(example) -> str:
    return example.features.feature[KEY_FEATURE].bytes_list.value[0].decode()


def _probability(log) -> float:
    return log.predict_log.response.outputs["probability"].float_val[0]


def _request_key(log) -> str:
    import tensorflow as tf

    serialized = log.predict_log.request.inputs["examples"].string_val[0]
    return _key_of(tf.train.Example.FromString(serialized))


def build(pipeline, peer: str, model_dir: str, pattern: str, output_dir: str):
    import tensorflow as tf

    examples = (
        pipeline
        | "ReadTFRecord" >> beam.io.ReadFromTFRecord(pattern)
        | "ParseExamples" >> beam.Map(tf.train.Example.FromString)
    )
    if peer == "bulk_inferrer":
        from tfx_bsl.public.beam import RunInference

        lines = (
            examples
            | "RunInference" >> RunInference(_inference_spec(model_dir))
            | "Format" >> beam.Map(lambda log: f"{_request_key(log)},{_probability(log)!r}")
        )
    else:
        from apache_beam.ml.inference.base import KeyedModelHandler
        from apache_beam.ml.inference.base import RunInference as BeamRunInference
        from tfx_bsl.public.beam.run_inference import CreateModelHandler

        handler = KeyedModelHandler(CreateModelHandler(_inference_spec(model_dir)))
        lines = (
            examples
            | "Keyed" >> beam.Map(lambda example: (_key_of(example), example))
            | "RunInference" >> BeamRunInference(handler)
            | "Format" >> beam.MapTuple(lambda key, log: f"{key},{_probability(log)!r}")
        )
    return lines | "Write" >> beam.io.WriteToText(os.path.join(output_dir, "predictions"))


def predictions(output_dir: str) -> dict[str, float]:
    """key -> probability from what a peer wrote."""
    found = {}
    for path in glob.glob(os.path.join(output_dir, "predictions*")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.rstrip("\n").rpartition(",")
                found[key] = float(value)
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--input", required=True, help="TFRecord files of tf.Examples (write_examples).")
    parser.add_argument("--output_dir", required=True)
    args, beam_args = parser.parse_known_args(argv)
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners.launch import make_pipeline

    with make_pipeline(PipelineOptions(beam_args)) as pipeline:
        build(pipeline, args.peer, args.model_dir, args.input, args.output_dir)


if __name__ == "__main__":
    main()
