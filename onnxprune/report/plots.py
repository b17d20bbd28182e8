"""The report's plots, built from an evaluation result (see :mod:`onnxprune.report`).

Each plot is a :class:`Figure` with a stable id: ``plot-size``, ``plot-latency``,
``plot-latency-ratio``, ``plot-accuracy``, ``plot-sparsity``, ``plot-fidelity`` and
``plot-compute``. A plot whose data was not measured keeps its id and says why instead of
drawing an empty chart; without candidates there is no ratio or fidelity plot at all.

Definitions shown:

- size: file bytes, deflate-compressed bytes, and bytes of the weights stored sparse (COO);
- latency: median ms per model, whisker from the fastest run to the 90th percentile;
- latency ratio: candidate / base, median with its p10–p90 spread (below 1× is faster);
- accuracy: top-1 / top-5 against the labels; without labels, agreement with the base;
- sparsity: zeros / elements of each weight that has zeros, the ``MAX_LAYERS`` largest;
- fidelity: cosine similarity and top-1 agreement of each output with the base's;
- compute: multiply-accumulates of the dense model and those with a non-zero weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from onnxprune.report import numbers as nb
from onnxprune.report.charts import PALETTE, BarChart, Series, colors, nice_ticks, render

#: At most this many layers (the largest by parameters) appear in the sparsity plot.
MAX_LAYERS = 40
#: Above this many models, the per-model charts turn horizontal (one row per model).
MAX_VERTICAL_MODELS = 6
NARROW = 560
WIDE = 1160


@dataclass(frozen=True)
class Figure:
    """One plot of the report: an inline SVG, or a note saying why there is none."""

    plot_id: str
    title: str
    caption: str  # for a missing plot: why it is missing
    svg: str | None
    wide: bool = False


def figure_html(figure: Figure) -> str:
    """A drawn figure as ``<figure id=… class="plot">`` with its SVG and caption."""
    classes = "plot wide" if figure.wide else "plot"
    return (
        f'<figure id="{escape(figure.plot_id)}" class="{classes}">{figure.svg}'
        f"<figcaption>{escape(figure.caption)}</figcaption></figure>"
    )


def model_labels(models: Sequence[Mapping[str, Any]]) -> list[str]:
    """A short distinct label per model: its name (or file name), numbered when repeated."""
    labels: list[str] = []
    for index, model in enumerate(models):
        name = nb.text(model.get("name")) or (nb.text(model.get("path")) or "").rsplit("/", 1)[-1]
        labels.append(name or f"model {index}")
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[index] = f"{label} ({seen[label]})"
    return labels


def layer_key(layer: Mapping[str, Any]) -> tuple[str, str]:
    """Layers are matched across models by (scope, name)."""
    return (nb.text(layer.get("scope")) or "", nb.text(layer.get("name")) or "?")


def layer_label(key: tuple[str, str]) -> str:
    scope, name = key
    return f"{scope}/{name}" if scope else name


def _models_chart(
    *,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    value_format: Callable[[float], str],
    **options: Any,
) -> tuple[str | None, bool]:
    """(a chart with one group per model, or None when no series has a value; whether it is wide)."""
    kept = tuple(s for s in series if any(v is not None for v in s.values))
    if not kept or not labels:
        return None, False
    horizontal = len(labels) > MAX_VERTICAL_MODELS
    chart = BarChart(
        title=title,
        categories=tuple(labels),
        series=kept,
        value_format=value_format,
        horizontal=horizontal,
        width=WIDE if horizontal else NARROW,
        **options,
    )
    return render(chart), horizontal


def _percent_tick(value: float) -> str:
    return nb.fmt_tick(100 * value, 1.0, " %")


def _values(models: Sequence[Mapping[str, Any]], *keys: str) -> tuple[float | None, ...]:
    return tuple(nb.number(nb.dig(m, *keys)) for m in models)


def _figure(plot_id: str, title: str, chart: tuple[str | None, bool], caption: str, missing: str) -> Figure:
    svg, wide = chart
    return Figure(plot_id, title, caption if svg else f"Not measured: {missing}.", svg, wide)


def size_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    series = [
        Series("file", _values(models, "size", "file_bytes"), PALETTE[0]),
        Series("compressed (deflate)", _values(models, "size", "compressed_bytes"), PALETTE[1]),
        Series("sparse (COO weights)", _values(models, "size", "sparse_bytes"), PALETTE[2]),
    ]
    largest = max((v for s in series for v in s.values if v is not None), default=0.0)
    unit, ticks = nb.byte_ticks(largest)
    title = "Size per model"
    chart = _models_chart(
        title=title, labels=labels, series=series, value_format=nb.fmt_bytes, tick_unit=unit, tick_format=ticks
    )
    caption = (
        "Bytes on disk, deflate-compressed (what a zip or wheel costs), and with the weights stored "
        "sparse as COO. Zeros shrink the compressed and sparse sizes, not the file."
    )
    return _figure("plot-size", title, chart, caption, "the result has no sizes")


def latency_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    series = Series(
        "median",
        _values(models, "latency", "median_ms"),
        PALETTE[5],
        low=_values(models, "latency", "min_ms"),
        high=_values(models, "latency", "p90_ms"),
    )
    title = "Latency per model (ms)"
    chart = _models_chart(
        title=title,
        labels=labels,
        series=[series],
        value_format=nb.fmt_ms,
        tick_format=lambda v: nb.fmt_tick(v, 1.0, " ms"),
    )
    repeats = {int(r) for r in _values(models, "latency", "repeats") if r is not None}
    runs = f" over {repeats.pop()} runs" if len(repeats) == 1 else ""
    caption = f"Bar: median latency of one inference{runs}; whisker: fastest run to the 90th percentile."
    return _figure("plot-latency", title, chart, caption, "no latency was timed")


def ratio_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    candidates = list(models[1:])
    series = Series(
        "median ratio",
        _values(candidates, "latency", "ratio", "median"),
        PALETTE[3],
        low=_values(candidates, "latency", "ratio", "p10"),
        high=_values(candidates, "latency", "ratio", "p90"),
    )
    title = "Latency relative to the base"
    chart = _models_chart(
        title=title,
        labels=labels[1:],
        series=[series],
        value_format=nb.fmt_ratio,
        tick_format=lambda v: nb.fmt_tick(v, 1.0, "×"),
        reference=1.0,
        reference_label="base = 1.00×",
    )
    caption = "Candidate latency / base latency: median with its p10–p90 spread. Below 1.00× is faster than the base."
    return _figure("plot-latency-ratio", title, chart, caption, "no latency ratio to the base was timed")


#: Fractions that all lie above this, within :data:`ZOOM_SPREAD` of each other, get a zoomed axis.
ZOOM_ABOVE = 0.5
ZOOM_SPREAD = 0.25


def zoom_floor(values: Sequence[float | None]) -> float | None:
    """Where a zoomed axis of fractions starts (None: from 0): the values' minimum less half
    their spread (at least half a point), rounded down to a whole percent, when every value
    is above :data:`ZOOM_ABOVE` and they span less than :data:`ZOOM_SPREAD` (99.1 % against
    98.9 % should look different, 40 % against 90 % need no zoom)."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if len(present) < 2 or min(present) <= ZOOM_ABOVE or max(present) - min(present) >= ZOOM_SPREAD:
        return None
    low = min(present) - max(0.5 * (max(present) - min(present)), 0.005)
    return max(0.0, math.floor(100 * low) / 100) or None


