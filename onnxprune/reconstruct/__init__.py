"""Layer-wise reconstruction maths: prune a weight matrix and correct the kept weights.

Pure numpy (nothing here knows about ONNX, onnxruntime or graphs). A layer computes
``Y = W X`` with ``W`` of shape ``[rows, cols]`` (rows: outputs; cols: the reduction
features, for a Conv the im2col columns of one group in ``W.reshape(C_out, -1)`` order)
and calibration inputs ``X`` of shape ``[cols, n]``. The functions never see ``X``, only
its statistics:

* ``H = X Xᵀ = Σ_t x_t x_tᵀ`` (``[cols, cols]``, summed over the ``n`` calibration rows,
  not averaged: every result here is invariant to a positive scale of ``H``);
* ``mean = E[x]`` (``[cols]``);
* ``sqnorm = Σ_t x_{t,j}²`` (``[cols]``, the diagonal of ``H``; ``‖X_j‖ = sqrt(sqnorm_j)``).

Masks are boolean ``[rows, cols]``, ``True`` = pruned (zero). Amounts: ``sparsity`` ``s``
in [0, 1) prunes ``floor(s · cols)`` weights in every row (decimal floor,
:func:`onnxprune.sparsity.count_for_amount`); ``nm=(N, M)`` is the project's N:M pattern,
*N kept* in every ``M`` consecutive columns of a row (``M - N`` pruned), as
:func:`onnxprune.sparsity.nm_mask` and ``--pattern`` define it.

Modules:

* :mod:`.hessian` — damping of ``H`` and the upper Cholesky factor of ``H⁻¹``;
* :mod:`.masks` — Wanda scores and row-wise masks (exact counts, or N:M);
* :mod:`.sparsegpt` — SparseGPT / OBS pruning with error compensation;
* :mod:`.refit` — least-squares refit of the kept weights for a given mask;
* :mod:`.error` — bias correction and the relative reconstruction error;
* :mod:`.layer` — one layer's solve (every group, its errors and bias deltas) as a picklable
  task, so that the calibrated pass can run a wave's solves anywhere.
"""

from onnxprune.reconstruct.error import bias_delta, reconstruction_error
from onnxprune.reconstruct.hessian import dampen, inverse_factor
from onnxprune.reconstruct.masks import row_mask, wanda_scores
from onnxprune.reconstruct.refit import refit
from onnxprune.reconstruct.sparsegpt import sparsegpt

__all__ = [
    "bias_delta",
    "dampen",
    "inverse_factor",
    "reconstruction_error",
    "refit",
    "row_mask",
    "sparsegpt",
    "wanda_scores",
]
