"""Block reconstruction on a model: find the blocks, capture their data, fit, write back.

The maths is :mod:`onnxprune.reconstruct.block`; this module is what it needs from the graph.

**Blocks.** The *fitted* tensors are the calibrated layers' weights (the roots) and what
flows from them: a value is *live* when it is computed from a root through ops that carry a
gradient (:func:`onnxprune.ops.gradient.carries_gradient`: ``Shape``, comparisons, casts to
integers and the like end a path). Walking the main graph in its (topological)
order, a *cut* is a place where at most one live value computed before it is read after it
(or is a graph output): in a transformer, the residual stream after each normalisation; in
a CNN, the activation between stages. The stretch between two cuts that holds a root is a
block; consecutive blocks are merged until one holds at least ``layers`` roots. A block's
program is its live nodes (:class:`~onnxprune.reconstruct.autodiff.Step`); what those read
and do not compute is either a fitted tensor (its roots, masks fixed by their zeros, and the
vector initializers that only this block reads: biases, normalisation scales and shifts), a
frozen constant (other initializers, ``Constant`` nodes) or a value captured by running the
current model (the block's input, shapes, attention masks: none of them depends on a fitted
tensor of a later block). Its outputs are its live values read after it, fitted to their
dense values.

A block is skipped, with the reason, when a live node has no kernel (a Conv, an If), when
it reads a value of a subgraph, or when its program does not reproduce onnxruntime's values
of the block's outputs on the model as it is (relative error above :data:`AGREE`).

Blocks are fitted in order, each on its input as computed by the model with the blocks
before it already fitted (one run of the current model per block, stopped at the block).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import ModelProto

from onnxprune.capture import iter_values
from onnxprune.data import Dataset
from onnxprune.graph import tensors
from onnxprune.graph.edit import node_reads
from onnxprune.graph.index import node_label
from onnxprune.ops.constant import constant_tensor
from onnxprune.ops.gradient import carries_gradient, has_kernel, kernel_attrs
from onnxprune.passes.base import Progress
from onnxprune.reconstruct.autodiff import Step, forward
from onnxprune.reconstruct.block import Batch, BlockFit, fit_block

log = logging.getLogger(__name__)

#: a block whose program differs from onnxruntime's outputs by more than this (relative) is skipped
AGREE = 1e-3
#: samples per mini-batch of the fit (and per captured batch)
BATCH = 8
#: one batch in this many is held out to choose the epoch kept
HOLD_OUT_EVERY = 8
#: the captured inputs and targets of one block are kept within this many bytes (fewer samples if not)
BLOCK_BYTES = 1 << 30
#: Adam's step, relative to each tensor's rms (:func:`onnxprune.reconstruct.block.fit_block`);
#: measured on all-MiniLM-L6-v2 at 2:4 (README): 1e-2 without warm-up 0.9298, 5e-3 with it 0.9303
LR = 5e-3
#: the fewest root layers in a block: consecutive blocks are merged up to it
LAYERS = 1
#: the dtypes a block's fitted tensors may have (the program runs in their precision)
FIT_DTYPES = (np.float32, np.float64)


@dataclass
class Block:
    """One block: its program, what it fits, reads and must reproduce."""

    steps: list[Step]
    roots: list[str]
    fitted: list[str]  # roots first, then the vectors only this block reads
    frozen: dict[str, np.ndarray]
    captured: list[str]  # values read from the current model
    outputs: list[str]
    nodes: list[str] = field(default_factory=list)  # labels, for messages
    skip: str | None = None


@dataclass(frozen=True)
class BlockRecord:
    """What happened to one block (for the result and the report)."""

    first: str
    last: str
    layers: int
    error_before: float | None
    error_after: float | None
    epoch: int | None
    skipped: str | None = None


def plan_blocks(model: ModelProto, roots: Sequence[str], *, layers: int = 1) -> list[Block]:
    """The blocks of ``model``'s main graph around the weights ``roots`` (module docstring)."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    inits = stored_tensors(graph)
    root_set = {r for r in roots if r in inits}
    nodes = list(graph.node)
    live: set[str] = set(root_set)
    live_node = [False] * len(nodes)
    produced_at: dict[str, int] = {}
    last_use: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node_reads(node):
            last_use[name] = i
            readers.setdefault(name, []).append(i)
        if carries_gradient(node) and any(name in live for name in node.input if name):
            live_node[i] = True
            live.update(o for o in node.output if o)
        for out in node.output:
            if out:
                produced_at[out] = i
    for out in graph.output:
        last_use[out.name] = len(nodes)
    # the activations that make a block: live ones, and the data inputs of the root layers
    # (not stored tensors: a weight in a Constant node is made at the top and read far below)
    counted = (live - root_set) | {
        name for node in nodes if _reads_root(node, root_set) for name in node.input if name and name in produced_at
    }
    counted -= inits.keys()
    # those crossing each position: produced before it, read at or after it (a difference array)
    delta = np.zeros(len(nodes) + 2, dtype=np.int64)
    for name in counted:
        start, end = produced_at[name] + 1, last_use.get(name, produced_at[name])
        if end >= start:
            delta[start] += 1
            delta[end + 1] -= 1
    crossing = np.cumsum(delta)[: len(nodes) + 1]
    cuts = [pos for pos in range(len(nodes) + 1) if crossing[pos] <= 1]
    if any(live_node[i] and _reads_root(nodes[i], root_set) for i in range(cuts[-1], len(nodes))):
        cuts.append(len(nodes))  # weights after the last cut: their block ends at the graph outputs
    spans = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    has_root = [sum(1 for i in range(a, b) if live_node[i] and _reads_root(nodes[i], root_set)) for a, b in spans]
    merged: list[list[int]] = []  # [start, end, roots]
    for (a, b), n in zip(spans, has_root, strict=True):
        # a span without roots joins the block before it when it can be computed here (an
        # activation, a normalisation), else it ends that block where it starts
        joins = not n and all(has_kernel(nodes[i]) for i in range(a, b) if live_node[i])
        if merged and merged[-1][1] == a and (merged[-1][2] < layers or joins):
            merged[-1][1:] = [b, merged[-1][2] + n]
        elif n:
            merged.append([a, b, n])
    while len(merged) > 1 and merged[-1][2] < layers and merged[-2][1] == merged[-1][0]:  # a short last block
        a, b, n = merged.pop()
        merged[-1][1:] = [b, merged[-1][2] + n]
    where = _Where(nodes, produced_at, readers, last_use, opset)
    return [_block(where, a, b, live, live_node, root_set, inits) for a, b, _ in merged]


