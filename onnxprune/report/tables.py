"""The report's tables: summary, highlights, warnings, per-layer, per-node and key/value lists.

Summary columns, per model: file / deflate-compressed / sparse (COO) bytes; parameters
and non-zeros (sparsity = zeros / parameters); dense and non-zero MACs; median latency
and the candidate/base latency ratio with its p10–p90 spread; top-1 / top-5 accuracy;
cosine similarity and top-1 agreement with the base. In each column the best value
(smallest size, latency, non-zeros; largest accuracy, fidelity) is marked when at least
two models were measured and they differ. A column group nobody measured is left out and
named under the table.

Every cell shows a human number (:mod:`onnxprune.report.numbers`) and its exact value in
a ``title`` tooltip; every text from the result is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from onnxprune.latency import TOO_NOISY
from onnxprune.report import numbers as nb
from onnxprune.report import structure
from onnxprune.report.plots import layer_key, layer_label

Model = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One numeric column of the summary: how to read, show and explain a model's value."""

    group: str
    header: str
    value: Callable[[Model], float | None]
    shown: Callable[[Model], str]
    tooltip: Callable[[Model], str]
    best: str | None = None  # "min", "max" or None (no best)
    detail: Callable[[Model], str] | None = None  # a second, muted line
    compares: bool = False  # a comparison with the base: meaningless without candidates
    trusted: Callable[[Sequence[Model]], bool] | None = None  # False: the values are noise, no best


def _latency_conclusive(m: Model) -> bool:
    """The candidate's latency ratio is not noise (its p10–p90 spread on one side of 1, within ±10 %)."""
    ratio = nb.mapping(nb.dig(m, "latency", "ratio"))
    return not ratio or ratio.get("conclusive") is not False


def _latency_trusted(models: Sequence[Model]) -> bool:
    return all(_latency_conclusive(m) for m in models)


def _cell(text: str, *, tooltip: str = "", classes: Sequence[str] = ("num",), detail: str = "") -> str:
    cls = f' class="{" ".join(classes)}"' if classes else ""
    tip = f' title="{escape(tooltip)}"' if tooltip else ""
    extra = f'<span class="detail">{escape(detail)}</span>' if detail else ""
    return f"<td{cls}{tip}>{escape(text)}{extra}</td>"


def _number(*keys: str) -> Callable[[Model], float | None]:
    return lambda m: nb.number(nb.dig(m, *keys))


def _bytes_column(header: str, key: str, what: str) -> Column:
    def tooltip(m: Model) -> str:
        tip = f"{what}: {nb.exact(nb.dig(m, 'size', key), 'bytes')}"
        if key == "sparse_bytes" and nb.number(nb.dig(m, "size", "dense_weight_bytes")) is not None:
            tip += f"; weights stored dense: {nb.exact(nb.dig(m, 'size', 'dense_weight_bytes'), 'bytes')}"
        return tip

    return Column("Size", header, _number("size", key), lambda m: nb.fmt_bytes(nb.dig(m, "size", key)), tooltip, "min")


def _sparsity_detail(m: Model) -> str:
    sparsity = nb.number(nb.dig(m, "params", "sparsity"))
    return "" if sparsity is None else f"{nb.fmt_percent(sparsity)} zero"


def _ratio_spread(m: Model) -> str:
    ratio = nb.mapping(nb.dig(m, "latency", "ratio"))
    low, high = nb.number(ratio.get("p10")), nb.number(ratio.get("p90"))
    if low is None or high is None:
        return ""
    return f"{low:.2f}–{high:.2f}" + ("" if _latency_conclusive(m) else f" {TOO_NOISY}")


def _latency_tooltip(m: Model) -> str:
    lat = nb.mapping(m.get("latency"))
    parts = [f"{k}: {nb.exact(lat.get(k + '_ms'), 'ms')}" for k in ("median", "mean", "min", "p90")]
    repeats = nb.number(lat.get("repeats"))
    return "; ".join(parts) + ("" if repeats is None else f"; {int(repeats):,} runs")


