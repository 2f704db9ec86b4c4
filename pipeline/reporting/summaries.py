"""Bounded summaries of a run, computed inside the pipeline like its counts: the error records
by kind, each model output's distribution, throughput over time.

Each is a CombineFn whose accumulator stays the same size whatever the number of records
(histograms on a fixed grid, capped category counts, time buckets), and merges exactly in
any order and grouping Beam combines them. The run's last step (`pipeline.run.finalize`)
writes the error counts to the errors_stats file and hands all three to the report page.
"""

from __future__ import annotations

import json
import time

import apache_beam as beam
import numpy as np

from transforms.data_profile import Grid

HISTOGRAM_CAP = 2048  # fine bins per numeric output, whatever the number of values
HISTOGRAM_BARS = 40  # at most this many bars drawn (groups of fine bins)
CATEGORY_CAP = 50  # distinct values counted per text output; more: only totals
THROUGHPUT_CAP = 200  # time buckets over the run, whatever its length


class _OutputStats:
    """What the report shows of one model output: counts, extremes, mean, and a `Grid`
    (numbers) or counts per distinct value (text, up to `CATEGORY_CAP` values)."""

    def __init__(self):
        self.records = 0  # rows of the output
        self.values = 0  # elements (rows x the output's per-row shape)
        self.shape: tuple | None = None  # per-row shape, the first seen
        self.kind = None  # "number" or "text"
        self.nan = self.posinf = self.neginf = 0
        self.sum = 0.0
        self.grid = Grid(HISTOGRAM_CAP)
        self.categories: dict[str, int] | None = {}  # None: more than CATEGORY_CAP distinct

    def add(self, array) -> None:
        array = np.asarray(array)
        if self.shape is None:
            self.shape = tuple(array.shape[1:])
        self.records += array.shape[0] if array.ndim else 1
        self.values += array.size
        flat = array.ravel()
        if array.dtype.kind in "biuf":
            self.kind = self.kind or "number"
            flat = flat.astype(np.float64)
            finite = np.isfinite(flat)
            if not finite.all():
                self.nan += int(np.isnan(flat).sum())
                self.posinf += int((flat == np.inf).sum())
                self.neginf += int((flat == -np.inf).sum())
                flat = flat[finite]
            self.sum += float(flat.sum())
            self.grid.add(flat)
        else:
            self.kind = self.kind or "text"
            if self.categories is not None:
                values, counts = np.unique([_as_text(v) for v in flat], return_counts=True)
                self._count(zip(values.tolist(), counts.tolist(), strict=True))

    def merge(self, other: _OutputStats) -> None:
        self.shape = self.shape if self.shape is not None else other.shape
        self.kind = self.kind or other.kind
        self.records += other.records
        self.values += other.values
        self.nan += other.nan
        self.posinf += other.posinf
        self.neginf += other.neginf
        self.sum += other.sum
        self.grid.merge(other.grid)
        if other.categories is None:
            self.categories = None
        elif self.categories is not None:
            self._count(other.categories.items())

    def _count(self, pairs) -> None:
        for value, count in pairs:
            self.categories[value] = self.categories.get(value, 0) + int(count)
        if len(self.categories) > CATEGORY_CAP:
            self.categories = None

    def summary(self, name: str) -> dict:
        finite = self.grid.total
        found = {
            "name": name,
            "kind": self.kind,
            "records": self.records,
            "values": self.values,
            "shape": list(self.shape) if self.shape is not None else None,
            "nonfinite": {"nan": self.nan, "+inf": self.posinf, "-inf": self.neginf},
        }
        if self.kind == "number" or self.kind is None:
            found.update(
                finite=finite,
                min=self.grid.lo if finite else None,
                max=self.grid.hi if finite else None,
                mean=self.sum / finite if finite else None,
                bins=[list(b) for b in self.grid.bins(HISTOGRAM_BARS)],
            )
        else:
            categories = sorted((self.categories or {}).items(), key=lambda item: (-item[1], item[0]))
            found.update(categories=[list(c) for c in categories], too_many_values=self.categories is None)
        return found


def _as_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class OutputSummariesFn(beam.CombineFn):
    """ScoredBlocks -> per model output: counts, non-finite values apart, min/max/mean, and
    a histogram (numbers, any shape, flattened) or counts per value (text).

    Memory per output is `HISTOGRAM_CAP` counters (or `CATEGORY_CAP` values) however many
    records pass; `outputs` lists the model's outputs so one that never got a value (every
    record failed) is still reported.
    """

    def __init__(self, outputs=()):
        self._outputs = tuple(outputs)

    def create_accumulator(self):
        return {name: _OutputStats() for name in self._outputs}

    def add_input(self, accumulator, scored):
        for name, values in scored.outputs.items():
            accumulator.setdefault(name, _OutputStats()).add(values)
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None) or self.create_accumulator()
        for accumulator in accumulators:
            for name, stats in accumulator.items():
                merged.setdefault(name, _OutputStats()).merge(stats)
        return merged

    def extract_output(self, accumulator):
        return [accumulator[name].summary(name) for name in sorted(accumulator, key=self._order)]

    def _order(self, name: str):
        return (self._outputs.index(name), "") if name in self._outputs else (len(self._outputs), name)


def scored_at(scored) -> tuple[float, int]:
    """(wall-clock time, records) of a block as the inference step emits it.

    Applied right after RunInference, so the runner fuses it into the same step and the
    time is that of the block's emission (no change to the inference code)."""
    return time.time(), len(scored)


class ThroughputFn(beam.CombineFn):
    """(time, records) pairs -> records per time bucket over the run: buckets of one second,
    doubled as often as needed to stay within `THROUGHPUT_CAP` buckets (a `Grid`)."""

    def create_accumulator(self):
        return Grid(THROUGHPUT_CAP, min_exponent=0)

    def add_input(self, accumulator, stamped):
        when, records = stamped
        accumulator.add(np.array([when]), np.array([records]))
        return accumulator

    def add_inputs(self, accumulator, elements):
        stamped = np.array(list(elements), dtype=np.float64).reshape(-1, 2)
        accumulator.add(stamped[:, 0], stamped[:, 1].astype(np.int64))
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None) or self.create_accumulator()
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator):
        return {
            "records": accumulator.total,
            "first": accumulator.lo if accumulator.total else None,
            "last": accumulator.hi if accumulator.total else None,
            "buckets": [list(b) for b in accumulator.bins()],
        }


class CountErrorsFn(beam.CombineFn):
    """Counts error records per (code, field), keeping one example message each."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, errors: list):
        for error in errors:
            kind = (error["error"]["code"], error["error"]["field"])
            count, example = accumulator.get(kind, (0, error["error"]["message"]))
            accumulator[kind] = (count + 1, example)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for kind, (count, example) in accumulator.items():
                merged[kind] = (merged.get(kind, (0, example))[0] + count, example)
        return merged

    def extract_output(self, accumulator):
        rows = [
            {"code": code, "field": field, "count": count, "example_message": example}
            for (code, field), (count, example) in accumulator.items()
        ]
        rows.sort(key=lambda row: (-row["count"], row["code"], row["field"] or ""))
        return json.dumps({"errors": sum(r["count"] for r in rows), "by_kind": rows}, indent=2)
