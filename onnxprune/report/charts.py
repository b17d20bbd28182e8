"""Bar charts as inline SVG, written by hand: no plotting library, no script, no web font.

Scale. A chart maps values linearly onto its plot area. The axis domain is [lo, hi] with
lo = min(0, values), hi = max(0, values, reference), both widened to "nice" ticks
(steps of 1, 2, 2.5 or 5 × 10^k), or hi fixed by ``domain_max`` (1.0 for fractions). A
bar spans from the zero line to its value v, so its length is |v| · L / (hi − lo), with L
the plot's length in pixels: bar lengths are proportional to the values, and two bars of
the same chart compare honestly. Whiskers (``low``–``high``, e.g. a p10–p90 spread) are
drawn on the same scale, centred on their bar.

Every bar is a ``<rect class="bar">`` carrying its exact value in ``data-value`` and in a
``<title>`` tooltip; a missing value (None) draws no bar. All text is escaped with
:func:`html.escape`. Text widths are estimated (``CHAR_WIDTH`` × font size per character)
to lay out labels; long labels are shortened with an ellipsis and kept whole in a tooltip.
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

_PAD = 12
_TITLE = 22
_LEGEND_ROW = 18
_TICK_FONT = 11
_VALUE_FONT = 10
_LABEL_FONT = 11
_INK = "#1f2937"
_MUTED = "#6b7280"
_GRID = "#e5e7eb"
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
    hi = max([0.0, *values])
    unit = chart.tick_unit if chart.tick_unit > 0 else 1.0
    if chart.domain_max is not None and chart.domain_max >= hi:
        ticks = [t * unit for t in nice_ticks(lo / unit, chart.domain_max / unit)]
        return [t for t in ticks if t <= chart.domain_max * (1 + 1e-12)] or [lo, chart.domain_max]
    return [t * unit for t in nice_ticks(lo / unit, hi / unit)]


def _tick_labels(chart: BarChart, ticks: Sequence[float]) -> list[str]:
    return [(chart.tick_format or chart.value_format)(t) for t in ticks]


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _attr(text: str) -> str:
    return escape(text, quote=True)


def _text(x: float, y: float, content: str, *, size: float, anchor: str = "start", **extra: str) -> str:
    attrs = "".join(f' {k.rstrip("_").replace("_", "-")}="{_attr(v)}"' for k, v in extra.items())
    return (
        f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" text-anchor="{anchor}"{attrs}>'
        f"{escape(content)}</text>"
    )


def _legend(series: Sequence[Series], width: float, y0: float) -> tuple[list[str], float]:
    """Swatches and names flowing left to right, wrapping; returns (elements, height)."""
    if len(series) < 2:
        return [], 0.0
    parts: list[str] = []
    x, y = float(_PAD), y0
    for s in series:
        label = shorten(s.name, 40)
        item = 14 + text_width(label, _LABEL_FONT) + 16
        if x + item > width - _PAD and x > _PAD:
            x, y = float(_PAD), y + _LEGEND_ROW
        parts.append(f'<rect class="swatch" x="{_num(x)}" y="{_num(y + 3)}" width="10" height="10" fill="{s.color}"/>')
        parts.append(_text(x + 14, y + 12, label, size=_LABEL_FONT, fill=_INK))
        x += item
    return parts, y + _LEGEND_ROW - y0


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
        f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" fill="{color}" '
        f'data-value="{value!r}"><title>{escape(tooltip)}</title></rect>'
    )


def _open(chart: BarChart, width: float, height: float) -> str:
    return (
        f'<svg class="chart" role="img" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'width="{_num(width)}" height="{_num(height)}" font-family="{_attr(FONT)}" '
        f'aria-label="{_attr(chart.title)}"><title>{escape(chart.title)}</title>'
        f'<rect class="background" x="0" y="0" width="{_num(width)}" height="{_num(height)}" fill="#ffffff"/>'
        + _text(_PAD, _PAD + 13, chart.title, size=13, font_weight="600", fill=_INK)
    )


def _whisker_parts(s: Series, i: int) -> tuple[float, float] | None:
    low = s.low[i] if i < len(s.low) else None
    high = s.high[i] if i < len(s.high) else None
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def _vertical(chart: BarChart) -> str:
    width = float(chart.width)
    legend, legend_h = _legend(chart.series, width, _PAD + _TITLE)
    ticks = _domain(chart)
    lo, hi = ticks[0], ticks[-1]
    tick_labels = _tick_labels(chart, ticks)
    axis_room = 16 if chart.axis_label else 0
    left = _PAD + axis_room + max(text_width(t, _TICK_FONT) for t in tick_labels) + 8
    plot_w = width - left - _PAD
    n_cat, n_ser = max(len(chart.categories), 1), max(len(chart.series), 1)
    group = plot_w / n_cat
    bar_w = min(56.0, group * 0.78 / n_ser)
    label_lines = [wrap(c, max(3, int(group / (_LABEL_FONT * CHAR_WIDTH)) - 1)) for c in chart.categories]
    n_lines = max((len(lines) for lines in label_lines), default=1)

    value_texts = [[None if v is None else _fmt(chart, s, v) for v in s.values] for s in chart.series]
    widest = max((text_width(t, _VALUE_FONT) for row in value_texts for t in row if t), default=0.0)
    rotated = widest > bar_w + 2
    headroom = (widest + 8) if rotated else 16.0
    top = _PAD + _TITLE + legend_h + 6
    plot_top = top + headroom
    plot_h = float(chart.plot_height)
    height = plot_top + plot_h + 8 + n_lines * 13 + _PAD

    def y_of(v: float) -> float:
        return plot_top + (hi - v) / (hi - lo) * plot_h

    parts = [_open(chart, width, height), *legend]
    for t, label in zip(ticks, tick_labels, strict=True):
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{_num(left)}" x2="{_num(width - _PAD)}" y1="{_num(y)}" y2="{_num(y)}" stroke="{_GRID}"/>'
        )
        parts.append(_text(left - 6, y + 4, label, size=_TICK_FONT, anchor="end", fill=_MUTED))
    if chart.axis_label:
        cy = plot_top + plot_h / 2
        parts.append(
            _text(
                _PAD + 10,
                cy,
                chart.axis_label,
                size=_TICK_FONT,
                anchor="middle",
                fill=_MUTED,
                transform=f"rotate(-90 {_num(_PAD + 10)} {_num(cy)})",
            )
        )
    zero = y_of(0.0)
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
                    f'<path class="whisker" d="M{_num(cx)} {_num(y1)}V{_num(y2)}M{_num(cx - cap)} {_num(y1)}'
                    f'H{_num(cx + cap)}M{_num(cx - cap)} {_num(y2)}H{_num(cx + cap)}" stroke="{_WHISKER}" '
                    f'stroke-width="1.5" fill="none"/>'
                )
                tip_y = min(tip_y, y1, y2) if v >= 0 else max(tip_y, y1, y2)
            label = value_texts[si][ci] or ""
            cx = x + bar_w / 2
            if rotated:
                ly = tip_y - 4 if v >= 0 else tip_y + 4
                anchor = "start" if v >= 0 else "end"
                parts.append(
                    _text(
                        cx + 3.5,
                        ly,
                        label,
                        size=_VALUE_FONT,
                        anchor=anchor,
                        fill=_INK,
                        transform=f"rotate(-90 {_num(cx + 3.5)} {_num(ly)})",
                    )
                )
            else:
                ly = tip_y - 4 if v >= 0 else tip_y + 12
                parts.append(_text(cx, ly, label, size=_VALUE_FONT, anchor="middle", fill=_INK))
        for li, line in enumerate(lines):
            parts.append(
                _text(
                    gx + group / 2,
                    plot_top + plot_h + 8 + 11 + li * 13,
                    line,
                    size=_LABEL_FONT,
                    anchor="middle",
                    fill=_INK,
                    class_="category",
                ).replace("</text>", f"<title>{escape(chart.categories[ci])}</title></text>")
            )
    parts.append(
        f'<line class="axis" x1="{_num(left)}" x2="{_num(width - _PAD)}" y1="{_num(zero)}" y2="{_num(zero)}" stroke="{_INK}"/>'
    )
    parts.extend(_reference_vertical(chart, y_of, left, width))
    parts.append("</svg>")
    return "".join(parts)


def _reference_vertical(chart: BarChart, y_of: Callable[[float], float], left: float, width: float) -> list[str]:
    if chart.reference is None:
        return []
    y = y_of(chart.reference)
    out = [
        f'<line class="reference" x1="{_num(left)}" x2="{_num(width - _PAD)}" y1="{_num(y)}" y2="{_num(y)}" stroke="{_INK}" stroke-dasharray="5 4"/>'
    ]
    out.extend(_reference_key(chart, width))
    return out


def _reference_key(chart: BarChart, width: float) -> list[str]:
    """The reference line's key at the top right, beside the title: a dashed stroke and its label."""
    if chart.reference is None or not chart.reference_label:
        return []
    x = width - _PAD - text_width(chart.reference_label, _LABEL_FONT)
    y = _PAD + 9
    return [
        f'<line class="reference-key" x1="{_num(x - 26)}" x2="{_num(x - 6)}" y1="{_num(y)}" y2="{_num(y)}" '
        f'stroke="{_INK}" stroke-dasharray="5 4"/>',
        _text(x, y + 4, chart.reference_label, size=_LABEL_FONT, fill=_INK),
    ]