def _metric_columns(models: Sequence[Model]) -> list[Column]:
    names = [nb.text(nb.dig(m, "accuracy", "metric", "name")) for m in models]
    present = [n for n in names if n]
    if not present and all(nb.number(nb.dig(m, "accuracy", "metric", "value")) is None for m in models):
        return []
    header = present[0] if present and len(set(present)) == 1 else "metric"

    def shown(m: Model) -> str:
        value = nb.number(nb.dig(m, "accuracy", "metric", "value"))
        return nb.MISSING if value is None else f"{value:.4g}"

    def tooltip(m: Model) -> str:
        name = nb.text(nb.dig(m, "accuracy", "metric", "name")) or "metric"
        return f"{name}: {nb.exact(nb.dig(m, 'accuracy', 'metric', 'value'))}"

    return [Column("Accuracy", header, _number("accuracy", "metric", "value"), shown, tooltip)]


def summary_columns(models: Sequence[Model]) -> list[Column]:
    """Every summary column, before the groups nobody measured are dropped."""
    return [
        _bytes_column("File", "file_bytes", "file"),
        _bytes_column("Compressed", "compressed_bytes", "deflate-compressed"),
        _bytes_column("Sparse (COO)", "sparse_bytes", "weights stored sparse (COO)"),
        Column(
            "Parameters",
            "Total",
            _number("params", "parameters"),
            lambda m: nb.fmt_count(nb.dig(m, "params", "parameters")),
            lambda m: f"{nb.exact(nb.dig(m, 'params', 'parameters'))} parameters",
            "min",  # differs only where whole channels were removed
        ),
        Column(
            "Parameters",
            "Non-zero",
            _number("params", "nonzeros"),
            lambda m: nb.fmt_count(nb.dig(m, "params", "nonzeros")),
            lambda m: (
                f"{nb.exact(nb.dig(m, 'params', 'nonzeros'))} non-zeros; sparsity "
                f"{nb.exact(nb.dig(m, 'params', 'sparsity'))}"
            ),
            "min",
            detail=_sparsity_detail,
        ),
        Column(
            "Compute (MACs)",
            "Dense",
            _number("compute", "macs"),
            lambda m: nb.fmt_count(nb.dig(m, "compute", "macs")),
            lambda m: f"{nb.exact(nb.dig(m, 'compute', 'macs'))} MACs; {nb.exact(nb.dig(m, 'compute', 'flops'))} FLOPs",
            "min",
        ),
        Column(
            "Compute (MACs)",
            "Non-zero",
            _number("compute", "nonzero_macs"),
            lambda m: nb.fmt_count(nb.dig(m, "compute", "nonzero_macs")),
            lambda m: (
                f"{nb.exact(nb.dig(m, 'compute', 'nonzero_macs'))} MACs with a non-zero weight; "
                f"{nb.exact(nb.dig(m, 'compute', 'nonzero_flops'))} FLOPs"
            ),
            "min",
        ),
        Column(
            "Latency",
            "Median",
            _number("latency", "median_ms"),
            lambda m: nb.fmt_ms(nb.dig(m, "latency", "median_ms")),
            _latency_tooltip,
            "min",
            trusted=_latency_trusted,
        ),
        Column(
            "Latency",
            "Ratio",
            _number("latency", "ratio", "median"),
            lambda m: nb.fmt_ratio(nb.dig(m, "latency", "ratio", "median")),
            lambda m: (
                "candidate / base latency: "
                + "; ".join(f"{k} {nb.exact(nb.dig(m, 'latency', 'ratio', k))}" for k in ("median", "p10", "p90"))
            ),
            "min",
            detail=_ratio_spread,
            compares=True,
            trusted=_latency_trusted,
        ),
        Column(
            "Latency",
            "Peak memory",
            _number("latency", "peak_memory_bytes"),
            lambda m: nb.fmt_bytes(nb.dig(m, "latency", "peak_memory_bytes")),
            lambda m: f"peak memory: {nb.exact(nb.dig(m, 'latency', 'peak_memory_bytes'), 'bytes')}",
            "min",
        ),
        Column(
            "Accuracy",
            "Top-1",
            _number("accuracy", "top1"),
            lambda m: nb.fmt_percent(nb.dig(m, "accuracy", "top1")),
            lambda m: (
                f"top-1 {nb.exact(nb.dig(m, 'accuracy', 'top1'))} on {nb.exact(nb.dig(m, 'accuracy', 'samples'))} samples"
            ),
            "max",
        ),
        Column(
            "Accuracy",
            "Top-5",
            _number("accuracy", "top5"),
            lambda m: nb.fmt_percent(nb.dig(m, "accuracy", "top5")),
            lambda m: f"top-5 {nb.exact(nb.dig(m, 'accuracy', 'top5'))}",
            "max",
        ),
        *_metric_columns(models),
        Column(
            "Fidelity to base",
            "Cosine",
            _number("fidelity", "overall", "cosine"),
            lambda m: nb.fmt_decimal(nb.dig(m, "fidelity", "overall", "cosine"), 4),
            lambda m: (
                f"cosine {nb.exact(nb.dig(m, 'fidelity', 'overall', 'cosine'))}; relative L2 error "
                f"{nb.exact(nb.dig(m, 'fidelity', 'overall', 'rel_l2'))}; max |Δ| "
                f"{nb.exact(nb.dig(m, 'fidelity', 'overall', 'max_abs'))}"
            ),
            "max",
            compares=True,
        ),
        Column(
            "Fidelity to base",
            "Agreement",
            _number("fidelity", "overall", "top1_agreement"),
            lambda m: nb.fmt_percent(nb.dig(m, "fidelity", "overall", "top1_agreement")),
            lambda m: (
                f"top-1 agreement (same top-1 class as the base) {nb.exact(nb.dig(m, 'fidelity', 'overall', 'top1_agreement'))}"
            ),
            "max",
            compares=True,
        ),
    ]


