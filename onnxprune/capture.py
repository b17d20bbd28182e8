"""Statistics of layer inputs on calibration data, for layer-wise pruning and correction.

A prunable layer computes ``Y = W Xᵀ`` (per group) from a matrix ``X [rows, cols]`` of its
input, one row per sample and position, one column per weight column:

- Gemm: the activation ``[M, K]`` (``transA``: ``[K, M]``, transposed); rows = M.
- MatMul: the activation ``[..., K]`` flattened to ``[-1, K]``; rows = ∏ leading dims.
- MatMulLeft (a weight on the left, ``W @ x``): the activation ``[..., K, N]``, each of its
  columns a row: ``[..., N, K]`` flattened to ``[-1, K]``.
- BatchedMatMul (``x @ W`` with ``W [*b, K, N]``, one group per element of the batch dims
  ``b``): the activation ``[*a, M, K]`` broadcast against ``b`` by numpy's rules (a 1-D one is
  ``[1, K]``); group ``g`` gets the ``M`` rows of every batch element whose index on the
  trailing ``len(b)`` axes is ``g`` (axes where ``b`` is 1 and leading axes beyond ``b`` add
  rows), so rows = ∏(broadcast batch) / ∏b · M per group.
- Directions (a recurrent R, reading the layer's own output ``Y [T, D, B, H]``): direction
  ``d``'s slice ``Y[:, d]`` flattened to ``[T·B, H]`` is group ``d``'s rows.
- Conv: the im2col patches of the activation, one matrix per group
  (:mod:`onnxprune.im2col`); rows = N·∏ output positions.

A spec with ``prepare`` (the op table's, :attr:`~onnxprune.ops.spec.MatrixView.prepare`) has its
input made first: ``prepare(x, [v_1, …])`` of the activation and the values of the node's other
tensors it ``reads`` (activations read like it, stored tensors as stored, on the reference
model its own), and that array is cut as above. A GRU's ``R`` with ``linear_before_reset`` = 0
reads ``h_{t−1}`` in its update and reset blocks and ``r_t ⊙ h_{t−1}`` in its candidate block,
``r_t`` recomputed from ``X``, ``Y``, ``W``, ``R``, ``B`` and the initial state
(:mod:`onnxprune.ops.recurrent`): ``[T, 3·D, B, H]``, cut as Directions into ``3·D`` groups.
Such a layer is captured in the main graph only (inside a body it is skipped, with that reason).

Streaming over calibration batches ``b``, each layer accumulates in float64

    H = Σ_b X_bᵀ X_b   [groups, cols, cols]     (SparseGPT / OBS Hessian, up to a factor 2)
    mean = Σ_b Σ_rows X_b / rows   [groups, cols]   (E[x], for bias correction)
    sqnorm = Σ_b Σ_rows X_b²   [groups, cols]     (‖x_j‖², Wanda scores use its square root)

so ``tr(W_j H_j W_jᵀ) = ‖Y_j‖²`` summed over the calibration set, bias left out. Only the
current batch's activations are held, and each is processed in blocks of at most
``max_bytes`` and :data:`BLOCK_ROWS` rows; H itself takes ``groups·cols²·8`` bytes, so a layer
with ``cols`` above ``max_cols`` gets no H (``skipped`` says so) but still gets ``mean`` and
``sqnorm``. The products of a block (and its column sums, a product with a row of ones) are
computed in the activation's precision when it is
float32 or narrower (float32; float64 stays float64) and added to the float64 sums: a float32
product of ``r`` rows has a relative rounding error of about ``√r · 2⁻²⁴`` (under 1e-5 for
``r`` ≤ :data:`BLOCK_ROWS`), far below what the damping of the solvers changes, at half the
time and memory of float64 products.

**Row subsampling** (``sampling``, :mod:`onnxprune.row_sampling`). A Conv has one row per output
position, so at large image sizes the rows, not the layer, set the cost. With a cap, each piece
of a batch of ``s`` samples (a main-graph input: the batch itself) uses at most
``n = s · max(k · cols, min_rows)`` of its ``R`` rows, drawn uniformly without replacement from
a stream seeded by the sampling's seed, the layer's input name, the batch number and the piece
number, and every sum below adds them with the weight ``R / n``, an unbiased estimate of the sum
over all rows on its scale; ``rows`` still counts all ``R`` rows (so ``mean = Σ / rows`` is
unbiased) and ``rows_used`` counts the ``n``. A Conv's chosen patches are gathered from the
input directly (:func:`onnxprune.im2col.patch_rows`), never the full patch matrix. The reference
model's rows and a residual's are the same draw. When ``R ≤ n`` (or without a cap) every row is
used with weight 1 and the sums are bit for bit those without sampling.

With a ``reference`` model (the dense model, in sequential calibration; there a frozen
:class:`~onnxprune.frontier.Frontier` of it, so that each wave runs only the dense nodes beyond
the last one's), every batch also runs through it and each layer accumulates the statistics
that relate its current input ``X`` to the input ``X_d`` the same layer sees in the reference
model::

    C = Σ_b X_bᵀ X_d,b   [groups, cols, cols]     H_d = Σ_b X_d,bᵀ X_d,b     mean_d = E[x_d]

so that a layer can be fitted to the *dense* output: ‖W X_dᵀ − Ŵ Xᵀ‖² = Σ_rows
(ŵᵀ H ŵ − 2 ŵᵀ C w + wᵀ H_d w).

The solvers read ``C`` only through ``C Wᵀ`` and ``H_d`` only through ``tr(W H_d Wᵀ)``, for the
layer's own (dense) weight ``W [groups, out, cols]``. Given the layers' ``weights``, each layer
gets those two instead (``CW``, ``energy_ref``): a layer input whose layers have few outputs for
their columns accumulates them directly from ``Y_d = X_d Wᵀ``,

    CW = Σ_b X_bᵀ Y_d,b   [groups, cols, out]      energy_ref = Σ_b ‖Y_d,b‖²   [groups]

(``4 · rows · cols · out`` operations per layer where ``C`` and ``H_d`` take ``3 · rows · cols²``:
a 3×3 convolution has nine columns per input channel, and PP-OCRv4 det's waves drop from 85 to
about 4 GFLOP a sample); the others accumulate ``C`` and ``H_d`` and convert them at the end. The
``cols × cols`` matrices ``C`` and ``H_d`` are then not returned.

A layer whose output is summed with another activation ``r`` (``LayerSpec.residual``, a
residual connection ``s = y + r``) also accumulates, with a reference, the terms of the error
that reaches that sum from the other side, ``D = R_d − R`` (``R_b``: ``r`` as rows of
``width``, in the rows' order of ``X_b``; :class:`ResidualStats`)::

    Σ_b X_bᵀ D_b,  Σ_b X_d,bᵀ D_b   [cols, width]     ‖D‖²     E[r_d − r]

so that the layer can be fitted to, and its error measured at, the dense *sum*:
``‖(W X_dᵀ + R_dᵀ) − (Ŵ Xᵀ + Rᵀ)‖² = ‖W X_dᵀ − Ŵ Xᵀ‖² + 2 tr(W X_dᵀD) − 2 tr(Ŵ XᵀD) + ‖D‖²``.
A batch where ``r`` has not the shape of ``y`` (a broadcast sum) gives the layer no residual
terms.

Layers that read the same activation with the same geometry share one accumulation: their
:class:`LayerStats` hold the same arrays, which are therefore read-only (copy before
changing them in place).

The activations are read by adding them as extra graph outputs to the serialized model
(protobuf merges a second serialized ``ModelProto`` holding only graph outputs into the
first: the model is not copied) and running it in onnxruntime on CPU with graph
optimizations on (a value that is a graph output survives every fusion).

**Layers inside If / Loop / Scan bodies** (``LayerSpec.scope``). onnxruntime returns main-graph
values only, so the copy of the model that runs is edited (:mod:`onnxprune.graph.expose`) to
carry each body input up to the main graph as a stack ``[k_1, …, k_d, *s]`` of its value on
every run of the body (an If's branch: ``k`` = 1 when taken, 0 when not; a Loop's or Scan's:
``k`` = iterations). The node runs once per run of its body, on the rows of that run, so

    H = Σ_b Σ_runs X_b,runᵀ X_b,run        (likewise mean, sqnorm, C, H_ref)

and the runs of a stack join the rows (a Conv's batch axis before im2col, a MatMul's leading
axes); a batch on which the body did not run adds nothing. A layer whose body never ran on
the data has ``rows == 0``. Layers that read the same name in different bodies (the two
branches of an If) are captured apart. The model itself is never changed. Should onnxruntime
refuse the edited copy, or fail on it where the model runs (a value whose shape changes from one
Loop iteration to the next), the body layers are returned skipped with the reason and the
main-graph layers are captured without them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, numpy_helper

from onnxprune import runtime
from onnxprune.errors import DataError, OptionError, UnsupportedModelError
from onnxprune.frontier import Frontier, Segment, SessionSource, add_initializers, capture_session
from onnxprune.graph import expose
from onnxprune.graph.edit import node_reads
from onnxprune.graph.model_io import load_model
from onnxprune.graph.writer import copy_fields
from onnxprune.im2col import AUTO_PADS, ConvGeometry, conv_cols, patch_blocks, patch_rows
from onnxprune.ops.spec import MatrixView
from onnxprune.reconstruct.layer import reference_terms
from onnxprune.row_sampling import ALL_ROWS, Draw, RowSampling, draw, scaled, statistical_dimension

log = logging.getLogger(__name__)

#: Default largest reduction length that gets a full H (8192² float64 = 512 MiB).
MAX_COLS = 8192
#: Default largest block of rows processed at once (1 GiB).
MAX_BYTES = 1 << 30
#: The most rows of one float32 product (its rounding error grows like the square root of this).
BLOCK_ROWS = 8192


@dataclass(frozen=True)
class LayerSpec:
    """One layer whose input statistics are wanted (see module docstring for the ops).

    key: the caller's identifier of the weight (opaque here; must be unique).
    node: the consuming node's name, for messages.
    capture_op: how the input is cut into rows (:attr:`~onnxprune.ops.spec.MatrixView.capture_op`
        of the op table's view): "Conv" (im2col patches), "Gemm" or "MatMul" (rows of ``K``),
        "MatMulLeft" (columns of ``K``), "BatchedMatMul" (rows of ``K`` per batch element of
        the weight), "Directions" (rows of ``H`` per direction of a recurrent output).
    activation: the tensor feeding the layer's data input, as the graph at ``scope`` names it.
    scope: where the layer's node is: ``""`` for the main graph, else the path of the If/Loop/Scan
        body that holds it (:class:`onnxprune.graph.index.Scope`); such an input is read through
        :mod:`onnxprune.graph.expose`, once per run of the body.
    cols: the reduction length per group: Conv ``C/g·∏k``, Gemm/MatMul ``K``.
    kernel, strides, pads, dilations, auto_pad: the Conv's attributes (pads in ONNX
        order, begins then ends; empty strides/dilations mean 1, empty pads mean 0).
    trans_a: Gemm ``transA``: the activation is ``[K, M]``.
    batch: BatchedMatMul: the weight's batch dims ``b`` (``groups`` = ∏b).
    reads, prepare: the input is ``prepare(activation, [values of reads])`` (``""`` in ``reads``:
        None), not the activation itself (see the module docstring).
    residual, width: a main-graph activation ``r`` that the layer's output ``y`` (``width``
        outputs per row) is summed with, ``s = y + r`` (Gemm and MatMul rows only); with a
        reference, the error reaching that sum is captured (:class:`ResidualStats`).
    """

    key: str
    node: str
    capture_op: str
    activation: str
    cols: int
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    trans_a: bool = False
    auto_pad: str = "NOTSET"
    batch: tuple[int, ...] = ()
    scope: str = ""
    reads: tuple[str, ...] = ()
    prepare: Callable[[np.ndarray, Sequence[np.ndarray | None]], np.ndarray] | None = None
    residual: str = ""
    width: int = 0

    @classmethod
    def from_view(
        cls,
        view: MatrixView,
        *,
        key: str,
        node: str,
        activation: str,
        scope: str = "",
        reads: Sequence[str] = (),
        residual: str = "",
    ) -> LayerSpec:
        """The spec that captures the input rows of the op table's matrix view of a weight
        (``reads``: the names of the view's :attr:`~onnxprune.ops.spec.MatrixView.reads`;
        ``residual``: what the layer's output is summed with, if it is to be captured)."""
        return cls(
            key=key,
            node=node,
            scope=scope,
            capture_op=view.capture_op,
            activation=activation,
            cols=view.cols,
            groups=view.capture_groups,
            kernel=view.kernel,
            strides=view.strides,
            pads=view.pads,
            dilations=view.dilations,
            trans_a=view.trans_a,
            auto_pad=view.auto_pad,
            batch=view.batch,
            reads=tuple(reads),
            prepare=view.prepare,
            residual=residual,
            width=view.rows if residual else 0,
        )


@dataclass
class LayerStats:
    """Accumulated statistics of one layer's input (float64; see module docstring).

    H is None when ``cols`` is above the cap; all arrays are None when the layer could
    not be captured at all. ``skipped`` says why, else None.
    """

    rows: int
    H: np.ndarray | None
    mean: np.ndarray | None
    sqnorm: np.ndarray | None
    skipped: str | None = None
    C: np.ndarray | None = None  # Σ xᵀ x_d against the reference model's input (see module docstring)
    H_ref: np.ndarray | None = None  # Σ x_dᵀ x_d
    mean_ref: np.ndarray | None = None  # E[x_d]
    residual: ResidualStats | None = None  # the error reaching the sum the output feeds (LayerSpec.residual)
    rows_used: int | None = None  # the rows the sums use (None: all ``rows``; :mod:`onnxprune.row_sampling`)
    CW: np.ndarray | None = None  # Σ xᵀ (x_d Wᵀ) ``[groups, cols, out]``, for the layer's weight W (given)
    energy_ref: np.ndarray | None = None  # Σ ‖x_d Wᵀ‖² ``[groups]``


@dataclass(frozen=True)
class ResidualStats:
    """The error ``d = r_d − r`` reaching the sum ``s = y + r`` that a layer's output feeds, against
    its input (see module docstring): ``cross = Σ xᵀd``, ``cross_ref = Σ x_dᵀd`` ``[cols, width]``,
    ``energy = Σ ‖d‖²``, ``mean = E[d]`` ``[width]``."""

    cross: np.ndarray
    cross_ref: np.ndarray
    energy: float
    mean: np.ndarray


def stacked(parts: Sequence[LayerStats]) -> LayerStats:
    """The statistics of the rows of every part stacked into one ``X = [X_1; X_2; …]`` (a weight
    that several nodes multiply with the same matrix): ``XᵀX = Σ_u X_uᵀX_u``, so H, C, H_ref and
    sqnorm add, rows add, and ``mean = Σ_u rows_u·mean_u / Σ_u rows_u`` (likewise ``mean_ref``);
    so do CW and energy_ref (one weight: ``Σ_u X_uᵀ X_d,u Wᵀ``).
    A part with one group where others have several (inputs every group shares) broadcasts.
    Skipped (with the first part's reason) when any part is; C and H_ref (CW and energy_ref) are
    None unless every part has them, mean_ref unless every part has one of the pairs. Subsampled
    parts add the same way: their sums are on the scale of all their rows
    (:mod:`onnxprune.row_sampling`); ``rows_used`` adds."""
    if len(parts) == 1:
        return parts[0]
    bad = next((p for p in parts if p.skipped or p.H is None or p.mean is None or p.sqnorm is None), None)
    if bad is not None:
        return LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=bad.skipped or "no statistics")
    rows = sum(p.rows for p in parts)

    def total(arrays: list[np.ndarray]) -> np.ndarray:
        return np.sum(np.broadcast_arrays(*arrays), axis=0)

    def mean(arrays: list[np.ndarray]) -> np.ndarray:
        return total([a * p.rows for a, p in zip(arrays, parts, strict=True)]) / max(rows, 1)

    refs = all(p.C is not None and p.H_ref is not None and p.mean_ref is not None for p in parts)
    products = all(p.CW is not None and p.energy_ref is not None and p.mean_ref is not None for p in parts)
    used = sum(p.rows if p.rows_used is None else p.rows_used for p in parts)
    return LayerStats(
        rows=rows,
        H=total([p.H for p in parts]),  # type: ignore[misc]
        mean=mean([p.mean for p in parts]),  # type: ignore[misc]
        sqnorm=total([p.sqnorm for p in parts]),  # type: ignore[misc]
        C=total([p.C for p in parts]) if refs else None,  # type: ignore[misc]
        H_ref=total([p.H_ref for p in parts]) if refs else None,  # type: ignore[misc]
        mean_ref=mean([p.mean_ref for p in parts]) if refs or products else None,  # type: ignore[misc]
        rows_used=used,
        CW=total([p.CW for p in parts]) if products else None,  # type: ignore[misc]
        energy_ref=total([p.energy_ref for p in parts]) if products else None,  # type: ignore[misc]
    )


