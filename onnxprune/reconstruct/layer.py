"""One layer's solve: every group of its weight through a method, with the error terms and bias deltas.

A :class:`LayerTask` holds what the solve reads and nothing else (the weight as matrices, the
criterion's mask, the statistics of the layer's input, the amount and the method's options;
never the model), so a wave's solves can run anywhere (:mod:`onnxprune.executors`): the
calibrated pass (:mod:`onnxprune.passes.calibrated`) builds the tasks, :func:`solve_layer` runs
one and returns a :class:`LayerSolution` of arrays.

For each group ``g`` (``w [rows, cols]``, ``H = Σ xᵀx`` of the current input; with a reference,
``C Wᵀ = Σ xᵀ(x_d wᵀ)`` against the dense model's input and ``tr(w H_d wᵀ) = Σ ‖x_d wᵀ‖²``, the
only ways the solve reads ``C = Σ xᵀx_d`` and ``H_d = Σ x_dᵀx_d``, :mod:`onnxprune.capture`):

- the goal is ``w`` itself, or with a reference the dense target ``W*`` of :func:`dense_target`
  (``(H + λI) W*ᵀ = C Wᵀ + λ Wᵀ [+ R]``, zeros kept zero);
- the method solves :class:`~onnxprune.reconstruct.methods.LayerProblem` (columns in the layer's
  N:M order when the method chooses its own mask);
- the error ``Σ_rows ‖w X_d − ŵ X‖²`` of the result and of the magnitude mask at the same count
  (:func:`output_error`), over ``tr(w H_d wᵀ)``;
- per use of the weight, the bias delta ``W·E[x_d] − Ŵ·E[x]`` (:func:`bias_delta`).

**Determinism.** The whole solve runs with one BLAS thread
(:func:`~onnxprune.reconstruct.threads.one_blas_thread`): a multi-threaded BLAS splits sums over
its threads, so the bits of a result would depend on the thread count, which differs between
this process, a pool worker and a Ray worker (measured: a 384 × 1536 SparseGPT task solved with
2 BLAS threads gave other bits, in the weights, the error and the bias delta, than with 1). Its
arrays are made C-contiguous and aligned first: numpy multiplies some layouts with BLAS and others
with its own loops, which sum in another order, and an array unpickled in a worker need not keep
the layout it had here (a Fortran-ordered or strided ``w`` or ``H`` changed the bias delta and
the error). The refit's Python threads solve rows one by one, whatever their number. So a task
gives the same bits in any process with the same numpy and BLAS build on the same CPU family (a
Ray node with another CPU may pick other BLAS kernels).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from onnxprune.reconstruct import grouped
from onnxprune.reconstruct.hessian import damping
from onnxprune.reconstruct.methods import LayerProblem, Method, RowsProblem
from onnxprune.reconstruct.threads import one_blas_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Residual:
    """The error ``d = r_d − r`` reaching the sum ``s = y + r`` that a layer's output feeds:
    ``cross = Σ xᵀd``, ``cross_ref = Σ x_dᵀd`` ``[cols, width]`` and ``energy = Σ ‖d‖²``."""

    cross: np.ndarray
    cross_ref: np.ndarray
    energy: float


@dataclass(frozen=True)
class UseMeans:
    """One use of the weight, for its bias delta: ``mean = E[x]`` ``[k, cols]`` (``k`` 1 when
    every group reads the same input), ``mean_ref = E[x_d]`` or None, and with a residual target
    the mean of its ``d`` ``[width]`` (else None)."""

    mean: np.ndarray
    mean_ref: np.ndarray | None = None
    residual_mean: np.ndarray | None = None


@dataclass(frozen=True)
class LayerTask:
    """What one layer's solve reads (see the module docstring).

    weight: the weight's key (a label only). w: ``[groups, rows, cols]`` float64; magnitude: the
    criterion's mask, same shape (True = pruned). H, sqnorm: ``[k, cols, cols]``, ``[k, cols]``
    (``k`` 1 when every group reads the same input, else ``groups``). CW ``[groups, cols, rows]``
    (``C wᵀ`` per group) and energy_ref ``[groups]`` (``tr(w H_d wᵀ)``) with a reference (the
    layer is fitted to the dense model's outputs; :func:`reference_terms`), else None; residual:
    with a reference and a settled residual sum, else None. uses: each use's means (its bias delta).
    magnitude_error: whether the solution reports the magnitude mask's error too (else NaN).
    count: the layer's exact count (split over the groups), None with ``nm``; amount: the
    fraction, descriptive. nm_order: the column order of the layer's N:M groups (a method that
    chooses its own mask sees the columns in that order), or None. row_wise: rows long enough to
    prune each to the same count. method: the method whose ``solve`` runs (sent as it is, so a
    method registered by the application need not be registered where the task runs).
    """

    weight: str
    w: np.ndarray
    magnitude: np.ndarray
    H: np.ndarray
    sqnorm: np.ndarray
    method: Method
    percdamp: float
    blocksize: int
    exact_refit: bool
    row_wise: bool
    count: int | None
    amount: float | None
    nm: tuple[int, int] | None = None
    nm_order: np.ndarray | None = None
    CW: np.ndarray | None = None
    energy_ref: np.ndarray | None = None
    residual: Residual | None = None
    uses: tuple[UseMeans, ...] = ()
    magnitude_error: bool = True


@dataclass(frozen=True)
class LayerSolution:
    """The new weights ``[groups, rows, cols]`` (float64), ``err_num = Σ ‖w X_d − ŵ X‖²``,
    ``mag_num`` the same for the magnitude mask, ``err_den = Σ tr(w H_d wᵀ)``, and the bias delta
    of each use (``[groups·rows]``)."""

    new: np.ndarray
    err_num: float
    err_den: float
    mag_num: float
    deltas: tuple[np.ndarray, ...]


def solve_layer(task: LayerTask) -> LayerSolution:
    """Solve every group of ``task`` with one BLAS thread (see the module docstring)."""
    with one_blas_thread():
        return _solve(task)


def _solve(task: LayerTask) -> LayerSolution:
    # C-contiguous and aligned, as numpy makes arrays: an array's layout chooses between BLAS and
    # numpy's own loops (other sums), and one unpickled in a worker need not have the layout it had
    task = replace(
        task,
        **{f: _plain(getattr(task, f)) for f in _ARRAYS},
        residual=None
        if task.residual is None
        else replace(task.residual, **{f: _plain(getattr(task.residual, f)) for f in ("cross", "cross_ref")}),
        uses=tuple(UseMeans(_plain(u.mean), _plain(u.mean_ref), _plain(u.residual_mean)) for u in task.uses),
    )
    groups = task.w.shape[0]
    if _stacked(task):
        try:
            return _solve_rows(task)
        except grouped.Unsolved as exc:  # the loop's retries raise the damping group by group
            log.debug(
                "%s: the stacked solve of %d groups failed (%s); solving them one by one", task.weight, groups, exc
            )
    out = np.empty_like(task.w)
    err_num = err_den = mag_num = 0.0
    with_ref = task.CW is not None and task.energy_ref is not None
    cross = task.residual.cross if task.residual is not None else None
    for g in range(groups):
        k = 0 if task.H.shape[0] == 1 else g  # one input for every group (a recurrent W's directions)
        wg, hg = task.w[g], task.H[k]
        if with_ref:
            cw, dense = task.CW[g], float(task.energy_ref[g])  # type: ignore[index]
        else:  # the layer's own input is its reference: C = H_d = H
            wc = wg @ hg.T
            cw, dense = wc.T, float(np.vdot(wc, wg))
        goal = np.where(wg == 0, 0.0, dense_target(wg, hg, cw, task.percdamp, cross)) if with_ref else wg
        mag_new = np.where(task.magnitude[g], 0.0, wg)
        order = None
        wp, tp, hp, sq, mask = wg, goal, hg, task.sqnorm[k], task.magnitude[g]
        if task.method.chooses_mask:
            order = task.nm_order if task.nm is not None else None
            mask = None
            if order is not None:
                wp, tp, hp, sq = wg[:, order], goal[:, order], hg[np.ix_(order, order)], sq[order]
        problem = LayerProblem(
            w=wp,
            goal=tp,
            H=hp,
            sqnorm=sq,
            mask=mask,
            amount=task.amount,
            # the layer's exact count, split over its groups: a fraction would be rounded per row
            count=None if task.count is None else task.count // groups + (g < task.count % groups),
            nm=task.nm,
            percdamp=task.percdamp,
            blocksize=task.blocksize,
            exact_refit=task.exact_refit,
            row_wise=task.row_wise,
        )
        new = task.method.solve(problem)
        if order is not None:
            unpermuted = np.empty_like(new)
            unpermuted[:, order] = new
            new = unpermuted
        out[g] = new
        errors = OutputErrors(wg, hg, cw, dense, task.residual)
        err_num += errors.of(new)
        mag_num += errors.of(mag_new) if task.magnitude_error else math.nan
        err_den += errors.dense
    residual = task.residual is not None
    deltas = tuple(bias_delta(task.w, out, use, residual=residual) for use in task.uses)
    return LayerSolution(out, err_num, err_den, mag_num, deltas)


_ARRAYS = ("w", "magnitude", "H", "sqnorm", "CW", "energy_ref")


def nonfinite_terms(task: LayerTask) -> list[str]:
    """The float arrays of ``task`` that hold NaN or ±inf (finite weights so large that their
    products with the statistics overflow float64, e.g. 3e38 folded with a batch norm): no
    solver can use them, so the caller prunes that layer another way."""
    found = [
        f for f in _ARRAYS if (a := getattr(task, f)) is not None and a.dtype.kind == "f" and not np.isfinite(a).all()
    ]
    if task.residual is not None:
        found += [f for f in ("cross", "cross_ref") if not np.isfinite(getattr(task.residual, f)).all()]
    return found


def _stacked(task: LayerTask) -> bool:
    """True when the groups of ``task`` are solved as one stack (:mod:`.grouped`): two or more
    groups of one row and at most :data:`~.grouped.MAX_COLS` columns (a depthwise Conv), a method
    with ``solve_rows``, no N:M pattern and no residual sum."""
    groups, rows, cols = task.w.shape
    return (
        task.method.solve_rows is not None
        and groups > 1
        and rows == 1
        and cols <= grouped.MAX_COLS
        and task.nm is None
        and task.residual is None
    )


def _solve_rows(task: LayerTask) -> LayerSolution:
    """:func:`_solve`'s loop for one-row groups as one stack: the goals (with a reference, each
    group's dense target), the method's ``solve_rows``, and each group's errors."""
    groups, _, cols = task.w.shape
    w = task.w[:, 0, :]
    H = np.broadcast_to(task.H, (groups, cols, cols))  # one input for every group, or each its own
    if task.CW is not None and task.energy_ref is not None:
        cw, dense = task.CW[:, :, 0], task.energy_ref.astype(np.float64)
        goal = np.where(w == 0, 0.0, dense_targets(w, H, cw, task.percdamp))
    else:  # the layer's own input is its reference: C = H_d = H
        cw = np.matmul(w[:, None, :], np.swapaxes(H, 1, 2))[:, 0]
        dense = np.einsum("gi,gi->g", cw, w)
        goal = w
    count = None
    if task.count is not None:
        base, extra = divmod(task.count, groups)  # the layer's exact count, split as the loop splits it
        count = base + (np.arange(groups) < extra)
    assert task.method.solve_rows is not None
    new = task.method.solve_rows(
        RowsProblem(goal, H, count, task.amount, task.percdamp, task.blocksize, task.exact_refit)
    )

    def errors(v: np.ndarray) -> np.ndarray:  # OutputErrors.of, group by group
        return np.einsum("gi,gi->g", np.matmul(v[:, None, :], H)[:, 0], v) - 2 * np.einsum("gi,gi->g", v, cw) + dense

    out = new[:, None, :]
    mag = float(errors(np.where(task.magnitude[:, 0, :], 0.0, w)).sum()) if task.magnitude_error else math.nan
    deltas = tuple(bias_delta(task.w, out, use) for use in task.uses)
    return LayerSolution(out, float(errors(new).sum()), float(dense.sum()), mag, deltas)


