"""One sensitivity task: one layer pruned alone at every level, its loss measured.

A task is self-contained and picklable (model path, data arrays, the dense outputs), so
the same function runs in this process, in a process pool or on a Ray worker. It loads
the model once, and for each level prunes only its layer (a one-entry plan of the
weight pass, or of the calibrated pass for ``method`` other than magnitude) on a copy.

Loss, per level ``s`` (0 at ``s = 0``):

- data-free: the relative weight error of magnitude pruning, ``‖W − W_s‖² / ‖W‖²``;
- with labels: the drop in top-1 accuracy (of the first output) against the dense model,
  in [−1, 1];
- without labels: ``1 − cos``, with ``cos`` the cosine similarity between the pruned and
  the dense outputs as ``eval`` reports it (:func:`onnxprune.metrics.fidelity`: per output
  the mean over samples, each sample flattened; then the mean over the float outputs), in
  [0, 2]; a model with integer outputs only: ``1 −`` the fraction of equal elements.

Both come from :mod:`onnxprune.metrics`, so a loss here equals ``1 −`` the cosine (or the
top-1 difference) that ``onnxprune eval`` reports for the same pruned model and data.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

Feeds = dict[str, np.ndarray]
#: The data of a measurement: the model's feeds, one per run, in order (each input's
#: samples on its batch axis, as :meth:`onnxprune.data.Dataset.batches` hands them out).
Batches = tuple[Feeds, ...]


@dataclass(frozen=True)
class LayerTask:
    """Everything a worker needs to measure one layer's curve."""

    model_path: str
    weight: str  # the weight's key (tensor name, ``scope::name`` in a subgraph)
    levels: tuple[float, ...]
    method: str = "magnitude"
    feeds: Batches | None = None  # evaluation data; None: data-free proxy
    labels: np.ndarray | None = None
    dense: tuple[np.ndarray, ...] | None = None  # the dense model's outputs on ``feeds``
    calibration: Batches | None = None  # for calibrated methods
    batch_size: int = 64
    batch_axes: dict[str, int | None] | None = None  # --batch-axis, for the calibration data


@dataclass(frozen=True)
class LayerCurve:
    """The measured sensitivity of one layer."""

    weight: str
    size: int
    levels: tuple[float, ...]
    loss: tuple[float, ...]
    kind: str  # "weight error" | "accuracy drop" | "1 - cosine"
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    latency_saved: tuple[float, ...] | None = None  # channel groups: 1 − latency ratio at each level
    macs_saved: tuple[float, ...] | None = None  # channel groups: 1 − MACs ratio at each level

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "weight": self.weight,
            "size": self.size,
            "levels": list(self.levels),
            "loss": list(self.loss),
            "kind": self.kind,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }
        if self.latency_saved is not None:
            out["latency_saved"] = list(self.latency_saved)
            out["macs_saved"] = list(self.macs_saved or ())
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LayerCurve:
        return cls(
            weight=str(data["weight"]),
            size=int(data["size"]),  # type: ignore[arg-type]
            levels=tuple(float(v) for v in data["levels"]),  # type: ignore[union-attr]
            loss=tuple(float(v) for v in data["loss"]),  # type: ignore[union-attr]
            kind=str(data["kind"]),
            seconds=float(data.get("seconds", 0.0)),  # type: ignore[arg-type]
            notes=tuple(str(n) for n in data.get("notes", ())),  # type: ignore[union-attr]
            latency_saved=tuple(float(v) for v in data["latency_saved"]) if "latency_saved" in data else None,  # type: ignore[union-attr]
            macs_saved=tuple(float(v) for v in data["macs_saved"]) if "macs_saved" in data else None,  # type: ignore[union-attr]
        )


def weight_error(values: np.ndarray, level: float) -> float:
    """``‖W − W_s‖² / ‖W‖²`` of magnitude pruning ``values`` to sparsity ``level``."""
    flat = np.abs(values.astype(np.float64).reshape(-1))
    k = int(np.floor(level * flat.size))
    total = float(np.dot(flat, flat))
    if k <= 0 or total == 0.0:
        return 0.0
    smallest = np.partition(flat, k - 1)[:k]
    return float(np.dot(smallest, smallest) / total)


def output_loss(dense: tuple[np.ndarray, ...], pruned: list[np.ndarray], labels: np.ndarray | None) -> float:
    """Accuracy drop (labels) or ``1 − cosine`` (no labels): see module docstring."""
    from onnxprune.errors import DataError
    from onnxprune.metrics import fidelity, top1

    if labels is not None:
        try:
            return float(top1(dense[0], labels, "the first output") - top1(pruned[0], labels, "the first output"))
        except ValueError as exc:
            raise DataError(f"cannot score accuracy against the labels: {exc}") from exc
    result = fidelity(dense, pruned)
    if result.cosine is not None:
        return float(1.0 - result.cosine)
    return float(1.0 - result.top1_agreement) if result.top1_agreement is not None else 0.0


