"""Which element of a stored tensor each element of a tensor derived from it is, through a
chain of element permutations.

A weight is often stored in one layout and read in another: ``W [out, in]`` read as
``Transpose(W)`` by a MatMul, a Conv kernel stored flat and reshaped, a projection given a
batch axis by Unsqueeze for a batched MatMul, an fp16 weight cast to float. When
every op between the stored tensor ``S`` and the reading node moves elements without
changing, dropping or repeating any, the tensor the node reads is

    T = S.reshape(-1)[source]        (``source`` of T's shape, a permutation of 0 … |S|−1)

and ``source`` is what the chain does to ``np.arange(|S|).reshape(S.shape)``: each op is applied
with numpy to the index array, as the op table describes it
(:meth:`onnxprune.ops.OpSpec.transform`): an op that keeps C order (Reshape with a stored or
Constant shape, Flatten, Squeeze, Unsqueeze, Identity, Cast: :meth:`~onnxprune.ops.OpSpec.keeps_order`)
reshapes it to the op's output shape; an op that keeps values in another axis order
(Transpose: :attr:`~onnxprune.ops.OpSpec.keeps_values`) transposes it by its axis map. The
inverse is a scatter, ``S.reshape(-1)[source] = T``. Anything else on the way (Slice, Split,
Concat, DequantizeLinear, a Cast to a non-float type, a shape only known at run time, a data
input other than input 0) is refused, with the op and why.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import NodeProto

from onnxprune.graph import tensors
from onnxprune.graph.index import Scope, node_label
from onnxprune.ops import TransformContext, spec_of

#: The longest chain of ops followed from a stored tensor to its reader.
MAX_CHAIN = 32


def _permutes(axis_map: tuple[int | None, ...], rank: int) -> bool:
    """The axis map is a permutation of the ``rank`` input axes (a Transpose)."""
    return None not in axis_map and sorted(axis_map) == list(range(rank))  # type: ignore[type-var]


def _chain(scope: Scope, name: str, stored: str) -> list[NodeProto] | str:
    """The ops from ``stored`` to ``name``, first op first, each reading the previous on input 0."""
    chain: list[NodeProto] = []
    while name != stored:
        owner = scope.resolve(name)  # a subgraph may read a tensor its enclosing graph computes
        node = owner.producers.get(name) if owner is not None else None
        if node is None or not node.input:
            return f"'{name}' is not computed from '{stored}' alone"
        spec = spec_of(node)
        if not (spec.keeps_values or spec.keeps_order(node)):
            return f"reached through {node.op_type} '{node_label(node)}', which is no element permutation"
        if len(chain) >= MAX_CHAIN:
            return f"reached through more than {MAX_CHAIN} ops"
        chain.append(node)
        name = node.input[0]
    return chain[::-1]


def element_map(scope: Scope, name: str, stored: str, shape: tuple[int, ...]) -> np.ndarray | str:
    """``source`` such that tensor ``name`` is ``S.reshape(-1)[source]`` for the stored tensor
    ``stored`` of ``shape`` (see the module docstring), or why it is not such a rearrangement."""
    chain = _chain(scope, name, stored)
    if isinstance(chain, str):
        return chain
    index = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    for node in chain:
        spec, label = spec_of(node), node_label(node)
        to = spec.output_type(node)
        if to is not None and to not in tensors.FLOAT_TYPES:
            return f"{node.op_type} '{label}' converts it to a non-float type"
        transform = spec.transform(TransformContext(node, 0, index.shape, scope.const_value))
        if transform is None or any(d is None for d in transform.shape):
            return f"{node.op_type} '{label}' has no shape known before run time"
        out = tuple(int(d) for d in transform.shape)  # type: ignore[arg-type]
        if spec.keeps_order(node) and math.prod(out) == index.size:
            index = index.reshape(out)
        elif spec.keeps_values and _permutes(transform.axis_map, index.ndim):
            index = index.transpose(transform.axis_map)  # type: ignore[arg-type]
            if index.shape != out:
                return f"{node.op_type} '{label}' gives shape {list(out)}, not {list(index.shape)}"
        else:
            return f"{node.op_type} '{label}' is no element permutation of shape {list(index.shape)}"
    return index