def accuracy_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    top1 = _values(models, "accuracy", "top1")
    top5 = _values(models, "accuracy", "top5")
    if any(v is not None for v in (*top1, *top5)):
        series = [Series("top-1", top1, PALETTE[0]), Series("top-5", top5, PALETTE[6])]
        title = "Accuracy per model"
        floor = zoom_floor([*top1, *top5])
        base = top1[0] if top1 else None
        chart = _models_chart(
            title=title,
            labels=labels,
            series=series,
            value_format=nb.fmt_percent,
            tick_format=_percent_tick,
            domain_max=1.0,
            domain_min=floor,
            reference=base if len(models) > 1 else None,
            reference_label="base top-1",
        )
        samples = {int(s) for s in _values(models, "accuracy", "samples") if s is not None}
        on = f" on {samples.pop():,} labelled samples" if len(samples) == 1 else " on the labelled samples"
        zoomed = (  # the axis starts at the nice tick at or below the floor (charts._domain)
            f" The axis starts at {nb.fmt_percent(nice_ticks(floor, 1.0)[0])}, not 0, so that small differences "
            "show; the dashed line is the base's top-1."
            if floor is not None
            else ""
        )
        return _figure("plot-accuracy", title, chart, f"Top-1 and top-5 accuracy{on}.{zoomed}", "no accuracy")
    candidates = list(models[1:])
    series = [
        Series("top-1 agreement", _values(candidates, "fidelity", "overall", "top1_agreement"), PALETTE[0]),
        Series(
            "cosine",
            _values(candidates, "fidelity", "overall", "cosine"),
            PALETTE[2],
            value_format=lambda v: nb.fmt_decimal(v, 4),
        ),
    ]
    title = "Agreement with the base (no labels)"
    chart = _models_chart(
        title=title,
        labels=labels[1:],
        series=series,
        value_format=nb.fmt_percent,
        tick_format=_percent_tick,
        domain_max=1.0,
    )
    caption = (
        "Accuracy not measured: no labels were given. Shown instead: how often each candidate's "
        "top-1 class matches the base's, and the cosine similarity of their outputs."
    )
    if chart[0] is None:
        return _figure("plot-accuracy", "Accuracy", chart, caption, "no labels were given")
    return _figure("plot-accuracy", title, chart, caption, "")


