"""The op table: specs registered by (domain, op type, opset range), and the one lookup.

``register(spec, "Conv")`` makes ``spec`` answer for ``Conv`` of the ONNX domain at every
opset; ``since``/``until`` bound it (an op whose meaning changed at an opset gets one spec
per range). :func:`lookup` returns the spec for a node's op (``""`` and ``"ai.onnx"`` are
the same domain), or :data:`UNKNOWN`, whose answers are all neutral.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from onnxprune.ops.spec import OpSpec

ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class _Entry:
    since: int
    until: int | None
    spec: OpSpec


_TABLE: dict[tuple[str, str], list[_Entry]] = {}
#: (domain, op type) -> the spec of its newest opset range, kept from the first such lookup
#: until the op is registered or forgotten again (a model's walk asks for thousands)
_NEWEST: dict[tuple[str, str], OpSpec] = {}

#: The spec of an op nobody registered: every answer neutral (no weight, no MACs, no bias).
UNKNOWN = OpSpec()


def _domain(domain: str) -> str:
    return "" if domain in ONNX_DOMAINS else domain


def register(spec: OpSpec, *op_types: str, domain: str = "", since: int = 1, until: int | None = None) -> OpSpec:
    """Make ``spec`` answer for ``op_types`` of ``domain`` at opsets ``since``..``until`` (inclusive)."""
    for op in op_types:
        _NEWEST.pop((_domain(domain), op), None)
        entries = _TABLE.setdefault((_domain(domain), op), [])
        for other in entries:
            if other.since <= (until or 10**9) and since <= (other.until or 10**9):
                raise ValueError(f"{domain or 'ai.onnx'}::{op} opsets {since}..{until} overlap an earlier spec")
        entries.append(_Entry(since, until, spec))
    return spec


def lookup(op_type: str, domain: str = "", opset: int | None = None) -> OpSpec:
    """The spec for ``op_type`` of ``domain`` at ``opset`` (None: the newest), or :data:`UNKNOWN`."""
    key = (_domain(domain), op_type)
    if opset is None and key in _NEWEST:
        return _NEWEST[key]
    entries = _TABLE.get(key)
    if not entries:
        return UNKNOWN
    if opset is None:
        newest = _NEWEST[key] = max(entries, key=lambda e: e.since).spec
        return newest
    for entry in entries:
        if entry.since <= opset and (entry.until is None or opset <= entry.until):
            return entry.spec
    return UNKNOWN


def spec_of(node: NodeProto, opset: int | None = None) -> OpSpec:
    """The spec of ``node``'s op (see :func:`lookup`)."""
    return lookup(node.op_type, node.domain, opset)


def unregister(*op_types: str, domain: str = "") -> None:
    """Forget every spec of ``op_types`` in ``domain`` (for tests and plug-ins that re-register)."""
    for op in op_types:
        _TABLE.pop((_domain(domain), op), None)
        _NEWEST.pop((_domain(domain), op), None)


def registered() -> list[tuple[str, str]]:
    """Every (domain, op type) in the table."""
    return sorted(_TABLE)
