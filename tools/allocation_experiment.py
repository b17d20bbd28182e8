"""Uniform against error-curve allocation for calibrated pruning (SparseGPT), on the fixtures.

For each fixture the dense model's layer inputs are captured once on ``NAME.calib.npz``
(:func:`onnxprune.capture.capture`, the specs the calibrated pass builds with
:func:`onnxprune.passes.layers.calib_layer`). Each layer is then pruned alone by the
method's solver at a grid of sparsities (the pass's own ``LayerProblem`` settings:
damping, block size, exact refit, row-wise when the layer has >= 64 inputs), giving its
relative output error ``e_l(s) = tr(ΔHΔᵀ) / tr(WHWᵀ)`` at the sparsity really reached.
:mod:`onnxprune.sparsity.curves` turns the curves into per-layer sparsities with an overall
sparsity of exactly the target (then whole counts the solver can reach), for three
weightings ``c_l`` of ``Σ c_l e_l(s_l)``:

- ``unit``: ``c_l = 1`` (the sum of relative errors);
- ``energy``: ``c_l = tr(WHWᵀ) / N_l``, the layer's output energy per captured input row, so
  that ``c_l e_l`` is the absolute squared output error per row;
- ``probe``: ``c_l = d_l / e_l(t)``, where ``d_l`` is the squared change of the model's
  output on the calibration data when only layer ``l`` is pruned (by the solver, at the
  target ``t``): one forward pass per layer. ``c_l e_l(s)`` then predicts the output
  distortion of layer ``l`` at any ``s`` (measured at ``s = t``, scaled by the curve shape).

Every allocation is written as a plan and run through the real pipeline
(:func:`onnxprune.prune_file` with ``PruneConfig(plan=..., method=...)``), as ``onnxprune
prune --plan`` would. Nothing is tuned on the test split: the curves, the probe and the
label-free check ("agree": top-1 agreement with the dense model on the calibration inputs)
all use the calibration data only; test accuracy is measured last.

    .venv/bin/python tools/allocation_experiment.py [FIXTURE ...] [--targets 0.5 0.7] [--cap 0.95]
    .venv/bin/python tools/allocation_experiment.py --offset 128   # the other 128 of NAME.calib.npz
    .venv/bin/python tools/allocation_experiment.py lstm_mnist1d --split lstm.R=256   # one unit per row of R
    .venv/bin/python tools/allocation_experiment.py transformer_mnist1d --parallel --split '*=1000'

``--split KEY=BLOCKS`` allocates per block of output rows of a layer (``*`` for every
layer): the pipeline cannot take per-row counts yet, so those layers are pruned here block
by block with the same solver on the dense statistics, which is what the pipeline does
for its first wave (and for every layer with ``--parallel``), and the pipeline then prunes
the other layers by the plan.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxprune
from onnxprune.capture import capture
from onnxprune.config import PruneConfig
from onnxprune.graph import tensors
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.graph.model_io import load_model
from onnxprune.passes.calibrated import ROW_WISE_MIN_COLS, solver_percdamp, waves
from onnxprune.passes.layers import calib_layer
from onnxprune.reconstruct.methods import METHODS, LayerProblem
from onnxprune.sparsity import count_for_amount
from onnxprune.sparsity.curves import ErrorCurve, allocate, to_counts

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEFAULT_FIXTURES = ["lstm_mnist1d", "transformer_mnist1d", "cnn_digits", "mlp_digits"]
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
WEIGHTINGS = ("unit", "energy", "probe")
BATCH = 32


@dataclass
class Unit:
    """A layer, or a block of its output rows (``--split``), with its measured curve."""

    name: str  # the weight's key, or "key[a:b]" for rows a..b of each group's matrix
    key: str
    rows: slice | None
    numel: int
    quantum: int  # the solver's reachable counts are multiples of this
    levels: list[float] = field(default_factory=list)  # sparsity really reached
    error: list[float] = field(default_factory=list)  # relative output error there
    energy: float = 0.0  # tr(W H Wᵀ) / captured rows
    pruned: dict[float, np.ndarray] = field(default_factory=dict)  # level -> stored array, only this unit pruned
    reached: dict[float, float] = field(default_factory=dict)  # level -> the unit's sparsity really reached


class Solver:
    """The calibrated method's solver on the dense statistics of every prunable layer."""

    def __init__(self, source: Path, calib: onnxprune.Dataset, config: PruneConfig) -> None:
        self.model = load_model(source)
        self.inventory = discover(self.model, config.selection)
        scope = Scope.build(self.model.graph)
        self.layers = {}
        for weight in self.inventory.prunable:
            layer, why = calib_layer(self.model, scope, weight)
            if layer is None:
                raise SystemExit(f"{source.name}: {weight.key} is not calibrated ({why}); this tool needs every layer")
            self.layers[weight.key] = layer
        self.first_wave = {layer.weight.key for layer in waves(self.model, list(self.layers.values()))[0]}
        self.stats = capture(self.model, [layer.spec for layer in self.layers.values()], calib.batches(BATCH))
        self.reconstruction = config.reconstruction
        self.method = METHODS[config.reconstruction.method]
        self.percdamp = solver_percdamp(config.reconstruction, calib)

    def matrix(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The stored array of ``key`` and its matrix view ``[groups, rows, cols]`` (float64)."""
        values = tensors.read_array(self.inventory.proto(self.layers[key].weight))
        return values, self.layers[key].to_matrix(values.astype(np.float64))

    def hessian(self, key: str, group: int) -> np.ndarray:
        h = self.stats[key].H
        return h[0 if h.shape[0] == 1 else group]

    def row_wise(self, key: str) -> bool:
        return self.layers[key].view.cols >= ROW_WISE_MIN_COLS

    def solve(self, key: str, rows: slice | None, amount: float) -> tuple[np.ndarray, float, float]:
        """The layer's matrix with ``rows`` (all when None) of each group pruned to ``amount``,
        the squared output error ``Σ tr(ΔHΔᵀ)`` and the energy ``Σ tr(WHWᵀ)`` of those rows."""
        _, w = self.matrix(key)
        out = w.copy()
        num = den = 0.0
        sl = rows if rows is not None else slice(None)
        st = self.stats[key]
        for g in range(w.shape[0]):
            h, part = self.hessian(key, g), w[g, sl]
            problem = LayerProblem(
                w=part,
                goal=part,
                H=h,
                sqnorm=st.sqnorm[0 if st.H.shape[0] == 1 else g],
                mask=None,
                amount=amount,
                nm=None,
                percdamp=self.percdamp,
                blocksize=self.reconstruction.blocksize,
                exact_refit=self.reconstruction.exact_refit,
                row_wise=self.row_wise(key),
            )
            out[g, sl] = self.method.solve(problem)
            delta = part - out[g, sl]
            num += float(np.vdot(delta @ h, delta))
            den += float(np.vdot(part @ h, part))
        return out, max(num, 0.0), den

    def units(self, split: dict[str, int], *, parallel: bool = False) -> list[Unit]:
        """One unit per layer, or ``split[key]`` blocks of contiguous output rows (only layers
        the pipeline solves on the dense statistics: its first wave, or all with ``parallel``)."""
        units = []
        for key in self.layers:
            _, w = self.matrix(key)
            groups, rows = w.shape[0], w.shape[1]
            blocks = min(split.get(key, 1), rows)
            if blocks > 1 and key not in self.first_wave and not parallel:
                raise SystemExit(f"--split {key}: only layers of the first calibration wave (or --parallel) split here")
            bounds = np.linspace(0, rows, blocks + 1).round().astype(int)
            for a, b in itertools.pairwise(bounds.tolist()):
                sl = None if blocks == 1 else slice(int(a), int(b))
                name = key if sl is None else f"{key}[{a}:{b}]"
                numel = groups * (b - a) * w.shape[2]
                units.append(Unit(name, key, sl, numel, groups * (b - a) if self.row_wise(key) else 1))
        return units

    def measure(self, units: list[Unit], grid: tuple[float, ...]) -> None:
        """Each unit's curve: pruned alone at every level of ``grid`` (the level really reached)."""
        for unit in units:
            values, _ = self.matrix(unit.key)
            unit.levels, unit.error = [0.0], [0.0]
            for level in grid:
                out, num, den = self.solve(unit.key, unit.rows, level)
                part = out[:, unit.rows if unit.rows is not None else slice(None)]
                reached = float(np.count_nonzero(part == 0)) / part.size
                unit.energy = den / max(self.stats[unit.key].rows, 1)
                unit.pruned[level] = self.layers[unit.key].from_matrix(out).astype(values.dtype)
                unit.reached[level] = reached
                if reached > unit.levels[-1]:
                    unit.levels.append(reached)
                    unit.error.append(num / den if den > 0 else 0.0)


def outputs(model_bytes: bytes, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds]).astype(np.float64)


