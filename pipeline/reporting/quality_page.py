"""The data-quality section of `report.html`: the gate's verdict and what it means for the
night (for a blocked one: that nothing was published, where the outputs are held, how to
publish a reviewed night), what it compared with, one block per flagged subject with small
plots of tonight beside each reference and its checks, the thresholds in force, the duplicate
keys and every check.

A pure function of run.json's `quality` (`pipeline.quality` writes it; the gate's words come
from `pipeline.run_contract`, as reporting sits beside `pipeline.quality` in the layers).
`pipeline.reporting.page` places the section and its styles (`QUALITY_CSS`) in the page.
"""

from __future__ import annotations

import math

from pipeline.reporting.markup import (
    BAR_COLOR,
    THROUGHPUT_COLOR,
    esc,
    finite,
    path_html,
    round_ticks,
    share,
    svg_image,
    svg_open,
)
from pipeline.reporting.terminal import checks_compared
from pipeline.run_contract import (
    AGAINST_PREVIOUS,
    AGAINST_TRAINING,
    CHECK_BLOCK,
    CHECK_OK,
    CHECK_WARN,
    QUALITY_ACCEPTED,
    QUALITY_BLOCKED,
    QUALITY_PASSED,
    QUALITY_WARNED,
    STAGING_DIR,
    SUCCESS_MARKER,
)

TONIGHT = "tonight"  # the series of this run's records in the plots, beside the references
SERIES_ORDER = (AGAINST_TRAINING, TONIGHT, AGAINST_PREVIOUS)  # tonight beside each reference
SERIES_COLORS = {AGAINST_TRAINING: BAR_COLOR, TONIGHT: "#d9822b", AGAINST_PREVIOUS: "#7b61a8"}

_SEVERITY = {CHECK_OK: 0, CHECK_WARN: 1, CHECK_BLOCK: 2}
_THRESHOLD_NAMES = {
    "distance": "distance (L-infinity, Jensen-Shannon)",
    "missing": "missing share",
    "volume": "volume vs usual",
    "prediction": "mean prediction shift (std)",
}
_FEATURE_PREFIX = "feature."  # thresholds of one feature's distance: feature.NAME
MAX_FLAGGED_SHOWN = 50  # flagged subjects drawn; the rest are in the table of all checks


def quality_section(manifest: dict) -> str:
    """The data-quality gate: its verdict (and, for a blocked run, that nothing was published,
    where the outputs are held and how to publish a reviewed night), what it compared with,
    one block per flagged subject (small plots of tonight beside each reference, and its
    checks), the thresholds in force and the duplicate keys. Nothing for a run without it."""
    quality = manifest.get("quality")
    if not isinstance(quality, dict):
        return ""
    verdict = str(quality.get("verdict") or "")
    checks = [c for c in quality.get("checks") or [] if isinstance(c, dict)]
    flagged = [f for f in quality.get("flagged") or [] if isinstance(f, dict)]
    duplicates = quality.get("duplicate_keys")
    extra = _duplicate_records(duplicates)
    head = (
        f'<section id="quality" data-verdict="{esc(verdict)}" data-checks="{len(checks)}">'
        f'<h2>Data quality <span class="verdict {_css(verdict)}">{esc(_VERDICT_WORDS.get(verdict, verdict))}</span></h2>'
    )
    if verdict == QUALITY_PASSED and not flagged:
        line = (
            f"passed: {checks_compared(checks)}, none at warn or block"
            + "".join(f"; {text}" for text in _comparisons(quality, checked=False))
            + ("; no duplicate keys" if extra == 0 else "")
        )
        return (
            head
            + f'<p class="quality-line">{esc(line)}.</p>'
            + (_duplicates_html(duplicates) if extra else "")
            + _thresholds_line(quality)
            + "</section>"
        )
    compared = "".join(f"<li>{esc(text)}</li>" for text in _comparisons(quality))
    shown = flagged[:MAX_FLAGGED_SHOWN]
    more = (
        f"<p>… and {len(flagged) - len(shown):,} more flagged subjects: see all checks below.</p>"
        if len(flagged) > len(shown)
        else ""
    )
    return (
        head
        + _verdict_callout(verdict, flagged, manifest)
        + f'<ul class="compared">{compared}</ul>'
        + _thresholds_line(quality)
        + "".join(_flagged_html(entry) for entry in shown)
        + more
        + _duplicates_html(duplicates)
        + (
            f"<details><summary>All {len(checks):,} checks</summary>"
            f"{_checks_table(checks, with_subject=True)}</details>"
            if checks
            else ""
        )
        + "</section>"
    )


