"""Pruning criteria: which weights of a tensor go first, and how tensors compare under global scope.

A :class:`Criterion` bundles the pure-numpy functions of :mod:`onnxprune.sparsity.scores`
(where the equations are) with what the unstructured pass needs to know about them:

* ``keys(w, rng)``: a non-negative key per weight, shaped like ``w``; the ``count`` smallest
  keys are pruned (ties by lower flat index, :func:`onnxprune.sparsity.smallest_k_mask`), or
  the smallest of every N:M group. Weights that are already zero **must** get the smallest
  key (0), so they count toward the target first (the pass relies on it: a count target
  ends at ``max(count, zeros before)`` zeros). ``rng`` is a generator seeded with
  ``[seed, tensor index]`` when the criterion is ``seeded``, else None.
* ``global_keys(w)``: flat uint32 keys comparable across tensors, for one global threshold
  (``--scope global``); None if the criterion has none, and global scope then allocates
  like local scope.
* ``global_is_magnitude``: the global keys are the global magnitude keys
  (:func:`~onnxprune.sparsity.scores.global_keys` of ``w``), so discovery's key samples
  speed up the global threshold and, for float32, the threshold is one of the tensor's own
  mask keys.
* ``cheap_global_keys``: computing the global keys is one cheap pass, so they are recomputed
  on access rather than held for the whole model.
* ``global_allocation(tensors, total, caps, summaries=None)``: the criterion's own search for
  the global threshold, giving the same counts as :func:`~onnxprune.sparsity.allocate.allocate_global`
  on ``global_keys`` of each tensor (LAMP: :func:`~onnxprune.sparsity.lamp.lamp_allocation`,
  two reads of each tensor and no sort); None to search on the keys.
* ``tensor_summary(w)``: what ``global_allocation`` first reads of each tensor in a pass of its
  own (LAMP: the bins, :func:`~onnxprune.sparsity.lamp.tensor_bins`), which discovery then
  computes as it reads the tensor anyway and hands over as ``summaries`` (one read of every
  tensor fewer); None if none.
* ``ranks_like_magnitude``: within a tensor its keys select exactly the sets the magnitude
  keys select (ties by flat index), so a count target is written by
  :func:`~onnxprune.sparsity.zero_smallest_bits` (chunked, no mask), and a calibrated method
  that chooses its own mask (Wanda, SparseGPT) loses nothing by replacing it.

Register a new criterion with ``CRITERIA.register(Criterion(...))``; ``Ranking`` (``PruneConfig.ranking``)
validates ``criterion`` against :data:`CRITERIA` and ``--criterion`` offers its names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxprune.sparsity.allocate import GlobalAllocation
from onnxprune.sparsity.lamp import lamp_allocation, lamp_scores, tensor_bins
from onnxprune.sparsity.registry import Registry
from onnxprune.sparsity.scores import global_keys, magnitude_keys, random_keys

#: keys(w, rng) -> keys shaped like w (rng is None unless the criterion is seeded)
KeysFn = Callable[[np.ndarray, "np.random.Generator | None"], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    """One pruning criterion (see the module docstring for each field)."""

    name: str
    help: str
    keys: KeysFn
    global_keys: Callable[[np.ndarray], np.ndarray] | None = None
    global_is_magnitude: bool = False
    cheap_global_keys: bool = False
    global_allocation: Callable[..., GlobalAllocation] | None = None
    tensor_summary: Callable[[np.ndarray], object] | None = None
    ranks_like_magnitude: bool = False
    seeded: bool = False

    def mask_keys(self, values: np.ndarray, *, seed: int, index: int) -> np.ndarray:
        """The keys of tensor number ``index`` (the seed only matters to a seeded criterion)."""
        rng = np.random.default_rng([seed, index]) if self.seeded else None
        return self.keys(values, rng)

    @property
    def supports_global(self) -> bool:
        """True if one threshold across tensors means something for this criterion."""
        return self.global_keys is not None


def _magnitude_keys(w: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    return magnitude_keys(w)


def _random_keys(w: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    assert rng is not None, "the random criterion is seeded"
    return random_keys(w, rng)


def _lamp_global_keys(w: np.ndarray) -> np.ndarray:
    return global_keys(lamp_scores(w))


CRITERIA: Registry[Criterion] = Registry("criterion")

#: ``score(w) = |w|`` (keys: the sign-cleared bit pattern, exact in the weight's dtype)
MAGNITUDE = CRITERIA.register(
    Criterion(
        name="magnitude",
        help="smallest |w| first; globally, one threshold on |w| across tensors",
        keys=_magnitude_keys,
        global_keys=global_keys,
        global_is_magnitude=True,
        cheap_global_keys=True,
        ranks_like_magnitude=True,
    )
)
#: LAMP, ``score(u) = w_u² / Σ_{v >= u} w_v²`` over a layer sorted by magnitude: ranks like
#: magnitude within a tensor, changes only the allocation across tensors under global scope
LAMP = CRITERIA.register(
    Criterion(
        name="lamp",
        help="layer-adaptive magnitude (LAMP scores): ranks like magnitude, allocates across tensors (global scope)",
        keys=_magnitude_keys,
        global_keys=_lamp_global_keys,
        global_allocation=lamp_allocation,
        tensor_summary=tensor_bins,
        ranks_like_magnitude=True,
    )
)
#: a seeded random rank for every non-zero weight (zeros first): a baseline
RANDOM = CRITERIA.register(
    Criterion(
        name="random",
        help="a seeded random order (zeros first); a baseline; global scope allocates like local",
        keys=_random_keys,
        seeded=True,
    )
)
