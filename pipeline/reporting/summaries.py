"""Bounded summaries of a run, computed inside the pipeline like its counts: the error records
by kind and by input, each model output's distribution, throughput over time.

Each is a CombineFn whose accumulator stays the same size whatever the number of records
(histograms on a fixed grid, capped category counts, time buckets; one count per input
file), and merges exactly in any order and grouping Beam combines them. The run's last
step (`pipeline.run.finalize`) writes the error counts to the errors_stats file and
run.json, and hands all three to the report page (`throughput_bars` draws the throughput).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import time

import apache_beam as beam
import numpy as np

HISTOGRAM_CAP = 2048  # fine bins per numeric output, whatever the number of values
HISTOGRAM_BARS = 40  # at most this many bars drawn (groups of fine bins)
CATEGORY_CAP = 50  # distinct values counted per text output; more: only totals
THROUGHPUT_CAP = 200  # time buckets over the run, whatever its length
THROUGHPUT_FINEST = -10  # the finest time bucket: 2**-10 s, about 1 ms
THROUGHPUT_BARS = 40  # at most this many bars drawn


class Grid:
    """Counts of numbers in bins of width 2**exponent aligned at 0: at most `cap` bins from
    the smallest number to the largest.

    The width is the finest that spans [min, max] in `cap` bins (never finer than
    `min_exponent`, nor finer than float64 tells apart), so it depends on the extremes only:
    merging grids re-bins each by an integer shift and gives exactly what one grid over all
    the numbers gives, in whatever order and grouping Beam combines them. Memory: `cap`
    counters.
    """

    def __init__(self, cap: int, min_exponent: int | None = None):
        self.cap = cap
        self.min_exponent = min_exponent
        self.exponent = 0
        self.start = 0  # bin index of counts[0]
        self.counts = np.zeros(0, np.int64)
        self.lo, self.hi = math.inf, -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        values = np.asarray(values, np.float64).ravel()
        if not len(values):
            return
        lo, hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
        self._rebin(lo, hi)
        index = np.floor(np.ldexp(values, -self.exponent)).astype(np.int64) - self.start
        if weights is None:
            self.counts += np.bincount(index, minlength=len(self.counts))
        else:
            np.add.at(self.counts, index, np.asarray(weights, np.int64).ravel())

    def merge(self, other: Grid) -> None:
        if not len(other.counts):
            return
        self._rebin(min(self.lo, other.lo), max(self.hi, other.hi))
        index = _shifted(other.start + np.arange(len(other.counts)), self.exponent - other.exponent)
        np.add.at(self.counts, index - self.start, other.counts)

    def bins(self, max_bins: int | None = None) -> list[tuple[float, float, int]]:
        """(low edge, high edge, count) from the lowest bin to the highest, in at most
        `max_bins` bins of a power-of-two number of grid bins each (edges stay round)."""
        if not len(self.counts):
            return []
        shift = 0
        if max_bins and len(self.counts) > max_bins:
            shift = math.ceil(math.log2(len(self.counts) / max_bins))
        index = _shifted(self.start + np.arange(len(self.counts)), shift)
        first = int(index[0])
        grouped = np.zeros(int(index[-1]) - first + 1, np.int64)
        np.add.at(grouped, index - first, self.counts)
        width = self.exponent + shift
        return [
            (math.ldexp(first + i, width), math.ldexp(first + i + 1, width), int(count))
            for i, count in enumerate(grouped)
        ]

    def _exponent_for(self, lo: float, hi: float) -> int:
        exponent = math.frexp(max(abs(lo), abs(hi)))[1] - 53  # finer tells nothing apart
        if self.min_exponent is not None:
            exponent = max(exponent, self.min_exponent)
        half_span = hi / 2 - lo / 2  # (hi - lo) / 2 without overflow
        if half_span > 0:  # every exponent up to this one needs more than `cap` bins
            exponent = max(exponent, math.floor(math.log2(half_span / (self.cap + 1))))
        while math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent)) >= self.cap:
            exponent += 1
        return exponent

    def _rebin(self, lo: float, hi: float) -> None:
        exponent = self._exponent_for(lo, hi)
        start = math.floor(math.ldexp(lo, -exponent))
        size = math.floor(math.ldexp(hi, -exponent)) - start + 1
        counts = np.zeros(size, np.int64)
        if len(self.counts):
            index = _shifted(self.start + np.arange(len(self.counts)), exponent - self.exponent)
            np.add.at(counts, index - start, self.counts)
        self.exponent, self.start, self.counts, self.lo, self.hi = exponent, start, counts, lo, hi


def _shifted(index: np.ndarray, shift: int) -> np.ndarray:
    """floor(index / 2**shift): the bins of a grid `shift` steps coarser (shift >= 0)."""
    # Bin indexes are below 2**54 in magnitude, so a shift of 60 already maps them to 0 or -1.
    return np.right_shift(index.astype(np.int64), min(shift, 60))


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


class _Stamps:
    """ThroughputFn's accumulator: records by time (a `Grid`) and the number of blocks."""

    def __init__(self):
        self.grid = Grid(THROUGHPUT_CAP, min_exponent=THROUGHPUT_FINEST)
        self.blocks = 0