_VERDICT_WORDS = {
    QUALITY_PASSED: "passed",
    QUALITY_WARNED: "warnings",
    QUALITY_BLOCKED: "blocked",
    QUALITY_ACCEPTED: "accepted",
}


def _verdict_callout(verdict: str, flagged: list, manifest: dict) -> str:
    at = {CHECK_BLOCK: [], CHECK_WARN: []}
    for entry in flagged:
        at.setdefault(str(entry.get("level")), []).append(str(entry.get("subject")))
    blocking, warning = at[CHECK_BLOCK], at[CHECK_WARN]
    if verdict == QUALITY_BLOCKED:
        output_dir = str(manifest.get("output_dir") or "").rstrip("/")
        held = f"{output_dir}/{STAGING_DIR}/" if output_dir else f"{STAGING_DIR}/ under the output directory"
        return (
            '<div class="callout block"><p><strong>Blocked: nothing was published.</strong> '
            f"{_subjects(blocking)} shifted beyond {'its' if len(blocking) == 1 else 'their'} block "
            f"limits. The predictions and error records are held in <code>{path_html(held)}</code> and no "
            f"<code>{SUCCESS_MARKER}</code> was written, so nothing downstream reads this night.</p>"
            "<p>Review the shifts below. If they are real (a new media network, a unit changed "
            "upstream) and the model should score them, re-run the same command with "
            "<code>--accept_drift</code> to publish this night; otherwise fix the input and re-run.</p></div>"
        )
    if verdict == QUALITY_ACCEPTED:
        return (
            '<div class="callout accepted"><p><strong>Published despite a block.</strong> '
            f"{_subjects(blocking)} shifted beyond {'its' if len(blocking) == 1 else 'their'} block "
            "limits; the run was published because it ran with <code>--accept_drift</code> (a night "
            "a person reviewed).</p></div>"
        )
    if verdict == QUALITY_WARNED or warning:
        return (
            '<div class="callout warn"><p><strong>Published, with warnings.</strong> '
            f"{_subjects(warning)} shifted beyond {'its' if len(warning) == 1 else 'their'} warn "
            "limits, none beyond a block limit.</p></div>"
        )
    return f'<div class="callout"><p>Verdict: {esc(verdict or "unknown")}.</p></div>'


def _subjects(names: list) -> str:
    shown = ", ".join(f"<b>{esc(name)}</b>" for name in names[:8])
    return shown + (f" and {len(names) - 8:,} more" if len(names) > 8 else "") if names else "Nothing"


def _comparisons(quality: dict, checked: bool = True) -> list[str]:
    """What skew and drift were checked against, or why not (`checked`: also those checked)."""
    lines = []
    for key, name, against in (("skew", "skew", "training"), ("drift", "drift", "the previous night")):
        found = quality.get(key)
        if not isinstance(found, dict):
            continue
        if found.get("checked"):
            if checked:
                lines.append(f"{name.capitalize()} checked against {against}: {found.get('reference') or ''}")
        else:
            lines.append(f"{name} not checked: {found.get('why') or 'no reference'}")
    return [line[0].upper() + line[1:] if checked else line for line in lines]


def _thresholds_line(quality: dict) -> str:
    thresholds = quality.get("thresholds")
    if not isinstance(thresholds, dict) or not thresholds:
        return ""
    named = " · ".join(
        f"{esc(_threshold_name(str(name)))} <b>{esc(limits)}</b>" for name, limits in thresholds.items()
    )
    return (
        f'<p class="thresholds">Thresholds in force (warn:block): {named}. A check trips when its value '
        "passes the limit plus its sampling allowance, which grows as records get fewer.</p>"
    )


