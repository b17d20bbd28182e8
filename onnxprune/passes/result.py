"""What a pass did: per-layer records and totals, skipped tensors with their reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LayerResult:
    """One discovered tensor and what the pass did to it."""

    key: str
    name: str
    ops: tuple[str, ...]
    nodes: tuple[str, ...]
    scope: str  # the (sub)graph path that stores the tensor, "" for the main graph
    readers: tuple[tuple[str, str], ...]  # (scope path, node label) of every reading node
    shape: tuple[int, ...]
    dtype: str
    role: str
    storage: str
    numel: int
    zeros_before: int
    zeros_after: int
    pruned: bool
    pattern: str | None = None
    target: float | None = None
    reason: str | None = None
    method: str | None = None  # how the mask (and update) was made: magnitude, wanda, sparsegpt, admm, refit
    error_magnitude: float | None = None  # ‖WX−ŴX‖²/‖WX‖² of plain magnitude on the calibration data
    error: float | None = None  # the same for the method used
    bias: str | None = None  # bias correction: "corrected", "added", or why not
    percdamp: float | None = None  # the solvers' damping when chosen for this layer (a recurrent R, closed loop)
    closed_loop_error: float | None = None  # the node's outputs' relative error, run closed loop, at that damping
    curve_weight: float | None = None  # allocation by error curves: the layer's weight c_l (passes/curve_allocation)
    probe: float | None = None  # and its probe d_l: the model's output change with this layer alone pruned

    @property
    def sparsity_before(self) -> float:
        return self.zeros_before / self.numel if self.numel else 0.0

    @property
    def sparsity_after(self) -> float:
        return self.zeros_after / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class PruneResult:
    """Every discovered tensor, pruned or skipped, and the totals over prunable ones."""

    layers: tuple[LayerResult, ...]
    config: dict[str, object] = field(default_factory=dict)
    allocation: dict[str, object] | None = None  # how the calibrated pass split the sparsity among layers
    reordered: dict[str, object] | None = None  # channels reordered for an N:M pattern first (:mod:`.permutation`)
    blocks: dict[str, object] | None = None  # block reconstruction after the layer solves (:mod:`.blocks`)

    @property
    def pruned(self) -> tuple[LayerResult, ...]:
        return tuple(layer for layer in self.layers if layer.pruned)

    @property
    def skipped(self) -> tuple[LayerResult, ...]:
        return tuple(layer for layer in self.layers if not layer.pruned)

    @property
    def weights_total(self) -> int:
        return sum(layer.numel for layer in self.pruned)

    @property
    def zeros_before(self) -> int:
        return sum(layer.zeros_before for layer in self.pruned)

    @property
    def zeros_after(self) -> int:
        return sum(layer.zeros_after for layer in self.pruned)

    @property
    def newly_zeroed(self) -> int:
        return self.zeros_after - self.zeros_before

    @property
    def sparsity_after(self) -> float:
        return self.zeros_after / self.weights_total if self.weights_total else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "config": self.config,
            "allocation": self.allocation,
            "reordered": self.reordered,
            "blocks": self.blocks,
            "totals": {
                "pruned_tensors": len(self.pruned),
                "skipped_tensors": len(self.skipped),
                "weights": self.weights_total,
                "zeros_before": self.zeros_before,
                "zeros_after": self.zeros_after,
                "newly_zeroed": self.newly_zeroed,
                "sparsity_after": self.sparsity_after,
            },
            "layers": [
                {**asdict(layer), "sparsity_before": layer.sparsity_before, "sparsity_after": layer.sparsity_after}
                for layer in self.layers
            ],
        }
