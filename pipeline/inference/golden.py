"""Golden records: a canary that the model still gives, here, the outputs it gave at export.

At export (`adpredict train`, `adpredict demo`) a few dozen raw records of the eval split are
scored and stored with their outputs in the model directory (`GOLDEN_RECORDS_FILE`). Every
process that loads the model for a run (the launcher's machine, each Dataflow worker, whose
container may hold another TensorFlow or oneDNN build) scores them first, the way a run
scores records, and stops before any output if an output moved by more than the stored
tolerance, naming the worst record and output. A model adpredict did not train has no such
file: the check is skipped (`adpredict inspect` says so).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging

import numpy as np

from pipeline.blocks import RecordBlock
from pipeline.inference.model import LoadedModel, ModelConfig, prediction_layout
from pipeline.inference.precision import FP32
from pipeline.inference.tuning import tune_on_gpu
from pipeline.io.records import read_records
from pipeline.run_contract import RAW_EVAL_SAMPLE, GateFailed
from pipeline.validation import validate_block
from transforms.model_contract import GOLDEN_RECORDS_FILE, model_files, read_model_json

GOLDEN_RECORDS = 32  # records stored at export
# |output now - output at export| allowed: float32 models differ by ~1e-6 between oneDNN
# builds and thread counts; a wrong kernel, a changed op or a broken build by far more.
GOLDEN_TOLERANCE = 1e-4
FORMAT_VERSION = 1


class GoldenRecordsDiffer(GateFailed):
    """The model's outputs on its golden records moved beyond the tolerance in this process."""


def load_checked(config: ModelConfig) -> LoadedModel:
    """The model, loaded, after its golden records gave their stored outputs here; on a GPU,
    with its batch size timed there (on the golden records) unless --batch_size was given."""
    model = config.load()
    check_golden_records(model)
    _tune_on_gpu(model, config)
    return model


def load_checking(config: ModelConfig) -> LoadedModel:
    """`load_checked`, but the check runs on the model's call threads (`model.golden_check`, a
    future) while the run reads its first block and sends it to the model (TensorFlow and
    pyarrow release the GIL): RunInference holds every result back until the check passed,
    so nothing scored leaves a model that failed it. Where the batch size is timed on a GPU
    (from the check's records), the check comes first, as in `load_checked`.

    A run in bf16 also calls the model once on the golden records, on the other call thread,
    while the check runs in fp32: its first bf16 call makes TensorFlow optimize the bf16 graph
    (0.08 s alone for the demo model, up to 0.2 s beside the reading), which the first block
    would otherwise wait for."""
    model = config.load()
    if model.gpus and not config.batch_size_given:
        model.golden_check = concurrent.futures.Future()
        model.golden_check.set_result(check_golden_records(model))
        _tune_on_gpu(model, config)
    else:
        model.golden_check = model.calls.submit(check_golden_records, model)
        if model.precision != FP32:
            model.calls.submit(_warm_up, model)
    return model


def _warm_up(model: LoadedModel) -> None:
    """One call in the run's precision on the golden records; its result is not used (nor a
    failure: the run's own calls meet it and report it)."""
    block = _golden_block(model)
    if block is not None:
        try:
            model.predict(block.batch)
        except Exception as e:  # noqa: BLE001 - see the docstring
            logging.debug("Warming up %s in %s failed: %s", model.model_dir, model.precision, e)


def _tune_on_gpu(model: LoadedModel, config: ModelConfig) -> None:
    if model.gpus and not config.batch_size_given:
        block = _golden_block(model)
        tune_on_gpu(model, block.batch if block is not None else None)


def _golden_block(model: LoadedModel) -> RecordBlock | None:
    """The model's golden records as a run reads them; None if it has none (or they no longer
    read as valid records, which the check reports)."""
    return _golden_records(model)[1]


def _golden_records(model: LoadedModel) -> tuple[dict | None, RecordBlock | None]:
    """The stored golden records and, read as a run reads them, their block (None: they no
    longer read as valid records); (None, None) for a model that has none."""
    stored = read_golden_records(model.local_dir)
    if stored is None:
        return None, None
    return stored, _block([e["record"] for e in stored["records"]], prediction_layout(model.description))


