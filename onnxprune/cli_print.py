"""What ``onnxprune prune`` and ``onnxprune inspect`` print: the per-layer table, the structural
pass's groups, the before/after summary, the int8 line, and the short forms they share.

Only the command line prints (see :mod:`onnxprune.console` for the shared helpers). Library
text kept as data (skip reasons, notes) names options by API field; :func:`shown` spells them
as flags (:func:`onnxprune.errors.spell` with the CLI's table).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import click

import onnxprune
from onnxprune.cli_flags import flag
from onnxprune.console import count, human, table
from onnxprune.errors import spell


def format_shape(shape: Sequence[int]) -> str:
    """``64x3x3x3``; ``scalar`` for a 0-d tensor."""
    return "x".join(map(str, shape)) or "scalar"


def shown(text: str | None) -> str:
    """Library text (a skip reason, a note) as the CLI prints it: options spelled as flags."""
    return spell(text, flag) or ""


def reason_key(reason: str | None) -> str:
    """A short category for a skip reason (sizes and names removed), for counting."""
    text = re.sub(r"^\d+ elements, ", "", shown(reason) or "unknown")
    return re.sub(r" \d+$", "", text.split(":")[0].split(",")[0])


def reason_counts(layers: Sequence[Any]) -> str:
    counts = Counter(reason_key(layer.reason) for layer in layers)
    return ", ".join(f"{n} {what}" for what, n in counts.most_common())


def print_quantized(quantized: onnxprune.QuantizeResult, size_in: Any, size_out: Any) -> None:
    """One line: what the int8 step quantized, the zeros it kept, the sizes against IN."""
    compressed = (
        f", compressed {human(size_out.compressed)} ({size_out.compressed / size_in.compressed:.2f}x IN)"
        if size_in.compressed and size_out.compressed is not None
        else ""
    )
    click.echo(
        f"int8 ({quantized.mode}{', per channel' if quantized.per_channel else ''}): {quantized.weights_quantized} "
        f"weight tensors quantized, {count(quantized.zeros_before)} of {count(quantized.zeros_before)} zeros kept "
        f"({count(quantized.zeros_after)} int8 zeros of {count(quantized.elements)}); size {human(size_out.bytes)} "
        f"({size_out.bytes / size_in.bytes:.2f}x IN){compressed}"
    )


def print_layers(result: onnxprune.PruneResult) -> None:
    calibrated = any(layer.error is not None for layer in result.pruned)
    curves = (result.allocation or {}).get("mode") == "curves"

    def err(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = []
    for layer in result.pruned:
        row = [
            layer.key,
            "/".join(layer.ops),
            format_shape(layer.shape),
            layer.dtype,
            layer.pattern or "",
            f"{layer.sparsity_before:.1%}",
            *([f"{layer.target:.1%}" if layer.target is not None else "-"] if curves else []),
            f"{layer.sparsity_after:.1%}",
        ]
        if calibrated:
            row += [layer.method or "", err(layer.error_magnitude), err(layer.error), layer.bias or ""]
        rows.append([*row, shown(layer.reason)])
    header = ["weight", "op", "shape", "dtype", "pattern", "before", *(["allocated"] if curves else []), "after"]
    right = set(range(5, len(header)))
    if calibrated:
        right |= {len(header) + 1, len(header) + 2}
        header += ["method", "err magnitude", "err method", "bias"]
    click.echo(table(rows, [*header, "note"], right=right))
    if curves:
        click.echo(
            "allocation: curves: each calibrated layer's sparsity from its error curve, weighted by how much the "
            "model's outputs change with that layer alone pruned (overall count kept; --allocation uniform: each "
            "layer the same)"
        )
    if calibrated:
        click.echo(
            "err: relative error of each layer's output against the dense model on the calibration data, "
            "‖W·X_dense − Ŵ·X‖² / ‖W·X_dense‖², for plain magnitude and for the method"
        )
    skipped = [layer for layer in result.skipped if layer.role in ("weight", "mixed")]
    others = len(result.skipped) - len(skipped)
    if skipped:
        click.echo(f"\nweights not pruned: {len(skipped)}")
        for layer in skipped:
            click.echo(
                f"  {layer.key} ({'/'.join(layer.ops) or layer.role}, {format_shape(layer.shape)}): {shown(layer.reason)}"
            )
    if others:
        click.echo(
            f"not weights: {others} tensors ({reason_counts([layer for layer in result.skipped if layer not in skipped])})"
        )
    click.echo("")


def print_structure(structure: Any, quiet: bool) -> None:
    """The structural pass: changed groups, blocked groups (by reason), refits, totals."""
    if structure is None or quiet:
        return
    rows = []
    for g in structure.groups:
        if not g.removed:
            continue
        unit = g.unit_channels
        rows.append(
            [
                g.name + (f" (+{len(g.sources) - 1})" if len(g.sources) > 1 else ""),
                f"{g.units * unit}" + (f" ({g.units}x{unit})" if unit > 1 else ""),
                f"{g.kept * unit}",
                f"{g.removed / g.units:.0%}",
                f"{g.dead * unit}",
                count(g.params_removed),
            ]
        )
    if rows:
        click.echo(
            table(
                rows, ["channel group", "channels", "kept", "removed", "dead", "params removed"], right={1, 2, 3, 4, 5}
            )
        )
    amount, round_to = structure.config.get("amount"), structure.config.get("round_to") or 1
    if amount and round_to > 1:
        short = [g for g in structure.groups if not g.blocked and g.removed < int(amount * g.units) and g.units > 1]
        if short:
            untouched = [g for g in short if not g.removed]
            click.echo(
                f"--round-to {round_to}: {len(short)} group(s) lost fewer channels than --sparsity asks, so that "
                f"kept counts stay multiples of {round_to} (fast kernels); --round-to 1 for exact fractions"
                + (f"; {len(untouched)} of them lost none: {_names(untouched)}" if untouched else "")
            )
    blocked = structure.blocked
    if blocked:
        by_reason: dict[str, list[Any]] = {}
        for g in blocked:  # the same reason about different tensors is one line
            by_reason.setdefault(re.sub(r"'[^']*'", "'…'", shown(g.blocked).split(";")[0]), []).append(g)
        click.echo(f"\nchannel groups kept whole: {len(blocked)}")
        for groups in sorted(by_reason.values(), key=len, reverse=True):
            click.echo(
                f"  {len(groups)} x {shown(groups[0].blocked).split(';')[0]}"
                + (f" (also {_names(groups[1:])})" if len(groups) > 1 else "")
            )
    if structure.refits:
        click.echo("\nconsumers refitted (relative output error on the calibration data, before -> after refit):")
        for name, before, after in structure.refits:
            click.echo(f"  {name}: {before:.4f} -> {after:.4f}")
    notes = [g for g in structure.groups if g.note]
    for g in notes:
        click.echo(f"  {g.name}: {shown(g.note)}")
    for note in structure.notes:
        click.echo(f"note: {shown(note)}")
    if structure.exact_max_diff is not None:
        click.echo(
            f"\nexact: outputs before and after differ by at most {structure.exact_max_diff:.2g} (synthetic batch)"
        )
    if structure.cleanup is not None and structure.cleanup.bn_folded:
        click.echo(f"BatchNormalization folded into {len(structure.cleanup.bn_folded)} producer(s)")
    click.echo("")


def compressed_label(*sizes: Any) -> str:
    """ "compressed (deflate)", with the estimate's spread (2σ) when a size is estimated."""
    estimated = [s for s in sizes if s.compressed is not None and not s.compressed_exact]
    if not estimated:
        return "compressed (deflate)"
    spread = 200 * max(s.compressed_error for s in estimated)
    return f"compressed (deflate, est. ±{spread:.1f}%)"