class _Mismatch(Exception):
    """The activation's shape does not fit the layer spec (the message says how)."""


# ---------------------------------------------------------------------------------------
# Per-op handlers: validate a spec, and cut an activation into row blocks [groups, rows, cols] of its
# product dtype (:func:`product_dtype`; the activation arrives in it).


def _geometry(spec: LayerSpec) -> ConvGeometry:
    rank = len(spec.kernel)
    return ConvGeometry(
        groups=spec.groups,
        kernel=spec.kernel,
        strides=spec.strides or (1,) * rank,
        pads=spec.pads or (0,) * (2 * rank),
        dilations=spec.dilations or (1,) * rank,
        auto_pad=spec.auto_pad or "NOTSET",
    )


def _check_conv(spec: LayerSpec) -> None:
    rank = len(spec.kernel)
    geometry = _geometry(spec)
    problems = []
    if rank == 0 or any(k < 1 for k in spec.kernel):
        problems.append(f"kernel {spec.kernel} must list one positive size per spatial axis")
    if len(geometry.strides) != rank or any(s < 1 for s in geometry.strides):
        problems.append(f"strides {spec.strides} must hold {rank} positive values")
    if len(geometry.dilations) != rank or any(d < 1 for d in geometry.dilations):
        problems.append(f"dilations {spec.dilations} must hold {rank} positive values")
    if len(geometry.pads) != 2 * rank or any(p < 0 for p in geometry.pads):
        problems.append(f"pads {spec.pads} must hold {2 * rank} values >= 0")
    if geometry.auto_pad not in AUTO_PADS:
        problems.append(f"auto_pad {spec.auto_pad!r} must be one of {', '.join(AUTO_PADS)}")
    if rank and spec.cols % math.prod(spec.kernel):
        problems.append(f"cols {spec.cols} is not a multiple of the kernel size {math.prod(spec.kernel)}")
    if problems:
        raise OptionError(f"layer '{spec.key}' (Conv '{spec.node}'): {problems[0]}")