def stored_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The tensors stored in ``graph`` by the name they are read by: its initializers and the
    ``value`` of its Constant nodes (weights exported as Constants are fitted in place too)."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        tensor = constant_tensor(node)
        if tensor is not None:
            found[node.output[0]] = tensor
    return found


def _reads_root(node: onnx.NodeProto, roots: set[str]) -> bool:
    return any(name in roots for name in node.input)


@dataclass(frozen=True)
class _Where:
    """The main graph's nodes in order, and where each value is made and read."""

    nodes: list[onnx.NodeProto]
    produced_at: dict[str, int]
    readers: dict[str, list[int]]
    last_use: dict[str, int]
    opset: int


def _block(where: _Where, a: int, b: int, live: set[str], live_node: list[bool], roots: set[str], inits: dict) -> Block:
    nodes, readers, last_use, opset = where.nodes, where.readers, where.last_use, where.opset
    members = [i for i in range(a, b) if live_node[i]]
    steps: list[Step] = []
    made: set[str] = set()
    reads: list[str] = []
    labels = [node_label(nodes[i]) for i in members]
    skip = None
    for i in members:
        node = nodes[i]
        if not has_kernel(node):
            skip = skip or f"no gradient kernel for {node.op_type} ({node_label(node)})"
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            skip = skip or f"{node_label(node)} holds a subgraph"
        if any(o and o in last_use for o in node.output[1:]):  # the kernels compute an op's first output only
            skip = skip or f"{node_label(node)} ({node.op_type}) has more than one output in use"
        steps.append(Step(node.op_type, tuple(node.input), tuple(node.output), kernel_attrs(node, opset)))
        reads += [name for name in node.input if name and name not in made]
        made.update(o for o in node.output if o)
    reads = list(dict.fromkeys(reads))
    # a root read outside the block too (a tied weight) is frozen: fitting it here would move the other reader
    block_roots = [name for name in reads if name in roots and all(a <= r < b for r in readers.get(name, []))]
    vectors = [
        name
        for name in reads
        if name in inits
        and name not in roots
        and name not in block_roots
        and tensors.is_float(inits[name])
        and len(inits[name].dims) == 1
        and inits[name].dims[0] > 1
        and all(a <= r < b for r in readers.get(name, []))
    ]
    frozen: dict[str, np.ndarray] = {}
    captured: list[str] = []
    for name in reads:
        if name in block_roots or name in vectors:
            continue
        if name in inits:
            frozen[name] = tensors.read_array(inits[name])
        else:
            at = where.produced_at.get(name)
            value = constant_tensor(nodes[at]) if at is not None else None
            if value is not None:
                frozen[name] = onnx.numpy_helper.to_array(value)
            else:
                captured.append(name)
    outputs = [name for name in made if name in live and last_use.get(name, -1) >= b]
    if not outputs and not skip:
        skip = "its values are not read after it"
    if not block_roots and not skip:
        skip = "its weights are also read outside it (tied): fitting them here would change the other readers"
    odd = sorted({tensors.dtype_name(inits[name]) for name in block_roots + vectors} - {"float32", "float64"})
    if odd and not skip:
        skip = f"its weights are {', '.join(odd)} (block fitting runs in float32 or float64)"
    return Block(steps, block_roots, block_roots + vectors, frozen, captured, sorted(outputs), labels, skip)


