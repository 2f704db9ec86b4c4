"""Running the bf16 check (`pipeline.inference.precision`) on real records, and storing it.

At export the records are the raw eval sample `adpredict analyze` kept (labelled: the AUC
change is measured); for a foreign model, on first use, the first records of the run's first
input file (no labels: output changes only). Both store the result, with fp32 and bf16 speeds
on this kind of CPU, in the model directory, where `inspect` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from pipeline.blocks import RecordBlock
from pipeline.inference.devices import this_cpu
from pipeline.inference.model import LoadedModel, ModelConfig, prediction_layout
from pipeline.inference.precision import (
    BF16,
    CHECK_RECORDS,
    FP32,
    PrecisionCheck,
    compare_outputs,
    precision_record,
    read_precision_record,
    write_precision_record,
)
from pipeline.inference.tuning import first_rows, records_per_second, repeated_to
from pipeline.io.files import first_blocks
from pipeline.io.records import read_records
from pipeline.run_contract import RAW_EVAL_SAMPLE
from pipeline.validation import validate_block
from transforms.model_contract import model_files
from transforms.schema import Schema


def measure_speed(call: Callable[[str, object], object], batch, rows: int, seconds: float = 1.5) -> dict:
    """Records/s of `call(precision, batch)` in fp32 and bf16, interleaved (three rounds each,
    best kept) so a busy moment of the machine does not favour one."""
    best = {FP32: 0.0, BF16: 0.0}
    for _ in range(3):
        for precision in best:
            rate, _ = records_per_second(lambda b, p=precision: call(p, b), [batch], rows, seconds / 6)
            best[precision] = max(best[precision], rate)
    return {"cpu": this_cpu().name, "batch_size": rows, **{k: round(v) for k, v in best.items()}}


def scored_both_ways(model: LoadedModel, batch: pa.RecordBatch) -> tuple[dict, dict]:
    """`batch`'s outputs in fp32 and in bf16, called in slices of the model's batch size."""
    size = max(1, model.description.batch_size)
    results = {FP32: [], BF16: []}
    for start in range(0, batch.num_rows, size):
        part = batch.slice(start, size)
        for precision, parts in results.items():
            parts.append(model.outputs_in(precision, part))
    return tuple(
        {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} for parts in results.values()
    )


def check_and_time(model: LoadedModel, block: RecordBlock, source: str, labels=None, output=None) -> dict:
    """The check of `block` and both speeds here, merged into the model's stored record."""
    fp32, bf16 = scored_both_ways(model, block.batch)
    check = compare_outputs(fp32, bf16, source, labels, output)
    rows = max(1, model.description.batch_size)  # timed at the batch size runs use
    speed = measure_speed(lambda precision, batch: model.outputs_in(precision, batch), first_rows(
        repeated_to(block.batch, rows), rows), rows)  # fmt: skip
    return precision_record(check, speed, read_precision_record(model.local_dir))


def store_precision_check_from(model_dir: str, transform_dir: str, schema: Schema | None = None) -> dict:
    """At export: checks bf16 against fp32 on the raw eval records `analyze` sampled into
    `transform_dir` and times both; stores and returns the record. On a CPU without bf16 the
    record says so and `--precision bf16|auto` keep fp32 until a check is run elsewhere."""
    gfile = model_files()
    path = gfile.join(transform_dir, RAW_EVAL_SAMPLE)
    if not this_cpu().has_bf16 or not gfile.exists(path):
        return _not_checked(
            model_dir, "this CPU has no bf16 units" if gfile.exists(path) else f"{path} does not exist"
        )
    with gfile.GFile(path) as f:
        records = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    model = LoadedModel(model_dir)
    label = schema.label if schema else None
    # analyze keeps the sample's labels as classes (0/1, raw values mapped): read as a pass-through int
    layout = prediction_layout(model.description, label and f"{label}:int")
    block = valid_block(records, layout)
    if block is None:
        return _not_checked(model_dir, f"no record of {path} reads as a valid record of the model")
    labels = None
    if label:
        raw = block.batch.column(label).to_numpy(zero_copy_only=False)
        if not block.batch.column(label).null_count:  # unlabelled records: outputs compared only
            labels = raw.astype(np.float64)
    outputs = [o.name for o in model.description.outputs if not o.shape or o.shape == (1,)]
    source = f"the eval split sample ({len(block)} records)"
    try:
        record = check_and_time(model, block, source, labels, outputs[0] if outputs else None)
    except Exception as e:  # noqa: BLE001 - a record the model rejects: a run isolates it, a check cannot
        return _not_checked(model_dir, f"scoring {source} failed: {_one_line(e)}")
    write_precision_record(model_dir, record)
    return record


