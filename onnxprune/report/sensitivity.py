"""The HTML report of a sensitivity analysis (``onnxprune analyze``): one self-contained page.

    from onnxprune.report.sensitivity import write_sensitivity_report
    write_sensitivity_report(data, "sensitivity.html")

``data`` is the JSON of ``onnxprune analyze --json``: ``Sensitivity.to_dict()`` (``model``,
``digest``, ``options``, ``seconds``, ``curves``) plus ``plan`` (``Plan.to_json()`` or null)
and ``measured_loss`` (or null). An optional ``groups`` list (channel groups) has the shape
of ``curves``, each entry possibly with ``latency_saved`` and ``macs_saved`` per level.

Definitions shown:

- a curve is the loss ``L_i(s)`` of pruning layer ``i`` *alone* to sparsity ``s``, at the
  measured levels, joined by straight lines (the loss's kind is in the header);
- the plan gives each layer a level ``s_i``; the dot on a curve is ``(s_i, L_i(s_i))``,
  ``L_i`` interpolated linearly between measured levels;
- a layer's *predicted loss* is ``g_i(s_i)``, with ``g_i`` the running maximum of its
  measured losses (the monotone envelope the planner uses, :mod:`onnxprune.sparsity.plan`),
  interpolated linearly; the plan's predicted loss is their sum (losses assumed additive);
- the overall level of a set of layers is ``Σ n_i s_i / Σ n_i`` (``n_i`` its weights); the
  plan's own ``fraction`` is the planner's (of the budget: weights or cost);
- the measured loss is that of the model pruned with the whole plan, when it was measured.

The chart has a square-root y axis (small losses, where plans live, are spread out; ticks
carry true values) and shows at most :data:`MAX_CHART_LAYERS` curves, those of the largest
layers; the table lists every layer. Nothing in ``data`` is trusted to be present,
well-typed or free of markup: missing parts read "not measured", all text is escaped, and
the page has no script and no URL. Writing is atomic, as for the evaluation report.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from onnxprune.errors import OptionError
from onnxprune.graph.outputs import write_file
from onnxprune.report import numbers as nb
from onnxprune.report.charts import colors
from onnxprune.report.lines import Line, LineChart, render_lines
from onnxprune.report.page import CSS

log = logging.getLogger(__name__)

#: At most this many curves (the largest layers by size) are drawn in a chart.
MAX_CHART_LAYERS = 40
#: Loss columns of the table when the curves have more levels than :data:`MAX_LEVEL_COLUMNS`.
SHOWN_LEVELS = (0.3, 0.5, 0.7, 0.9)
MAX_LEVEL_COLUMNS = 6

KINDS = {
    "weight error": "relative weight error ‖W − W_s‖² / ‖W‖² of magnitude pruning (no data)",
    "accuracy drop": "drop in top-1 accuracy against the dense model, on the data",
    "1 - cosine": "1 − mean cosine similarity of the outputs to the dense model's, on the data",
}

EXTRA_CSS = """
.swatch-key { display: inline-block; width: 14px; height: 3px; margin: 0 6px 3px 0; vertical-align: middle;
  border-radius: 2px; }
