"""The report page: one self-contained HTML file (inline CSS and SVG, no script, no URL).

Top to bottom: title, tool version and date; a banner when the data was synthetic; the
summary table and one line per candidate against the base; warnings; the plots; the
channels the structural pass removed (:mod:`onnxprune.report.structure`, only when a model
carries its provenance); the per-layer and per-node tables (collapsed); data, environment
and settings. A section whose data is missing says "not measured" or is left out; nothing
in the result is trusted to be present, well-typed or free of markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from onnxprune.errors import OptionError
from onnxprune.report import numbers as nb
from onnxprune.report import tables
from onnxprune.report.plots import Figure, figure_html, figures, model_labels
from onnxprune.report.structure import structure_section

CSS = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7f9; --card: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 28px 28px 40px; }
header h1 { font-size: 26px; line-height: 1.2; margin: 0 0 6px; letter-spacing: -0.01em; }
header .meta { color: var(--muted); margin: 0; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px 18px; margin-top: 18px; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 18px 0 8px; }
p { margin: 6px 0; }
.note { color: var(--muted); font-size: 12.5px; }
.banner { border-radius: 10px; padding: 12px 16px; margin-top: 18px; font-size: 15px; }
.banner.synthetic { background: #fef2f2; border: 1px solid #fecaca; border-left: 6px solid #b91c1c; color: #7f1d1d; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 5px 7px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: #f1f5f9; color: #334155; font-size: 12px; font-weight: 600; white-space: nowrap; }
thead th.num { text-align: right; }
thead th.group { text-align: center; border-bottom: 1px solid #cbd5e1; border-left: 2px solid #fff; }
tbody tr:hover td { background: #f8fafc; }
td.num { text-align: right; white-space: nowrap; }
td.best, tbody tr:hover td.best { background: #ecfdf5; color: #065f46; font-weight: 600; }
.best-key { background: #ecfdf5; color: #065f46; font-weight: 600; padding: 0 4px; border-radius: 3px; }
td .detail { display: block; font-size: 11px; color: var(--muted); font-weight: 400; }
td.model { max-width: 15em; overflow-wrap: anywhere; }
td.model .name { display: block; font-weight: 600; }
td.name { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  word-break: break-all; min-width: 14em; }
td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
td.reason { color: var(--muted); font-size: 12px; }
.scope { color: var(--muted); }
.role { display: inline-block; margin-top: 1px; padding: 0 7px; border-radius: 999px; font-size: 10px;
  line-height: 17px; text-transform: uppercase; letter-spacing: 0.04em; background: #e0e7ff; color: #3730a3;
}
.role-base { background: #e5e7eb; color: #374151; }
ul.highlights { margin: 12px 0 0; padding-left: 20px; }
ul.highlights li { margin: 2px 0; }
.warning { background: #fffbeb; border: 1px solid #fde68a; border-left: 5px solid #d97706; border-radius: 8px;
  padding: 8px 14px; margin: 8px 0; color: #78350f; }
.warning ul { margin: 4px 0 0; padding-left: 20px; }
.plots { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
figure.plot { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff;
  display: flex; flex-direction: column; }
figure.plot.wide { grid-column: 1 / -1; }
figure.plot svg { display: block; width: 100%; height: auto; }
.missing-plots { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 8px; }
figure.plot-missing { margin: 0; padding: 6px 12px; background: #f9fafb; border: 1px dashed #d1d5db;
  border-radius: 6px; }
figure.plot-missing figcaption { margin: 0; }
figcaption { color: var(--muted); font-size: 12.5px; margin: 6px 4px 0; }
details { margin-top: 6px; }
details > summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
details[open] > summary { margin-bottom: 8px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 20px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-word; }
.structure-model + .structure-model { margin-top: 22px; border-top: 1px solid var(--line); padding-top: 4px; }
.structure-model dl.facts { margin-bottom: 10px; }
.structure-model .plots { margin-top: 12px; }
tfoot.totals th, tfoot.totals td { font-weight: 600; border-top: 2px solid #cbd5e1; }
.columns { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 18px; }
footer { color: var(--muted); font-size: 12px; margin-top: 20px; text-align: center; }
@media (max-width: 900px) { .plots, .columns { grid-template-columns: 1fr; } }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{body}</section>'


def _missing_figure(figure: Figure) -> str:
    return (
        f'<figure id="{figure.plot_id}" class="plot-missing"><figcaption><strong>{escape(figure.title)}</strong>: '
        f"{escape(figure.caption)}</figcaption></figure>"
    )


def _plots(figures_: list[Figure]) -> str:
    drawn = [f for f in figures_ if f.svg]
    missing = [f for f in figures_ if not f.svg]
    out = ""
    if drawn:
        out += '<div class="plots">' + "".join(figure_html(f) for f in drawn) + "</div>"
    if missing:
        out += '<div class="missing-plots">' + "".join(_missing_figure(f) for f in missing) + "</div>"
    return out


def _made_by(result: Mapping[str, Any]) -> str:
    """The tool and its version: the envelope's ``tool`` and ``version`` (schema 1), or the
    ``{"name", "version"}`` mapping of results written before it."""
    tool = result.get("tool")
    if isinstance(tool, Mapping):
        name, version = nb.text(tool.get("name")), nb.text(tool.get("version"))
    else:
        name, version = nb.text(tool), nb.text(result.get("version"))
    return " ".join(t for t in (name or "onnxprune", version) if t)


def _header(result: Mapping[str, Any], models: list[Mapping[str, Any]], labels: list[str]) -> str:
    facts = [_made_by(result)]
    created = nb.fmt_created(result.get("created"))
    if created:
        facts.append(created)
    if models:
        facts.append(f"base: {labels[0]}")
        count = len(models) - 1
        facts.append({0: "no candidates", 1: "1 candidate"}.get(count, f"{count} candidates"))
    data = nb.mapping(result.get("data"))
    samples = nb.number(data.get("samples"))
    source = nb.text(data.get("source")) or nb.text(data.get("kind"))
    if source:
        facts.append(f"data: {source}" + ("" if samples is None else f" ({int(samples):,} samples)"))
    title = "Pruning report" if len(models) > 1 else "Model report"
    return f'<header><h1>{escape(title)}</h1><p class="meta">{escape(" · ".join(facts))}</p></header>'


def _synthetic_banner(result: Mapping[str, Any]) -> str:
    if nb.dig(result, "data", "synthetic") is not True:
        return ""
    return (
        '<div class="banner synthetic" id="synthetic-data"><strong>Synthetic data: fidelity only, not accuracy.</strong> '
        "The inputs were generated, not sampled from real data: the outputs are compared with the base model's, "
        "but no accuracy is measured, and fidelity on real inputs may differ.</div>"
    )


def _labels_text(value: Any) -> str:
    return nb.text(value) or "none (accuracy not measured)"


def _threads(value: Any) -> str:
    return "0 (onnxruntime default)" if value == 0 else nb.fmt_general(value)


def _input_shapes(value: Any) -> str:
    shapes = nb.mapping(value)
    if not shapes:
        return nb.fmt_general(value)
    return "; ".join(f"{name}: {nb.fmt_shape(dims)}" for name, dims in shapes.items())


_DATA_KEYS = (
    ("kind", "kind", nb.fmt_general),
    ("source", "source", nb.fmt_general),
    ("samples", "samples", nb.fmt_general),
    ("batch_size", "batch size", nb.fmt_general),
    ("synthetic", "synthetic", nb.fmt_general),
    ("labels", "labels", _labels_text),
    ("output", "output scored", nb.fmt_general),
)
_ENVIRONMENT_KEYS = (
    ("cpu", "CPU", nb.fmt_general),
    ("cores", "cores", nb.fmt_general),
    ("logical_cores", "logical cores", nb.fmt_general),
    ("usable_cores", "usable cores", nb.fmt_general),
    ("platform", "platform", nb.fmt_general),
    ("python", "Python", nb.fmt_general),
    ("onnxruntime", "onnxruntime", nb.fmt_general),
    ("numpy", "numpy", nb.fmt_general),
    ("providers", "available providers", nb.fmt_general),
    ("providers_used", "providers used", nb.fmt_general),
    ("threads", "intra-op threads", _threads),
)
_SETTINGS_KEYS = (
    ("warmup", "warm-up runs", nb.fmt_general),
    ("repeats", "timed runs", nb.fmt_general),
    ("threads", "intra-op threads", _threads),
    ("latency_batch", "samples per timed run", nb.fmt_general),
    ("input_shapes", "input shapes", _input_shapes),
)


def _detail_sections(models: list[Mapping[str, Any]], labels: list[str]) -> list[str]:
    out = []
    count, layers = tables.layer_table(models, labels)
    if count:
        summary = f"Sparsity of every weight: {count:,} layer{'s' if count != 1 else ''}"
        out.append(_section("layers", "Layers", f"<details><summary>{escape(summary)}</summary>{layers}</details>"))
    count, nodes = tables.node_table(models, labels)
    other = tables.other_ops_table(models, labels)
    notes = tables.compute_notes(models, labels)
    parts = []
    if count:
        summary = f"Multiply-accumulates of every node: {count:,} node{'s' if count != 1 else ''}"
        parts.append(f"<details><summary>{escape(summary)}</summary>{nodes}</details>")
    if other:
        parts.append(f"<details><summary>Operations outside the MAC count</summary>{other}</details>")
    if notes:
        parts.append(f"<details><summary>Uncounted nodes and notes</summary>{notes}</details>")
    if parts:
        out.append(_section("compute", "Compute", "".join(parts)))
    return out


def _models_list(models: list[Mapping[str, Any]], labels: list[str]) -> str:
    rows = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(nb.text(m.get('path')) or nb.MISSING)}</dd>"
        for m, label in zip(models, labels, strict=True)
    )
    return f'<h3>Model files</h3><dl class="facts">{rows}</dl>' if rows else ""


def render_html(result: Mapping[str, Any]) -> str:
    """The evaluation result (``EvalResult.to_dict()``) as one self-contained HTML page."""
    if not isinstance(result, Mapping):
        raise OptionError(
            f"the report needs an evaluation result as a mapping (EvalResult.to_dict()), got {type(result).__name__}"
        )
    models = [m for m in nb.items(result.get("models")) if isinstance(m, Mapping)]
    labels = model_labels(models)
    body = [_header(result, models, labels), _synthetic_banner(result)]
    if models:
        summary = tables.summary_table(models, labels) + tables.highlights(models, labels)
    else:
        summary = '<p class="note">Not measured: the result lists no models.</p>'
    body.append(_section("summary", "Summary", summary))
    warnings = tables.warnings_block(models, labels)
    if warnings:
        body.append(_section("warnings", "Warnings", warnings))
    plots = figures(models)
    if plots:
        grid = _plots(plots)
        fidelity = tables.fidelity_table(models, labels)
        if fidelity:
            grid += f"<h3>Fidelity per output</h3>{fidelity}"
        body.append(_section("plots", "Plots", grid))
    structure = structure_section(models, labels)
    if structure:
        body.append(_section("structure", "Channels removed (structural pass)", structure))
    body.extend(_detail_sections(models, labels))
    data = tables.definition_list(result.get("data"), _DATA_KEYS) + _models_list(models, labels)
    environment = tables.definition_list(result.get("environment"), _ENVIRONMENT_KEYS)
    settings = tables.definition_list(result.get("settings"), _SETTINGS_KEYS)
    body.append(
        '<div class="columns">'
        + _section("data", "Data", data)
        + "<div>"
        + _section("environment", "Environment", environment)
        + _section("settings", "Settings", settings)
        + "</div></div>"
    )
    body.append(f"<footer>Made by {escape(_made_by(result))}. This page needs no network and runs no script.</footer>")
    title = f"{labels[0]} — pruning report" if models else "onnxprune report"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
