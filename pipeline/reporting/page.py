"""The run report: `report.html` beside the outputs of every `predict` run.

The page a person opens after a run, and the one to read when a run failed: the
data-quality gate's verdict (for a blocked night: that nothing was published, where the
outputs are held, how to publish a reviewed night) with small plots of each flagged feature
against training and the previous night (`pipeline.reporting.quality_page` draws that
section), counts and status, errors by code and field, a histogram of each model output,
throughput over the run, the model, inputs, runner, versions and timings. One self-contained
file (styles inline, plots as SVG images in `data:` URLs, a Content-Security-Policy that
forbids any fetch), so it opens the same from a bucket download, a mail attachment or
`file://`, with no network.

`render_report` is a pure function of the run's manifest and its summaries
(`pipeline.reporting.summaries`, computed inside the pipeline: on Dataflow the launcher may
be gone before the job ends); the run's last step (`pipeline.run.finalize`) calls it.
"""

from __future__ import annotations

import datetime
import json

from pipeline.reporting.markup import (
    BAR_COLOR,
    HEIGHT,
    THROUGHPUT_COLOR,
    WIDTH,
    esc,
    number,
    round_ticks,
    svg_image,
    svg_open,
)
from pipeline.reporting.quality_page import QUALITY_CSS, quality_section
from pipeline.reporting.summaries import CATEGORY_CAP
from pipeline.reporting.terminal import worker_lines
from pipeline.run_contract import (
    ERRORS,
    ERRORS_PREFIX,
    PREDICT_ERRORS_STATS,
    PREDICTIONS,
    READ,
    SUCCEEDED,
)

COUNT_NAMES = (READ, PREDICTIONS, ERRORS)


def render_report(manifest: dict, error_kinds: dict, outputs: list[dict], throughput: dict) -> str:
    """The report page of one run, from its manifest (`run.json`'s content), the error
    summary (the errors_stats file's content), `OutputSummariesFn`'s and `ThroughputFn`'s
    results. Every string that comes from the run (paths, names, messages) is escaped."""
    counts = manifest.get("counts", {})
    status = str(manifest.get("status", "unknown"))
    ok = status == SUCCEEDED
    title = f"adpredict run {manifest.get('run_id') or ''}".strip()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No fetch of any kind: the page is complete as it is.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}{QUALITY_CSS}</style></head><body>",
        f'<h1>adpredict run report <span class="status {"ok" if ok else "failed"}" '
        f'data-status="{esc(status)}">{esc(status)}</span></h1>',
        f'<p class="sub">{esc(manifest.get("output_dir") or "")} · run {esc(manifest.get("run_id") or "")}'
        + (f" · date {esc(manifest['date'])}" if manifest.get("date") else "")
        + "</p>",
        quality_section(manifest),
        _counts_section(manifest, counts),
        _errors_section(error_kinds, counts),
        _outputs_section(outputs, counts),
        _throughput_section(throughput, manifest),
        _details_section(manifest),
        "</body></html>",
    ]
    return "\n".join(parts)


def _counts_section(manifest: dict, counts: dict) -> str:
    read = counts.get(READ, 0)
    cells = [
        ("records read", READ, read),
        ("predicted", PREDICTIONS, counts.get(PREDICTIONS, 0)),
        ("errors", ERRORS, counts.get(ERRORS, 0)),
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
        f'<div class="label">max {esc(_percent(manifest.get("max_error_rate")))}</div></div>'
    )
    seconds = manifest.get("timings", {}).get("seconds")
    if seconds:
        tiles += (
            f'<div class="tile"><div class="label">wall time</div><div class="value">{seconds:,.1f} s</div>'
            f'<div class="label">{read / seconds:,.0f} records/s</div></div>'
        )
    problems = "".join(f"<li>{esc(p)}</li>" for p in manifest.get("problems") or [])
    other = {k: v for k, v in counts.items() if k not in (*COUNT_NAMES, "error_rate")}
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{_value(v)}</td></tr>" for k, v in sorted(other.items()))
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
        f'<tr data-error-code="{esc(k["code"])}" data-error-field="{esc(k["field"] or "")}">'
        f"<td><code>{esc(k['code'])}</code></td><td>{esc(k['field'] or '—')}</td>"
        f'<td class="num" data-count="{k["count"]}">{k["count"]:,}</td><td class="num">{k["count"] / total:.1%}</td>'
        f"<td>{esc(k.get('example_message') or '')}</td></tr>"
        for k in kinds
    )
    return (
        f'<section id="errors"><h2>Errors by code and field</h2>'
        f"<p>{total:,} error records (see <code>{PREDICT_ERRORS_STATS}</code> and <code>{ERRORS_PREFIX}-*</code>).</p>"
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
        f'data-output="{esc(name)}" data-records="{summary["records"]}" data-values="{summary["values"]}" '
        f'data-nonfinite="{sum(nonfinite.values())}"'
    )
    if summary.get("kind") == "text":
        categories = summary["categories"]
        bars = [(value, count) for value, count in categories]
        image = svg_image(
            _category_svg(bars, name) if bars else _empty_svg(f"{name}: more than {CATEGORY_CAP} values"),
            f"counts of each value of {name}",
        )
        caption = f"{summary['values']:,} values ({summary['records']:,} records{per_row})"
        table = "".join(f"<tr><td>{esc(v)}</td><td class='num'>{c:,}</td></tr>" for v, c in bars)
        return (
            f'<figure class="histogram" {attributes} data-binned="{sum(c for _, c in bars)}">{image}'
            f"<figcaption>{esc(name)}: {caption}</figcaption>"
            f"<details><summary>counts</summary><table>{table}</table></details></figure>"
        )
    bins = summary.get("bins") or []
    binned = sum(count for _, _, count in bins)
    image = svg_image(
        _histogram_svg(bins, name) if bins else _empty_svg(f"{name}: no finite values"),
        f"histogram of {name}",
    )
    odd = ", ".join(f"{count:,} {kind}" for kind, count in nonfinite.items() if count)
    stats = ""
    if summary.get("finite"):
        stats = (
            f" min {number(summary['min'])}, mean {number(summary['mean'])}, max {number(summary['max'])}."
        )
    caption = (
        f"{summary['values']:,} values ({summary['records']:,} records{per_row}): "
        f'<span class="binned">{binned:,}</span> in the bars'
        + (f", non-finite apart: {esc(odd)}" if odd else ", none non-finite")
        + f".{stats}"
    )
    table = "".join(
        f'<tr data-low="{lo!r}" data-high="{hi!r}" data-count="{count}">'
        f"<td>[{number(lo)}, {number(hi)})</td><td class='num'>{count:,}</td></tr>"
        for lo, hi, count in bins
    )
    return (
        f'<figure class="histogram" {attributes} data-binned="{binned}">{image}'
        f"<figcaption><b>{esc(name)}</b>: {caption}</figcaption>"
        f'<details><summary>bins</summary><table class="bins">{table}</table></details></figure>'
    )


