"""Reverse-mode differentiation of a straight-line program of tensor ops, in numpy.

Block reconstruction (:mod:`onnxprune.reconstruct.block`) fits the kept weights of several
layers at once so that a whole block of the model reproduces its dense output; it needs
the gradient of a loss with respect to those weights through everything in between
(attention, normalisations, activations, reshapes). A block is given as a list of
:class:`Step` (an op name, its attributes as plain Python values, the names it reads and
writes), in the order they run; :func:`forward` evaluates it, keeping every value, and
:func:`backward` walks it in reverse, each op's vector-Jacobian product (VJP) turning the
gradient of its outputs ``ḡ_y = ∂L/∂y`` into the gradients of its inputs
``ḡ_x = (∂y/∂x)ᵀ ḡ_y``, summed where a value is read more than once.

The VJPs, with ``ḡ`` the output gradient and ``unbroadcast`` summing over the axes that
numpy broadcasting added or stretched:

* ``C = A @ B`` (batched, broadcast): ``ḡ_A = ḡ Bᵀ``, ``ḡ_B = Aᵀ ḡ``;
* ``Gemm``: ``Y = α·op(A)·op(B) + β·C``, the same with the transposes and scales;
* ``a + b``, ``a − b``, ``a·b``, ``a / b``: ``ḡ``, ``±ḡ``, ``ḡ·b`` and ``ḡ·a``,
  ``ḡ/b`` and ``−ḡ·a/b²``; ``a^p`` (``p`` not fitted): ``ḡ·p·a^(p−1)``;
* ``√x``: ``ḡ/(2√x)``; ``eˣ``: ``ḡ·eˣ``; ``erf x``: ``ḡ·2/√π·e^(−x²)``; ``tanh x``:
  ``ḡ(1 − y²)``; ``σ(x)``: ``ḡ·y(1 − y)``; ``relu``: ``ḡ·[x > 0]``;
* ``softmax`` along an axis: ``ḡ_x = y ⊙ (ḡ − Σ ḡ ⊙ y)``; ``log softmax``: ``ḡ_x = ḡ − e^y Σ ḡ``;
* ``Conv`` as a product with its patches (:mod:`onnxprune.im2col`'s layout, ``Y_j = W_j P_jᵀ``
  per group): ``ḡ_W = ḡ P``, and ``ḡ_P = Wᵀ ḡ`` summed back onto the input over the kernel taps
  (the adjoint of taking patches); pooling the same way: ``MaxPool`` sends ``ḡ`` to the first
  maximum of each window, ``AveragePool`` spreads ``ḡ / count`` over it; inference
  ``BatchNormalization`` ``y = γ (x − μ) r + β``, ``r = (σ² + ε)^(−½)``: ``ḡ_x = ḡ γ r``,
  ``ḡ_γ = Σ ḡ (x − μ) r``, ``ḡ_β = Σ ḡ`` (the running statistics are not fitted);
* ``LayerNormalization`` over the trailing axes from ``axis``, ``x̂ = (x − μ)·r``,
  ``r = (σ² + ε)^(−½)``, ``y = x̂·γ + β``: ``ḡ_γ = Σ ḡ x̂``, ``ḡ_β = Σ ḡ``, and with
  ``u = ḡ·γ``, ``ḡ_x = r·(u − mean(u) − x̂·mean(u x̂))`` (means over the normalised axes);
* ``GELU`` (exact): ``y = x·Φ(x)``, ``ḡ_x = ḡ·(Φ(x) + x·φ(x))``; the tanh form by its chain;
* reshapes, transposes, (un)squeezes, flatten: the inverse movement of ``ḡ``; concat: the
  slices of ``ḡ``; slice: ``ḡ`` put back where the slice came from, zeros elsewhere;
  ``ReduceMean``/``ReduceSum``: ``ḡ`` broadcast back (divided by the count);
  ``ReduceL2``, ``y = ‖x‖``: ``ḡ·x/y``; ``Expand``: ``ḡ`` summed back to the input's shape;
  ``Where(c, a, b)``: ``ḡ`` where ``c`` / where not.

``erf`` has no numpy function: it is Abramowitz & Stegun's 7.1.26 rational approximation
(absolute error below 1.5·10⁻⁷, about float32's resolution).

Only float inputs are differentiated; an input not on the path from the fitted weights
(shapes, masks, indices) is a constant of the step and gets no gradient. An op outside
:data:`KERNELS` makes the block unsupported (:func:`unsupported`), never a wrong gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.im2col import ConvGeometry, windows


@dataclass(frozen=True)
class Step:
    """One op of a program: ``outputs = op(inputs; attrs)``. An empty input name is an omitted
    optional input."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)


