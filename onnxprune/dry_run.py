"""What ``onnxprune prune --dry-run`` predicts, without writing anything.

A dry run loads the model, runs the passes that need no data in memory (the weight pass of
magnitude, LAMP, random and N:M pruning, a plan, the structural pass without data) and
reports what ``prune`` would write: the per-layer table, parameters and non-zeros,
multiply-accumulates (dense and with a non-zero weight), and the compressed size of the
result, estimated from a sample of its serialized bytes (:mod:`onnxprune.compressed_size`).

A calibrated method (wanda, sparsegpt, admm, refit) is not run: calibration is the expensive part
a dry run exists to avoid. The prediction is then the magnitude pass's at the same counts
(every calibrated layer gets its target count; with ``--allocation curves`` the counts
shift between layers at run time, the overall count stays), and :func:`capture_plan` lists
what calibration would capture: the waves (layers captured together, on the outputs of the
waves before them), each layer's matrix (``rows × cols`` per group, so ``H = XᵀX`` is
``cols × cols``) and the memory of its statistics, and each weight that would fall back to
magnitude, with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnx import ModelProto

from onnxprune.compressed_size import DeflateSize, estimate_bytes
from onnxprune.compute import count_compute
from onnxprune.config import PruneConfig, StructureConfig
from onnxprune.errors import Message, OnnxPruneError, opt
from onnxprune.graph.discovery import discover
from onnxprune.passes.calibrated import calibrated_layers, waves
from onnxprune.passes.pipeline import PruneRun, build_pipeline, run_model
from onnxprune.passes.unstructured import plan_targets

#: protobuf cannot serialize a model of 2 GiB or more in one piece: its size is not estimated
SERIALIZABLE = (1 << 31) - 1


@dataclass(frozen=True)
class CaptureLayer:
    """One layer calibration would fit: its matrix per group and its statistics' memory."""

    weight: str
    op: str
    groups: int
    rows: int
    cols: int
    shared: int  # other nodes that read the same weight (one fit on stacked statistics)

    @property
    def statistics_bytes(self) -> int:
        """``H`` (float64, ``cols × cols``) and the cross-products with the dense input (as
        many) per group: what the capture holds for this layer."""
        return 2 * 8 * self.groups * self.cols * self.cols

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "statistics_bytes": self.statistics_bytes}


@dataclass(frozen=True)
class CapturePlan:
    """What calibration would capture: layers by wave, and the weights left to magnitude."""

    waves: tuple[tuple[CaptureLayer, ...], ...]
    fallback: Mapping[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return sum(len(w) for w in self.waves)

    @property
    def peak_statistics_bytes(self) -> int:
        """The largest wave's statistics: the capture holds one wave's at a time."""
        return max((sum(layer.statistics_bytes for layer in wave) for wave in self.waves), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "waves": [[layer.to_dict() for layer in wave] for wave in self.waves],
            "fallback": dict(self.fallback),
            "peak_statistics_bytes": self.peak_statistics_bytes,
        }


def capture_plan(model: ModelProto, config: PruneConfig) -> CapturePlan:
    """The layers a calibrated ``config`` would capture and fit, in waves (module docstring)."""
    inventory = discover(model, config.selection)
    targets = plan_targets(config.allocation, config.ranking, inventory)
    calib, fallback = calibrated_layers(model, inventory.prunable, targets)
    groups = waves(model, calib) if config.reconstruction.sequential else [calib]
    described = tuple(
        tuple(
            CaptureLayer(
                layer.weight.key,
                layer.node.op_type,
                layer.view.groups,
                layer.view.rows,
                layer.view.cols,
                len(layer.shared),
            )
            for layer in wave
        )
        for wave in groups
        if wave
    )
    return CapturePlan(described, fallback)


@dataclass
class DryRun:
    """A dry run's prediction (module docstring)."""

    run: PruneRun
    macs: tuple[int | None, int | None] = (None, None)  # dense MACs before, after
    nonzero_macs: tuple[int | None, int | None] = (None, None)
    compressed: tuple[DeflateSize | None, DeflateSize | None] = (None, None)
    capture: CapturePlan | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def size(s: DeflateSize | None) -> dict[str, Any] | None:
            return None if s is None else dataclasses.asdict(s)

        return {
            **self.run.result.to_dict(),
            "model": {
                "parameters": [self.run.params_before.parameters, self.run.params_after.parameters],
                "nonzeros": [self.run.params_before.nonzeros, self.run.params_after.nonzeros],
                "macs": list(self.macs),
                "nonzero_macs": list(self.nonzero_macs),
                "compressed": [size(s) for s in self.compressed],
            },
            "capture": self.capture.to_dict() if self.capture is not None else None,
            "notes": list(self.notes),
        }


def _compressed(model: ModelProto, notes: list[str], what: str) -> DeflateSize | None:
    if model.ByteSize() > SERIALIZABLE:
        notes.append(f"the {what} model is 2 GiB or more: its compressed size is not estimated in a dry run")
        return None
    return estimate_bytes(model.SerializeToString())


def _macs(model: ModelProto, shapes: Mapping[str, tuple[int, ...]] | None, notes: list[str]) -> tuple[Any, Any]:
    """Dense and non-zero MACs at ``shapes``, dynamic dims resolved as validation resolves them."""
    from onnxprune.structure.analysis import input_shapes_for

    try:
        counted = count_compute(model, input_shapes=input_shapes_for(model, shapes))
    except OnnxPruneError as exc:
        note = f"MACs not counted: {exc}"
        if note not in notes:
            notes.append(note)
        return None, None
    return counted.macs, counted.nonzero_macs


def dry_run(
    model: ModelProto,
    config: PruneConfig | None,
    structure: StructureConfig | None,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    with_data: bool = False,
) -> DryRun:
    """Predict what ``prune`` would write from ``model`` (left as it is; see module docstring);
    ``with_data``: the run would have calibration data (what a dry run does not read)."""
    notes: list[str] = []
    capture = None
    weights = config
    if config is not None and config.method != "magnitude":
        capture = capture_plan(model, config)
        weights = dataclasses.replace(config, method="magnitude", bias_correction=False)
        notes.append(
            Message(
                f"{opt('method', config.method)} is not run in a dry run: the prediction is magnitude pruning at "
                "the same counts; the capture below is what calibration would fit"
            )
        )
    if structure is not None and structure.structured and structure.measured(with_data=with_data):
        structure = dataclasses.replace(structure, allocator="uniform")
        notes.append(
            "the channels per group would be allocated by their loss measured on the data: predicted with the "
            "same fraction of every group"
        )
    before_macs, before_nz = _macs(model, input_shapes, notes)
    before_size = _compressed(model, notes, "input")
    pruned = copy.deepcopy(model)
    run = run_model(build_pipeline(weights, structure, None), pruned, input_shapes=input_shapes, stamp_always=True)
    after_macs, after_nz = _macs(pruned, input_shapes, notes)
    return DryRun(
        run,
        (before_macs, after_macs),
        (before_nz, after_nz),
        (before_size, _compressed(pruned, notes, "pruned")),
        capture,
        notes,
    )
