"""What adpredict stores beside a model it exported, once the model has run here the way
`predict` runs it: the batch size timed, the golden records, the bf16 check and speeds."""

from __future__ import annotations

from pipeline.inference.golden import store_golden_records_from
from pipeline.inference.precision import summary_of
from pipeline.inference.precision_check import store_precision_check_from
from pipeline.inference.tuning import tune_batch_size
from transforms.schema import Schema


def measure_export(model_dir: str, transform_dir: str, schema: Schema, batch_size: int | None = None) -> dict:
    """What is stored beside an exported model once it has run here as `predict` runs it: the
    batch size timed (unless given), the golden records, the bf16 check and speeds. Returns
    them for the summary."""
    measured = {"predict_batch_size": batch_size or tune_batch_size(model_dir, schema)}
    measured["golden_records"] = store_golden_records_from(model_dir, transform_dir)
    record = store_precision_check_from(model_dir, transform_dir, schema)
    measured["precision_check"] = summary_of(record)
    return measured
