"""The inference step of a pipeline: record blocks in, scored blocks and error records out."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from pipeline import counters
from pipeline.blocks import RecordBlock, ScoredBlock
from pipeline.inference.batching import batch_slices, call_slices
from pipeline.inference.failures import OUT_OF_MEMORY, inference_error, tf_error_reason
from pipeline.inference.golden import load_checking
from pipeline.inference.model import LoadedModel, ModelConfig
from pipeline.validation import record_keys


@dataclasses.dataclass
class _InFlight:
    """A block whose batches are with the model: (start row, batch) and the call of each."""

    block: RecordBlock
    batches: list
    calls: list


class RunInferenceFn(beam.DoFn):
    """Scores RecordBlocks in batches of the model's batch size; emits ScoredBlocks and error
    records (its own and those of the reading step, which arrive on the same stream),
    (MODEL_LOADS | MODEL_BATCHES | BATCH_SIZE_HALVINGS, n) pairs on `counts` and each model
    load's devices and precision on `devices`, for run.json.

    The model is loaded once per worker process (`shared_handle`) and shared by its threads.
    If TensorFlow rejects a batch (e.g. an image that passed validation but is corrupt
    further in), the batch is searched by bisection so the culprit becomes one error record
    and the others are still scored. If it runs out of memory, the batch size is halved for
    the rest of the run and the batch scored in halves; a record that runs out of memory
    alone becomes an error record, so the run never loops."""

    ERRORS = "errors"
    COUNTS = "counts"
    DEVICES = "devices"  # one per model load: what the process runs the model on (devices.device_report)

    def __init__(self, model: ModelConfig, shared_handle=None):
        self._config = model
        self._layout = model.layout
        self._batch_size = model.batch_size
        self._shared_handle = shared_handle or shared.Shared()
        self._model: LoadedModel | None = None
        self._model_loads = counters.counter(counters.MODEL_LOADS)
        self._batches = counters.counter(counters.MODEL_BATCHES)
        self._failed = counters.counter(counters.RECORDS_INFERENCE_FAILED)
        self._halvings = counters.counter(counters.BATCH_SIZE_HALVINGS)

    def setup(self):
        # Loaded once per process; its golden records are checked meanwhile (see `_finish`).
        self._model = self._shared_handle.acquire(
            lambda: load_checking(self._config), tag=self._config.model_dir
        )
        self._batch_size = self._model.batch_size  # the model's, or the one timed on this GPU
        self._golden_checked = False

    def start_bundle(self):
        self._in_flight = None

    def process(self, block: RecordBlock | list):
        """Sends `block`'s batches to the model, then finishes the block sent before it.

        One block stays in flight: while the model scores this one, the previous one's
        results go downstream (formatting and writing run on this thread), so neither the
        model nor this thread waits for the other.
        """
        if isinstance(block, list):  # error records from reading: passed on, see ReadAdRecords
            yield beam.pvalue.TaggedOutput(self.ERRORS, block)
            return
        if self._model.first_to_report_load():
            self._model_loads.inc()
            yield beam.pvalue.TaggedOutput(self.COUNTS, (counters.MODEL_LOADS, 1))
            yield beam.pvalue.TaggedOutput(self.DEVICES, self._model.device)
        previous, self._in_flight = self._in_flight, self._send(block)
        yield beam.pvalue.TaggedOutput(self.COUNTS, (counters.MODEL_BATCHES, len(self._in_flight.calls)))
        if previous is not None:
            yield from self._finish(previous)

    def finish_bundle(self):
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            for output in self._finish(in_flight):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def _send(self, block: RecordBlock) -> _InFlight:
        slices = call_slices(block.batch, self._batch_size, self._layout, self._config.max_batch_bytes)
        batches = [(start, block.batch.slice(start, size)) for start, size in slices]
        calls = [self._model.calls.submit(self._model.predict, batch) for _, batch in batches]
        return _InFlight(block, batches, calls)

    def _finish(self, sent: _InFlight):
        """The ScoredBlock of a block sent to the model, once its calls are done; error records
        for the records the model rejects alone."""
        block, batches, calls = sent.block, sent.batches, sent.calls
        if not self._golden_checked:
            # The first block was sent during the check: none of it leaves before the check
            # passed (a failed check raises GoldenRecordsDiffer here).
            if self._model.golden_check is not None:
                self._model.golden_check.result()
            self._golden_checked = True
        keys = record_keys(block, self._layout)
        passthrough = (
            block.batch.select(list(self._layout.passthrough_names)) if self._layout.passthrough else None
        )
        scored = []
        for index, ((start, batch), call) in enumerate(zip(batches, calls, strict=True)):
            batch_keys = keys.slice(start, batch.num_rows)
            batch_passthrough = None if passthrough is None else passthrough.slice(start, batch.num_rows)
            self._batches.inc()
            try:
                scored.append(ScoredBlock(batch_keys, call.result(), batch_passthrough))
                continue
            except concurrent.futures.CancelledError:
                failed = None  # not sent: cut at a batch size that has since been halved
            except OUT_OF_MEMORY as e:
                failed = e
                for later in calls[index + 1 :]:
                    later.cancel()  # queued at the old size: would run out of memory too
            except tf.errors.OpError as e:
                failed = e
            kept = yield from self._isolate_failures(block, batch, batch_keys, start, failed)
            if kept is not None:
                rows, outputs = kept
                all_rows = ScoredBlock(batch_keys, {}, batch_passthrough).take(rows)
                scored.append(ScoredBlock(all_rows.keys, outputs, all_rows.passthrough))
        if scored:
            done = ScoredBlock.concatenated(scored)
            counters.add(scored=len(done))
            yield done

    def _isolate_failures(self, block, batch, batch_keys, start, failed: BaseException | None = None):
        """Scores a batch that failed (with `failed`, or not yet sent) piece by piece.

        A rejected piece is bisected: halves that score are kept, halves that fail are
        split again, so one bad record costs O(log n) model calls, not one per row of a
        65,536-row batch. A piece that runs out of memory halves the batch size for the
        rest of the run and is re-cut at it. A single record that still fails becomes an
        error record. Returns (rows that scored, outputs), or None if none did.
        """
        kept_rows, kept_outputs = [], []
        pending = [(0, batch.num_rows, failed)]
        while pending:
            offset, size, error = pending.pop()
            if error is None:
                if size > self._batch_size:
                    pieces = batch_slices(size, self._batch_size)
                    pending += [(offset + at, rows, None) for at, rows in reversed(pieces)]
                    continue
                try:
                    outputs = self._model.predict(batch.slice(offset, size))
                except (*OUT_OF_MEMORY, tf.errors.OpError) as e:
                    error = e
                else:
                    kept_rows.extend(range(offset, offset + size))
                    kept_outputs.append(outputs)
                    continue
            if size > 1:
                if isinstance(error, OUT_OF_MEMORY):
                    if self._halve_batch_size(size, block.source, error):
                        yield beam.pvalue.TaggedOutput(self.COUNTS, (counters.BATCH_SIZE_HALVINGS, 1))
                    pending.append((offset, size, None))  # re-cut at the new batch size
                else:
                    half = size // 2
                    pending += [(offset + half, size - half, None), (offset, half, None)]  # first half next
                continue
            self._failed.inc()
            counters.add(errors=1)
            key = batch_keys[offset].as_py()
            error_record = inference_error(block, start + offset, key, error, self._layout)
            yield beam.pvalue.TaggedOutput(self.ERRORS, [error_record])
        if not kept_rows:
            return None
        names = kept_outputs[0].keys()
        return kept_rows, {n: np.concatenate([o[n] for o in kept_outputs]) for n in names}

    def _halve_batch_size(self, rows: int, source: str, error: BaseException) -> bool:
        """After `rows` records ran out of memory: half of them is the batch size from now on.

        A batch cut before an earlier halving (in flight beside the one that ran out first)
        is only re-cut, so one shortage halves once. Returns whether it halved.
        """
        if rows > self._batch_size:
            return False
        old, self._batch_size = self._batch_size, max(1, (rows + 1) // 2)
        self._halvings.inc()
        logging.warning(
            "Out of memory scoring %d records of %s (%s); halving the batch size "
            "from %d to %d for the rest of this worker's run and scoring them again in halves",
            rows,
            source,
            tf_error_reason(error, 120),
            old,
            self._batch_size,
        )
        return True