def _conv_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int, choose: _Choose) -> Iterator[np.ndarray]:
    geometry = _geometry(spec)
    rank = len(spec.kernel)
    if x.ndim != 2 + rank or x.shape[1] % spec.groups or conv_cols(x.shape[1], geometry) != spec.cols:
        raise _Mismatch(
            f"input shape {list(x.shape)} does not fit a {rank}-D Conv with {spec.groups} group(s), kernel "
            f"{list(spec.kernel)} and {spec.cols} columns per group"
        )
    chosen = choose(x.shape[0] * math.prod(geometry.output_shape(x.shape[2:])))
    if chosen is None:
        return patch_blocks(x, geometry, max_bytes=max_bytes)
    return patch_rows(x, geometry, chosen, max_bytes=max_bytes)


def product_dtype(x: np.ndarray) -> type[np.floating]:
    """The precision of a block's products: float64 for a float64 activation, else float32."""
    return np.float64 if x.dtype == np.float64 else np.float32


#: A handler's draw: given the number of rows of a piece, the sorted indices of the rows to use
#: (None: all of them; :func:`onnxprune.row_sampling.draw`).
_Choose = Callable[[int], np.ndarray | None]


def _every_row(rows: int) -> None:
    """The :data:`_Choose` of a capture that uses every row."""


def _row_blocks(cut: np.ndarray, max_bytes: int, choose: _Choose = _every_row) -> Iterator[np.ndarray]:
    """Contiguous slices ``[groups, ≤ step, cols]`` of ``cut`` ``[groups, rows, cols]`` (of its rows
    that ``choose`` picks), each under ``max_bytes``."""
    groups, rows, cols = cut.shape
    step = max(1, max_bytes // (groups * cols * cut.dtype.itemsize))
    return _slices(cut, step, choose(rows))  # drawn now, not when the blocks are first asked for


def _slices(cut: np.ndarray, step: int, chosen: np.ndarray | None) -> Iterator[np.ndarray]:
    if chosen is None:
        for start in range(0, cut.shape[1], step):
            yield np.ascontiguousarray(cut[:, start : start + step])
        return
    for start in range(0, len(chosen), step):
        yield np.ascontiguousarray(cut[:, chosen[start : start + step]])


def _gemm_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int, choose: _Choose) -> Iterator[np.ndarray]:
    if x.ndim != 2 or x.shape[0 if spec.trans_a else 1] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} is not a Gemm input with K = {spec.cols}")
    return _row_blocks((x.T if spec.trans_a else x)[None], max_bytes, choose)


def _matmul_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int, choose: _Choose) -> Iterator[np.ndarray]:
    if x.ndim == 0 or x.shape[-1] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} does not end with K = {spec.cols}")
    return _row_blocks(x.reshape(-1, spec.cols)[None], max_bytes, choose)


def _matmul_left_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int, choose: _Choose) -> Iterator[np.ndarray]:
    if x.ndim < 2 or x.shape[-2] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} does not have K = {spec.cols} on its second last axis")
    return _row_blocks(np.moveaxis(x, -2, -1).reshape(-1, spec.cols)[None], max_bytes, choose)