def _threshold_name(name: str) -> str:
    if name.startswith(_FEATURE_PREFIX):
        return f"{name[len(_FEATURE_PREFIX) :]}'s distance"
    return _THRESHOLD_NAMES.get(name, name)


def _flagged_html(entry: dict) -> str:
    subject, level = str(entry.get("subject") or ""), str(entry.get("level") or "")
    checks = [c for c in entry.get("checks") or [] if isinstance(c, dict)]
    return (
        f'<div class="flag {_css(level)}" data-subject="{esc(subject)}" data-level="{esc(level)}">'
        f'<h3><span class="level {_css(level)}">{esc(level)}</span> {esc(subject)}</h3>'
        f'<div class="plots small">{_flag_plots(subject, entry.get("plot"), checks)}</div>'
        f"{_checks_table(checks)}</div>"
    )


def _flag_plots(subject: str, plot, checks: list) -> str:
    """Small plots side by side, one per series (training, tonight, previous night), on one
    scale; the volume as tonight's records beside the usual."""
    volume = next((c for c in checks if "usual" in c), None)
    if volume is not None and not isinstance(plot, dict):
        usual, records = volume.get("usual") or 0, volume.get("records") or 0
        nights = volume.get("nights")
        labels = [f"usual ({nights} night{'s' if nights != 1 else ''})" if nights else "usual", TONIGHT]
        svg, height = _hbars_svg(
            "records", labels, [usual, records], [SERIES_COLORS[AGAINST_PREVIOUS], SERIES_COLORS[TONIGHT]],
            max(usual, records), lambda v: f"{v:,.0f}",
        )  # fmt: skip
        return _figure(svg, height, f"{subject}: records tonight and usually", "")
    if not isinstance(plot, dict) or not isinstance(plot.get("series"), dict):
        return '<p class="noplot">No plot: no distribution to draw for this check.</p>'
    series = [
        (label, values) for label, values in plot["series"].items() if isinstance(values, list) and values
    ]
    series.sort(key=lambda s: SERIES_ORDER.index(s[0]) if s[0] in SERIES_ORDER else len(SERIES_ORDER))
    if not series:
        return '<p class="noplot">No plot: no values to draw.</p>'
    top = max(max(finite(v) for v in values) for _, values in series) or 1.0
    figures = []
    for label, values in series:
        color = SERIES_COLORS.get(label, THROUGHPUT_COLOR)
        alt = f"{subject}, {label}: share of records"
        if plot.get("kind") == "categories":
            labels = [str(v) for v in plot.get("labels") or []]
            labels += [""] * (len(values) - len(labels))
            svg, height = _hbars_svg(label, labels[: len(values)], values, [color] * len(values), top, share)
        else:
            edges = [str(e) for e in plot.get("edges") or []]
            what = str(plot.get("what") or "values")
            svg, height = _vbars_svg(label, edges if len(edges) == len(values) + 1 else [], values, color, top,
                                     f"{subject}: {what}")  # fmt: skip
        figures.append(_figure(svg, height, alt, label))
    return "".join(figures)


def _figure(svg: str, height: int, alt: str, series: str) -> str:
    return (
        f'<figure class="qplot" data-series="{esc(series)}">'
        f"{svg_image(svg, alt, _SW, height, css='qplot')}</figure>"
    )