def held_out(batches: int) -> set[int]:
    """The batches held out to choose the epoch kept: one in :data:`HOLD_OUT_EVERY`, and the last
    one when there are fewer (none when there is only one: then the training batches judge)."""
    out = {i for i in range(batches) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1}
    return out or ({batches - 1} if batches > 1 else set())


def blocks_summary(records: Sequence[BlockRecord], epochs: int) -> dict[str, object]:
    """The result's ``blocks`` entry: counts, the held-out errors summed over the fitted blocks,
    and one record per block."""
    fitted = [r for r in records if r.skipped is None]
    return {
        "epochs": epochs,
        "fitted": len(fitted),
        "skipped": len(records) - len(fitted),
        "error_before": sum(r.error_before or 0.0 for r in fitted),
        "error_after": sum(r.error_after or 0.0 for r in fitted),
        "records": [asdict(r) for r in records],
    }


def _skipped(blk: Block, why: str) -> BlockRecord:
    log.info("block %s .. %s skipped: %s", blk.nodes[0] if blk.nodes else "", blk.nodes[-1] if blk.nodes else "", why)
    return BlockRecord(
        blk.nodes[0] if blk.nodes else "", blk.nodes[-1] if blk.nodes else "", len(blk.roots), None, None, None, why
    )


def _nbytes(values: dict[str, np.ndarray]) -> int:
    return sum(int(np.asarray(v).nbytes) for v in values.values())


