"""Add a per-output change to a consumer's bias, creating the bias where there is none.

Conv/ConvTranspose/Gemm hold it as input 2; a MatMul in the Add that alone follows it
with a stored per-output vector, else a new Add is inserted after it; LSTM/GRU/RNN in
the first half (the input weights' half) of ``B``. A bias created for a node whose
outputs are themselves a channel group is registered as a member of that group, so the
removal that follows slices it too.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from onnxprune.graph import tensors
from onnxprune.graph.index import node_label
from onnxprune.structure.analysis import Context
from onnxprune.structure.groups import Group, Member

_RECURRENT = ("LSTM", "GRU", "RNN")


def _dtype(cx: Context, node: NodeProto) -> np.dtype:
    stored = cx.stored(node, 1)
    if stored is not None and stored[1][0] == cx.node_id(node):
        return tensors.read_array(cx.scope.stored_tensor(stored[0])).dtype
    return np.dtype(np.float32)


def _fresh(cx: Context, base: str) -> str:
    taken = set(cx.scope.initializers) | set(cx.scope.producers) | cx.scope.inputs
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    cx.scope.initializers[name] = TensorProto()  # reserve
    return name


def _register(groups: list[Group], node: NodeProto, name: str, reader: tuple[int, int]) -> None:
    label = node_label(node)
    for group in groups:
        for member in group.members:
            if member.kind == "out" and member.node == label:
                group.members.append(Member(name, 0, member.offset, member.segment, "out", label, reader))
                return


def _update(tensor: TensorProto, delta: np.ndarray) -> None:
    values = tensors.read_array(tensor)
    new = (values.astype(np.float64).reshape(-1) + delta.reshape(-1)).reshape(values.shape)
    tensors.write_array(tensor, new.astype(values.dtype))


def add_to_bias(cx: Context, groups: list[Group], node: NodeProto, delta: np.ndarray) -> None:
    """Add ``delta`` (in output units) to the bias of consumer ``node`` (see module docstring).

    A Gemm's bias is scaled by ``beta`` in its output, so ``C`` gets ``delta / beta``. A
    bias that other nodes also read, or a broadcast one that must grow to a full vector,
    is replaced by a new tensor of this node's own, which follows its output channels.
    """
    model = cx.model
    index = cx.node_id(node)
    if node.op_type == "Gemm":
        beta = float(cx.attr(node, "beta", 1.0))
        if beta == 0.0:
            raise ValueError(f"{node_label(node)} ignores its bias (beta = 0)")
        delta = delta / beta
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        if len(node.input) > 2 and node.input[2]:
            stored = cx.stored(node, 2)
            if stored is None:
                raise ValueError(f"{node_label(node)} has a computed bias")
            tensor = cx.scope.stored_tensor(stored[0])
            shared = len(cx.uses(stored[0])) > 1 or stored[1][0] != index
            if tensors.numel(tensor) == delta.size and not shared:
                _update(tensor, delta)
                return
            values = tensors.read_array(tensor)
            full = np.broadcast_to(values.astype(np.float64).reshape(-1), delta.shape) + delta
            name = _fresh(cx, f"{node_label(node)}.onnxprune_bias")
            model.graph.initializer.append(numpy_helper.from_array(full.astype(values.dtype), name))
            node.input[2] = name
            for group in groups:  # the old tensor is no longer this node's bias
                group.members[:] = [m for m in group.members if (m.tensor, m.reader) != stored]
            _register(groups, node, name, (index, 2))
            return
        name = _fresh(cx, f"{node_label(node)}.onnxprune_bias")
        model.graph.initializer.append(numpy_helper.from_array(delta.astype(_dtype(cx, node)), name))
        cx.scope.initializers[name] = model.graph.initializer[-1]
        while len(node.input) < 2:
            node.input.append("")
        node.input.append(name)
        _register(groups, node, name, (index, 2))
        return
    if node.op_type in _RECURRENT:
        half = delta.reshape(delta.shape[0], -1)
        if len(node.input) > 3 and node.input[3]:
            stored = cx.stored(node, 3)
            if stored is None:
                raise ValueError(f"{node_label(node)} has a computed bias")
            tensor = cx.scope.stored_tensor(stored[0])
            values = tensors.read_array(tensor).astype(np.float64)
            values[:, : half.shape[1]] += half
            tensors.write_array(tensor, values.astype(tensors.read_array(tensor).dtype))
            return
        full = np.concatenate([half, np.zeros_like(half)], axis=1)
        name = _fresh(cx, f"{node_label(node)}.onnxprune_bias")
        model.graph.initializer.append(numpy_helper.from_array(full.astype(_dtype(cx, node)), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input.append(name)
        return
    # MatMul: the following Add's stored vector, or a new Add
    out = node.output[0]
    uses = cx.uses(out)
    if len(uses) == 1 and uses[0].node.op_type == "Add" and not cx.scope.is_output(out):
        add = uses[0].node
        other = 1 - uses[0].index
        stored = cx.stored(add, other)
        if stored is not None and len(cx.uses(stored[0])) == 1:
            tensor = cx.scope.stored_tensor(stored[0])
            dims = [int(d) for d in tensor.dims]
            if dims and dims[-1] == delta.size and int(np.prod(dims)) == delta.size:
                _update(tensor, delta)
                return
    name = _fresh(cx, f"{node_label(node)}.onnxprune_bias")
    model.graph.initializer.append(numpy_helper.from_array(delta.astype(_dtype(cx, node)), name))
    renamed = _fresh(cx, f"{out}.onnxprune_nobias")
    node.output[0] = renamed
    model.graph.node.append(
        helper.make_node("Add", [renamed, name], [out], name=f"{node_label(node)}.onnxprune_bias_add")
    )
    _register(groups, node, name, (len(model.graph.node) - 1, 1))