def _batched_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int, choose: _Choose) -> Iterator[np.ndarray]:
    if x.ndim == 1:
        x = x[None]  # a 1-D A is a row [1, K]
    b = spec.batch
    try:
        out = np.broadcast_shapes(x.shape[:-2], b)
    except ValueError:
        out = None
    if x.ndim < 2 or x.shape[-1] != spec.cols or out is None:
        raise _Mismatch(f"input shape {list(x.shape)} is not a MatMul input with K = {spec.cols} for batch {list(b)}")
    lead = len(out) - len(b)
    full = np.broadcast_to(x, (*out, *x.shape[-2:]))  # a view; copied once, by the transpose below
    grouped = [lead + j for j, d in enumerate(b) if d != 1]  # the axes that pick a group, C order
    rows = [i for i in range(len(out)) if i not in grouped] + [len(out)]  # the rest and M
    step_rows = math.prod(full.shape[i] for i in rows)
    cut = full.transpose(*grouped, *rows, len(out) + 1).reshape(spec.groups, step_rows, spec.cols)
    return _row_blocks(cut, max_bytes, choose)


def _check_batched(spec: LayerSpec) -> None:
    if not spec.batch or any(d < 1 for d in spec.batch) or math.prod(spec.batch) != spec.groups:
        raise OptionError(
            f"layer '{spec.key}' (BatchedMatMul '{spec.node}'): groups ({spec.groups}) must be the product of the "
            f"batch dims {list(spec.batch)}"
        )


def _directions_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int, choose: _Choose) -> Iterator[np.ndarray]:
    if x.ndim != 4 or x.shape[1] != spec.groups or x.shape[3] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} is not a recurrent output [T, {spec.groups}, B, {spec.cols}]")
    return _row_blocks(np.moveaxis(x, 1, 0).reshape(spec.groups, -1, spec.cols), max_bytes, choose)


def _any_groups(spec: LayerSpec) -> None:
    """Directions: one group per direction, any number."""


def _no_check(spec: LayerSpec) -> None:
    if spec.groups != 1:
        raise OptionError(f"layer '{spec.key}' ({spec.capture_op} '{spec.node}'): groups must be 1, not {spec.groups}")


@dataclass(frozen=True)
class _Handler:
    check: Callable[[LayerSpec], None]
    #: (spec, input, max_bytes, choose) -> blocks ``[groups, rows, cols]`` of the rows ``choose`` picks
    blocks: Callable[[LayerSpec, np.ndarray, int, _Choose], Iterator[np.ndarray]]
    signature: Callable[[LayerSpec], tuple]


HANDLERS: dict[str, _Handler] = {
    "Conv": _Handler(
        _check_conv,
        _conv_blocks,
        lambda s: ("Conv", s.activation, s.cols, _geometry(s)),
    ),
    "Gemm": _Handler(_no_check, _gemm_blocks, lambda s: ("rows", s.activation, s.cols, s.trans_a)),
    "MatMul": _Handler(_no_check, _matmul_blocks, lambda s: ("rows", s.activation, s.cols, False)),
    "MatMulLeft": _Handler(_no_check, _matmul_left_blocks, lambda s: ("columns", s.activation, s.cols)),
    "BatchedMatMul": _Handler(_check_batched, _batched_blocks, lambda s: ("batched", s.activation, s.cols, s.batch)),
    "Directions": _Handler(_any_groups, _directions_blocks, lambda s: ("directions", s.activation, s.cols, s.groups)),
}


def _handler(spec: LayerSpec) -> _Handler | None:
    """How to cut the input of ``spec`` into rows (by its capture op), None for an unknown one."""
    return HANDLERS.get(spec.capture_op)


def _signature(spec: LayerSpec) -> tuple:
    """What layers that share one accumulation have in common (the input as made, and its cut)."""
    made = ("prepared", spec.reads, spec.prepare) if spec.prepare is not None else ()
    return (*_handler(spec).signature(spec), *made)  # type: ignore[union-attr]  # specs are checked first


# ---------------------------------------------------------------------------------------
# Accumulation


def _inputs(
    spec: LayerSpec, depth: int, x: np.ndarray, x_ref: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The layer's input ``x`` (and the reference model's) in pieces the handler cuts into rows.

    A main-graph input is one piece. An input inside a body arrives as a stack
    ``[k_1, …, k_depth, *s]`` of the input of every run of the body (:mod:`onnxprune.graph.expose`),
    and ``Σ_runs X_runᵀX_run`` is wanted: the runs join a Conv input's batch axis (its patches are
    per sample) and a MatMul input's leading axes (rows), else go one at a time; an empty stack
    (a branch not taken, a loop that ran no iteration) gives no piece.
    """
    if depth == 0:
        yield x, x_ref
        return
    stack = expose.runs(x, depth)
    if stack is None:
        return
    ref = expose.runs(x_ref, depth) if x_ref is not None else None
    if x_ref is not None and (ref is None or ref.shape != stack.shape):
        raise _Mismatch(
            f"the reference model ran the body {0 if ref is None else len(ref)} time(s), this model {len(stack)} "
            "time(s) on the same batch (a branch or trip count that depends on the pruned values)"
        )
    if spec.capture_op == "Conv" or (spec.capture_op == "MatMul" and stack.ndim > 2):
        yield stack.reshape(-1, *stack.shape[2:]), None if ref is None else ref.reshape(-1, *ref.shape[2:])
    elif spec.capture_op == "MatMul":  # [runs, K]: one row per run
        yield stack, ref
    else:
        for i in range(len(stack)):
            yield stack[i], None if ref is None else ref[i]


def _column_sums(block: np.ndarray) -> np.ndarray:
    """``Σ_rows`` of a block ``[groups, rows, cols]`` as float64 ``[groups, cols]``, summed in the
    block's precision by one product with a row of ones, as its ``H`` is (5 to 7 times faster
    than numpy's float64 reduction of a float32 block; relative difference about 1e-6)."""
    ones = np.ones((1, block.shape[1]), dtype=block.dtype)
    return np.matmul(ones, block)[:, 0, :].astype(np.float64)


