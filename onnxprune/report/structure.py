"""The report's "Channels removed (structural pass)" section, from each model's ``structure``.

``structure`` is what the evaluator read from a model's metadata
(:func:`onnxprune.provenance.read_structure`): parameters and MACs before and after, per
changed channel group its channels before and after, the dead channels among those removed
and the parameters removed, the blocked groups with their reasons, and the exact check.

Definitions shown, per group g with c_b channels before and c_a after:

- removed = (c_b − c_a) / c_b, the share of the group's channels that went;
- dead channels: removed channels that were constant wherever they were read, their
  constant folded into the consumers' biases, so removing them changes no output;
- parameters removed: weights and biases of every tensor the group's channels index;
- exact max |Δ|: the largest output difference measured after a dead-channels-only run
  (float rounding only); absent when channels of importance were removed too.

Each model with a ``structure`` gets its totals, a table of the changed groups, a bar chart
of channels before and after per group (``plot-structure-<n>``, the ``MAX_GROUPS`` largest)
and the blocked groups folded in a ``<details>``. Nothing in the result is trusted to be
present or well-typed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from onnxprune.report import numbers as nb
from onnxprune.report.charts import PALETTE, BarChart, Series, render
from onnxprune.report.plots import WIDE, Figure, figure_html

#: At most this many groups (the largest by channels before) appear in a chart.
MAX_GROUPS = 40

Model = Mapping[str, Any]


@dataclass(frozen=True)
class GroupRow:
    """One changed channel group, its numbers None where the result lacks them."""

    name: str
    before: float | None
    after: float | None
    dead: float | None
    params_removed: float | None

    @property
    def removed(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.before - self.after


@dataclass(frozen=True)
class Totals:
    """What a structural pass did to one model, summed over its changed groups."""

    channels_removed: int
    channels_before: int
    dead: int
    groups: int
    blocked: int
    params: tuple[float | None, float | None]
    macs: tuple[float | None, float | None]
    exact_max_diff: float | None


def group_rows(structure: Any) -> list[GroupRow]:
    rows = []
    for group in nb.items(nb.dig(structure, "groups")):
        if not isinstance(group, Mapping):
            continue
        rows.append(
            GroupRow(
                name=nb.text(group.get("group")) or "?",
                before=nb.number(group.get("channels_before")),
                after=nb.number(group.get("channels_after")),
                dead=nb.number(group.get("dead_channels")),
                params_removed=nb.number(group.get("params_removed")),
            )
        )
    return rows


def blocked_rows(structure: Any) -> list[tuple[str, str]]:
    return [
        (nb.text(b.get("group")) or "?", nb.text(b.get("reason")) or "no reason recorded")
        for b in nb.items(nb.dig(structure, "blocked"))
        if isinstance(b, Mapping)
    ]


def totals(structure: Any) -> Totals:
    """The totals of a model's ``structure`` (zeros and Nones where it has nothing)."""
    rows = group_rows(structure)
    return Totals(
        channels_removed=int(sum(r.removed or 0 for r in rows)),
        channels_before=int(sum(r.before or 0 for r in rows)),
        dead=int(sum(r.dead or 0 for r in rows)),
        groups=len(rows),
        blocked=len(blocked_rows(structure)),
        params=(nb.number(nb.dig(structure, "params", "before")), nb.number(nb.dig(structure, "params", "after"))),
        macs=(nb.number(nb.dig(structure, "macs", "before")), nb.number(nb.dig(structure, "macs", "after"))),
        exact_max_diff=nb.number(nb.dig(structure, "exact_max_diff")),
    )


def has_structure(model: Model) -> bool:
    return isinstance(model.get("structure"), Mapping)


def summary(structure: Any) -> str:
    """One line: "removed 49 of 144 channels in 4 groups (1 blocked)"."""
    t = totals(structure)
    text = f"removed {t.channels_removed:,} of {t.channels_before:,} channels in {t.groups} group{_s(t.groups)}"
    extras = []
    if t.dead:
        extras.append(f"{t.dead:,} dead")
    if t.blocked:
        extras.append(f"{t.blocked} group{_s(t.blocked)} blocked")
    return text + (f" ({', '.join(extras)})" if extras else "")


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _change(pair: tuple[float | None, float | None]) -> str:
    before, after = pair
    text = f"{nb.fmt_count(before)} → {nb.fmt_count(after)}"
    if before and after is not None:
        text += f" ({100 * (after - before) / before:+.1f} %)"
    return text


def _totals_list(structure: Any) -> str:
    t = totals(structure)
    rows = [("Channels", summary(structure))]
    for label, pair, unit in (("Parameters", t.params, "parameters"), ("MACs", t.macs, "MACs")):
        if pair[0] is not None or pair[1] is not None:
            tip = f"{nb.exact(pair[0], unit)} → {nb.exact(pair[1], unit)}"
            rows.append((label, f'<span title="{escape(tip)}">{escape(_change(pair))}</span>'))
    if t.exact_max_diff is not None:
        rows.append(
            (
                "Exact max |Δ|",
                escape(f"{t.exact_max_diff:.3g}")
                + ' <span class="note">(only dead channels removed: outputs equal up to float rounding)</span>',
            )
        )
    options = nb.mapping(nb.dig(structure, "options"))
    if options:
        rows.append(("Options", escape("; ".join(f"{k}: {nb.fmt_general(v)}" for k, v in options.items()))))
    body = "".join(
        f"<dt>{escape(label)}</dt><dd>{value if label != 'Channels' else escape(value)}</dd>" for label, value in rows
    )
    return f'<dl class="facts">{body}</dl>'


