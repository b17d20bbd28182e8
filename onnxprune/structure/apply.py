"""Remove units of channel groups from a graph: slice every member, fix every edit.

Given ``removed[gid]`` (unit indices of group ``gid``), each member tensor loses, along
its axis, elements ``offset + u·per + [0, per)`` for every removed unit ``u`` of its
segment (``per`` read at apply time, after any coarsening). Each edit gets the new
length of its pieces. A stored tensor read by nodes other than those the analysis
recorded (a shape constant shared by several Reshapes) is first cloned for the recorded
readers, so the others keep the original.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto, TensorProto, helper

from onnxprune.graph import tensors
from onnxprune.graph.edit import FreshNames
from onnxprune.graph.index import Scope
from onnxprune.structure.groups import Edit, Group, Segment

log = logging.getLogger(__name__)


def new_length(pieces: tuple[Segment | int, ...], removed: Mapping[int, np.ndarray]) -> int:
    """The length of ``pieces`` once the removed units are gone."""
    total = 0
    for p in pieces:
        if isinstance(p, Segment):
            root = p.root()
            total += (root.n - len(removed.get(root.gid, ()))) * p.per
        else:
            total += p
    return total


class _Clones:
    """Stored tensors, cloned for a set of readers when others read them too."""

    def __init__(self, model: ModelProto) -> None:
        self.model = model
        self.scope = Scope.build(model.graph)
        self.nodes = list(model.graph.node)
        self.ids = {id(n): i for i, n in enumerate(self.nodes)}
        self.fresh = FreshNames(model)

    def resolve(self, name: str, readers: set[tuple[int, int]]) -> TensorProto:
        uses = {(self.ids.get(id(u.node), -1), u.index) for u in self.scope.uses.get(name, [])}
        tensor = self.scope.stored_tensor(name)
        assert tensor is not None, name
        if uses <= readers and not self.scope.is_output(name):
            return tensor
        clone = TensorProto()
        clone.CopyFrom(tensor)
        new = clone.name = self.fresh(f"{name}.onnxprune_1")
        self.model.graph.initializer.append(clone)
        for node_index, input_index in readers:
            self.nodes[node_index].input[input_index] = new
        return self.model.graph.initializer[-1]


def apply_removal(model: ModelProto, groups: list[Group], removed: Mapping[int, np.ndarray]) -> dict[str, tuple]:
    """Remove ``removed[gid]`` units from each group (see module docstring).

    Returns the new shape of every sliced tensor (by its final name).
    """
    removed = {gid: np.asarray(sorted({int(u) for u in units}), dtype=np.int64) for gid, units in removed.items()}
    removed = {gid: units for gid, units in removed.items() if units.size}
    cuts: dict[str, dict[int, list[np.ndarray]]] = {}
    readers: dict[str, set[tuple[int, int]]] = {}
    edits: list[Edit] = []
    for group in groups:
        units = removed.get(group.gid)
        if units is None:
            continue
        if units.max() >= group.n or units.size >= group.n:
            raise ValueError(f"cannot remove {units.size} of {group.n} units of {group.name}")
        for member in group.members:
            cuts.setdefault(member.tensor, {}).setdefault(member.axis, []).append(member.elements(units))
            readers.setdefault(member.tensor, set()).add(member.reader)
        edits.extend(e for e in group.edits if e not in edits)
    clones = _Clones(model)
    shapes: dict[str, tuple] = {}
    for name, axes in cuts.items():
        tensor = clones.resolve(name, readers[name])
        values = tensors.read_array(tensor)
        for axis, parts in axes.items():
            values = np.delete(values, np.unique(np.concatenate(parts)), axis=axis)
        del tensor.dims[:]
        tensor.dims.extend(values.shape)
        tensors.write_array(tensor, values)
        shapes[tensor.name] = tuple(values.shape)
    for edit in edits:
        _apply_edit(clones, edit, new_length(edit.pieces, removed))
    log.info("removed units from %d group(s), sliced %d tensor(s), %d edit(s)", len(removed), len(cuts), len(edits))
    return shapes


def _apply_edit(clones: _Clones, edit: Edit, value: int) -> None:
    kind, where, what = edit.target
    if kind == "tensor":
        readers = {edit.reader} if edit.reader is not None else set()
        tensor = clones.resolve(str(where), readers)
        values = tensors.read_array(tensor).copy()
        flat = values.reshape(-1)
        flat[int(what)] = value
        tensors.write_array(tensor, values)
        return
    node = clones.nodes[int(where)]
    name, index = (what, None) if kind == "attr" else what
    for attr in node.attribute:
        if attr.name == name:
            if index is None:
                attr.i = value
            else:
                attr.ints[int(index)] = value
            return
    if index is None:
        node.attribute.append(helper.make_attribute(str(name), value))
    else:  # pragma: no cover - the analysis only records list edits of existing attributes
        raise ValueError(f"attribute {name} missing on {node.name}")
