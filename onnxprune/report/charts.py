"""Bar charts as inline SVG, written by hand: no plotting library, no script, no web font.

Scale. A chart maps values linearly onto its plot area. The axis domain is [lo, hi] with
lo = min(0, values), hi = max(0, values, reference), both widened to "nice" ticks
(steps of 1, 2, 2.5 or 5 × 10^k), or hi fixed by ``domain_max`` (1.0 for fractions). A
bar spans from the zero line to its value v, so its length is |v| · L / (hi − lo), with L
the plot's length in pixels: bar lengths are proportional to the values, and two bars of
the same chart compare honestly. A *zoomed* chart (``domain_min`` > 0, for values that all
lie close together, such as accuracies of 98.9 and 99.1 %) starts its axis at that nice
tick instead: bars span from it, their lengths are proportional to ``v − lo``, and the
axis says so with a "zoomed" mark and the caption names the axis minimum. Whiskers (``low``–``high``, e.g. a p10–p90 spread) are
drawn on the same scale, centred on their bar.

Every bar is a ``<rect class="bar">`` carrying its exact value in ``data-value`` and in a
``<title>`` tooltip; a missing value (None) draws no bar. All text is escaped with
:func:`html.escape`. Text widths are estimated (``CHAR_WIDTH`` × font size per character)
to lay out labels; long labels are shortened with an ellipsis and kept whole in a tooltip.

The SVG primitives (:func:`svg_open`, :func:`svg_text`, :func:`num`, :func:`attr`, the layout
constants) are shared with the line charts of :mod:`onnxprune.report.lines`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

#: Fill colours of the series, in order: distinct hues, readable on white, checked by
#: ``tools/check_report.py`` in a real browser's rendering.
PALETTE = ("#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
CHAR_WIDTH = 0.6  # average advance of a glyph, as a fraction of the font size (estimate)

PAD = 12
TITLE = 22
LEGEND_ROW = 18
TICK_FONT = 11
_VALUE_FONT = 10
LABEL_FONT = 11
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
_WHISKER = "#374151"


def colors(count: int) -> list[str]:
    """``count`` distinct fill colours: the palette, then hues spread by the golden angle."""
    out = list(PALETTE[:count])
    for index in range(count - len(out)):
        hue = (index * 137.508 + 15) % 360
        out.append(_hsl(hue, 0.55, 0.42 if index % 2 else 0.58))
    return out


def _hsl(hue: float, saturation: float, lightness: float) -> str:
    chroma = (1 - abs(2 * lightness - 1)) * saturation
    x = chroma * (1 - abs((hue / 60) % 2 - 1))
    r, g, b = [(chroma, x, 0), (x, chroma, 0), (0, chroma, x), (0, x, chroma), (x, 0, chroma), (chroma, 0, x)][
        int(hue // 60) % 6
    ]
    m = lightness - chroma / 2
    return "#" + "".join(f"{round((c + m) * 255):02x}" for c in (r, g, b))


@dataclass(frozen=True)
class Series:
    """One set of bars: a value per category (None: not measured), an optional whisker."""

    name: str
    values: tuple[float | None, ...]
    color: str
    low: tuple[float | None, ...] = ()
    high: tuple[float | None, ...] = ()
    notes: tuple[str, ...] = ()  # extra tooltip text, one per value
    value_format: Callable[[float], str] | None = None  # None: the chart's


def _fmt(chart: BarChart, s: Series, value: float) -> str:
    return (s.value_format or chart.value_format)(value)


@dataclass(frozen=True)
class BarChart:
    """A grouped bar chart: one group per category, one bar per series in each group."""

    title: str
    categories: tuple[str, ...]
    series: tuple[Series, ...]
    value_format: Callable[[float], str] = lambda v: f"{v:g}"
    axis_label: str = ""
    horizontal: bool = False
    width: int = 560
    plot_height: int = 220  # vertical charts: the height of the plot area
    bar_thickness: int = 14  # horizontal charts: the height of one bar
    label_chars: int = 44  # horizontal charts: longer category labels are shortened in the middle
    domain_max: float | None = None
    domain_min: float | None = None  # > 0: a zoomed axis that starts here (module docstring)
    tick_unit: float = 1.0  # ticks are nice multiples of this unit (1024 for KiB ...)
    tick_format: Callable[[float], str] | None = None  # None: value_format
    reference: float | None = None
    reference_label: str = ""


def text_width(text: str, size: float) -> float:
    """Estimated width in pixels of ``text`` at font ``size``."""
    return len(text) * size * CHAR_WIDTH


def shorten(text: str, max_chars: int) -> str:
    """``text`` cut in the middle with "…" to at most ``max_chars`` characters."""
    if len(text) <= max_chars:
        return text
    if max_chars <= 1:
        return "…"
    head = (max_chars - 1) * 2 // 5  # the end of a name tells most (weight vs bias, file suffix)
    tail = max_chars - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]


def wrap(text: str, max_chars: int, max_lines: int = 2) -> list[str]:
    """Break ``text`` after separators (``. _ - / space``) into lines of ≤ ``max_chars``.

    Beyond ``max_lines`` the last line keeps the end of the text behind an ellipsis (the
    end of a file name is what tells models apart).
    """
    max_chars = max(max_chars, 2)
    if len(text) <= max_chars:
        return [text]
    tokens: list[str] = []
    current = ""
    for char in text:
        current += char
        if char in "._-/ ":
            tokens.append(current)
            current = ""
    if current:
        tokens.append(current)
    lines: list[str] = []
    line = ""
    for token in tokens:
        while len(token) > max_chars:  # a token longer than a line is cut hard
            if line:
                lines.append(line)
                line = ""
            lines.append(token[:max_chars])
            token = token[max_chars:]
        if len(line) + len(token) > max_chars:
            lines.append(line)
            line = token
        else:
            line += token
    if line:
        lines.append(line)
    lines = [ln.strip() for ln in lines if ln.strip()]
    if len(lines) > max_lines:
        rest = "".join(lines[max_lines - 1 :])
        lines = [*lines[: max_lines - 1], "…" + rest[-(max_chars - 1) :]]
    return lines


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Evenly spaced round tick values covering [lo, hi] (about ``count`` intervals)."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = 10.0 * magnitude
    for multiple in (1.0, 2.0, 2.5, 5.0):
        if multiple * magnitude >= raw * (1 - 1e-9):
            step = multiple * magnitude
            break
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    n = max(1, round((end - start) / step))
    return [float(f"{start + i * step:.12g}") for i in range(n + 1)]


def _domain(chart: BarChart) -> list[float]:
    values = [
        v
        for s in chart.series
        for group in (s.values, s.low, s.high)
        for v in group
        if v is not None and math.isfinite(v)
    ]
    if chart.reference is not None:
        values.append(chart.reference)
    lo = min([0.0, *values])
    if chart.domain_min is not None and 0 < chart.domain_min <= min(values, default=0.0):
        lo = chart.domain_min
    hi = max([0.0, *values])
    unit = chart.tick_unit if chart.tick_unit > 0 else 1.0
    if chart.domain_max is not None and chart.domain_max >= hi:
        ticks = [t * unit for t in nice_ticks(lo / unit, chart.domain_max / unit)]
        return [t for t in ticks if t <= chart.domain_max * (1 + 1e-12)] or [lo, chart.domain_max]
    return [t * unit for t in nice_ticks(lo / unit, hi / unit)]


def _tick_labels(chart: BarChart, ticks: Sequence[float]) -> list[str]:
    return [(chart.tick_format or chart.value_format)(t) for t in ticks]


def num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def attr(text: str) -> str:
    return escape(text, quote=True)


def svg_text(x: float, y: float, content: str, *, size: float, anchor: str = "start", **extra: str) -> str:
    attrs = "".join(f' {k.rstrip("_").replace("_", "-")}="{attr(v)}"' for k, v in extra.items())
    return (
        f'<text x="{num(x)}" y="{num(y)}" font-size="{num(size)}" text-anchor="{anchor}"{attrs}>'
        f"{escape(content)}</text>"
    )


def _legend(series: Sequence[Series], width: float, y0: float) -> tuple[list[str], float]:
    """Swatches and names flowing left to right, wrapping; returns (elements, height)."""
    if len(series) < 2:
        return [], 0.0
    parts: list[str] = []
    x, y = float(PAD), y0
    for s in series:
        label = shorten(s.name, 40)
        item = 14 + text_width(label, LABEL_FONT) + 16
        if x + item > width - PAD and x > PAD:
            x, y = float(PAD), y + LEGEND_ROW
        parts.append(f'<rect class="swatch" x="{num(x)}" y="{num(y + 3)}" width="10" height="10" fill="{s.color}"/>')
        parts.append(svg_text(x + 14, y + 12, label, size=LABEL_FONT, fill=INK))
        x += item
    return parts, y + LEGEND_ROW - y0


def _bar_tooltip(chart: BarChart, s: Series, index: int, value: float) -> str:
    shown = _fmt(chart, s, value)
    tip = (
        f"{chart.categories[index]} · {s.name}: {shown}"
        if len(chart.series) > 1
        else f"{chart.categories[index]}: {shown}"
    )
    low = s.low[index] if index < len(s.low) else None
    high = s.high[index] if index < len(s.high) else None
    if low is not None and high is not None:
        tip += f" (spread {_fmt(chart, s, low)} – {_fmt(chart, s, high)})"
    if index < len(s.notes) and s.notes[index]:
        tip += f" — {s.notes[index]}"
    return tip


def _bar(x: float, y: float, w: float, h: float, color: str, value: float, tooltip: str) -> str:
    return (
        f'<rect class="bar" x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" fill="{color}" '
        f'data-value="{value!r}"><title>{escape(tooltip)}</title></rect>'
    )


def svg_open(title: str, width: float, height: float) -> str:
    """The ``<svg>`` start tag, its accessible title, the white background and the drawn title."""
    return (
        f'<svg class="chart" role="img" viewBox="0 0 {num(width)} {num(height)}" '
        f'width="{num(width)}" height="{num(height)}" font-family="{attr(FONT)}" '
        f'aria-label="{attr(title)}"><title>{escape(title)}</title>'
        f'<rect class="background" x="0" y="0" width="{num(width)}" height="{num(height)}" fill="#ffffff"/>'
        + svg_text(PAD, PAD + 13, title, size=13, font_weight="600", fill=INK)
    )


def _whisker_parts(s: Series, i: int) -> tuple[float, float] | None:
    low = s.low[i] if i < len(s.low) else None
    high = s.high[i] if i < len(s.high) else None
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def _vertical(chart: BarChart) -> str:
    width = float(chart.width)
    legend, legend_h = _legend(chart.series, width, PAD + TITLE)
    ticks = _domain(chart)
    lo, hi = ticks[0], ticks[-1]
    tick_labels = _tick_labels(chart, ticks)
    axis_room = 16 if chart.axis_label else 0
    left = PAD + axis_room + max(text_width(t, TICK_FONT) for t in tick_labels) + 8
    plot_w = width - left - PAD
    n_cat, n_ser = max(len(chart.categories), 1), max(len(chart.series), 1)
    group = plot_w / n_cat
    bar_w = min(56.0, group * 0.78 / n_ser)
    label_lines = [wrap(c, max(3, int(group / (LABEL_FONT * CHAR_WIDTH)) - 1)) for c in chart.categories]
    n_lines = max((len(lines) for lines in label_lines), default=1)

    value_texts = [[None if v is None else _fmt(chart, s, v) for v in s.values] for s in chart.series]
    widest = max((text_width(t, _VALUE_FONT) for row in value_texts for t in row if t), default=0.0)
    rotated = widest > bar_w + 2
    headroom = (widest + 8) if rotated else 16.0
    top = PAD + TITLE + legend_h + 6
    plot_top = top + headroom
    plot_h = float(chart.plot_height)
    height = plot_top + plot_h + 8 + n_lines * 13 + PAD

    def y_of(v: float) -> float:
        return plot_top + (hi - v) / (hi - lo) * plot_h

    parts = [svg_open(chart.title, width, height), *legend]
    for t, label in zip(ticks, tick_labels, strict=True):
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{num(left)}" x2="{num(width - PAD)}" y1="{num(y)}" y2="{num(y)}" stroke="{GRID}"/>'
        )
        parts.append(svg_text(left - 6, y + 4, label, size=TICK_FONT, anchor="end", fill=MUTED))
    if chart.axis_label:
        cy = plot_top + plot_h / 2
        parts.append(
            svg_text(
                PAD + 10,
                cy,
                chart.axis_label,
                size=TICK_FONT,
                anchor="middle",
                fill=MUTED,
                transform=f"rotate(-90 {num(PAD + 10)} {num(cy)})",
            )
        )
    zero = y_of(max(lo, 0.0))  # a zoomed axis: bars start at its minimum
    for ci, lines in enumerate(label_lines):
        gx = left + ci * group
        start = gx + (group - bar_w * n_ser) / 2
        for si, s in enumerate(chart.series):
            v = s.values[ci] if ci < len(s.values) else None
            if v is None or not math.isfinite(v):
                continue
            x = start + si * bar_w
            y_end = y_of(v)
            parts.append(
                _bar(
                    x + 1,
                    min(zero, y_end),
                    max(bar_w - 2, 1),
                    abs(zero - y_end),
                    s.color,
                    v,
                    _bar_tooltip(chart, s, ci, v),
                )
            )
            tip_y = y_end
            whisker = _whisker_parts(s, ci)
            if whisker:
                cx = x + bar_w / 2
                y1, y2 = y_of(whisker[0]), y_of(whisker[1])
                cap = max(bar_w * 0.2, 3)
                parts.append(
                    f'<path class="whisker" d="M{num(cx)} {num(y1)}V{num(y2)}M{num(cx - cap)} {num(y1)}'
                    f'H{num(cx + cap)}M{num(cx - cap)} {num(y2)}H{num(cx + cap)}" stroke="{_WHISKER}" '
                    f'stroke-width="1.5" fill="none"/>'
                )
                tip_y = min(tip_y, y1, y2) if v >= 0 else max(tip_y, y1, y2)
            label = value_texts[si][ci] or ""
            cx = x + bar_w / 2
            if rotated:
                ly = tip_y - 4 if v >= 0 else tip_y + 4
                anchor = "start" if v >= 0 else "end"
                parts.append(
                    svg_text(
                        cx + 3.5,
                        ly,
                        label,
                        size=_VALUE_FONT,
                        anchor=anchor,
                        fill=INK,
                        transform=f"rotate(-90 {num(cx + 3.5)} {num(ly)})",
                    )
                )
            else:
                ly = tip_y - 4 if v >= 0 else tip_y + 12
                parts.append(svg_text(cx, ly, label, size=_VALUE_FONT, anchor="middle", fill=INK))
        for li, line in enumerate(lines):
            parts.append(
                svg_text(
                    gx + group / 2,
                    plot_top + plot_h + 8 + 11 + li * 13,
                    line,
                    size=LABEL_FONT,
                    anchor="middle",
                    fill=INK,
                    class_="category",
                ).replace("</text>", f"<title>{escape(chart.categories[ci])}</title></text>")
            )
    parts.append(
        f'<line class="axis" x1="{num(left)}" x2="{num(width - PAD)}" y1="{num(zero)}" y2="{num(zero)}" stroke="{INK}"/>'
    )
    parts.extend(_reference_vertical(chart, y_of, left, width))
    parts.append("</svg>")
    return "".join(parts)


def _reference_vertical(chart: BarChart, y_of: Callable[[float], float], left: float, width: float) -> list[str]:
    if chart.reference is None:
        return []
    y = y_of(chart.reference)
    out = [
        f'<line class="reference" x1="{num(left)}" x2="{num(width - PAD)}" y1="{num(y)}" y2="{num(y)}" stroke="{INK}" stroke-dasharray="5 4"/>'
    ]
    out.extend(_reference_key(chart, width))
    return out


def _reference_key(chart: BarChart, width: float) -> list[str]:
    """The reference line's key at the top right, beside the title: a dashed stroke and its label."""
    if chart.reference is None or not chart.reference_label:
        return []
    x = width - PAD - text_width(chart.reference_label, LABEL_FONT)
    y = PAD + 9
    return [
        f'<line class="reference-key" x1="{num(x - 26)}" x2="{num(x - 6)}" y1="{num(y)}" y2="{num(y)}" '
        f'stroke="{INK}" stroke-dasharray="5 4"/>',
        svg_text(x, y + 4, chart.reference_label, size=LABEL_FONT, fill=INK),
    ]