def _names(groups: Sequence[Any], shown_at_most: int = 3) -> str:
    """The names of ``groups``, the first few, then how many more."""
    names = ", ".join(g.name for g in groups[:shown_at_most])
    return names + (f" and {len(groups) - shown_at_most} more" if len(groups) > shown_at_most else "")


def ratio(a: int | None, b: int | None) -> str:
    """``b / a`` as "0.51x", "-" when either is unknown (or ``a`` is 0)."""
    return f"{b / a:.2f}x" if a and b is not None else "-"


def print_summary(result, before, after, size_in, size_out, saved, quiet, structure=None) -> None:  # noqa: ANN001
    rows = [
        ["parameters", count(before.parameters), count(after.parameters), ratio(before.parameters, after.parameters)],
        ["non-zeros", count(before.nonzeros), count(after.nonzeros), ratio(before.nonzeros, after.nonzeros)],
        ["file size", human(size_in.bytes), human(size_out.bytes), ratio(size_in.bytes, size_out.bytes)],
        [
            compressed_label(size_in, size_out),
            human(size_in.compressed),
            human(size_out.compressed),
            ratio(size_in.compressed, size_out.compressed),
        ],
    ]
    changed = structure is not None and structure.changed
    if changed and structure.macs_before:
        rows.insert(
            2,
            [
                "MACs",
                count(structure.macs_before),
                count(structure.macs_after),
                ratio(structure.macs_before, structure.macs_after),
            ],
        )
    if not quiet:
        click.echo(table(rows, ["", "before", "after", "after/before"], right={1, 2, 3}))
    target = f"{saved.path}" + (f" (+ {saved.data_path.name})" if saved.data_path else "")
    if result.pruned:
        lead = "" if quiet else "\n"  # a blank line after the table; -q prints the summary line alone
        click.echo(
            f"{lead}pruned {len(result.pruned)} weight tensors: {count(result.zeros_after)} of "
            f"{count(result.weights_total)} weights are zero ({result.sparsity_after:.1%}; "
            f"{count(result.newly_zeroed)} newly zeroed) -> {target}"
        )
    reordered = getattr(result, "reordered", None) or {}
    if reordered.get("channels"):
        loss0, loss1 = float(reordered["loss_before"]), float(reordered["loss_after"])
        click.echo(
            f"reordered {count(int(reordered['channels']))} channels in {reordered['groups']} group(s) first, so the "
            f"{result.config.get('pattern')} pattern keeps more: its loss there {1 - loss1 / loss0:.1%} lower "
            "(the dense model is unchanged)"
        )
    blocks = getattr(result, "blocks", None) or {}
    if blocks:
        click.echo(block_line(blocks))
    if changed:
        groups = sum(1 for g in structure.groups if g.removed)
        click.echo(
            f"{'' if result.pruned else chr(10)}removed {structure.removed_units} channel unit(s) "
            f"({structure.dead_units} dead) from {groups} group(s); parameters {count(structure.params_before)} -> "
            f"{count(structure.params_after)} -> {target}"
        )
    if not quiet and result.pruned and not changed:
        click.echo(
            "note: zeros inside dense tensors shrink the compressed size, not the latency: onnxruntime "
            "runs them as dense (removing whole channels is what makes a model faster)."
        )


