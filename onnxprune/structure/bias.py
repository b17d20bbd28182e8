"""Add a per-output change to a consumer's bias, creating the bias where there is none.

Conv/ConvTranspose/Gemm hold it as input 2 (``C``); a MatMul in the Add that alone follows
it with a stored per-output vector, else a new ``Add(MatMul output, vector)`` takes over the
MatMul's output name, so every reader of that output (graph output included) reads the sum;
LSTM/GRU/RNN in the first half (the input weights' half) of ``B``. Every edit is made on the
structural pass's gs graph (:class:`~onnxprune.graph.gs_edit.EditGraph`), and every question
about the consumer's inputs is asked of that graph as edited so far. A new bias is a real
initializer from the start: no placeholder is ever stored. A bias created for a node whose
outputs are themselves a channel group is registered as a member of that group, so the
removal that follows slices it too.

Consumers are named by their index in the analysis's node order (what
:meth:`~onnxprune.structure.analysis.Context.node_id` gives). Where no bias can carry the
change (a Gemm with ``beta = 0``, a bias computed by other nodes, a MatMul whose weight is
on the left), :func:`bias_problem` says why, and the caller skips the consumer with that
reason.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from onnxprune.graph.gs_edit import EditGraph
from onnxprune.graph.index import node_label
from onnxprune.ops import SlotContext, spec_of
from onnxprune.structure.groups import Group, Member


def _proto(graph: EditGraph, index: int) -> NodeProto:
    proto = graph.source(graph.node(index))
    if proto is None:  # pragma: no cover - consumers come from the analysis, which saw the model's nodes
        raise ValueError(f"node {index} was added by an edit: it has no bias to change")
    return proto


def bias_problem(graph: EditGraph, index: int) -> str | None:
    """Why consumer ``index`` cannot take a per-output bias change; None when :func:`add_to_bias` can."""
    node = _proto(graph, index)
    label = node_label(node)
    spec = spec_of(node)
    slot = spec.bias_input(node)
    if slot is not None:
        if spec.bias_gain(node) == 0.0:
            return f"{label} ignores its bias (its gain is 0: Gemm beta = 0)"
        inputs = graph.node(index).inputs
        if len(inputs) > slot and inputs[slot].name and graph.stored(index, slot) is None:
            return f"{label} has a computed bias"
        return None
    if spec.macs is not None and spec.slot(SlotContext(node, 1, 2, lambda name: None)).role == "weight":
        if graph.stored(index, 1) is None:
            return f"{label} has its weight on the left: a bias would be per row, not per output"
        return None  # x·W: a new Add after it holds the bias
    return f"{label} ({node.op_type}) has no bias"


def _dtype(graph: EditGraph, index: int, slot: int = 1) -> np.dtype:
    """The element type node ``index`` sees at input ``slot`` (default its weight's, which is
    its output's): the stored tensor's, or the target of a Cast on the way."""
    node = graph.node(index)
    tensor = node.inputs[slot] if len(node.inputs) > slot else None
    for _ in range(8):
        if tensor is None or not tensor.name:
            break
        if graph.constant(tensor.name) is not None:
            return graph.dtype(tensor.name) or np.dtype(np.float32)
        producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        proto = graph.source(producer) if producer is not None else None
        if proto is None or not spec_of(proto).keeps_layout:
            break
        to = spec_of(proto).output_type(proto)
        if to is not None:
            return np.dtype(helper.tensor_dtype_to_np_dtype(to))
        tensor = producer.inputs[0]
    return np.dtype(np.float32)


def _register(groups: list[Group], label: str, name: str, reader: tuple[int, int]) -> None:
    """Make bias ``name`` a member of the group of the node's outputs (its first ``out`` member's layout)."""
    for group in groups:
        for member in group.members:
            if member.kind == "out" and member.node == label:
                group.members.append(Member(name, 0, member.offset, member.segment, "out", label, reader))
                return


def _register_recurrent(graph: EditGraph, groups: list[Group], index: int, name: str, reader: tuple[int, int]) -> None:
    """A new ``B [dirs, 2·gates·H]`` follows the hidden units like ``W [dirs, gates·H, I]``, in both halves."""
    stored = graph.stored(index, 1)
    if stored is None:
        return
    rows = tuple(graph.constant(stored[0]).shape)[1]
    label = node_label(_proto(graph, index))
    for group in groups:
        like = [m for m in group.members if m.kind == "out" and m.node == label and m.tensor == stored[0]]
        for m in like:
            for shift in (0, rows):
                group.members.append(Member(name, 1, m.offset + shift, m.segment, "out", label, reader))


def _update(graph: EditGraph, name: str, delta: np.ndarray) -> None:
    values = graph.values(name)
    new = (values.astype(np.float64).reshape(-1) + delta.reshape(-1)).reshape(values.shape)
    graph.set_values(name, new.astype(values.dtype))


def add_to_bias(graph: EditGraph, groups: list[Group], index: int, delta: np.ndarray) -> None:
    """Add ``delta`` (in output units) to the bias of consumer ``index`` (see module docstring).

    A Gemm's bias is scaled by ``beta`` in its output, so ``C`` gets ``delta / beta``. A
    bias that other nodes also read, or a broadcast one that must grow to a full vector,
    is replaced by a new tensor of this node's own, which follows its output channels.
    Raises ValueError with :func:`bias_problem`'s reason where no bias can be added.
    """
    problem = bias_problem(graph, index)
    if problem is not None:
        raise ValueError(problem)
    node = _proto(graph, index)
    label = node_label(node)
    spec = spec_of(node)
    inputs = graph.node(index).inputs
    delta = delta / spec.bias_gain(node)  # Gemm: C enters the output times beta
    if spec.bias_layout == "per_output":
        if len(inputs) > 2 and inputs[2].name:
            stored = graph.stored(index, 2)
            assert stored is not None  # bias_problem: not computed
            name = stored[0]
            shared = graph.uses(name) > 1 or stored[1][0] != index
            if int(np.prod(graph.constant(name).shape)) == delta.size and not shared:
                _update(graph, name, delta)
                return
            values = graph.values(name)
            full = np.broadcast_to(values.astype(np.float64).reshape(-1), delta.shape) + delta
            # the node's own copy is read directly: in the type the node saw (after a Cast from fp16 storage)
            bias = graph.add_constant(f"{label}.onnxprune_bias", full.astype(_dtype(graph, index, 2)))
            graph.set_input(index, 2, bias)
            for group in groups:  # the old tensor is no longer this node's bias
                group.members[:] = [m for m in group.members if (m.tensor, m.reader) != stored]
            _register(groups, label, bias.name, (index, 2))
            return
        bias = graph.add_constant(f"{label}.onnxprune_bias", delta.astype(_dtype(graph, index)))
        graph.set_input(index, 2, bias)
        _register(groups, label, bias.name, (index, 2))
        return
    if spec.bias_layout == "gates":
        half = delta.reshape(delta.shape[0], -1)
        if len(inputs) > 3 and inputs[3].name:
            stored = graph.stored(index, 3)
            assert stored is not None  # bias_problem: not computed
            values = graph.values(stored[0])
            new = values.astype(np.float64)
            new[:, : half.shape[1]] += half
            graph.set_values(stored[0], new.astype(values.dtype))
            return
        full = np.concatenate([half, np.zeros_like(half)], axis=1)
        bias = graph.add_constant(f"{label}.onnxprune_bias", full.astype(_dtype(graph, index)))
        graph.set_input(index, 3, bias)
        _register_recurrent(graph, groups, index, bias.name, (index, 3))
        return
    _matmul_bias(graph, groups, index, delta)


def _matmul_bias(graph: EditGraph, groups: list[Group], index: int, delta: np.ndarray) -> None:
    """The following Add's stored vector, or a new Add that takes over the MatMul's output name."""
    out = graph.node(index).outputs[0]
    readers = graph.readers(out.name)
    if len(readers) == 1 and graph.uses(out.name) == 1 and not graph.is_output(out.name):
        ((add_index, slot),) = readers
        add = graph.source(graph.node(add_index)) if add_index >= 0 else None
        if add is not None and spec_of(add).adds_bias:
            stored = graph.stored(add_index, 1 - slot)
            if stored is not None and graph.uses(stored[0]) == 1:
                dims = [int(d) for d in graph.constant(stored[0]).shape]
                if dims and dims[-1] == delta.size and int(np.prod(dims)) == delta.size:
                    _update(graph, stored[0], delta)
                    return
    label = node_label(_proto(graph, index))
    bias = graph.add_constant(f"{label}.onnxprune_bias", delta.reshape(-1).astype(_dtype(graph, index)))
    renamed = graph.take_output(index, f"{out.name}.onnxprune_nobias")
    add_index = graph.add_after(index, "Add", [renamed, bias], [out], name=f"{label}.onnxprune_bias_add")
    _register(groups, label, bias.name, (add_index, 1))