def _target_damping(h: np.ndarray, percdamp: float) -> float:
    """The ridge of :func:`dense_target`: the solvers' ``λ``, or a trace of one when that is 0."""
    return damping(h, np.diagonal(h) == 0, percdamp) or 1e-8 * max(float(np.mean(np.diagonal(h))), 1e-30)


def dense_targets(w: np.ndarray, H: np.ndarray, cw: np.ndarray, percdamp: float) -> np.ndarray:
    """:func:`dense_target` of one-row groups as one stack: ``w``, ``cw`` ``[G, cols]``, ``H``
    ``[G, cols, cols]``; raises :class:`~.grouped.Unsolved` where the loop would fall back to
    least squares."""
    lam = np.array([_target_damping(h, percdamp) for h in H])
    a = H + lam[:, None, None] * np.eye(H.shape[1])
    try:
        return np.linalg.solve(a, (cw + lam[:, None] * w)[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError as exc:
        raise grouped.Unsolved(str(exc)) from exc


def _plain(a: Any) -> Any:
    return None if a is None else np.require(a, requirements=("C", "A"))


def reference_terms(w: np.ndarray, c: np.ndarray, h_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(C wᵀ, tr(w H_d wᵀ))`` per group of ``w [groups, rows, cols]`` from the matrices ``C``
    and ``H_d`` ``[k, cols, cols]`` (``k`` 1: one input for every group)."""
    cw = np.matmul(c, np.swapaxes(w, 1, 2))
    return cw, np.sum(np.matmul(w, h_ref) * w, axis=(1, 2))


def dense_target(
    w: np.ndarray, h: np.ndarray, cw: np.ndarray, percdamp: float, residual: np.ndarray | None = None
) -> np.ndarray:
    """``W*`` that best maps the current inputs to the dense outputs: each row solves
    ``(H + λI) w* = C w + λ w`` (ridge towards ``w``), where ``H = Σ x xᵀ`` of the current
    input and ``C = Σ x x_dᵀ`` against the dense model's input, given as ``cw = C wᵀ``
    ``[cols, rows]``; then ``‖w·X_d − ŵ·X‖² = (w* − ŵ)ᵀ H (w* − ŵ) + const`` for any ``ŵ``. With
    ``residual`` ``R = Σ xᵀ(r_d − r)`` (the output is summed with ``r``: :mod:`onnxprune.capture`)
    the target is the dense *sum*, ``(H + λI) W*ᵀ = C Wᵀ + λ Wᵀ + R``: the layer also takes up the
    part of the error arriving through ``r`` that its input can express."""
    lam = _target_damping(h, percdamp)
    a = h + lam * np.eye(h.shape[0])
    rhs = cw + lam * w.T
    if residual is not None:
        rhs = rhs + residual
    try:
        return np.linalg.solve(a, rhs).T
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs, rcond=None)[0].T


class OutputErrors:
    """``Σ_rows ‖w·X_d − ŵ·X‖² = ŵᵀHŵ − 2ŵᵀCw + wᵀH_d w`` for any ``ŵ`` of one group, given
    ``cw = C wᵀ`` ``[cols, rows]`` and ``dense = tr(w H_d wᵀ)`` (``C = H = H_d`` without a
    reference); with ``residual`` (the output feeds a sum ``y + r``; anything with its ``cross``,
    ``cross_ref`` and ``energy``) the error at the sum, ``+ 2 tr(w X_dᵀD) − 2 tr(ŵ XᵀD) + ‖D‖²``.

    What does not depend on ``ŵ`` is computed once, so each :meth:`of` is one product ``ŵ H``.
    """

    def __init__(
        self, w: np.ndarray, h: np.ndarray, cw: np.ndarray, dense: float, residual: Residual | None = None
    ) -> None:
        self.h, self.residual = h, residual
        self.wc = cw.T  # ŵᵀCw = ⟨ŵ, w Cᵀ⟩
        self.dense = float(dense)
        self.constant = self.dense
        if residual is not None:
            self.constant += 2 * float(np.vdot(w, residual.cross_ref.T)) + residual.energy

    def of(self, new: np.ndarray) -> float:
        error = quad(new, self.h, new) - 2 * float(np.vdot(new, self.wc)) + self.constant
        if self.residual is not None:
            error -= 2 * float(np.vdot(new, self.residual.cross.T))
        return error


def output_error(
    new: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    h_ref: np.ndarray,
    residual: Residual | None = None,
) -> float:
    """:meth:`OutputErrors.of` for one ``ŵ``, from the matrices ``C`` and ``H_d`` of its group."""
    cw, dense = reference_terms(w[None], c[None], h_ref[None])
    return OutputErrors(w, h, cw[0], float(dense[0]), residual).of(new)


def quad(a: np.ndarray, m: np.ndarray, b: np.ndarray) -> float:
    """``Σ_rows a_i M b_iᵀ`` through one matrix product (BLAS), not a three-operand einsum."""
    return float(np.vdot(a @ m, b))


def bias_delta(w: np.ndarray, new: np.ndarray, use: UseMeans, *, residual: bool = False) -> np.ndarray:
    """``delta = W·E[x_d] − Ŵ·E[x]`` per output of every group (``[groups·rows]``), for one use
    (``E[x_d] = E[x]`` without a reference; one mean for all groups when they share x); with
    ``residual`` and the use's ``E[r_d − r]``, plus that."""
    refs = use.mean_ref if use.mean_ref is not None else use.mean
    parts = []
    for g in range(len(w)):
        k = 0 if len(use.mean) == 1 else g
        parts.append(w[g] @ refs[k] - new[g] @ use.mean[k])
    delta = np.concatenate(parts)
    if residual and use.residual_mean is not None:
        delta = delta + use.residual_mean
    return delta