def _checks_table(checks: list, with_subject: bool = False) -> str:
    rows = []
    for c in sorted(checks, key=lambda c: -_SEVERITY.get(c.get("level"), 0)) if with_subject else checks:
        level = str(c.get("level") or "")
        if "usual" in c:
            records = (
                f"{_count(c.get('records'))} / usual {_count(c.get('usual'))} ({c.get('nights')} nights)"
            )
        else:
            records = f"{_count(c.get('records'))} / {_count(c.get('reference_records'))}"
        rows.append(
            f'<tr data-check="{esc(c.get("subject"))}" data-against="{esc(c.get("against"))}" '
            f'data-measure="{esc(c.get("measure"))}" data-value="{esc(c.get("value"))}" data-level="{esc(level)}">'
            + (f"<td>{esc(c.get('subject'))}</td>" if with_subject else "")
            + f"<td>{esc(c.get('against'))}</td><td>{esc(c.get('measure'))}</td>"
            f"<td class='num'>{esc(_measured(c.get('value')))}</td>"
            f"<td class='num'>{esc(_limit(c.get('warn')))}</td><td class='num'>{esc(_limit(c.get('block')))}</td>"
            f"<td class='num'>{esc(_allowance(c.get('allowance')))}</td><td class='num'>{esc(records)}</td>"
            f'<td class="level-{_css(level)}">{esc(level)}</td></tr>'
        )
    head = "<th>subject</th>" if with_subject else ""
    return (
        f'<table class="checks"><thead><tr>{head}<th>against</th><th>measure</th><th>value</th><th>warn</th>'
        "<th>block</th><th>allowance</th><th>records (tonight / reference)</th><th>level</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _duplicate_records(duplicates) -> int | None:
    if not isinstance(duplicates, dict):
        return None
    return int(duplicates.get("extra_records") or 0)


def _duplicates_html(duplicates) -> str:
    extra = _duplicate_records(duplicates)
    if extra is None:
        return '<p class="duplicates" data-duplicates="">Duplicate keys: not counted (the records have no key field, or --duplicate_keys off).</p>'
    if not extra:
        return '<p class="duplicates" data-duplicates="0">No duplicate keys.</p>'
    keys = int(duplicates.get("keys") or 0)
    examples = [e for e in duplicates.get("examples") or [] if isinstance(e, list | tuple) and len(e) == 2]
    shown = ", ".join(
        f'<code data-key="{esc(key)}">{esc(key)}</code> ×{_count(count)}' for key, count in examples
    )
    return (
        f'<div class="duplicates warn" data-duplicates="{extra}"><h3>Duplicate keys</h3>'
        f"<p><b>{extra:,}</b> record{'s' if extra != 1 else ''} repeat a key seen before "
        f"({keys:,} key{'s' if keys != 1 else ''} appear more than once"
        + (f"; the most repeated: {shown}" if shown else "")
        + "). In ad data this means an upstream join went wrong; all records were scored.</p></div>"
    )


# The data-quality gate's small plots: one per series, all of a subject on one scale.
_SW = 300  # width
_SH = 170  # height of a histogram
_ROW = 16  # height of a category's bar


def _hbars_svg(title: str, labels: list, values: list, colors: list, top: float, fmt) -> tuple[str, int]:
    """Horizontal bars, one per label, 0..`top` across; (the SVG, its height)."""
    left, right, first = 112, 46, 26
    height = first + _ROW * len(values) + 8
    width = _SW - left - right
    top = top if top > 0 else 1.0
    out = [
        svg_open(_SW, height),
        f'<text x="{_SW / 2}" y="16" text-anchor="middle" font-weight="bold">{esc(title)}</text>',
    ]
    for i, (label, value, color) in enumerate(zip(labels, values, colors, strict=False)):
        value = finite(value)
        y0 = first + i * _ROW
        shown = label if len(label) <= 16 else label[:15] + "…"
        bar = value / top * width if value > 0 else 0.0
        out.append(
            f'<text x="{left - 6}" y="{y0 + _ROW * 0.72:.1f}" text-anchor="end">{esc(shown)}</text>'
            f'<rect x="{left}" y="{y0 + 2:.1f}" width="{max(bar, 1.0 if value > 0 else 0.0):.1f}" '
            f'height="{_ROW - 4}" fill="{color}"><title>{esc(label)}: {esc(fmt(value))}</title></rect>'
            f'<text x="{left + bar + 4:.1f}" y="{y0 + _ROW * 0.72:.1f}" fill="#555">{esc(fmt(value))}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{left}" y1="{first}" y2="{first + _ROW * len(values)}" stroke="#444"/></svg>'
    )
    return "".join(out), height


def _vbars_svg(
    title: str, edges: list, values: list, color: str, top: float, x_label: str
) -> tuple[str, int]:
    """Equal-width bars over bins (`edges`: n + 1 labels, or none), 0..`top` up; (the SVG, its height)."""
    left, right, above, below = 42, 12, 24, 34
    plot_w, plot_h = _SW - left - right, _SH - above - below
    ticks = round_ticks(0, top if top > 0 else 1.0, 3)
    if len(ticks) > 1 and ticks[-1] < top:  # the tallest bar under a labelled line
        ticks.append(round(2 * ticks[-1] - ticks[-2], 12))
    y_max = max(top, ticks[-1]) or 1.0
    n = len(values)

    def y(v):
        return above + plot_h - v / y_max * plot_h

    out = [
        svg_open(_SW, _SH),
        f'<text x="{_SW / 2}" y="16" text-anchor="middle" font-weight="bold">{esc(title)}</text>',
    ]
    for tick in ticks:
        out.append(
            f'<line x1="{left}" x2="{_SW - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{esc(share(tick))}</text>'
        )
    for i, value in enumerate(values):
        value = finite(value)
        x0 = left + i * plot_w / n
        where = f"[{edges[i]}, {edges[i + 1]})" if edges else f"bar {i + 1}"
        out.append(
            f'<rect x="{x0 + 0.5:.2f}" y="{y(value):.2f}" width="{max(plot_w / n - 1, 0.8):.2f}" '
            f'height="{y(0) - y(value):.2f}" fill="{color}"><title>{esc(where)}: {esc(share(value))}</title></rect>'
        )
    step = max(1, math.ceil(len(edges) / 6))
    for i in range(0, len(edges), step):
        x = left + i * plot_w / n
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(0)}" y2="{y(0) + 4}" stroke="#444"/>'
            f'<text x="{x:.1f}" y="{y(0) + 15}" text-anchor="middle">{esc(edges[i])}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{_SW - right}" y1="{y(0)}" y2="{y(0)}" stroke="#444"/>'
        f'<text x="{left + plot_w / 2}" y="{_SH - 4}" text-anchor="middle" fill="#555">{esc(x_label)}</text></svg>'
    )
    return "".join(out), _SH