class _Accumulator:
    """Running sums for one (activation, geometry): H (unless too wide), Σx, Σx² and the row count,
    over the rows ``sampling`` draws from each piece, weighted (:mod:`onnxprune.row_sampling`)."""

    def __init__(
        self,
        spec: LayerSpec,
        *,
        max_cols: int,
        source: str = "",
        depth: int = 0,
        sampling: RowSampling = ALL_ROWS,
    ) -> None:
        self.spec = spec
        self.source = source or spec.activation  # the main-graph value read
        self.depth = depth  # its leading run axes (an input inside a body: see expose.runs)
        self.sampling = sampling
        self.draws: list[Draw] = []  # the last batch's draw of each piece (a residual reuses them)
        self.dim: int | None = None  # the damped dimension, once measured (row_sampling, "Damped dimension")
        groups, cols = spec.groups, spec.cols
        self.rows = 0  # every row seen
        self.used = 0  # the rows the sums use
        self.total = np.zeros((groups, cols))
        self.sqnorm = np.zeros((groups, cols))
        self.H: np.ndarray | None = np.zeros((groups, cols, cols)) if cols <= max_cols else None
        self.skipped = None if self.H is not None else f"reduction length {cols} above the capture cap {max_cols}"
        self.failed: str | None = None
        self.C: np.ndarray | None = None
        self.H_ref: np.ndarray | None = None
        self.total_ref: np.ndarray | None = None
        # the weights ``[groups, out, cols]`` of the layers reading this input, when their products
        # with the reference's rows are accumulated instead of C and H_ref (module docstring)
        self.products: dict[str, np.ndarray] = {}
        self.CW: dict[str, np.ndarray] = {}
        self.energy_ref: dict[str, np.ndarray] = {}

    def use_products(self, weights: Mapping[str, np.ndarray]) -> None:
        """Accumulate ``CW`` and ``energy_ref`` of these layers' weights instead of C and H_ref."""
        self.products = {key: np.ascontiguousarray(np.swapaxes(w, 1, 2)) for key, w in weights.items()}

    def reference_products(self, key: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(CW, energy_ref)`` of the layer ``key`` with weight ``w [groups, out, cols]``: the sums
        accumulated, or converted from C and H_ref (None without a reference)."""
        if key in self.CW:
            return self.CW[key], self.energy_ref[key]
        if self.C is None or self.H_ref is None:
            return None
        return reference_terms(np.asarray(w, dtype=np.float64), self.C, self.H_ref)

    def add(
        self,
        x: np.ndarray,
        max_bytes: int,
        x_ref: np.ndarray | None = None,
        given: Mapping[str, np.ndarray] | None = None,
        given_ref: Mapping[str, np.ndarray] | None = None,
        *,
        batch: int = 0,
        samples: int = 1,
    ) -> None:
        """Add the rows of ``x`` (and of the reference's ``x_ref``, the same rows) of calibration
        batch number ``batch`` of ``samples`` samples; ``given`` (``given_ref``): the values a spec
        with ``prepare`` reads, by name."""
        self.draws = []
        if self.failed is not None:
            return
        blocks = _handler(self.spec).blocks  # type: ignore[union-attr]  # specs are checked first
        try:
            x = self._prepared(x, given)
            x_ref = self._prepared(x_ref, given_ref) if x_ref is not None else None
            dtype = product_dtype(x)
            x = x.astype(dtype, copy=False)
            x_ref = x_ref.astype(dtype, copy=False) if x_ref is not None else None
            max_bytes = min(max_bytes, BLOCK_ROWS * self.spec.groups * self.spec.cols * np.dtype(dtype).itemsize)
            if x_ref is not None and self.H is not None and self.total_ref is None:  # zero sums until a body runs
                if self.products:
                    for key, wt in self.products.items():
                        self.CW[key] = np.zeros(np.broadcast_shapes(self.H.shape[:1], wt.shape[:1]) + wt.shape[1:])
                        self.energy_ref[key] = np.zeros(self.CW[key].shape[0])
                else:
                    self.C, self.H_ref = np.zeros_like(self.H), np.zeros_like(self.H)
                self.total_ref = np.zeros_like(self.total)
            cap = self.sampling.cap(self.spec.cols, samples, self.dim)
            for number, (piece, piece_ref) in enumerate(_inputs(self.spec, self.depth, x, x_ref)):
                rng = self.sampling.stream(self.source, batch, number) if cap is not None else None
                pieces = blocks(self.spec, piece, max_bytes, self._drawing(cap, rng))  # draws now
                taken = self.draws[-1]
                refs = blocks(self.spec, piece_ref, max_bytes, self._same(taken)) if piece_ref is not None else None
                weight = taken.weight
                self.rows += taken.rows
                self.used += taken.used
                for block in pieces:
                    self.total += scaled(_column_sums(block), weight)
                    if self.H is not None:
                        self.H += scaled(np.matmul(block.transpose(0, 2, 1), block), weight)  # sqnorm: its diagonal
                    else:
                        self.sqnorm += scaled(np.einsum("grc,grc->gc", block, block), weight)
                    if refs is not None:
                        self._add_reference(block, next(refs), weight)
            self._measure_dimension()
        except _Mismatch as exc:
            self.failed = f"{exc}: not captured"
            log.warning("layer '%s' (%s '%s'): %s", self.spec.key, self.spec.capture_op, self.spec.node, self.failed)

    def _measure_dimension(self) -> None:
        """After the first batch whose rows were capped, the layer's damped dimension (the largest
        of its groups'), which sizes its later batches (:mod:`onnxprune.row_sampling`, "Damped
        dimension"). Not measured where it cannot lower the cap (``k · cols`` at the floor)."""
        sampling = self.sampling
        if self.dim is not None or self.H is None or not sampling.by_dimension:
            return
        if not any(d.chosen is not None for d in self.draws):
            return
        cols = self.spec.cols
        if sampling.cap(cols, 1, dim=1) == sampling.cap(cols, 1):  # the floor already: no dimension lowers it
            return
        dim = max(statistical_dimension(h, sampling.damp or 0.0) for h in self.H)
        self.dim = min(cols, max(1, math.ceil(dim)))
        log.debug("layer '%s': damped dimension %d of %d columns", self.spec.key, self.dim, cols)

    def _prepared(self, x: np.ndarray, given: Mapping[str, np.ndarray] | None) -> np.ndarray:
        """The layer's input made by its spec's ``prepare`` (``x`` itself without one)."""
        spec = self.spec
        if spec.prepare is None:
            return x
        reads = [given.get(name) if given is not None and name else None for name in spec.reads]
        try:
            return spec.prepare(x, reads)
        except ValueError as exc:
            raise _Mismatch(str(exc)) from exc

    def _drawing(self, cap: int | None, rng: np.random.Generator | None) -> _Choose:
        """Draw the rows of a piece (:func:`onnxprune.row_sampling.draw`), kept in ``draws``."""

        def choose(rows: int) -> np.ndarray | None:
            self.draws.append(draw(rows, cap, rng))
            return self.draws[-1].chosen

        return choose

    @staticmethod
    def _same(taken: Draw) -> _Choose:
        """The reference model's rows: those drawn for the current model's (the same count)."""

        def choose(rows: int) -> np.ndarray | None:
            if rows != taken.rows:
                raise _Mismatch(f"the reference model's input has {rows} rows, not {taken.rows}")
            return taken.chosen

        return choose

    def _add_reference(self, block: np.ndarray, ref: np.ndarray, weight: float) -> None:
        if ref.shape != block.shape:
            raise _Mismatch(f"the reference model's input has shape {ref.shape[1:]}, not {block.shape[1:]}")
        if self.H is None or self.total_ref is None:
            return
        for key, wt in self.products.items():
            if wt.dtype != ref.dtype:  # the products in the activation's precision, as H's
                wt = self.products[key] = wt.astype(ref.dtype)
            y = np.matmul(ref, wt)  # Y_d = X_d Wᵀ [groups, rows, out]
            self.CW[key] += scaled(np.matmul(block.transpose(0, 2, 1), y), weight)
            self.energy_ref[key] += weight * np.square(y).sum(axis=(1, 2), dtype=np.float64)
        if self.C is not None and self.H_ref is not None:
            self.C += scaled(np.matmul(block.transpose(0, 2, 1), ref), weight)
            self.H_ref += scaled(np.matmul(ref.transpose(0, 2, 1), ref), weight)
        self.total_ref += scaled(_column_sums(ref), weight)

    def stats(self) -> LayerStats:
        if self.failed is not None:
            return LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=self.failed)
        mean = self.total / self.rows if self.rows else np.zeros_like(self.total)
        if self.H is not None:
            self.sqnorm = np.diagonal(self.H, axis1=1, axis2=2).copy()
        mean_ref = self.total_ref / max(self.rows, 1) if self.total_ref is not None else None
        for array in (
            self.H,
            mean,
            self.sqnorm,
            self.C,
            self.H_ref,
            mean_ref,
            *self.CW.values(),
            *self.energy_ref.values(),
        ):
            if array is not None:
                array.flags.writeable = False
        return LayerStats(
            rows=self.rows,
            H=self.H,
            mean=mean,
            sqnorm=self.sqnorm,
            skipped=self.skipped,
            C=self.C,
            H_ref=self.H_ref,
            mean_ref=mean_ref,
            rows_used=self.used,
        )


class _Residual:
    """:class:`ResidualStats` of one layer whose output is summed with ``r`` (``spec.residual``;
    module docstring), on the layer's rows (Gemm and MatMul: ``x`` as ``[rows, cols]``, ``r`` as
    ``[rows, width]``). A batch where ``r`` does not have one row of ``width`` per row of ``x``,
    or is not finite, ends the accumulation (no residual terms)."""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.cross = np.zeros((spec.cols, spec.width))
        self.cross_ref = np.zeros((spec.cols, spec.width))
        self.total = np.zeros(spec.width)
        self.energy = 0.0
        self.rows = 0
        self.failed = spec.capture_op not in ("Gemm", "MatMul") or spec.groups != 1 or spec.prepare is not None

    def _rows(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.spec.trans_a else x).reshape(-1, self.spec.cols)

    def add(
        self, given: Mapping[str, np.ndarray], given_ref: Mapping[str, np.ndarray], drawn: Sequence[Draw] = ()
    ) -> None:
        """Add a batch; ``drawn``: the layer's draw of that batch (its one piece), whose rows and
        weight the residual terms take too (none: every row)."""
        spec = self.spec
        names = (spec.activation, spec.residual)
        if self.failed or any(given.get(n) is None or given_ref.get(n) is None for n in names):
            self.failed = True
            return
        x, x_ref = self._rows(given[spec.activation]), self._rows(given_ref[spec.activation])
        r, r_ref = np.asarray(given[spec.residual]), np.asarray(given_ref[spec.residual])
        taken = drawn[0] if len(drawn) == 1 else Draw(len(x))
        if r.shape != r_ref.shape or x.shape != x_ref.shape or r.size != len(x) * spec.width or taken.rows != len(x):
            self.failed = True
            return
        r, r_ref = r.reshape(len(x), spec.width), r_ref.reshape(len(x), spec.width)
        weight = taken.weight
        if taken.chosen is not None:
            x, x_ref, r, r_ref = x[taken.chosen], x_ref[taken.chosen], r[taken.chosen], r_ref[taken.chosen]
        diff = r_ref.astype(np.float64) - r.astype(np.float64)
        if not np.isfinite(diff).all():
            self.failed = True
            return
        dtype = product_dtype(x)
        for start in range(0, len(x), BLOCK_ROWS):
            block = slice(start, start + BLOCK_ROWS)
            d = diff[block].astype(dtype)
            self.cross += scaled(x[block].astype(dtype, copy=False).T @ d, weight)
            self.cross_ref += scaled(x_ref[block].astype(dtype, copy=False).T @ d, weight)
        self.total += scaled(diff.sum(axis=0), weight)
        self.energy += weight * float(np.vdot(diff, diff))
        self.rows += taken.rows

    def stats(self) -> ResidualStats | None:
        if self.failed or self.rows == 0:
            return None
        return ResidualStats(self.cross, self.cross_ref, self.energy, self.total / self.rows)


# ---------------------------------------------------------------------------------------
# The run


def capture(
    model: ModelProto | bytes | str | os.PathLike[str],
    specs: Sequence[LayerSpec],
    batches: Iterable[dict[str, np.ndarray]],
    *,
    max_cols: int = MAX_COLS,
    max_bytes: int = MAX_BYTES,
    progress: Callable[[int], None] | None = None,
    reference: ModelProto | bytes | Frontier | None = None,
    sampling: RowSampling = ALL_ROWS,
    frontier: Frontier | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
) -> dict[str, LayerStats]:
    """Input statistics of every layer in ``specs`` over ``batches`` (see module docstring).

    ``reference``: a model with the same graph (the dense model) whose inputs to the same
    layers give ``C``, ``H_ref`` and ``mean_ref``, or a :class:`Frontier` of that model made
    ``frozen`` (its main-graph values are then read beyond the last capture's, as ``frontier``
    reads the model's; body values are still read by a session of their own).
    ``sampling``: how many rows of each batch the sums use (:mod:`onnxprune.row_sampling`;
    default every row); ``rows`` counts every row, ``rows_used`` those the sums use.
    ``frontier``: where the previous capture on this model stopped (:mod:`onnxprune.frontier`):
    the main-graph values are then read by running only the nodes beyond it, and the frontier
    grows by this capture's (``model`` must be the frontier's, a :class:`ModelProto`).
    ``weights``: spec key to the layer's weight as the solvers read it, ``[groups, out, cols]``
    (one group where the weight has several: the input every group shares); with a reference,
    those layers get ``CW`` and ``energy_ref`` instead of ``C`` and ``H_ref`` (module docstring).

    ``batches`` are feed dicts (input name to array), e.g. ``Dataset.batches(b)``; they are
    read one at a time. ``progress(n)`` is called after each batch with its number of
    samples. Returns one :class:`LayerStats` per spec key; a layer whose activation cannot be
    read (not a value of the main graph or of the body at ``spec.scope``, or a body value that
    :mod:`onnxprune.graph.expose` refuses), or whose input shape does not fit its spec, is
    returned skipped. A layer inside a body that never ran on the data (a branch not taken) has
    ``rows == 0`` and zero sums.

    Raises :class:`OptionError` for invalid specs or caps, :class:`DataError` for no batches,
    a batch the model cannot run, or NaN/inf at a layer's input, and
    :class:`UnsupportedModelError` when onnxruntime cannot load the model.
    """
    if max_cols < 1 or max_bytes < 1:
        raise OptionError(f"capture caps must be positive (max_cols={max_cols}, max_bytes={max_bytes})")
    _check_specs(specs)
    proto = _as_model(model)
    if frontier is not None and frontier.model is not proto:
        raise OptionError("capture: the frontier given belongs to another model (pass the frontier's ModelProto)")
    results: dict[str, LayerStats] = {}
    values = _main_graph_values(proto)
    exposure = expose.plan(
        proto, [expose.BodyValue(s.scope, s.activation, rank=_input_rank(s)) for s in specs if s.scope]
    )
    accumulators: dict[tuple, _Accumulator] = {}
    layer_of: dict[str, tuple] = {}
    residuals: dict[str, _Residual] = {}
    for spec in specs:
        if spec.scope and spec.reads:
            reason = f"its input is made of several tensors of '{spec.node}', read in the main graph only"
            results[spec.key] = LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=reason)
            continue
        if spec.scope:
            body = expose.BodyValue(spec.scope, spec.activation)
            if body in exposure.refused:
                reason = f"its input '{spec.activation}' in '{spec.scope}' cannot be read: {exposure.refused[body]}"
                results[spec.key] = LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=reason)
                continue
            exposed = exposure.exposed[body]
            signature = (spec.scope, *_signature(spec))
            accumulators.setdefault(
                signature,
                _Accumulator(spec, max_cols=max_cols, source=exposed.name, depth=exposed.depth, sampling=sampling),
            )
            layer_of[spec.key] = signature
            continue
        where = values.get(spec.activation, "missing")
        if where != "value":
            reason = (
                f"its input '{spec.activation}' is a constant, not an activation: nothing to capture"
                if where == "constant"
                else f"its input '{spec.activation}' is not a value of the main graph: cannot be read"
            )
            results[spec.key] = LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=reason)
            continue
        missing = next((name for name in spec.reads if name and name not in values), None)
        if missing is not None:
            reason = f"'{missing}', which its input is made of, is not a value or tensor of the main graph"
            results[spec.key] = LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=reason)
            continue
        signature = _signature(spec)
        accumulators.setdefault(signature, _Accumulator(spec, max_cols=max_cols, sampling=sampling))
        layer_of[spec.key] = signature
        if reference is not None and spec.residual and values.get(spec.residual) == "value":
            residuals[spec.key] = _Residual(spec)
    if reference is not None and weights:
        _choose_products(accumulators, layer_of, weights)
    reader = _Reader(
        proto,
        model,
        reference,
        list(accumulators.values()),
        exposure,
        [r.spec.residual for r in residuals.values()],
        frontier=frontier,
    )
    samples = 0
    for index, feeds in enumerate(batches):
        count = _samples(feeds)
        if reader.names:
            activations, ref_activations = reader.read(feeds, index)
            for acc in accumulators.values():
                if acc.source not in activations:  # a body layer given up (see _Reader)
                    continue
                x = activations[acc.source]
                if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                    raise DataError(
                        f"calibration data gives NaN/inf at the input of node '{acc.spec.node}' "
                        f"('{acc.spec.activation}') in batch {index}: check the data's scale"
                    )
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
                    acc.add(
                        x,
                        max_bytes,
                        ref_activations.get(acc.source),
                        activations,
                        ref_activations,
                        batch=index,
                        samples=count,
                    )
            for key, res in residuals.items():
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
                    res.add(activations, ref_activations, accumulators[layer_of[key]].draws)
        samples += count
        if progress is not None:
            progress(count)
    if samples == 0:
        raise DataError("no calibration samples: give at least one batch of data")
    reader.finish()
    shared = {signature: acc.stats() for signature, acc in accumulators.items()}
    for signature, stats in shared.items():
        _refuse_overflow(accumulators[signature].spec, stats)
    for spec in specs:
        if spec.key in layer_of:
            stats = shared[layer_of[spec.key]]
            given = (weights or {}).get(spec.key)
            products = None if given is None else accumulators[layer_of[spec.key]].reference_products(spec.key, given)
            results[spec.key] = LayerStats(
                stats.rows,
                stats.H,
                stats.mean,
                stats.sqnorm,
                stats.skipped,
                C=stats.C if products is None else None,
                H_ref=stats.H_ref if products is None else None,
                mean_ref=stats.mean_ref,
                rows_used=stats.rows_used,
                CW=None if products is None else products[0],
                energy_ref=None if products is None else products[1],
            )
            if spec.key in residuals and stats.mean_ref is not None:  # the reference ran
                results[spec.key].residual = residuals[spec.key].stats()
                _refuse_overflow(spec, results[spec.key])
    log.debug("captured %d layer(s) over %d samples (%d distinct inputs)", len(layer_of), samples, len(accumulators))
    return {spec.key: results[spec.key] for spec in specs}


