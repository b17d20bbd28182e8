"""Row subsampling of calibration statistics: a seeded uniform subset of rows, weighted so that
every accumulated sum stays an unbiased estimate of the sum over all rows.

A layer's input arrives per calibration batch (and, inside an If/Loop/Scan body, per stacked
piece of runs) as ``R`` rows ``x_i`` of ``cols`` columns (:mod:`onnxprune.capture`; a Conv's rows
are its im2col patches, one per sample and output position). Every statistic the capture keeps
is a sum over rows of a per-row term ``f_i``::

    H = Σ x_i x_iᵀ,  Σ x_i,  Σ x_i²,  C = Σ x_i x_d,iᵀ,  H_d = Σ x_d,i x_d,iᵀ,  Σ x_d,i,
    Σ x_i d_iᵀ,  Σ x_d,i d_iᵀ,  Σ ‖d_i‖²,  Σ d_i          (d = r_d − r, a residual's error)

**Rule.** With ``per_col = k``, a piece of a batch of ``s`` samples keeps at most
``n = s · max(k · cols, MIN_ROWS)`` rows. When ``R ≤ n`` every row is used with weight 1 (the
sums are bit for bit those of a capture without sampling). Else ``n`` of the ``R`` rows are
drawn uniformly without replacement (:func:`draw`) and each is given the weight ``R / n``:
since ``P(i ∈ S) = n / R`` for every row,

    E[ (R / n) · Σ_{i ∈ S} f_i ] = Σ_i f_i        (Horvitz–Thompson)

so every sum above estimates the full one, on the full one's scale. The row count stays ``R``
(every row the layer saw), so a mean ``Σ f_i / R`` is unbiased too, and sums of different
layers, of different uses of one weight (:func:`onnxprune.capture.stacked`) and of different
batches add as before. One draw serves every term of a piece: the current model's rows and the
reference model's, the layer's and its residual's, so the error
``Σ_i ‖w x_d,i − ŵ x_i + d_i‖²`` that the solvers expand into these terms stays a (weighted) sum
of squares, never negative. Damping (``λ = percdamp · mean diag H``) is relative to ``H`` and
keeps its meaning.

**Error.** For a drawn sum of ``n`` of ``R`` rows, the relative Frobenius error of ``Ĥ`` is

    E‖Ĥ − H‖²_F / ‖H‖²_F ≈ (1 − n/R) / n · (E‖x‖⁴ / ‖M‖²_F − 1),    M = E[x xᵀ]

(the variance of the Horvitz–Thompson total under simple random sampling). For isotropic
inputs in ``cols`` dimensions ``E‖x‖⁴ / ‖M‖²_F ≈ cols + 2``, hence ``n ∝ cols`` rows give
an error that does not grow with the layer's width, about ``1 / √(k · samples)`` over a
calibration set once the batches' draws add; inputs of lower effective rank do better.
``tools/capture_rows.py`` measures it, and the error of the pruned layers' outputs, against
the full capture.

**Damped dimension.** The solvers never use ``H`` alone but ``H_λ = H + λ I`` with
``λ = percdamp · mean(diag H)``: a direction whose eigenvalue lies far below ``λ`` hardly moves
their solutions, whatever its estimate. What has to be estimated well is ``H`` relative to
``H_λ``, whose dimension is the ridge's *statistical dimension*

    d_λ = tr(H (H + λ I)⁻¹) = Σ_i e_i / (e_i + λ)   (e_i the eigenvalues of H),  d_λ ≤ cols,

and a uniform sample of ``n`` rows makes ``Ĥ_λ`` a ``(1 ± ε)`` spectral approximation of ``H_λ``
once ``n`` grows as ``d_λ / ε²`` (times the rows' coherence and a logarithm: the sampling bounds
of ridge regression), as ``cols / ε²`` without damping. So with ``damp`` set (the run's resolved
``percdamp``), a layer whose rows are capped measures ``d_λ`` on its first capped batch
(:func:`statistical_dimension`, from the ``H`` of that batch, drawn at ``k · cols``) and its later
batches keep ``s · max(k · ⌈d_λ⌉, min_rows)`` rows: the same ``k`` rows per dimension that
matters. An im2col patch's columns are strongly correlated (neighbouring taps of the same
channels): at the default ``percdamp = 0.1``, PP-OCRv4 det's capped 864-wide 3×3 layers have
``d_λ`` = 179 and 249 (about 420 at 0.01), so their later batches draw 21–29 % of the rows, and
``H``'s products, the costliest of its capture (``rows · cols²``), shrink alike. Layers that are
not capped, and the first batch of those that are, are drawn as before; a batch of every sample
at once (small inputs) has no later batch.

Only the error curves' capture sizes its batches so
(:func:`onnxprune.passes.curve_allocation.allocate_layers`): the curves need each layer's relative
error, not its solve, as they already take half the rows per column. The waves' captures, whose
``H`` the solves fit, keep ``k · cols``. With the damped dimension there too, PP-OCRv4 det ran
15 % faster at the same text-map IoU (0.98807 against 0.98803), but rec's character error rate at
70 % (128 held-out lines) went 2.79 / 3.08 / 3.08 % → 3.41 / 3.17 / 2.89 % for the draws' seeds
0 / 1 / 2: within the draws' spread, yet the default run crossed rec's 3 % target.

Pure numpy.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from onnxprune.errors import OptionError
from onnxprune.reconstruct.hessian import damping

#: Default rows per calibration sample per input column of a layer (``k`` of the rule; measured
#: in ``tools/capture_rows.py``, see :data:`onnxprune.config.Reconstruction.capture_rows`).
ROWS_PER_COL = 16
#: The least rows per sample a capped layer keeps, however narrow it is (its means and squared
#: norms are estimated from these too; narrow layers cost little).
MIN_ROWS = 1024


@dataclass(frozen=True)
class RowSampling:
    """How many rows of each piece the statistics use.

    per_col: ``k`` of the rule (module docstring): at most ``samples · max(k · cols, min_rows)``
        rows of a piece; None: every row.
    seed: the seed of the draws (each layer, batch and piece draws from its own stream).
    min_rows: the floor of the rule, per sample.
    damp: the run's resolved ``percdamp``; when set, a capped layer's later batches count its
        damped dimension ``⌈d_λ⌉`` instead of ``cols`` (module docstring, "Damped dimension");
        None (or 0: no damping): ``cols`` throughout.
    """

    per_col: int | None = ROWS_PER_COL
    seed: int = 0
    min_rows: int = MIN_ROWS
    damp: float | None = None

    def __post_init__(self) -> None:
        if self.per_col is not None and (isinstance(self.per_col, bool) or int(self.per_col) < 1):
            raise OptionError(f"capture_rows must be an integer >= 1 or None (every row), got {self.per_col!r}")
        if int(self.min_rows) < 1:
            raise OptionError(f"min_rows must be >= 1, got {self.min_rows}")
        if self.damp is not None and not (math.isfinite(self.damp) and self.damp >= 0):
            raise OptionError(f"damp must be a finite number >= 0 or None, got {self.damp!r}")

    @property
    def by_dimension(self) -> bool:
        """Whether a capped layer's later batches are sized by its damped dimension."""
        return self.per_col is not None and self.damp is not None and self.damp > 0

    def cap(self, cols: int, samples: int, dim: int | None = None) -> int | None:
        """The most rows of a piece with ``cols`` columns from a batch of ``samples`` samples (None:
        all); ``dim``: the layer's damped dimension, when measured (used where below ``cols``)."""
        if self.per_col is None:
            return None
        per = cols if dim is None else max(1, min(cols, dim))
        return max(samples, 1) * max(self.per_col * per, self.min_rows)

    def stream(self, name: str, *keys: int) -> np.random.Generator:
        """The generator of the draws of the layer input ``name`` at ``keys`` (batch, piece): seeded by
        ``seed``, a CRC-32 of ``name`` (stable across processes) and ``keys``."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode()), *keys])


#: Every row, weight 1 (no subsampling).
ALL_ROWS = RowSampling(per_col=None)


@dataclass(frozen=True)
class Draw:
    """The rows of one piece its sums use: ``chosen`` (sorted indices into its ``rows`` rows) or
    None for all of them, each with weight ``rows / len(chosen)``."""

    rows: int
    chosen: np.ndarray | None = None

    @property
    def used(self) -> int:
        """How many rows the sums use."""
        return self.rows if self.chosen is None else len(self.chosen)

    @property
    def weight(self) -> float:
        """Each used row's weight, ``rows / used`` (1.0 when every row is used)."""
        return 1.0 if self.chosen is None else self.rows / len(self.chosen)


