"""What the report's pages share: escaping, paths that wrap, times, number formats, the SVG
frame and how an SVG becomes an image in a `data:` URL, round ticks, the colours of the bars.

`pipeline.reporting.page` (the run report) and `pipeline.reporting.quality_page` (its
data-quality section) draw with these; this module imports neither.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import re

BAR_COLOR = "#3b6fb6"  # histogram bars (the browser test looks for them)
THROUGHPUT_COLOR = "#2a9d8f"
WIDTH, HEIGHT = 560, 280  # a full-size plot
_SEPARATOR = re.compile(r"([/_-]+)")  # where a path may wrap: after a run of separators


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def path_html(path) -> str:
    """A path or URI as text that wraps after its separators (/ _ -), not inside a name, on a
    narrow screen; the whole path in `title` (a tooltip, and one string to search for)."""
    text = esc(path)
    wrapping = _SEPARATOR.sub(r"\1<wbr>", text)
    return f'<span class="path" title="{text}">{wrapping}</span>'


def local_time(iso) -> str:
    """An ISO timestamp as ISO local time, to the second: "2026-12-04 22:24:03 +01:00" (the
    time zone of the machine that writes the page), in a <time> that keeps the exact one."""
    try:
        when = datetime.datetime.fromisoformat(str(iso))
    except ValueError:
        return esc(iso)
    local = when.astimezone()
    offset = local.strftime("%z")
    shown = f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"
    return f'<time datetime="{esc(when.isoformat())}">{esc(shown)}</time>'


def local_date(iso) -> str | None:
    """The local date of an ISO timestamp ("2026-12-04"), or None."""
    try:
        return datetime.datetime.fromisoformat(str(iso)).astimezone().date().isoformat()
    except ValueError:
        return None


def number(value) -> str:
    return "—" if value is None else f"{value:.6g}"


def share(value: float) -> str:
    """A share of records, compact: "0", "<1%", "12%", "100%"."""
    if value <= 0:
        return "0"
    return "<1%" if value < 0.005 else f"{value:.0%}"


def finite(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def svg_open(width: int = WIDTH, height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" '
        'font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" font-size="11" fill="#222">'
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
    )


def svg_image(svg: str, alt: str, width: int = WIDTH, height: int = HEIGHT, css: str = "") -> str:
    encoded = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (
        f'<img src="data:image/svg+xml;base64,{encoded}" width="{width}" height="{height}" '
        + (f'class="{css}" ' if css else "")
        + f'alt="{esc(alt)}">'
    )


def round_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
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