def _layer_union(models: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """Every layer of ``models`` in first-seen order, with its largest parameter count."""
    sizes: dict[tuple[str, str], float] = {}
    for model in models:
        for layer in nb.items(model.get("layers")):
            if isinstance(layer, Mapping):
                key = layer_key(layer)
                sizes[key] = max(sizes.get(key, 0.0), nb.number(layer.get("parameters")) or 0.0)
    return sizes


def _layers_by_key(model: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {layer_key(la): la for la in nb.items(model.get("layers")) if isinstance(la, Mapping)}


def sparsity_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    """Sparsity per layer of each candidate (of the base when there is none).

    Layers without a zero in any shown model (biases, norms, skipped small weights) are left
    out when some layer has zeros; of the rest, the ``MAX_LAYERS`` largest by parameters.
    """
    shown = list(range(1, len(models))) or [0]
    by_model = [_layers_by_key(models[i]) for i in shown]
    sizes = _layer_union([models[i] for i in shown])
    if not sizes:
        return Figure("plot-sparsity", "Sparsity per layer", "Not measured: the result lists no layers.", None)

    def has_zeros(key: tuple[str, str]) -> bool:
        return any((nb.number(nb.dig(layers.get(key), "sparsity")) or 0.0) > 0 for layers in by_model)

    keys = [k for k in sizes if has_zeros(k)] or list(sizes)
    dense = len(sizes) - len(keys)
    pruned = len(keys)
    if len(keys) > MAX_LAYERS:
        largest = set(sorted(keys, key=lambda k: -sizes[k])[:MAX_LAYERS])
        keys = [k for k in keys if k in largest]
    fills = colors(len(shown))
    series = []
    for n, (index, layers) in enumerate(zip(shown, by_model, strict=True)):
        values = tuple(nb.number(nb.dig(layers.get(k), "sparsity")) for k in keys)
        notes = tuple(
            f"{nb.fmt_count(nb.dig(layers.get(k), 'nonzeros'))} non-zeros of {nb.fmt_count(sizes[k])}" for k in keys
        )
        series.append(Series(labels[index], values, fills[n], notes=notes))
    thickness = {1: 14, 2: 10, 3: 8, 4: 7}.get(len(series), 5)
    chart = BarChart(
        title="Sparsity per layer",
        categories=tuple(layer_label(k) for k in keys),
        series=tuple(series),
        value_format=nb.fmt_percent,
        tick_format=_percent_tick,
        horizontal=True,
        width=WIDE,
        bar_thickness=thickness,
        label_chars=64,
        domain_max=1.0,
        axis_label="zeros / elements",
    )
    who = "each candidate" if len(models) > 1 else "the base model (no candidates)"
    caption = f"Fraction of zeros in each weight of {who}, in the order of the model."
    if len(keys) < pruned:
        caption += f" Showing the {len(keys)} largest of {pruned} layers with zeros, by parameters."
    if dense:
        caption += (
            f" Left out: {dense} tensor{'s' if dense != 1 else ''} without any zero (biases, norms, small weights)."
        )
    if len(keys) < len(sizes):
        caption += " The per-layer table lists all."
    return Figure("plot-sparsity", chart.title, caption, render(chart), wide=True)


def fidelity_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    categories: list[str] = []
    cosine: list[float | None] = []
    agreement: list[float | None] = []
    per_model = [(labels[i], nb.mapping(nb.dig(models[i], "fidelity", "outputs"))) for i in range(1, len(models))]
    many = any(len(outputs) > 1 for _, outputs in per_model)
    for label, outputs in per_model:
        for output, stats in outputs.items():
            categories.append(f"{label} · {output}" if many else label)
            cosine.append(nb.number(nb.dig(stats, "cosine")))
            agreement.append(nb.number(nb.dig(stats, "top1_agreement")))
    series = [
        Series("cosine", tuple(cosine), PALETTE[2], value_format=lambda v: nb.fmt_decimal(v, 4)),
        Series("top-1 agreement", tuple(agreement), PALETTE[0], value_format=nb.fmt_percent),
    ]
    title = "Fidelity to the base per output"
    chart = _models_chart(
        title=title, labels=categories, series=series, value_format=lambda v: f"{v:g}", domain_max=1.0
    )
    caption = (
        "Cosine similarity of each output with the base's (1 = same direction) and the share of samples "
        "whose top-1 class is the base's."
    )
    return _figure("plot-fidelity", title, chart, caption, "no output was compared with the base")


def compute_figure(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    series = [
        Series("dense MACs", _values(models, "compute", "macs"), PALETTE[4]),
        Series("non-zero MACs", _values(models, "compute", "nonzero_macs"), PALETTE[7]),
    ]
    largest = max((v for s in series for v in s.values if v is not None), default=0.0)
    unit, ticks = nb.count_ticks(largest)
    title = "Multiply-accumulates per inference"
    chart = _models_chart(
        title=title, labels=labels, series=series, value_format=nb.fmt_count, tick_unit=unit, tick_format=ticks
    )
    caption = (
        "MACs of the dense graph and those whose weight is non-zero: what a sparse kernel could skip. "
        "onnxruntime runs the dense count."
    )
    return _figure("plot-compute", title, chart, caption, "the result has no compute counts")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both counts (smaller x, larger y), by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _quality(models: Sequence[Mapping[str, Any]]) -> tuple[str, list[float | None]]:
    """What the Pareto charts call quality: top-1 accuracy with labels, else cosine to the base."""
    top1 = list(_values(models, "accuracy", "top1"))
    if sum(v is not None for v in top1) == len(models):
        return "top-1 accuracy", top1
    cosine = [1.0, *_values(models[1:], "fidelity", "overall", "cosine")]
    return "cosine to the base", cosine


def pareto_figures(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[Figure]:
    """Quality against compressed size and against latency, one point per model and the
    Pareto front joined, when there are at least two candidates (else nothing)."""
    from onnxprune.report.lines import Line, LineChart, render_lines

    if len(models) < 3:
        return []
    quality_name, quality = _quality(models)
    base_size = nb.number(nb.dig(models[0], "size", "compressed_bytes"))
    sizes = [
        None if (v := nb.number(nb.dig(m, "size", "compressed_bytes"))) is None or not base_size else v / base_size
        for m in models
    ]
    latency = [1.0, *_values(models[1:], "latency", "ratio", "median")]
    palette = colors(len(models))
    out = []
    for plot_id, what, xs, x_name in (
        ("plot-pareto-size", "compressed size", sizes, "compressed size (× the base)"),
        ("plot-pareto-latency", "latency", latency, "latency (× the base, median ratio)"),
    ):
        points = [
            (x, y, i) for i, (x, y) in enumerate(zip(xs, quality, strict=True)) if x is not None and y is not None
        ]
        title = f"{quality_name.capitalize()} against {what}"
        if len(points) < 3:
            out.append(Figure(plot_id, title, f"Not measured: {what} or quality of too few models.", None))
            continue
        front = pareto_front([(x, y) for x, y, _ in points])
        lines = [Line("Pareto front", tuple(front), "#94a3b8")]
        lines += [Line(labels[i], ((x, y),), palette[i], mark=(x, y), mark_note=f"{labels[i]}") for x, y, i in points]
        chart = LineChart(
            title=title,
            lines=tuple(lines),
            x_label=x_name,
            y_label=quality_name,
            x_format=lambda v: f"{v:.2f}×",
            y_format=(lambda v: nb.fmt_decimal(v, 4)) if quality_name.startswith("cosine") else nb.fmt_percent,
            y_from_zero=False,
            width=WIDE,
        )
        best = ", ".join(labels[i] for x, y, i in points if (x, y) in front)
        caption = (
            f"Each model at its {x_name} and {quality_name}; up and to the left is better. On the Pareto front "
            f"(no other model is both smaller or faster and better): {best}."
        )
        if what == "latency" and any(nb.dig(m, "latency", "ratio", "conclusive") is False for m in models[1:]):
            caption += " Some latency ratios are too noisy to conclude: read their positions with care."
        out.append(Figure(plot_id, title, caption, render_lines(chart), wide=True))
    return out


def figures(models: Sequence[Mapping[str, Any]]) -> list[Figure]:
    """All plots of the report, in page order. Without candidates there is no ratio or fidelity plot."""
    if not models:
        return []
    labels = model_labels(models)
    compared = len(models) > 1
    return [
        size_figure(models, labels),
        accuracy_figure(models, labels),
        latency_figure(models, labels),
        *([ratio_figure(models, labels), fidelity_figure(models, labels)] if compared else []),
        compute_figure(models, labels),
        sparsity_figure(models, labels),
        *pareto_figures(models, labels),
    ]