def _read(model: ModelProto, dense: ModelProto, blk: Block, feeds: list[dict[str, np.ndarray]]) -> tuple[list, list]:
    """The block's captured values on ``model`` and its dense targets, batch by batch, for as
    many batches as keep both within :data:`BLOCK_BYTES` (at least two)."""
    values, targets = [], []
    targets_of = iter_values(dense, blk.outputs, feeds)
    pairs = zip(iter_values(model, blk.captured + blk.outputs, feeds), targets_of, strict=True)
    for value, target in pairs:
        values.append(value)
        targets.append(target)
        count = min(len(feeds), max(2, BLOCK_BYTES // max(1, _nbytes(values[0]) + _nbytes(targets[0]))))
        if len(values) >= count:
            break
    if len(values) < len(feeds):
        log.info("block fitting uses %d of %d batches", len(values), len(feeds))
    return values, targets


def fit_blocks(
    model: ModelProto,
    dense: ModelProto,
    data: Dataset,
    roots: Sequence[str],
    *,
    epochs: int,
    lr: float = LR,
    layers: int = LAYERS,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[BlockRecord]:
    """Fit every block of ``model`` (edited in place) to ``dense``'s values on ``data``, in
    order (module docstring); returns one record per block."""
    blocks = plan_blocks(model, roots, layers=layers)
    inits = stored_tensors(model.graph)
    records: list[BlockRecord] = []
    todo = [blk for blk in blocks if blk.skip is None]
    feeds = [dict(f) for f in data.batches(BATCH)] if todo else []
    work = max(1, sum(epochs * (len(feeds) - len(held_out(len(feeds)))) for _ in todo))
    done = 0
    for blk in blocks:
        if blk.skip:
            records.append(_skipped(blk, blk.skip))
            continue
        values, targets = _read(model, dense, blk, feeds)
        params = {name: tensors.read_array(inits[name]).copy() for name in blk.fitted}
        keep = {name: params[name] != 0 for name in blk.roots}
        batches = [
            Batch({**blk.frozen, **{n: v[n] for n in blk.captured}}, {n: t[n] for n in blk.outputs})
            for v, t in zip(values, targets, strict=True)
        ]
        try:
            agree = _agreement(blk, params, batches[0], values[0])
        except (NotImplementedError, ValueError, TypeError, KeyError, IndexError) as exc:
            records.append(_skipped(blk, f"its program cannot run here ({type(exc).__name__}: {exc})"))
            continue
        if agree > AGREE:
            records.append(_skipped(blk, f"its numpy program differs from onnxruntime by {agree:.2g} (relative)"))
            continue
        out = held_out(len(batches))
        held = [b for i, b in enumerate(batches) if i in out]
        train = [b for i, b in enumerate(batches) if i not in out]

        def tick(t: int, total: int, start: int = done) -> None:
            if progress is not None:
                progress(min(work, start + t), work, "block reconstruction")

        try:
            fit: BlockFit = fit_block(
                blk.steps, params, keep, train, held, epochs=epochs, lr=lr, seed=seed, progress=tick
            )
        except (NotImplementedError, ValueError, TypeError, KeyError, IndexError) as exc:
            records.append(_skipped(blk, f"its gradient cannot be computed here ({type(exc).__name__}: {exc})"))
            continue
        done += epochs * len(train)
        for name, value in fit.params.items():
            tensors.write_array(inits[name], value.astype(params[name].dtype, copy=False))
        log.info(
            "block %s .. %s (%d layers): held-out error %.4g -> %.4g (epoch %d of %d)",
            blk.nodes[0], blk.nodes[-1], len(blk.roots), fit.error_before, fit.error_after, fit.epoch, fit.epochs,
        )  # fmt: skip
        records.append(
            BlockRecord(blk.nodes[0], blk.nodes[-1], len(blk.roots), fit.error_before, fit.error_after, fit.epoch)
        )
    return records


def _agreement(blk: Block, params: dict[str, np.ndarray], batch: Batch, ort_values: dict[str, np.ndarray]) -> float:
    """Largest relative difference between the program's outputs and onnxruntime's."""
    env = forward(blk.steps, {**batch.inputs, **params})
    worst = 0.0
    for name in blk.outputs:
        ref = ort_values[name]
        diff = float(np.linalg.norm((env[name] - ref).ravel()))
        worst = max(worst, diff / max(float(np.linalg.norm(ref.ravel())), 1e-30))
    return worst if math.isfinite(worst) else math.inf
