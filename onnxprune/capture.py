"""Statistics of layer inputs on calibration data, for layer-wise pruning and correction.

A prunable layer computes ``Y = W Xᵀ`` (per group) from a matrix ``X [rows, cols]`` of its
input, one row per sample and position, one column per weight column:

- Gemm: the activation ``[M, K]`` (``transA``: ``[K, M]``, transposed); rows = M.
- MatMul: the activation ``[..., K]`` flattened to ``[-1, K]``; rows = ∏ leading dims.
- MatMulLeft (a weight on the left, ``W @ x``): the activation ``[..., K, N]``, each of its
  columns a row: ``[..., N, K]`` flattened to ``[-1, K]``.
- Conv: the im2col patches of the activation, one matrix per group
  (:mod:`onnxprune.im2col`); rows = N·∏ output positions.

Streaming over calibration batches ``b``, each layer accumulates in float64

    H = Σ_b X_bᵀ X_b   [groups, cols, cols]     (SparseGPT / OBS Hessian, up to a factor 2)
    mean = Σ_b Σ_rows X_b / rows   [groups, cols]   (E[x], for bias correction)
    sqnorm = Σ_b Σ_rows X_b²   [groups, cols]     (‖x_j‖², Wanda scores use its square root)

so ``tr(W_j H_j W_jᵀ) = ‖Y_j‖²`` summed over the calibration set, bias left out. Only the
current batch's activations are held, and each is processed in blocks of at most
``max_bytes`` (float64); H itself takes ``groups·cols²·8`` bytes, so a layer with ``cols``
above ``max_cols`` gets no H (``skipped`` says so) but still gets ``mean`` and ``sqnorm``.

With a ``reference`` model (the dense model, in sequential calibration), every batch also
runs through it and each layer accumulates the statistics that relate its current input
``X`` to the input ``X_d`` the same layer sees in the reference model::

    C = Σ_b X_bᵀ X_d,b   [groups, cols, cols]     H_d = Σ_b X_d,bᵀ X_d,b     mean_d = E[x_d]

so that a layer can be fitted to the *dense* output: ‖W X_dᵀ − Ŵ Xᵀ‖² = Σ_rows
(ŵᵀ H ŵ − 2 ŵᵀ C w + wᵀ H_d w).

Layers that read the same activation with the same geometry share one accumulation: their
:class:`LayerStats` hold the same arrays, which are therefore read-only (copy before
changing them in place).

The activations are read by adding them as extra graph outputs to the serialized model
(protobuf merges a second serialized ``ModelProto`` holding only graph outputs into the
first: the model is not copied) and running it in onnxruntime on CPU with graph
optimizations on (a value that is a graph output survives every fusion). Only main-graph values
can be read.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto

from onnxprune import runtime
from onnxprune.errors import DataError, OnnxPruneError, OptionError, UnsupportedModelError
from onnxprune.graph.model_io import load_model
from onnxprune.graph.writer import copy_fields
from onnxprune.im2col import AUTO_PADS, ConvGeometry, conv_cols, patch_blocks
from onnxprune.ops.spec import MatrixView

log = logging.getLogger(__name__)

#: Default largest reduction length that gets a full H (8192² float64 = 512 MiB).
MAX_COLS = 8192
#: Default largest float64 block of rows processed at once (1 GiB).
MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class LayerSpec:
    """One layer whose input statistics are wanted (see module docstring for the ops).

    key: the caller's identifier of the weight (opaque here; must be unique).
    node: the consuming node's name, for messages.
    capture_op: how the input is cut into rows (:attr:`~onnxprune.ops.spec.MatrixView.capture_op`
        of the op table's view): "Conv" (im2col patches), "Gemm" or "MatMul" (rows of ``K``).
    activation: the main-graph tensor feeding the layer's data input.
    cols: the reduction length per group: Conv ``C/g·∏k``, Gemm/MatMul ``K``.
    kernel, strides, pads, dilations, auto_pad: the Conv's attributes (pads in ONNX
        order, begins then ends; empty strides/dilations mean 1, empty pads mean 0).
    trans_a: Gemm ``transA``: the activation is ``[K, M]``.
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

    @classmethod
    def from_view(cls, view: MatrixView, *, key: str, node: str, activation: str) -> LayerSpec:
        """The spec that captures the input rows of the op table's matrix view of a weight."""
        return cls(
            key=key,
            node=node,
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


class _Mismatch(Exception):
    """The activation's shape does not fit the layer spec (the message says how)."""


# ---------------------------------------------------------------------------------------
# Per-op handlers: validate a spec, and cut an activation into float64 row blocks [groups, rows, cols].


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


def _conv_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    geometry = _geometry(spec)
    rank = len(spec.kernel)
    if x.ndim != 2 + rank or x.shape[1] % spec.groups or conv_cols(x.shape[1], geometry) != spec.cols:
        raise _Mismatch(
            f"input shape {list(x.shape)} does not fit a {rank}-D Conv with {spec.groups} group(s), kernel "
            f"{list(spec.kernel)} and {spec.cols} columns per group"
        )
    return patch_blocks(x, geometry, max_bytes=max_bytes)


def _matrix_blocks(x: np.ndarray, cols: int, max_bytes: int) -> Iterator[np.ndarray]:
    step = max(1, max_bytes // (cols * 8))
    for start in range(0, x.shape[0], step):
        yield x[None, start : start + step].astype(np.float64)


def _gemm_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    if x.ndim != 2 or x.shape[0 if spec.trans_a else 1] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} is not a Gemm input with K = {spec.cols}")
    return _matrix_blocks(x.T if spec.trans_a else x, spec.cols, max_bytes)


def _matmul_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    if x.ndim == 0 or x.shape[-1] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} does not end with K = {spec.cols}")
    return _matrix_blocks(x.reshape(-1, spec.cols), spec.cols, max_bytes)