def _cell(text: str, tooltip: str = "", cls: str = "num") -> str:
    tip = f' title="{escape(tooltip)}"' if tooltip else ""
    return f'<td class="{cls}"{tip}>{escape(text)}</td>'


def _group_table(rows: Sequence[GroupRow]) -> str:
    body = []
    for r in rows:
        share = None if r.removed is None or not r.before else r.removed / r.before
        body.append(
            f'<tr><td class="name" title="{escape(r.name)}">{escape(r.name)}</td>'
            + _cell(
                f"{nb.fmt_count(r.before)} → {nb.fmt_count(r.after)}", f"{nb.exact(r.before)} → {nb.exact(r.after)}"
            )
            + _cell(nb.fmt_percent(share), f"{nb.exact(r.removed, 'channels')} removed")
            + _cell(nb.fmt_count(r.dead), f"{nb.exact(r.dead, 'channels')} constant wherever read")
            + _cell(nb.fmt_count(r.params_removed), nb.exact(r.params_removed, "parameters"))
            + "</tr>"
        )
    before = sum(r.before or 0 for r in rows)
    after = sum(r.after or 0 for r in rows)
    params = sum(r.params_removed or 0 for r in rows)
    dead = sum(r.dead or 0 for r in rows)
    foot = (
        f"<tr><th>All {len(rows)} group{_s(len(rows))}</th>"
        + _cell(f"{nb.fmt_count(before)} → {nb.fmt_count(after)}", f"{nb.exact(before)} → {nb.exact(after)}")
        + _cell(nb.fmt_percent((before - after) / before if before else None), nb.exact(before - after, "channels"))
        + _cell(nb.fmt_count(dead), nb.exact(dead, "channels"))
        + _cell(nb.fmt_count(params), nb.exact(params, "parameters"))
        + "</tr>"
    )
    return (
        '<div class="table-wrap"><table class="detail-table structure-groups"><thead><tr><th>Group</th>'
        '<th class="num">Channels before → after</th><th class="num">Removed</th><th class="num">Dead channels</th>'
        f'<th class="num">Parameters removed</th></tr></thead><tbody>{"".join(body)}</tbody>'
        f'<tfoot class="totals">{foot}</tfoot></table></div>'
    )


def _blocked(structure: Any) -> str:
    rows = blocked_rows(structure)
    if not rows:
        return '<p class="note">No group was blocked.</p>'
    body = "".join(f'<tr><td class="name">{escape(g)}</td><td class="reason">{escape(r)}</td></tr>' for g, r in rows)
    return (
        f'<details class="blocked"><summary>Blocked groups ({len(rows)}): left whole, and why</summary>'
        '<div class="table-wrap"><table class="detail-table"><thead><tr><th>Group</th><th>Reason</th></tr></thead>'
        f"<tbody>{body}</tbody></table></div></details>"
    )


def structure_figure(structure: Any, label: str, plot_id: str) -> Figure | None:
    """Channels before and after per changed group (the ``MAX_GROUPS`` largest), or None without any."""
    rows = [r for r in group_rows(structure) if r.before is not None or r.after is not None]
    if not rows:
        return None
    shown = rows
    if len(rows) > MAX_GROUPS:
        largest = set(sorted(range(len(rows)), key=lambda i: -(rows[i].before or 0))[:MAX_GROUPS])
        shown = [r for i, r in enumerate(rows) if i in largest]
    notes = tuple(
        f"{nb.exact(r.removed)} removed ({nb.exact(r.dead)} dead)" if r.removed is not None else "" for r in shown
    )
    chart = BarChart(
        title=f"Channels per group: {label}",
        categories=tuple(r.name for r in shown),
        series=(
            Series("before", tuple(r.before for r in shown), PALETTE[0], notes=notes),
            Series("after", tuple(r.after for r in shown), PALETTE[2], notes=notes),
        ),
        value_format=lambda v: f"{v:,.0f}",
        horizontal=True,
        width=WIDE,
        bar_thickness=10,
        label_chars=64,
        axis_label="channels",
    )
    caption = "Channels of each changed group before and after the structural pass (hover a bar for the dead ones)."
    if len(shown) < len(rows):
        caption += f" Showing the {len(shown)} largest of {len(rows)} changed groups; the table lists all."
    return Figure(plot_id, chart.title, caption, render(chart), wide=True)


def structure_section(models: Sequence[Model], labels: Sequence[str]) -> str:
    """The section's body: one block per model that carries a structural pass's provenance; "" if none does."""
    blocks = []
    for index, (model, label) in enumerate(zip(models, labels, strict=True)):
        if not has_structure(model):
            continue
        structure = model["structure"]
        rows = group_rows(structure)
        parts = [f"<h3>{escape(label)}</h3>", _totals_list(structure)]
        if rows:
            parts.append(_group_table(rows))
            figure = structure_figure(structure, label, f"plot-structure-{index}")
            if figure is not None:
                parts.append(f'<div class="plots">{figure_html(figure)}</div>')
        else:
            parts.append('<p class="note">The structural pass changed no group.</p>')
        parts.append(_blocked(structure))
        blocks.append(f'<div class="structure-model" id="structure-{index}">{"".join(parts)}</div>')
    if not blocks:
        return ""
    intro = (
        "<p class=\"note\">Whole channels removed by onnxprune's structural pass, as recorded in each model's "
        "metadata: the tensors shrink, so the model is smaller and faster on every runtime. A group is a set "
        "of channels that must go together; removed = channels gone / channels before; dead channels were "
        "constant wherever read (their removal changes no output).</p>"
    )
    return intro + "".join(blocks)
