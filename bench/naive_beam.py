"""The common Beam batch-inference pattern, as a baseline for the predict pipeline.

ReadFromText -> json.loads per line -> per-record dicts -> BatchElements -> a DoFn that
builds tensors from the dicts and calls the same SavedModel -> one JSON line per record
-> WriteToText. Same model, same files, same runner as the measured pipeline; it skips
validation and error records, so it does less work than adpredict does.

Run: python -m bench.naive_beam --model_dir M --input 'in/*.jsonl' --output_dir OUT
"""

from __future__ import annotations

import argparse
import json
import os

import apache_beam as beam


class PredictDictsFn(beam.DoFn):
    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def setup(self):
        import tensorflow as tf

        from transforms.model_contract import RAW_SIGNATURE, ModelDescription

        self._tf = tf
        self._description = ModelDescription.read(self._model_dir)
        self._model = tf.saved_model.load(self._model_dir).signatures[RAW_SIGNATURE]

    def process(self, records: list[dict]):
        tf = self._tf
        inputs = {}
        for field in self._description.inputs:
            values = [record.get(field.name) for record in records]
            if field.type == "string_list":
                inputs[field.name] = tf.ragged.constant([v or [] for v in values], tf.string).to_tensor("")
            else:
                filled = [field.fill_value if v is None else v for v in values]
                dtype = {"int": tf.int64, "float": tf.float32}.get(field.type, tf.string)
                inputs[field.name] = tf.constant(filled, dtype)
        outputs = self._model(**inputs)
        probabilities = outputs["probability"].numpy().tolist()
        key_field = self._description.key_field
        for record, probability in zip(records, probabilities, strict=True):
            yield json.dumps({"key": record.get(key_field), "prediction": {"probability": probability}})


def build(pipeline, model_dir: str, pattern: str, output_dir: str, batch_size: int | None = None):
    batching = {"min_batch_size": batch_size, "max_batch_size": batch_size} if batch_size else {}
    return (
        pipeline
        | "ReadLines" >> beam.io.ReadFromText(pattern)
        | "ParseJson" >> beam.Map(json.loads)
        | "Batch" >> beam.BatchElements(**batching)
        | "Predict" >> beam.ParDo(PredictDictsFn(model_dir))
        | "Write" >> beam.io.WriteToText(os.path.join(output_dir, "predictions"))
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=None, help="Default: BatchElements adapts.")
    args, beam_args = parser.parse_known_args(argv)
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners.launch import make_pipeline

    # The same runner as the measured pipeline (the FnApiRunner, without the Prism attempt).
    with make_pipeline(PipelineOptions(beam_args)) as pipeline:
        build(pipeline, args.model_dir, args.input, args.output_dir, args.batch_size)


if __name__ == "__main__":
    main()