Grads = list[np.ndarray | None]
Forward = Callable[[list[Any], Mapping[str, Any]], list[np.ndarray]]
Backward = Callable[[list[Any], list[np.ndarray], list[np.ndarray | None], Mapping[str, Any], list[bool]], Grads]


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added to or stretched in ``shape``."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def erf(x: np.ndarray) -> np.ndarray:
    """erf(x), Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    y = 1.0 - poly * np.exp(-a * a)
    return (np.sign(x) * y).astype(x.dtype, copy=False)


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(np.shape(value))


# ---------------------------------------------------------------- elementwise


def _binary(fn: Callable[[Any, Any], np.ndarray]) -> Forward:
    return lambda x, a: [np.asarray(fn(x[0], x[1]))]


def _add_back(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [unbroadcast(g[0], _shape_of(x[0])), unbroadcast(g[0], _shape_of(x[1]))]


def _sub_back(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [unbroadcast(g[0], _shape_of(x[0])), unbroadcast(-g[0], _shape_of(x[1]))]


def _mul_back(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [
        unbroadcast(g[0] * x[1], _shape_of(x[0])) if need[0] else None,
        unbroadcast(g[0] * x[0], _shape_of(x[1])) if need[1] else None,
    ]


def _div_back(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [
        unbroadcast(g[0] / x[1], _shape_of(x[0])) if need[0] else None,
        unbroadcast(-g[0] * y[0] / x[1], _shape_of(x[1])) if need[1] else None,
    ]


def _pow_back(x, y, g, a, need):  # noqa: ANN001, ANN202
    if need[1]:
        raise NotImplementedError("Pow with a fitted exponent")
    p = np.asarray(x[1], dtype=np.asarray(x[0]).dtype)
    return [unbroadcast(g[0] * p * np.power(x[0], p - 1), _shape_of(x[0])), None]


def _unary(fn: Callable[[np.ndarray], np.ndarray], back: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]):  # noqa: ANN202
    def forward(x, a):  # noqa: ANN001, ANN202
        return [fn(x[0])]

    def backward(x, y, g, a, need):  # noqa: ANN001, ANN202
        return [back(x[0], y[0], g[0])]

    return forward, backward


def _erf_grad(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g * (2.0 / math.sqrt(math.pi)) * np.exp(-x * x).astype(x.dtype, copy=False)


def _gelu_forward(x, a):  # noqa: ANN001, ANN202
    v = x[0]
    if a.get("approximate", "none") == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)
        return [0.5 * v * (1.0 + np.tanh(inner))]
    return [0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))]


def _gelu_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    v = x[0]
    if a.get("approximate", "none") == "tanh":
        c = math.sqrt(2.0 / math.pi)
        t = np.tanh(c * (v + 0.044715 * v**3))
        d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * v * v)
        return [g[0] * d]
    cdf = 0.5 * (1.0 + erf(v / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)
    return [g[0] * (cdf + v * pdf)]


def _clip_forward(x, a):  # noqa: ANN001, ANN202
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return [np.clip(x[0], lo, hi)]


def _clip_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [g[0] * (y[0] == x[0])] + [None] * (len(x) - 1)


def _where_forward(x, a):  # noqa: ANN001, ANN202
    return [np.where(x[0], x[1], x[2])]


def _where_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    zero = np.zeros((), dtype=g[0].dtype)
    return [
        None,
        unbroadcast(np.where(x[0], g[0], zero), _shape_of(x[1])) if need[1] else None,
        unbroadcast(np.where(x[0], zero, g[0]), _shape_of(x[2])) if need[2] else None,
    ]


# ---------------------------------------------------------------- products


def _matmul_forward(x, a):  # noqa: ANN001, ANN202
    if np.ndim(x[0]) < 2 or np.ndim(x[1]) < 2:
        raise NotImplementedError("MatMul of a vector")
    if np.ndim(x[1]) == 2:  # activations [..., K] times a matrix [K, N]: one product
        return [(x[0].reshape(-1, x[0].shape[-1]) @ x[1]).reshape(*x[0].shape[:-1], x[1].shape[1])]
    return [np.matmul(x[0], x[1])]


def _matmul_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    if np.ndim(x[1]) == 2:  # Σ over every leading axis at once: ḡ_B = A₂ᵀ ḡ₂ with the rows stacked
        rows = g[0].reshape(-1, g[0].shape[-1])
        return [
            (rows @ x[1].T).reshape(x[0].shape) if need[0] else None,
            x[0].reshape(-1, x[0].shape[-1]).T @ rows if need[1] else None,
        ]
    return [
        unbroadcast(np.matmul(g[0], np.swapaxes(x[1], -1, -2)), _shape_of(x[0])) if need[0] else None,
        unbroadcast(np.matmul(np.swapaxes(x[0], -1, -2), g[0]), _shape_of(x[1])) if need[1] else None,
    ]


def _gemm_forward(x, a):  # noqa: ANN001, ANN202
    left = x[0].T if a.get("transA", 0) else x[0]
    right = x[1].T if a.get("transB", 0) else x[1]
    out = float(a.get("alpha", 1.0)) * (left @ right)
    if len(x) > 2 and x[2] is not None:
        out = out + float(a.get("beta", 1.0)) * x[2]
    return [out.astype(np.result_type(x[0], x[1]), copy=False)]


def _gemm_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    alpha = float(a.get("alpha", 1.0))
    ta, tb = a.get("transA", 0), a.get("transB", 0)
    left = x[0].T if ta else x[0]
    right = x[1].T if tb else x[1]
    out: Grads = [None, None, None]
    if need[0]:
        d = alpha * (g[0] @ right.T)
        out[0] = d.T if ta else d
    if need[1]:
        d = alpha * (left.T @ g[0])
        out[1] = d.T if tb else d
    if len(x) > 2 and x[2] is not None and need[2]:
        out[2] = unbroadcast(float(a.get("beta", 1.0)) * g[0], _shape_of(x[2]))
    return out[: len(x)]


# ---------------------------------------------------------------- normalisations


def _softmax_axis(a: Mapping[str, Any], ndim: int) -> int:
    axis = int(a.get("axis", -1))
    if a.get("opset", 13) < 13 and axis % ndim != ndim - 1:
        raise NotImplementedError("Softmax of opset < 13 over several axes")
    return axis


def _softmax_forward(x, a):  # noqa: ANN001, ANN202
    axis = _softmax_axis(a, x[0].ndim)
    e = np.exp(x[0] - x[0].max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


def _softmax_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    axis = _softmax_axis(a, x[0].ndim)
    return [y[0] * (g[0] - (g[0] * y[0]).sum(axis=axis, keepdims=True))]


def _log_softmax_forward(x, a):  # noqa: ANN001, ANN202
    axis = _softmax_axis(a, x[0].ndim)
    shifted = x[0] - x[0].max(axis=axis, keepdims=True)
    return [shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))]


def _log_softmax_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    axis = _softmax_axis(a, x[0].ndim)
    return [g[0] - np.exp(y[0]) * g[0].sum(axis=axis, keepdims=True)]


def _norm_axes(a: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    return tuple(range(int(a.get("axis", -1)) % ndim, ndim))


def _layernorm_forward(x, a):  # noqa: ANN001, ANN202
    v = x[0]
    axes = _norm_axes(a, v.ndim)
    mu = v.mean(axis=axes, keepdims=True)
    centred = v - mu
    r = 1.0 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + float(a.get("epsilon", 1e-5)))
    out = centred * r * x[1]
    if len(x) > 2 and x[2] is not None:
        out = out + x[2]
    return [out.astype(v.dtype, copy=False)]


def _layernorm_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    v = x[0]
    axes = _norm_axes(a, v.ndim)
    mu = v.mean(axis=axes, keepdims=True)
    centred = v - mu
    r = 1.0 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + float(a.get("epsilon", 1e-5)))
    xhat = centred * r
    out: Grads = [None] * len(x)
    lead = tuple(range(v.ndim - len(axes)))
    if need[1]:
        out[1] = unbroadcast((g[0] * xhat).sum(axis=lead), _shape_of(x[1]))
    if len(x) > 2 and x[2] is not None and need[2]:
        out[2] = unbroadcast(g[0].sum(axis=lead), _shape_of(x[2]))
    if need[0]:
        u = g[0] * x[1]
        out[0] = r * (u - u.mean(axis=axes, keepdims=True) - xhat * (u * xhat).mean(axis=axes, keepdims=True))
    return out


def _reduce_axes(x: list[Any], a: Mapping[str, Any], ndim: int) -> tuple[int, ...] | None:
    axes = x[1] if len(x) > 1 and x[1] is not None else a.get("axes")
    if axes is None or len(np.atleast_1d(axes)) == 0:
        if a.get("noop_with_empty_axes", 0):
            raise NotImplementedError("a reduction with noop_with_empty_axes")
        return None
    return tuple(int(i) % ndim for i in np.atleast_1d(axes))


def _reduce(kind: str):  # noqa: ANN202
    def forward(x, a):  # noqa: ANN001, ANN202
        axes = _reduce_axes(x, a, x[0].ndim)
        keep = bool(a.get("keepdims", 1))
        if kind == "l2":
            return [np.sqrt(np.sum(x[0] * x[0], axis=axes, keepdims=keep))]
        fn = np.mean if kind == "mean" else np.sum
        return [fn(x[0], axis=axes, keepdims=keep)]

    def backward(x, y, g, a, need):  # noqa: ANN001, ANN202
        v = x[0]
        axes = _reduce_axes(x, a, v.ndim) or tuple(range(v.ndim))
        grad = g[0] if a.get("keepdims", 1) else np.expand_dims(g[0], axes)
        if kind == "mean":
            grad = grad / math.prod(v.shape[i] for i in axes)
        elif kind == "l2":  # ∂‖x‖/∂x = x / ‖x‖ (0 where ‖x‖ = 0)
            norm = y[0] if a.get("keepdims", 1) else np.expand_dims(y[0], axes)
            safe = np.where(norm > 0, norm, 1)
            return [grad * v / safe * (norm > 0)] + [None] * (len(x) - 1)
        return [np.broadcast_to(grad, v.shape)] + [None] * (len(x) - 1)

    return forward, backward


# ---------------------------------------------------------------- movement


def _reshape_forward(x, a):  # noqa: ANN001, ANN202
    shape = [int(s) for s in np.asarray(x[1]).reshape(-1)]
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x[0].reshape(shape)]


def _back_to_shape(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [g[0].reshape(x[0].shape)] + [None] * (len(x) - 1)


def _transpose_forward(x, a):  # noqa: ANN001, ANN202
    perm = a.get("perm")
    return [np.transpose(x[0], None if perm is None else tuple(perm))]


def _transpose_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    perm = a.get("perm")
    return [np.transpose(g[0], None if perm is None else tuple(np.argsort(perm)))]


def _axes(x: list[Any], a: Mapping[str, Any]) -> list[int]:
    axes = x[1] if len(x) > 1 and x[1] is not None else a.get("axes")
    return [] if axes is None else [int(i) for i in np.atleast_1d(axes)]


def _unsqueeze_forward(x, a):  # noqa: ANN001, ANN202
    rank = x[0].ndim + len(_axes(x, a))
    return [np.expand_dims(x[0], tuple(i % rank for i in _axes(x, a)))]


def _squeeze_forward(x, a):  # noqa: ANN001, ANN202
    axes = _axes(x, a)
    return [np.squeeze(x[0], axis=tuple(i % x[0].ndim for i in axes) if axes else None)]


def _flatten_forward(x, a):  # noqa: ANN001, ANN202
    axis = int(a.get("axis", 1)) % (x[0].ndim + 1) if x[0].ndim else 0
    return [x[0].reshape(math.prod(x[0].shape[:axis]), -1)]


def _slices(x: list[Any], a: Mapping[str, Any]) -> tuple[slice, ...]:
    """Slice's selection: ``starts``, ``ends``, ``axes``, ``steps`` from its inputs (opset 10 on)
    or attributes; numpy's slicing clamps out-of-range bounds as the operator does."""

    def part(index: int, key: str) -> list[int] | None:
        value = x[index] if len(x) > index and x[index] is not None else a.get(key)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    starts, ends = part(1, "starts"), part(2, "ends")
    axes = part(3, "axes") or list(range(len(starts or [])))
    steps = part(4, "steps") or [1] * len(axes)
    index = [slice(None)] * np.ndim(x[0])
    for start, end, axis, step in zip(starts or [], ends or [], axes, steps, strict=False):
        index[axis % np.ndim(x[0])] = slice(start, end, step)
    return tuple(index)


