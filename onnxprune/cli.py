"""The ``onnxprune`` command line. It, cli_eval.py and cli_print.py are the only modules that print (with console.py).

Exit codes: 0 success; 1-7 an error (one line on stderr, see :mod:`onnxprune.errors`);
10 nothing to prune (no output written); 70 an internal error (a bug: rerun with --debug); 130, 143,
129 stopped by SIGINT, SIGTERM, SIGHUP (a file being written is removed, see console.py).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import click
import onnx
from click.core import ParameterSource

import onnxprune
from onnxprune import allocator, cli_choices
from onnxprune import recipe as recipes
from onnxprune.batch_axes import batch_axes, parse_batch_axes
from onnxprune.cli_eval import build_options, evaluation_files, evaluation_options, run_evaluation
from onnxprune.cli_print import (
    format_shape,
    print_layers,
    print_prediction,
    print_quantized,
    print_structure,
    print_summary,
    reason_counts,
    shown,
)
from onnxprune.config import MAX_BLOCK_EPOCHS, PruneConfig, Selection, StructureConfig, load_plan, parse_pattern
from onnxprune.console import Interrupted, ProgressBar, command_json_stdout, count, fail, handle_errors, table
from onnxprune.envelope import envelope, is_stdout, write_json
from onnxprune.errors import opt
from onnxprune.graph.model_io import SavedModel, load_model, model_reads, model_writes
from onnxprune.graph.outputs import Read, Write, check_outputs
from onnxprune.passes.pipeline import PruneRun, after_weights
from onnxprune.recipe_run import RecipeRun, run_recipe
from onnxprune.row_sampling import ROWS_PER_COL
from onnxprune.runtime import declared_dims, guessed_dims, parse_input_shapes, reads_model, shape_hint
from onnxprune.stats import FileStatsAhead, both_file_stats

NOTHING_TO_PRUNE = 10
#: Above this size the deflate size is only computed on request (it reads the whole file).


common_discovery = [
    click.option(
        "--include", multiple=True, metavar="RE", help="Only weights whose tensor or node name matches (repeatable)."
    ),
    click.option(
        "--exclude", multiple=True, metavar="RE", help="Skip weights whose tensor or node name matches (repeatable)."
    ),
    click.option("--op-types", default="", metavar="OPS", help="Only weights read by these ops, e.g. Conv,MatMul."),
    click.option("--min-size", type=int, default=256, show_default=True, help="Skip tensors with fewer elements."),
]


def discovery_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(common_discovery):
        func = option(func)
    return func


def _op_types(text: str) -> tuple[str, ...]:
    return tuple(op.strip() for op in text.split(",") if op.strip())


def _capture_rows(text: str) -> int | None:
    """``--capture-rows``: an integer (rows per sample per column), or "all" (None: every row)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise onnxprune.OptionError(f"--capture-rows takes an integer >= 1 or 'all', got '{text}'") from None


#: click >= 8.2 raises this for a bare group command; 8.1 prints the help and exits 0 itself.
_NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    error for error in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if error is not None
)


#: Commands defined in their own modules, imported when one of them is run or listed (the
#: evaluator and the viewer bring onnxruntime and the report pages, which ``prune`` does not need).
_LAZY_COMMANDS = {
    "analyze": "onnxprune.cli_analyze:analyze_command",
    "eval": "onnxprune.cli_eval:eval_command",
    "view": "onnxprune.cli_view:view_command",
}