td.planned { font-weight: 600; }
svg .line:hover { stroke-width: 3.5; }
"""


@dataclass(frozen=True)
class _Point:
    """One measured level: its loss, and for channel groups the latency and MACs saved (fractions)."""

    level: float
    loss: float
    latency_saved: float | None = None
    macs_saved: float | None = None


@dataclass(frozen=True)
class SensitivityCurve:
    """One curve as read from the JSON: finite points sorted by level."""

    name: str
    size: float | None
    points: tuple[_Point, ...]  # sorted by level, finite only
    kind: str | None
    seconds: float | None
    notes: tuple[str, ...]


def _aligned(values: Any, index: int) -> float | None:
    seq = nb.items(values)
    return nb.number(seq[index]) if index < len(seq) else None


def _read_curve(raw: Any, index: int) -> SensitivityCurve | None:
    if not isinstance(raw, Mapping):
        return None
    levels, losses = nb.items(raw.get("levels")), nb.items(raw.get("loss"))
    points = []
    for i, (level, loss) in enumerate(zip(levels, losses, strict=False)):
        x, y = nb.number(level), nb.number(loss)
        if x is not None and y is not None:
            points.append(_Point(x, y, _aligned(raw.get("latency_saved"), i), _aligned(raw.get("macs_saved"), i)))
    name = nb.text(raw.get("weight")) or nb.text(raw.get("name")) or f"curve {index}"
    notes = tuple(t for t in (nb.text(n) for n in nb.items(raw.get("notes"))) if t)
    return SensitivityCurve(
        name,
        nb.number(raw.get("size")),
        tuple(sorted(points, key=lambda p: p.level)),
        nb.text(raw.get("kind")),
        nb.number(raw.get("seconds")),
        notes,
    )


def read_curves(value: Any) -> list[SensitivityCurve]:
    """The well-formed entries of a ``curves`` (or ``groups``) list."""
    curves = (_read_curve(raw, i) for i, raw in enumerate(nb.items(value)))
    return [c for c in curves if c is not None]


def interpolate(levels: Sequence[float], values: Sequence[float], level: float) -> float | None:
    """``values`` at ``level``, linear between levels, held constant beyond the ends (``np.interp``)."""
    if not levels:
        return None
    if level <= levels[0]:
        return values[0]
    for i in range(1, len(levels)):
        if level <= levels[i]:
            span = levels[i] - levels[i - 1]
            t = 0.0 if span <= 0 else (level - levels[i - 1]) / span
            return values[i - 1] + t * (values[i] - values[i - 1])
    return values[-1]


def envelope(losses: Sequence[float]) -> list[float]:
    """Running maximum of a loss curve (the planner's monotone envelope)."""
    out: list[float] = []
    for loss in losses:
        out.append(loss if not out else max(out[-1], loss))
    return out


def _loss_at(curve: SensitivityCurve, level: float) -> float | None:
    return interpolate([p.level for p in curve.points], [p.loss for p in curve.points], level)


def predicted_loss(curve: SensitivityCurve, level: float) -> float | None:
    """The layer's contribution to the plan's predicted loss: its envelope at ``level``."""
    return interpolate([p.level for p in curve.points], envelope([p.loss for p in curve.points]), level)


# ---------------------------------------------------------------------------------------
# Formatting


def fmt_level(value: Any) -> str:
    """A sparsity as a percentage with at most one decimal: 0.43125 → "43.1 %"."""
    x = nb.number(value)
    if x is None:
        return nb.MISSING
    return f"{100 * x:.1f}".rstrip("0").rstrip(".") + " %"


def fmt_loss(value: Any) -> str:
    """A loss with four decimals (scientific notation when that would read 0.0000)."""
    x = nb.number(value)
    if x is None:
        return nb.MISSING
    if x != 0 and abs(x) < 5e-5:
        return f"{x:.1e}"
    return f"{x:.4f}"


def _fmt_size(value: float | None) -> str:
    return nb.MISSING if value is None else f"{int(value):,}"


def _fmt_seconds(value: Any) -> str:
    x = nb.number(value)
    if x is None:
        return nb.MISSING
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{body}</section>'


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"


# ---------------------------------------------------------------------------------------
# Page parts


def _kinds(curves: Sequence[SensitivityCurve]) -> list[str]:
    return list(dict.fromkeys(c.kind for c in curves if c.kind))


def _kind_text(kinds: Sequence[str]) -> str:
    if not kinds:
        return "not stated"
    return "; ".join(f"{k}: {KINDS[k]}" if k in KINDS else k for k in kinds)


def _header(data: Mapping[str, Any], curves: Sequence[SensitivityCurve], noun: str) -> str:
    model = nb.text(data.get("model"))
    options = nb.mapping(data.get("options"))
    facts = [(model or "").replace("\\", "/").rsplit("/", 1)[-1] or "model not named"]
    facts.append(f"loss: {', '.join(_kinds(curves)) or 'not stated'}")
    method = nb.text(options.get("method"))
    if method:
        facts.append(f"method: {method}")
    facts.append(f"{len(curves)} {noun}{'s' if len(curves) != 1 else ''}")
    if nb.number(data.get("seconds")) is not None:
        facts.append(f"measured in {_fmt_seconds(data.get('seconds'))}")
    return f'<header><h1>Sensitivity analysis</h1><p class="meta">{escape(" · ".join(facts))}</p></header>'


def _data_text(data: Mapping[str, Any]) -> str:
    """What the losses were measured on: the source the CLI recorded, else the options' flag."""
    source = nb.mapping(data.get("source"))
    where = nb.text(source.get("data"))
    if where:
        samples = nb.number(source.get("samples"))
        labels = nb.text(source.get("labels"))
        return (
            where
            + (f" ({int(samples):,} samples)" if samples is not None else "")
            + (f", labels {labels}" if labels else "")
        )
    used = nb.mapping(data.get("options")).get("data")
    if isinstance(used, bool):
        return "measured on data" if used else "none (data-free)"
    return nb.MISSING


def _analysis_facts(data: Mapping[str, Any], curves: Sequence[SensitivityCurve], noun: str) -> str:
    options = nb.mapping(data.get("options"))
    sizes = [c.size for c in curves if c.size is not None]
    units = "units" if noun == "group" else "weights"
    rows = [
        ("model", nb.text(data.get("model")) or nb.MISSING),
        ("loss", _kind_text(_kinds(curves))),
        *([("method", nb.fmt_general(options.get("method")))] if noun == "layer" else []),
        ("levels", ", ".join(fmt_level(v) for v in nb.items(options.get("levels"))) or nb.MISSING),
        *([("minimum size", nb.fmt_general(options.get("min_size")))] if noun == "layer" else []),
        ("data", _data_text(data)),
        (f"{noun}s analysed", f"{len(curves):,} ({sum(sizes):,.0f} {units})" if sizes else f"{len(curves):,}"),
        ("time", _fmt_seconds(data.get("seconds"))),
        ("digest", nb.text(data.get("digest")) or nb.MISSING),
    ]
    known = {"method", "levels", "min_size", "data"}
    rows += [(str(k), nb.fmt_general(v)) for k, v in options.items() if k not in known]
    return _facts(rows)


def _plan_levels(data: Mapping[str, Any]) -> dict[str, float] | None:
    plan = data.get("plan")
    if not isinstance(plan, Mapping):
        return None
    levels = {str(k): nb.number(v) for k, v in nb.mapping(plan.get("plan")).items()}
    return {k: v for k, v in levels.items() if v is not None}


def _overall(curves: Sequence[SensitivityCurve], levels: Mapping[str, float] | None) -> float | None:
    """``Σ n_i s_i / Σ n_i`` over ``curves`` (unplanned layers at 0); None when none is planned."""
    sized = [(c.size, levels[c.name]) for c in curves if c.size and levels and c.name in levels]
    total = sum(c.size for c in curves if c.size)
    return sum(n * s for n, s in sized) / total if total and sized else None


#: How each goal of ``onnxprune analyze`` reads, from its value.
GOALS = {
    "target_sparsity": lambda v: f"overall sparsity {fmt_level(v)} (onnxprune analyze --target-sparsity {v:g})",
    "target_latency": lambda v: f"keep {fmt_level(v)} of the latency (onnxprune analyze --target-latency {v:g})",
    "target_flops": lambda v: f"keep {fmt_level(v)} of the MACs (onnxprune analyze --target-flops {v:g})",
    "max_loss": lambda v: f"loss at most {fmt_loss(v)} (onnxprune analyze --max-loss {v:g})",
}


def _goal_text(data: Mapping[str, Any]) -> str:
    goal = nb.mapping(data.get("goal"))
    values = {k: nb.number(v) for k, v in goal.items() if k in GOALS}
    return "; ".join(GOALS[k](v) for k, v in values.items() if v is not None) or "not stated"


def _plan_section(
    data: Mapping[str, Any], curves: Sequence[SensitivityCurve], levels: dict[str, float] | None, noun: str
) -> str:
    if levels is None:
        return _section(
            "plan",
            "Plan",
            f'<p class="note">No plan was made: run <code>onnxprune analyze</code> with a goal (--target-sparsity, '
            f"--target-flops, --target-latency with --structural, or --max-loss) to choose a level per {noun}.</p>",
        )
    plan = nb.mapping(data.get("plan"))
    predicted = nb.number(plan.get("predicted_loss"))
    parts = [c for c in (predicted_loss(c, levels[c.name]) for c in curves if c.name in levels) if c is not None]
    budget = nb.text(plan.get("budget")) or "sparsity"
    measured = nb.number(data.get("measured_loss"))
    goal = nb.mapping(data.get("goal"))
    removed = (
        "units removed from the analysed groups" if noun == "group" else "overall sparsity of the analysed weights"
    )
    fraction_name = {
        "target_latency": "predicted latency saved",
        "target_flops": "predicted MACs saved" if noun == "group" else "non-zero MACs removed",
    }
    named = next((fraction_name[k] for k in goal if k in fraction_name), f"plan fraction ({budget})")
    # a group plan for latency or MACs removes a fraction of the model's (each unit costs its
    # measured share); a weight plan's fraction is of the analysed layers' budget
    saved = plan.get("removed") if noun == "group" and named != f"plan fraction ({budget})" else plan.get("fraction")
    rows = [
        ("goal", _goal_text(data)),
        (f"planned {noun}s", f"{sum(c.name in levels and levels[c.name] > 0 for c in curves):,} of {len(curves):,}"),
        (named, fmt_level(saved)),
        (removed, fmt_level(_overall(curves, levels))),
        ("predicted loss", fmt_loss(predicted) + (f" (sum over {noun}s: {fmt_loss(sum(parts))})" if parts else "")),
        ("measured loss", fmt_loss(measured) if measured is not None else "not measured"),
    ]
    body = _facts(rows)
    if predicted is not None and measured is not None:
        body += (
            f'<p class="note">Measured with the whole plan applied: {fmt_loss(measured)}, against '
            f"{fmt_loss(predicted)} predicted by adding the layers' losses.</p>"
        )
    stray = sorted(set(levels) - {c.name for c in curves} - {c.name for c in read_curves(data.get("groups"))})
    if stray:
        shown = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10 else "")
        body += f'<p class="note">The plan also sets {len(stray)} tensor(s) without a curve here: {escape(shown)}.</p>'
    return _section("plan", "Plan", body)