def _slice_forward(x, a):  # noqa: ANN001, ANN202
    return [np.asarray(x[0])[_slices(x, a)]]


def _slice_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    grad = np.zeros(np.shape(x[0]), dtype=g[0].dtype)
    grad[_slices(x, a)] = g[0]
    return [grad] + [None] * (len(x) - 1)


def _concat_forward(x, a):  # noqa: ANN001, ANN202
    return [np.concatenate(x, axis=int(a["axis"]))]


def _concat_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    axis = int(a["axis"]) % y[0].ndim
    cuts = np.cumsum([np.shape(v)[axis] for v in x])[:-1]
    return list(np.split(g[0], cuts, axis=axis))


def _expand_forward(x, a):  # noqa: ANN001, ANN202
    shape = tuple(int(s) for s in np.asarray(x[1]).reshape(-1))
    return [np.array(np.broadcast_to(x[0], np.broadcast_shapes(np.shape(x[0]), shape)))]


def _expand_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [unbroadcast(g[0], _shape_of(x[0])), None]


def _geometry(a: Mapping[str, Any], weight_shape: tuple[int, ...], kernel: Sequence[int] | None = None) -> ConvGeometry:
    rank = len(kernel) if kernel is not None else len(weight_shape) - 2
    kernel = tuple(kernel) if kernel is not None else tuple(weight_shape[2:])
    return ConvGeometry(
        groups=int(a.get("group", 1)),
        kernel=tuple(int(k) for k in kernel),
        strides=tuple(int(s) for s in a.get("strides") or (1,) * rank),
        pads=tuple(int(p) for p in a.get("pads") or (0,) * (2 * rank)),
        dilations=tuple(int(d) for d in a.get("dilations") or (1,) * rank),
        auto_pad=str(a.get("auto_pad", "NOTSET")),
    )