def run_outputs(model: bytes, feeds: Batches) -> list[np.ndarray]:
    """All outputs of ``model`` on the runs ``feeds``, one onnxruntime thread: each output's
    runs joined on axis 0 where they agree on the other axes (outputs with their samples on
    axis 0), else flattened and joined (a state ``[1, batch, 32]``, a scalar: compared value
    by value all the same)."""
    from onnxprune import runtime

    sess = runtime.session(model, threads=1)
    parts = [sess.run(None, dict(batch)) for batch in feeds]
    return [_join([np.atleast_1d(p[i]) for p in parts]) for i in range(len(parts[0]))]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    if len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts)
    return np.concatenate([p.reshape(-1) for p in parts])


def run_layer(task: LayerTask) -> LayerCurve:
    """Measure one layer's curve (see module docstring). Runs in any worker."""
    import time

    from threadpoolctl import threadpool_limits

    from onnxprune.config import PruneConfig
    from onnxprune.graph.discovery import discover
    from onnxprune.graph.model_io import load_model
    from onnxprune.graph.tensors import read_array
    from onnxprune.passes.unstructured import prune_weights

    start = time.perf_counter()
    with threadpool_limits(1):  # several workers on few cores must not oversubscribe
        model = load_model(task.model_path)
        inventory = discover(model)
        weight = next(w for w in inventory.weights if w.key == task.weight)
        if task.feeds is None:
            values = read_array(inventory.proto(weight))
            loss = tuple(weight_error(values, level) for level in task.levels)
            return LayerCurve(task.weight, weight.numel, task.levels, loss, "weight error", time.perf_counter() - start)
        losses = []
        for level in task.levels:
            if level <= 0.0:
                losses.append(0.0)
                continue
            pruned = copy.deepcopy(model)
            config = PruneConfig(plan={task.weight: level}, min_size=0, method=task.method)
            if config.calibrated:
                from onnxprune.data import open_data
                from onnxprune.passes.calibrated import prune_calibrated
                from onnxprune.runtime import input_specs, session

                specs = input_specs(session(task.model_path))
                calibration = open_data(list(task.calibration or ()), specs=specs, batch_axes=task.batch_axes)
                prune_calibrated(pruned, config, calibration)
            else:
                prune_weights(pruned, config)
            outputs = run_outputs(pruned.SerializeToString(), task.feeds)
            losses.append(output_loss(task.dense or (), outputs, task.labels))
    kind = "accuracy drop" if task.labels is not None else "1 - cosine"
    return LayerCurve(task.weight, weight.numel, task.levels, tuple(losses), kind, time.perf_counter() - start)


@dataclass(frozen=True)
class GroupTask:
    """One channel group removed alone at every level (fraction of its units)."""

    model_path: str
    group: str  # the group's name (its first producer)
    levels: tuple[float, ...]
    feeds: Batches
    labels: np.ndarray | None
    dense: tuple[np.ndarray, ...]
    input_shapes: dict[str, tuple[int, ...]]
    one: Feeds  # a run of one sample: what latency is timed on
    batch_size: int = 64
    repeats: int = 15

    @property
    def weight(self) -> str:  # the executors' progress label
        return self.group


def paired_latency_ratio(a: bytes, b: bytes, batch: Feeds, repeats: int) -> float:
    """Median over ``repeats`` of t(b) / t(a), the two run alternately, one thread, on ``batch``
    (a run of one sample)."""
    import time

    from onnxprune import runtime

    sessions = [runtime.session(model, threads=1, optimize=True) for model in (a, b)]
    for sess in sessions:  # warm up
        for _ in range(3):
            sess.run(None, batch)
    ratios = []
    for _ in range(repeats):
        times = []
        for sess in sessions:
            start = time.perf_counter()
            sess.run(None, batch)
            times.append(time.perf_counter() - start)
        ratios.append(times[1] / times[0] if times[0] > 0 else 1.0)
    return float(np.median(ratios))


def run_group(task: GroupTask) -> LayerCurve:
    """Loss, latency saved and MACs saved of removing each level of one channel group (no
    data at removal: L2 importance, no refit; the loss is measured on ``feeds``)."""
    import time

    from threadpoolctl import threadpool_limits

    from onnxprune.config import StructureConfig
    from onnxprune.graph.model_io import load_model
    from onnxprune.passes.structural import remove_channels

    start = time.perf_counter()
    losses, latency, macs = [], [], []
    units = 0
    with threadpool_limits(1):
        model = load_model(task.model_path)
        dense_bytes = model.SerializeToString()
        for level in task.levels:
            if level <= 0.0:
                losses.append(0.0)
                latency.append(0.0)
                macs.append(0.0)
                continue
            pruned = copy.deepcopy(model)
            config = StructureConfig(plan={task.group: level}, dead_channels=False, round_to=1)
            result = remove_channels(pruned, config, input_shapes=task.input_shapes, check=False)
            record = next(g for g in result.groups if g.name == task.group)
            units = record.units
            data = pruned.SerializeToString()
            losses.append(output_loss(task.dense, run_outputs(data, task.feeds), task.labels))
            latency.append(1.0 - paired_latency_ratio(dense_bytes, data, task.one, task.repeats))
            before, after = result.macs_before, result.macs_after
            macs.append(1.0 - after / before if before and after is not None else 0.0)
    kind = "accuracy drop" if task.labels is not None else "1 - cosine"
    return LayerCurve(
        task.group,
        units,
        task.levels,
        tuple(losses),
        kind,
        time.perf_counter() - start,
        latency_saved=tuple(latency),
        macs_saved=tuple(macs),
    )
