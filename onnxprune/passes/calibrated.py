"""The calibrated pass: prune each layer so it reproduces its dense output on data.

For every prunable weight the amount comes from the same decision as the magnitude pass
(:func:`onnxprune.passes.unstructured.plan_targets`: local, global, LAMP, plan or N:M).
Weights that calibration handles (:mod:`onnxprune.passes.layers`) are then solved from
the statistics of their input ``x`` on the calibration data (:mod:`onnxprune.capture`):
``H = Σ xᵀx``, ``E[x]`` and ``Σ x_j²``:

- ``wanda``: mask the smallest ``|W_ij|·‖x_j‖`` of each output row (Sun et al. 2023;
  layer-wide for layers with fewer than ``ROW_WISE_MIN_COLS`` inputs);
- ``sparsegpt``: OBS mask selection and update of the kept weights, block-wise with lazy
  updates (Frantar & Alistarh 2023), one budget for the whole layer (rows may differ);
- ``refit``: the magnitude mask, then the kept weights of each row re-solved by ridge least
  squares, ``ŵ_K = (H_KK + λI)⁻¹ H_K,: w``;
- ``magnitude`` with ``bias_correction``: the magnitude mask;

and, with bias correction, ``b' = b + (W − Ŵ)·E[x]`` keeps each output's mean. The
per-layer error ``‖WX − ŴX‖² / ‖WX‖² = tr(ΔHΔᵀ)/tr(WHWᵀ)`` is reported for the method and
for plain magnitude at the same count.

Sequential mode (default) processes layers in *waves*: a wave holds every remaining
layer whose input does not depend on a remaining layer, and its statistics are captured
on the model as pruned so far, so errors do not compound. A layer whose output is summed
with another activation (a residual connection, ``s = y + r``, ``r`` settled by earlier
waves: :func:`settled_residuals`) is fitted to the dense sum, taking up the part of the error
arriving through ``r`` that its input can express (:data:`RESIDUAL_TARGETS`; its error is then
reported at the sum, relative to ``‖WX_d‖²``). Parallel mode captures once on the dense
model. Weights calibration cannot handle are pruned by magnitude, with the reason in the
result.

Layers inside If / Loop / Scan bodies are calibrated like the others, on the rows of every run
of their body (:mod:`onnxprune.passes.layers`, :mod:`onnxprune.capture`); in sequential mode a
body layer waits for what its owner node reads and for the layers before it in its body
(:mod:`onnxprune.passes.layer_order`). A layer whose body never ran on the data has no rows
and is pruned by magnitude (:data:`onnxprune.passes.layers.NEVER_RAN` says why).

The layers of one wave are independent solves. Each is a
:class:`~onnxprune.reconstruct.layer.LayerTask` (its matrices and options, never the model: the
wave's capture and every graph edit stay here), run where ``workers`` / ``ray`` say
(:func:`solve_executor`: here, a process pool, a Ray cluster); the solutions come back as arrays
in the layers' order and are written in that order, as a serial run writes them. A layer whose
damping is chosen closed loop (:mod:`onnxprune.passes.closed_loop`) runs the model, so it is
solved here, in its place in that order. Wherever they run the output is the same bits
(:mod:`onnxprune.reconstruct.layer`).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, numpy_helper

from onnxprune import sparsity
from onnxprune.capture import LayerSpec, LayerStats, capture, sample_bytes
from onnxprune.config import PruneConfig, Ranking, Reconstruction
from onnxprune.data import Dataset
from onnxprune.errors import OptionError, OutputError, UnsupportedModelError, opt
from onnxprune.executors import ClosingExecutor, Executor, ProcessExecutor, RayExecutor, SerialExecutor
from onnxprune.executors.ray_cluster import require_ray
from onnxprune.frontier import Frontier
from onnxprune.graph import tensors
from onnxprune.graph.discovery import Weight, discover
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.outputs import staging_dir
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, Progress, prune_pass_result
from onnxprune.passes.blocks import blocks_summary, fit_blocks
from onnxprune.passes.closed_loop import choose_damping
from onnxprune.passes.curve_allocation import allocate_layers
from onnxprune.passes.layer_order import Upstream
from onnxprune.passes.layers import CalibLayer, LayerUse, calib_layer
from onnxprune.passes.result import LayerResult, PruneResult
from onnxprune.passes.unstructured import (
    Target,
    nonfinite_skipped,
    plan_targets,
    pruned_layer,
    skipped_layer,
    target_mask,
)
from onnxprune.reconstruct.layer import (
    LayerSolution,
    LayerTask,
    Residual,
    UseMeans,
    nonfinite_terms,
    reference_terms,
    solve_layer,
)
from onnxprune.reconstruct.methods import METHODS
from onnxprune.sparsity.scores import to_float64
from onnxprune.stats import param_stats

log = logging.getLogger(__name__)


def waves(model: ModelProto, layers: list[CalibLayer]) -> list[list[CalibLayer]]:
    """Group layers so that each group's inputs depend only on layers of earlier groups (a
    layer reading its own node's output, a recurrent R, or a shared weight whose second use
    reads its first use's output, does not wait for itself). A layer inside an If/Loop/Scan body
    waits for what its owner node's inputs depend on and for the layers before it in the body
    (:mod:`onnxprune.passes.layer_order`)."""
    by_node: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        for use in layer.uses:
            by_node.setdefault(id(use.node), []).append(i)
    upstream = Upstream(model.graph, by_node)  # every graph in topological order (an ONNX requirement)
    needs = [
        frozenset().union(*(upstream.of(use.node, use.spec.activation) for use in layer.uses))
        - frozenset().union(*(by_node[id(use.node)] for use in layer.uses))
        for layer in layers
    ]
    done: set[int] = set()
    groups: list[list[CalibLayer]] = []
    while len(done) < len(layers):
        ready = [i for i in range(len(layers)) if i not in done and needs[i] <= done]
        if not ready:  # a cycle cannot happen in a valid model; be safe
            ready = [i for i in range(len(layers)) if i not in done]
        groups.append([layers[i] for i in ready])
        done.update(ready)
    return groups


def settled_residuals(model: ModelProto, groups: list[list[CalibLayer]]) -> set[str]:
    """The spec keys whose residual ``r`` (the other operand of the sum the layer's output feeds)
    depends on layers of earlier waves only. A residual computed from a layer of the same wave or
    a later one is not final when the layer is fitted: two branches summed, ``y_1 + y_2``, would
    each take up the other's error, which the other also fits away (counted twice)."""
    by_node: dict[int, list[int]] = {}
    wave_of: list[int] = []
    flat = [layer for group in groups for layer in group]
    for wave, group in enumerate(groups):
        wave_of.extend([wave] * len(group))
    for i, layer in enumerate(flat):
        for use in layer.uses:
            by_node.setdefault(id(use.node), []).append(i)
    upstream = Upstream(model.graph, by_node)
    settled = set()
    for i, layer in enumerate(flat):
        for use in layer.uses:
            if use.spec.residual and all(wave_of[j] < wave_of[i] for j in upstream.of(use.node, use.spec.residual)):
                settled.add(use.spec.key)
    return settled


def _ratio(num: float, den: float) -> float:
    return max(num, 0.0) / den if den > 0 else 0.0


#: Wanda and SparseGPT choose the same count in every output row; a layer with fewer
#: inputs than this (an input embedding of 4 features, an LSTM input of 1) would then lose
#: the same few inputs in every row, so it spends one budget over the whole layer instead
ROW_WISE_MIN_COLS = 64
#: damping when none is given: real calibration data, and data-free (synthetic) inputs. With the
#: exact refit the kept weights fit the calibration rows exactly, and 0.01 overfits them:
#: all-MiniLM-L6-v2 at 50 % (128 sentences), embedding cosine 0.959 / 0.964 / 0.965 / 0.965 at
#: 0.01 / 0.05 / 0.1 / 0.2; the fixtures within noise (test sets of 300-450 samples)
PERCDAMP_DATA, PERCDAMP_DATA_FREE = 0.1, 1.0
#: a layer whose output is summed with another activation (a residual connection) is fitted to
#: the dense sum, taking up the error that arrives through the other operand (:func:`_dense_target`)
RESIDUAL_TARGETS = True


def solver_percdamp(reconstruction: Reconstruction, data: Dataset) -> float:
    """The damping of the solvers: ``reconstruction.percdamp``, or when None the default for
    ``data`` (:data:`PERCDAMP_DATA_FREE` for synthetic inputs, else :data:`PERCDAMP_DATA`)."""
    if reconstruction.percdamp is not None:
        return reconstruction.percdamp
    return PERCDAMP_DATA_FREE if data.synthetic else PERCDAMP_DATA


def layer_task(
    layer: CalibLayer,
    stats: LayerStats,
    target: Target,
    values: np.ndarray,
    index: int,
    *,
    reconstruction: Reconstruction,
    ranking: Ranking,
    percdamp: float,
    uses: Sequence[LayerStats] = (),
    magnitude_error: bool = True,
) -> LayerTask:
    """What the solve of ``layer`` reads (:class:`~onnxprune.reconstruct.layer.LayerTask`, arrays
    and options, no graph): ``reconstruction``'s method and block size, ``ranking``'s mask for the
    magnitude baseline (and the mask of a method that does not choose its own), ``percdamp``
    already resolved (:func:`solver_percdamp`). ``stats`` are the statistics the layer is fitted
    on (a shared weight: of every use stacked), ``uses`` each use's own, for its bias delta
    (default: ``stats``); ``magnitude_error``: whether the magnitude mask's error is reported too."""
    weight = layer.weight
    w = np.ascontiguousarray(layer.to_matrix(to_float64(values)))
    magnitude = np.ascontiguousarray(layer.to_matrix(target_mask(values, target, weight, ranking, index)))
    # a recurrent R reads its own node's output: its input changes with its own pruning, so it is
    # fitted to its own dense product, not to the dense model's
    terms = None  # (C wᵀ, tr(w H_d wᵀ)) against the reference: captured as such, or from C and H_d
    if not layer.reads_own_output:
        if stats.CW is not None and stats.energy_ref is not None:
            terms = (stats.CW, stats.energy_ref)
        elif stats.C is not None and stats.H_ref is not None:
            terms = reference_terms(w, stats.C, stats.H_ref)
    with_ref = terms is not None
    residual = stats.residual if with_ref and RESIDUAL_TARGETS else None  # one group: Gemm/MatMul rows
    return LayerTask(
        weight=weight.key,
        w=w,
        magnitude=magnitude,
        H=stats.H,  # type: ignore[arg-type]  # a solved layer has its statistics
        sqnorm=stats.sqnorm,  # type: ignore[arg-type]
        method=METHODS[reconstruction.method],
        percdamp=percdamp,
        blocksize=reconstruction.blocksize,
        exact_refit=reconstruction.exact_refit,
        row_wise=w.shape[-1] >= ROW_WISE_MIN_COLS,
        count=None if target.nm is not None else target.count,
        amount=None if target.nm is not None else target.count / weight.numel,
        nm=target.nm,
        nm_order=layer.nm_order if target.nm is not None else None,
        CW=None if terms is None else terms[0],
        energy_ref=None if terms is None else terms[1],
        residual=None if residual is None else Residual(residual.cross, residual.cross_ref, residual.energy),
        uses=tuple(
            UseMeans(
                use.mean,  # type: ignore[arg-type]
                use.mean_ref,
                use.residual.mean if residual is not None and use.residual is not None else None,
            )
            for use in (uses or (stats,))
        ),
        magnitude_error=magnitude_error,
    )


@dataclass(frozen=True)
class Unsolvable:
    """Why a layer with statistics is not solved (it is pruned by magnitude instead)."""

    reason: str


def _solvable_task(
    layer: CalibLayer, stats: LayerStats, target: Target, values: np.ndarray, index: int, **options: Any
) -> LayerTask | Unsolvable:
    """:func:`layer_task` (which takes ``options``), or why no solver can use it: terms that are
    not finite (:func:`~onnxprune.reconstruct.layer.nonfinite_terms`)."""
    task = layer_task(layer, stats, target, values, index, **options)
    overflow = nonfinite_terms(task)
    if overflow:
        return Unsolvable(
            f"its calibration statistics are not finite ({', '.join(overflow)}): its weights or their inputs "
            "are too large to calibrate"
        )
    return task


def _solve_layer(
    layer: CalibLayer, stats: LayerStats, target: Target, values: np.ndarray, index: int, **options: Any
) -> tuple[np.ndarray, LayerSolution]:
    """The new stored array of ``layer`` and its solution (error terms, bias deltas), solved here:
    :func:`_solvable_task`, then :func:`~onnxprune.reconstruct.layer.solve_layer`. A task no
    solver can use is refused by name."""
    task = _solvable_task(layer, stats, target, values, index, **options)
    if isinstance(task, Unsolvable):
        raise UnsupportedModelError(
            f"weight '{layer.weight.key}': {task.reason}; fix the model, or prune it by magnitude"
        )
    solution = solve_layer(task)
    return layer.from_matrix(solution.new), solution


def _apply_bias(model: ModelProto, scope: Scope, layer: LayerUse, delta: np.ndarray, dtype: np.dtype) -> str:
    """``b' = b + scale·delta`` at the bias site of one use of a layer (:class:`~onnxprune.passes.layers.BiasSite`
    says where and with which ``scale``). A bias stored broadcast (``[1]``, ``[1, N]`` ...) grows
    to ``broadcast(shape, [N])`` by numpy's broadcasting, which is ONNX's. The bias is changed
    or added in the graph the site names (a subgraph's for a layer inside a body)."""
    site = layer.bias
    if site is None:
        return f"not corrected: {layer.bias_reason}"
    taps = layer.view.bias_taps  # groups that share one bias per output: the mean of their deltas
    correction = site.scale * (delta.reshape(taps, -1).mean(axis=0) if taps > 1 else delta)
    holder = site.owner or scope
    if site.existing is not None:
        proto = holder.stored_tensor(site.existing)
        current = tensors.read_array(proto)
        updated = (current.astype(np.float64) + correction).astype(current.dtype)
        if updated.shape != current.shape:
            del proto.dims[:]
            proto.dims.extend(updated.shape)
            stale = [vi for vi in holder.graph.value_info if vi.name == site.existing]
            for vi in stale:  # a recorded shape of the old bias would now be wrong
                holder.graph.value_info.remove(vi)
        tensors.write_array(proto, updated)
        return "corrected"
    name = f"{node_label(layer.node)}.onnxprune_bias"
    holder.graph.initializer.append(numpy_helper.from_array(correction.astype(dtype), name))
    while len(layer.node.input) < site.input_index:
        layer.node.input.append("")
    layer.node.input.append(name)
    return "added"


def _refuse_nonfinite(weights: list[Weight], config: PruneConfig) -> None:
    """Calibration reads the activations, which a NaN or infinite weight (left as it is when
    the model was loaded with ``allow_nonfinite``) makes NaN downstream: refuse it by name."""
    bad = next((w for w in weights if w.nonfinite), None)
    if bad is not None:
        method = opt("method", config.method) if METHODS[config.method].needs_data else opt("bias_correction", True)
        raise UnsupportedModelError(
            f"{bad.role} '{bad.key}' holds {bad.nonfinite} NaN or infinite values: {method} calibrates on the "
            "activations, which they make NaN; fix the model or prune by magnitude alone"
        )


def prune_calibrated(
    model: ModelProto,
    config: PruneConfig,
    data: Dataset,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    dense: ModelProto | None = None,
) -> PruneResult:
    """Prune ``model`` in place with the calibrated ``config.method`` on ``data``; the layer solves
    of each wave run where ``config.reconstruction`` says (:func:`solve_executor`). ``dense``: a
    copy of ``model`` as given that the caller holds anyway (read, never edited); else one is made."""
    with solve_executor(config.reconstruction) as executor:
        return _prune(model, config, data, batch_size=batch_size, progress=progress, executor=executor, dense=dense)


def solve_executor(reconstruction: Reconstruction) -> ClosingExecutor:
    """Where a wave's layer solves run: on the Ray cluster at ``reconstruction.ray`` ("local":
    one started here on loopback), else in a pool of ``reconstruction.workers`` processes (one:
    in this process). The results are the same bits wherever they run
    (:mod:`onnxprune.reconstruct.layer`)."""
    if reconstruction.ray:
        return RayExecutor(reconstruction.ray)
    if reconstruction.workers > 1:
        return ProcessExecutor(reconstruction.workers)
    return SerialExecutor()


def calibrated_layers(
    model: ModelProto, weights: Sequence[Weight], targets: Mapping[str, Target]
) -> tuple[list[CalibLayer], dict[str, str]]:
    """The layers calibration fits among ``weights`` that lose something (their matrix views,
    :func:`~onnxprune.passes.layers.calib_layer`), and why each other one falls back to magnitude."""
    scope = Scope.build(model.graph)
    calib: list[CalibLayer] = []
    fallback: dict[str, str] = {}
    for weight in weights:
        target = targets.get(weight.key)
        if target is None or not target.acts:
            continue
        layer, why = calib_layer(model, scope, weight)
        if layer is None:
            fallback[weight.key] = why or "pruned by magnitude"
        else:
            calib.append(layer)
    return calib, fallback


def _prune(
    model: ModelProto,
    config: PruneConfig,
    data: Dataset,
    *,
    batch_size: int,
    progress: Progress | None,
    executor: Executor,
    dense: ModelProto | None = None,
) -> PruneResult:
    reconstruction, ranking = config.reconstruction, config.ranking
    inventory = discover(model, config.selection)
    _refuse_nonfinite(inventory.weights, config)
    targets = plan_targets(config.allocation, ranking, inventory)
    calib, fallback = calibrated_layers(model, inventory.prunable, targets)
    scope = Scope.build(model.graph)
    groups = waves(model, calib) if reconstruction.sequential else [calib]
    settled = settled_residuals(model, groups) if RESIDUAL_TARGETS else set()
    percdamp = solver_percdamp(reconstruction, data)
    # the dense values the allocation's probe and the waves keep (removed at the end)
    scratch = _scratch() if len(calib) > 1 else None
    allocated = allocate_layers(  # curves: each calibrated layer's own count, the overall count kept
        model,
        config,
        data,
        inventory,
        targets,
        calib,
        solve=partial(_solve_layer, ranking=ranking, percdamp=percdamp),
        damp=percdamp,
        batch_size=batch_size,
        progress=progress,
        scratch=None if scratch is None else scratch.path / "probe",
    )
    targets = allocated.targets
    index_of = {w.key: i for i, w in enumerate(inventory.weights)}
    by_key = {w.key: w for w in inventory.weights}

    def magnitude(key: str) -> None:  # the weights calibration cannot handle, pruned first
        weight = by_key[key]
        proto = inventory.proto(weight)
        values = tensors.read_array(proto)
        mask = target_mask(values, targets[key], weight, ranking, index_of[key])
        tensors.write_array(proto, np.where(mask, values.dtype.type(0), values))

    # the dense model, copied once (not once per wave), before any weight is written
    dense = (dense if dense is not None else copy.deepcopy(model)) if reconstruction.sequential else None
    specs_of = [
        [
            use.spec if use.spec.key in settled else replace(use.spec, residual="", width=0)
            for layer in group
            for use in layer.uses
        ]
        for group in groups
    ]
    # fit to the dense model's output once it differs; Wanda updates no weight, so it needs
    # the dense model only for bias correction (its E[x_d])
    needs_dense = METHODS[reconstruction.method].updates_weights or reconstruction.bias_correction
    # the dense model's inputs to every wave: one run per batch in all, spilled to a scratch folder
    # the pruned-so-far model's side: each wave runs only the nodes beyond the last one's frontier
    in_waves = scratch is not None and reconstruction.sequential and len(groups) > 1
    frontier = Frontier(model, scratch.path / "frontier") if in_waves and scratch is not None else None
    # the dense model's side the same way, on a model that never changes (so not fingerprinted)
    dense_values: ModelProto | Frontier | None = dense
    if dense is not None and needs_dense and in_waves and scratch is not None:
        dense_values = Frontier(dense, scratch.path / "dense", frozen=True)
        batch_size = _wave_batch(dense, _dense_names(dense, specs_of), data, batch_size)
    for key in fallback:
        magnitude(key)
    changed = bool(fallback)
    extra: dict[str, dict[str, object]] = {key: {"method": "magnitude"} for key in fallback}
    done = allocated.steps  # the allocation's progress steps come first
    total = done + len(calib)
    seconds = {"capture": 0.0, "solve": 0.0, "write": 0.0}  # where the waves' time goes (logged)
    for group, specs in zip(groups, specs_of, strict=True):
        tick = time.perf_counter()
        reference = dense_values if changed and needs_dense else None
        # capture_rows: the rows each batch adds, k · cols throughout: the solves fit these. (The
        # damped dimension sizes only the error curves' capture: row_sampling, "Damped dimension")
        sampling = reconstruction.row_sampling(ranking.seed)
        # the wave's weights, read once: the capture's products and the solves' tasks. With a
        # reference, a layer's fit reads C and H_d only through its dense weight: given it, the
        # capture accumulates those products instead where they are cheaper (det 640: 85 -> 4
        # GFLOP a sample); float32 and float64 weights go as they are stored (views, no copy)
        values_of = {layer.weight.key: tensors.read_array(inventory.proto(layer.weight)) for layer in group}
        matrices = {
            use.spec.key: layer.to_matrix(_plain_float(values_of[layer.weight.key]))
            for layer in (group if reference is not None else ())
            if not layer.reads_own_output
            for use in layer.uses
        }
        stats = capture(
            model,
            specs,
            data.batches(batch_size),
            reference=reference,
            sampling=sampling,
            frontier=frontier,
            weights=matrices,
        )
        del matrices
        seconds["capture"] += time.perf_counter() - tick
        tick = time.perf_counter()
        # every layer's task first (what it reads is final: this wave writes no weight another one
        # reads), the solves in the executor, then the results written in the layers' order; a
        # layer whose damping is chosen closed loop runs the model, so it is solved here, in order
        work: list[tuple[CalibLayer, LayerStats | None, Any]] = []  # (layer, statistics, task index | loop | reason)
        tasks: list[LayerTask] = []
        for layer in group:
            weight = layer.weight
            layer_stats, skipped = layer.statistics(stats)
            if skipped is not None:
                work.append((layer, None, skipped))
                continue
            loop = _closed_loop_outputs(scope, layer) if reconstruction.percdamp is None else None
            if loop:
                work.append((layer, layer_stats, loop))
                continue
            values = values_of[weight.key]
            task = _solvable_task(
                layer,
                layer_stats,
                targets[weight.key],
                values,
                index_of[weight.key],
                reconstruction=reconstruction,
                ranking=ranking,
                percdamp=percdamp,
                uses=[stats[use.spec.key] for use in layer.uses],
            )
            if isinstance(task, Unsolvable):
                work.append((layer, None, task))
                continue
            work.append((layer, layer_stats, len(tasks)))
            tasks.append(task)
        on_solved = None if progress is None else partial(_counted_from, progress, done, total)
        solutions = executor.map(solve_layer, tasks, on_solved)
        seconds["solve"] += time.perf_counter() - tick
        tick = time.perf_counter()
        done += len(tasks)
        for layer, layer_stats, how in work:
            weight, target = layer.weight, targets[layer.weight.key]
            if not isinstance(how, int):
                done += 1
                if progress is not None:
                    progress(done, total, weight.key)
            if layer_stats is None:
                reason = how.reason if isinstance(how, Unsolvable) else f"no statistics ({how})"
                fallback[weight.key] = f"{reason}: pruned by magnitude"
                magnitude(weight.key)
                extra[weight.key] = {"method": "magnitude"}
                continue
            proto = inventory.proto(weight)
            values = tensors.read_array(proto)
            damp_record: dict[str, object] = {}
            if isinstance(how, int):
                solved = solutions[how]
                tensors.write_array(proto, layer.from_matrix(solved.new).astype(values.dtype))
            else:  # a recurrent R: the damping that best reproduces the node's outputs closed loop
                solve = partial(
                    _solve_layer,
                    layer,
                    layer_stats,
                    target,
                    values,
                    index_of[weight.key],
                    reconstruction=reconstruction,
                    ranking=ranking,
                    uses=[stats[use.spec.key] for use in layer.uses],
                )
                chosen, _stored, solved, errors = choose_damping(
                    model,
                    proto,
                    how,
                    lambda: data.batches(batch_size),
                    solve,
                    reference=dense,  # None in parallel mode: the model before this layer was pruned
                    default=percdamp,
                )
                damp_record = {"percdamp": chosen, "closed_loop_error": errors[chosen]}
            bias = None
            if reconstruction.bias_correction:
                done_at = [
                    (node_label(use.node), _apply_bias(model, scope, use, delta, values.dtype))
                    for use, delta in zip(layer.uses, solved.deltas, strict=True)
                ]
                said = {what for _, what in done_at}
                bias = said.pop() if len(said) == 1 else "; ".join(f"{where}: {what}" for where, what in done_at)
            extra[weight.key] = {
                "method": reconstruction.method,
                "error": _ratio(solved.err_num, solved.err_den),
                "error_magnitude": _ratio(solved.mag_num, solved.err_den),
                "bias": bias,
                **damp_record,
            }
        seconds["write"] += time.perf_counter() - tick
        changed = changed or bool(group)
    if scratch is not None:
        scratch.remove()
    log.info(
        "calibrated %d layers in %d waves: capture %.1fs (%d from the last one's frontier), solves %.1fs (%s), "
        "written %.1fs (closed-loop solves included)",
        len(calib),
        len(groups),
        seconds["capture"],
        0 if frontier is None else frontier.segments_run,
        seconds["solve"],
        type(executor).__name__,
        seconds["write"],
    )
    return allocated.annotate(_finish(inventory, targets, config, extra, fallback))


class _Scratch:
    """A staging folder in the system's temporary folder, removed by :attr:`remove` (once),
    else when the object goes or at interpreter exit; a killed run's is removed by the next run
    that stages there (:func:`onnxprune.graph.outputs.sweep_stale`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.remove = weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)


def _plain_float(values: np.ndarray) -> np.ndarray:
    """``values`` itself when float32 or float64, else widened to float64 (float16, bfloat16)."""
    return values if values.dtype in (np.float32, np.float64) else to_float64(values)


def _scratch() -> _Scratch | None:
    """A scratch folder for the dense values and the frontier, None (and a log line) when the
    temporary folder takes no new files: every capture then runs from the graph inputs, on the
    dense model too."""
    try:
        path = staging_dir(tempfile.gettempdir(), "dense-values")
    except OutputError as exc:
        log.info("dense values and frontier not kept: the temporary folder takes no new files (%s)", exc)
        return None
    return _Scratch(path)


def _dense_names(dense: ModelProto, specs_of: Sequence[Sequence[LayerSpec]]) -> list[str]:
    """The main-graph values a wave's capture reads from the dense model: each layer's input,
    the tensors it is made of, and the residual sum's other operand (body values excluded: they
    are read by a session of their own)."""
    values = {i.name for i in dense.graph.input} | {out for node in dense.graph.node for out in node.output if out}
    names = (
        name
        for specs in specs_of
        for spec in specs
        if not spec.scope
        for name in (spec.activation, *spec.reads, spec.residual)
        if name and name in values
    )
    return list(dict.fromkeys(names))


#: The most bytes of the dense values every wave reads that one calibration batch may hold: the
#: waves' batch is cut to fit (the captures' segments return a wave's inputs and the frontier
#: of each batch at once).
WAVE_BATCH_BYTES = 160 << 20


def _wave_batch(dense: ModelProto, names: Sequence[str], data: Dataset, batch: int) -> int:
    """The samples per wave batch: at most ``batch``, and as many as fit :data:`WAVE_BATCH_BYTES`
    with the dense values ``names`` of one sample (measured on the first; at least 1)."""
    first = next(data.batches(1), None)
    if not names or first is None:
        return batch
    per_sample = sample_bytes(dense, names, first, data.count(first))
    return max(1, min(batch, int(WAVE_BATCH_BYTES // max(per_sample, 1.0))))


def _counted_from(progress: Progress, start: int, total: int, done: int, _of: int, label: str) -> None:
    """A wave's ``done`` of ``_of`` solves as the pass's ``start + done`` of ``total`` steps."""
    progress(start + done, total, label)


def _closed_loop_outputs(scope: Scope, layer: CalibLayer) -> list[str]:
    """The outputs of a layer that reads its own node's output (a recurrent R), when they are
    main-graph values that can be read back (:mod:`onnxprune.passes.closed_loop`); else []."""
    if not layer.reads_own_output or len(layer.uses) != 1:
        return []
    node = layer.uses[0].node
    outputs = [name for name in node.output if name]
    return outputs if all(scope.producers.get(name) is node for name in outputs) else []


def _finish(inventory, targets, config, extra, fallback) -> PruneResult:  # noqa: ANN001
    """A record for every discovered tensor, with what was really done to it."""
    layers: list[LayerResult] = []
    for weight in inventory.weights:
        target = targets.get(weight.key)
        if target is None or not target.acts:
            layers.append(skipped_layer(weight, target))
            continue
        values = tensors.read_array(inventory.proto(weight))
        zeros = int(values.size - np.count_nonzero(sparsity.magnitude_keys(values)))
        reason = "; ".join(r for r in (target.reason, fallback.get(weight.key)) if r) or None
        layers.append(pruned_layer(weight, target, zeros, reason, **extra.get(weight.key, {"method": "magnitude"})))
    result = PruneResult(tuple(layers), config.as_dict())
    log.info(
        "%s: pruned %d tensors, %d of %d weights zero (%.1f%%)",
        config.method,
        len(result.pruned),
        result.zeros_after,
        result.weights_total,
        100 * result.sparsity_after,
    )
    return result


class CalibratedPass(Pass):
    """The calibrated pass as a pipeline step: :func:`prune_calibrated` on ``context.calibration``.

    It edits the model in place (it never streams: each wave is captured on the model
    pruned so far). Counts as :class:`~onnxprune.passes.unstructured.WeightPass`, plus the
    tensors pruned by plain magnitude because calibration could not handle them.
    """

    name = "calibrated"
    contract = Contract(reads=("model", "calibration"), needs=("model", "calibration"))

    def __init__(self, config: PruneConfig) -> None:
        self.config = config

    def check(self, context: PassContext) -> None:
        if self.config.reconstruction.ray:
            require_ray()  # before the model is read
        if context.calibration is None:
            reconstruction = self.config.reconstruction
            raise OptionError(
                f"{opt('method', reconstruction.method)}"
                f"{' with ' + opt('bias_correction', True) if reconstruction.bias_correction else ''} needs calibration "
                f"data: give {opt('calibration')} calib.npz (or a folder of images), or {opt('data_free', True)}"
            )

    def run(self, model: ModelProto, context: PassContext) -> PassResult:
        from onnxprune.passes.permutation import reorder_first

        self.check(context)
        before = param_stats(model)
        reordered = reorder_first(model, self.config, context, data=context.calibration)
        epochs = self.config.reconstruction.block_epochs
        # after the reorder (the same function, its channel order); the waves read this copy too
        dense = copy.deepcopy(model) if epochs else None
        result = prune_calibrated(model, self.config, context.calibration, progress=context.progress, dense=dense)
        if reordered is not None:
            result = replace(result, reordered=reordered)
        if dense is not None and context.calibration is not None:
            roots = [
                layer.name
                for layer in result.pruned
                if layer.error is not None and layer.scope == "" and layer.storage in ("initializer", "constant")
            ]
            records = fit_blocks(
                model,
                dense,
                context.calibration,
                roots,
                epochs=epochs,
                seed=self.config.seed,
                progress=context.progress,
            )
            result = replace(result, blocks=blocks_summary(records, epochs))
        after = param_stats(model)
        fallback = sum(1 for layer in result.pruned if layer.error is None)  # no statistics: by magnitude
        return prune_pass_result(
            self.name,
            result,
            before,
            after,
            magnitude_fallback=fallback,
            nonfinite=nonfinite_skipped(result),
            channels_reordered=int((reordered or {}).get("channels", 0)),  # type: ignore[call-overload]
        )