class _Group(click.Group):
    """A click group whose usage errors are one line on stderr, like every other error, and
    whose commands in :data:`_LAZY_COMMANDS` load on first use."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted({*self.commands, *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY_COMMANDS:
            module, name = _LAZY_COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return self.commands.get(cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        allocator.tune()  # the process is the command's: freed buffers reused, not unmapped
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.UsageError as exc:
            command = exc.ctx.command if exc.ctx else None
            where = "" if command is None or command is self else f" {command.name}"  # the group: onnxprune --help
            hint = f" (see 'onnxprune{where} --help')" if command is not None else ""
            fail(f"{exc.format_message()}{hint}", 2)
        except click.exceptions.Abort:
            fail("aborted; nothing was written", 130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)


class SectionedCommand(click.Command):
    """A click command whose ``--help`` lists its options in titled sections, in a stated order.

    ``sections`` pairs each title with the parameter names of the options it holds, in the order they
    are listed; the help option closes the last section, and the first column is as wide in every
    section. An option in no section is still listed, under "Other options", and :meth:`ungrouped`
    names it (the tests require there be none).
    """

    def __init__(self, *args: Any, sections: Sequence[tuple[str, Sequence[str]]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (title, tuple(names)) for title, names in sections
        )

    def ungrouped(self) -> list[str]:
        """The parameter names of the options that are in no section."""
        grouped = {name for _, names in self.sections for name in names}
        return [p.name or "" for p in self.params if isinstance(p, click.Option) and p.name not in grouped]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        place = {name: (title, i) for title, names in self.sections for i, name in enumerate(names)}
        after = ("Other options", len(place))  # after the listed ones, in declaration order (a stable sort)
        help_option = self.get_help_option(ctx)
        rows: dict[str, list[tuple[int, str, str]]] = {title: [] for title, _ in self.sections}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or not isinstance(param, click.Option):
                continue
            if param is help_option:
                title, index = (self.sections[-1][0] if self.sections else after[0]), after[1]
            else:
                title, index = place.get(param.name or "", after)
            rows.setdefault(title, []).append((index, *record))
        width = min(max((len(term) for records in rows.values() for _, term, _ in records), default=0), 30)
        for title, records in rows.items():
            if records:
                records.sort(key=lambda row: row[0])
                with formatter.section(title):
                    formatter.write_dl([(term.ljust(width), text) for _, term, text in records])


#: The sections of ``prune --help``, in order, each with the parameter names of its options.
PRUNE_HELP_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Selection", ("include", "exclude", "op_types", "min_size", "allow_nonfinite")),
    (
        "Amount and pattern",
        (
            "sparsity",
            "scope",
            "allocation",
            "criterion",
            "pattern",
            "nm_fallback",
            "permute",
            "plan_path",
            "recipe_path",
            "max_layer_sparsity",
            "seed",
        ),
    ),
    (
        "Method and calibration",
        (
            "method",
            "calibration",
            "samples",
            "data_free",
            "bias_correction",
            "parallel",
            "percdamp",
            "no_exact_refit",
            "capture_rows",
            "block_epochs",
            "workers",
            "ray_address",
        ),
    ),
    (
        "Structural",
        (
            "structured",
            "target_flops",
            "dead_channels",
            "importance",
            "round_to",
            "max_group_sparsity",
            "no_refit",
            "no_fold",
        ),
    ),
    ("Quantize", ("quantize", "quantize_mode")),
    (
        "Evaluation",
        (
            "do_eval",
            "data",
            "labels",
            "output_name",
            "report",
            "eval_json",
            "batch_size",
            "eval_samples",
            "threads",
            "providers",
            "warmup",
            "repeats",
            "latency_budget",
            "latency_batch",
            "no_latency",
            "memory",
            "image_size",
            "crop",
            "mean",
            "std",
            "scale",
            "layout",
            "channels",
            "image_input",
        ),
    ),
    (
        "Output",
        (
            "input_shape",
            "batch_axis",
            "external_data",
            "force",
            "dry_run",
            "validate",
            "compressed_size",
            "json_path",
            "quiet",
            "verbose",
            "debug",
        ),
    ),
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(onnxprune.__version__, prog_name="onnxprune")
def main() -> None:
    """Post-training pruning of ONNX models, without the framework that made them."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@discovery_options
@click.option("--all", "show_all", is_flag=True, help="Also list biases, norm parameters and embeddings.")
@click.option("--json", "json_path", type=cli_choices.OutputFile(), help="Write the full inventory as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def inspect(
    model: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    op_types: str,
    min_size: int,
    show_all: bool,
    json_path: Path | None,
    verbose: bool,
    debug: bool,
) -> None:
    """List the weights of MODEL that can be pruned, and what is excluded and why."""
    reads_model(model)
    writes = [Write(opt("json"), None if is_stdout(json_path) else json_path, example="inventory.json")]
    check_outputs(writes, model_reads("the model", model, writes=writes))
    stdout = command_json_stdout(json_path)
    selection = Selection(min_size=min_size, include=include, exclude=exclude, op_types=_op_types(op_types))
    proto = load_model(model)  # read once: the inventory and the inputs
    inventory = onnxprune.inspect(proto, selection)
    listed = [w for w in inventory.weights if show_all or w.role in ("weight", "mixed")]
    rows = [
        [
            w.key,
            "/".join(w.ops) or w.role,
            format_shape(w.shape),
            w.dtype,
            w.storage,
            f"{w.sparsity:.1%}",
            "prune" if w.prunable else f"skip: {shown(w.reason)}",
        ]
        for w in listed
    ]
    click.echo(table(rows, ["weight", "op", "shape", "dtype", "stored as", "zeros", "status"], right={5}))
    prunable = inventory.prunable
    params = sum(w.numel for w in prunable)
    click.echo(
        f"\n{len(prunable)} prunable weight tensors ({count(params)} weights, "
        f"{sum(w.zeros for w in prunable) / max(params, 1):.1%} already zero), ops: "
        + (", ".join(f"{op} {n}" for op, n in Counter(op for w in prunable for op in w.ops).most_common()) or "none")
    )
    skipped = inventory.skipped
    if skipped:
        click.echo(
            f"not pruned: {len(skipped)} tensors ({reason_counts(skipped)})"
            + ("" if show_all else "; --all lists them")
        )
    inputs = input_table(proto)
    if inputs:
        click.echo("\n" + table([[i["name"], i["declared"], i["batch"], i["needs"]] for i in inputs],
                                 ["input", "declared", "batch axis", "synthetic data needs"]))  # fmt: skip
    if json_path:
        weights = [_weight_json(w) for w in inventory.weights]
        _write_json(json_path, "inspect", {"model": str(model), "weights": weights, "inputs": inputs}, stdout)