def probe(solver: Solver, units: list[Unit], target: float, feeds) -> dict[str, float]:
    """``d_u``: ‖F_u(X) − F(X)‖² on the calibration inputs with only unit ``u`` pruned at ``target``."""
    model, inventory = solver.model, solver.inventory
    dense = outputs(model.SerializeToString(), feeds)
    change = {}
    for unit in units:
        proto = inventory.proto(solver.layers[unit.key].weight)
        original = tensors.read_array(proto).copy()
        tensors.write_array(proto, unit.pruned[target])
        try:
            change[unit.name] = float(np.sum((outputs(model.SerializeToString(), feeds) - dense) ** 2))
        finally:
            tensors.write_array(proto, original)
    return change


def error_at(unit: Unit, level: float) -> float:
    """The unit's error (monotone envelope) at the sparsity the solver reaches for ``level``."""
    return float(np.interp(unit.reached[level], unit.levels, np.maximum.accumulate(unit.error)))


def allocate_counts(units: list[Unit], weights: dict[str, float], target: float, cap: float) -> dict[str, int]:
    """Whole reachable counts per unit, total ``floor(target · Σ n)`` (:mod:`onnxprune.sparsity.curves`)."""
    errs = [
        ErrorCurve(u.name, np.array(u.levels), np.array(u.error), u.numel, weight=weights[u.name], upper=cap)
        for u in units
    ]
    alloc = allocate(errs, target)
    total = count_for_amount(sum(u.numel for u in units), target)
    return to_counts(errs, alloc.sparsity, total, quanta={u.name: u.quantum for u in units})