def _choose_products(
    accumulators: Mapping[tuple, _Accumulator], layer_of: Mapping[str, tuple], weights: Mapping[str, np.ndarray]
) -> None:
    """Have each input whose layers all have their weight given accumulate their ``CW`` and
    ``energy_ref`` when that costs fewer operations than ``C`` and ``H_ref`` (module docstring):
    ``Σ_layers 4 · groups · out · cols`` against ``3 · groups · cols²`` per row."""
    for signature, acc in accumulators.items():
        keys = [key for key, where in layer_of.items() if where == signature]
        if not keys or any(key not in weights for key in keys):
            continue
        spec = acc.spec
        shapes = [np.shape(weights[key]) for key in keys]
        if any(len(s) != 3 or s[2] != spec.cols or spec.groups not in (1, s[0]) for s in shapes):
            log.debug(
                "capture: the weights of %s do not fit their input's %d group(s) of %d columns",
                keys,
                spec.groups,
                spec.cols,
            )
            continue  # C and H_ref, as without them
        products = sum(4 * groups * out * spec.cols for groups, out, _ in shapes)
        if products < 3 * spec.groups * spec.cols * spec.cols:
            acc.use_products({key: weights[key] for key in keys})


class _Reader:
    """The sessions that read every accumulator's input (and the reference model's).

    With a :class:`Frontier` (of the model, and as the reference, of the dense model), the
    main-graph values are read by a segment that runs only the nodes beyond the last capture's.
    Body values are read from a copy with them exposed (:mod:`onnxprune.graph.expose`). Should
    onnxruntime refuse that copy, or fail on it where the model itself runs (a value whose shape
    changes from one iteration to the next cannot be a Loop's scan output), the body layers are
    given up, each with the reason, and the others read without them; a batch the model itself
    cannot run is a :class:`DataError` as always.
    """

    def __init__(
        self,
        proto: ModelProto,
        model: object,
        reference: ModelProto | bytes | Frontier | None,
        accumulators: list[_Accumulator],
        exposure: expose.Exposure,
        extra: Sequence[str] = (),
        *,
        frontier: Frontier | None = None,
    ) -> None:
        self.proto, self.model, self.reference = proto, model, reference
        self.accumulators, self.exposure, self.extra = accumulators, exposure, list(extra)
        self.frontier = frontier
        self.segment: Segment | None = None
        self.ref_segment: Segment | None = None
        self.batches = 0  # read so far
        self.bodies = any(acc.spec.scope for acc in accumulators)
        try:
            self._open()
        except UnsupportedModelError as exc:
            if not self.bodies:
                raise
            self._give_up(f"onnxruntime refuses the model with them exposed ({exc})")

    def _open(self, *, segment: bool = True) -> None:
        live = [acc for acc in self.accumulators if self.bodies or not acc.spec.scope]
        values = _main_graph_values(self.proto)
        reads = [name for acc in live for name in acc.spec.reads if name]
        stored = list(dict.fromkeys(name for name in reads if values.get(name) == "constant"))
        self.names = list(
            dict.fromkeys([*(acc.source for acc in live), *(n for n in reads if n not in stored), *self.extra])
        )
        exposure = self.exposure if self.bodies else None
        segment = segment and exposure is None and bool(self.names)  # main-graph values only
        self.sess, self.segment = None, None
        if self.frontier is not None and segment:
            self.segment = self.frontier.begin(self.names)  # the nodes beyond the last capture only
        elif self.names:
            self.sess = _session(self.proto, self.model, self.names, exposure)
        self.stored = _stored_values(self.proto, stored)
        self.ref_sess, self.ref_segment, self.ref_stored = None, None, {}
        if isinstance(self.reference, Frontier) and segment:
            self.ref_segment = self.reference.begin(self.names)  # the dense model beyond its last capture
            self.ref_stored = _stored_values(self.reference.model, stored)
        elif self.reference is not None and self.names:
            given = self.reference.model if isinstance(self.reference, Frontier) else self.reference
            reference = _as_model(given)
            self.ref_sess = _session(reference, given, self.names, exposure)
            self.ref_stored = _stored_values(reference, stored)

    def _give_up(self, why: str) -> None:
        for acc in self.accumulators:
            if acc.spec.scope and acc.failed is None:
                acc.failed = f"its input '{acc.spec.activation}' in '{acc.spec.scope}' could not be read: {why}"
                log.warning("layer '%s' (%s '%s'): %s", acc.spec.key, acc.spec.capture_op, acc.spec.node, acc.failed)
        self.bodies = False
        # a segment serves a capture from its first batch: given up later, the capture ends on a
        # session (a frontier grown from a later batch on would hold the wrong batches)
        self._open(segment=self.batches == 0)

    def read(self, feeds: dict[str, np.ndarray], index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The inputs of the live layers on batch ``index`` (and the stored tensors their inputs are
        made of), and the reference model's (or {})."""
        try:
            if self.segment is not None:
                activations = self.segment.read(feeds, index)
            elif self.sess is not None:
                activations = runtime.run_batch(self.sess, self.names, feeds, index)
            else:
                activations = {}
            if self.ref_segment is not None:
                ref = self.ref_segment.read(feeds, index)
            else:
                ref = runtime.run_batch(self.ref_sess, self.names, feeds, index) if self.ref_sess is not None else {}
            activations.update(self.stored)
            if ref:
                ref.update(self.ref_stored)
            self.batches += 1
        except DataError as exc:
            if not self.bodies:
                raise
            cause = runtime.ort_message(exc.__cause__) if exc.__cause__ is not None else str(exc)
            self._give_up(f"onnxruntime fails on the model with them exposed ({cause})")
            return self.read(feeds, index)
        return activations, ref

    def finish(self) -> None:
        """After the last batch: the frontier takes this capture's region."""
        for segment in (self.segment, self.ref_segment):
            if segment is not None:
                segment.finish()


def _refuse_overflow(spec: LayerSpec, stats: LayerStats) -> None:
    """:class:`DataError` when a sum overflowed: finite activations so large that their
    products do not fit the float range (a model whose weights or data are far out of scale)."""
    sums = [stats.H, stats.mean, stats.sqnorm, stats.C, stats.H_ref, stats.mean_ref, stats.CW, stats.energy_ref]
    if stats.residual is not None:
        residual = stats.residual
        sums += [residual.cross, residual.cross_ref, np.asarray(residual.energy), residual.mean]
    if all(a is None or np.isfinite(a).all() for a in sums):
        return
    raise DataError(
        f"the calibration statistics of node '{spec.node}' overflow: its input ('{spec.activation}') is "
        "finite but too large to square in floating point; check the data's scale and the model's weights"
    )


def _check_specs(specs: Sequence[LayerSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.key in seen:
            raise OptionError(f"layer key '{spec.key}' is given twice: capture takes each layer once")
        seen.add(spec.key)
        handler = _handler(spec)
        if handler is None:
            raise OptionError(
                f"layer '{spec.key}' has capture op {spec.capture_op!r}; capture handles {', '.join(HANDLERS)}"
            )
        if spec.cols < 1 or spec.groups < 1:
            raise OptionError(f"layer '{spec.key}': cols ({spec.cols}) and groups ({spec.groups}) must be >= 1")
        handler.check(spec)


def _as_model(model: ModelProto | bytes | str | os.PathLike[str]) -> ModelProto:
    if isinstance(model, ModelProto):
        return model
    if isinstance(model, bytes):
        try:
            return onnx.load_from_string(model)
        except Exception as exc:  # protobuf raises DecodeError or RuntimeError depending on build
            raise UnsupportedModelError(f"the model bytes do not parse as ONNX ({type(exc).__name__})") from exc
    return load_model(Path(model))


def _input_rank(spec: LayerSpec) -> int | None:
    """The rank of the layer's input where its op fixes it (Conv ``[N, C, *spatial]``, Gemm ``[M, K]``)."""
    return 2 + len(spec.kernel) if spec.capture_op == "Conv" else 2 if spec.capture_op == "Gemm" else None


def _stored_values(model: ModelProto, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of the main-graph initializers ``names``."""
    wanted = set(names)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}


def _main_graph_values(model: ModelProto) -> dict[str, str]:
    """Main-graph names: ``"value"`` for graph inputs and node outputs, ``"constant"`` for initializers."""
    graph = model.graph
    found = {init.name: "constant" for init in graph.initializer}
    found.update({i.name: "value" for i in graph.input})
    found.update({out: "value" for node in graph.node for out in node.output if out})
    return found


def _truncated(proto: ModelProto, names: Sequence[str], exposure: expose.Exposure | None = None) -> SessionSource:
    """The part of the model that computes ``names``, with them as its only outputs.

    onnxruntime runs every node of a graph whatever outputs are asked for, so a layer near
    the input would otherwise pay for the whole model on every calibration batch. Values of
    bodies that ``exposure`` makes outputs of their main-graph owner nodes are edited into the
    copied nodes (the model is not changed).
    """
    graph = proto.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    if exposure is not None:
        producer.update({name: producer[owner] for name, owner in exposure.owners.items() if owner in producer})
    keep: set[int] = set()
    stack = [name for name in names if name in producer]
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in keep:
            continue
        keep.add(index)
        stack.extend(node_reads(graph.node[index]))
    used = {name for i in keep for name in node_reads(graph.node[i])}
    out = ModelProto()
    copy_fields(proto, out, skip=("graph",))
    target = out.graph
    target.name = graph.name
    target.input.extend(graph.input)
    target.node.extend(graph.node[i] for i in sorted(keep))
    shared = add_initializers(out, [t for t in graph.initializer if t.name in used])
    target.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in used)
    target.value_info.extend(v for v in graph.value_info if v.name in used or v.name in names)
    if exposure is not None:
        exposure.apply(target)
    typed = {v.name: v for v in (*graph.value_info, *graph.output)}
    for name in names:
        if name not in producer:
            continue
        if name in typed:
            target.output.append(typed[name])
        else:
            target.output.add(name=name)
    return SessionSource(out.SerializeToString(), shared)


def _session(
    proto: ModelProto, model: object, names: Sequence[str], exposure: expose.Exposure | None = None
) -> ort.InferenceSession:
    """A CPU session, fully optimized, of the part of the model that computes ``names`` (body
    values made main-graph outputs by ``exposure``)."""
    inputs = {i.name for i in proto.graph.input}
    wanted = [name for name in names if name not in inputs]
    if not wanted:
        source = model if isinstance(model, bytes) else proto.SerializeToString()
        return runtime.session(source, optimize=True)
    # full optimization: several times faster than unoptimized, and no value read is fused away
    return capture_session(_truncated(proto, wanted, exposure))


def _samples(feeds: dict[str, np.ndarray]) -> int:
    if not feeds:
        return 0
    first = np.asarray(next(iter(feeds.values())))
    return int(first.shape[0]) if first.ndim else 1


def iter_values(
    model: ModelProto, names: Sequence[str], batches: Iterable[dict[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """The values ``names`` of ``model`` (main-graph tensors), batch by batch as the caller
    asks for them, from one session. Only the part of the model that computes them runs (see
    :func:`capture` for the session and the errors)."""
    wanted = list(dict.fromkeys(names))
    sess = _session(model, model, wanted)
    for index, feeds in enumerate(batches):
        yield runtime.run_batch(sess, wanted, feeds, index)


def sample_bytes(model: ModelProto, names: Sequence[str], probe: dict[str, np.ndarray], count: int) -> float:
    """The bytes of the main-graph values ``names`` per sample, measured on ``probe`` (``count`` samples)."""
    values = next(iter_values(model, names, [probe]))
    return sum(np.asarray(v).nbytes for v in values.values()) / max(1, count)


def read_values(
    model: ModelProto, names: Sequence[str], batches: Iterable[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """:func:`iter_values` on every batch, in order: one dict per batch."""
    return list(iter_values(model, names, batches))
