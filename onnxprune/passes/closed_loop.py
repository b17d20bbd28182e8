"""The damping of a recurrent layer's fit, chosen by its closed-loop error on the calibration data.

A layer whose input is its own node's output (a recurrent ``R``: ``z_t = W x_t + R h_{t−1} + b``)
is fitted *open loop*: ``H = Σ h_{t−1} h_{t−1}ᵀ`` is captured on the states the layer produced
before it was pruned. Deployed, it runs *closed loop*: each step reads the states the pruned
layer produced, so an error at step ``t`` enters every later step, and large compensating
updates of the kept weights (the OBS / least-squares correction) are amplified through time.
The solvers' ridge damping ``λ = percdamp·mean(diag H)`` trades the open-loop fit against the
size of those updates, and the best trade depends on the layer and on the sparsity (on the
LSTM fixture, with its R pruned alone: 0.01 is best at 50 %, 0.1 at 70 %, 0.3 at 80 %).

So when the user fixes no damping, such a layer is solved once per ``percdamp`` of
:data:`PERCDAMPS` (the data's default among them); each solution is written and the node's
outputs ``y_λ`` are computed closed loop on the calibration data, and the solution with the
smallest relative error

    e(λ) = Σ_batches Σ_outputs ‖y_λ − y_ref‖² / Σ_batches Σ_outputs ‖y_ref‖²

is kept, where ``y_ref`` are the same outputs in the dense model (sequential calibration keeps
a copy of it), else (parallel mode) in the model as it was before this layer was pruned. On the LSTM fixture this
criterion, measured on calibration data only, picks the damping with the best held-out accuracy
at 50 %, 70 % and 80 % (see the issue notes). The cost is one solve and one run of the model up
to the node per candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.capture import read_values
from onnxprune.graph import tensors

log = logging.getLogger(__name__)

#: dampings tried for a layer that reads its own output (the data's default is added)
PERCDAMPS = (0.01, 0.03, 0.1, 0.3, 1.0)

Solved = TypeVar("Solved")


def relative_error(values: Sequence[dict[str, np.ndarray]], refs: Sequence[dict[str, np.ndarray]]) -> float:
    """``Σ ‖y − y_ref‖² / Σ ‖y_ref‖²`` over every batch and every value (float64)."""
    num = den = 0.0
    for got, ref in zip(values, refs, strict=True):
        for name, r in ref.items():
            r64 = np.asarray(r, dtype=np.float64)
            num += float(np.sum((np.asarray(got[name], dtype=np.float64) - r64) ** 2))
            den += float(np.sum(r64**2))
    return num / den if den > 0 else num


def choose_damping(
    model: ModelProto,
    proto: TensorProto,
    outputs: Sequence[str],
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    solve: Callable[..., tuple[np.ndarray, Solved]],
    *,
    reference: ModelProto | None,
    default: float,
) -> tuple[float, np.ndarray, Solved, dict[float, float]]:
    """Solve the layer stored in ``proto`` (a tensor of ``model``) for each damping, keep the one
    whose closed-loop ``outputs`` are closest to the reference's (see module docstring).

    ``solve(percdamp=λ)`` returns the new stored array and the solver's record; ``batches()``
    yields the calibration feeds anew on each call. Returns the chosen damping, its stored array
    (already written into ``proto``), its record and the error of every candidate.
    """
    dtype = tensors.read_array(proto).dtype
    refs = read_values(reference if reference is not None else model, outputs, batches())
    candidates = sorted({*PERCDAMPS, default})
    errors: dict[float, float] = {}
    best: tuple[float, np.ndarray, Solved] | None = None
    for percdamp in candidates:
        stored, solved = solve(percdamp=percdamp)
        tensors.write_array(proto, stored.astype(dtype))
        errors[percdamp] = relative_error(read_values(model, outputs, batches()), refs)
        if best is None or errors[percdamp] < errors[best[0]]:
            best = (percdamp, stored, solved)
    assert best is not None  # candidates is never empty
    tensors.write_array(proto, best[1].astype(dtype))
    log.debug("closed-loop errors by damping: %s; chose %s", errors, best[0])
    return best[0], best[1], best[2], errors