def draw(rows: int, cap: int | None, rng: np.random.Generator | None) -> Draw:
    """``cap`` of ``rows`` rows drawn uniformly without replacement (sorted), or every row when
    ``cap`` is None or not below ``rows`` (then ``rng`` is not used and may be None)."""
    if cap is None or rows <= cap:
        return Draw(rows)
    if rng is None:
        raise OptionError("a draw below the row count needs a generator")
    chosen = np.sort(rng.choice(rows, size=cap, replace=False))
    return Draw(rows, chosen)


def scaled(value: np.ndarray, weight: float) -> np.ndarray:
    """``weight · value`` in float64 (``value`` itself when ``weight`` is 1, so that an
    unsampled sum adds exactly what it added without sampling)."""
    return value if weight == 1.0 else np.multiply(value, weight, dtype=np.float64)


def statistical_dimension(H: np.ndarray, damp: float) -> float:
    """``d_λ = tr(H (H + λ I)⁻¹) = Σ_i e_i / (e_i + λ)`` of a symmetric positive semi-definite
    ``H`` ``[cols, cols]``, ``λ = damp · mean(diag H)`` over its live columns (``H_jj > 0``; a dead
    column adds nothing): computed as ``live − λ · tr((H_live + λ I)⁻¹)``, one inverse. The live
    column count when ``damp`` is not positive or the inverse fails (no reduction)."""
    H = np.asarray(H, dtype=np.float64)
    dead = np.diagonal(H) <= 0
    live = np.flatnonzero(~dead)
    if live.size == 0:
        return 0.0
    if not damp > 0:
        return float(live.size)
    lam = damping(H, dead, damp)  # the solvers' own λ
    A = H[np.ix_(live, live)]
    A[np.diag_indices_from(A)] += lam
    try:
        inverse = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        return float(live.size)
    dim = live.size - lam * float(np.trace(inverse))
    if not math.isfinite(dim):
        return float(live.size)
    return min(float(live.size), max(dim, 0.0))