def _taps(x: np.ndarray, geometry: ConvGeometry, fill: float = 0.0) -> np.ndarray:
    """``x``'s windows with the kernel taps on one last axis: ``[N, C, *out, ∏k]``."""
    win = windows(x, geometry, fill)
    return win.reshape(*win.shape[: 2 + len(geometry.kernel)], -1)


def _col2im(grad: np.ndarray, shape: tuple[int, ...], geometry: ConvGeometry) -> np.ndarray:
    """The adjoint of :func:`onnxprune.im2col.windows`: ``grad`` [N, C, *out, *k] summed back onto ``x``'s shape."""
    rank = len(geometry.kernel)
    pads = geometry.resolved_pads(shape[2:])
    padded = [shape[2 + i] + pads[i] + pads[i + rank] for i in range(rank)]
    out = grad.shape[2 : 2 + rank]
    total = np.zeros((*shape[:2], *padded), dtype=grad.dtype)
    for tap in np.ndindex(*geometry.kernel):
        where = tuple(
            slice(t * d, t * d + s * (n - 1) + 1, s)
            for t, d, s, n in zip(tap, geometry.dilations, geometry.strides, out, strict=True)
        )
        total[(slice(None), slice(None), *where)] += grad[(Ellipsis, *tap)]
    crop = tuple(slice(pads[i], pads[i] + shape[2 + i]) for i in range(rank))
    return total[(slice(None), slice(None), *crop)]


