"""The run report: `report.html` beside the outputs of every `predict` run.

The page a person opens after a run, and the one to read when a run failed: counts and
status, errors by code and field, a histogram of each model output, throughput over the run,
the model, inputs, runner, versions and timings. One self-contained file (styles inline,
plots as SVG images in `data:` URLs, a Content-Security-Policy that forbids any fetch), so it
opens the same from a bucket download, a mail attachment or `file://`, with no network.

Everything on it is computed inside the pipeline, like the counts of `run.json` (on Dataflow
the launcher may be gone before the job ends): `OutputSummariesFn` and `ThroughputFn`
summarize the scored blocks in memory bounded whatever the number of records, the error
kinds are the very summary written to `prediction.errors_stats` (`pipeline.write.CountErrorsFn`),
and the run's last step (`pipeline.manifest.FinalizeRun`) renders the page with
`render_report`, a pure function of those summaries and the manifest.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import time

import apache_beam as beam
import numpy as np

HISTOGRAM_CAP = 2048  # fine bins per numeric output, whatever the number of values
HISTOGRAM_BARS = 40  # at most this many bars drawn (groups of fine bins)
CATEGORY_CAP = 50  # distinct values counted per text output; more: only totals
THROUGHPUT_CAP = 200  # time buckets over the run, whatever its length

# --- Bounded summaries, computed inside the pipeline ----------------------------------------


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


# --- Rendering ------------------------------------------------------------------------------

COUNT_NAMES = ("read", "predictions", "errors")
BAR_COLOR = "#3b6fb6"  # histogram bars (the browser test looks for them)
THROUGHPUT_COLOR = "#2a9d8f"


def render_report(manifest: dict, error_kinds: dict, outputs: list[dict], throughput: dict) -> str:
    """The report page of one run, from its manifest (`run.json`'s content), the error
    summary (`prediction.errors_stats`'s content), `OutputSummariesFn`'s and `ThroughputFn`'s
    results. Every string that comes from the run (paths, names, messages) is escaped."""
    counts = manifest.get("counts", {})
    status = str(manifest.get("status", "unknown"))
    ok = status == "succeeded"
    title = f"adpredict run {manifest.get('run_id') or ''}".strip()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No fetch of any kind: the page is complete as it is.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>adpredict run report <span class="status {"ok" if ok else "failed"}" '
        f'data-status="{_e(status)}">{_e(status)}</span></h1>',
        f'<p class="sub">{_e(manifest.get("output_dir") or "")} · run {_e(manifest.get("run_id") or "")}'
        + (f" · date {_e(manifest['date'])}" if manifest.get("date") else "")
        + "</p>",
        _counts_section(manifest, counts),
        _errors_section(error_kinds, counts),
        _outputs_section(outputs, counts),
        _throughput_section(throughput, manifest),
        _details_section(manifest),
        "</body></html>",
    ]
    return "\n".join(parts)


def _counts_section(manifest: dict, counts: dict) -> str:
    read = counts.get("read", 0)
    cells = [
        ("records read", "read", read),
        ("predicted", "predictions", counts.get("predictions", 0)),
        ("errors", "errors", counts.get("errors", 0)),
    ]
    rate = counts.get("error_rate", 0.0)
    tiles = "".join(
        f'<div class="tile"><div class="label">{label}</div>'
        f'<div class="value" data-count="{name}" data-value="{int(value)}">{int(value):,}</div></div>'
        for label, name, value in cells
    )
    tiles += (
        f'<div class="tile"><div class="label">error rate</div>'
        f'<div class="value" data-count="error_rate" data-value="{rate}">{rate:.2%}</div>'
        f'<div class="label">max {_e(_percent(manifest.get("max_error_rate")))}</div></div>'
    )
    seconds = manifest.get("timings", {}).get("seconds")
    if seconds:
        tiles += (
            f'<div class="tile"><div class="label">wall time</div><div class="value">{seconds:,.1f} s</div>'
            f'<div class="label">{read / seconds:,.0f} records/s</div></div>'
        )
    problems = "".join(f"<li>{_e(p)}</li>" for p in manifest.get("problems") or [])
    other = {k: v for k, v in counts.items() if k not in (*COUNT_NAMES, "error_rate")}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in sorted(other.items()))
    return (
        '<section id="counts"><h2>Counts</h2>'
        f'<div class="tiles">{tiles}</div>'
        + (f'<ul class="problems">{problems}</ul>' if problems else "")
        + (
            f'<details><summary>Other counts</summary><table class="kv">{rows}</table></details>'
            if rows
            else ""
        )
        + "</section>"
    )


def _errors_section(error_kinds: dict, counts: dict) -> str:
    kinds = error_kinds.get("by_kind") or []
    if not kinds:
        return '<section id="errors"><h2>Errors</h2><p>No errors.</p></section>'
    total = error_kinds.get("errors") or sum(k["count"] for k in kinds)
    rows = "".join(
        f'<tr data-error-code="{_e(k["code"])}" data-error-field="{_e(k["field"] or "")}">'
        f"<td><code>{_e(k['code'])}</code></td><td>{_e(k['field'] or '—')}</td>"
        f'<td class="num" data-count="{k["count"]}">{k["count"]:,}</td><td class="num">{k["count"] / total:.1%}</td>'
        f"<td>{_e(k.get('example_message') or '')}</td></tr>"
        for k in kinds
    )
    return (
        f'<section id="errors"><h2>Errors by code and field</h2>'
        f"<p>{total:,} error records (see <code>prediction.errors_stats</code> and <code>errors-*</code>).</p>"
        "<table><thead><tr><th>code</th><th>field</th><th>records</th><th>share</th>"
        f"<th>example message</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _outputs_section(outputs: list[dict], counts: dict) -> str:
    figures = "".join(_output_figure(summary) for summary in outputs)
    return f'<section id="outputs"><h2>Model outputs</h2><div class="plots">{figures}</div></section>'


def _output_figure(summary: dict) -> str:
    name = summary["name"]
    shape = summary.get("shape") or []
    per_row = f" × {' × '.join(str(d) for d in shape)} per record" if shape else ""
    nonfinite = summary["nonfinite"]
    attributes = (
        f'data-output="{_e(name)}" data-records="{summary["records"]}" data-values="{summary["values"]}" '
        f'data-nonfinite="{sum(nonfinite.values())}"'
    )
    if summary.get("kind") == "text":
        categories = summary["categories"]
        bars = [(value, count) for value, count in categories]
        image = _svg_image(
            _category_svg(bars, name) if bars else _empty_svg(f"{name}: more than {CATEGORY_CAP} values"),
            f"counts of each value of {name}",
        )
        caption = f"{summary['values']:,} values ({summary['records']:,} records{per_row})"
        table = "".join(f"<tr><td>{_e(v)}</td><td class='num'>{c:,}</td></tr>" for v, c in bars)
        return (
            f'<figure class="histogram" {attributes} data-binned="{sum(c for _, c in bars)}">{image}'
            f"<figcaption>{_e(name)}: {caption}</figcaption>"
            f"<details><summary>counts</summary><table>{table}</table></details></figure>"
        )
    bins = summary.get("bins") or []
    binned = sum(count for _, _, count in bins)
    image = _svg_image(
        _histogram_svg(bins, name) if bins else _empty_svg(f"{name}: no finite values"),
        f"histogram of {name}",
    )
    odd = ", ".join(f"{count:,} {kind}" for kind, count in nonfinite.items() if count)
    stats = ""
    if summary.get("finite"):
        stats = (
            f" min {_number(summary['min'])}, mean {_number(summary['mean'])}, max {_number(summary['max'])}."
        )
    caption = (
        f"{summary['values']:,} values ({summary['records']:,} records{per_row}): "
        f'<span class="binned">{binned:,}</span> in the bars'
        + (f", non-finite apart: {_e(odd)}" if odd else ", none non-finite")
        + f".{stats}"
    )
    table = "".join(
        f'<tr data-low="{lo!r}" data-high="{hi!r}" data-count="{count}">'
        f"<td>[{_number(lo)}, {_number(hi)})</td><td class='num'>{count:,}</td></tr>"
        for lo, hi, count in bins
    )
    return (
        f'<figure class="histogram" {attributes} data-binned="{binned}">{image}'
        f"<figcaption><b>{_e(name)}</b>: {caption}</figcaption>"
        f'<details><summary>bins</summary><table class="bins">{table}</table></details></figure>'
    )


def _throughput_section(throughput: dict, manifest: dict) -> str:
    buckets = throughput.get("buckets") or []
    started = _epoch(manifest.get("timings", {}).get("started")) or throughput.get("first") or 0.0
    if not buckets:
        image = _svg_image(_empty_svg("no records scored"), "throughput over the run")
        caption = "No records scored."
    else:
        width = buckets[0][1] - buckets[0][0]
        bars = [(lo - started, hi - started, count / width) for lo, hi, count in buckets]
        seconds = manifest.get("timings", {}).get("seconds") or 0.0
        image = _svg_image(
            _bars_svg(
                bars,
                "seconds since the run started",
                "records scored / s",
                THROUGHPUT_COLOR,
                x_range=(min(0.0, bars[0][0]), max(seconds, bars[-1][1])),
            ),
            "records scored per second over the run",
        )
        span = max(throughput["last"] - throughput["first"], width)
        first, last = throughput["first"] - started, throughput["last"] - started
        when = f"at {first:,.1f} s" if last - first < 0.05 else f"from {first:,.1f} s to {last:,.1f} s"
        caption = (
            f"{throughput['records']:,} records scored {when} after the start (when blocks left the "
            f"model), in buckets of {_number(width)} s; peak {max(b[2] for b in bars):,.0f} records/s, "
            f"{throughput['records'] / span:,.0f} records/s over the scoring span."
        )
    return (
        '<section id="throughput"><h2>Throughput over the run</h2>'
        f'<figure class="throughput" data-records="{throughput.get("records", 0)}">{image}'
        f"<figcaption>{caption}</figcaption></figure></section>"
    )


def _details_section(manifest: dict) -> str:
    model = manifest.get("model") or {}
    inputs = manifest.get("inputs") or {}
    timings = manifest.get("timings") or {}
    files = inputs.get("files") or []
    shown = files[:50]
    more = f"<li>… and {len(files) - len(shown):,} more</li>" if len(files) > len(shown) else ""
    file_list = f"<ul>{''.join(f'<li>{_value(f)}</li>' for f in shown)}{more}</ul>" if files else "—"
    sections = {
        "Model": [
            ("directory", model.get("dir")),
            ("fingerprint", model.get("fingerprint")),
            ("batch size", manifest.get("batch_size")),
            ("TensorFlow threads", manifest.get("tf_threads")),
        ],
        "Inputs": [
            ("patterns", inputs.get("patterns")),
            ("query", inputs.get("query")),
            ("filter", inputs.get("filter")),
            ("format", inputs.get("format")),
            ("fingerprint", manifest.get("input_fingerprint")),
        ],
        "Outputs": [
            ("directory", manifest.get("output_dir")),
            ("format", manifest.get("output_format")),
            ("tables", manifest.get("output_tables")),
            ("outputs written", manifest.get("outputs_written")),
            ("files published", manifest.get("files_published")),
        ],
        "Run": [
            ("runner", manifest.get("runner")),
            ("run id", manifest.get("run_id")),
            ("started", timings.get("started")),
            ("finished", timings.get("finished")),
            ("seconds", timings.get("seconds")),
            ("max error rate", _percent(manifest.get("max_error_rate"))),
        ],
        "Versions": sorted((manifest.get("versions") or {}).items()),
    }
    tables = []
    for heading, rows in sections.items():
        body = "".join(
            f"<tr><th>{_e(label)}</th><td>{_value(value)}</td></tr>"
            for label, value in rows
            if value is not None
        )
        if heading == "Inputs":
            body += f"<tr><th>files</th><td>{file_list}</td></tr>"
        tables.append(f'<div><h3>{heading}</h3><table class="kv">{body}</table></div>')
    return f'<section id="details"><h2>Model, inputs and run</h2><div class="details">{"".join(tables)}</div></section>'


# --- SVG plots --------------------------------------------------------------------------------

_W, _H = 560, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 24, 52


def _histogram_svg(bins: list, name: str) -> str:
    return _bars_svg([(lo, hi, count) for lo, hi, count in bins], name, "records", BAR_COLOR, title=name)


def _bars_svg(
    bars: list, x_label: str, y_label: str, color: str, title: str | None = None, x_range=None
) -> str:
    """Bars over [low, high) x-intervals, with both axes labelled and ticked; the x axis
    spans the bars, or `x_range`."""
    x0, x1 = x_range or (min(b[0] for b in bars), max(b[1] for b in bars))
    if x1 <= x0:
        x1 = x0 + 1
    top = max(b[2] for b in bars) or 1
    y_ticks = _ticks(0, top)
    y_max = max(top, y_ticks[-1])
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(v):
        return _LEFT + (v - x0) / (x1 - x0) * plot_w

    def y(v):
        return _TOP + plot_h - v / y_max * plot_h

    out = [_svg_open()]
    if title:
        out.append(f'<text x="{_W / 2}" y="16" text-anchor="middle" font-weight="bold">{_e(title)}</text>')
    for tick in y_ticks:
        out.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{_tick_label(tick)}</text>'
        )
    for lo, hi, value in bars:
        left, right = x(lo), x(hi)
        out.append(
            f'<rect x="{left:.2f}" y="{y(value):.2f}" width="{max(right - left - 0.5, 0.8):.2f}" '
            f'height="{y(0) - y(value):.2f}" fill="{color}"><title>[{_number(lo)}, {_number(hi)}): '
            f"{_number(value)}</title></rect>"
        )
    for tick in _ticks(x0, x1):
        if x0 <= tick <= x1:
            out.append(
                f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{y(0)}" y2="{y(0) + 5}" stroke="#444"/>'
                f'<text x="{x(tick):.1f}" y="{y(0) + 18}" text-anchor="middle">{_tick_label(tick)}</text>'
            )
    out.append(
        f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(0)}" y2="{y(0)}" stroke="#444"/>'
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{y(0)}" stroke="#444"/>'
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 8}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text transform="translate(14 {_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>'
        "</svg>"
    )
    return "".join(out)


def _category_svg(bars: list, name: str) -> str:
    """Horizontal bars, one per distinct value of a text output (the most frequent first)."""
    shown = bars[:15]
    top = max(count for _, count in shown) or 1
    row = min(24, (_H - 60) / len(shown))
    left, width = 150, _W - 150 - 60
    out = [
        _svg_open(),
        f'<text x="{_W / 2}" y="16" text-anchor="middle" font-weight="bold">{_e(name)}</text>',
    ]
    for i, (value, count) in enumerate(shown):
        top_y = 30 + i * row
        label = value if len(value) <= 20 else value[:19] + "…"
        out.append(
            f'<text x="{left - 6}" y="{top_y + row * 0.7:.1f}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{left}" y="{top_y + 2:.1f}" width="{max(count / top * width, 1):.1f}" '
            f'height="{row - 4:.1f}" fill="{BAR_COLOR}"/>'
            f'<text x="{left + count / top * width + 4:.1f}" y="{top_y + row * 0.7:.1f}">{count:,}</text>'
        )
    out.append(
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle">values (records per value)</text></svg>'
    )
    return "".join(out)


def _empty_svg(message: str) -> str:
    return f'{_svg_open()}<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">{_e(message)}</text></svg>'


def _svg_open() -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" font-size="11" fill="#222">'
        f'<rect width="{_W}" height="{_H}" fill="#ffffff"/>'
    )


def _svg_image(svg: str, alt: str) -> str:
    encoded = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img src="data:image/svg+xml;base64,{encoded}" width="{_W}" height="{_H}" alt="{_e(alt)}">'


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return [lo]
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    i = 0
    while first + i * step <= hi + step * 1e-9 or len(ticks) < 2:
        ticks.append(round(first + i * step, 12))
        i += 1
    return ticks


def _tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.6g}"


# --- Formatting ---------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _value(value) -> str:
    if isinstance(value, dict | list | tuple):
        return f"<code>{_e(json.dumps(value, sort_keys=True, default=str))}</code>"
    return _e(value)


def _number(value) -> str:
    return "—" if value is None else f"{value:.6g}"


def _percent(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


_CSS = """
body{font:14px/1.45 'DejaVu Sans','Liberation Sans',Arial,sans-serif;color:#222;margin:24px auto;max-width:1180px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:14px;margin:8px 0}.sub{color:#666;margin:0 0 12px;word-break:break-all}
.status{font-size:13px;padding:3px 10px;border-radius:12px;vertical-align:middle;color:#fff}
.status.ok{background:#2e7d32}.status.failed{background:#c62828}
.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{border:1px solid #ddd;border-radius:6px;padding:8px 16px;min-width:130px}
.tile .label{color:#666;font-size:12px}.tile .value{font-size:22px;font-weight:bold}
table{border-collapse:collapse;margin:6px 0}td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums}table.kv th{color:#555;font-weight:normal;white-space:nowrap}
td{word-break:break-word}code{font-size:12px}.problems{color:#c62828}
.plots{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;max-width:560px}figcaption{font-size:12px;color:#444}
.details{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:8px 24px}
"""