def print_prediction(predicted: Any, output: Any, quiet: bool, *, layers: bool) -> None:
    """``prune --dry-run``'s prediction (:class:`onnxprune.dry_run.DryRun`): the per-layer table
    (``layers``), the channel pass, the before/after table, what calibration would capture, the
    notes (all but the last line with ``quiet``), and one line on what ``output`` would hold."""
    run = predicted.run
    if not quiet and layers:
        print_layers(run.result)
    if run.structure is not None and run.structure.changed:
        print_structure(run.structure, quiet)

    def counted(n: int | None) -> str:
        return count(n) if n is not None else "-"

    (sin, sout), (m0, m1), (n0, n1) = predicted.compressed, predicted.macs, predicted.nonzero_macs
    before, after = run.params_before, run.params_after
    size_in, size_out = (sin.bytes if sin else None), (sout.bytes if sout else None)
    rows = [
        ["parameters", count(before.parameters), count(after.parameters), ratio(before.parameters, after.parameters)],
        ["non-zeros", count(before.nonzeros), count(after.nonzeros), ratio(before.nonzeros, after.nonzeros)],
        ["MACs", counted(m0), counted(m1), ratio(m0, m1)],
        ["non-zero MACs", counted(n0), counted(n1), ratio(n0, n1)],
        ["compressed (deflate, est.)", human(size_in), human(size_out), ratio(size_in, size_out)],
    ]
    if not quiet:
        click.echo("\n" + table(rows, ["predicted", "before", "after", "after/before"], right={1, 2, 3}))
        capture = predicted.capture
        if capture is not None:
            click.echo(
                f"\ncalibration would capture {capture.layers} layer(s) in {len(capture.waves)} wave(s) "
                f"(statistics of the largest wave: {human(capture.peak_statistics_bytes)}):"
            )
            layer_rows = [
                [
                    str(i + 1),
                    layer.weight,
                    layer.op,
                    f"{layer.groups}x{layer.rows}x{layer.cols}",
                    human(layer.statistics_bytes),
                ]
                for i, wave in enumerate(capture.waves)
                for layer in wave
            ]
            click.echo(table(layer_rows, ["wave", "weight", "op", "groups x rows x cols", "statistics"], right={0, 4}))
            for weight, why in capture.fallback.items():
                click.echo(f"  magnitude (fallback): {weight}: {shown(why)}")
        for note in predicted.notes:
            click.echo(f"note: {shown(note)}")
    zeros = after.parameters - after.nonzeros
    click.echo(
        f"dry run: nothing written; {output} would hold {count(after.parameters)} parameters "
        f"({ratio(before.parameters, after.parameters)} of the input's), {count(zeros)} of them zero "
        f"({zeros / max(after.parameters, 1):.1%})"
    )


def block_line(blocks: dict) -> str:
    """One line on block reconstruction: blocks fitted, their held-out error, why others were not."""
    fitted, skipped = int(blocks.get("fitted", 0)), int(blocks.get("skipped", 0))
    text = f"block reconstruction ({blocks.get('epochs')} epochs): fitted {fitted} block(s)"
    if not fitted and not skipped:
        return text + ": found none (no calibrated weight of the main graph)"
    if fitted:
        before, after = float(blocks["error_before"]), float(blocks["error_after"])
        text += f", their relative output errors on held-out batches (summed) {before:.4g} -> {after:.4g}"
        if before > 0:
            text += f" ({1 - after / before:.1%} lower)"
    if skipped:
        reasons = sorted({str(r["skipped"]).split(" (")[0] for r in blocks.get("records", []) if r.get("skipped")})
        text += f"; skipped {skipped}: {'; '.join(reasons)}"
    return text
