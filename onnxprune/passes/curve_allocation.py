"""Error-curve allocation: how an overall sparsity is split among the calibrated layers.

With ``allocator="curves"`` (:class:`onnxprune.config.Allocation`) the calibrated pass does not
give every layer the overall sparsity ``t``; it gives each layer ``l`` (``n_l`` weights) the
sparsity ``s_l`` that minimises the predicted change of the model's outputs,

    minimise  Σ_l c_l · e_l(s_l)   subject to  Σ_l n_l s_l = floor(t · Σ_l n_l),
              lower_l <= s_l <= upper_l,

solved exactly over the convex envelopes of the curves by :mod:`onnxprune.sparsity.curves`.

Curves
    The dense model's layer inputs are captured once (:func:`onnxprune.capture.capture`, in
    chunks whose ``H`` stay under :data:`MAX_STATS_BYTES`), and each layer is pruned alone by
    the pass's own solver (``_solve_layer`` of :mod:`onnxprune.passes.calibrated`: the method,
    damping, block size and row-wise rule of the run) at the levels of :data:`GRID` and at
    ``t``. ``e_l(s) = Σ_g tr(ΔHΔᵀ) / Σ_g tr(WHWᵀ)``, ``Δ = W − Ŵ``, is the relative output error
    at the sparsity really reached (existing zeros count). The levels are solved by SparseGPT's
    greedy updates, without the run's exact refit of the kept weights
    (:data:`EXACT_FROM_TARGET`, :data:`EXACT_BELOW_TARGET`): the refit solves a ``k × k`` system
    per row for ``k`` kept columns, so it costs ``rows · k³`` where the greedy solve costs
    ``cols³ + rows · cols²``. On all-MiniLM-L6-v2 at 50 % the exact levels took 65 s of a 95 s
    allocation. The allocation needs the curves' shapes and the probe's ratio ``d_l / e_l(t)``,
    both measured on the same greedy solutions; measured against exact levels (refit at and
    above ``t``) with ``tools/calibration_table.py``'s fixtures at 50 / 70 %: LSTM 94.5 / 87.0
    against 94.5 / 86.9, transformer 89.1 / 88.5 against 89.0 / 88.8, CNN, CRNN and MLP the
    same to 0.1 point; all-MiniLM-L6-v2 at 50 %, embedding cosine 0.9660 against 0.9658;
    PP-OCRv4 rec at 70 %, character error rate 2.22 % against 2.27 %. (Greedy levels above ``t``
    with the exact solve at ``t`` did lose, transformer 70 %: 84.9: mixed curves are not one
    shape.) A method with ``curves_by`` (``admm``: 80 iterations per solve) is measured by
    that method's greedy solves instead; the pass still solves each layer with its own method.

Weights (the probe)
    Relative errors of different layers are not comparable in the model's loss: a layer whose
    output feeds a residual stream of large norm, or a gate, matters more than its relative
    error says. The probe measures it: ``d_l = Σ_o ‖F_o(X) − F_o^{(l)}(X)‖² / ‖F_o(X)‖²``, the
    change of every float output ``o`` of the model on the first :data:`PROBE_SAMPLES`
    calibration samples when only layer ``l`` is pruned at ``t`` (by the solve above), each
    output normalised by its own energy so that outputs of different scale weigh alike (when a
    calibrated layer sits inside an If/Loop/Scan body, on every calibration batch instead, cut
    as calibration cuts them: a body may run on some batches only; a layer whose pruning moves
    no output of the probe keeps its uniform count). Then
    ``c_l = d_l / e_l(t)``: ``c_l · e_l(s)`` predicts the output change of layer ``l`` at any
    ``s``, measured at ``s = t`` and scaled by the curve's shape.

    The probe stops early. It runs its batches in order (of :data:`PROBE_BATCH` samples at
    most) and stops a layer once the relative standard error of the mean per-sample change,
    ``std(d_b / n_b) / (√k · mean(d_b / n_b))`` over the ``k`` batches run, is at most
    :data:`PROBE_REL_SE` after at least :data:`PROBE_MIN_SAMPLES` samples in
    :data:`PROBE_MIN_BATCHES` batches; ``d_l`` is then the batches' sum scaled by ``N / n``.
    Outputs that average over many positions (a detector's map) move alike on every sample
    and settle early; a text line's logits do not, and run all 32. Measured with every probe
    run in full (``tools/probe_spread.py``, the per-batch changes recorded): PP-OCRv4 det at 640×640 (50 %)
    would stop at 15.2 samples a layer on average (the estimate within 14 % of the full one
    for 90 % of the layers, 51 % at worst), PP-OCRv4 rec at 48×1280 (70 %) at 29.6 (within
    3 %, 17 % at worst); det's text-map IoU did not move even with every probe cut to 8
    samples (0.9881 against 0.9880), while rec at 48×320 lost with 16 (character error rate
    2.79 % against 2.22 %). The weights stored as
    main-graph initializers are fed to one session (:class:`OutputProbe`), so a probe is one
    run of the model, not a session. (``c_l = 1`` and the output
    energy ``tr(WHWᵀ)`` as weights were measured and lose to uniform on the LSTM and transformer
    fixtures: ``tools/allocation_experiment.py``.)

    The probe runs in rounds. First every layer runs on the fewest batches the rule accepts
    (the *screen*: :data:`PROBE_MIN_BATCHES` batches holding :data:`PROBE_MIN_SAMPLES`), and
    the allocation is made from those estimates. A layer's probe runs on past the screen only
    if its weight is uncertain for the allocation: if a weight anywhere in the 95 % interval
    of its estimate, ``c_l·(1 ± t_{k−1}·SE)`` (``SE`` the relative standard error above,
    ``t_{k−1}`` Student's quantile over its ``k`` batches), would lower the predicted loss of
    the allocation by more than :data:`PROBE_REGRET` of it
    (:func:`onnxprune.sparsity.curves.uncertain`). Those run on, in the graph's order, from the
    screen's last batch to their own stopping rule (their tails start again from the graph
    inputs, on the batches left), and the allocation is checked again, :data:`PROBE_ROUNDS`
    rounds at most. The costliest probes are those of the small early layers, whose tails are
    nearly the whole model, and they are the surest decisions (kept dense whatever their
    weight): on PP-OCRv4 det at 640×640 (50 %) the layers holding 2.1 % of the weights took
    45 % of the probe's time, on rec at 48×1280 (70 %) 1.5 % took 49 %.
    Side by side with the probe before the screen (one run each, ``-v``): det's probe took
    38.1 s against 59.1 (12.4 samples a layer against 16.5; 10 of 54 layers ran past the
    screen), with the same allocation and text-map IoU (0.98803); rec's 57.3 s against 63.3
    (32 of 46 ran on), the same output bytes; all-MiniLM-L6-v2's output the same bytes too.
    At ``PROBE_REGRET = 0.003`` rec moved three small layers (predicted loss +0.1 %, yet a
    character error rate of 3.17 % against 2.84 % on 128 held-out lines): hence 0.001.

Unprobed
    The probes of a convolutional stem's small early layers run nearly the whole model for a
    handful of weights. Layers whose probe would run more than :data:`UNPROBED_TAIL` of the nodes
    the model runs are kept dense instead, at their floor, neither solved at the grid nor probed,
    and the others share the whole count: taken by their tail's share per weight, the costliest
    first, while together under :data:`UNPROBED_TOTAL` of the calibrated weights, so the budget
    they pass to the others stays that small. Recorded in the result (``unprobed``).
    Played back on probes recorded on every sample (``tools/probe_spread.py``, the allocation
    from all samples' weights): PP-OCRv4 det at 50 %, 8 layers (0.46 % of the weights, 28 % of
    the probes' time), all of which the allocation keeps dense anyway, so the same allocation;
    PP-OCRv4 rec at 70 %, 9 layers (0.41 %, 51 % of the time; the allocation gave two of them
    25 %), predicted output change +0.10 %. With a cap of 2 % (rec: 15 layers, 67 % of the time,
    eight of them at 25 % otherwise) rec's prediction rose 2.0 % and its character error rate on
    128 held-out lines from 2.84 % to 3.08 %; at 1 %, +0.54 %.

Counts
    ``upper_l = min(max(max_layer_sparsity, t), t + TRUST·(1 − t))`` (a trust region around the
    probed level, :data:`TRUST`), clipped to the highest level measured (curves
    are never extrapolated); ``lower_l`` = the layer's existing zeros. The sparsities are
    rounded to whole counts with the exact total (:func:`onnxprune.sparsity.curves.to_counts`;
    the solvers reach any count, :class:`onnxprune.reconstruct.methods.LayerProblem`).
    Layers the pass prunes by magnitude (no calibration view, no statistics) keep the uniform
    count and take no part; the total of the others is reduced by theirs.

Data-free calibration (synthetic inputs): the curves and the probe are then measured on the
synthetic data; on the fixtures at 50 % it still helps (SparseGPT top-1, uniform -> curves:
LSTM 88.9 -> 93.2, transformer 87.1 -> 88.8, CNN 98.2 -> 98.9, MLP 97.3 -> 97.6), so it is the
default there too.

Cost: one capture of the dense model (per chunk, in batches of :data:`CAPTURE_BATCH` samples at
most, and of :data:`BATCH_BYTES` of layer inputs, as the probe's; half the rows per column of the
run's captures, :data:`CURVE_ROWS_DIVISOR`, and after a capped layer's first batch per dimension
its damping leaves to the data instead: :mod:`onnxprune.row_sampling`, "Damped dimension"), at most
``len(GRID) + 1`` greedy solves per layer (the levels above the trust region's top after the
first are not solved) and the runs of each layer's tail on at most :data:`PROBE_SAMPLES` samples (the
screen's, then those of the rounds, which run the tails again from the graph inputs on the batches
after the screen). Each layer's curve is solved on a helper thread while the probe runs the layer
before it (:data:`CURVES_AHEAD`): all-MiniLM-L6-v2 at 50 %, side by side with the curves solved in
the probe's thread (``tools/bench_calibrate.py --workers 1``, two runs each), took 57.3 and 56.4 s
against 60.5 and 58.8 s, the allocation 19.9 and 19.5 s against 21.6 and 21.3 s, the same output
bytes. The time of each step is logged and recorded in the result (:meth:`Allocated.record`,
with the probe's rounds and the layers they ran on). With a single
calibrated layer there is nothing to split: uniform.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
from onnx import ModelProto, helper

from onnxprune import runtime
from onnxprune.capture import LayerStats, capture, read_values, sample_bytes
from onnxprune.config import PruneConfig, Reconstruction
from onnxprune.data import Dataset
from onnxprune.errors import DataError, opt
from onnxprune.graph import tensors
from onnxprune.graph.discovery import Inventory, Weight
from onnxprune.passes.base import Progress
from onnxprune.passes.layers import CalibLayer
from onnxprune.passes.result import PruneResult
from onnxprune.passes.unstructured import Target
from onnxprune.reconstruct.methods import METHODS
from onnxprune.reconstruct.threads import one_blas_thread, under_callers_blas_limit
from onnxprune.row_sampling import RowSampling
from onnxprune.sparsity import count_for_amount
from onnxprune.sparsity.curves import ErrorCurve, allocate, to_counts, uncertain
from onnxprune.tails import Tails

log = logging.getLogger(__name__)

#: the sparsities at which each layer's error curve is measured (the overall target is added)
GRID = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95)
#: the probe runs the model on the first this many calibration samples (whole batches); one run per
#: layer, so it is most of the allocation's cost. 16 were measured against 32: the fixtures and
#: all-MiniLM-L6-v2 the same, but PP-OCRv4 rec at 70 % (a sample is one text line) lost: character
#: error rate 2.79 % against 2.22 % (``tools/check_ocr_targets.py --only rec --calib 128``)
PROBE_SAMPLES = 32
#: the probe of a layer stops before :data:`PROBE_SAMPLES` once it has run at least this many
#: samples in at least :data:`PROBE_MIN_BATCHES` batches and the relative standard error of its
#: per-sample change is at most :data:`PROBE_REL_SE` (:meth:`OutputProbe.measure`)
PROBE_MIN_SAMPLES = 8
PROBE_MIN_BATCHES = 4
PROBE_REL_SE = 0.1
#: the probe first runs every layer on the fewest batches :meth:`OutputProbe.measure`'s stopping
#: rule accepts (:data:`PROBE_MIN_BATCHES`, :data:`PROBE_MIN_SAMPLES`: the screen), then runs on, in
#: rounds, only the layers whose weight is uncertain for the allocation: those for which a weight
#: anywhere in its 95 % interval would lower the predicted loss by more than this fraction of it
#: (:func:`onnxprune.sparsity.curves.uncertain`)
PROBE_REGRET = 0.001
#: layers whose probe runs more than this share of the nodes the model runs are kept dense without a
#: probe, the costliest probes per weight first, while they hold at most :data:`UNPROBED_TOTAL` of the
#: calibrated layers' weights together (module docstring, "Unprobed")
UNPROBED_TAIL = 0.5
UNPROBED_TOTAL = 0.005
#: False: no screen, every probe runs by its stopping rule alone (``tools/probe_spread.py``)
PROBE_SCREEN = True
#: the rounds of the probe after the screen, at most (each runs the tails of the layers still uncertain)
PROBE_ROUNDS = 3
#: the probe's batches hold at most this many samples, so that it can stop early (one probe of
#: all-MiniLM-L6-v2's first 6 layers: 5.3 s in batches of 32, 5.6 s in 8, 7.7 s in 2)
PROBE_BATCH = 4
#: the layers whose curves the helper thread solves ahead of the probe, at most (each holds its stored
#: array and its solution until probed). all-MiniLM-L6-v2 at 50 % (2 cores, ``-v``): the allocation
#: took 21.2 s with 1 or 3 ahead (waiting on the curves 4.4 against 2.7 s, the probe 10.9 against
#: 12.4 s: both threads share two cores already), against 23.1 s with the curves in the probe's thread
CURVES_AHEAD = 1
#: the dense statistics (the ``H`` of the layers) held at once; more are captured in chunks
MAX_STATS_BYTES = 1 << 30
#: the dense capture reads every calibrated layer's input of a batch at once, so it runs batches of
#: at most this many samples (all-MiniLM-L6-v2, 36 layers: at 32 samples the run's peak memory grew
#: from 0.49 to 1.50 GB during it)
CAPTURE_BATCH = 8
#: the capture and the probe also cut their batches so that the calibrated layers' inputs of one
#: batch stay under this many bytes (measured on one sample). PP-OCRv4 rec at 48x1280 (85 MiB of
#: layer inputs a sample): the whole run's peak was 2.94 GB with the capture at 8 samples, 1.03 GB
#: at 2; its first 6 probes took 19.4 / 20.4 / 19.8 s in batches of 32 / 8 / 2 at 1136 / 661 /
#: 403 MB peak (all-MiniLM-L6-v2, 8 MiB a sample: 5.3 s at 32, 5.6 s at 8, 7.7 s at 2)
BATCH_BYTES = 192 << 20
#: the curves' capture draws the rows per column of the run's captures (``capture_rows``) divided by
#: this (every row stays every row): the curves need each layer's relative error, not its solve.
#: PP-OCRv4 det at 640×640 (50 %, 32 pages; its wide 3×3 layers are capped): that capture took
#: 21.1 s against 27.3 s beside it, with the same allocation and output bytes (``tools/ab_runs.py``)
CURVE_ROWS_DIVISOR = 2
#: the levels below the target solved with the run's exact refit (else SparseGPT's greedy updates)
EXACT_BELOW_TARGET = False
#: the target and the levels above it solved with the run's exact refit (else the greedy updates)
EXACT_FROM_TARGET = False
#: no layer is given more than ``t + TRUST·(1 − t)``: the probe is measured at ``t``, and far above
#: it the curve's shape does not predict the outputs (PP-OCRv4 rec at 70 %: its classifier, 30 % of
#: the weights, went to 88 % and the character error rate from 1.9 % (uniform) to 9.7 %)
TRUST = 1 / 3


def curve_sampling(sampling: RowSampling) -> RowSampling:
    """The row sampling of the curves' capture: ``k / CURVE_ROWS_DIVISOR`` rows per column
    (at least one) for the run's ``k`` (:data:`CURVE_ROWS_DIVISOR`); every row stays every row."""
    if sampling.per_col is None:
        return sampling
    return replace(sampling, per_col=max(1, sampling.per_col // CURVE_ROWS_DIVISOR))


class Solved(Protocol):
    """What the pass's layer solver reports: ``Σ tr(ΔHΔᵀ)`` and ``Σ tr(WHWᵀ)``."""

    err_num: float
    err_den: float


#: the pass's layer solver, called ``solve(layer, stats, target, values=stored array, index=in the
#: inventory, reconstruction=...)`` -> (new stored array, its errors)
LayerSolve = Callable[..., tuple[np.ndarray, Solved]]


@dataclass(frozen=True)
class LayerCurve:
    """One layer's measured curve and weight (see module docstring).

    levels, error: the sparsities reached (from 0) and the relative output error at each;
    probe: ``d_l``; weight: ``c_l``; allocated: the sparsity given (count / numel); probe_samples:
    the samples the probe ran (it stops early once ``d_l`` is known well enough).
    """

    key: str
    numel: int
    levels: tuple[float, ...]
    error: tuple[float, ...]
    probe: float
    weight: float
    allocated: float = math.nan
    probe_samples: int = 0


@dataclass(frozen=True)
class Allocated:
    """The targets the calibrated pass uses, and what the allocation did for its result.

    mode: "uniform" (the targets as given) or "curves"; curves: per calibrated layer; fixed:
    the layers kept at their uniform count (pruned by magnitude, or without statistics);
    seconds: the time of each step (capture, curves, probe, allocate); predicted: ``Σ c_l e_l``
    of the allocation and of uniform.
    """

    mode: str
    targets: dict[str, Target]
    curves: dict[str, LayerCurve] = field(default_factory=dict)
    fixed: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # the progress steps the allocation reported (the pass's own follow them)
    rounds: int = 0  # the probe's rounds after the screen
    refined: tuple[str, ...] = ()  # the layers those rounds ran on
    unprobed: tuple[str, ...] = ()  # the layers kept dense without a probe (:func:`unprobed`)

    def record(self) -> dict[str, object]:
        """JSON-friendly summary (the result's ``allocation``)."""
        if self.mode != "curves":
            return {"mode": self.mode}
        return {
            "mode": self.mode,
            "grid": list(GRID),
            "probe_samples": PROBE_SAMPLES,
            "probe_rounds": self.rounds,
            "probe_refined": list(self.refined),
            "unprobed": list(self.unprobed),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "predicted": self.predicted,
            "fixed": list(self.fixed),
            "layers": {
                key: {
                    "allocated": c.allocated,
                    "weight": c.weight,
                    "probe": c.probe,
                    "probe_samples": c.probe_samples,
                    "levels": list(c.levels),
                    "error": list(c.error),
                }
                for key, c in self.curves.items()
            },
        }

    def annotate(self, result: PruneResult) -> PruneResult:
        """``result`` with the allocation recorded: the config's ``allocator``, the result's
        ``allocation`` and each curve layer's ``curve_weight`` and ``probe``."""
        layers = tuple(
            replace(layer, curve_weight=self.curves[layer.key].weight, probe=self.curves[layer.key].probe)
            if layer.key in self.curves
            else layer
            for layer in result.layers
        )
        return replace(
            result, layers=layers, config={**result.config, "allocator": self.mode}, allocation=self.record()
        )


def allocate_layers(
    model: ModelProto,
    config: PruneConfig,
    data: Dataset,
    inventory: Inventory,
    targets: Mapping[str, Target],
    layers: list[CalibLayer],
    *,
    solve: LayerSolve,
    damp: float | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    scratch: Path | None = None,
) -> Allocated:
    """The per-layer targets of ``config``'s allocator for the calibrated pass.

    ``targets`` are :func:`~onnxprune.passes.unstructured.plan_targets`' (uniform), ``layers``
    the layers the pass calibrates, ``solve`` its layer solver (given the reconstruction), ``damp``
    its resolved ``percdamp`` (it sizes the capture's capped layers: :mod:`onnxprune.row_sampling`).
    Uniform returns ``targets``; curves (module docstring) replaces the counts of ``layers``
    and keeps the others'. ``progress`` gets one step per layer, out of ``2 · len(layers)``
    (the pass's own steps follow). ``scratch``: an empty folder the caller owns and removes, for
    the probe's dense values (:class:`OutputProbe`); without it every probe runs the whole model.
    """
    if config.resolved_allocator != "curves":
        return Allocated("uniform", dict(targets))
    if len(layers) < 2:  # nothing to split: the one layer takes what the others leave, its uniform count
        log.info("allocation by error curves: %d calibrated layer, nothing to split: uniform", len(layers))
        return Allocated("uniform", dict(targets))
    t = float(config.sparsity)  # type: ignore[arg-type]  # curves needs an overall sparsity
    start = time.perf_counter()
    keys = {layer.weight.key for layer in layers}
    fixed = [k for k, target in targets.items() if target.count is not None and k not in keys]
    by_key = {w.key: w for w in inventory.weights}
    index_of = {w.key: i for i, w in enumerate(inventory.weights)}
    # a layer inside an If/Loop/Scan body may run on some batches only: the probe then runs them all
    in_body = any(use.spec.scope for layer in layers for use in layer.uses)
    layers = _in_graph_order(model, layers)  # the probe's tails then start each where the last one's did
    fit = batch_size if in_body else _fitting_batch(model, layers, data)  # a body: calibration's own batches
    if fit < batch_size:  # a power of two: whole batches then hold exactly PROBE_SAMPLES
        batch_size = 1 << (fit.bit_length() - 1)
    feeds = probe_batches(data, batch_size if in_body else min(batch_size, PROBE_BATCH), every=in_body)
    # a body may run on some batches only: its probe runs them all (no early stop)
    counts = None if in_body else [data.count(feed) for feed in feeds]
    screen = _screen(counts)  # every layer's first probe: the fewest batches its stopping rule accepts
    probe = OutputProbe(model, [layer.weight for layer in layers], feeds, scratch, counts=counts, window=screen)
    # small layers whose probe would run most of the model: kept dense
    kept_dense = unprobed((layer.weight.key, layer.weight.numel, probe.tail_share(layer.weight)) for layer in layers)
    probe.skip([layer.weight for layer in layers if layer.weight.key in kept_dense])
    dense: dict[str, Target] = {}
    seconds = {"capture": 0.0, "curves": 0.0, "probe": time.perf_counter() - start, "allocate": 0.0}
    measured: dict[str, _Measured] = {}
    probed: dict[str, Probed] = {}
    pending = _Pending(None if scratch is None else scratch / "solved")  # the layers at t, for later rounds
    done = 0
    for chunk in _chunks(layers):
        tick = time.perf_counter()
        specs = [use.spec for layer in chunk for use in layer.uses]
        # every layer's input at once: a batch of CAPTURE_BATCH keeps those activations small; a
        # body may run on some batches only, so then the batches are calibration's own
        batches = data.batches(batch_size if in_body else min(batch_size, CAPTURE_BATCH))
        sampling = curve_sampling(config.reconstruction.row_sampling(config.seed, damp=damp))
        stats = capture(model, specs, batches, sampling=sampling)
        seconds["capture"] += time.perf_counter() - tick
        # the layers' curves are solved on a helper thread, up to CURVES_AHEAD layers ahead of the
        # probe (onnxruntime's runs and the greedy solves each leave part of the cores idle); the
        # BLAS limit is held here for both threads, so the probe's sums do not depend on the helper
        with one_blas_thread():
            pool = ThreadPoolExecutor(1, thread_name_prefix="onnxprune-curves")
            stop = threading.Event()  # set on the way out: the helper solves no further level
            try:
                begin = partial(
                    _start_curve,
                    pool,
                    stats=stats,
                    inventory=inventory,
                    kept_dense=kept_dense,
                    solve=solve,
                    index_of=index_of,
                    config=config,
                    t=t,
                    stop=stop,
                )
                for layer, current in _started_ahead(chunk, begin, CURVES_AHEAD):
                    key = layer.weight.key
                    done += 1
                    if progress is not None:
                        progress(done, 2 * len(layers), f"error curve of {key}")
                    if current.future is None:
                        fixed.append(key)  # unusable statistics: the pass prunes it by magnitude, uniform count
                        if current.values is not None:  # kept dense (at its floor), neither solved nor probed
                            dense[key] = Target(count=current.floor, amount=current.floor / current.values.size)
                        continue
                    tick = time.perf_counter()
                    curve, stored = current.future.result()
                    seconds["curves"] += time.perf_counter() - tick
                    tick = time.perf_counter()
                    at_t = stored.astype(current.values.dtype)
                    first = probe.measure(layer.weight, inventory, at_t)
                    seconds["probe"] += time.perf_counter() - tick
                    if first.change == 0 and curve.at_target > 0:  # pruned, yet no output moved: not reached
                        log.info("%s: the probe's samples do not reach it; it keeps its uniform count", key)
                        fixed.append(key)
                        continue
                    measured[key] = replace(curve, probe=first.change, probe_samples=first.samples)
                    probed[key] = first
                    if not first.settled:
                        pending.keep(key, at_t)
                    log.debug("%s: %s", key, measured[key])
            finally:  # an error or a signal here: the helper ends after the level it is solving
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
        del stats, begin  # the next chunk's capture holds its own
    problem = _Problem(t, config.max_layer_sparsity, {**targets, **dense}, tuple(fixed), by_key)
    tick = time.perf_counter()
    rounds = _refine(probe, problem, measured, probed, pending, inventory, screen or 0)
    seconds["probe"] += time.perf_counter() - tick
    pending.clear()
    probe.close()
    tick = time.perf_counter()
    result = problem.allocate(measured)
    seconds["allocate"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - start
    if result is None:
        return Allocated("uniform", dict(targets), seconds=seconds, steps=len(layers))
    new_targets, curves, predicted = result
    log.info(
        "allocation by error curves: %d layers (%d fixed, %d of them kept dense unprobed) in %.1fs (capture %.1fs, "
        "curves %.1fs, probe %.1fs, %.1f samples a layer, %d layers run past the screen in %d round(s)); predicted "
        "output change %.4g (uniform %.4g)",
        len(curves),
        len(fixed),
        len(dense),
        seconds["total"],
        seconds["capture"],
        seconds["curves"],
        seconds["probe"],
        sum(c.probe_samples for c in curves.values()) / max(len(curves), 1),
        len(rounds.refined),
        rounds.count,
        predicted["curves"],
        predicted["uniform"],
    )
    refined = tuple(key for key in curves if key in rounds.refined)
    return Allocated(
        "curves",
        new_targets,
        curves,
        tuple(fixed),
        seconds,
        predicted,
        steps=len(layers),
        rounds=rounds.count,
        unprobed=tuple(dense),  # in the graph's order, as they were kept
        refined=refined,
    )


def unprobed(layers: Iterable[tuple[str, int, float | None]], cap: float | None = None) -> set[str]:
    """The layers kept dense without a probe (module docstring, "Unprobed"), of ``layers`` given
    as (key, weights, share of the model its probe runs or None): those whose probe runs more
    than :data:`UNPROBED_TAIL` of the model, by their share per weight (the costliest probes per
    weight first), while together under ``cap`` (:data:`UNPROBED_TOTAL`) of all their weights."""
    layers = list(layers)
    total = sum(numel for _, numel, _ in layers)
    cap = UNPROBED_TOTAL if cap is None else cap
    candidates = [
        (share / max(numel, 1), key, numel)
        for key, numel, share in layers
        if share is not None and share > UNPROBED_TAIL
    ]
    chosen: set[str] = set()
    kept = 0
    for _, key, numel in sorted(candidates, reverse=True):
        if kept + numel <= cap * total:
            chosen.add(key)
            kept += numel
    return chosen


def _in_graph_order(model: ModelProto, layers: list[CalibLayer]) -> list[CalibLayer]:
    """``layers`` by the position of the first main-graph node that reads their weight (those
    read in bodies only, or by no main-graph node, last, as they were)."""
    first: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            first.setdefault(name, index)
    end = len(model.graph.node)
    return sorted(layers, key=lambda layer: first.get(layer.weight.name, end) if layer.weight.scope == "" else end)


def _fitting_batch(model: ModelProto, layers: list[CalibLayer], data: Dataset) -> int:
    """The samples per batch whose main-graph layer inputs take :data:`BATCH_BYTES` (at least 1),
    measured on the first sample."""
    names = list(dict.fromkeys(use.spec.activation for layer in layers for use in layer.uses if not use.spec.scope))
    first = next(data.batches(1), None)
    if not names or first is None:
        return CAPTURE_BATCH
    per_sample = sample_bytes(model, names, first, data.count(first))
    return max(1, int(BATCH_BYTES // max(per_sample, 1.0)))


def _chunks(layers: list[CalibLayer]) -> Iterable[list[CalibLayer]]:
    """Consecutive groups of ``layers`` whose statistics (``groups · cols²`` float64 per use)
    stay under :data:`MAX_STATS_BYTES` (a layer above it alone is a group of its own)."""
    chunk: list[CalibLayer] = []
    size = 0
    for layer in layers:
        need = sum(8 * use.spec.groups * use.spec.cols**2 for use in layer.uses)
        if chunk and size + need > MAX_STATS_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(layer)
        size += need
    if chunk:
        yield chunk


def _screen(counts: Sequence[int] | None) -> int | None:
    """The fewest batches the probe's stopping rule accepts (:data:`PROBE_MIN_BATCHES` holding
    :data:`PROBE_MIN_SAMPLES`), None when the probe has no early stop or the batches do not reach it."""
    if counts is None or not PROBE_SCREEN:
        return None
    seen = 0
    for k, count in enumerate(counts, start=1):
        seen += count
        if k >= PROBE_MIN_BATCHES and seen >= PROBE_MIN_SAMPLES:
            return k
    return None


class _Pending:
    """The layers' stored arrays solved at ``t``, kept for the probe's later rounds: ``.npy`` files
    in ``folder`` (created; the caller removes it), or in memory without one."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.held: dict[str, np.ndarray] = {}
        self.files: dict[str, Path] = {}

    def keep(self, key: str, values: np.ndarray) -> None:
        if self.folder is None:
            self.held[key] = values
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{len(self.files)}.npy"
        np.save(path, np.require(values, requirements="C"), allow_pickle=False)
        self.files[key] = path

    def load(self, key: str) -> np.ndarray:
        return self.held[key] if key in self.held else np.load(self.files[key])

    def clear(self) -> None:
        for path in self.files.values():
            path.unlink(missing_ok=True)
        self.held, self.files = {}, {}


@dataclass
class _Rounds:
    """What the probe's rounds after the screen did: how many ran, and the layers they ran on."""

    count: int = 0
    refined: set[str] = field(default_factory=set)


#: Student's t quantile at 97.5 % by degrees of freedom (1 to 30; beyond, the one at 30): the
#: 95 % interval of a mean from ``k`` batches is ``± t(k − 1) · SE``
# fmt: off
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# fmt: on


def _span(probed: Probed, counts: Sequence[int]) -> tuple[float, float] | None:
    """The factors ``(1 − t·SE, 1 + t·SE)`` (the lower one at least 0) that bound the 95 % interval
    of a probe's change, ``SE`` its relative standard error over the batches run
    (:func:`_relative_error`), ``t`` Student's quantile; None when it is not known (fewer than two
    batches, or nothing moved)."""
    k = len(probed.moved)
    error = _relative_error(list(probed.moved), list(counts[:k]))
    if not math.isfinite(error):
        return None
    spread = _T975[min(k - 1, len(_T975)) - 1] * error
    return max(1.0 - spread, 0.0), 1.0 + spread


def _refine(
    probe: OutputProbe,
    problem: _Problem,
    measured: dict[str, _Measured],
    probed: dict[str, Probed],
    pending: _Pending,
    inventory: Inventory,
    screen: int,
) -> _Rounds:
    """Run the probe on, past the screen, for the layers whose weight is uncertain for the
    allocation (:data:`PROBE_REGRET`), in rounds of the graph's order, at most
    :data:`PROBE_ROUNDS`; each probe resumes where it stopped and stops by its own rule. Updates
    ``measured`` and ``probed``."""
    rounds = _Rounds()
    counts = probe.counts or []
    order = list(measured)  # the graph's order: the tails then start each where the last one's did
    while rounds.count < PROBE_ROUNDS:
        open_keys = [k for k in order if not probed[k].settled and math.isfinite(probed[k].change)]
        if not open_keys:
            break
        spans = {k: _span(probed[k], counts) for k in open_keys}
        unknown = {k for k, span in spans.items() if span is None}
        known = {k: span for k, span in spans.items() if span is not None}
        try:
            curves, total, sizes = problem.curves(measured)
            worth = set(uncertain(curves, total / sizes, known, PROBE_REGRET)) if known and sizes else set()
        except ValueError:  # the allocation itself will say why it cannot be made
            worth = set()
        again = [k for k in open_keys if k in unknown or k in worth]
        if not again:
            break
        rounds.count += 1
        rounds.refined.update(again)
        probe.restart([problem.by_key[k] for k in again], screen)
        for key in again:
            before = probed[key]
            probed[key] = probe.measure(problem.by_key[key], inventory, pending.load(key), before=before.moved)
            measured[key] = replace(measured[key], probe=probed[key].change, probe_samples=probed[key].samples)
        log.debug("probe round %d: %d layers run on: %s", rounds.count, len(again), again)
    return rounds


@dataclass(frozen=True)
class _Measured:
    """One layer's curve (levels reached from 0, errors), ``e(t)``, the probe ``d`` and the
    least sparsity worth allocating (:func:`_floor`)."""

    levels: tuple[float, ...]
    errors: tuple[float, ...]
    at_target: float
    floor: float
    probe: float = math.nan
    probe_samples: int = 0


def _curve(
    solve: Callable[..., tuple[np.ndarray, Solved]],
    reconstruction: Reconstruction,
    t: float,
    floor: int,
    numel: int,
    stop: threading.Event | None = None,
) -> tuple[_Measured, np.ndarray]:
    """The layer's curve and its stored array solved at ``t`` (for the probe). SparseGPT's greedy
    updates stand in for its exact refit (:data:`EXACT_FROM_TARGET`, :data:`EXACT_BELOW_TARGET`):
    the refit costs ``rows · k³`` for ``k`` kept columns. The levels stop
    at the first that reaches the trust region's top (or the layer's floor, if higher): the
    allocation never goes above it, and the envelope there is interpolated from that level.
    Once ``stop`` is set, no further level is solved (:class:`_Stopped`)."""
    levels, errors = [0.0], [0.0]
    at_target, at_stored = 0.0, None
    greedy = replace(
        reconstruction, exact_refit=False, method=METHODS[reconstruction.method].curves_by or reconstruction.method
    )
    needed = max(t + TRUST * (1 - t), floor / numel)
    for level in sorted({*GRID, t}):
        if at_stored is not None and levels[-1] >= needed:
            break
        count = count_for_amount(numel, level)
        if count <= floor and level != t:
            continue
        if stop is not None and stop.is_set():
            raise _Stopped("the allocation stopped before this curve was measured")
        exact = EXACT_FROM_TARGET if level >= t else EXACT_BELOW_TARGET
        stored, solved = solve(Target(count=count, amount=level), reconstruction=reconstruction if exact else greedy)
        reached = (numel - int(np.count_nonzero(stored))) / numel
        error = max(solved.err_num, 0.0) / solved.err_den if solved.err_den > 0 else 0.0
        if level == t:
            at_target, at_stored = error, stored
        if reached > levels[-1]:
            levels.append(reached)
            errors.append(error)
    assert at_stored is not None  # the target is always solved
    return _Measured(tuple(levels), tuple(errors), at_target, floor / numel), at_stored


def _started_ahead(
    layers: Iterable[CalibLayer], start: Callable[[CalibLayer], _StartedCurve], ahead: int
) -> Iterator[tuple[CalibLayer, _StartedCurve]]:
    """Each layer with ``start(layer)``, in order; when a layer is yielded, the ``ahead`` layers
    after it have been started too."""
    queue: deque[tuple[CalibLayer, _StartedCurve]] = deque()
    for layer in layers:
        queue.append((layer, start(layer)))
        if len(queue) > ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


@dataclass(frozen=True)
class _StartedCurve:
    """A layer's curve, being solved (``future``), with its stored array and floor; ``future`` None:
    not solved (``values`` None: its statistics are unusable; else it is kept dense)."""

    values: np.ndarray | None = None
    floor: int = 0
    future: Future[tuple[_Measured, np.ndarray]] | None = None


class _Stopped(Exception):
    """A curve's solve given up: the allocation stopped (an error, a signal) while it ran."""


def _start_curve(
    pool: ThreadPoolExecutor,
    layer: CalibLayer,
    stats: Mapping[str, LayerStats],
    inventory: Inventory,
    kept_dense: set[str],
    solve: LayerSolve,
    index_of: Mapping[str, int],
    config: PruneConfig,
    t: float,
    stop: threading.Event | None = None,
) -> _StartedCurve:
    """The layer's curve solve, submitted to ``pool`` (one helper thread, under the caller's BLAS
    limit: :func:`~onnxprune.reconstruct.threads.under_callers_blas_limit`)."""
    key = layer.weight.key
    layer_stats, unusable = layer.statistics(stats)
    if unusable is not None:
        return _StartedCurve()
    values = tensors.read_array(inventory.proto(layer.weight))
    floor = _floor(layer, layer_stats, values)
    if key in kept_dense:
        return _StartedCurve(values, floor)
    # the curves read the method's error only, not the magnitude mask's
    solver = partial(solve, layer, layer_stats, values=values, index=index_of[key], magnitude_error=False)

    def run() -> tuple[_Measured, np.ndarray]:
        with under_callers_blas_limit():
            return _curve(solver, config.reconstruction, t, floor, values.size, stop)

    return _StartedCurve(values, floor, pool.submit(run))


class OutputProbe:
    """The model's float outputs on the probe's feeds, with one weight replaced at a time.

    Given a ``folder`` (an empty folder the caller owns and removes), a weight stored in the
    main graph (an initializer, a Constant) runs only the nodes that depend on it (:class:`onnxprune.tails.Tails`:
    its tail, from the dense values where it starts, which are kept in the folder). Without
    one, the main-graph initializers are made graph inputs too (overridable initializers), so
    one session serves every probe: replacing one is feeding it. A weight stored elsewhere (a
    body; a Constant, without a folder) is written into the model and run in a session of its
    own, then restored (on every batch). ``window``: the probes run the first this many batches
    only (the screen; the tails hold no others), until :meth:`restart` moves them to the rest.
    """

    def __init__(
        self,
        model: ModelProto,
        weights: list[Weight],
        feeds: list[dict[str, np.ndarray]],
        folder: Path | None = None,
        *,
        counts: list[int] | None = None,
        window: int | None = None,
    ) -> None:
        self.model, self.feeds = model, feeds
        self.counts = counts  # samples per feed; None: every probe runs every feed
        # the batches the probes run: [first, stop) (the tails hold those only)
        self.first, self.stop = 0, len(feeds) if window is None else min(window, len(feeds))
        graph = model.graph
        inputs = {i.name for i in graph.input}
        stored = {t.name: t for t in graph.initializer}
        main = {w.name for w in weights if w.scope == "" and w.storage == "initializer" and w.name in stored}
        main -= set(feeds[0]) if feeds else set()
        constants = {w.name for w in weights if w.scope == "" and w.storage == "constant"}
        # with a folder, the weights stored in the main graph run their tails only (named in the
        # order they are probed: the tails' frontier keeps what a later cut reads)
        tailed = [w.name for w in weights if w.scope == "" and w.name in main | constants]
        self.folder = folder
        self.tails = Tails(model, feeds[: self.stop], folder, tailed) if folder is not None and tailed else None
        self.tailed = main | constants if self.tails is not None else set()
        self.fed = main if self.tails is None else set()
        added = [
            helper.make_tensor_value_info(name, stored[name].data_type, list(stored[name].dims))
            for name in sorted(self.fed - inputs)
        ]
        graph.input.extend(added)
        try:
            self.session = runtime.session(model.SerializeToString(), optimize=True) if self.fed else None
        except Exception as exc:  # onnxruntime's own types; a model over 2 GiB cannot be serialized
            log.info("the probe writes each weight into the model instead of feeding it: %s", exc)
            self.session, self.fed = None, set()
        finally:
            for _ in added:
                graph.input.pop()
        self.names = [o.name for o in graph.output]
        self.dense = self._outputs({})
        self.energy = {name: sum(_squared_distance(p) for p in parts) for name, parts in self.dense.items()}

    def tail_share(self, weight: Weight) -> float | None:
        """The share of the model's run that the probe of ``weight`` runs (:meth:`onnxprune.tails.Tails.share`);
        None when it runs no tail (a weight in a body, or no folder)."""
        if self.tails is None or weight.name not in self.tailed:
            return None
        return self.tails.share(weight.name)

    def skip(self, weights: Sequence[Weight]) -> None:
        """Weights that will not be probed after all: the tails keep nothing for them."""
        if self.tails is not None and weights:
            self.tails.skip({w.name for w in weights})

    def restart(self, weights: list[Weight], first: int) -> None:
        """Run the probes of ``weights``, in this order, on the batches from ``first`` to the last
        (a round after the first: the tails start again from the graph inputs, the last round's
        frontier having passed their cuts)."""
        self.first, self.stop = first, len(self.feeds)
        if self.tails is not None and self.folder is not None:
            self.tails.frontier.reset("a new round of probes")
            names = [w.name for w in weights if w.scope == "" and w.name in self.tailed]
            self.tails = Tails(self.model, self.feeds[first:], self.folder, names)

    def close(self) -> None:
        """Remove the dense values the tails kept."""
        if self.tails is not None:
            self.tails.frontier.reset("the probes are done")

    def _run(self, index: int, override: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of the fed session on batch ``index``."""
        assert self.session is not None
        with _probing():
            return runtime.run_batch(self.session, self.names, {**self.feeds[index], **override}, index)

    def _outputs(self, override: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
        """Each float output, batch by batch."""
        if self.session is not None:
            runs = [self._run(index, override) for index in range(len(self.feeds))]
        else:
            with _probing():
                runs = read_values(self.model, self.names, self.feeds)
        out = {}
        for name in self.names:
            parts = [np.asarray(run[name]) for run in runs]
            if parts and all(np.issubdtype(p.dtype, np.floating) for p in parts):
                out[name] = parts
        return out

    def _moved(self, index: int, outputs: Mapping[str, np.ndarray]) -> float:
        """``Σ_o ‖F_o' − F_o‖² / ‖F_o‖²`` over batch ``index`` (the energy over all the feeds; an
        output of zero energy: its plain squared change; an output not given did not move)."""
        total = 0.0
        for name, dense in self.dense.items():
            if name in outputs:
                energy = self.energy[name]
                total += _squared_distance(outputs[name], dense[index]) / (energy if energy > 0 else 1.0)
        return total

    def _settled(self, moved: list[float]) -> bool:
        """True once the per-sample change of the batches run is known well enough (the
        constants above :data:`PROBE_REL_SE`): the probe runs no more batches."""
        if self.counts is None or len(moved) >= len(self.counts):
            return False
        seen = self.counts[: len(moved)]
        if len(moved) < PROBE_MIN_BATCHES or sum(seen) < PROBE_MIN_SAMPLES:
            return False
        return _relative_error(moved, seen) <= PROBE_REL_SE

    def measure(
        self,
        weight: Weight,
        inventory: Inventory,
        stored: np.ndarray,
        *,
        before: Sequence[float] = (),
    ) -> Probed:
        """``d = Σ_o ‖F_o' − F_o‖² / ‖F_o‖²`` over the probe's samples with ``weight`` replaced by
        ``stored``. The batches run in order, up to the window's end, and with ``counts`` the
        probe stops once :meth:`_settled`; ``d`` is then the batches' sum scaled by ``N / n``
        (``n`` of the ``N`` samples run): the same scale for every layer. ``before``: the changes
        of the batches before the window's first, measured already (the probe resumes after them)."""
        if len(before) < self.first:
            raise ValueError(f"the probe resumes at batch {self.first}, not {len(before)}")
        moved: list[float] = list(before)

        def take(index: int, outputs: Mapping[str, np.ndarray]) -> bool:
            moved.append(self._moved(index, outputs))
            return self._settled(moved)

        if weight.name in self.tailed and self.tails is not None:
            with _probing():  # the outputs not in its tail do not move
                self.tails.outputs(
                    weight.name,
                    stored,
                    each=lambda index, outputs: take(self.first + index, outputs),
                    start=len(before) - self.first,
                )
            if not moved:  # no output depends on the weight: nothing ran, nothing moved
                return Probed(0.0, 0)
        elif weight.name in self.fed:
            for index in range(len(before), self.stop):
                if take(index, self._run(index, {weight.name: stored})):
                    break
        else:
            proto = inventory.proto(weight)
            values = tensors.read_array(proto)
            tensors.write_array(proto, stored)
            try:
                session, self.session = self.session, None
                pruned = self._outputs({})
            finally:
                self.session = session
                tensors.write_array(proto, values)
            moved = [self._moved(i, {name: parts[i] for name, parts in pruned.items()}) for i in range(len(self.feeds))]
        counts = self.counts or [1] * len(self.feeds)
        run, total = sum(counts[: len(moved)]), sum(counts)
        settled = self.counts is None or len(moved) >= len(self.feeds) or self._settled(moved)
        return Probed(
            math.fsum(moved) * total / max(run, 1), run if self.counts is not None else 0, tuple(moved), settled
        )


@contextmanager
def _probing() -> Iterator[None]:
    """A batch the model fails on in the probe (a :class:`DataError`): said so, with the way around it."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{exc}; in the allocation's probe: {opt('allocator', 'uniform')} does without it") from exc


@dataclass(frozen=True)
class Probed:
    """One layer's probe: ``d`` (scaled to all the probe's samples), the samples run (0 when the
    feeds' sample counts are not known), the change of each batch run, and whether the probe is
    done (its stopping rule held, or every batch ran) or could run on."""

    change: float
    samples: int
    moved: tuple[float, ...] = ()
    settled: bool = True


def _relative_error(moved: list[float], counts: list[int]) -> float:
    """Relative standard error of the mean per-sample change over batches (``moved[b] / counts[b]``,
    each batch weighing alike); nan under two batches or when nothing moved."""
    if len(moved) < 2:
        return math.nan
    rates = np.asarray(moved, dtype=np.float64) / np.asarray(counts, dtype=np.float64)
    mean = float(rates.mean())
    if not mean > 0:
        return math.nan
    return float(rates.std(ddof=1)) / math.sqrt(rates.size) / mean


#: elements of an output subtracted and squared at a time (a chunk's sum is formed in the
#: outputs' precision, float32 at least, and the chunks' sums are added in float64)
_CHUNK = 1 << 16


def _squared_distance(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """``‖a − b‖²`` (``‖a‖²`` without ``b``): over chunks of :data:`_CHUNK` elements, ``d = a − b``
    and ``d · d`` in the outputs' precision (float32 at least), the chunks' sums added in
    float64. On PP-OCRv4 rec's logits (2 lines, 2.1 M values) that took 1–2 ms a batch where
    converting to float64 first took 5–17 ms; relative error 2e-7 against a float64 sum."""
    a = np.asarray(a).reshape(-1)
    flat_b = None if b is None else np.asarray(b).reshape(-1)
    dtype = np.promote_types(a.dtype if flat_b is None else np.promote_types(a.dtype, flat_b.dtype), np.float32)
    buffer = np.empty(min(_CHUNK, a.size), dtype=dtype)
    total = 0.0
    for start in range(0, a.size, _CHUNK):
        stop = min(start + _CHUNK, a.size)
        d = buffer[: stop - start]
        if flat_b is None:
            d[...] = a[start:stop]
        else:
            np.subtract(a[start:stop], flat_b[start:stop], out=d, dtype=dtype)
        total += float(np.dot(d, d))
    return total


def probe_batches(data: Dataset, batch_size: int, *, every: bool = False) -> list[dict[str, np.ndarray]]:
    """The first whole batches holding at least :data:`PROBE_SAMPLES` samples (or all), or with
    ``every`` all the calibration batches as calibration cuts them (an If on a batch statistic
    takes one branch per batch: the probe must run the batches that ran each layer)."""
    if every:
        return list(data.batches(batch_size))
    feeds: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in data.batches(min(batch_size, PROBE_SAMPLES)):
        feeds.append(batch)
        count += data.count(batch)
        if count >= PROBE_SAMPLES:
            break
    return feeds


def _floor(layer: CalibLayer, stats: LayerStats, values: np.ndarray) -> int:
    """The weights that are zero or read a dead input (``H_jj = 0``: zero on every calibration
    row), which SparseGPT zeroes whatever its count: the least count worth allocating."""
    w = layer.to_matrix(values)
    h = stats.H
    assert h is not None  # a measured layer has its statistics
    dead = np.diagonal(h, axis1=1, axis2=2) == 0  # [1 or groups, cols]
    return int(np.count_nonzero((w == 0) | dead[:, None, :]))


@dataclass(frozen=True)
class _Problem:
    """What the allocation splits among the measured layers: the overall sparsity ``t``, the
    run's ``max_layer_sparsity``, the uniform ``targets``, the layers kept at theirs (``fixed``)
    and every weight by key."""

    t: float
    max_layer_sparsity: float
    targets: Mapping[str, Target]
    fixed: tuple[str, ...]
    by_key: Mapping[str, Weight]

    def curves(self, measured: Mapping[str, _Measured]) -> tuple[list[ErrorCurve], int, int]:
        """The measured layers' curves (module docstring, "Counts"; weights ``c_l = d_l / e_l(t)``),
        the count they remove together and their number of weights. Raises ValueError for a
        curve or bounds the maths refuses."""
        t = self.t
        finite = [m.probe for m in measured.values() if math.isfinite(m.probe)]
        worst = 10 * max(finite, default=1.0) or 1.0  # a probe that made the outputs NaN: dearest of all
        upper = min(max(self.max_layer_sparsity, t), t + TRUST * (1 - t))
        curves = []
        for key, m in measured.items():
            d = m.probe if math.isfinite(m.probe) else worst
            weight = d / m.at_target if m.at_target > 0 else (0.0 if d == 0 else d / 1e-12)
            lower = min(m.floor, m.levels[-1])
            top = max(upper, lower)  # a layer whose zeros and dead inputs already pass the cap keeps them
            numel = self.by_key[key].numel
            curves.append(ErrorCurve(key, np.array(m.levels), np.array(m.errors), numel, weight, lower, top))
        sizes = sum(c.size for c in curves)
        kept = sum(self.targets[k].count or 0 for k in self.fixed)
        total = count_for_amount(sizes + sum(self.by_key[k].numel for k in self.fixed), t) - kept
        return curves, min(max(total, 0), sizes), sizes

    def allocate(
        self, measured: Mapping[str, _Measured]
    ) -> tuple[dict[str, Target], dict[str, LayerCurve], dict[str, float]] | None:
        """The new targets (module docstring, "Counts"), or None when nothing is left to allocate."""
        if not measured:
            return None
        try:  # a curve or bounds the maths refuses (a target above every curve's top ...): uniform, said
            curves, total, sizes = self.curves(measured)
            allocation = allocate(curves, total / sizes)
            counts = to_counts(curves, allocation.sparsity, total)
        except ValueError as exc:
            log.warning("allocation by error curves is not possible (%s): uniform instead", exc)
            return None
        new = dict(self.targets)
        record = {}
        for c in curves:
            new[c.name] = Target(count=counts[c.name], amount=counts[c.name] / c.size)
            m = measured[c.name]
            record[c.name] = LayerCurve(
                c.name, c.size, m.levels, m.errors, m.probe, c.weight, counts[c.name] / c.size, m.probe_samples
            )
        predicted = {
            "curves": math.fsum(c.weight * float(c.at(counts[c.name] / c.size)) for c in curves),
            "uniform": math.fsum(c.weight * float(c.at((self.targets[c.name].count or 0) / c.size)) for c in curves),
        }
        return new, record, predicted