def input_table(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Each graph input of ``model``: its declared dims, its batch axis (as data is read,
    :mod:`onnxprune.batch_axes`) and the ``--input-shape`` a synthetic input needs (dims
    onnxprune would otherwise guess); real data needs none."""
    from onnxprune.data.layout import format_dims

    declared = declared_dims(model)
    axes = batch_axes(declared)
    guessed = guessed_dims(declared, {})
    rows = []
    for name, dims in declared.items():
        axis = axes[name]
        batch = (
            "none (one value per run)" if axis is None else "undecided: give --batch-axis" if axis < 0 else str(axis)
        )
        needs = f"--input-shape {name}:{shape_hint(dims, axis)} (else guessed)" if name in guessed else ""
        shown = format_dims(dims) if dims else "scalar"
        rows.append({"name": name, "declared": shown, "batch": batch, "needs": needs, "dims": list(dims)})
    return rows


def _weight_json(w: onnxprune.Weight) -> dict[str, Any]:
    return {
        "key": w.key,
        "name": w.name,
        "scope": w.scope,
        "storage": w.storage,
        "role": w.role,
        "ops": list(w.ops),
        "nodes": list(w.nodes),
        "shape": list(w.shape),
        "dtype": w.dtype,
        "out_axis": w.out_axis,
        "in_axis": w.in_axis,
        "numel": w.numel,
        "zeros": w.zeros,
        "sparsity": w.sparsity,
        "prunable": w.prunable,
        "reason": w.reason,
    }


def _write_json(path: Path, command: str, data: dict[str, Any], stdout: TextIO | None) -> None:
    write_json(envelope(command, data), path, stdout=stdout, example=f"{command}.json")


@main.command(cls=SectionedCommand, sections=PRUNE_HELP_SECTIONS)
@click.argument("input_model", metavar="IN", type=click.Path(path_type=Path))
@click.argument("output_model", metavar="OUT", type=cli_choices.OutputFile())
@click.option("--sparsity", type=float, help="Fraction of weights that are zero afterwards, in [0, 1).")
@click.option(
    "--scope",
    type=click.Choice(["local", "global"]),
    default="local",
    show_default=True,
    help="local: every tensor gets --sparsity; global: one threshold across tensors.",
)
@click.option(
    "--allocation",
    type=click.Choice(["uniform", "curves"]),
    help="How a local --sparsity is split among calibrated layers: uniform (each the same) or curves (each its "
    "own, from its error curve weighted by a probe of the outputs; the overall count is kept). "
    "Default: curves with --method wanda/sparsegpt/admm/refit, else uniform. With --structured: uniform (--sparsity of "
    "each channel group) or curves (--sparsity of the parameters, or --target-flops, spread over the groups by "
    "their measured loss, consumers refitted; default with --calibration).",
)
@click.option(
    "--criterion",
    type=cli_choices.criteria(),
    default="magnitude",
    show_default=True,
    help="What to prune first; lamp = layer-adaptive magnitude (for --scope global).",
)
@click.option(
    "--pattern",
    default="unstructured",
    show_default=True,
    help="unstructured, or N:M such as 2:4 along the reduction axis.",
)
@click.option(
    "--nm-fallback",
    type=click.Choice(["unstructured", "skip"]),
    default="unstructured",
    show_default=True,
    help="For tensors whose reduction length is not a multiple of M.",
)
@click.option(
    "--permute",
    is_flag=True,
    help="With --pattern N:M: reorder channels first so the pattern keeps more (the dense model is unchanged).",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path),
    help="JSON {weight name: sparsity} overriding --scope.",
)
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(path_type=Path),
    help="Stages of pruning (JSON or YAML: targets/ignore and the options of these flags by their API names), "
    "or a pruned model to replay the recipe it was made with, by flags or by recipe (see `onnxprune recipe`); "
    "it replaces the flags of the amount, method and channels.",
)
@discovery_options
@click.option(
    "--max-layer-sparsity",
    type=float,
    default=0.98,
    show_default=True,
    help="Cap per tensor with --scope global or --allocation curves.",
)
@click.option(
    "--allow-nonfinite",
    is_flag=True,
    help="Prune a model whose weights hold NaN or inf, leaving those tensors as they are (default: refuse it).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of --criterion random and of the calibration rows drawn on large inputs (--capture-rows).",
)
@click.option(
    "--method",
    type=cli_choices.methods(),
    default="magnitude",
    show_default=True,
    help="magnitude needs no data; wanda, sparsegpt, admm (unstructured, the most accurate) and refit (magnitude "
    "mask + least squares) calibrate each layer.",
)
@click.option(
    "--calibration", metavar="PATH", help="Calibration data: .npz keyed by input name, or a folder of images."
)
@click.option("--samples", type=int, default=128, show_default=True, help="Calibration samples used.")
@click.option("--data-free", is_flag=True, help="Calibrate on generated inputs (procedural images, token ids).")
@click.option("--bias-correction", is_flag=True, help="Keep each output's mean: b' = b + (W - W_pruned)·E[x].")
@click.option(
    "--parallel", is_flag=True, help="Calibrate every layer on the dense model (one pass; faster, less exact)."
)
@click.option(
    "--percdamp",
    type=float,
    help="Ridge damping of the solvers (default 0.1; 1.0 with --data-free; a recurrent R: chosen closed loop).",
)
@click.option(
    "--no-exact-refit",
    is_flag=True,
    help="SparseGPT: keep its greedy weight updates (default: the kept weights solved exactly for its mask).",
)
@click.option(
    "--capture-rows",
    metavar="K|all",
    default=str(ROWS_PER_COL),
    show_default=True,
    help="Calibration statistics use at most max(K·cols, 1024) random input rows (conv positions, tokens) of "
    "each sample per layer, weighted to stay unbiased; 'all': every row (slow on large images).",
)
@click.option(
    "--block-epochs",
    type=click.IntRange(0, MAX_BLOCK_EPOCHS),
    default=0,
    show_default=True,
    help="After the layer solves, fit each block (e.g. a transformer layer) to its dense output for N passes "
    "over the calibration data (0: off; about 12 helps, slow).",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Solve the layers of each calibration wave in N worker processes (same result, bit for bit).",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    help="Solve the layers of each calibration wave on a Ray cluster ('local' starts one); needs onnxprune[ray].",
)
@click.option(
    "--structured",
    is_flag=True,
    help="Remove whole channels (filters, neurons, heads): --sparsity is the fraction of each channel group "
    "(with --calibration: of the parameters, spread by measured loss; see --allocation).",
)
@click.option(
    "--target-flops", type=float, help="Structured: keep at most this fraction of the MACs (implies --structured)."
)
@click.option(
    "--dead-channels/--no-dead-channels",
    default=None,
    help="Remove channels that are constant wherever they are read (exact; default: on, after any pruning).",
)
@click.option(
    "--importance",
    type=cli_choices.importances(),
    default="auto",
    show_default=True,
    help="Structured: channel importance; error needs calibration data; auto = error with data, else l2.",
)
@click.option(
    "--round-to",
    type=int,
    default=8,
    show_default=True,
    help="Structured: kept channel counts a multiple of N (fast kernels); 1 for exact fractions.",
)
@click.option(
    "--max-group-sparsity",
    type=float,
    default=0.9,
    show_default=True,
    help="Structured: most of a channel group that may go.",
)
@click.option("--no-refit", is_flag=True, help="Structured: with data, only fold removed channels' means (no refit).")
@click.option("--no-fold", is_flag=True, help="Structural pass: keep BatchNormalization and the graph as they are.")
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    help="Then quantize the weights to int8 (symmetric: pruned zeros stay zero); OUT is the pruned+int8 model.",
)
@click.option(
    "--quantize-mode",
    type=click.Choice(["dynamic", "static"]),
    help="dynamic (default): activations quantized at run time; static: QDQ, activation ranges from "
    "--calibration/--data-free.",
)
@click.option(
    "--input-shape",
    multiple=True,
    metavar="NAME:1x3x224x224",
    help="Shape of an input for validation and channel analysis (repeatable).",
)
@click.option(
    "--batch-axis",
    multiple=True,
    metavar="NAME:AXIS",
    help="The batch axis of an input whose axis is not inferred (state:1, sr:none) (repeatable).",
)
@click.option("--external-data", is_flag=True, help="Store weights in OUT.data next to OUT (automatic above 1.8 GB).")
@click.option("--force", is_flag=True, help="Allow OUT to replace IN (still atomic, after validation).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write nothing: print the per-layer table, predicted non-zeros, MACs and compressed size, and what "
    "calibration would capture (--json - prints it as JSON).",
)
@click.option(
    "--no-validate",
    "validate",
    is_flag=True,
    flag_value=False,
    default=True,
    help="UNSAFE: write OUT without validating it (no checker, no onnxruntime run); for pipelines "
    "that validate it themselves.",
)
@click.option(
    "--compressed-size/--no-compressed-size",
    default=None,
    help="Deflate sizes: exact (every byte deflated, ~25 MB/s), or with --no-compressed-size none "
    "(default: estimated from 3 MiB of sampled blocks, about ±1 %).",
)
@click.option("--json", "json_path", type=cli_choices.OutputFile(), help="Write the full report as JSON.")
@click.option(
    "--eval",
    "do_eval",
    is_flag=True,
    help="Evaluate OUT against IN afterwards (implied by --data, --labels, --report, --eval-json).",
)
@evaluation_options(for_prune=True)
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary line.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def prune(
    input_model: Path,
    output_model: Path,
    sparsity: float | None,
    scope: str,
    allocation: str | None,
    criterion: str,
    pattern: str,
    nm_fallback: str,
    permute: bool,
    plan_path: Path | None,
    recipe_path: Path | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    op_types: str,
    min_size: int,
    max_layer_sparsity: float,
    allow_nonfinite: bool,
    seed: int,
    method: str,
    calibration: str | None,
    samples: int,
    data_free: bool,
    bias_correction: bool,
    parallel: bool,
    percdamp: float | None,
    no_exact_refit: bool,
    capture_rows: str,
    block_epochs: int,
    workers: int,
    ray_address: str | None,
    structured: bool,
    target_flops: float | None,
    dead_channels: bool | None,
    importance: str,
    round_to: int,
    max_group_sparsity: float,
    no_refit: bool,
    no_fold: bool,
    quantize: str | None,
    quantize_mode: str | None,
    input_shape: tuple[str, ...],
    batch_axis: tuple[str, ...],
    external_data: bool,
    force: bool,
    dry_run: bool,
    validate: bool,
    compressed_size: bool | None,
    json_path: Path | None,
    do_eval: bool,
    quiet: bool,
    verbose: bool,
    debug: bool,
    **eval_kwargs: Any,
) -> None:
    """Prune the weights of IN and write OUT (validated, atomically).

    \b
    Examples:
      onnxprune prune model.onnx pruned.onnx --sparsity 0.5
      onnxprune prune model.onnx pruned.onnx --sparsity 0.7 --scope global --criterion lamp
      onnxprune prune model.onnx pruned.onnx --pattern 2:4
      onnxprune prune model.onnx pruned.onnx --sparsity 0.5 --data test.npz --labels y.npy --report r.html
      onnxprune prune model.onnx smaller.onnx --structured --sparsity 0.3 --calibration calib.npz
      onnxprune prune model.onnx smaller.onnx --target-flops 0.5 --round-to 8
      onnxprune prune masked.onnx smaller.onnx --dead-channels
      onnxprune prune model.onnx small.int8.onnx --sparsity 0.5 --quantize int8
      onnxprune prune model.onnx small.int8.onnx --sparsity 0.5 --quantize int8 --quantize-mode static --calibration c.npz
    """
    eval_kwargs["batch_axis"] = batch_axis
    eval_kwargs["compressed_size"] = compressed_size
    if recipe_path is not None:
        _prune_recipe(input_model, output_model, recipe_path, locals(), eval_kwargs, _recipe_options_given())
        return
    structured = structured or target_flops is not None
    unstructured = sparsity is not None or plan_path is not None or pattern != "unstructured"
    if structured and pattern != "unstructured":
        raise onnxprune.OptionError("--structured takes --sparsity, --target-flops or a --plan; drop --pattern")
    if structured and method != "magnitude":
        raise onnxprune.OptionError(
            f"--method {method} is for weight pruning; --structured ranks channels with --importance and refits "
            "the consumers itself when given --calibration or --data-free"
        )
    if structured and sparsity is None and target_flops is None and plan_path is None:
        raise onnxprune.OptionError(
            "--structured needs --sparsity (fraction of channels), --target-flops or a --plan from analyze --structural"
        )
    if not structured and not unstructured and not dead_channels:
        raise onnxprune.OptionError(
            "nothing to do: give --sparsity (e.g. 0.5), an N:M --pattern, a --plan, --structured or --dead-channels"
        )
    config = None
    if not structured and unstructured:
        config = PruneConfig(
            sparsity=sparsity,
            scope=scope,
            criterion=criterion,
            pattern=parse_pattern(pattern),
            nm_fallback=nm_fallback,
            permute=permute,
            plan=load_plan(plan_path) if plan_path else {},
            max_layer_sparsity=max_layer_sparsity,
            seed=seed,
            min_size=min_size,
            include=include,
            exclude=exclude,
            op_types=_op_types(op_types),
            method=method,
            bias_correction=bias_correction,
            sequential=not parallel,
            percdamp=percdamp,
            exact_refit=not no_exact_refit,
            capture_rows=_capture_rows(capture_rows),
            block_epochs=block_epochs,
            workers=workers,
            ray=ray_address,
            allocator=allocation,
        )
    if config is not None:  # the pass after the weights: dead channels (unless --no-dead-channels), exact
        structure: StructureConfig = after_weights(
            StructureConfig(dead_channels=dead_channels is not False, fold=not no_fold)
        )
    else:
        structure = StructureConfig(
            dead_channels=dead_channels is not False,
            amount=sparsity if structured else None,
            plan=load_plan(plan_path) if structured and plan_path else {},
            target_flops=target_flops,
            scope=scope,
            importance=importance,
            refit=not no_refit,
            round_to=round_to,
            max_fraction=max_group_sparsity,
            fold=not no_fold,
            damp=0.01 if percdamp is None else percdamp,
            allocator=allocation if structured else None,
        )
    recipe = recipes.Recipe.from_configs(config, structure)  # the flags are a one-stage recipe: run as one
    shapes = parse_input_shapes(input_shape)
    axes = parse_batch_axes(batch_axis)
    reads_model(input_model, shapes)
    if samples < 1:
        raise onnxprune.OptionError(f"--samples must be >= 1, got {samples}")
    if quantize_mode is not None and quantize is None:
        raise onnxprune.OptionError(f"--quantize-mode {quantize_mode} needs --quantize int8")
    quantization = onnxprune.QuantizeConfig(mode=quantize_mode or "dynamic") if quantize else None
    static = quantization is not None and quantization.mode == "static"
    if static and not (calibration or data_free):
        quantization.check_data(None)  # raises: static mode reads calibration data
    uses_data = structured or (config is not None and config.calibrated) or static
    if (workers != 1 or ray_address) and (config is None or not config.calibrated):
        raise onnxprune.OptionError(
            "--workers/--ray run the layer solves of a calibrated --method (wanda, sparsegpt, admm or refit) or of --bias-correction"
        )
    if (calibration or data_free) and not uses_data:
        raise onnxprune.OptionError(
            "--calibration/--data-free is given but --method magnitude uses no data: choose --method wanda, sparsegpt, "
            "admm or refit, add --bias-correction, use --structured, or --quantize int8 --quantize-mode static"
        )
    do_eval = do_eval or any(eval_kwargs.get(k) for k in ("data", "labels", "report", "eval_json"))
    if dry_run:
        with_data = bool(calibration or data_free)
        _dry_run(
            input_model, output_model, config, structure, shapes, json_path, eval_kwargs, quantization, quiet, with_data
        )
        return
    _check_files(input_model, output_model, calibration, plan_path, json_path, eval_kwargs, external_data, force)
    stdout = command_json_stdout(json_path, eval_kwargs.get("eval_json"))
    eval_data = _evaluation_data(input_model, eval_kwargs, input_shape) if do_eval else None
    calib = None
    if (config is not None and config.calibrated) or ((structured or static) and (calibration or data_free)):
        calib = onnxprune.calibration_data(
            input_model,
            calibration,
            samples=samples,
            data_free=data_free,
            input_shapes=shapes,
            batch_axes=axes,
            allow_nonfinite=allow_nonfinite,
        )
    _run_and_report(
        input_model, output_model, recipe, locals(), eval_kwargs, calib, eval_data, stdout, do_eval, quantization
    )


def _evaluation_data(source: Path, eval_kwargs: dict[str, Any], input_shape: tuple[str, ...]) -> Any:
    """The evaluation data of ``prune --data/--labels``, checked against the input model, so that
    bad evaluation options, data or labels fail before anything is written."""
    from onnxprune.evaluation import check_evaluation

    return check_evaluation(
        source,
        data=eval_kwargs.get("data"),
        labels=eval_kwargs.get("labels"),
        options=build_options(eval_kwargs, input_shape),
    )


def _report_pass(
    run: PruneRun,
    input_model: Path,
    *,
    weights: bool,
    quiet: bool,
    compressed_size: bool | None,
    json_path: Path | None,
    stdout: TextIO | None,
    extra: dict[str, Any] | None = None,
    sizes: FileStatsAhead | None = None,
) -> SavedModel:
    """What a run of one pass did (flags, or a recipe of one pass): the layers (of a weight pass,
    ``weights``), the channels, the summary and ``--json`` (with ``extra`` keys); exit code 10,
    and no output, when the pass changed nothing. Returns the written model."""
    result, saved, before, after = run.result, run.saved, run.params_before, run.params_after
    if saved is None:
        if not weights:
            print_structure(run.structure, quiet)
            click.echo(
                f"onnxprune: nothing to remove in '{input_model}': no channel group can lose a channel "
                "(see the blocked groups above); no output written",
                err=True,
            )
        else:
            click.echo(
                f"onnxprune: nothing to prune in '{input_model}': no weight tensor qualifies "
                f"({reason_counts(result.skipped) or 'no weights found'}); no output written; "
                "lower --min-size or check --include/--exclude/--op-types",
                err=True,
            )
        sys.exit(NOTHING_TO_PRUNE)
    compress = "estimate" if compressed_size is None else "exact" if compressed_size else "off"
    output_files = [saved.path] + ([saved.data_path] if saved.data_path else [])
    if sizes is not None and sizes.given:  # computed during the run
        size_in, size_out = sizes.result()
    else:
        with ProgressBar("compressed size (exact, MiB)", quiet) as deflated:
            size_in, size_out = both_file_stats(run.input_files, output_files, compress, progress=deflated)
    if not quiet and weights:
        print_layers(result)
    if run.structure is not None and (not weights or run.structure.changed):
        print_structure(run.structure, quiet)
    print_summary(result, before, after, size_in, size_out, saved, quiet, run.structure)
    if run.quantized is not None:
        print_quantized(run.quantized, size_in, size_out)
    if json_path:
        _write_json(
            json_path,
            "prune",
            {
                "input": str(input_model),
                "output": str(saved.path),
                "validation": None
                if run.validation is None
                else {
                    "checker": run.validation.checker,
                    "ran_on": run.validation.feeds,
                    "outputs_finite": run.validation.outputs_finite,
                    "tensors": run.validation.tensors,
                },
                **result.to_dict(),
                "structure": run.structure.to_dict() if run.structure is not None else None,
                "quantize": run.quantized.to_dict() if run.quantized is not None else None,
                "model": {
                    "parameters": [before.parameters, after.parameters],
                    "nonzeros": [before.nonzeros, after.nonzeros],
                    "file_bytes": [size_in.bytes, size_out.bytes],
                    "compressed_bytes": [size_in.compressed, size_out.compressed],
                    "compressed_exact": [size_in.compressed_exact, size_out.compressed_exact],
                    "compressed_relative_error": [size_in.compressed_error, size_out.compressed_error],
                },
                **(extra or {}),
            },
            stdout,
        )
    return saved


#: ``prune``'s parameters that set an option a recipe describes -> that option's API field
#: (:data:`onnxprune.recipe.RECIPE_OPTIONS`); those in :data:`NEGATED_FLAGS` set it to False.
RECIPE_PARAMETERS = {
    "sparsity": "sparsity",
    "scope": "scope",
    "allocation": "allocator",
    "criterion": "criterion",
    "pattern": "pattern",
    "nm_fallback": "nm_fallback",
    "permute": "permute",
    "plan_path": "plan",
    "max_layer_sparsity": "max_layer_sparsity",
    "seed": "seed",
    "include": "include",
    "exclude": "exclude",
    "op_types": "op_types",
    "min_size": "min_size",
    "method": "method",
    "bias_correction": "bias_correction",
    "parallel": "sequential",
    "percdamp": "percdamp",
    "no_exact_refit": "exact_refit",
    "capture_rows": "capture_rows",
    "block_epochs": "block_epochs",
    "structured": "structure",
    "target_flops": "target_flops",
    "dead_channels": "dead_channels",
    "importance": "importance",
    "round_to": "round_to",
    "max_group_sparsity": "max_fraction",
    "no_refit": "refit",
    "no_fold": "fold",
    "quantize": "quantize",
    "dry_run": "dry_run",
}
NEGATED_FLAGS = ("parallel", "no_exact_refit", "no_refit", "no_fold")


def _recipe_options_given() -> dict[str, object]:
    """The options of :data:`RECIPE_PARAMETERS` the command line of this ``prune`` set (its
    field -> value), whatever the value: with ``--recipe`` they are refused."""
    ctx = click.get_current_context()
    given = {}
    for name, field in RECIPE_PARAMETERS.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source is not ParameterSource.DEFAULT:
            value = ctx.params[name]
            given[field] = not value if name in NEGATED_FLAGS else value
    return given


def _prune_recipe(
    source: Path,
    output: Path,
    recipe_path: Path,
    given: dict[str, Any],
    eval_kwargs: dict[str, Any],
    options: dict[str, object],
) -> None:
    """``prune --recipe``: the recipe (:mod:`onnxprune.recipe`) run as one pass, as flags are (and
    reported so, ``--json`` with the recipe's keys added), or stage by stage, then the stages' table."""
    recipes.check_flags(options)
    recipe = recipes.load(recipe_path)
    shapes = parse_input_shapes(given["input_shape"])
    reads_model(source, shapes)
    json_path = given["json_path"]
    calibration, data_free = given["calibration"], given["data_free"]
    if recipe.calibrated and not (calibration or data_free):
        raise onnxprune.OptionError(
            "a stage of the recipe calibrates (wanda, sparsegpt, admm or refit): give --calibration or --data-free"
        )
    workers, ray_address = given["workers"], given["ray_address"]
    if (workers != 1 or ray_address) and not recipe.calibrated:
        raise onnxprune.OptionError("--workers/--ray run the layer solves of a stage that calibrates")
    _check_files(
        source, output, calibration, recipe_path, json_path, eval_kwargs, given["external_data"], given["force"]
    )
    stdout = command_json_stdout(json_path, eval_kwargs.get("eval_json"))
    do_eval = given["do_eval"] or any(eval_kwargs.get(k) for k in ("data", "labels", "report", "eval_json"))
    eval_data = _evaluation_data(source, eval_kwargs, given["input_shape"]) if do_eval else None
    calib = None
    if (calibration or data_free) and recipe.reads_data:
        calib = onnxprune.calibration_data(
            source,
            calibration,
            samples=given["samples"],
            data_free=data_free,
            input_shapes=shapes,
            batch_axes=parse_batch_axes(given["batch_axis"]),
            allow_nonfinite=given["allow_nonfinite"],
        )
    _run_and_report(source, output, recipe, given, eval_kwargs, calib, eval_data, stdout, do_eval, label=recipe_path)


def _run_and_report(
    source: Path,
    output: Path,
    recipe: recipes.Recipe,
    given: dict[str, Any],
    eval_kwargs: dict[str, Any],
    calibration: onnxprune.Dataset | None,
    eval_data: onnxprune.Dataset | None,
    stdout: TextIO | None,
    do_eval: bool,
    quantization: onnxprune.QuantizeConfig | None = None,
    *,
    label: Path | None = None,
) -> None:
    """Run ``recipe`` (:func:`~onnxprune.recipe_run.run_recipe`) with ``prune``'s options
    (``given``: its parameters by name), then print and write what it did and evaluate the
    output (``do_eval``). ``label``: the ``--recipe`` it came from, whose keys the JSON then
    carries; None for flags, whose JSON has the keys of a single pass only."""
    quiet, json_path = given["quiet"], given["json_path"]
    compressed_size = given["compressed_size"]
    if compressed_size is None and quiet and json_path is None:
        compressed_size = False  # the default estimate is shown only in the table and the JSON
    # the estimated compressed sizes are computed while the run goes on (the exact ones after it,
    # with their own progress bar)
    sizes = FileStatsAhead("estimate") if compressed_size is None else None
    try:
        with ProgressBar("pruning", quiet) as progress:
            run = run_recipe(
                source,
                output,
                recipe,
                calibration=calibration,
                input_shapes=parse_input_shapes(given["input_shape"]),
                external_data=True if given["external_data"] else None,
                force=given["force"],
                progress=progress,
                quantize=quantization,
                allow_nonfinite=given["allow_nonfinite"],
                validation=eval_data,
                validate=given["validate"],
                workers=given["workers"],
                ray=given["ray_address"],
                file_sizes=sizes,
            )
        recipe_json = None
        if label is not None:
            recipe_json = {
                "recipe": recipe.to_dict(),
                "stages": [r.to_dict() for r in run.stages],
                "unclaimed": dict(run.unclaimed),
            }
        if run.run is not None:  # one pass
            saved = _report_pass(
                run.run,
                source,
                weights=not recipe.stages[0].structured,
                quiet=quiet,
                compressed_size=compressed_size,
                sizes=sizes,
                json_path=json_path,
                stdout=stdout,
                extra=recipe_json,
            )
        else:
            assert label is not None and recipe_json is not None  # flags make one pass
            _print_stages(run, label, quiet)
            saved = run.saved
            if json_path is not None:
                before, after = run.params_before, run.params_after
                model = {
                    "parameters": [before.parameters, after.parameters],
                    "nonzeros": [before.nonzeros, after.nonzeros],
                }
                data = {"input": str(source), "output": str(saved.path), **recipe_json, "model": model}
                _write_json(json_path, "prune", data, stdout)
    finally:
        if sizes is not None:
            sizes.close()
    if do_eval:
        _evaluate_written(source, saved.path, eval_kwargs, given["input_shape"], quiet, shown=output, stdout=stdout)


def _print_stages(run: RecipeRun, recipe_path: Path, quiet: bool) -> None:
    """The table of a run of stages, its unclaimed tensors and its summary line."""
    rows = [
        [
            r.stage.name,
            "channels" if r.stage.structured else str(len(r.tensors)),
            r.stage.method,
            r.stage.pattern or ("-" if r.stage.structured else "unstructured"),
            f"{r.sparsity:.1%}" if r.tensors else (r.note or ("structural" if r.stage.structured else "-")),
        ]
        for r in run.stages
    ]
    if not quiet:
        click.echo(table(rows, ["stage", "tensors", "method", "pattern", "sparsity of its tensors"]))
        for key, why in run.unclaimed.items():
            click.echo(f"  not pruned: {key}: {why}")
    after = run.params_after
    zeros = after.parameters - after.nonzeros
    click.echo(
        f"\nrecipe '{recipe_path.name}' ({len(run.recipe.stages)} stage(s)): {count(zeros)} of "
        f"{count(after.parameters)} parameters zero ({zeros / max(after.parameters, 1):.1%}) -> {run.saved.path}"
    )


@main.command("recipe")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def recipe_command(model: Path, verbose: bool, debug: bool) -> None:
    """Print the recipe MODEL was pruned with (JSON), for `prune --recipe` on another model.

    A model pruned with flags has a recipe too: one stage, every option written out.

    \b
    Examples:
      onnxprune recipe pruned.onnx > recipe.json
      onnxprune prune other.onnx other.pruned.onnx --recipe recipe.json
      onnxprune prune other.onnx other.pruned.onnx --recipe pruned.onnx    # the same, in one step
    """
    reads_model(model)
    made = recipes.from_model(load_model(model))
    if made is None:
        raise onnxprune.OptionError(f"{model} carries no recipe: onnxprune did not prune it")
    click.echo(json.dumps(made.to_dict(), indent=2, sort_keys=True))


def _dry_run(
    source: Path,
    output: Path,
    config: PruneConfig | None,
    structure: StructureConfig,
    shapes: dict[str, tuple[int, ...]],
    json_path: Path | None,
    eval_kwargs: dict[str, Any],
    quantization: Any,
    quiet: bool,
    with_data: bool,
) -> None:
    """``prune --dry-run``: what ``prune`` would write, predicted in memory (:mod:`onnxprune.dry_run`)."""
    from onnxprune.dry_run import dry_run

    writes = [opt(k) for k in ("report", "eval_json") if eval_kwargs.get(k)]
    writes += [opt("json")] if json_path is not None and not is_stdout(json_path) else []
    writes += [opt("quantize")] if quantization is not None else []
    if writes:
        raise onnxprune.OptionError(
            f"--dry-run writes nothing: drop {', '.join(writes)} (--json - prints the prediction as JSON)"
        )
    stdout = command_json_stdout(json_path)
    active = structure if structure.active else None
    predicted = dry_run(load_model(source), config, active, input_shapes=shapes, with_data=with_data)
    print_prediction(predicted, output, quiet, layers=config is not None)
    if json_path is not None:
        write_json(
            envelope("prune", {"dry_run": True, "input": str(source), **predicted.to_dict()}), json_path, stdout=stdout
        )


def _check_files(
    source: Path,
    output: Path,
    calibration: str | None,
    plan: Path | None,
    json_path: Path | None,
    eval_kwargs: dict[str, Any],
    external_data: bool,
    force: bool,
) -> None:
    """The output policy for ``prune``, before any work: OUT (and its external data), --json,
    --report and --eval-json are regular files or new, none of them an input or another output."""
    evaluation_writes, evaluation_reads = evaluation_files(eval_kwargs, json_name=opt("eval_json"))
    writes = [
        *model_writes(output, source=source, external_data=True if external_data else None, force=force),
        Write(opt("json"), None if is_stdout(json_path) else json_path, example="result.json"),
        *evaluation_writes,
    ]
    reads = [
        *model_reads("the input model", source, writes=writes),
        Read(f"the {opt('calibration')} data", calibration),
        Read(f"the {opt('plan')} file", plan),
        *evaluation_reads,
    ]
    check_outputs(writes, reads)


def _evaluate_written(
    source: Path,
    output: Path,
    eval_kwargs: dict[str, Any],
    input_shape: tuple[str, ...],
    quiet: bool,
    *,
    shown: Path,
    stdout: TextIO | None = None,
) -> None:
    """``prune --eval`` once OUT is written: a failure (or an interruption) says that OUT (as
    the user spelled it, ``shown``) was written and is valid."""
    written = f"'{shown}' was written and is valid"
    try:
        run_evaluation(source, [output], eval_kwargs, input_shape, quiet=quiet, stdout=stdout)
    except onnxprune.OnnxPruneError as exc:
        exc.args = (f"{written}, but its evaluation failed: {exc.args[0] if exc.args else type(exc).__name__}",)
        raise
    except KeyboardInterrupt as exc:
        raise Interrupted(getattr(exc, "signum", None), done=f"{written}; it was not evaluated") from None