def _not_checked(model_dir: str | None, why: str) -> dict:
    """A record saying why there is no check (stored when `model_dir` is given)."""
    record = precision_record(None, None, read_precision_record(model_dir) if model_dir else None)
    record["not_checked"] = why
    if model_dir:
        write_precision_record(model_dir, record)
    return record


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def valid_block(records: list[dict], layout) -> RecordBlock | None:
    """The records that read and validate as a run would take them, as one block."""
    return _valid_rows(read_records(records, RAW_EVAL_SAMPLE, layout), layout, RAW_EVAL_SAMPLE, len(records))


def _valid_rows(items, layout, source: str, rows: int) -> RecordBlock | None:
    """The first `rows` valid records of `items` (blocks and error records, as a reader yields
    them), as one block; None when none is valid."""
    valid = []
    for item in items:
        if isinstance(item, RecordBlock):
            block, _ = validate_block(item, layout)
            if block is not None and len(block):
                valid.append(block.batch)
    if not valid:
        return None
    return RecordBlock(source, pa.Table.from_batches(valid).combine_chunks().to_batches()[0].slice(0, rows))


def needs_first_use_check(config: ModelConfig) -> bool:
    """Whether a run of `config` must check its model here first: bf16 may be used, this CPU
    has bf16 units, and the model holds no check."""
    return (
        config.precision != FP32 and this_cpu().has_bf16 and not (config.precision_record or {}).get("check")
    )


def checked_on_first_use(config: ModelConfig, sample: RecordBlock | None, source: str) -> ModelConfig:
    """A foreign model (or an older export) run with --precision bf16|auto and no stored check:
    checked here on `sample` (the run's first records) and timed; stored in the model directory
    when it can be written, and carried in the returned config for the workers either way."""
    if not needs_first_use_check(config):
        return config
    if sample is None or not len(sample):
        return config  # nothing to check on: `decide` keeps fp32 (auto) or refuses (bf16)
    model = LoadedModel(config.model_dir, config.tf_threads, config.description)
    try:
        record = check_and_time(
            model, RecordBlock(sample.source, sample.batch.slice(0, CHECK_RECORDS)), source
        )
    except Exception as e:  # noqa: BLE001 - the run isolates a record the model rejects; a check cannot
        record = _not_checked(None, f"scoring {source} failed: {_one_line(e)}")
        logging.warning("no bf16 check of %s: %s", config.model_dir, record["not_checked"])
        return dataclasses.replace(config, precision_record=record)
    try:
        write_precision_record(config.model_dir, record)
    except Exception as e:  # a read-only bucket: the run still carries the record
        logging.warning("could not store the bf16 check in %s (%s); run.json keeps it", config.model_dir, e)
    check = PrecisionCheck.from_dict(record["check"])
    logging.info("bf16 check of %s on %d records of %s: %s", config.model_dir, check.records, source,
                 check.problem() or "passed")  # fmt: skip
    return dataclasses.replace(config, precision_record=record)


def first_records(
    path: str, input_format: str | None, layout, rows: int = CHECK_RECORDS
) -> RecordBlock | None:
    """Up to `rows` valid records from the start of `path`, as one block (None: none valid)."""
    return _valid_rows(first_blocks(path, input_format, layout, rows), layout, path, rows)