def chart_curves(curves: Sequence[SensitivityCurve]) -> list[SensitivityCurve]:
    """The curves drawn: those with points, the :data:`MAX_CHART_LAYERS` largest by size, in order."""
    drawable = [(i, c) for i, c in enumerate(curves) if c.points]
    if len(drawable) <= MAX_CHART_LAYERS:
        return [c for _, c in drawable]
    largest = sorted(drawable, key=lambda ic: (-(ic[1].size or 0), ic[0]))[:MAX_CHART_LAYERS]
    return [c for _, c in sorted(largest, key=lambda ic: ic[0])]


def _chart(
    curves: Sequence[SensitivityCurve],
    levels: Mapping[str, float] | None,
    *,
    title: str,
    x_label: str,
    reference: float | None,
) -> tuple[str, dict[str, str], int]:
    """The SVG of the curves drawn, the colour of each drawn curve's name, and the number of plan marks."""
    shown = chart_curves(curves)
    palette = dict(zip((c.name for c in shown), colors(len(shown)), strict=True))
    lines = []
    for c in shown:
        mark, note = None, ""
        level = (levels or {}).get(c.name)
        if level is not None:
            loss, pred = _loss_at(c, level), predicted_loss(c, level)
            if loss is not None:
                mark = (level, loss)
                note = f"plan level {fmt_level(level)}, loss {fmt_loss(loss)} (predicted {fmt_loss(pred)})"
        points = tuple((p.level, p.loss) for p in c.points)
        lines.append(Line(c.name, points, palette[c.name], mark, note))
    chart = LineChart(
        title,
        tuple(lines),
        x_label=x_label,
        y_label="loss (square-root scale)",
        x_format=lambda v: fmt_level(v).replace(" ", ""),
        y_format=lambda v: "0" if v == 0 else f"{v:.3g}",
        y_scale="sqrt",
        x_domain=(0.0, 1.0),
        width=1160,
        plot_height=380,
        reference_x=reference,
        reference_label=f"plan overall: {fmt_level(reference)}" if reference is not None else "",
    )
    return render_lines(chart), palette, sum(line.mark is not None for line in lines)


