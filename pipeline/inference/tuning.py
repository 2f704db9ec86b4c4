"""Choosing a model's predict batch size by timing it, once, at export.

No single batch size suits every model, nor every device: on 2 cores the light tabular benchmark model
scores ~200k records/s at 2,048 rows per call and ~1.7M at 16,384 (each call has a fixed
cost of ~9 ms), while a MobileNet-class CNN peaks near 64-128 rows. `adpredict train`
times the exported model on generated records at growing batch sizes and records the
smallest size within 5% of the fastest in the model description; `predict --batch_size`
overrides it. On a GPU, which wants far larger batches than a CPU, each process that loads
the model times it again there, from the export's size up (`tune_on_gpu`). The same timing
loop measures the bare model in bench/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable

import pyarrow as pa
import tensorflow as tf

from transforms.model_contract import TUNING_FILE

CANDIDATE_BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_WITHIN_BEST = 0.95  # prefer a smaller batch (less memory, finer error isolation) this close
_SAMPLE_RECORDS = 512


def records_per_second(call: Callable[[object], object], batches: list, rows_per_batch: int, seconds: float):
    """Calls `call` on `batches` in a loop (after one warm-up call) for at least `seconds`.

    One timed call is enough when it alone takes `seconds` (large batches of a heavy
    model). Returns (records per second, seconds per call).
    """
    call(batches[0])
    calls, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            call(batch)
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return calls * rows_per_batch / elapsed, elapsed / calls


def sweep_batch_sizes(
    call: Callable[[object], object],
    make_batches: Callable[[int], list],
    candidates=CANDIDATE_BATCH_SIZES,
    seconds: float = 0.5,
    max_call_seconds: float = 1.0,
) -> dict[int, float]:
    """Records/s per batch size, smallest first; stops once larger batches stop paying.

    Stops after two sizes in a row below 80% of the best so far, or when one call takes
    longer than `max_call_seconds` (a heavy model at a huge batch only burns memory).
    """
    results: dict[int, float] = {}
    worse_in_a_row = 0
    for size in candidates:
        batches = make_batches(size)
        if not batches:
            break
        results[size], per_call = records_per_second(call, batches, size, seconds)
        worse_in_a_row = worse_in_a_row + 1 if results[size] < 0.8 * max(results.values()) else 0
        if worse_in_a_row >= 2 or per_call > max_call_seconds:
            break
    return results


def choose_batch_size(measured: dict[int, float]) -> int:
    """The smallest batch size within 5% of the fastest one measured."""
    best = max(measured.values())
    return min(size for size, rate in measured.items() if rate >= _WITHIN_BEST * best)


def sample_table(schema, rows: int) -> pa.Table:
    """`rows` generated records of `schema` as the Arrow columns `predict` would read.

    A few hundred distinct records are repeated (zero-copy) up to `rows`.
    """
    from pipeline.blocks import RecordLayout
    from pipeline.sampledata.generate import generate_records
    from transforms.model_contract import description_from_schema

    description = description_from_schema(schema)
    layout = RecordLayout(description.inputs, description.key_field, description.key_type)
    records = list(generate_records(schema, min(rows, _SAMPLE_RECORDS), seed=1))
    return repeated_to(pa.Table.from_pylist(records, schema=layout.arrow_schema()), rows).slice(0, rows)


def repeated_to(records: pa.Table | pa.RecordBatch, rows: int) -> pa.Table:
    """`records` repeated (zero-copy) until the table holds at least `rows` rows."""
    table = pa.Table.from_batches([records]) if isinstance(records, pa.RecordBatch) else records
    while table.num_rows < rows:
        table = pa.concat_tables([table, table])
    return table


def first_rows(table: pa.Table, rows: int) -> pa.RecordBatch:
    return table.slice(0, rows).combine_chunks().to_batches()[0]


def tune_batch_size(model_dir: str, schema, seconds: float = 0.5) -> int:
    """Times the exported model (input conversion included, as in `predict`), records the
    choice in its description and the figures in TUNING_FILE; returns the chosen size."""
    from pipeline.inference.model import LoadedModel

    model = LoadedModel(model_dir)
    table = sample_table(schema, max(CANDIDATE_BATCH_SIZES))
    measured = sweep_batch_sizes(model.predict, lambda size: [first_rows(table, size)], seconds=seconds)
    chosen = choose_batch_size(measured)
    dataclasses.replace(model.description, batch_size=chosen).write(model_dir)
    figures = {"chosen": chosen, "records_per_second": {str(k): round(v) for k, v in measured.items()}}
    with tf.io.gfile.GFile(os.path.join(model_dir, TUNING_FILE), "w") as f:
        f.write(json.dumps(figures, indent=2))
    logging.info("predict batch size %d (records/s by batch size: %s)", chosen, measured)
    return chosen


GPU_SECONDS = 0.3  # per size: a GPU process times itself before its first record


def tune_on_gpu(model, records: pa.RecordBatch | None) -> int:
    """Times `model` on this process's GPU at the export's batch size and larger ones, on
    `records` repeated (the golden records), and keeps the choice for this process's calls
    (`model.batch_size`, recorded in its device report). Without records it keeps the size."""
    if records is None or not records.num_rows:
        model.device["batch_size_tuning"] = "not tuned on the GPU: the model has no golden records"
        return model.batch_size
    table = repeated_to(records, max(CANDIDATE_BATCH_SIZES))
    candidates = [size for size in CANDIDATE_BATCH_SIZES if size >= model.batch_size]
    measured = sweep_batch_sizes(
        model.predict, lambda size: [first_rows(table, size)], candidates, seconds=GPU_SECONDS
    )
    model.batch_size = choose_batch_size(measured)
    model.device["batch_size"] = model.batch_size
    model.device["batch_size_tuning"] = {str(k): round(v) for k, v in measured.items()}
    logging.info("batch size on the GPU: %d (records/s by batch size: %s)", model.batch_size, measured)
    return model.batch_size
