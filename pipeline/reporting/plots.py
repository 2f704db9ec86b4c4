"""The report's plots of a run: bars over intervals (histograms, throughput) and horizontal
bars per value (text outputs), as SVG documents with labelled, ticked axes.

`pipeline.reporting.page` places them in the page as images (`markup.svg_image`); the
data-quality section draws its own small plots (`pipeline.reporting.quality_page`).
"""

from __future__ import annotations

from pipeline.reporting.markup import BAR_COLOR, HEIGHT, WIDTH, esc, number, round_ticks, svg_open

_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 24, 52


def histogram_svg(bins: list, name: str) -> str:
    return bars_svg([(lo, hi, count) for lo, hi, count in bins], name, "records", BAR_COLOR, title=name)


def bars_svg(
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


def category_svg(bars: list, name: str) -> str:
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


def empty_svg(message: str) -> str:
    return (
        f'{svg_open()}<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{esc(message)}</text></svg>'
    )


def _tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.6g}"
