"""Add a per-output change to a consumer's bias, creating the bias where there is none.

Conv/ConvTranspose/Gemm hold it as input 2 (``C``); a MatMul in the Add that alone follows
it with a stored per-output vector, else a new ``Add(MatMul output, vector)`` takes over the
MatMul's output name, so every reader of that output (graph output included) reads the sum;
LSTM/GRU/RNN in the first half (the input weights' half) of ``B``. A new bias is a real
initializer from the start, indexed in the context's scope like every other tensor: no
placeholder is ever stored. A bias created for a node whose outputs are themselves a
channel group is registered as a member of that group, so the removal that follows slices
it too.

Where no bias can carry the change (a Gemm with ``beta = 0``, a bias computed by other
nodes, a MatMul whose weight is on the left), :func:`bias_problem` says why, and the caller
skips the consumer with that reason.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from onnxprune.graph import tensors
from onnxprune.graph.index import Use, node_label
from onnxprune.ops import SlotContext, spec_of
from onnxprune.structure.analysis import Context
from onnxprune.structure.groups import Group, Member


def bias_problem(cx: Context, node: NodeProto) -> str | None:
    """Why ``node`` cannot take a per-output bias change; None when :func:`add_to_bias` can."""
    label = node_label(node)
    spec = spec_of(node)
    slot = spec.bias_input(node)
    if slot is not None:
        if spec.bias_gain(node) == 0.0:
            return f"{label} ignores its bias (its gain is 0: Gemm beta = 0)"
        if len(node.input) > slot and node.input[slot] and cx.stored(node, slot) is None:
            return f"{label} has a computed bias"
        return None
    if spec.macs is not None and spec.slot(SlotContext(node, 1, 2, lambda name: None)).role == "weight":
        if cx.stored(node, 1) is None:
            return f"{label} has its weight on the left: a bias would be per row, not per output"
        return None  # x·W: a new Add after it holds the bias
    return f"{label} ({node.op_type}) has no bias"


def _dtype(cx: Context, node: NodeProto, index: int = 1) -> np.dtype:
    """The element type ``node`` sees at input ``index`` (default its weight's, which is its
    output's): the stored tensor's, or the target of a Cast on the way."""
    name = node.input[index] if len(node.input) > index else ""
    for _ in range(8):
        tensor = cx.scope.stored_tensor(name) if name else None
        if tensor is not None:
            return tensors.read_array(tensor).dtype if tensors.is_float(tensor) else np.dtype(np.float32)
        producer = cx.producer(name) if name else None
        if producer is None or not spec_of(producer).keeps_layout:
            break
        to = spec_of(producer).output_type(producer)
        if to is not None:
            return np.dtype(helper.tensor_dtype_to_np_dtype(to))
        name = producer.input[0]
    return np.dtype(np.float32)


def _store(cx: Context, base: str, values: np.ndarray) -> str:
    """A new initializer holding ``values``, in the model and in the context's index; returns its name."""
    name = cx.fresh(base)
    initializers = cx.model.graph.initializer
    initializers.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
    cx.scope.initializers[name] = initializers[-1]
    return name


def _register(groups: list[Group], node: NodeProto, name: str, reader: tuple[int, int]) -> None:
    """Make bias ``name`` a member of the group of the node's outputs (its first ``out`` member's layout)."""
    label = node_label(node)
    for group in groups:
        for member in group.members:
            if member.kind == "out" and member.node == label:
                group.members.append(Member(name, 0, member.offset, member.segment, "out", label, reader))
                return


def _register_recurrent(cx: Context, groups: list[Group], node: NodeProto, name: str, reader: tuple[int, int]) -> None:
    """A new ``B [dirs, 2·gates·H]`` follows the hidden units like ``W [dirs, gates·H, I]``, in both halves."""
    stored = cx.stored(node, 1)
    if stored is None:
        return
    rows = cx.stored_shape(stored[0])[1]
    label = node_label(node)
    for group in groups:
        like = [m for m in group.members if m.kind == "out" and m.node == label and m.tensor == stored[0]]
        for m in like:
            for shift in (0, rows):
                group.members.append(Member(name, 1, m.offset + shift, m.segment, "out", label, reader))


def _update(tensor: TensorProto, delta: np.ndarray) -> None:
    values = tensors.read_array(tensor)
    new = (values.astype(np.float64).reshape(-1) + delta.reshape(-1)).reshape(values.shape)
    tensors.write_array(tensor, new.astype(values.dtype))


def add_to_bias(cx: Context, groups: list[Group], node: NodeProto, delta: np.ndarray) -> None:
    """Add ``delta`` (in output units) to the bias of consumer ``node`` (see module docstring).

    A Gemm's bias is scaled by ``beta`` in its output, so ``C`` gets ``delta / beta``. A
    bias that other nodes also read, or a broadcast one that must grow to a full vector,
    is replaced by a new tensor of this node's own, which follows its output channels.
    Raises ValueError with :func:`bias_problem`'s reason where no bias can be added.
    """
    problem = bias_problem(cx, node)
    if problem is not None:
        raise ValueError(problem)
    index = cx.node_id(node)
    label = node_label(node)
    spec = spec_of(node)
    delta = delta / spec.bias_gain(node)  # Gemm: C enters the output times beta
    if spec.bias_layout == "per_output":
        if len(node.input) > 2 and node.input[2]:
            stored = cx.stored(node, 2)
            assert stored is not None  # bias_problem: not computed
            tensor = cx.scope.stored_tensor(stored[0])
            shared = len(cx.uses(stored[0])) > 1 or stored[1][0] != index
            if tensors.numel(tensor) == delta.size and not shared:
                _update(tensor, delta)
                return
            values = tensors.read_array(tensor)
            full = np.broadcast_to(values.astype(np.float64).reshape(-1), delta.shape) + delta
            # the node's own copy is read directly: in the type the node saw (after a Cast from fp16 storage)
            name = _store(cx, f"{label}.onnxprune_bias", full.astype(_dtype(cx, node, 2)))
            node.input[2] = name
            cx.scope.uses.setdefault(name, []).append(Use(node, 2, cx.scope))
            for group in groups:  # the old tensor is no longer this node's bias
                group.members[:] = [m for m in group.members if (m.tensor, m.reader) != stored]
            _register(groups, node, name, (index, 2))
            return
        name = _store(cx, f"{label}.onnxprune_bias", delta.astype(_dtype(cx, node)))
        while len(node.input) < 2:
            node.input.append("")
        node.input.append(name)
        cx.scope.uses.setdefault(name, []).append(Use(node, 2, cx.scope))
        _register(groups, node, name, (index, 2))
        return
    if spec.bias_layout == "gates":
        half = delta.reshape(delta.shape[0], -1)
        if len(node.input) > 3 and node.input[3]:
            stored = cx.stored(node, 3)
            assert stored is not None  # bias_problem: not computed
            tensor = cx.scope.stored_tensor(stored[0])
            values = tensors.read_array(tensor).astype(np.float64)
            values[:, : half.shape[1]] += half
            tensors.write_array(tensor, values.astype(tensors.read_array(tensor).dtype))
            return
        full = np.concatenate([half, np.zeros_like(half)], axis=1)
        name = _store(cx, f"{label}.onnxprune_bias", full.astype(_dtype(cx, node)))
        while len(node.input) < 3:
            node.input.append("")
        node.input.append(name)
        cx.scope.uses.setdefault(name, []).append(Use(node, 3, cx.scope))
        _register_recurrent(cx, groups, node, name, (index, 3))
        return
    _matmul_bias(cx, groups, node, delta)


def _matmul_bias(cx: Context, groups: list[Group], node: NodeProto, delta: np.ndarray) -> None:
    """The following Add's stored vector, or a new Add that takes over the MatMul's output name."""
    out = node.output[0]
    uses = cx.uses(out)
    if len(uses) == 1 and spec_of(uses[0].node).adds_bias and not cx.scope.is_output(out):
        add = uses[0].node
        stored = cx.stored(add, 1 - uses[0].index)
        if stored is not None and len(cx.uses(stored[0])) == 1:
            tensor = cx.scope.stored_tensor(stored[0])
            dims = [int(d) for d in tensor.dims]
            if dims and dims[-1] == delta.size and int(np.prod(dims)) == delta.size:
                _update(tensor, delta)
                return
    label = node_label(node)
    scope, nodes = cx.scope, cx.model.graph.node
    name = _store(cx, f"{label}.onnxprune_bias", delta.reshape(-1).astype(_dtype(cx, node)))
    renamed = cx.fresh(f"{out}.onnxprune_nobias")
    node.output[0] = renamed
    nodes.append(helper.make_node("Add", [renamed, name], [out], name=f"{label}.onnxprune_bias_add"))
    add = nodes[-1]  # appended after every node: the pass sorts the graph once its edits are done
    cx.index[id(add)] = len(nodes) - 1
    scope.producers[renamed] = node
    scope.producers[out] = add
    scope.uses[renamed] = [Use(add, 0, scope)]
    scope.uses[name] = [Use(add, 1, scope)]
    _register(groups, node, name, (len(nodes) - 1, 1))