def _chart_caption(curves: Sequence[SensitivityCurve], shown: int, marked: int, noun: str) -> str:
    text = f"Loss of each {noun} pruned alone against its level; lines join the measured levels."
    if marked:
        text += f" Dot: the level the plan chose, on the curve ({marked} of {shown} curves)."
    text += " The y axis is a square-root scale."
    drawable = sum(1 for c in curves if c.points)
    if shown < drawable:
        text += f" Showing the {shown} largest of {drawable} {noun}s (by size); the table lists all."
    return text


def level_columns(curves: Sequence[SensitivityCurve]) -> tuple[float, ...]:
    """The levels with a loss column: every measured non-zero level if few, else :data:`SHOWN_LEVELS`."""
    measured = sorted({round(p.level, 9) for c in curves for p in c.points if p.level > 0})
    return tuple(measured) if len(measured) <= MAX_LEVEL_COLUMNS else SHOWN_LEVELS


def _point_at(curve: SensitivityCurve, level: float) -> _Point | None:
    return next((p for p in curve.points if math.isclose(p.level, level, abs_tol=1e-9)), None)


def _loss_cell(point: _Point | None) -> str:
    if point is None:
        return '<td class="num" title="not measured at this level">—</td>'
    saved = [
        f"{what} {'−' if value >= 0 else '+'}{fmt_level(abs(value))}"
        for what, value in (("latency", point.latency_saved), ("MACs", point.macs_saved))
        if value is not None
    ]
    detail = f'<span class="detail">{escape(" · ".join(saved))}</span>' if saved else ""
    return f'<td class="num" title="{point.loss!r}">{escape(fmt_loss(point.loss))}{detail}</td>'


