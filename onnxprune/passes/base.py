"""What every pass is: a declared contract, ``run(model, context) -> PassResult``.

A pass takes a model (edited in place), reads what its :class:`Contract` says it reads
from the :class:`PassContext` (calibration data, input shapes, a progress callback), and
returns a :class:`PassResult`: whether it changed the model, its counts, its per-layer
records, what it skipped and why, and its own detailed result so that nothing is lost.
Like ``PassBase``/``PassResult`` in onnx-ir (``src/onnx_ir/passes/_pass_infra.py``).

A pass that ``streams`` may leave its writes to the streaming writer: it puts them in
``context.replacements`` (tensor name -> function giving the new bytes) instead of
editing the model, when ``context.stream`` allows it (the pipeline allows it only when no
in-memory pass follows). A pass that works ``on_file`` (the quantizer) also has
``run_file(source, output, context)``; its ``run`` goes through a temporary folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from onnx import ModelProto

from onnxprune.errors import OptionError

if TYPE_CHECKING:
    from onnxprune.data import Dataset
    from onnxprune.graph.lazy import TensorSource
    from onnxprune.graph.writer import Replacement
    from onnxprune.passes.result import PruneResult
    from onnxprune.passes.structural import StructuralResult
    from onnxprune.quantize import QuantizeResult
    from onnxprune.stats import ParamStats

    Detail = PruneResult | StructuralResult | QuantizeResult

#: progress(steps done, steps in all, what): the one progress callback of the library (passes,
#: evaluation stages, sensitivity executors); the CLI's bars (``onnxprune.console``) implement it
Progress = Callable[[int, int, str], None]

#: What a pass may read besides the model.
READS = ("model", "calibration", "input_shapes")


@dataclass(frozen=True)
class Contract:
    """What a pass reads, what it needs, and how it writes.

    reads: of :data:`READS`, what the pass looks at.
    needs: of ``reads``, what it cannot run without (checked before any work is done).
    streams: it can leave its tensor writes to the streaming writer (``context.replacements``).
    on_file: it works file to file (``run_file``); in memory it goes through a temporary folder.
    """

    reads: tuple[str, ...] = ("model",)
    needs: tuple[str, ...] = ("model",)
    streams: bool = False
    on_file: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.reads) - set(READS))
        if unknown or not set(self.needs) <= set(self.reads):
            raise ValueError(f"a contract reads {READS} and needs a subset of what it reads, got {self}")


@dataclass
class PassContext:
    """What a run gives its passes besides the model (one per run, never shared)."""

    calibration: Dataset | None = None
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    progress: Progress | None = None  # the pipeline hands it to its first pass only (one progress bar)
    stream: bool = False  # may a streaming pass defer its writes (see module docstring)
    replacements: dict[str, Replacement] = field(default_factory=dict)  # the deferred writes
    #: reads the external tensors of a model loaded without its external data (a streamed run:
    #: only streaming passes get such a model), None when the model is loaded whole
    tensors: TensorSource | None = None
    #: stored tensor key -> the NaN and ±inf that matter in it, as the weight pass's discovery
    #: counted them reading a streamed model (:func:`~onnxprune.graph.sanity.refuse_nonfinite`)
    nonfinite: Mapping[str, int] | None = None


@dataclass(frozen=True)
class PassResult:
    """What one pass did, in the same shape for every pass.

    counts: named totals (ints), e.g. ``zeros_after``, ``units_removed``, ``params_before``.
    layers: per-layer records of what the pass acted on (:class:`~onnxprune.passes.result.LayerResult`,
        :class:`~onnxprune.passes.structural.GroupRecord`, :class:`~onnxprune.quantize.QuantizedWeight`).
    skipped: ``(what, reason)`` for each thing it left alone, or for the pass itself when it did not run.
    detail: the pass's own result (:class:`PruneResult`, :class:`StructuralResult`,
        :class:`QuantizeResult`), None when the pass did not run.
    """

    name: str
    changed: bool
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    layers: tuple[Any, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    detail: Detail | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", MappingProxyType(dict(self.counts)))

    @property
    def ran(self) -> bool:
        return self.detail is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "changed": self.changed,
            "counts": dict(self.counts),
            "layers": len(self.layers),
            "skipped": [list(entry) for entry in self.skipped],
        }


def not_run(name: str, why: str) -> PassResult:
    """The result of a pass the pipeline did not run, with the reason."""
    return PassResult(name, False, skipped=((name, why),))


def prune_pass_result(
    name: str, result: PruneResult, before: ParamStats, after: ParamStats, **extra: int
) -> PassResult:
    """The uniform result of a weight pass (magnitude or calibrated): its pruned tensors as
    layers, its skipped ones with their reason, its totals and the model's parameters."""
    counts = {
        "tensors_pruned": len(result.pruned),
        "tensors_skipped": len(result.skipped),
        "weights": result.weights_total,
        "zeros_before": result.zeros_before,
        "zeros_after": result.zeros_after,
        "newly_zeroed": result.newly_zeroed,
        "params_before": before.parameters,
        "nonzeros_before": before.nonzeros,
        "params_after": after.parameters,
        "nonzeros_after": after.nonzeros,
        **extra,
    }
    skipped = tuple((layer.key, layer.reason or "not pruned") for layer in result.skipped)
    return PassResult(name, bool(result.pruned), counts, result.pruned, skipped, result)


class Pass(ABC):
    """A step of the pipeline: ``name``, ``contract`` and ``run`` (see module docstring)."""

    name: ClassVar[str]
    contract: ClassVar[Contract]

    def check(self, context: PassContext) -> None:
        """Raise :class:`OptionError` when the context lacks what the contract needs."""
        if "calibration" in self.contract.needs and context.calibration is None:
            raise OptionError(f"the {self.name} pass needs calibration data: see onnxprune.calibration_data")

    @abstractmethod
    def run(self, model: ModelProto, context: PassContext) -> PassResult:
        """Apply the pass to ``model`` in place and say what it did."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