def amount_for(count: int, numel: int) -> float:
    """A float amount whose decimal floor (:func:`count_for_amount`) gives back ``count``."""
    amount = count / numel
    while count_for_amount(numel, amount) < count:
        amount = float(np.nextafter(amount, 1.0))
    return amount


def pruned_source(solver: Solver, units: list[Unit], counts: dict[str, int], folder: Path):
    """The plan for the whole layers, and the model with the split layers already pruned block by
    block (the solver on the dense statistics, as the pipeline's first wave does) at ``folder/pre.onnx``."""
    import copy

    plan = {u.key: amount_for(counts[u.name], u.numel) for u in units if u.rows is None}
    split = {u.key for u in units if u.rows is not None}
    if not split:
        return plan, None
    model = copy.deepcopy(solver.model)
    inventory = discover(model, PruneConfig(sparsity=0.5).selection)
    for key in split:
        values, w = solver.matrix(key)
        for unit in (u for u in units if u.key == key):
            out, _, _ = solver.solve(key, unit.rows, amount_for(counts[unit.name], unit.numel))
            w[:, unit.rows] = out[:, unit.rows]
        weight = next(x for x in inventory.weights if x.key == key)
        tensors.write_array(inventory.proto(weight), solver.layers[key].from_matrix(w).astype(values.dtype))
    path = folder / "pre.onnx"
    path.write_bytes(model.SerializeToString())
    return plan, path


def accuracy(path: Path, name: str) -> float:
    x = np.load(FIXTURES / f"{name}.test.npz")["input"]
    y = np.load(FIXTURES / f"{name}.test_labels.npy")
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float(np.mean(logits.argmax(1) == y))


def real_sparsity(path: Path, keys: set[str]) -> float:
    """Zeros over elements of the weights ``keys`` in the model at ``path``."""
    model = load_model(path)
    inventory = discover(model, PruneConfig(sparsity=0.5).selection)
    zeros = total = 0
    for weight in inventory.weights:
        if weight.key in keys:
            values = tensors.read_array(inventory.proto(weight))
            zeros += int(values.size - np.count_nonzero(values))
            total += values.size
    return zeros / total