def _best_flags(column: Column, models: Sequence[Model]) -> list[bool]:
    values = [column.value(m) for m in models]
    present = [v for v in values if v is not None]
    if column.best is None or len(present) < 2 or len(set(present)) < 2:
        return [False] * len(models)
    if column.trusted is not None and not column.trusted(models):
        return [False] * len(models)
    best = min(present) if column.best == "min" else max(present)
    return [v == best for v in values]


def summary_table(models: Sequence[Model], labels: Sequence[str]) -> str:
    """The summary table, and a line naming what nobody measured."""
    columns = [c for c in summary_columns(models) if len(models) > 1 or not c.compares]
    measured = [c for c in columns if any(c.value(m) is not None for m in models)]
    missing_groups = [g for g in dict.fromkeys(c.group for c in columns) if g not in {c.group for c in measured}]
    missing_columns = [c for c in columns if c not in measured and c.group not in missing_groups]
    columns = measured
    groups: list[tuple[str, int]] = []
    for column in columns:
        if groups and groups[-1][0] == column.group:
            groups[-1] = (column.group, groups[-1][1] + 1)
        else:
            groups.append((column.group, 1))
    head1 = '<th rowspan="2" class="model">Model</th>' + "".join(
        f'<th colspan="{n}" class="group">{escape(g)}</th>' for g, n in groups
    )
    head2 = "".join(f'<th class="num">{escape(c.header)}</th>' for c in columns)
    flags = [_best_flags(c, models) for c in columns]
    rows = []
    for index, model in enumerate(models):
        role = nb.text(model.get("role")) or ("base" if index == 0 else "candidate")
        path = nb.text(model.get("path")) or ""
        name_cell = (
            f'<td class="model" title="{escape(path)}"><span class="name">{escape(labels[index])}</span>'
            f'<span class="role role-{escape(role)}">{escape(role)}</span></td>'
        )
        cells = [
            _cell(
                c.shown(model),
                tooltip=c.tooltip(model),
                classes=("num", "best") if flags[ci][index] else ("num",),
                detail=c.detail(model) if c.detail else "",
            )
            for ci, c in enumerate(columns)
        ]
        rows.append(f"<tr>{name_cell}{''.join(cells)}</tr>")
    table = (
        '<div class="table-wrap"><table class="summary">'
        f"<thead><tr>{head1}</tr><tr>{head2}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    missing = [g.lower() for g in missing_groups] + [c.header.lower() for c in missing_columns]
    notes = [escape(f"Not measured: {', '.join(missing)}.")] if missing else []
    if any(c.header == "Ratio" for c in columns):
        notes.append("Ratio: candidate / base latency, median with its p10–p90 spread below it.")
        if not _latency_trusted(models):
            notes.append(
                f"Latency {TOO_NOISY}: a ratio's p10–p90 spread crosses 1.00× or is wider than ±10 %, "
                "so no latency is highlighted as best (measure on a quieter machine, or onnxprune eval --repeats auto)."
            )
    if len(models) > 1:
        notes.append('<span class="best-key">Highlighted</span>: the best value of a column.')
    return table + (f'<p class="note">{" · ".join(notes)}</p>' if notes else "")


def highlights(models: Sequence[Model], labels: Sequence[str]) -> str:
    """One line per candidate: what it gained and what it cost against the base."""
    if len(models) < 2:
        return ""
    base = models[0]
    lines = []
    for model, label in zip(models[1:], labels[1:], strict=True):
        facts = []
        made = nb.text(nb.dig(model, "recipe", "text"))
        if made:
            facts.append(f"made with {made}")
        sparsity = nb.number(nb.dig(model, "params", "sparsity"))
        if sparsity is not None:
            facts.append(f"{nb.fmt_percent(sparsity)} of weights zero")
        for key, what in (("compressed_bytes", "compressed"), ("sparse_bytes", "sparse")):
            mine, ref = nb.number(nb.dig(model, "size", key)), nb.number(nb.dig(base, "size", key))
            if mine is not None and ref:
                facts.append(f"{what} {nb.fmt_bytes(mine)} ({mine / ref:.2f}× the base)")
                break
        ratio = nb.number(nb.dig(model, "latency", "ratio", "median"))
        if ratio is not None:
            facts.append(
                f"latency {ratio:.2f}× the base"
                if _latency_conclusive(model)
                else f"latency {TOO_NOISY} ({ratio:.2f}×, p10–p90 {_ratio_spread(model).split(' ')[0]})"
            )
        mine, ref = nb.number(nb.dig(model, "accuracy", "top1")), nb.number(nb.dig(base, "accuracy", "top1"))
        if mine is not None and ref is not None:
            facts.append(f"top-1 {nb.fmt_percent(mine)} ({100 * (mine - ref):+.1f} pt)")
        cosine = nb.number(nb.dig(model, "fidelity", "overall", "cosine"))
        if cosine is not None:
            facts.append(f"cosine {cosine:.4f}")
        if structure.has_structure(model):
            facts.append(f"structural pass {structure.summary(model['structure'])}")
        if facts:
            lines.append(f"<li><strong>{escape(label)}</strong>: {escape('; '.join(facts))}</li>")
    return f'<ul class="highlights">{"".join(lines)}</ul>' if lines else ""


def warnings_block(models: Sequence[Model], labels: Sequence[str]) -> str:
    """Highlighted boxes: a warning every candidate shares once, then each model's own; empty if none."""
    messages = [[t for t in (nb.text(w) for w in nb.items(m.get("warnings"))) if t] for m in models]
    candidates = messages[1:]
    shared = [w for w in dict.fromkeys(candidates[0]) if all(w in c for c in candidates)] if len(candidates) > 1 else []
    boxes = []
    if shared:
        items = "".join(f"<li>{escape(w)}</li>" for w in shared)
        boxes.append(f'<div class="warning"><strong>Every candidate</strong><ul>{items}</ul></div>')
    for own, label in zip(messages, labels, strict=True):
        rest = [w for w in dict.fromkeys(own) if w not in shared]
        if rest:
            items = "".join(f"<li>{escape(w)}</li>" for w in rest)
            boxes.append(f'<div class="warning"><strong>{escape(label)}</strong><ul>{items}</ul></div>')
    return "".join(boxes)


def layer_table(models: Sequence[Model], labels: Sequence[str]) -> tuple[int, str]:
    """(number of layers, a table of every layer with each model's sparsity)."""
    by_model = [{layer_key(la): la for la in nb.items(m.get("layers")) if isinstance(la, Mapping)} for m in models]
    keys = list(dict.fromkeys(k for layers in by_model for k in layers))
    if not keys:
        return 0, ""
    head = "".join(f'<th class="num">{escape(label)}</th>' for label in labels)
    rows = []
    for key in keys:
        first = next(layers[key] for layers in by_model if key in layers)
        cells = []
        for layers in by_model:
            layer = layers.get(key)
            if layer is None:
                cells.append(_cell(nb.MISSING, tooltip="not in this model"))
                continue
            tip = (
                f"{nb.exact(layer.get('nonzeros'))} non-zeros of {nb.exact(layer.get('parameters'))}; "
                f"COO {nb.exact(layer.get('coo_bytes'), 'bytes')}"
            )
            cells.append(_cell(nb.fmt_percent(layer.get("sparsity")), tooltip=tip))
        name = f'<td class="name" title="{escape(layer_label(key))}">{_scoped(key)}</td>'
        rows.append(
            f"<tr>{name}"
            + _cell(nb.fmt_shape(first.get("shape")), classes=("mono",))
            + _cell(nb.text(first.get("dtype")) or nb.MISSING, classes=())
            + _cell(nb.fmt_count(first.get("parameters")), tooltip=nb.exact(first.get("parameters")))
            + _cell(nb.fmt_bytes(first.get("dense_bytes")), tooltip=nb.exact(first.get("dense_bytes"), "bytes"))
            + "".join(cells)
            + "</tr>"
        )
    table = (
        '<div class="table-wrap"><table class="detail-table"><thead><tr><th>Layer</th><th>Shape</th><th>dtype</th>'
        f'<th class="num">Parameters</th><th class="num">Dense bytes</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )
    return len(keys), table


def _scoped(key: tuple[str, str]) -> str:
    scope, name = key
    prefix = f'<span class="scope">{escape(scope)}/</span>' if scope else ""
    return prefix + escape(name)


def node_table(models: Sequence[Model], labels: Sequence[str]) -> tuple[int, str]:
    """(number of nodes, a table of the MACs of every node, dense and non-zero per model)."""
    by_model = []
    for model in models:
        nodes = {}
        for node in nb.items(nb.dig(model, "compute", "nodes")):
            if isinstance(node, Mapping):
                nodes[(nb.text(node.get("scope")) or "", nb.text(node.get("node")) or "?")] = node
        by_model.append(nodes)
    keys = list(dict.fromkeys(k for nodes in by_model for k in nodes))
    if not keys:
        return 0, ""
    head = "".join(f'<th class="num">{escape(label)}<br><small>non-zero MACs</small></th>' for label in labels)
    rows = []
    for key in keys:
        first = next(nodes[key] for nodes in by_model if key in nodes)
        cells = []
        reasons = []
        for nodes in by_model:
            node = nodes.get(key)
            if node is None:
                cells.append(_cell(nb.MISSING, tooltip="not in this model"))
                continue
            cells.append(
                _cell(
                    nb.fmt_count(node.get("nonzero_macs")),
                    tooltip=f"{nb.exact(node.get('nonzero_macs'))} MACs; weight density {nb.exact(node.get('density'))}",
                )
            )
            reason = nb.text(node.get("reason"))
            if node.get("counted") is False or reason:
                reasons.append(reason or "not counted")
        note = "; ".join(dict.fromkeys(reasons))
        rows.append(
            f'<tr><td class="name" title="{escape(layer_label(key))}">{_scoped(key)}</td>'
            + _cell(nb.text(first.get("op_type")) or nb.MISSING, classes=())
            + _cell(nb.text(first.get("weight")) or nb.MISSING, classes=("mono",))
            + _cell(nb.fmt_count(first.get("macs")), tooltip=f"{nb.exact(first.get('macs'))} MACs (dense)")
            + "".join(cells)
            + _cell(note, classes=("reason",))
            + "</tr>"
        )
    table = (
        '<div class="table-wrap"><table class="detail-table"><thead><tr><th>Node</th><th>Op</th><th>Weight</th>'
        f'<th class="num">MACs</th>{head}<th>Note</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )
    return len(keys), table


def other_ops_table(models: Sequence[Model], labels: Sequence[str]) -> str:
    """Counts of the operations outside the MAC count (element-wise ops ...), per model."""
    per_model = [nb.mapping(nb.dig(m, "compute", "other")) for m in models]
    ops = list(dict.fromkeys(op for other in per_model for op in other))
    if not ops:
        return ""
    head = "".join(f'<th class="num">{escape(label)}</th>' for label in labels)
    rows = "".join(
        f"<tr><td>{escape(str(op))}</td>"
        + "".join(_cell(nb.fmt_count(other.get(op)), tooltip=nb.exact(other.get(op))) for other in per_model)
        + "</tr>"
        for op in ops
    )
    return (
        '<div class="table-wrap"><table class="detail-table"><thead><tr><th>Op type</th>'
        f"{head}</tr></thead><tbody>{rows}</tbody></table></div>"
    )


def compute_notes(models: Sequence[Model], labels: Sequence[str]) -> str:
    """Uncounted nodes and notes of the compute count: those of every model once, then each model's own."""
    per_model = []
    for model in models:
        entries = [nb.fmt_general(u) for u in nb.items(nb.dig(model, "compute", "uncounted"))]
        entries += [nb.fmt_general(n) for n in nb.items(nb.dig(model, "compute", "notes"))]
        per_model.append(list(dict.fromkeys(e for e in entries if e and e != nb.MISSING)))
    shared = [e for e in per_model[0] if all(e in own for own in per_model)] if len(models) > 1 else []
    groups = [("Every model", shared)] if shared else []
    groups += [(label, [e for e in own if e not in shared]) for own, label in zip(per_model, labels, strict=True)]
    return "".join(
        f"<p><strong>{escape(label)}</strong></p><ul>{''.join(f'<li>{escape(e)}</li>' for e in entries)}</ul>"
        for label, entries in groups
        if entries
    )


def fidelity_table(models: Sequence[Model], labels: Sequence[str]) -> str:
    """Every fidelity measure of every compared output."""
    rows = []
    for model, label in zip(models[1:], labels[1:], strict=True):
        for output, stats in nb.mapping(nb.dig(model, "fidelity", "outputs")).items():
            rows.append(
                f"<tr><td>{escape(label)}</td><td>{escape(str(output))}</td>"
                + _cell(
                    nb.fmt_percent(nb.dig(stats, "top1_agreement")), tooltip=nb.exact(nb.dig(stats, "top1_agreement"))
                )
                + _cell(nb.fmt_decimal(nb.dig(stats, "cosine"), 4), tooltip=nb.exact(nb.dig(stats, "cosine")))
                + _cell(nb.fmt_decimal(nb.dig(stats, "rel_l2"), 4), tooltip=nb.exact(nb.dig(stats, "rel_l2")))
                + _cell(nb.fmt_decimal(nb.dig(stats, "max_abs"), 4), tooltip=nb.exact(nb.dig(stats, "max_abs")))
                + "</tr>"
            )
    if not rows:
        return ""
    return (
        '<div class="table-wrap"><table class="detail-table"><thead><tr><th>Candidate</th><th>Output</th>'
        '<th class="num">Top-1 agreement</th><th class="num">Cosine</th><th class="num">Relative L2 error</th>'
        '<th class="num">Max |Δ|</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def definition_list(data: Any, known: Sequence[tuple[str, str, Callable[[Any], str]]]) -> str:
    """A <dl> of ``data``: the ``known`` keys first (label, formatter), then any other key."""
    values = nb.mapping(data)
    if not values:
        return '<p class="note">Not recorded.</p>'
    rows = []
    for key, label, formatter in known:
        if key in values:
            rows.append((label, formatter(values[key])))
    names = {k for k, _, _ in known}
    rows += [(str(k).replace("_", " "), nb.fmt_general(v)) for k, v in values.items() if k not in names]
    body = "".join(f"<dt>{escape(label)}</dt><dd>{escape(text)}</dd>" for label, text in rows)
    return f'<dl class="facts">{body}</dl>'
