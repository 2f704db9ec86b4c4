"""`ScoreRecords`: adpredict's scoring as one step of a Beam user's own pipeline.

    with beam.Pipeline() as p:
        scored = (
            p
            | beam.io.ReadFromText("ads/*.jsonl")
            | beam.Map(json.loads)
            | ScoreRecords("gs://bucket/model")
        )
        scored["predictions"] | ...   # {"key": ..., "prediction": {"probability": 0.73}, ...}
        scored["errors"] | ...        # {"key", "source", "instance", "error": {"code", "field", "message"}}

Raw records (dicts) go the way `adpredict predict` takes them: batched into Arrow blocks,
read as its JSON Lines reader reads them, validated against the model description, scored in
batches by the model loaded once per worker process, a record the model rejects found by
bisection. Every record comes out as exactly one prediction or one error record, in the
formats `predict` writes. What the user's pipeline does around it (reads, joins, writes,
its own bookkeeping) is its own: there is no run.json, lock or staging here.
"""

from __future__ import annotations

import apache_beam as beam

from pipeline.blocks import RecordStream, ScoredBlock
from pipeline.inference.batching import DEFAULT_MAX_BATCH_BYTES, RecordBytes
from pipeline.inference.dofn import RunInferenceFn
from pipeline.inference.model import ModelConfig
from pipeline.inference.precision import DEFAULT_PRECISION
from pipeline.io.records import prediction_records, read_records
from pipeline.io.text import DEFAULT_BLOCK_BYTES
from pipeline.validation import COUNTS, RECORDS, CheckedRecords

PREDICTIONS, ERRORS = "predictions", "errors"
# Bytes of a block of records (their text and image values, plus a little per field), as the
# file readers cut blocks: enough records for the model's full batches, bounded in memory.
BLOCK_BYTES = DEFAULT_BLOCK_BYTES


class ScoreRecords(beam.PTransform):
    """Raw ad records (dicts) -> {"predictions": prediction records, "errors": error records}.

    `model_dir`: an adpredict model directory, or any SavedModel `predict` accepts
    (`input_schema`: the schema file of a model without adpredict_model.json).
    `passthrough_fields`: record fields copied into every prediction ("a,b:int"), e.g. an id
    to join on when the model has no key field. `batch_size`: records per model call
    (default: the batch size recorded in the model); `max_batch_bytes`: most text and image
    bytes per call. `precision`: fp32, bf16 or auto, as `predict --precision`. `source` names the records in error records (`<source>:<n>`, n the
    record's position in the batch it was scored in).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        input_schema: str | None = None,
        passthrough_fields: str | None = None,
        batch_size: int | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        tf_threads: int | None = None,
        precision: str = DEFAULT_PRECISION,
        source: str = "records",
    ):
        super().__init__()
        self._model = ModelConfig.from_model_dir(
            model_dir,
            input_schema=input_schema,
            passthrough_fields=passthrough_fields,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            tf_threads=tf_threads,
            precision=precision,
        )
        self._source = source

    def expand(self, records):
        model = self._model
        parsed = (
            records
            | "BatchRecords"
            >> beam.BatchElements(
                min_batch_size=BLOCK_BYTES,
                max_batch_size=BLOCK_BYTES,
                element_size_fn=RecordBytes(model.layout),
                record_metrics=False,
            )
            | "ReadRecords"
            >> beam.ParDo(_ReadRecordsFn(model.layout, self._source))
            .with_output_types(RecordStream)
            .with_outputs(COUNTS, main=RECORDS)
        )
        inference = parsed[RECORDS] | "RunInference" >> beam.ParDo(RunInferenceFn(model)).with_output_types(
            ScoredBlock
        ).with_outputs(RunInferenceFn.ERRORS, RunInferenceFn.COUNTS, RunInferenceFn.DEVICES, main="scored")
        predictions = inference["scored"] | "PredictionRecords" >> beam.ParDo(
            _PredictionRecordsFn(model.prediction_columns())
        )
        errors = inference[RunInferenceFn.ERRORS] | "ErrorRecords" >> beam.FlatMap(lambda failed: failed)
        return {PREDICTIONS: predictions, ERRORS: errors}


class _ReadRecordsFn(beam.DoFn):
    """A batch of records -> validated record blocks and lists of error records, as the reading
    step of `predict` yields them (`pipeline.validation.CheckedRecords`)."""

    def __init__(self, layout, source: str):
        self._layout = layout
        self._source = source

    def setup(self):
        self._checked = CheckedRecords(self._layout)

    def process(self, batch: list):
        yield from self._checked(read_records(batch, self._source, self._layout))


class _PredictionRecordsFn(beam.DoFn):
    def __init__(self, columns):
        self._columns = columns

    def process(self, scored: ScoredBlock):
        yield from prediction_records(scored, self._columns)