def _table(
    curves: Sequence[SensitivityCurve], levels: Mapping[str, float] | None, palette: Mapping[str, str], noun: str
) -> str:
    columns = level_columns(curves)
    head = (
        f"<th>{escape(noun.capitalize())}</th><th class='num'>Size</th>"
        + "".join(f"<th class='num'>Loss at {escape(fmt_level(v))}</th>" for v in columns)
        + "<th class='num'>Plan level</th><th class='num'>Predicted loss</th><th>Notes</th>"
    )
    rows = []
    predictions: list[float] = []
    for c in curves:
        swatch = f'<span class="swatch-key" style="background:{palette[c.name]}"></span>' if c.name in palette else ""
        level = (levels or {}).get(c.name)
        pred = predicted_loss(c, level) if level is not None else None
        if pred is not None:
            predictions.append(pred)
        level_cell = (
            f'<td class="num planned" title="{level!r}">{escape(fmt_level(level))}</td>'
            if level is not None
            else f'<td class="num" title="{"no plan" if levels is None else "not in the plan"}">—</td>'
        )
        tip = f"{c.name} — measured in {_fmt_seconds(c.seconds)}" if c.seconds is not None else c.name
        rows.append(
            f'<tr><td class="name" title="{escape(tip)}">{swatch}{escape(c.name)}</td>'
            f'<td class="num">{_fmt_size(c.size)}</td>'
            + "".join(_loss_cell(_point_at(c, v)) for v in columns)
            + level_cell
            + (f'<td class="num" title="{pred!r}">' if pred is not None else '<td class="num">')
            + f"{fmt_loss(pred)}</td>"
            + f'<td class="reason">{escape("; ".join(c.notes))}</td></tr>'
        )
    sizes = [c.size for c in curves if c.size is not None]
    overall = _overall(curves, levels)
    total_pred = fmt_loss(sum(predictions)) if predictions else nb.MISSING
    plural = noun if len(curves) == 1 else f"{noun}s"
    foot = (
        f"<tfoot class='totals'><tr><th>All {len(curves):,} {plural}</th>"
        f"<td class='num'>{_fmt_size(sum(sizes)) if sizes else nb.MISSING}</td>"
        + "<td></td>" * len(columns)
        + f"<td class='num' title='weights zero / weights, over the rows'>{escape(fmt_level(overall))}</td>"
        + f"<td class='num'>{total_pred}</td><td></td></tr></tfoot>"
    )
    return (
        f'<div class="table-wrap"><table class="{noun}s"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody>{foot}</table></div>"
    )


