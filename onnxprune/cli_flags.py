"""The CLI's names for the options that library messages name by API field.

The library says ``calibration`` or ``data_free=True`` (see :func:`onnxprune.errors.opt`); the
command line says ``--calibration`` or ``--data-free``. :data:`FLAGS` is the one table between
them and :func:`flag` spells one option; every command prints errors through
:func:`onnxprune.console.handle_errors`, which uses it.
"""

from __future__ import annotations

#: API field -> its flag. A pair ``(on, off)`` is a boolean field's flags for True and False
#: (None where the CLI has no flag for that value); None: no flag (the API name is printed).
FLAGS: dict[str, str | tuple[str | None, str | None] | None] = {
    # PruneConfig
    "sparsity": "--sparsity",
    "scope": "--scope",
    "criterion": "--criterion",
    "pattern": "--pattern",
    "nm_fallback": "--nm-fallback",
    "permute": ("--permute", None),
    "plan": "--plan",
    "dry_run": "--dry-run",
    "recipe": "--recipe",
    "max_layer_sparsity": "--max-layer-sparsity",
    "allocator": "--allocation",
    "seed": "--seed",
    "min_size": "--min-size",
    "include": "--include",
    "exclude": "--exclude",
    "op_types": "--op-types",
    "method": "--method",
    "bias_correction": ("--bias-correction", None),
    "sequential": (None, "--parallel"),
    "percdamp": "--percdamp",
    "blocksize": None,
    "exact_refit": (None, "--no-exact-refit"),
    "capture_rows": "--capture-rows",
    "block_epochs": "--block-epochs",
    # StructureConfig (prune_file's ``structure``)
    "structure": "--structured",
    "dead_channels": ("--dead-channels", "--no-dead-channels"),
    "amount": "--sparsity",
    "target_flops": "--target-flops",
    "importance": "--importance",
    "refit": (None, "--no-refit"),
    "round_to": "--round-to",
    "max_fraction": "--max-group-sparsity",
    "fold": (None, "--no-fold"),
    "damp": "--percdamp",
    # data, shapes, output
    "calibration": "--calibration",
    "data_free": ("--data-free", None),
    "samples": "--samples",
    "input_shapes": "--input-shape",
    "batch_axes": "--batch-axis",
    "force": ("--force", None),
    "allow_nonfinite": ("--allow-nonfinite", None),
    "external_data": ("--external-data", None),
    # files the CLI writes (named by the output policy, onnxprune.graph.outputs)
    "json": "--json",
    "eval_json": "--eval-json",
    "report": "--report",
    "plan_out": "--plan-out",
    "cache_dir": "--cache-dir",
    # QuantizeConfig / quantize_file
    "quantize": "--quantize",
    "quantize.mode": "--quantize-mode",
    # evaluate / EvalOptions
    "data": "--data",
    "labels": "--labels",
    "output": "--output",
    "latency_batch": "--latency-batch",
    # analysis (sensitivity sweeps, executors, plans)
    "levels": "--levels",
    "workers": "--workers",
    "ray": "--ray",
    "keep_latency": "--target-latency",
    "keep_flops": "--target-flops",
    "target": "--target-sparsity",
    "max_loss": "--max-loss",
    # view
    "port": "--port",
    "host": "--host",
}


def flag(field: str, value: str | None) -> str | None:
    """How the CLI names ``field`` (with ``value``, as text, when the message gives one); None
    when it has no flag for it, so the API name is printed."""
    entry = FLAGS.get(field)
    if entry is None:
        return None
    if isinstance(entry, tuple):
        on, off = entry
        if value is None or value == "True":
            return on
        return off if value == "False" else None
    if value is None or value == "True":
        return entry
    return f"{entry} {value}"