class ThroughputFn(beam.CombineFn):
    """(time, records) pairs -> records per time bucket, in seconds since `origin` (the run's
    start, so that buckets start with the run, not on the wall clock's whole seconds):
    buckets of 2**THROUGHPUT_FINEST s, doubled as often as needed to stay within
    `THROUGHPUT_CAP` (a `Grid`); and how many blocks were stamped."""

    def __init__(self, origin: float = 0.0):
        self._origin = origin

    def create_accumulator(self):
        return _Stamps()

    def add_input(self, accumulator, stamped):
        return self.add_inputs(accumulator, [stamped])

    def add_inputs(self, accumulator, elements):
        stamped = np.array(list(elements), dtype=np.float64).reshape(-1, 2)
        accumulator.grid.add(stamped[:, 0] - self._origin, stamped[:, 1].astype(np.int64))
        accumulator.blocks += len(stamped)
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None) or self.create_accumulator()
        for accumulator in accumulators:
            merged.grid.merge(accumulator.grid)
            merged.blocks += accumulator.blocks
        return merged

    def extract_output(self, accumulator):
        grid = accumulator.grid
        return {
            "origin": self._origin,
            "records": grid.total,
            "blocks": accumulator.blocks,
            "first": grid.lo if grid.total else None,
            "last": grid.hi if grid.total else None,
            "buckets": [list(b) for b in grid.bins()],
        }


def throughput_bars(throughput: dict, max_bars: int = THROUGHPUT_BARS) -> dict:
    """`ThroughputFn`'s summary as bars of records per second: {"bars": [(start, end,
    records / (end - start), records)], "width", "start", "end"}, times in seconds since the
    run's start; no bars when nothing was scored.

    A block is stamped when it leaves the model, so records scored at a steady rate show as
    spikes in buckets shorter than the gaps between blocks. The bars are buckets of a
    power-of-two width aligned to the run's start, wide enough for about two blocks each, and
    cut to the scoring: from its estimated start (the first block took as long as the others'
    rate says; the run's start when there is no other block) to the last block. A piece of
    a bucket shorter than half a bucket at either end joins its neighbour; scoring shorter
    than one bucket is one bar. Each bar's rate is its records over its own duration."""
    buckets = [b for b in throughput.get("buckets") or [] if b[2]]
    records = sum(b[2] for b in buckets)
    if not records:
        return {"bars": [], "width": None, "start": None, "end": None}
    first, last = throughput["first"], throughput["last"]
    head = buckets[0][2]  # the first fine bucket's records: about the first block's
    if last > first and records > head:
        start = max(0.0, first - head * (last - first) / (records - head))
    else:  # one moment: the records were scored some time after the run started
        start = 0.0
    end = max(last, start)
    target = min(max_bars, max(1, int(throughput.get("blocks") or 1) // 2))
    fine = buckets[0][1] - buckets[0][0]
    span = end - start
    # (- 1e-6: a span a float's error over a power of two keeps that width)
    width = max(fine, 2.0 ** math.ceil(math.log2(span / target) - 1e-6)) if span > 0 else fine
    edges = [start]
    k = math.floor(start / width) + 1
    while k * width < end:
        edges.append(k * width)
        k += 1
    edges.append(end)
    if len(edges) > 2 and edges[1] - edges[0] < width / 2:
        del edges[1]
    if len(edges) > 2 and edges[-1] - edges[-2] < width / 2:
        del edges[-2]
    counts = [0] * (len(edges) - 1)
    for lo, hi, count in buckets:
        middle = (max(lo, start) + min(hi, end)) / 2
        index = min(max(bisect.bisect_right(edges, middle) - 1, 0), len(counts) - 1)
        counts[index] += count
    bars = []
    for (lo, hi), count in zip(itertools.pairwise(edges), counts, strict=True):
        bars.append((lo, hi, count / (hi - lo) if hi > lo else None, count))
    return {"bars": bars, "width": width, "start": start, "end": end}


class CountErrorsFn(beam.CombineFn):
    """Counts error records per (code, field), keeping one example message each, and per
    input (a file, without the record's line; a table): {"errors", "by_kind", "by_input"}.
    The errors_stats file is the first two (`errors_stats`); run.json holds the third."""

    def create_accumulator(self):
        return {}, {}

    def add_input(self, accumulator, errors: list):
        kinds, inputs = accumulator
        for error in errors:
            kind = (error["error"]["code"], error["error"]["field"])
            count, example = kinds.get(kind, (0, error["error"]["message"]))
            kinds[kind] = (count + 1, example)
            source = input_of(error.get("source"))
            inputs[source] = inputs.get(source, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        kinds, inputs = {}, {}
        for more_kinds, more_inputs in accumulators:
            for kind, (count, example) in more_kinds.items():
                kinds[kind] = (kinds.get(kind, (0, example))[0] + count, example)
            for source, count in more_inputs.items():
                inputs[source] = inputs.get(source, 0) + count
        return kinds, inputs

    def extract_output(self, accumulator):
        kinds, inputs = accumulator
        rows = [
            {"code": code, "field": field, "count": count, "example_message": example}
            for (code, field), (count, example) in kinds.items()
        ]
        rows.sort(key=lambda row: (-row["count"], row["code"], row["field"] or ""))
        return {
            "errors": sum(r["count"] for r in rows),
            "by_kind": rows,
            "by_input": dict(sorted(inputs.items())),
        }


def errors_stats(error_summary: dict) -> str:
    """The errors_stats file's content: the error count and the counts by kind."""
    found = {"errors": error_summary.get("errors", 0), "by_kind": error_summary.get("by_kind") or []}
    return json.dumps(found, indent=2)


def input_of(source) -> str:
    """The input an error record's source names: "path:12" -> "path"; a source without a
    line number (a file cut short, a table) as it is."""
    source = str(source or "")
    head, _, line = source.rpartition(":")
    return head if head and line.isdigit() else source