def evaluate(path: Path, name: str, keys: set[str], feeds, dense_calib) -> tuple[float, float, float]:
    """(test accuracy, top-1 agreement with the dense model on the calibration inputs, real sparsity)."""
    agree = float(np.mean(outputs(path.read_bytes(), feeds).argmax(1) == dense_calib.argmax(1)))
    return accuracy(path, name), agree, real_sparsity(path, keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="*")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--cap", type=float, default=0.95, help="largest sparsity of one layer")
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--offset", type=int, default=0, help="use calibration samples [offset, offset + samples)")
    parser.add_argument(
        "--split", action="append", default=[], metavar="KEY=BLOCKS", help="allocate per block of output rows"
    )
    parser.add_argument("--parallel", action="store_true", help="calibrate every layer on the dense model")
    parser.add_argument("--plans", type=Path, help="write each plan JSON into this folder")
    args = parser.parse_args(argv)
    names = args.fixtures or DEFAULT_FIXTURES
    split = {k: int(v) for k, v in (item.split("=", 1) for item in args.split)}
    mode = {"method": args.method, "sequential": not args.parallel}
    grid = tuple(sorted(set(GRID) | set(args.targets)))
    head = ["fixture", "target", "dense", "uniform", *WEIGHTINGS, "real sparsity (uniform / curves)"]
    head += ["agree calib (uniform / " + " / ".join(WEIGHTINGS) + ")", "uniform s", "curves s", "probe s", "plan s"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-alloc-") as tmp:
        folder = Path(tmp)
        for name in names:
            source = FIXTURES / f"{name}.onnx"
            pool = np.load(FIXTURES / f"{name}.calib.npz")["input"][args.offset : args.offset + args.samples]
            calib = onnxprune.calibration_data(source, {"input": pool}, samples=args.samples)
            feeds = [{k: np.ascontiguousarray(v) for k, v in f.items()} for f in calib.batches(BATCH)]
            dense_acc = accuracy(source, name)
            dense_calib = outputs(source.read_bytes(), feeds)
            start = time.perf_counter()
            solver = Solver(source, calib, PruneConfig(sparsity=args.targets[0], method=args.method))
            every = split.get("*")
            wanted = {k: split.get(k, every or 1) for k in solver.layers}
            units = solver.units(wanted, parallel=args.parallel)
            solver.measure(units, grid)
            curve_s = time.perf_counter() - start
            keys = set(solver.layers)
            for u in units:
                pts = ", ".join(f"{s:.2f}:{e:.3g}" for s, e in zip(u.levels, u.error, strict=True))
                print(f"  {name} {u.name} n={u.numel} q={u.quantum} energy={u.energy:.3g} [{pts}]", file=sys.stderr)
            for target in args.targets:
                out = folder / f"{name}.uniform.onnx"
                start = time.perf_counter()
                run = onnxprune.prune_file(source, out, PruneConfig(sparsity=target, **mode), calibration=calib)
                uni_s = time.perf_counter() - start
                uni_acc, uni_agree, uni_real = evaluate(run.saved.path, name, keys, feeds, dense_calib)
                start = time.perf_counter()
                change = probe(solver, units, target, feeds)
                probe_s = time.perf_counter() - start
                weightings = {
                    "unit": {u.name: 1.0 for u in units},
                    "energy": {u.name: u.energy for u in units},
                    "probe": {u.name: change[u.name] / max(error_at(u, target), 1e-12) for u in units},
                }
                results, plan_times = [], []
                for label in WEIGHTINGS:
                    start = time.perf_counter()
                    counts = allocate_counts(units, weightings[label], target, args.cap)
                    plan, pre = pruned_source(solver, units, counts, folder)
                    summary = {u.name: round(float(counts[u.name] / u.numel), 4) for u in units}
                    if args.plans is not None:
                        args.plans.mkdir(parents=True, exist_ok=True)
                        stem = f"{name}.{round(100 * target)}.{label}"
                        (args.plans / f"{stem}.json").write_text(json.dumps(plan, indent=1))
                        (args.plans / f"{stem}.units.json").write_text(json.dumps(summary, indent=1))
                    print(f"  {name} {target} {label}: {summary}", file=sys.stderr)
                    out = folder / f"{name}.{label}.onnx"
                    if plan:
                        config = PruneConfig(plan=plan, **mode)
                        onnxprune.prune_file(pre or source, out, config, calibration=calib)
                    else:
                        out.write_bytes(pre.read_bytes())
                    plan_times.append(time.perf_counter() - start)
                    results.append(evaluate(out, name, keys, feeds, dense_calib))
                row = [
                    name,
                    f"{100 * target:.0f}%",
                    f"{100 * dense_acc:.1f}",
                    f"{100 * uni_acc:.1f}",
                    *[f"{100 * r[0]:.1f}" for r in results],
                    f"{100 * uni_real:.2f} / " + " / ".join(f"{100 * r[2]:.2f}" for r in results),
                    " / ".join(f"{100 * a:.1f}" for a in [uni_agree, *(r[1] for r in results)]),
                    f"{uni_s:.1f}",
                    f"{curve_s:.1f}",
                    f"{probe_s:.1f}",
                    f"{np.mean(plan_times):.1f}",
                ]
                rows.append(row)
                print("| " + " | ".join(row) + " |", file=sys.stderr)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
