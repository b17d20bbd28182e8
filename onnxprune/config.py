"""Configuration of a pruning run: frozen dataclasses, one per concern, each validating its own fields.

:class:`PruneConfig` (a weight pass) is made of :class:`Selection`, :class:`Allocation`,
:class:`Ranking` and :class:`Reconstruction`; :class:`StructureConfig` is the structural pass.

``amount`` means one thing everywhere: a float in [0, 1), the fraction of a tensor's
elements that are zero after pruning, counting weights that were already zero. Local
scope zeroes exactly ``floor(amount · n)`` weights of each tensor (or leaves the existing
zeros if there are more); global scope zeroes ``floor(amount · Σ n)`` across tensors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnxprune.errors import OptionError, opt
from onnxprune.graph.discovery import DiscoveryOptions
from onnxprune.reconstruct.methods import METHODS
from onnxprune.row_sampling import ROWS_PER_COL, RowSampling
from onnxprune.sparsity.criteria import CRITERIA
from onnxprune.sparsity.importance import importance_choices

SCOPES = ("local", "global")
#: how channel removal is spread over the groups (:class:`StructureConfig` ``allocator``)
CHANNEL_ALLOCATORS = ("uniform", "curves")
#: how an overall sparsity is split among the tensors of local scope (see :class:`Allocation`)
ALLOCATORS = ("uniform", "curves")
NM_FALLBACKS = ("unstructured", "skip")
#: the most passes block reconstruction makes over the calibration data (``block_epochs``)
MAX_BLOCK_EPOCHS = 1000


def check_amount(value: float, what: str | None = None) -> float:
    """Validate an amount (see module docstring); returns it as a float. ``what`` names it in
    errors (default: the ``sparsity`` option)."""
    what = opt("sparsity") if what is None else what
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"{what} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise OptionError(f"{what} must be a fraction of weights in [0, 1) (0.5 zeroes half), got {value}")
    return value


def parse_pattern(text: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> (N, M) with 0 < N < M."""
    if text in ("unstructured", "", None):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise OptionError(f"{opt('pattern')} must be 'unstructured' or N:M such as 2:4, got '{text}'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise OptionError(f"{opt('pattern')} {n}:{m} is impossible: N:M keeps N of every M weights, so 0 < N < M")
    return n, m


def load_plan(path: str | Path) -> dict[str, float]:
    """Read a plan file: a JSON object mapping weight names to amounts. One-line
    :class:`OptionError` for anything else (not JSON, nested too deep to parse, numbers too long)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OptionError(f"plan file '{path}' does not exist") from None
    except RecursionError:
        raise OptionError(
            f"plan file '{path}' is nested too deeply to read: a plan is one JSON object {{\"weight name\": sparsity, ...}}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OptionError(f"plan file '{path}' is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise OptionError(f"plan file '{path}' holds a number too long to read ({str(exc).split(':')[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("layers"), dict):
        data = data["layers"]
    if not isinstance(data, dict) or not data:
        raise OptionError(f"plan file '{path}' must be a JSON object {{\"weight name\": sparsity, ...}}")
    return {str(k): check_amount(v, f"plan entry '{k}'") for k, v in data.items()}


def _check_regexes(patterns: tuple[str, ...], option: str) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(f"{option} '{pattern}' is not a valid regular expression: {exc}") from None


@dataclass(frozen=True)
class Selection(DiscoveryOptions):
    """Which weights are considered at all (the selection concern), validated.

    min_size: tensors with fewer elements are left alone.
    include / exclude: regular expressions matched against tensor names and the names of the
        nodes reading them: with ``include`` only matching weights are pruned, ``exclude``
        leaves matching ones alone.
    op_types: only weights read by these op types (empty: any).

    A :class:`~onnxprune.graph.discovery.DiscoveryOptions` (a subclass that validates), so
    :func:`~onnxprune.graph.discovery.discover` takes it as it is.
    """

    def __post_init__(self) -> None:
        if int(self.min_size) < 0:
            raise OptionError(f"{opt('min_size')} must be >= 0, got {self.min_size}")
        _check_regexes(self.include, opt("include"))
        _check_regexes(self.exclude, opt("exclude"))


@dataclass(frozen=True)
class Allocation:
    """How many weights each tensor loses (the allocation concern), validated.

    sparsity: amount for every weight not named in ``plan`` (None: prune only the plan,
        or, with an N:M pattern, the pattern's own 1 - N/M).
    scope: "local" (every tensor gets ``sparsity``) or "global" (one threshold across
        tensors, each capped at ``max_layer_sparsity``).
    pattern: None for unstructured, or (N, M) for N:M along the reduction axis.
    nm_fallback: for tensors whose reduction length is not a multiple of M (or unknown):
        "unstructured" prunes them unstructured at 1 - N/M, "skip" leaves them.
    permute: with an N:M pattern (required), reorder the channels of every group that can be
        reordered first, so the pattern keeps more (:mod:`onnxprune.passes.permutation`; the
        dense function is unchanged). Off by default; on, a model with external data is loaded
        whole rather than streamed (the reorder edits producers and consumers together).
    plan: weight name -> amount, overriding scope and sparsity for those weights.
    max_layer_sparsity: the most any one tensor loses under global scope (and under ``curves``).
    allocator: how a local ``sparsity`` is split among the tensors a calibrated method solves:
        "uniform" (each loses ``sparsity``) or "curves" (each its own, from its measured error
        curve weighted by a probe of the model's outputs, the overall count exact:
        :mod:`onnxprune.passes.curve_allocation`); "curves" needs an overall ``sparsity``, local
        scope, no ``plan`` and no ``pattern``. None here means "uniform"; :class:`PruneConfig`
        resolves None by the method (see there).

    An allocation that asks for nothing (no sparsity, pattern or plan: :attr:`prunes` is
    False) is valid on its own; :class:`PruneConfig` refuses it ("nothing to do").
    """

    sparsity: float | None = None
    scope: str = "local"
    pattern: tuple[int, int] | None = None
    nm_fallback: str = "unstructured"
    plan: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    max_layer_sparsity: float = 0.98
    allocator: str | None = None
    permute: bool = False

    def __post_init__(self) -> None:
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", check_amount(self.sparsity))
        if self.allocator is not None and self.allocator not in ALLOCATORS:
            raise OptionError(f"{opt('allocator')} must be one of {', '.join(ALLOCATORS)}, got '{self.allocator}'")
        if self.allocator == "curves":
            clash = self.curves_clash
            if clash is not None:
                raise OptionError(
                    f"{opt('allocator', 'curves')} splits an overall {opt('sparsity')} among the layers of local "
                    f"scope; it cannot be used with {clash}"
                )
        if self.scope not in SCOPES:
            raise OptionError(f"{opt('scope')} must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        if self.nm_fallback not in NM_FALLBACKS:
            raise OptionError(f"{opt('nm_fallback')} must be one of {', '.join(NM_FALLBACKS)}")
        if not isinstance(self.permute, bool):
            raise OptionError(f"{opt('permute')} must be true or false, got {self.permute!r}")
        if self.permute and self.pattern is None:
            raise OptionError(
                f"{opt('permute', True)} reorders channels for an N:M {opt('pattern')}: give one (e.g. 2:4) "
                f"or drop {opt('permute', True)}"
            )
        if self.pattern is not None:
            n, m = self.pattern
            if not 0 < n < m:
                raise OptionError(f"{opt('pattern')} {n}:{m} is impossible: 0 < N < M is required")
            if self.sparsity is not None:
                raise OptionError(
                    f"{opt('sparsity')} and {opt('pattern')} {n}:{m} are both given: an N:M pattern fixes the "
                    f"sparsity at 1 - N/M = {1 - n / m:g}; drop {opt('sparsity')}"
                )
            if self.plan:
                raise OptionError(f"{opt('plan')} cannot be combined with an N:M {opt('pattern')}")
        object.__setattr__(
            self,
            "plan",
            MappingProxyType({k: check_amount(v, f"plan entry '{k}'") for k, v in dict(self.plan).items()}),
        )
        if not 0.0 < float(self.max_layer_sparsity) <= 1.0:
            raise OptionError(f"{opt('max_layer_sparsity')} must lie in (0, 1], got {self.max_layer_sparsity}")

    @property
    def curves_clash(self) -> str | None:
        """What keeps ``allocator="curves"`` from splitting this allocation (as an option names
        it), None when it can: it needs an overall ``sparsity``, local scope, no plan, no pattern."""
        if self.pattern is not None:
            return f"an N:M {opt('pattern')}"
        if self.plan:
            return f"a {opt('plan')}"
        if self.scope == "global":
            return f"{opt('scope', 'global')}"
        if self.sparsity is None:
            return f"no {opt('sparsity')}"
        return None

    @property
    def prunes(self) -> bool:
        """True if it asks for anything: a sparsity, an N:M pattern or a plan."""
        return self.sparsity is not None or self.pattern is not None or bool(self.plan)

    @property
    def pattern_name(self) -> str:
        return "unstructured" if self.pattern is None else f"{self.pattern[0]}:{self.pattern[1]}"


@dataclass(frozen=True)
class Ranking:
    """Which weights of a tensor go first (the criterion concern), validated.

    criterion: a name in :data:`onnxprune.sparsity.criteria.CRITERIA`: "magnitude", "lamp"
        (layer-adaptive, matters with global scope), "random", or one registered later.
    seed: seeds a seeded criterion ("random"), with each tensor's index, and the rows the
        calibration capture draws on large inputs (``capture_rows``: :mod:`onnxprune.row_sampling`).
    """

    criterion: str = "magnitude"
    seed: int = 0

    def __post_init__(self) -> None:
        if CRITERIA.find(self.criterion) is None:
            raise OptionError(
                f"{opt('criterion')} must be one of {', '.join(CRITERIA.names())}, got '{self.criterion}'"
            )
        if isinstance(self.seed, bool) or not hasattr(type(self.seed), "__index__") or self.seed < 0:
            raise OptionError(
                f"{opt('seed')} must be an integer >= 0 (numpy seeds no negative number), got {self.seed!r}"
            )


@dataclass(frozen=True)
class Reconstruction:
    """How pruned layers are solved from calibration data (the reconstruction concern), validated.

    method: a name in :data:`onnxprune.reconstruct.methods.METHODS`: "magnitude" (no data),
        "wanda" (|W|·‖x‖ per output row), "sparsegpt" (OBS mask and update) or "refit" (the
        magnitude mask, then a least-squares refit of the kept weights); all but magnitude
        need calibration data.
    bias_correction: b' = b + (W - Ŵ)·E[x] after pruning (needs calibration data).
    sequential: calibrated layers see the model already pruned up to them (else one pass
        over the dense model).
    percdamp: ridge damping λ = percdamp · mean(diag H) of the calibrated solvers; None:
        0.01 with real data, 1.0 with data-free inputs (synthetic statistics are trusted less,
        so the solution stays nearer the magnitude-pruned weights).
    blocksize: SparseGPT column block.
    exact_refit: after a method that chooses its own mask and updates the kept weights
        (SparseGPT, whose updates are greedy, column by column), solve the kept weights of each
        row again exactly for that mask (the ridge least squares of ``refit``). Measured on the
        fixtures at 50 % / 70 % / 2:4: LSTM 87.8/35.3/86.8 -> 91.2/48.6/90.6 top-1,
        transformer 70 % 84.2 -> 85.8 (see the README's calibrated table).
    capture_rows: how many input rows of each calibration sample a layer's statistics use, per
        column of the layer: at most ``samples · max(capture_rows · cols, 1024)`` rows of a
        batch, drawn at random (seeded by ``seed``) and weighted so that every sum stays unbiased
        (:mod:`onnxprune.row_sampling`); a Conv has one row per output position, so the cost no
        longer grows with the image size. In the error curves' capture a layer counts, after its first
        capped batch, its damped dimension ``d_λ = tr(H(H + λI)⁻¹)`` instead of ``cols`` (the
        directions the damping leaves to the data; row_sampling, "Damped dimension"). None: every
        row (the full capture). Default 16,
        measured with ``tools/capture_rows.py`` (see :data:`onnxprune.row_sampling.ROWS_PER_COL`).
        The error curves of ``allocator="curves"`` are captured with half as many
        (:data:`onnxprune.passes.curve_allocation.CURVE_ROWS_DIVISOR`).
    block_epochs: after the layer solves, fit the kept weights of each block of the model (the
        stretch between two places where one activation carries everything on, e.g. a transformer
        layer) together to the block's dense output, this many passes over the calibration data
        (:mod:`onnxprune.passes.blocks`, :mod:`onnxprune.reconstruct.block`). 0 (default): off.
        Measured on all-MiniLM-L6-v2 at 2:4 (SparseGPT, 128 samples): cosine 0.9255 -> 0.9300 with
        12 epochs (0.9309 with ``permute``), about +140 s; PP-OCRv4 rec at 70 %: character error rate
        2.37 % -> 1.89 % with 4 epochs, about 2.2x the run time; mixed on the fixtures (see the README).
    workers, ray: where the layer solves of one wave run (they are independent): a local pool of
        ``workers`` processes (1: in this process), or the Ray cluster at the address ``ray``
        ("local" starts one on this machine, on loopback); the results are the same bits
        wherever they run (:mod:`onnxprune.reconstruct.layer`), so neither is in :meth:`PruneConfig.as_dict`.
    """

    method: str = "magnitude"
    bias_correction: bool = False
    sequential: bool = True
    percdamp: float | None = None
    blocksize: int = 128
    exact_refit: bool = True
    capture_rows: int | None = ROWS_PER_COL
    block_epochs: int = 0
    workers: int = 1
    ray: str | None = None

    def __post_init__(self) -> None:
        if METHODS.find(self.method) is None:
            raise OptionError(f"{opt('method')} must be one of {', '.join(METHODS.names())}, got '{self.method}'")
        if self.percdamp is not None and not 0.0 <= float(self.percdamp) <= 100.0:
            raise OptionError(f"{opt('percdamp')} must lie in [0, 100], got {self.percdamp}")
        if int(self.blocksize) < 1:
            raise OptionError(f"{opt('blocksize')} must be >= 1, got {self.blocksize}")
        if self.capture_rows is not None and (
            isinstance(self.capture_rows, bool)
            or not hasattr(type(self.capture_rows), "__index__")
            or self.capture_rows < 1
        ):
            raise OptionError(
                f"{opt('capture_rows')} must be an integer >= 1 (rows per sample per column) or None (every "
                f"row), got {self.capture_rows!r}"
            )
        if (
            isinstance(self.block_epochs, bool)
            or not hasattr(type(self.block_epochs), "__index__")
            or not (0 <= self.block_epochs <= MAX_BLOCK_EPOCHS)
        ):
            raise OptionError(
                f"{opt('block_epochs')} must be an integer in [0, {MAX_BLOCK_EPOCHS}] (0: off), got {self.block_epochs!r}"
            )
        if self.block_epochs and not METHODS[self.method].needs_data:
            raise OptionError(
                f"{opt('block_epochs')} fits blocks after a calibrated method: give {opt('method')} sparsegpt "
                f"(or wanda, refit), or drop {opt('block_epochs')}"
            )
        if isinstance(self.workers, bool) or not hasattr(type(self.workers), "__index__") or self.workers < 1:
            raise OptionError(f"{opt('workers')} must be an integer >= 1, got {self.workers!r}")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise OptionError(f"{opt('ray')} must be a cluster address or 'local', got {self.ray!r}")
        if self.ray is not None and self.workers > 1:
            raise OptionError(f"give {opt('workers')} or {opt('ray')}, not both: Ray places the solves itself")

    def row_sampling(self, seed: int = 0, damp: float | None = None) -> RowSampling:
        """The capture's row sampling for ``capture_rows``, its draws seeded by ``seed``; ``damp``:
        the solvers' resolved ``percdamp``, which sizes a capped layer's later batches by its damped
        dimension (:mod:`onnxprune.row_sampling`, "Damped dimension"; None: by its columns)."""
        per_col = None if self.capture_rows is None else int(self.capture_rows)
        return RowSampling(per_col=per_col, seed=seed, damp=damp)

    @property
    def calibrated(self) -> bool:
        """True if it needs calibration statistics."""
        return METHODS[self.method].needs_data or self.bias_correction


def _fields_of(source: object, part: type) -> dict[str, Any]:
    """The values in ``source`` of the fields of the dataclass ``part`` (a part's fields have
    the same names in :class:`PruneConfig`)."""
    return {f.name: getattr(source, f.name) for f in fields(part)}


#: the fields that say where the work runs, not what it does (the output is the same bits): not
#: in :meth:`PruneConfig.as_dict`, so the options stamped in a model do not depend on them
PLACEMENT = ("workers", "ray")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how: the four concerns of a weight pass, as one flat frozen config.

    Every field belongs to one part, which validates it and says what it means:

    - :class:`Selection` (``.selection``): min_size, include, exclude, op_types;
    - :class:`Allocation` (``.allocation``): sparsity, scope, pattern, nm_fallback, permute, plan,
      max_layer_sparsity, allocator;
    - :class:`Ranking` (``.ranking``): criterion, seed;
    - :class:`Reconstruction` (``.reconstruction``): method, bias_correction, sequential,
      percdamp, blocksize, exact_refit, capture_rows, block_epochs, workers, ray.

    The flat keyword constructor builds the parts, so every field is validated on
    construction (and again by ``dataclasses.replace``); it then checks what involves more
    than one part: a method that chooses its own mask (Wanda, SparseGPT) needs a criterion
    that ranks like magnitude, and there must be something to do (a sparsity, an N:M pattern
    or a plan). :meth:`of` builds a config from parts.

    ``allocator`` None chooses by the rest (:attr:`resolved_allocator`): "curves" for a method
    that needs data (wanda, sparsegpt, admm, refit) with an overall ``sparsity``, local scope, no plan
    and no pattern; "uniform" otherwise. An explicit "curves" with a method that needs no data
    is refused.
    """

    sparsity: float | None = None
    scope: str = "local"
    criterion: str = "magnitude"
    pattern: tuple[int, int] | None = None
    nm_fallback: str = "unstructured"
    permute: bool = False
    plan: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    max_layer_sparsity: float = 0.98
    seed: int = 0
    min_size: int = 256
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    method: str = "magnitude"
    bias_correction: bool = False
    sequential: bool = True
    percdamp: float | None = None
    blocksize: int = 128
    exact_refit: bool = True
    allocator: str | None = None
    capture_rows: int | None = ROWS_PER_COL
    block_epochs: int = 0
    workers: int = 1
    ray: str | None = None

    def __post_init__(self) -> None:
        # the parts validate their own fields; the order keeps which of several mistakes is named first
        reconstruction = Reconstruction(**_fields_of(self, Reconstruction))
        if self.allocator == "curves" and not METHODS[reconstruction.method].needs_data:
            raise OptionError(
                f"{opt('allocator', 'curves')} measures each layer with a calibrated method: give "
                f"{opt('method')} wanda, sparsegpt, admm or refit"
            )
        criterion = CRITERIA.find(self.criterion)  # an unknown one is the ranking's to name
        if METHODS[reconstruction.method].chooses_mask and criterion is not None and not criterion.ranks_like_magnitude:
            raise OptionError(
                f"{opt('criterion', self.criterion)} cannot choose the weights of {opt('method', self.method)}; drop one"
            )
        ranking = Ranking(**_fields_of(self, Ranking))
        allocation = Allocation(**_fields_of(self, Allocation))
        if allocation.pattern is not None and not METHODS[reconstruction.method].nm:
            raise OptionError(
                f"{opt('method', self.method)} prunes unstructured only: give {opt('method')} sparsegpt for an "
                f"N:M {opt('pattern')}"
            )
        if not allocation.prunes:
            raise OptionError(
                f"nothing to do: give {opt('sparsity')} (e.g. 0.5), an N:M {opt('pattern')} or a {opt('plan')}"
            )
        selection = Selection(**_fields_of(self, Selection))
        object.__setattr__(self, "sparsity", allocation.sparsity)  # as the part normalized them
        object.__setattr__(self, "plan", allocation.plan)
        object.__setattr__(self, "_parts", (selection, allocation, ranking, reconstruction))

    @classmethod
    def of(
        cls,
        *,
        selection: Selection | None = None,
        allocation: Allocation | None = None,
        ranking: Ranking | None = None,
        reconstruction: Reconstruction | None = None,
    ) -> PruneConfig:
        """The config made of these parts; a part left out has its defaults. Validated as the
        flat constructor validates (``allocation`` must ask for something)."""
        parts = (
            Selection() if selection is None else selection,
            Allocation() if allocation is None else allocation,
            Ranking() if ranking is None else ranking,
            Reconstruction() if reconstruction is None else reconstruction,
        )
        return cls(**{name: value for part in parts for name, value in _fields_of(part, type(part)).items()})

    @property
    def selection(self) -> Selection:
        """Which weights are considered: min_size, include, exclude, op_types."""
        return self._parts[0]

    @property
    def allocation(self) -> Allocation:
        """How many weights each tensor loses: sparsity, scope, pattern, nm_fallback, permute, plan, max_layer_sparsity,
        allocator."""
        return self._parts[1]

    @property
    def ranking(self) -> Ranking:
        """Which weights of a tensor go first: criterion, seed."""
        return self._parts[2]

    @property
    def reconstruction(self) -> Reconstruction:
        """How layers are solved from data: method, bias_correction, sequential, percdamp, blocksize,
        exact_refit, capture_rows, block_epochs, workers, ray."""
        return self._parts[3]

    @property
    def calibrated(self) -> bool:
        """True if the run needs calibration statistics."""
        return self.reconstruction.calibrated

    @property
    def pattern_name(self) -> str:
        return self.allocation.pattern_name

    @property
    def resolved_allocator(self) -> str:
        """``allocator``, or when None: "curves" for a method that needs data with an overall
        ``sparsity``, local scope, no plan and no pattern, else "uniform"."""
        if self.allocator is not None:
            return self.allocator
        return "curves" if METHODS[self.method].needs_data and self.allocation.curves_clash is None else "uniform"

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly view (for provenance and reports): every field but :data:`PLACEMENT`."""
        return {
            "sparsity": self.sparsity,
            "scope": self.scope,
            "criterion": self.criterion,
            "pattern": self.pattern_name,
            "nm_fallback": self.nm_fallback,
            "permute": self.permute,
            "plan": dict(self.plan),
            "max_layer_sparsity": self.max_layer_sparsity,
            "seed": self.seed,
            "min_size": self.min_size,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "op_types": list(self.op_types),
            "method": self.method,
            "bias_correction": self.bias_correction,
            "sequential": self.sequential,
            "percdamp": self.percdamp,
            "blocksize": self.blocksize,
            "exact_refit": self.exact_refit,
            "allocator": self.resolved_allocator,
            "capture_rows": self.capture_rows,
            "block_epochs": self.block_epochs,
        }


@dataclass(frozen=True)
class StructureConfig:
    """What the structural pass does (see ``onnxprune/passes/structural.py``).

    dead_channels: remove units that are constant wherever they are read (exact).
    amount: fraction of each channel group's units to remove (``--structured --sparsity``);
        with ``scope="global"`` the fraction of all groups' parameters, lowest normalized
        importance first.
    target_flops: instead of ``amount``, keep at most this fraction of the model's MACs.
    importance: a name in :data:`onnxprune.sparsity.importance.IMPORTANCES`: "l2" (weights
        only), "error" (output error at the consumers, needs calibration data), or "auto"
        (error with data, else l2).
    refit: least-squares refit of the consumers from the kept channels (with data).
    round_to: kept channel counts are multiples of this (or the whole group).
    max_fraction: never remove more than this fraction of a group's units.
    fold: fold BatchNormalization and clean up the graph afterwards.
    plan: channel group name (its first producer) -> fraction of its units to remove,
        overriding ``amount`` for those groups (from ``onnxprune analyze --structural``).
    allocator: how many units each group loses for ``amount`` or ``target_flops``:
        "uniform" (``amount`` of each group with ``scope="local"``; else by normalized
        importance), "curves" (by each group's measured loss curve, the consumers refitted:
        ``amount`` is then the fraction of the groups' parameters; needs calibration data;
        :mod:`onnxprune.passes.channel_loss`), or None: "curves" with calibration data, else
        "uniform".

    Whether constants are folded before the analysis is the pipeline's decision, not an
    option: the channel pass it runs by itself after a weight pass (an
    :class:`~onnxprune.passes.deadwatch.AfterWeights`, from
    :func:`onnxprune.passes.pipeline.after_weights`) leaves the graph untouched unless units
    go; the pass objects take it as their ``fold_first`` parameter.
    """

    dead_channels: bool = True
    amount: float | None = None
    target_flops: float | None = None
    scope: str = "local"
    importance: str = "auto"
    refit: bool = True
    round_to: int = 8
    max_fraction: float = 0.9
    fold: bool = True
    damp: float = 0.01
    plan: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    allocator: str | None = None

    def __post_init__(self) -> None:
        if self.allocator is not None and self.allocator not in CHANNEL_ALLOCATORS:
            raise OptionError(
                f"{opt('allocator')} must be one of {', '.join(CHANNEL_ALLOCATORS)} for channels, got '{self.allocator}'"
            )
        object.__setattr__(
            self,
            "plan",
            MappingProxyType({str(k): check_amount(v, f"plan entry '{k}'") for k, v in dict(self.plan).items()}),
        )
        if self.amount is not None and self.target_flops is not None:
            raise OptionError(f"give {opt('amount')} or {opt('target_flops')} for {opt('structure')}, not both")
        if self.amount is not None:
            object.__setattr__(self, "amount", check_amount(self.amount, f"{opt('amount')} (structured)"))
        if self.target_flops is not None:
            value = float(self.target_flops)
            if not 0.0 < value < 1.0 or math.isnan(value):
                raise OptionError(
                    f"{opt('target_flops')} is the fraction of MACs to keep, in (0, 1); got {self.target_flops}"
                )
        if self.scope not in SCOPES:
            raise OptionError(f"{opt('scope')} must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        if self.importance not in importance_choices():
            raise OptionError(
                f"{opt('importance')} must be one of {', '.join(importance_choices())}, got '{self.importance}'"
            )
        if int(self.round_to) < 1:
            raise OptionError(f"{opt('round_to')} must be >= 1, got {self.round_to}")
        if not 0.0 < float(self.max_fraction) < 1.0:
            raise OptionError(f"{opt('max_fraction')} must lie in (0, 1), got {self.max_fraction}")
        if not float(self.damp) >= 0.0:
            raise OptionError(f"{opt('damp')} must be >= 0, got {self.damp}")

    @property
    def structured(self) -> bool:
        return self.amount is not None or self.target_flops is not None or bool(self.plan)

    def as_dict(self) -> dict[str, object]:
        return {
            "dead_channels": self.dead_channels,
            "amount": self.amount,
            "target_flops": self.target_flops,
            "scope": self.scope,
            "importance": self.importance,
            "refit": self.refit,
            "round_to": self.round_to,
            "max_fraction": self.max_fraction,
            "fold": self.fold,
            "damp": self.damp,
            "plan": dict(self.plan),
            "allocator": self.allocator,
        }

    def measured(self, *, with_data: bool) -> bool:
        """Whether the units per group come from measured loss curves (see ``allocator``)."""
        if self.plan or not (self.amount or self.target_flops is not None):
            return False
        return self.allocator == "curves" or (self.allocator is None and with_data)

    @property
    def active(self) -> bool:
        return self.dead_channels or self.structured