def _horizontal(chart: BarChart) -> str:
    width = float(chart.width)
    legend, legend_h = _legend(chart.series, width, PAD + TITLE)
    ticks = _domain(chart)
    lo, hi = ticks[0], ticks[-1]
    tick_labels = _tick_labels(chart, ticks)
    n_ser = max(len(chart.series), 1)
    thickness = float(chart.bar_thickness)
    gap = max(6.0, thickness * 0.6)
    group = n_ser * thickness + gap
    label_font = min(LABEL_FONT, max(group - 3, 8))
    labels = [shorten(c, chart.label_chars) for c in chart.categories]
    left = PAD + max((text_width(t, label_font) for t in labels), default=0) + 10
    show_values = thickness >= 9
    value_font = min(_VALUE_FONT, thickness)
    value_room = (
        max(
            (text_width(_fmt(chart, s, v), value_font) for s in chart.series for v in s.values if v is not None),
            default=0,
        )
        + 10
        if show_values
        else 0
    )
    right = PAD + max(value_room, text_width(tick_labels[-1], TICK_FONT) / 2)
    plot_w = max(width - left - right, 80.0)
    top = PAD + TITLE + legend_h + 4
    plot_h = len(chart.categories) * group
    top_axis = plot_h > 420
    plot_top = top + (18 if top_axis else 4)
    height = plot_top + plot_h + 18 + (16 if chart.axis_label else 0) + PAD

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    parts = [svg_open(chart.title, width, height), *legend]
    for t, label in zip(ticks, tick_labels, strict=True):
        x = x_of(t)
        parts.append(
            f'<line class="grid" x1="{num(x)}" x2="{num(x)}" y1="{num(plot_top)}" y2="{num(plot_top + plot_h)}" stroke="{GRID}"/>'
        )
        parts.append(svg_text(x, plot_top + plot_h + 14, label, size=TICK_FONT, anchor="middle", fill=MUTED))
        if top_axis:
            parts.append(svg_text(x, plot_top - 6, label, size=TICK_FONT, anchor="middle", fill=MUTED))
    if chart.axis_label:
        parts.append(
            svg_text(
                left + plot_w / 2,
                plot_top + plot_h + 30,
                chart.axis_label,
                size=TICK_FONT,
                anchor="middle",
                fill=MUTED,
            )
        )
    zero = x_of(max(lo, 0.0))  # a zoomed axis: bars start at its minimum
    for ci, category in enumerate(chart.categories):
        gy = plot_top + ci * group + gap / 2
        parts.append(
            svg_text(
                left - 8,
                gy + n_ser * thickness / 2 + label_font * 0.35,
                labels[ci],
                size=label_font,
                anchor="end",
                fill=INK,
                class_="category",
            ).replace("</text>", f"<title>{escape(category)}</title></text>")
        )
        present = [s.values[ci] for s in chart.series if ci < len(s.values) and s.values[ci] is not None]
        if not show_values and present and all(v == 0 for v in present):  # no bar to see: say the value
            parts.append(
                svg_text(
                    zero + 4,
                    gy + n_ser * thickness / 2 + _VALUE_FONT * 0.35,
                    _fmt(chart, chart.series[0], 0.0),
                    size=_VALUE_FONT,
                    fill=MUTED,
                )
            )
        for si, s in enumerate(chart.series):
            v = s.values[ci] if ci < len(s.values) else None
            if v is None or not math.isfinite(v):
                continue
            y = gy + si * thickness
            x_end = x_of(v)
            parts.append(
                _bar(
                    min(zero, x_end),
                    y + 0.5,
                    abs(x_end - zero),
                    max(thickness - 1, 1),
                    s.color,
                    v,
                    _bar_tooltip(chart, s, ci, v),
                )
            )
            tip_x = x_end
            whisker = _whisker_parts(s, ci)
            if whisker:
                cy = y + thickness / 2
                x1, x2 = x_of(whisker[0]), x_of(whisker[1])
                cap = max(thickness * 0.3, 2)
                parts.append(
                    f'<path class="whisker" d="M{num(x1)} {num(cy)}H{num(x2)}M{num(x1)} {num(cy - cap)}'
                    f'V{num(cy + cap)}M{num(x2)} {num(cy - cap)}V{num(cy + cap)}" stroke="{_WHISKER}" '
                    f'stroke-width="1.5" fill="none"/>'
                )
                tip_x = max(tip_x, x1, x2) if v >= 0 else min(tip_x, x1, x2)
            if show_values:
                lx = tip_x + 4 if v >= 0 else tip_x - 4
                parts.append(
                    svg_text(
                        lx,
                        y + thickness / 2 + value_font * 0.35,
                        _fmt(chart, s, v),
                        size=value_font,
                        anchor="start" if v >= 0 else "end",
                        fill=INK,
                    )
                )
    parts.append(
        f'<line class="axis" x1="{num(zero)}" x2="{num(zero)}" y1="{num(plot_top)}" y2="{num(plot_top + plot_h)}" stroke="{INK}"/>'
    )
    if chart.reference is not None:
        x = x_of(chart.reference)
        parts.append(
            f'<line class="reference" x1="{num(x)}" x2="{num(x)}" y1="{num(plot_top)}" y2="{num(plot_top + plot_h)}" stroke="{INK}" stroke-dasharray="5 4"/>'
        )
        parts.extend(_reference_key(chart, width))
    parts.append("</svg>")
    return "".join(parts)


def render(chart: BarChart) -> str:
    """The chart as a standalone ``<svg>`` element (for inlining in HTML)."""
    return _horizontal(chart) if chart.horizontal else _vertical(chart)
