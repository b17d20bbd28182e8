"""Channel importances of the structural pass: which units of a channel group go first.

A :class:`ChannelImportance` names a pure-numpy scoring function of
:mod:`onnxprune.sparsity.channels` (where the equations are) and says what it reads; the
lowest scores are removed first. Two signatures, told apart by ``needs_data``:

* data-free (``needs_data=False``): ``score(blocks, *, unit=1)``, ``blocks[m]`` ``[n, f_m]``
  what channel ``c`` owns in member ``m`` of the group: ``l2``,
  ``score_u = Σ_m ‖B_m[R_u]‖² / (‖B_m‖² / n_units)`` (:func:`~.channels.l2_importance`);
* calibrated (``needs_data=True``): ``score(weights, grams, feats, *, n, unit=1)`` over the
  group's consumers (their ``W [out, F]``, the centred Gram of their input, the group channel
  of each input feature): ``error``, the consumers' output error of removing the unit,
  ``score_u = Σ_s tr(W_{s,S_u} G_{s,S_u S_u} W_{s,S_u}ᵀ)`` (:func:`~.channels.error_importance`).

A group a calibrated importance cannot score (a group without statistics, a recurrent one
included) is scored by :data:`DATA_FREE`.
``"auto"`` is not an importance but a choice: :data:`AUTO_WITH_DATA` with calibration data,
else :data:`AUTO_WITHOUT_DATA` (:func:`resolve_importance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxprune.sparsity.channels import error_importance, l2_importance
from onnxprune.sparsity.registry import Registry


@dataclass(frozen=True)
class ChannelImportance:
    """One channel importance (see the module docstring for the two ``score`` signatures)."""

    name: str
    help: str
    score: Callable[..., np.ndarray]
    needs_data: bool = False


IMPORTANCES: Registry[ChannelImportance] = Registry("channel importance")

L2 = IMPORTANCES.register(
    ChannelImportance(
        name="l2",
        help="the weights' L2 norm over every member of the group, each member normalized (data-free)",
        score=l2_importance,
    )
)
ERROR = IMPORTANCES.register(
    ChannelImportance(
        name="error",
        help="the output error removing the unit causes at the consumers (needs calibration data)",
        score=error_importance,
        needs_data=True,
    )
)

AUTO = "auto"
AUTO_WITH_DATA, AUTO_WITHOUT_DATA = "error", "l2"
#: scores the groups a calibrated importance cannot (recurrent units, missing statistics)
DATA_FREE = "l2"


def importance_choices() -> tuple[str, ...]:
    """``"auto"`` and every registered importance, for validation and ``--importance``."""
    return (AUTO, *IMPORTANCES.names())


def resolve_importance(name: str, *, with_data: bool) -> ChannelImportance:
    """The importance ``name`` stands for (``"auto"``: by whether calibration data is given)."""
    if name == AUTO:
        name = AUTO_WITH_DATA if with_data else AUTO_WITHOUT_DATA
    return IMPORTANCES[name]