def _matmul_left_blocks(spec: LayerSpec, x: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    if x.ndim < 2 or x.shape[-2] != spec.cols:
        raise _Mismatch(f"input shape {list(x.shape)} does not have K = {spec.cols} on its second last axis")
    return _matrix_blocks(np.moveaxis(x, -2, -1).reshape(-1, spec.cols), spec.cols, max_bytes)


def _no_check(spec: LayerSpec) -> None:
    if spec.groups != 1:
        raise OptionError(f"layer '{spec.key}' ({spec.capture_op} '{spec.node}'): groups must be 1, not {spec.groups}")


@dataclass(frozen=True)
class _Handler:
    check: Callable[[LayerSpec], None]
    blocks: Callable[[LayerSpec, np.ndarray, int], Iterator[np.ndarray]]
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
}


def _handler(spec: LayerSpec) -> _Handler | None:
    """How to cut the input of ``spec`` into rows (by its capture op), None for an unknown one."""
    return HANDLERS.get(spec.capture_op)


# ---------------------------------------------------------------------------------------
# Accumulation


class _Accumulator:
    """Running sums for one (activation, geometry): H (unless too wide), Σx, Σx² and the row count."""

    def __init__(self, spec: LayerSpec, *, max_cols: int) -> None:
        self.spec = spec
        groups, cols = spec.groups, spec.cols
        self.rows = 0
        self.total = np.zeros((groups, cols))
        self.sqnorm = np.zeros((groups, cols))
        self.H: np.ndarray | None = np.zeros((groups, cols, cols)) if cols <= max_cols else None
        self.skipped = None if self.H is not None else f"reduction length {cols} above the capture cap {max_cols}"
        self.failed: str | None = None
        self.C: np.ndarray | None = None
        self.H_ref: np.ndarray | None = None
        self.total_ref: np.ndarray | None = None

    def add(self, x: np.ndarray, max_bytes: int, x_ref: np.ndarray | None = None) -> None:
        if self.failed is not None:
            return
        blocks = _handler(self.spec).blocks  # type: ignore[union-attr]  # specs are checked first
        try:
            refs = blocks(self.spec, x_ref, max_bytes) if x_ref is not None else None
            for block in blocks(self.spec, x, max_bytes):
                self.rows += block.shape[1]
                self.total += block.sum(axis=1)
                if self.H is not None:
                    self.H += np.matmul(block.transpose(0, 2, 1), block)  # sqnorm is its diagonal
                else:
                    self.sqnorm += np.einsum("grc,grc->gc", block, block)
                if refs is not None:
                    self._add_reference(block, next(refs))
        except _Mismatch as exc:
            self.failed = f"{exc}: not captured"
            log.warning("layer '%s' (%s '%s'): %s", self.spec.key, self.spec.capture_op, self.spec.node, self.failed)

    def _add_reference(self, block: np.ndarray, ref: np.ndarray) -> None:
        if ref.shape != block.shape:
            raise _Mismatch(f"the reference model's input has shape {ref.shape[1:]}, not {block.shape[1:]}")
        if self.H is None:
            return
        if self.C is None:
            self.C, self.H_ref = np.zeros_like(self.H), np.zeros_like(self.H)
            self.total_ref = np.zeros_like(self.total)
        self.C += np.matmul(block.transpose(0, 2, 1), ref)
        self.H_ref += np.matmul(ref.transpose(0, 2, 1), ref)
        self.total_ref += ref.sum(axis=1)

    def stats(self) -> LayerStats:
        if self.failed is not None:
            return LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=self.failed)
        mean = self.total / self.rows if self.rows else np.zeros_like(self.total)
        if self.H is not None:
            self.sqnorm = np.diagonal(self.H, axis1=1, axis2=2).copy()
        mean_ref = self.total_ref / self.rows if self.total_ref is not None and self.rows else None
        for array in (self.H, mean, self.sqnorm, self.C, self.H_ref, mean_ref):
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
        )


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
    reference: ModelProto | bytes | None = None,
) -> dict[str, LayerStats]:
    """Input statistics of every layer in ``specs`` over ``batches`` (see module docstring).

    ``reference``: a model with the same graph (the dense model) whose inputs to the same
    layers give ``C``, ``H_ref`` and ``mean_ref``.

    ``batches`` are feed dicts (input name to array), e.g. ``Dataset.batches(b)``; they are
    read one at a time. ``progress(n)`` is called after each batch with its number of
    samples. Returns one :class:`LayerStats` per spec key; a layer whose activation is not
    a main-graph value, or whose input shape does not fit its spec, is returned skipped.

    Raises :class:`OptionError` for invalid specs or caps, :class:`DataError` for no batches,
    a batch the model cannot run, or NaN/inf at a layer's input, and
    :class:`UnsupportedModelError` when onnxruntime cannot load the model.
    """
    if max_cols < 1 or max_bytes < 1:
        raise OptionError(f"capture caps must be positive (max_cols={max_cols}, max_bytes={max_bytes})")
    _check_specs(specs)
    proto = _as_model(model)
    results: dict[str, LayerStats] = {}
    values = _main_graph_values(proto)
    accumulators: dict[tuple, _Accumulator] = {}
    layer_of: dict[str, tuple] = {}
    for spec in specs:
        where = values.get(spec.activation, "missing")
        if where != "value":
            reason = (
                f"its input '{spec.activation}' is a constant, not an activation: nothing to capture"
                if where == "constant"
                else f"its input '{spec.activation}' is not a value of the main graph: cannot be read"
            )
            results[spec.key] = LayerStats(rows=0, H=None, mean=None, sqnorm=None, skipped=reason)
            continue
        signature = _handler(spec).signature(spec)  # type: ignore[union-attr]
        accumulators.setdefault(signature, _Accumulator(spec, max_cols=max_cols))
        layer_of[spec.key] = signature
    names = list(dict.fromkeys(acc.spec.activation for acc in accumulators.values()))
    sess = _session(proto, model, names) if names else None
    ref_sess = None
    if reference is not None and names:
        ref_sess = _session(_as_model(reference), reference, names)
    samples = 0
    for index, feeds in enumerate(batches):
        count = _samples(feeds)
        if sess is not None:
            activations = _run(sess, names, feeds, index)
            ref_activations = _run(ref_sess, names, feeds, index) if ref_sess is not None else {}
            for acc in accumulators.values():
                x = activations[acc.spec.activation]
                if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                    raise DataError(
                        f"calibration data gives NaN/inf at the input of node '{acc.spec.node}' "
                        f"('{acc.spec.activation}') in batch {index}: check the data's scale"
                    )
                acc.add(x, max_bytes, ref_activations.get(acc.spec.activation))
        samples += count
        if progress is not None:
            progress(count)
    if samples == 0:
        raise DataError("no calibration samples: give at least one batch of data")
    shared = {signature: acc.stats() for signature, acc in accumulators.items()}
    for spec in specs:
        if spec.key in layer_of:
            stats = shared[layer_of[spec.key]]
            results[spec.key] = LayerStats(
                stats.rows,
                stats.H,
                stats.mean,
                stats.sqnorm,
                stats.skipped,
                C=stats.C,
                H_ref=stats.H_ref,
                mean_ref=stats.mean_ref,
            )
    log.debug("captured %d layer(s) over %d samples (%d distinct inputs)", len(layer_of), samples, len(accumulators))
    return {spec.key: results[spec.key] for spec in specs}


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


