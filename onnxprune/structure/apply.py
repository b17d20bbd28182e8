"""Remove units of channel groups from a graph: slice every member, fix every edit.

Given ``removed[gid]`` (unit indices of group ``gid``), each member tensor loses, along
its axis, elements ``offset + u·per + [0, per)`` for every removed unit ``u`` of its
segment (``per`` read at apply time, after any coarsening). Each edit gets the new
length of its pieces, or, for an optional input of zeros along the channels (a recurrent
layer's initial state made at run time), drops that input. A stored tensor read by nodes
other than those the analysis recorded (a shape constant shared by several Reshapes) is first
cloned for the recorded readers, so the others keep the original (:meth:`~onnxprune.graph.gs_edit.EditGraph.own`).
The edits are made on the structural pass's one gs graph
(:class:`~onnxprune.graph.gs_edit.EditGraph`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto

from onnxprune.graph.gs_edit import EditGraph
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


def apply_removal(
    target: ModelProto | EditGraph, groups: list[Group], removed: Mapping[int, np.ndarray]
) -> dict[str, tuple]:
    """Remove ``removed[gid]`` units from each group (see module docstring), on ``target``'s
    gs graph (a model is opened, edited and written back here; an :class:`EditGraph` is left
    open for its owner to commit).

    Returns the new shape of every sliced tensor (by its final name).
    """
    graph = target if isinstance(target, EditGraph) else EditGraph(target)
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
    shapes: dict[str, tuple] = {}
    for name, axes in cuts.items():
        name = graph.own(name, readers[name])
        values = graph.values(name)
        for axis, parts in axes.items():
            values = np.delete(values, np.unique(np.concatenate(parts)), axis=axis)
        graph.set_values(name, values)
        shapes[name] = tuple(values.shape)
    for edit in edits:
        _apply_edit(graph, edit, new_length(edit.pieces, removed))
    log.info("removed units from %d group(s), sliced %d tensor(s), %d edit(s)", len(removed), len(cuts), len(edits))
    if graph is not target:
        graph.commit()
    return shapes


def _apply_edit(graph: EditGraph, edit: Edit, value: int) -> None:
    kind, where, what = edit.target
    if kind == "input":  # an optional input of zeros along the channels: dropped (zeros are its default)
        graph.drop_input(int(where), int(what))
        return
    if kind == "tensor":
        name = graph.own(str(where), {edit.reader} if edit.reader is not None else set())
        values = np.array(graph.values(name), copy=True)
        values.reshape(-1)[int(what)] = value
        graph.set_values(name, values)
        return
    name, index = (what, None) if kind == "attr" else what
    graph.set_attribute(int(where), str(name), value, None if index is None else int(index))
