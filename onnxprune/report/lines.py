"""Line charts as inline SVG, written by hand like the bar charts of :mod:`onnxprune.report.charts`.

Scale. x maps linearly onto the plot's width over [x_lo, x_hi]: the data's range widened to
nice ticks, or ``x_domain`` as given. y maps onto its height over [y_lo, y_hi] (the data's
range with 0 included, widened to nice ticks), linearly, or with ``y_scale="sqrt"`` through
s(y) = sign(y)·√|y|: small values spread out, zero stays zero, the order of values is kept,
and the ticks (at about 10 %, 20 %, 40 %, 60 %, 80 % of the drawn height) carry true values.

Every curve is a ``<polyline class="line">`` with its exact points in a ``<title>``; a
marked point (a chosen value) is a ``<circle class="mark">`` with its value in ``data-x``
and ``data-y``. Non-finite points are left out. All text is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from onnxprune.report.charts import (
    GRID,
    INK,
    LABEL_FONT,
    LEGEND_ROW,
    MUTED,
    PAD,
    TICK_FONT,
    TITLE,
    attr,
    nice_ticks,
    num,
    shorten,
    svg_open,
    svg_text,
    text_width,
)


@dataclass(frozen=True)
class Line:
    """One curve: its points joined in order, and optionally one marked point (a chosen value)."""

    name: str
    points: tuple[tuple[float, float], ...]
    color: str
    mark: tuple[float, float] | None = None
    mark_note: str = ""  # tooltip of the mark


@dataclass(frozen=True)
class LineChart:
    """Curves on shared axes. ``y_scale="sqrt"`` draws y at sign(y)·√|y|: small values spread
    out, zero stays zero, the order of values is kept (ticks are labelled with true values)."""

    title: str
    lines: tuple[Line, ...]
    x_label: str = ""
    y_label: str = ""
    x_format: Callable[[float], str] = lambda v: f"{v:g}"
    y_format: Callable[[float], str] = lambda v: f"{v:g}"
    y_scale: str = "linear"  # "linear" or "sqrt"
    x_domain: tuple[float, float] | None = None  # None: the data's, widened to nice ticks
    width: int = 760
    plot_height: int = 320
    legend_chars: int = 40
    reference_x: float | None = None  # a dashed vertical line (a target)
    reference_label: str = ""
    y_from_zero: bool = True  # False: y spans the data only (close values, e.g. accuracies)


def _sqrt_scale(value: float) -> float:
    return math.copysign(math.sqrt(abs(value)), value)


def _round_sig(value: float, digits: int = 1) -> float:
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def _line_y_ticks(chart: LineChart, lo: float, hi: float) -> list[float]:
    ticks = nice_ticks(lo, hi)
    if chart.y_scale != "sqrt":
        return ticks
    top, bottom = ticks[-1], ticks[0]
    out = {0.0, top, bottom}
    for k in (1, 2, 4, 6, 8):  # at 10 %, 20 %, 40 % … of the drawn (square-root) height, rounded
        out.add(_round_sig(top * (k / 10) ** 2))
    return sorted(out)


def _line_legend(lines: Sequence[Line], width: float, y0: float, max_chars: int) -> tuple[list[str], float]:
    parts: list[str] = []
    x, y = float(PAD), y0
    for line in lines:
        label = shorten(line.name, max_chars)
        item = 20 + text_width(label, LABEL_FONT) + 14
        if x + item > width - PAD and x > PAD:
            x, y = float(PAD), y + LEGEND_ROW
        parts.append(
            f'<line class="swatch" x1="{num(x)}" x2="{num(x + 16)}" y1="{num(y + 8)}" y2="{num(y + 8)}" '
            f'stroke="{line.color}" stroke-width="3"/>'
        )
        text = svg_text(x + 20, y + 12, label, size=LABEL_FONT, fill=INK)
        parts.append(
            text.replace("</text>", f"<title>{escape(line.name)}</title></text>") if label != line.name else text
        )
        x += item
    return parts, (y + LEGEND_ROW - y0) if lines else 0.0


def render_lines(chart: LineChart) -> str:
    """The line chart as a standalone ``<svg>``: a ``<polyline class="line">`` per curve that has
    points (exact values in its ``<title>``), a ``<circle class="mark">`` per marked point."""
    width = float(chart.width)
    drawn = [line for line in chart.lines if line.points]
    xs = [x for line in drawn for x, _ in line.points if math.isfinite(x)]
    ys = [y for line in drawn for _, y in line.points if math.isfinite(y)]
    xs += [line.mark[0] for line in drawn if line.mark]
    ys += [line.mark[1] for line in drawn if line.mark]
    if chart.x_domain is not None:
        x_lo, x_hi = chart.x_domain
        x_ticks = [t for t in nice_ticks(x_lo, x_hi) if x_lo - 1e-12 <= t <= x_hi + 1e-12]
    else:
        x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
        x_lo, x_hi = x_ticks[0], x_ticks[-1]
    if not x_hi > x_lo:
        x_hi = x_lo + 1.0
    floor = [0.0] if chart.y_from_zero or not ys else []
    y_ticks = _line_y_ticks(chart, min([*floor, *ys]), max([*floor, *ys]))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    scale = _sqrt_scale if chart.y_scale == "sqrt" else (lambda v: v)
    s_lo, s_hi = scale(y_lo), scale(y_hi)
    if not s_hi > s_lo:
        s_hi = s_lo + 1.0

    legend, legend_h = _line_legend(drawn, width, PAD + TITLE, chart.legend_chars) if len(drawn) > 1 else ([], 0.0)
    y_labels = [chart.y_format(t) for t in y_ticks]
    left = PAD + (16 if chart.y_label else 0) + max(text_width(t, TICK_FONT) for t in y_labels) + 8
    right = width - PAD - 8
    plot_top = PAD + TITLE + legend_h + 12
    plot_h = float(chart.plot_height)
    height = plot_top + plot_h + 20 + (18 if chart.x_label else 0) + PAD

    def x_of(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (right - left)

    def y_of(v: float) -> float:
        return plot_top + (s_hi - scale(v)) / (s_hi - s_lo) * plot_h

    parts = [svg_open(chart.title, width, height), *legend]
    for t, label in zip(y_ticks, y_labels, strict=True):
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{num(left)}" x2="{num(right)}" y1="{num(y)}" y2="{num(y)}" stroke="{GRID}"/>'
        )
        parts.append(svg_text(left - 6, y + 4, label, size=TICK_FONT, anchor="end", fill=MUTED))
    for t in x_ticks:
        x = x_of(t)
        parts.append(
            f'<line class="grid" x1="{num(x)}" x2="{num(x)}" y1="{num(plot_top)}" y2="{num(plot_top + plot_h)}" '
            f'stroke="{GRID}"/>'
        )
        parts.append(
            svg_text(x, plot_top + plot_h + 15, chart.x_format(t), size=TICK_FONT, anchor="middle", fill=MUTED)
        )
    if chart.x_label:
        parts.append(
            svg_text(
                (left + right) / 2, plot_top + plot_h + 33, chart.x_label, size=TICK_FONT, anchor="middle", fill=MUTED
            )
        )
    if chart.y_label:
        cy = plot_top + plot_h / 2
        parts.append(
            svg_text(
                PAD + 10,
                cy,
                chart.y_label,
                size=TICK_FONT,
                anchor="middle",
                fill=MUTED,
                transform=f"rotate(-90 {num(PAD + 10)} {num(cy)})",
            )
        )
    zero = y_of(0.0)
    parts.append(
        f'<line class="axis" x1="{num(left)}" x2="{num(right)}" y1="{num(zero)}" y2="{num(zero)}" stroke="{INK}"/>'
    )
    if chart.reference_x is not None and x_lo <= chart.reference_x <= x_hi:
        x = x_of(chart.reference_x)
        parts.append(
            f'<line class="reference" x1="{num(x)}" x2="{num(x)}" y1="{num(plot_top)}" y2="{num(plot_top + plot_h)}" '
            f'stroke="{INK}" stroke-dasharray="5 4"/>'
        )
        if chart.reference_label:
            parts.append(svg_text(x + 4, plot_top + 11, chart.reference_label, size=LABEL_FONT, fill=INK))
    for line in drawn:
        points = [(x, y) for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
        coords = " ".join(f"{num(x_of(x))},{num(y_of(y))}" for x, y in points)
        values = ", ".join(f"{chart.x_format(x)}: {chart.y_format(y)}" for x, y in points)
        parts.append(
            f'<polyline class="line" points="{coords}" fill="none" stroke="{line.color}" stroke-width="1.6" '
            f'stroke-linejoin="round" data-name="{attr(line.name)}"><title>{escape(f"{line.name} — {values}")}'
            "</title></polyline>"
        )
    for line in drawn:  # marks last: on top of every line
        if line.mark is None or not all(math.isfinite(v) for v in line.mark):
            continue
        mx, my = line.mark
        tip = f"{line.name}: {line.mark_note}" if line.mark_note else line.name
        parts.append(
            f'<circle class="mark" cx="{num(x_of(mx))}" cy="{num(y_of(my))}" r="4" fill="{line.color}" '
            f'stroke="#ffffff" stroke-width="1.2" data-name="{attr(line.name)}" data-x="{mx!r}" data-y="{my!r}">'
            f"<title>{escape(tip)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