def _main_graph_values(model: ModelProto) -> dict[str, str]:
    """Main-graph names: ``"value"`` for graph inputs and node outputs, ``"constant"`` for initializers."""
    graph = model.graph
    found = {init.name: "constant" for init in graph.initializer}
    found.update({i.name: "value" for i in graph.input})
    found.update({out: "value" for node in graph.node for out in node.output if out})
    return found


def _used_names(node: onnx.NodeProto) -> list[str]:
    """The node's inputs and every name its subgraphs read (outer-scope values included)."""
    names = list(node.input)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.extend(_used_names(inner))
    return names


def _truncated(proto: ModelProto, names: Sequence[str]) -> bytes:
    """The part of the model that computes ``names``, with them as its only outputs.

    onnxruntime runs every node of a graph whatever outputs are asked for, so a layer near
    the input would otherwise pay for the whole model on every calibration batch.
    """
    graph = proto.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    keep: set[int] = set()
    stack = [name for name in names if name in producer]
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in keep:
            continue
        keep.add(index)
        stack.extend(_used_names(graph.node[index]))
    used = {name for i in keep for name in _used_names(graph.node[i])}
    out = ModelProto()
    copy_fields(proto, out, skip=("graph",))
    target = out.graph
    target.name = graph.name
    target.input.extend(graph.input)
    target.node.extend(graph.node[i] for i in sorted(keep))
    target.initializer.extend(t for t in graph.initializer if t.name in used)
    target.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in used)
    target.value_info.extend(v for v in graph.value_info if v.name in used or v.name in names)
    typed = {v.name: v for v in (*graph.value_info, *graph.output)}
    for name in names:
        if name not in producer:
            continue
        if name in typed:
            target.output.append(typed[name])
        else:
            target.output.add(name=name)
    return out.SerializeToString()


