"""The run report: `report.html` beside the outputs of every `predict` run.

The page a person opens after a run, and the one to read when a run failed: the job and
its date, the data-quality gate's verdict (for a blocked night: that nothing was published,
where the outputs are held, how to publish a reviewed night) with small plots of each
flagged feature against training and the previous night (`pipeline.reporting.quality_page`
draws that section), counts and status, errors by code and field, a histogram of each model
output beside the model's training figures, throughput over the run, what the run cost, the
counts per input and links to the outputs (`pipeline.reporting.files_page`), the model,
runner, versions and timings. One self-contained file (styles inline, plots as SVG images
in `data:` URLs, a Content-Security-Policy that forbids any fetch; its only links are to
the files beside it), so it opens the same from a bucket download, a mail attachment or
`file://`, with no network; it fits a phone's width.

`render_report` is a pure function of the run's manifest and its summaries
(`pipeline.reporting.summaries`, computed inside the pipeline: on Dataflow the launcher may
be gone before the job ends); the run's last step (`pipeline.run.finalize`) calls it.
"""

from __future__ import annotations

import json

from pipeline.reporting.cost import assumptions, machines, money
from pipeline.reporting.files_page import FILES_CSS, files_section
from pipeline.reporting.markup import (
    THROUGHPUT_COLOR,
    esc,
    local_date,
    local_time,
    number,
    path_html,
    svg_image,
)
from pipeline.reporting.plots import bars_svg, category_svg, empty_svg, histogram_svg
from pipeline.reporting.quality_page import QUALITY_CSS, quality_section
from pipeline.reporting.summaries import CATEGORY_CAP, throughput_bars
from pipeline.reporting.terminal import duration, worker_lines
from pipeline.run_contract import (
    ERRORS,
    ERRORS_PREFIX,
    PREDICT_ERRORS_STATS,
    PREDICTIONS,
    READ,
    SUCCEEDED,
)

COUNT_NAMES = (READ, PREDICTIONS, ERRORS)


def render_report(
    manifest: dict, error_kinds: dict, outputs: list[dict], throughput: dict, published=None
) -> str:
    """The report page of one run, from its manifest (`run.json`'s content), the error
    summary (`CountErrorsFn`'s: the errors_stats file's content), `OutputSummariesFn`'s and
    `ThroughputFn`'s results, and the names of the files the run published beside it (None:
    not known).
    Every string that comes from the run (paths, names, messages) is escaped."""
    counts = manifest.get("counts", {})
    status = str(manifest.get("status", "unknown"))
    ok = status == SUCCEEDED
    title = _title(manifest)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No fetch of any kind: the page is complete as it is.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)} ({esc(status)})</title><style>{_CSS}{QUALITY_CSS}{FILES_CSS}</style></head><body>",
        f'<h1><span data-title="">{path_html(title)}</span> <span class="status {"ok" if ok else "failed"}" '
        f'data-status="{esc(status)}">{esc(status)}</span></h1>',
        f'<p class="sub">{path_html(manifest.get("output_dir") or "")} · run {esc(manifest.get("run_id") or "")}'
        + "</p>",
        quality_section(manifest),
        _counts_section(manifest, counts),
        _errors_section(error_kinds, counts),
        _outputs_section(outputs, manifest),
        _throughput_section(throughput, manifest),
        _cost_section(manifest),
        files_section(manifest, published),
        _details_section(manifest),
        "</body></html>",
    ]
    return "\n".join(parts)