def _throughput_section(throughput: dict, manifest: dict) -> str:
    buckets = throughput.get("buckets") or []
    started = _epoch(manifest.get("timings", {}).get("started")) or throughput.get("first") or 0.0
    if not buckets:
        image = svg_image(_empty_svg("no records scored"), "throughput over the run")
        caption = "No records scored."
    else:
        width = buckets[0][1] - buckets[0][0]
        bars = [(lo - started, hi - started, count / width) for lo, hi, count in buckets]
        seconds = manifest.get("timings", {}).get("seconds") or 0.0
        image = svg_image(
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
            f"model), in buckets of {number(width)} s; peak {max(b[2] for b in bars):,.0f} records/s, "
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
            ("precision asked", manifest.get("precision_requested")),
            ("ran on", "; ".join(worker_lines(manifest)) or None),
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
            f"<tr><th>{esc(label)}</th><td>{_value(value)}</td></tr>"
            for label, value in rows
            if value is not None
        )
        if heading == "Inputs":
            body += f"<tr><th>files</th><td>{file_list}</td></tr>"
        tables.append(f'<div><h3>{heading}</h3><table class="kv">{body}</table></div>')
    return f'<section id="details"><h2>Model, inputs and run</h2><div class="details">{"".join(tables)}</div></section>'


# --- SVG plots --------------------------------------------------------------------------------

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
    y_ticks = round_ticks(0, top)
    y_max = max(top, y_ticks[-1])
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(v):
        return _LEFT + (v - x0) / (x1 - x0) * plot_w

    def y(v):
        return _TOP + plot_h - v / y_max * plot_h

    out = [svg_open()]
    if title:
        out.append(
            f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{esc(title)}</text>'
        )
    for tick in y_ticks:
        out.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{_tick_label(tick)}</text>'
        )
    for lo, hi, value in bars:
        left, right = x(lo), x(hi)
        out.append(
            f'<rect x="{left:.2f}" y="{y(value):.2f}" width="{max(right - left - 0.5, 0.8):.2f}" '
            f'height="{y(0) - y(value):.2f}" fill="{color}"><title>[{number(lo)}, {number(hi)}): '
            f"{number(value)}</title></rect>"
        )
    for tick in round_ticks(x0, x1):
        if x0 <= tick <= x1:
            out.append(
                f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{y(0)}" y2="{y(0) + 5}" stroke="#444"/>'
                f'<text x="{x(tick):.1f}" y="{y(0) + 18}" text-anchor="middle">{_tick_label(tick)}</text>'
            )
    out.append(
        f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(0)}" y2="{y(0)}" stroke="#444"/>'
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{y(0)}" stroke="#444"/>'
        f'<text x="{_LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{esc(x_label)}</text>'
        f'<text transform="translate(14 {_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">{esc(y_label)}</text>'
        "</svg>"
    )
    return "".join(out)


def _category_svg(bars: list, name: str) -> str:
    """Horizontal bars, one per distinct value of a text output (the most frequent first)."""
    shown = bars[:15]
    top = max(count for _, count in shown) or 1
    row = min(24, (HEIGHT - 60) / len(shown))
    left, width = 150, WIDTH - 150 - 60
    out = [
        svg_open(),
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{esc(name)}</text>',
    ]
    for i, (value, count) in enumerate(shown):
        top_y = 30 + i * row
        label = value if len(value) <= 20 else value[:19] + "…"
        out.append(
            f'<text x="{left - 6}" y="{top_y + row * 0.7:.1f}" text-anchor="end">{esc(label)}</text>'
            f'<rect x="{left}" y="{top_y + 2:.1f}" width="{max(count / top * width, 1):.1f}" '
            f'height="{row - 4:.1f}" fill="{BAR_COLOR}"/>'
            f'<text x="{left + count / top * width + 4:.1f}" y="{top_y + row * 0.7:.1f}">{count:,}</text>'
        )
    out.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">values (records per value)</text></svg>'
    )
    return "".join(out)


def _empty_svg(message: str) -> str:
    return (
        f'{svg_open()}<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{esc(message)}</text></svg>'
    )


def _tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.6g}"


# --- Formatting ---------------------------------------------------------------------------------


def _value(value) -> str:
    if isinstance(value, dict | list | tuple):
        return f"<code>{esc(json.dumps(value, sort_keys=True, default=str))}</code>"
    return esc(value)


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
"""  # the data-quality section's styles follow: QUALITY_CSS