def _session(proto: ModelProto, model: object, names: Sequence[str]) -> ort.InferenceSession:
    """A CPU session, fully optimized, of the part of the model that computes ``names``."""
    inputs = {i.name for i in proto.graph.input}
    wanted = [name for name in names if name not in inputs]
    if not wanted:
        source = model if isinstance(model, bytes) else proto.SerializeToString()
        return runtime.session(source, optimize=True)
    source = _truncated(proto, wanted)
    try:
        # full optimization: fusions never swallow a value that is a graph output, and the
        # activations read here are graph outputs now (several times faster than unoptimized)
        return runtime.session(source, optimize=True)
    except OnnxPruneError:
        raise
    except Exception as exc:  # onnxruntime raises its own types; a model over 2 GiB cannot be serialized
        raise UnsupportedModelError(
            f"onnxruntime cannot load the model to capture calibration statistics ({runtime.ort_message(exc)})"
        ) from exc


def _run(
    sess: ort.InferenceSession, names: Sequence[str], feeds: dict[str, np.ndarray], index: int
) -> dict[str, np.ndarray]:
    wanted = [name for name in names if name not in feeds]
    try:
        values = sess.run(wanted, feeds) if wanted else []
    except Exception as exc:  # onnxruntime raises its own types
        raise DataError(
            f"the model fails on calibration batch {index} ({runtime.ort_message(exc)}); "
            "check the data's input names, shapes and dtypes"
        ) from exc
    out = {name: np.asarray(feeds[name]) for name in names if name in feeds}
    out.update(zip(wanted, values, strict=True))
    return out


def _samples(feeds: dict[str, np.ndarray]) -> int:
    if not feeds:
        return 0
    first = np.asarray(next(iter(feeds.values())))
    return int(first.shape[0]) if first.ndim else 1