def _title(manifest: dict) -> str:
    """ "<job> · <run date>": the Dataflow job's name or the command, and the date the run
    is for (nightly: --run_date) or else the local date it started."""
    job = manifest.get("job_name") or f"adpredict {manifest.get('job') or 'predict'}"
    date = manifest.get("date") or local_date((manifest.get("timings") or {}).get("started"))
    return f"{job} · {date}" if date else str(job)


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
        rate = (manifest.get("cost") or {}).get("records_per_second") or read / seconds
        tiles += (
            '<div class="tile" title="The pipeline\'s, from its start to its last step: the command\'s '
            'own time, with its start-up and checks, is longer."><div class="label">pipeline wall time</div>'
            f'<div class="value" data-figure="seconds">{esc(duration(seconds))}</div>'
            f'<div class="label"><span data-figure="records_per_second">{rate:,.0f}</span> records/s</div></div>'
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
    # The example message in a row of its own, under its kind: a long message would squeeze
    # the other columns on a phone.
    rows = "".join(
        f'<tbody data-error-code="{esc(k["code"])}" data-error-field="{esc(k["field"] or "")}">'
        f"<tr><td><code>{path_html(k['code'])}</code></td><td>{path_html(k['field'] or '—')}</td>"
        f'<td class="num" data-count="{k["count"]}">{k["count"]:,}</td><td class="num">{k["count"] / total:.1%}</td></tr>'
        f"<tr class='example'><td colspan='4' class='message'>e.g. {esc(k.get('example_message') or '')}</td></tr>"
        "</tbody>"
        for k in kinds
    )
    return (
        f'<section id="errors"><h2>Errors by code and field</h2>'
        f"<p>{total:,} error records (see <code>{PREDICT_ERRORS_STATS}</code> and <code>{ERRORS_PREFIX}-*</code>).</p>"
        "<table class='errors'><thead><tr><th>code</th><th>field</th><th>records</th><th>share</th>"
        f"</tr></thead>{rows}</table></section>"
    )


def _outputs_section(outputs: list[dict], manifest: dict) -> str:
    figures = "".join(_output_figure(summary) for summary in outputs)
    return (
        '<section id="outputs"><h2>Model outputs</h2>'
        f"{_against_training(manifest)}"
        f'<div class="plots">{figures}</div></section>'
    )


def _against_training(manifest: dict) -> str:
    """This run's mean prediction beside the model's in training (held-out split), and the
    model's training AUC: run.json's `mean_prediction` and `model.training`."""
    training = (manifest.get("model") or {}).get("training") or {}
    tonight = manifest.get("mean_prediction") or {}
    before = training.get("mean_prediction") or {}
    auc = training.get("eval_auc")
    if not tonight and not before and auc is None:
        return ""
    held_out = f" on {training['eval_records']:,} held-out records" if training.get("eval_records") else ""
    trained = f" ({training['train_records']:,} trained on)" if training.get("train_records") else ""
    line = (
        f'<p>Training AUC <b data-figure="training_auc">{auc:.4f}</b>{held_out}{trained}.</p>'
        if isinstance(auc, int | float)
        else "<p>The model directory records no training AUC (a model adpredict did not train).</p>"
    )
    rows = "".join(
        f'<tr data-output-mean="{esc(name)}"><th>{esc(name)}</th>'
        f'<td class="num" data-figure="mean_prediction">{number(tonight.get(name))}</td>'
        f'<td class="num" data-figure="training_mean_prediction">{number(before.get(name))}</td></tr>'
        for name in sorted(set(tonight) | set(before))
    )
    table = (
        "<table><thead><tr><th>output</th><th>mean, this run</th>"
        f"<th>mean in training (held-out split)</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    return f'<div class="training">{line}{table}</div>'


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
            category_svg(bars, name) if bars else empty_svg(f"{name}: more than {CATEGORY_CAP} values"),
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
        histogram_svg(bins, name) if bins else empty_svg(f"{name}: no finite values"),
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
    found = throughput_bars(throughput)
    bars = [(lo, hi, rate) for lo, hi, rate, _ in found["bars"] if rate is not None]
    if not bars:
        image = svg_image(empty_svg("no records scored"), "throughput over the run")
        caption = "No records scored."
    else:
        seconds = manifest.get("timings", {}).get("seconds") or 0.0
        start, end, records = found["start"], found["end"], throughput["records"]
        image = svg_image(
            bars_svg(
                bars,
                "seconds since the run started",
                "records scored / s",
                THROUGHPUT_COLOR,
                x_range=(0.0, max(seconds, end)),
            ),
            "records scored per second over the run",
        )
        if throughput["first"] == throughput["last"]:
            when = (
                f"all at once, {_moment(end)} after the start (when their block left the model): "
                f"at least {records / end:,.0f} records/s"
                if end > 0
                else "all at once"
            )
        else:
            when = (
                f"from about {_moment(start)} (the first block's time estimated from the others' rate) "
                f"to {_moment(end)} after the start, when the last block left the model: "
                f"{records / (end - start):,.0f} records/s over the scoring, peak "
                f"{max(rate for _, _, rate in bars):,.0f} records/s"
            )
        caption = (
            f"{records:,} records scored {when}. Bars of {_moment(found['width'])} from the run's start, "
            "each its records over its own duration."
        )
    return (
        '<section id="throughput"><h2>Throughput over the run</h2>'
        f'<figure class="throughput" data-records="{throughput.get("records", 0)}">{image}'
        f"<figcaption>{caption}</figcaption></figure></section>"
    )


def _moment(seconds: float) -> str:
    """Seconds into a run, readable at any scale: "0.034 s", "2.17 s", "3 min 05 s"."""
    return f"{seconds:.3g} s" if seconds < 10 else duration(seconds)


def _cost_section(manifest: dict) -> str:
    """What the run cost (run.json's `cost`): records/s per vCPU, worker-seconds, the
    estimated price of a million predictions, and what the estimate assumed."""
    cost = manifest.get("cost")
    if not isinstance(cost, dict):
        return ""
    per_vcpu, worker_seconds = cost.get("records_per_second_per_vcpu"), cost.get("worker_seconds")
    vcpus = cost.get("vcpus_per_worker")
    tiles = [
        ("records/s per vCPU", "records_per_second_per_vcpu", "—" if per_vcpu is None else f"{per_vcpu:,.0f}",
         f"{cost.get('workers')} × {vcpus:g} vCPUs" if vcpus else "vCPUs unknown"),
        ("worker-seconds", "worker_seconds", f"{worker_seconds:,.1f}" if worker_seconds is not None else "—",
         machines(cost)),
        ("per million predictions", "usd_per_million_predictions", money(cost.get("usd_per_million_predictions")),
         f"this run {money(cost.get('usd'))}, "
         + ("example prices" if cost.get("prices_are_examples") else "estimated")),
    ]  # fmt: skip
    shown = "".join(
        f'<div class="tile"><div class="label">{esc(label)}</div>'
        f'<div class="value" data-figure="{name}">{esc(value)}</div><div class="label">{esc(note)}</div></div>'
        for label, name, value, note in tiles
    )
    assumed = "".join(f"<li>{esc(line)}</li>" for line in assumptions(cost))
    return (
        '<section id="cost"><h2>What the run cost</h2>'
        f'<div class="tiles">{shown}</div><p>An estimate, assuming:</p><ul class="assumptions">{assumed}</ul></section>'
    )


def _details_section(manifest: dict) -> str:
    """The model, inputs, outputs, run and versions; each value as HTML (paths wrap)."""
    model = manifest.get("model") or {}
    inputs = manifest.get("inputs") or {}
    timings = manifest.get("timings") or {}
    patterns = inputs.get("patterns") or []
    sections = {
        "Model": [
            ("directory", _path(model.get("dir"))),
            ("fingerprint", _hash(model.get("fingerprint"))),
            ("batch size", _value(manifest.get("batch_size"))),
            ("TensorFlow threads", _value(manifest.get("tf_threads"))),
            ("precision asked", _value(manifest.get("precision_requested"))),
            ("ran on", _value("; ".join(worker_lines(manifest)) or None)),
        ],
        "Inputs": [
            ("patterns", "<br>".join(path_html(p) for p in patterns) or None),
            ("query", _value(inputs.get("query"))),
            ("filter", _value(inputs.get("filter"))),
            ("format", _value(inputs.get("format"))),
            ("fingerprint", _hash(manifest.get("input_fingerprint"))),
        ],
        "Outputs": [
            ("directory", _path(manifest.get("output_dir"))),
            ("format", _value(manifest.get("output_format"))),
            ("tables", _value(manifest.get("output_tables"))),
            ("outputs written", _value(manifest.get("outputs_written"))),
            ("files published", _value(manifest.get("files_published"))),
        ],
        "Run": [
            ("runner", _value(manifest.get("runner"))),
            ("run id", _value(manifest.get("run_id"))),
            ("run date", _value(manifest.get("date"))),
            ("started", local_time(timings["started"]) if timings.get("started") else None),
            ("finished", local_time(timings["finished"]) if timings.get("finished") else None),
            ("pipeline wall time", esc(duration(timings["seconds"])) if timings.get("seconds") else None),
            ("max error rate", _percent(manifest.get("max_error_rate"))),
        ],
        "Versions": [
            (name, _value(version)) for name, version in sorted((manifest.get("versions") or {}).items())
        ],
    }
    tables = []
    for heading, rows in sections.items():
        body = "".join(
            f"<tr><th>{esc(label)}</th><td>{value}</td></tr>" for label, value in rows if value is not None
        )
        tables.append(f'<div><h3>{heading}</h3><table class="kv">{body}</table></div>')
    return f'<section id="details"><h2>Model, inputs and run</h2><div class="details">{"".join(tables)}</div></section>'


# --- Formatting ---------------------------------------------------------------------------------


def _value(value) -> str | None:
    """`value` as escaped HTML (a dict or list as JSON), or None when there is none."""
    if value is None:
        return None
    if isinstance(value, dict | list | tuple):
        return f"<code>{path_html(json.dumps(value, sort_keys=True, default=str))}</code>"
    return esc(value)


def _hash(value) -> str | None:
    """A fingerprint: one long word, that may wrap anywhere."""
    return None if value is None else f'<span class="hash">{esc(value)}</span>'


def _path(value) -> str | None:
    return None if value is None else path_html(value)


def _percent(value) -> str:
    return "—" if value is None else f"{value:.2%}"


_CSS = """
body{font:14px/1.45 'DejaVu Sans','Liberation Sans',Arial,sans-serif;color:#222;margin:24px auto;max-width:1180px;padding:0 16px;overflow-wrap:break-word}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:14px;margin:8px 0}.sub{color:#666;margin:0 0 12px}.path{white-space:normal}.hash{overflow-wrap:anywhere}
.status{font-size:13px;padding:3px 10px;border-radius:12px;vertical-align:middle;color:#fff}
.status.ok{background:#2e7d32}.status.failed{background:#c62828}
.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{border:1px solid #ddd;border-radius:6px;padding:8px 16px;min-width:130px}
.tile .label{color:#666;font-size:12px}.tile .value{font-size:22px;font-weight:bold}
table{border-collapse:collapse;margin:6px 0;display:block;max-width:100%;overflow-x:auto}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums}table.kv th{color:#555;font-weight:normal;white-space:nowrap}
code{font-size:12px}.problems{color:#c62828}img{max-width:100%;height:auto}
.plots{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;max-width:560px}figcaption{font-size:12px;color:#444}
.details{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(340px,100%),1fr));gap:8px 24px}
.assumptions{font-size:12px;color:#444;padding-left:20px}.message{overflow-wrap:anywhere;color:#444;font-size:12px}
table.errors tr:not(.example) td{border-bottom:0}
@media (max-width:600px){body{margin:12px auto;padding:0 10px}h1{font-size:19px}.tile{min-width:0;flex:1 1 40%;padding:6px 10px}}
"""  # the data-quality section's styles follow (QUALITY_CSS), then the files section's (FILES_CSS)
