"""``onnxprune analyze``: per-layer sensitivity curves and a per-layer plan (only the CLI prints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import click
import numpy as np

from onnxprune import cli_choices
from onnxprune.console import ProgressBar, command_json_stdout, count, handle_errors, table
from onnxprune.envelope import envelope, is_stdout, write_json
from onnxprune.errors import OptionError, opt
from onnxprune.graph.model_io import load_model, model_reads
from onnxprune.graph.outputs import Read, Write, check_folder, check_outputs, write_file

SHOWN_LEVELS = (0.3, 0.5, 0.7, 0.9)
LAYER_LEVELS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
GROUP_LEVELS = (0.25, 0.5, 0.75)
MAX_TIGHTEN = 6


def _levels(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OptionError(f"--levels takes comma-separated fractions such as 0.1,0.3,0.5; got '{text}'") from None


def _check_files(
    model: Path,
    writes: list[Write],
    data: str | None,
    labels: str | None,
    cache: Path | None,
) -> None:
    """The output policy before any work (:mod:`onnxprune.graph.outputs`): every output a
    regular file or new, in a folder that takes files, none of them an input (the model, its
    external data, the data, the labels) or another output; the cache folder can be made."""
    reads = [
        *model_reads("the model", model, writes=writes),
        Read(f"the {opt('data')} file", data),
        Read(f"the {opt('labels')} file", labels),
    ]
    check_outputs(writes, reads)
    if cache is not None:
        check_folder(cache, name=f"the {opt('cache_dir')} folder")


def _open(model: Path, data: str | None, data_free: bool, samples: int, shapes: dict, axes: dict) -> Any:
    import onnxprune

    if data is None and not data_free:
        return None
    return onnxprune.calibration_data(
        model, data, samples=samples, data_free=data_free, input_shapes=shapes, batch_axes=axes
    )


@click.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", metavar="PATH", help="Data to measure the loss on (.npz keyed by input name, or images).")
@click.option("--labels", metavar="PATH", help="Labels of --data: the loss is then the top-1 accuracy drop.")
@click.option("--data-free", is_flag=True, help="Measure fidelity on generated inputs instead of --data.")
@click.option("--samples", type=int, default=256, show_default=True, help="Samples of --data used.")
@click.option(
    "--method",
    type=cli_choices.analyze_methods(),
    default="magnitude",
    show_default=True,
    help="How each layer is pruned for its curve (calibrated methods calibrate on --data).",
)
@click.option("--levels", default=LAYER_LEVELS, show_default=True, help="Sparsities (structural: 0.25,0.5,0.75).")
@click.option("--min-size", type=int, default=256, show_default=True, help="Skip tensors with fewer elements.")
@click.option("--workers", type=int, help="Worker processes (default: the CPU count).")
@click.option("--ray", "ray_address", metavar="ADDRESS", help="Run the tasks on a Ray cluster ('local' starts one).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where curves are cached (default ~/.cache).")
@click.option("--no-cache", is_flag=True, help="Measure again, do not read or write the cache.")
@click.option(
    "--structural",
    is_flag=True,
    help="Curves of channel groups (loss, measured latency saved, MACs saved) instead of weights; needs data.",
)
@click.option("--target-sparsity", type=float, help="Plan: reach this overall sparsity with the least loss.")
@click.option("--target-latency", type=float, help="Structural plan: keep this fraction of the latency.")
@click.option("--target-flops", type=float, help="Plan: keep this fraction of the MACs (non-zero MACs for weights).")
@click.option("--max-loss", type=float, help="Plan: the highest overall sparsity whose loss stays below this.")
@click.option("--plan-out", type=cli_choices.OutputFile(), help="Write the plan for `onnxprune prune --plan`.")
@click.option("--json", "json_path", type=cli_choices.OutputFile(), help="Write the curves and the plan as JSON.")
@click.option("--report", type=cli_choices.OutputFile(), help="Write the curves and the plan as an HTML page.")
@click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224", help="Shape of an input for --data-free.")
@click.option("--batch-axis", multiple=True, metavar="NAME:AXIS", help="The batch axis of an input (state:1, sr:none).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def analyze_command(
    model: Path,
    data: str | None,
    labels: str | None,
    data_free: bool,
    samples: int,
    method: str,
    levels: str,
    min_size: int,
    workers: int | None,
    ray_address: str | None,
    cache_dir: Path | None,
    no_cache: bool,
    structural: bool,
    target_sparsity: float | None,
    target_latency: float | None,
    target_flops: float | None,
    max_loss: float | None,
    plan_out: Path | None,
    json_path: Path | None,
    report: Path | None,
    input_shape: tuple[str, ...],
    batch_axis: tuple[str, ...],
    quiet: bool,
    verbose: bool,
    debug: bool,
) -> None:
    """Per-layer sensitivity curves of MODEL, and a per-layer plan from them.

    \b
    Without data each curve is the relative weight error of magnitude pruning; with --data
    each layer is pruned alone at every level and the loss measured (accuracy drop with
    --labels, else 1 - cosine to the dense outputs). Curves are cached, so a rerun is instant.

    \b
    Examples:
      onnxprune analyze model.onnx --data calib.npz --target-sparsity 0.6 --plan-out plan.json
      onnxprune analyze model.onnx --data val.npz --labels y.npy --max-loss 0.01 --plan-out plan.json
      onnxprune prune model.onnx pruned.onnx --plan plan.json
    """
    from onnxprune.data import load_labels
    from onnxprune.runtime import parse_input_shapes, reads_model
    from onnxprune.sensitivity.executors import executor_for
    from onnxprune.sensitivity.planning import plan_from, tightened_until
    from onnxprune.sensitivity.sweep import analyze_groups, analyze_sensitivity, default_cache_dir

    targets = [t for t in (target_sparsity, target_latency, target_flops, max_loss) if t is not None]
    if len(targets) > 1:
        raise OptionError("give one of --target-sparsity, --target-latency, --target-flops and --max-loss, not several")
    if target_flops is not None and not 0.0 < target_flops < 1.0:
        raise OptionError(f"--target-flops is the fraction of the MACs to keep, in (0, 1); got {target_flops}")
    if target_latency is not None and not structural:
        raise OptionError("--target-latency plans channel groups: add --structural")
    if target_latency is not None and not 0.0 < target_latency < 1.0:
        raise OptionError(f"--target-latency is the fraction of the latency to keep, in (0, 1); got {target_latency}")
    if structural and data is None and not data_free:
        raise OptionError("--structural measures each group's loss on data: give --data or --data-free")
    if max_loss is not None and data is None and not data_free:
        raise OptionError("--max-loss needs --data (or --data-free) to measure the loss on")
    if labels and data is None:
        raise OptionError("--labels needs --data")
    if samples < 1:
        raise OptionError(f"--samples must be >= 1, got {samples}")
    if plan_out is not None and not targets:
        raise OptionError("--plan-out needs --target-sparsity, --target-latency, --target-flops or --max-loss")
    cache = None if no_cache else (cache_dir or default_cache_dir())
    writes = [
        Write(opt("plan_out"), plan_out, example="plan.json"),
        Write(opt("json"), None if is_stdout(json_path) else json_path, example="curves.json"),
        Write(opt("report"), report, example="curves.html"),
    ]
    _check_files(model, writes, data, labels, cache)
    stdout = command_json_stdout(json_path)
    load_model(model)  # one-line errors for a missing or broken file, before any work
    shapes = parse_input_shapes(input_shape)
    reads_model(model, shapes)
    from onnxprune.batch_axes import parse_batch_axes

    dataset = _open(model, data, data_free, samples, shapes, parse_batch_axes(batch_axis))
    label_array = None
    if labels:
        label_array = load_labels(labels, num_samples=None)
        used = dataset.num_samples() if dataset is not None else None
        if used is not None:
            if len(label_array) < used:
                raise OptionError(f"{labels} has {len(label_array)} labels for {used} samples of --data")
            label_array = label_array[:used]  # --samples takes the first samples: their labels
    executor = executor_for(workers=workers, ray=ray_address)
    goal = {
        name: value
        for name, value in (
            ("target_sparsity", target_sparsity),
            ("target_latency", target_latency),
            ("target_flops", target_flops),
            ("max_loss", max_loss),
        )
        if value is not None
    }
    used = {
        "data": str(data) if data is not None else ("generated (--data-free)" if data_free else None),
        "labels": str(labels) if labels else None,
        "samples": dataset.num_samples() if dataset is not None else None,
    }
    if structural:
        with ProgressBar("analysing channel groups", quiet) as progress:
            sens = analyze_groups(
                model,
                data=dataset,
                labels=label_array,
                levels=_levels(levels) if levels != LAYER_LEVELS else GROUP_LEVELS,
                input_shapes=shapes or None,
                executor=executor,
                cache_dir=cache,
                progress=progress,
            )
        _finish_groups(
            model,
            sens,
            dataset,
            label_array,
            (target_sparsity, target_latency, target_flops, max_loss),
            plan_out,
            json_path,
            report,
            quiet,
            goal=goal,
            used=used,
            stdout=stdout,
        )
        return
    with ProgressBar("analysing layers", quiet) as progress:
        sens = analyze_sensitivity(
            model,
            data=dataset,
            labels=label_array,
            calibration=dataset if method != "magnitude" else None,
            method=method,
            levels=_levels(levels),
            min_size=min_size,
            executor=executor,
            cache_dir=cache,
            progress=progress,
        )
    if not quiet:
        _print_curves(sens)
    plan = None
    measured = None
    if target_sparsity is not None or max_loss is not None or target_flops is not None:
        plan = plan_from(sens, target=target_sparsity, max_loss=max_loss, keep_flops=target_flops, model_path=model)
        if max_loss is not None and dataset is not None:
            plan, measured = tightened_until(model, sens, plan, max_loss, data=dataset, labels=label_array)
        click.echo(
            f"plan: {plan.fraction:.1%} of the analysed weights zero, predicted loss {plan.predicted_loss:.4f}"
            + (f", measured {measured:.4f}" if measured is not None else "")
        )
        if plan_out is not None:
            write_file(
                json.dumps(plan.sparsity, indent=1, sort_keys=True) + "\n", plan_out, what="plan", example="plan.json"
            )
            click.echo(f"plan written to {plan_out}: onnxprune prune {model} OUT --plan {plan_out}")
    _write_outputs(sens, plan, measured, json_path, report, goal=goal, source=used, stdout=stdout)
    source = "cache" if sens.cached else f"{sens.seconds:.1f} s"
    click.echo(f"{len(sens.curves)} layer(s) analysed ({sens.curves[0].kind}; {source})")


def _write_outputs(
    sens: Any,
    plan: Any,
    measured: float | None,
    json_path: Path | None,
    report: Path | None,
    *,
    goal: dict[str, float],
    source: dict[str, Any],
    stdout: TextIO | None = None,
) -> None:
    """The analysis as JSON and HTML: the curves, the plan, the goal it was made for
    (``{"target_latency": 0.7}``…) and the data the losses were measured on."""
    analysis = sens.to_dict()
    analysis["cache_version"] = analysis.pop("version")  # the envelope's "version" is the tool's
    data = envelope(
        "analyze",
        {
            **analysis,
            "plan": plan.to_json() if plan is not None else None,
            "measured_loss": measured,
            "goal": goal,
            "source": source,
        },
    )
    if json_path is not None:
        write_json(data, json_path, stdout=stdout, example="analysis.json")
    if report is not None:
        from onnxprune.report.sensitivity import write_sensitivity_report

        if data["options"].get("structural"):
            data = {**data, "groups": data.pop("curves"), "curves": []}
        write_sensitivity_report(data, report)
        click.echo(f"report: {report}")


def _print_curves(sens: Any) -> None:
    rows = []
    for curve in sens.curves:
        levels = np.asarray(curve.levels)
        cells = []
        for level in SHOWN_LEVELS:
            hit = np.flatnonzero(np.isclose(levels, level))
            cells.append(f"{curve.loss[hit[0]]:.4f}" if hit.size else "-")
        rows.append([curve.weight, count(curve.size), *cells])
    header = ["weight", "size", *(f"loss@{level:g}" for level in SHOWN_LEVELS)]
    click.echo(table(rows, header, right=set(range(1, len(header)))))


def _finish_groups(
    model: Path,
    sens: Any,
    dataset: Any,
    labels: Any,
    targets: tuple[float | None, float | None, float | None, float | None],
    plan_out: Path | None,
    json_path: Path | None,
    report: Path | None,
    quiet: bool,
    *,
    goal: dict[str, float],
    used: dict[str, Any],
    stdout: TextIO | None = None,
) -> None:
    from onnxprune.sensitivity.planning import plan_groups, tightened_groups

    if not quiet:
        rows = []
        for c in sens.curves:
            for level, loss, lat, macs in zip(
                c.levels[1:], c.loss[1:], c.latency_saved[1:], c.macs_saved[1:], strict=True
            ):
                rows.append([c.weight, c.size, f"{level:g}", f"{loss:.4f}", f"{lat:+.1%}", f"{macs:.1%}"])
        header = ["channel group", "units", "removed", "loss", "latency saved", "MACs saved"]
        click.echo(table(rows, header, right={1, 2, 3, 4, 5}))
    target, keep_latency, keep_flops, max_loss = targets
    plan, measured = None, None
    if any(t is not None for t in targets):
        plan = plan_groups(sens, target=target, keep_latency=keep_latency, keep_flops=keep_flops, max_loss=max_loss)
        if max_loss is not None:
            plan, measured = tightened_groups(model, sens, plan, max_loss, data=dataset, labels=labels)
        click.echo(
            f"plan: {len(plan.sparsity)} group(s), predicted loss {plan.predicted_loss:.4f}"
            + (f", measured {measured:.4f}" if measured is not None else "")
            + (f", predicted latency kept {1 - plan.removed:.0%}" if keep_latency is not None else "")
            + (f", predicted MACs kept {1 - plan.removed:.0%}" if keep_flops is not None else "")
        )
        if plan_out is not None:
            write_file(
                json.dumps(plan.sparsity, indent=1, sort_keys=True) + "\n", plan_out, what="plan", example="plan.json"
            )
            click.echo(f"plan written to {plan_out}: onnxprune prune {model} OUT --structured --plan {plan_out}")
    _write_outputs(sens, plan, measured, json_path, report, goal=goal, source=used, stdout=stdout)
    source = "cache" if sens.cached else f"{sens.seconds:.1f} s"
    click.echo(f"{len(sens.curves)} channel group(s) analysed ({sens.curves[0].kind}; {source})")