def _family(
    section_id: str,
    title: str,
    curves: Sequence[SensitivityCurve],
    levels: Mapping[str, float] | None,
    *,
    noun: str,
    x_label: str,
    reference: float | None,
) -> str:
    if not curves:
        return _section(section_id, title, f'<p class="note">Not measured: the analysis lists no {noun}s.</p>')
    svg, palette, marked = _chart(curves, levels, title=f"Loss against {x_label}", x_label=x_label, reference=reference)
    figure = ""
    if palette:
        caption = _chart_caption(curves, len(palette), marked, noun)
        figure = (
            f'<figure id="plot-{section_id}" class="plot wide">{svg}<figcaption>{escape(caption)}</figcaption></figure>'
        )
    note = (
        '<p class="note">Predicted loss: the running maximum of the measured losses at the plan level, interpolated '
        "linearly (as the planner sums it). Losses are those of this " + noun + " pruned alone.</p>"
    )
    return _section(
        section_id, title, figure + f"<h3>Every {escape(noun)}</h3>" + note + _table(curves, levels, palette, noun)
    )


def render_sensitivity_html(data: Mapping[str, Any]) -> str:
    """The sensitivity analysis (``onnxprune analyze --json``) as one self-contained HTML page."""
    if not isinstance(data, Mapping):
        raise OptionError(
            f"the sensitivity report needs the analysis as a mapping (onnxprune analyze --json), got {type(data).__name__}"
        )
    curves = read_curves(data.get("curves"))
    groups = read_curves(data.get("groups")) if data.get("groups") is not None else []
    levels = _plan_levels(data)
    structural = bool(nb.mapping(data.get("options")).get("structural")) or (groups and not curves)
    primary, noun = (groups, "group") if structural else (curves, "layer")
    body = [
        _header(data, primary, noun),
        _section("analysis", "Analysis", _analysis_facts(data, primary, noun)),
        _plan_section(data, primary, levels, noun),
    ]
    if not structural or curves:
        overall = _overall(curves, levels)
        body.append(_family("layers", "Layers", curves, levels, noun="layer", x_label="sparsity", reference=overall))
    if data.get("groups") is not None:
        body.append(
            _family("groups", "Channel groups", groups, levels, noun="group", x_label="units removed", reference=None)
        )
    body.append("<footer>Made by onnxprune. This page needs no network and runs no script.</footer>")
    name = (nb.text(data.get("model")) or "model").replace("\\", "/").rsplit("/", 1)[-1]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(name)} — sensitivity</title><style>{CSS}{EXTRA_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_sensitivity_report(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render ``data`` and write it to ``path`` atomically; returns the path written."""
    return write_file(render_sensitivity_html(data), path, what="report", example="sensitivity.html")