def _css(word) -> str:
    """A level or verdict as a CSS class (anything else: "other")."""
    return (
        str(word)
        if word in (CHECK_OK, CHECK_WARN, CHECK_BLOCK, QUALITY_PASSED, QUALITY_ACCEPTED)
        else "other"
    )


def _count(value) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "—"


def _measured(value) -> str:
    return (
        "not measured"
        if value is None
        else (f"{value:.4g}" if isinstance(value, int | float) else str(value))
    )


def _limit(value) -> str:
    return "off" if value is None else (f"{value:g}" if isinstance(value, int | float) else str(value))


def _allowance(value) -> str:
    return "—" if not isinstance(value, int | float) else f"+{value:.3g}"


# The section's styles, after the page's own.
QUALITY_CSS = """.verdict,.level{font-size:12px;padding:2px 9px;border-radius:10px;color:#fff;vertical-align:middle;background:#666}
.verdict.pass,.level.ok{background:#2e7d32}.verdict.warn,.level.warn{background:#b7860b}
.verdict.block,.level.block{background:#c62828}.verdict.accepted{background:#e65100}
.callout{border-left:6px solid #888;background:#f5f5f5;padding:4px 16px;margin:10px 0}
.callout.block{border-color:#c62828;background:#fdecea}.callout.warn{border-color:#e0a100;background:#fff8e1}
.callout.accepted{border-color:#e65100;background:#fff3e0}.callout p{margin:6px 0}.callout code{white-space:nowrap}
.compared{margin:6px 0;padding-left:20px}.thresholds{color:#555;font-size:12px}
.flag{border:1px solid #ddd;border-left:6px solid #888;border-radius:4px;padding:2px 14px 8px;margin:12px 0}
.flag.block{border-left-color:#c62828}.flag.warn{border-left-color:#e0a100}
.plots.small{gap:10px}.plots.small figure{max-width:300px}.noplot{color:#666}
table.checks{font-size:12px}td.level-block{color:#c62828;font-weight:bold}td.level-warn{color:#9a6b00;font-weight:bold}
.duplicates.warn{border-left:6px solid #e0a100;background:#fff8e1;padding:2px 14px;margin:10px 0}
"""
