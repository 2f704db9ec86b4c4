"""`RecordModelHandler`: an adpredict model for Beam's own `RunInference`.

    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    records | RunInference(RecordModelHandler("gs://bucket/model"))
    keyed | RunInference(KeyedModelHandler(RecordModelHandler("gs://bucket/model")))

Examples are raw ad records (dicts, as `predict` reads JSON lines); each `PredictionResult`
carries the record and the model's named outputs for it (`{"probability": 0.73}`). The
records of a batch become Arrow columns and tensors as in `predict`; RunInference batches
them by the batch size recorded in the model, and each batch is cut into model calls of at
most `max_batch_bytes` of text and images. A batch holding a record that cannot be scored
(a wrong type, a missing field, a bad image) raises `InvalidRecords`, naming the first few:
route such batches with `RunInference(...).with_exception_handling()`, or use
`pipeline.ScoreRecords`, which keeps every other record of the batch and gives one error
record per bad one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline.inference.batching import DEFAULT_MAX_BATCH_BYTES, RecordBytes, call_slices
from pipeline.inference.golden import load_checked
from pipeline.inference.model import LoadedModel, ModelConfig
from pipeline.inference.precision import DEFAULT_PRECISION
from pipeline.io.records import read_records
from pipeline.validation import validate_block

SOURCE = "RunInference"  # the error records' source: `RunInference:<n>`, n the record's place in its batch
ERRORS_NAMED = 3  # error records named in an InvalidRecords message


class InvalidRecords(ValueError):
    """Records of a batch cannot be scored; `errors` are their error records, as `predict`
    writes them."""

    def __init__(self, errors: list[dict], batch_size: int):
        self.errors = errors
        named = "; ".join(
            f"record {e['source']} (key {e['key']!r}): {e['error']['message']}" for e in errors[:ERRORS_NAMED]
        )
        more = f"; and {len(errors) - ERRORS_NAMED} more" if len(errors) > ERRORS_NAMED else ""
        super().__init__(
            f"{len(errors)} of {batch_size} records cannot be scored: {named}{more}. Route failed batches "
            "with RunInference(...).with_exception_handling(), or use pipeline.ScoreRecords for one "
            "error record per bad record"
        )


class RecordModelHandler(ModelHandler[dict, PredictionResult, LoadedModel]):
    """A ModelHandler for an adpredict model directory (or any SavedModel `predict` accepts;
    `input_schema`: the schema file of one without adpredict_model.json).

    `batch_size` (default: the batch size recorded in the model) is RunInference's batch
    size; `max_batch_bytes` caps the text and image bytes of one model call; `precision`: fp32,
    bf16 or auto, as `predict --precision` (docs/precision.md). `large_model` or
    `model_copies` share the model across a worker's processes, as Beam's handlers do;
    other keyword arguments (`min_batch_size`, `max_batch_duration_secs`, ...) go to
    ModelHandler.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        input_schema: str | None = None,
        batch_size: int | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        tf_threads: int | None = None,
        precision: str = DEFAULT_PRECISION,
        large_model: bool = False,
        model_copies: int | None = None,
        **kwargs,
    ):
        config = ModelConfig.from_model_dir(
            model_dir,
            input_schema=input_schema,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            tf_threads=tf_threads,
            precision=precision,
        )
        kwargs.setdefault("min_batch_size", config.batch_size)
        kwargs.setdefault("max_batch_size", config.batch_size)
        super().__init__(large_model=large_model, model_copies=model_copies, **kwargs)
        self._config = config

    def load_model(self) -> LoadedModel:
        return load_checked(self._config)  # the golden records first, as predict's workers do

    def run_inference(
        self, batch: Sequence[dict], model: LoadedModel, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        """Scores `batch`; `model` may be a proxy to a model shared across processes, so only
        its `predict` is called."""
        config = self._config
        records = self.record_batch(batch)
        outputs: dict[str, list] = {o.name: [] for o in config.description.outputs}
        for start, size in call_slices(records, config.batch_size, config.layout, config.max_batch_bytes):
            for name, values in model.predict(records.slice(start, size)).items():
                outputs[name] += values.tolist()
        return [
            PredictionResult(
                example, {name: values[row] for name, values in outputs.items()}, self._config.model_dir
            )
            for row, example in enumerate(batch)
        ]

    def record_batch(self, batch: Sequence[dict]) -> pa.RecordBatch:
        """The batch as validated Arrow columns, a row per record in the batch's order; raises
        InvalidRecords when any record cannot be scored."""
        layout = self._config.layout
        blocks, failed = [], []
        for item in read_records(batch, SOURCE, layout):
            if isinstance(item, dict):
                failed.append(item)
                continue
            valid, invalid = validate_block(item, layout)
            failed += invalid
            if valid is not None:
                blocks.append(valid)
        if failed:
            raise InvalidRecords(sorted(failed, key=_position), len(batch))
        # A batch that parses whole is one block, in line order (pipeline.io.text.BlockParser).
        return blocks[0].batch if blocks else layout.empty_block().batch

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        size = RecordBytes(self._config.layout)
        return sum(size(record) for record in batch)

    def get_metrics_namespace(self) -> str:
        return "adpredict_RunInference"

    def validate_inference_args(self, inference_args: dict | None):
        if inference_args:
            raise ValueError(
                f"RecordModelHandler takes no inference_args, got {sorted(inference_args)}; "
                "the model's inputs come from each record"
            )


def _position(error: dict) -> int:
    return int(error["source"].rpartition(":")[2] or 0)
