"""Channel groups: the sets of coupled channels that must be removed together.

A *group* is a union-find node over channel spaces. Its channels are counted in *units*
(``n`` of them): a unit is the smallest block that can go (one filter, one neuron, or one
attention head of ``head_dim`` channels). Each axis of a tensor that carries channels has
a :class:`Layout` (defined with the channel rules, in :mod:`onnxprune.ops.channels`): its length is a sequence of *pieces*, each either a :class:`Segment`
of a group (``n × per`` elements: unit ``u`` owns elements ``[u·per, (u+1)·per)`` of the
segment) or a fixed number of elements that never change (an untracked input of a
Concat, say).

Three operations change groups while the graph is walked:

* ``merge(a, b)``: two channel spaces meet element by element (a residual ``Add``, the
  two operands of an attention ``MatMul`` batched over heads): they become one group.
* ``coarsen(g, k)``: a Reshape splits the channel axis into ``[n/k, k·per]`` (heads ×
  head_dim): units become ``k`` times larger. Every segment's ``per`` is multiplied by
  ``k``, so lengths, and every offset computed from them, stay the same.
* ``block(g, reason)``: something the analysis does not understand reads these channels
  (a graph output, LayerNormalization over them, an unknown op): the group is kept whole,
  and the reason is reported.

*Members* are the stored tensors that change when units go: the producers' output axes,
the consumers' input axes, and per-channel parameters (BN, biases). *Edits* are numbers
elsewhere that must follow the new length: a Reshape shape entry, Split sizes, a
depthwise Conv's ``group`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.ops.channels import Layout, Segment

__all__ = ["Edit", "Group", "GroupSet", "Layout", "Member", "Segment", "same_structure", "unit_elements"]


def unit_elements(offset: int, per: int, units: np.ndarray) -> np.ndarray:
    """Element indices of ``units`` in a segment starting at ``offset`` (``per`` elements each)."""
    return (offset + np.asarray(units, dtype=np.int64)[:, None] * per + np.arange(per)[None, :]).reshape(-1)


@dataclass(frozen=True)
class Member:
    """Elements ``[offset, offset + segment.length)`` of ``axis`` of stored tensor ``tensor``.

    kind: "out" (a producer's output channels), "in" (a consumer's input channels) or
    "param" (per-channel parameters: bias, BN, a broadcast constant).
    reader: the (node name, input index) that reads the tensor this way.
    """

    tensor: str
    axis: int
    offset: int
    segment: Segment
    kind: str
    node: str
    reader: tuple[int, int]

    def elements(self, units: np.ndarray) -> np.ndarray:
        """Indices along ``axis`` of the elements that ``units`` own here."""
        return unit_elements(self.offset, self.segment.per, units)


@dataclass(frozen=True)
class Edit:
    """A number that must equal the new length of ``pieces`` (plus ``extra`` fixed elements).

    target: ("tensor", name, index) for an entry of a stored int tensor (Reshape shape,
    Split sizes), ("attr", node name, attribute) for an int attribute (Conv ``group``), or
    ("input", node, index) for an optional input of zeros along the channels, which is dropped
    instead (an LSTM's initial state: omitted, it is zeros).
    reader: (node name, input index) of the node reading the tensor, for cloning.
    """

    target: tuple[str, str, object]
    pieces: tuple[Segment | int, ...]
    reader: tuple[str, int] | None = None


@dataclass(eq=False)
class Group:
    gid: int
    n: int  # units
    unit: int = 1  # source channels per unit
    parent: Group | None = None
    segments: list[Segment] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)

    def root(self) -> Group:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def segment(self, per: int) -> Segment:
        seg = Segment(self, per)
        self.root().segments.append(seg)
        return seg

    @property
    def name(self) -> str:
        return self.sources[0] if self.sources else f"group {self.gid}"


class GroupSet:
    """All groups of one analysis (union-find roots are the groups)."""

    def __init__(self) -> None:
        self._all: list[Group] = []

    def new(self, n: int, source: str) -> Group:
        g = Group(len(self._all), n, sources=[source])
        self._all.append(g)
        return g

    def roots(self) -> list[Group]:
        return [g for g in self._all if g.parent is None]

    def by_id(self, gid: int) -> Group:
        return self._all[gid].root()

    @staticmethod
    def block(groups: list[Group], reason: str) -> None:
        for g in groups:
            r = g.root()
            if reason not in r.blocked:
                r.blocked.append(reason)

    @staticmethod
    def coarsen(group: Group, k: int) -> bool:
        """Make units ``k`` times larger; False (and nothing changed) if ``n`` is not divisible."""
        g = group.root()
        if k == 1:
            return True
        if g.n % k:
            return False
        for seg in g.segments:
            seg.per *= k
        g.n //= k
        g.unit *= k
        return True

    def merge(self, a: Group, b: Group) -> bool:
        """One group from two whose segments meet element by element (same total length)."""
        ra, rb = a.root(), b.root()
        if ra is rb:
            return True
        big, small = (ra, rb) if ra.n >= rb.n else (rb, ra)
        if big.n % small.n or not self.coarsen(big, big.n // small.n):
            return False
        keep, gone = (ra, rb) if ra.gid < rb.gid else (rb, ra)
        gone.parent = keep
        keep.segments.extend(gone.segments)
        keep.members.extend(gone.members)
        keep.edits.extend(gone.edits)
        keep.blocked.extend(r for r in gone.blocked if r not in keep.blocked)
        keep.sources.extend(s for s in gone.sources if s not in keep.sources)
        keep.sinks.extend(s for s in gone.sinks if s not in keep.sinks)
        keep.unit = max(keep.unit, gone.unit)
        gone.segments, gone.members, gone.edits, gone.blocked = [], [], [], []
        return True


def same_structure(a: Layout, b: Layout) -> bool:
    """True if two layouts split their axis into pieces of the same lengths."""
    if len(a.pieces) != len(b.pieces):
        return False
    for p, q in zip(a.pieces, b.pieces, strict=True):
        if isinstance(p, Segment) != isinstance(q, Segment):
            return False
        length_p = p.length if isinstance(p, Segment) else p
        length_q = q.length if isinstance(q, Segment) else q
        if length_p != length_q:
            return False
    return True