def store_golden_records(model_dir: str, records: list[dict], tensorflow_version: str) -> int:
    """Scores up to GOLDEN_RECORDS of `records` (raw records, as a run reads them) with the
    exported model and stores them with their outputs; returns how many were stored."""
    model = LoadedModel(model_dir)
    block, kept = _scorable(model, records[:GOLDEN_RECORDS])
    if block is None:
        return 0
    outputs = model.outputs(block.batch)
    stored = {
        "format_version": FORMAT_VERSION,
        "tolerance": GOLDEN_TOLERANCE,
        "tensorflow": tensorflow_version,
        "records": [
            {"record": record, "outputs": {name: values[row].tolist() for name, values in outputs.items()}}
            for row, record in enumerate(kept)
        ],
    }
    gfile = model_files()
    with gfile.GFile(gfile.join(model_dir, GOLDEN_RECORDS_FILE), "w") as f:
        f.write(json.dumps(stored, indent=1))
    return len(kept)


def store_golden_records_from(model_dir: str, transform_dir: str) -> int:
    """Stores the golden records of a model trained on `transform_dir`, from the raw eval
    records `adpredict analyze` sampled there; returns how many (0: it sampled none)."""
    import tensorflow as tf

    gfile = model_files()
    path = gfile.join(transform_dir, RAW_EVAL_SAMPLE)
    if not gfile.exists(path):
        return 0
    with gfile.GFile(path) as f:
        records = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    return store_golden_records(model_dir, records, tf.__version__)


def read_golden_records(model_dir: str) -> dict | None:
    """The stored golden records, or None for a model that has none."""
    return read_model_json(model_dir, GOLDEN_RECORDS_FILE)


def check_golden_records(model: LoadedModel) -> float | None:
    """Raises GoldenRecordsDiffer if an output moved beyond the tolerance; returns the largest
    difference (None: the model has no golden records)."""
    stored, block = _golden_records(model)
    if stored is None:
        return None
    records = [entry["record"] for entry in stored["records"]]
    if block is None:
        raise GoldenRecordsDiffer(
            f"model {model.model_dir}: its golden records ({GOLDEN_RECORDS_FILE}) no longer read as "
            "valid records here; export the model again"
        )
    outputs = model.outputs(block.batch)
    worst = None
    for name, values in outputs.items():
        expected = np.asarray([entry["outputs"][name] for entry in stored["records"]], dtype=np.float64)
        got = np.asarray(values, dtype=np.float64).reshape(expected.shape)
        difference = np.abs(got - expected).reshape(len(records), -1).max(axis=1)
        row = int(np.argmax(difference))
        if worst is None or difference[row] > worst[0]:
            worst = (float(difference[row]), row, name, got[row], expected[row])
    largest, row, name, got, expected = worst
    if largest > stored["tolerance"]:
        key = model.description.key_field
        which = records[row].get(key, f"#{row + 1}") if key else f"#{row + 1}"
        raise GoldenRecordsDiffer(
            f"model {model.model_dir} does not give its golden records' outputs here: record {which!r}, "
            f"output {name!r} is {_show(got)}, was {_show(expected)} at export (difference {largest:.3g}, "
            f"tolerance {stored['tolerance']:g}); TensorFlow here {_tensorflow_version()}, at export "
            f"{stored.get('tensorflow')}: run on the environment the model was exported with, or export it again"
        )
    return largest


def _scorable(model: LoadedModel, records: list[dict]) -> tuple[RecordBlock | None, list[dict]]:
    """The records a run would score (read and validated as a run does), as one block, and
    those records; (None, []) when none is."""
    layout = prediction_layout(model.description)
    kept = [record for record in records if _block([record], layout) is not None]
    return (_block(kept, layout), kept) if kept else (None, [])


def _block(records: list[dict], layout) -> RecordBlock | None:
    """`records` as one validated block, or None if any of them is an error record."""
    items = list(read_records(records, GOLDEN_RECORDS_FILE, layout))
    if len(items) != 1 or not isinstance(items[0], RecordBlock):
        return None
    valid, failed = validate_block(items[0], layout)
    return valid if not failed and valid is not None and len(valid) == len(records) else None


def _show(values) -> str:
    flat = np.asarray(values).reshape(-1)
    return f"{flat[0]:.6g}" if flat.size == 1 else np.array2string(flat, precision=6)


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__