def _horizontal(chart: BarChart) -> str:
    width = float(chart.width)
    legend, legend_h = _legend(chart.series, width, _PAD + _TITLE)
    ticks = _domain(chart)
    lo, hi = ticks[0], ticks[-1]
    tick_labels = _tick_labels(chart, ticks)
    n_ser = max(len(chart.series), 1)
    thickness = float(chart.bar_thickness)
    gap = max(6.0, thickness * 0.6)
    group = n_ser * thickness + gap
    label_font = min(_LABEL_FONT, max(group - 3, 8))
    labels = [shorten(c, chart.label_chars) for c in chart.categories]
    left = _PAD + max((text_width(t, label_font) for t in labels), default=0) + 10
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
    right = _PAD + max(value_room, text_width(tick_labels[-1], _TICK_FONT) / 2)
    plot_w = max(width - left - right, 80.0)
    top = _PAD + _TITLE + legend_h + 4
    plot_h = len(chart.categories) * group
    top_axis = plot_h > 420
    plot_top = top + (18 if top_axis else 4)
    height = plot_top + plot_h + 18 + (16 if chart.axis_label else 0) + _PAD

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    parts = [_open(chart, width, height), *legend]
    for t, label in zip(ticks, tick_labels, strict=True):
        x = x_of(t)
        parts.append(
            f'<line class="grid" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(plot_top)}" y2="{_num(plot_top + plot_h)}" stroke="{_GRID}"/>'
        )
        parts.append(_text(x, plot_top + plot_h + 14, label, size=_TICK_FONT, anchor="middle", fill=_MUTED))
        if top_axis:
            parts.append(_text(x, plot_top - 6, label, size=_TICK_FONT, anchor="middle", fill=_MUTED))
    if chart.axis_label:
        parts.append(
            _text(
                left + plot_w / 2,
                plot_top + plot_h + 30,
                chart.axis_label,
                size=_TICK_FONT,
                anchor="middle",
                fill=_MUTED,
            )
        )
    zero = x_of(0.0)
    for ci, category in enumerate(chart.categories):
        gy = plot_top + ci * group + gap / 2
        parts.append(
            _text(
                left - 8,
                gy + n_ser * thickness / 2 + label_font * 0.35,
                labels[ci],
                size=label_font,
                anchor="end",
                fill=_INK,
                class_="category",
            ).replace("</text>", f"<title>{escape(category)}</title></text>")
        )
        present = [s.values[ci] for s in chart.series if ci < len(s.values) and s.values[ci] is not None]
        if not show_values and present and all(v == 0 for v in present):  # no bar to see: say the value
            parts.append(
                _text(
                    zero + 4,
                    gy + n_ser * thickness / 2 + _VALUE_FONT * 0.35,
                    _fmt(chart, chart.series[0], 0.0),
                    size=_VALUE_FONT,
                    fill=_MUTED,
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
                    f'<path class="whisker" d="M{_num(x1)} {_num(cy)}H{_num(x2)}M{_num(x1)} {_num(cy - cap)}'
                    f'V{_num(cy + cap)}M{_num(x2)} {_num(cy - cap)}V{_num(cy + cap)}" stroke="{_WHISKER}" '
                    f'stroke-width="1.5" fill="none"/>'
                )
                tip_x = max(tip_x, x1, x2) if v >= 0 else min(tip_x, x1, x2)
            if show_values:
                lx = tip_x + 4 if v >= 0 else tip_x - 4
                parts.append(
                    _text(
                        lx,
                        y + thickness / 2 + value_font * 0.35,
                        _fmt(chart, s, v),
                        size=value_font,
                        anchor="start" if v >= 0 else "end",
                        fill=_INK,
                    )
                )
    parts.append(
        f'<line class="axis" x1="{_num(zero)}" x2="{_num(zero)}" y1="{_num(plot_top)}" y2="{_num(plot_top + plot_h)}" stroke="{_INK}"/>'
    )
    if chart.reference is not None:
        x = x_of(chart.reference)
        parts.append(
            f'<line class="reference" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(plot_top)}" y2="{_num(plot_top + plot_h)}" stroke="{_INK}" stroke-dasharray="5 4"/>'
        )
        parts.extend(_reference_key(chart, width))
    parts.append("</svg>")
    return "".join(parts)


def render(chart: BarChart) -> str:
    """The chart as a standalone ``<svg>`` element (for inlining in HTML)."""
    return _horizontal(chart) if chart.horizontal else _vertical(chart)


# ---------------------------------------------------------------------------------------
# Line charts: y against x, one polyline per series


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
    x, y = float(_PAD), y0
    for line in lines:
        label = shorten(line.name, max_chars)
        item = 20 + text_width(label, _LABEL_FONT) + 14
        if x + item > width - _PAD and x > _PAD:
            x, y = float(_PAD), y + _LEGEND_ROW
        parts.append(
            f'<line class="swatch" x1="{_num(x)}" x2="{_num(x + 16)}" y1="{_num(y + 8)}" y2="{_num(y + 8)}" '
            f'stroke="{line.color}" stroke-width="3"/>'
        )
        text = _text(x + 20, y + 12, label, size=_LABEL_FONT, fill=_INK)
        parts.append(
            text.replace("</text>", f"<title>{escape(line.name)}</title></text>") if label != line.name else text
        )
        x += item
    return parts, (y + _LEGEND_ROW - y0) if lines else 0.0


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
    y_ticks = _line_y_ticks(chart, min([0.0, *ys]), max([0.0, *ys]))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    scale = _sqrt_scale if chart.y_scale == "sqrt" else (lambda v: v)
    s_lo, s_hi = scale(y_lo), scale(y_hi)
    if not s_hi > s_lo:
        s_hi = s_lo + 1.0

    legend, legend_h = _line_legend(drawn, width, _PAD + _TITLE, chart.legend_chars) if len(drawn) > 1 else ([], 0.0)
    y_labels = [chart.y_format(t) for t in y_ticks]
    left = _PAD + (16 if chart.y_label else 0) + max(text_width(t, _TICK_FONT) for t in y_labels) + 8
    right = width - _PAD - 8
    plot_top = _PAD + _TITLE + legend_h + 12
    plot_h = float(chart.plot_height)
    height = plot_top + plot_h + 20 + (18 if chart.x_label else 0) + _PAD

    def x_of(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (right - left)

    def y_of(v: float) -> float:
        return plot_top + (s_hi - scale(v)) / (s_hi - s_lo) * plot_h

    parts = [_open(BarChart(chart.title, (), ()), width, height), *legend]  # _open reads only the title
    for t, label in zip(y_ticks, y_labels, strict=True):
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{_num(left)}" x2="{_num(right)}" y1="{_num(y)}" y2="{_num(y)}" stroke="{_GRID}"/>'
        )
        parts.append(_text(left - 6, y + 4, label, size=_TICK_FONT, anchor="end", fill=_MUTED))
    for t in x_ticks:
        x = x_of(t)
        parts.append(
            f'<line class="grid" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(plot_top)}" y2="{_num(plot_top + plot_h)}" '
            f'stroke="{_GRID}"/>'
        )
        parts.append(_text(x, plot_top + plot_h + 15, chart.x_format(t), size=_TICK_FONT, anchor="middle", fill=_MUTED))
    if chart.x_label:
        parts.append(
            _text(
                (left + right) / 2, plot_top + plot_h + 33, chart.x_label, size=_TICK_FONT, anchor="middle", fill=_MUTED
            )
        )
    if chart.y_label:
        cy = plot_top + plot_h / 2
        parts.append(
            _text(
                _PAD + 10,
                cy,
                chart.y_label,
                size=_TICK_FONT,
                anchor="middle",
                fill=_MUTED,
                transform=f"rotate(-90 {_num(_PAD + 10)} {_num(cy)})",
            )
        )
    zero = y_of(0.0)
    parts.append(
        f'<line class="axis" x1="{_num(left)}" x2="{_num(right)}" y1="{_num(zero)}" y2="{_num(zero)}" stroke="{_INK}"/>'
    )
    if chart.reference_x is not None and x_lo <= chart.reference_x <= x_hi:
        x = x_of(chart.reference_x)
        parts.append(
            f'<line class="reference" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(plot_top)}" y2="{_num(plot_top + plot_h)}" '
            f'stroke="{_INK}" stroke-dasharray="5 4"/>'
        )
        if chart.reference_label:
            parts.append(_text(x + 4, plot_top + 11, chart.reference_label, size=_LABEL_FONT, fill=_INK))
    for line in drawn:
        points = [(x, y) for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
        coords = " ".join(f"{_num(x_of(x))},{_num(y_of(y))}" for x, y in points)
        values = ", ".join(f"{chart.x_format(x)}: {chart.y_format(y)}" for x, y in points)
        parts.append(
            f'<polyline class="line" points="{coords}" fill="none" stroke="{line.color}" stroke-width="1.6" '
            f'stroke-linejoin="round" data-name="{_attr(line.name)}"><title>{escape(f"{line.name} — {values}")}'
            "</title></polyline>"
        )
    for line in drawn:  # marks last: on top of every line
        if line.mark is None or not all(math.isfinite(v) for v in line.mark):
            continue
        mx, my = line.mark
        tip = f"{line.name}: {line.mark_note}" if line.mark_note else line.name
        parts.append(
            f'<circle class="mark" cx="{_num(x_of(mx))}" cy="{_num(y_of(my))}" r="4" fill="{line.color}" '
            f'stroke="#ffffff" stroke-width="1.2" data-name="{_attr(line.name)}" data-x="{mx!r}" data-y="{my!r}">'
            f"<title>{escape(tip)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