def _conv_parts(x, a):  # noqa: ANN001, ANN202
    """The patches grouped [N, g, C/g, O, K] and the weight grouped [g, M/g, C/g, K]."""
    data, weight = x[0], x[1]
    geometry = _geometry(a, weight.shape)
    groups = geometry.groups
    win = windows(data, geometry)
    n, c = data.shape[:2]
    out = win.shape[2 : 2 + len(geometry.kernel)]
    patches = win.reshape(n, groups, c // groups, math.prod(out), math.prod(geometry.kernel))
    kernel = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
    return geometry, patches, kernel, out


def _conv_forward(x, a):  # noqa: ANN001, ANN202
    _, patches, kernel, out = _conv_parts(x, a)
    y = np.einsum("ngcok,gmck->ngmo", patches, kernel, optimize=True)
    y = y.reshape(y.shape[0], -1, *out)
    if len(x) > 2 and x[2] is not None:
        y = y + x[2].reshape(1, -1, *([1] * len(out)))
    return [y.astype(x[0].dtype, copy=False)]


def _conv_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    geometry, patches, kernel, out = _conv_parts(x, a)
    groups = geometry.groups
    grad = g[0].reshape(g[0].shape[0], groups, -1, math.prod(out))
    result: Grads = [None] * len(x)
    if need[0]:
        dp = np.einsum("ngmo,gmck->ngcok", grad, kernel, optimize=True)
        dp = dp.reshape(x[0].shape[0], x[0].shape[1], *out, *geometry.kernel)
        result[0] = _col2im(dp, x[0].shape, geometry)
    if need[1]:
        result[1] = np.einsum("ngmo,ngcok->gmck", grad, patches, optimize=True).reshape(x[1].shape)
    if len(x) > 2 and x[2] is not None and need[2]:
        result[2] = g[0].sum(axis=(0, *range(2, g[0].ndim)))
    return result


def _pool_geometry(x, a):  # noqa: ANN001, ANN202
    if int(a.get("ceil_mode", 0)):
        raise NotImplementedError("pooling with ceil_mode")
    return _geometry(a, (), a["kernel_shape"])


def _maxpool_forward(x, a):  # noqa: ANN001, ANN202
    geometry = _pool_geometry(x, a)
    return [_taps(x[0], geometry, fill=-np.inf).max(axis=-1)]


def _maxpool_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    geometry = _pool_geometry(x, a)
    flat = _taps(x[0], geometry, fill=-np.inf)
    first = flat.argmax(axis=-1)[..., None]  # the gradient goes to the first maximum, as the runtimes route it
    routed = np.zeros(flat.shape, dtype=g[0].dtype)
    np.put_along_axis(routed, first, g[0][..., None], axis=-1)
    return [_col2im(routed.reshape(*flat.shape[:-1], *geometry.kernel), x[0].shape, geometry)]


def _avgpool_divisor(x, a, geometry):  # noqa: ANN001, ANN202
    if int(a.get("count_include_pad", 0)) or not any(geometry.resolved_pads(x[0].shape[2:])):
        return float(math.prod(geometry.kernel))
    return _taps(np.ones((1, 1, *x[0].shape[2:]), dtype=x[0].dtype), geometry).sum(axis=-1)


def _avgpool_forward(x, a):  # noqa: ANN001, ANN202
    geometry = _pool_geometry(x, a)
    total = _taps(x[0], geometry).sum(axis=-1)
    return [(total / _avgpool_divisor(x, a, geometry)).astype(x[0].dtype, copy=False)]


def _avgpool_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    geometry = _pool_geometry(x, a)
    share = g[0] / _avgpool_divisor(x, a, geometry)
    spread = np.broadcast_to(share[(Ellipsis, *([None] * len(geometry.kernel)))], (*share.shape, *geometry.kernel))
    return [_col2im(np.ascontiguousarray(spread), x[0].shape, geometry)]


def _global_pool_forward(x, a):  # noqa: ANN001, ANN202
    return [x[0].mean(axis=tuple(range(2, x[0].ndim)), keepdims=True)]


def _global_pool_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    count = math.prod(x[0].shape[2:])
    return [np.broadcast_to(g[0] / count, x[0].shape)]


def _batchnorm_forward(x, a):  # noqa: ANN001, ANN202
    data, scale, bias, mean, var = x[:5]
    shape = (1, -1, *([1] * (data.ndim - 2)))
    r = 1.0 / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    out = (data - mean.reshape(shape)) * (scale * r).reshape(shape) + bias.reshape(shape)
    return [out.astype(data.dtype, copy=False)]


def _batchnorm_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    data, scale, _, mean, var = x[:5]
    shape = (1, -1, *([1] * (data.ndim - 2)))
    r = (1.0 / np.sqrt(var + float(a.get("epsilon", 1e-5)))).astype(data.dtype, copy=False)
    axes = (0, *range(2, data.ndim))
    out: Grads = [None] * len(x)  # the running mean and variance are not fitted
    if need[0]:
        out[0] = g[0] * (scale * r).reshape(shape)
    if need[1]:
        out[1] = (g[0] * (data - mean.reshape(shape))).sum(axis=axes) * r
    if need[2]:
        out[2] = g[0].sum(axis=axes)
    return out


def _hard_sigmoid(v: np.ndarray, a: Mapping[str, Any]) -> np.ndarray:
    return float(a.get("alpha", 0.2)) * v + float(a.get("beta", 0.5))


def _cast_forward(x, a):  # noqa: ANN001, ANN202
    to = a.get("to_numpy")
    if to is None or not np.issubdtype(np.dtype(to), np.floating):
        raise NotImplementedError("Cast to a non-float type")
    return [np.asarray(x[0]).astype(to)]


def _cast_backward(x, y, g, a, need):  # noqa: ANN001, ANN202
    return [g[0].astype(np.asarray(x[0]).dtype)]


_UNARY = {
    "Identity": _unary(lambda v: v, lambda v, y, g: g),
    "Neg": _unary(np.negative, lambda v, y, g: -g),
    "Sqrt": _unary(np.sqrt, lambda v, y, g: g / (2.0 * y)),
    "Exp": _unary(np.exp, lambda v, y, g: g * y),
    "Erf": _unary(erf, _erf_grad),
    "Tanh": _unary(np.tanh, lambda v, y, g: g * (1.0 - y * y)),
    "Sigmoid": _unary(
        lambda v: (1.0 / (1.0 + np.exp(-v))).astype(v.dtype, copy=False), lambda v, y, g: g * y * (1.0 - y)
    ),
    "Relu": _unary(lambda v: np.maximum(v, 0), lambda v, y, g: g * (v > 0)),
    "HardSwish": _unary(
        lambda v: v * np.clip(v / 6 + 0.5, 0, 1),
        lambda v, y, g: g * np.where(v <= -3, 0, np.where(v >= 3, 1, v / 3 + 0.5)).astype(v.dtype, copy=False),
    ),
}

#: op -> (forward, backward): the ops a block may contain on its differentiated path
KERNELS: dict[str, tuple[Forward, Backward]] = {
    **_UNARY,
    "Add": (_binary(np.add), _add_back),
    "Sub": (_binary(np.subtract), _sub_back),
    "Mul": (_binary(np.multiply), _mul_back),
    "Div": (_binary(np.divide), _div_back),
    "Pow": (lambda x, a: [np.power(x[0], np.asarray(x[1], dtype=x[0].dtype))], _pow_back),
    "MatMul": (_matmul_forward, _matmul_backward),
    "Gemm": (_gemm_forward, _gemm_backward),
    "Softmax": (_softmax_forward, _softmax_backward),
    "LogSoftmax": (_log_softmax_forward, _log_softmax_backward),
    "LayerNormalization": (_layernorm_forward, _layernorm_backward),
    "Gelu": (_gelu_forward, _gelu_backward),
    "Clip": (_clip_forward, _clip_backward),
    "Where": (_where_forward, _where_backward),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceL2": _reduce("l2"),
    "Expand": (_expand_forward, _expand_backward),
    "Reshape": (_reshape_forward, _back_to_shape),
    "Flatten": (_flatten_forward, _back_to_shape),
    "Unsqueeze": (_unsqueeze_forward, _back_to_shape),
    "Squeeze": (_squeeze_forward, _back_to_shape),
    "Transpose": (_transpose_forward, _transpose_backward),
    "Concat": (_concat_forward, _concat_backward),
    "Slice": (_slice_forward, _slice_backward),
    "Conv": (_conv_forward, _conv_backward),
    "MaxPool": (_maxpool_forward, _maxpool_backward),
    "AveragePool": (_avgpool_forward, _avgpool_backward),
    "GlobalAveragePool": (_global_pool_forward, _global_pool_backward),
    "BatchNormalization": (_batchnorm_forward, _batchnorm_backward),
    "HardSigmoid": (
        lambda x, a: [np.clip(_hard_sigmoid(x[0], a), 0, 1).astype(x[0].dtype, copy=False)],
        lambda x, y, g, a, need: [
            g[0] * ((_hard_sigmoid(x[0], a) > 0) & (_hard_sigmoid(x[0], a) < 1)) * float(a.get("alpha", 0.2))
        ],
    ),
    "LeakyRelu": (
        lambda x, a: [np.where(x[0] > 0, x[0], float(a.get("alpha", 0.01)) * x[0]).astype(x[0].dtype, copy=False)],
        lambda x, y, g, a, need: [
            g[0] * np.where(x[0] > 0, 1.0, float(a.get("alpha", 0.01))).astype(g[0].dtype, copy=False)
        ],
    ),
    "Cast": (_cast_forward, _cast_backward),
}


def unsupported(steps: Iterable[Step]) -> list[str]:
    """The ops of ``steps`` that have no kernel (sorted, once each)."""
    return sorted({step.op for step in steps if step.op not in KERNELS})


def forward(steps: Sequence[Step], values: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``steps`` on ``values`` (every name a step reads that no earlier step writes);
    returns every value, the given ones included, for :func:`backward`."""
    env: dict[str, Any] = dict(values)
    for step in steps:
        run, _ = KERNELS[step.op]
        outs = run([env[name] if name else None for name in step.inputs], step.attrs)
        for name, value in zip(step.outputs, outs, strict=False):
            if name:
                env[name] = value
    return env


def backward(
    steps: Sequence[Step], env: Mapping[str, Any], seeds: Mapping[str, np.ndarray], wanted: Iterable[str]
) -> dict[str, np.ndarray]:
    """Gradients of the loss with respect to ``wanted``, given ``seeds`` (``∂L/∂v`` of the
    program's outputs that the loss reads) and ``env`` from :func:`forward`. Only values on
    a path from ``wanted`` get gradients; a wanted value the loss does not depend on gets zeros."""
    wanted = list(wanted)
    live = set(wanted)
    for step in steps:  # what depends on a wanted value
        if any(name in live for name in step.inputs if name):
            live.update(name for name in step.outputs if name)
    grads: dict[str, np.ndarray] = {name: np.asarray(g) for name, g in seeds.items()}
    for step in reversed(steps):
        out_grads = [grads.get(name) if name else None for name in step.outputs]
        if all(g is None for g in out_grads):
            continue
        need = [bool(name) and name in live for name in step.inputs]
        if not any(need):
            continue
        ins = [env[name] if name else None for name in step.inputs]
        outs = [env.get(name) if name else None for name in step.outputs]  # outputs no kernel computes: None
        out_grads = [
            np.zeros_like(o) if g is None and o is not None else g for g, o in zip(out_grads, outs, strict=True)
        ]
        _, back = KERNELS[step.op]
        for name, flag, g in zip(step.inputs, need, back(ins, outs, out_grads, step.attrs, need), strict=False):
            if flag and g is not None:
                grads[name] = grads[name] + g if name in grads else np.asarray(g)
    return {name: grads[name] if name in grads else np.zeros_like(env[name]) for name in wanted}
