"""Provenance: what onnxprune did, written into the model for Netron and for audits.

* ``metadata_props``: ``onnxprune.version``, ``onnxprune.options`` (the configuration as
  JSON) and ``onnxprune.summary`` (totals and per-tensor sparsity before -> after, JSON).
* ``onnxprune.structure`` and ``onnxprune.structure.options`` after the structural pass
  (channels before, after and dead per group), and a line on each group's source nodes.
* each pruned tensor's ``doc_string`` and a line in each reading node's ``doc_string``:
  its sparsity and pattern, so a user who clicks the node in Netron sees it.

Everything is derived from the configuration and the result (no time stamps), so the same
input and options give byte-identical outputs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from onnx import ModelProto, NodeProto

from onnxprune.graph.index import Scope, node_label
from onnxprune.passes.result import PruneResult

if TYPE_CHECKING:
    from onnxprune.passes.structural import StructuralResult

PREFIX = "onnxprune."


def _set_metadata(model: ModelProto, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def _describe(layer) -> str:  # noqa: ANN001 - LayerResult
    text = (
        f"onnxprune: {layer.pattern} sparsity {layer.sparsity_before:.1%} -> {layer.sparsity_after:.1%} "
        f"({layer.zeros_after} of {layer.numel} weights zero)"
    )
    if layer.method not in (None, "magnitude") or layer.error is not None:
        text += f", {layer.method}"
        if layer.error is not None:
            text += f" (output error {layer.error:.4f}, magnitude {layer.error_magnitude:.4f})"
        if layer.bias:
            text += f", bias {layer.bias}"
    return text


def stamp(model: ModelProto, result: PruneResult, version: str) -> None:
    """Write the provenance of ``result`` into ``model`` (in place)."""
    summary = {
        "totals": result.to_dict()["totals"],
        "layers": {
            layer.key: [round(layer.sparsity_before, 6), round(layer.sparsity_after, 6), layer.pattern]
            for layer in result.pruned
        },
    }
    _set_metadata(model, PREFIX + "version", version)
    _set_metadata(model, PREFIX + "options", json.dumps(result.config, sort_keys=True))
    _set_metadata(model, PREFIX + "summary", json.dumps(summary, sort_keys=True, separators=(",", ":")))

    root = Scope.build(model.graph)
    scopes = {scope.path: scope for scope in root.all_scopes()}
    readers: dict[tuple[str, str], NodeProto] = {}
    for path, scope in scopes.items():
        for node in scope.graph.node:
            label = node_label(node)
            readers.setdefault((path, label), node)
            if node.op_type == "Constant" and node.output:
                readers[(path, f"constant:{node.output[0]}")] = node
    for layer in result.pruned:
        scope = scopes[layer.scope]
        text = _describe(layer)
        tensor = scope.stored_tensor(layer.name)
        if tensor is not None:
            tensor.doc_string = text
        tag = f"[{layer.name}]"
        places = [*layer.readers, (layer.scope, f"constant:{layer.name}")]
        nodes = [readers[place] for place in places if place in readers]
        for node in nodes:  # a node listed twice gets its line replaced, not repeated
            lines = [
                ln for ln in node.doc_string.splitlines() if not (ln.startswith("onnxprune:") and ln.endswith(tag))
            ]
            node.doc_string = "\n".join([*lines, f"{text} {tag}"])


def stamp_structure(model: ModelProto, result: StructuralResult, version: str) -> None:
    """Write what the structural pass did (a :class:`StructuralResult`) into ``model``."""
    groups = [g for g in result.groups if g.removed]
    summary = {
        "params": [result.params_before, result.params_after],
        "macs": [result.macs_before, result.macs_after],
        "groups": {
            g.name: [g.units * g.unit_channels, g.kept * g.unit_channels, g.dead * g.unit_channels, g.params_removed]
            for g in groups
        },
        "blocked": [[g.name, g.blocked] for g in result.blocked],
        "exact_max_diff": result.exact_max_diff,
    }
    _set_metadata(model, PREFIX + "version", version)
    _set_metadata(model, PREFIX + "structure.options", json.dumps(result.config, sort_keys=True))
    _set_metadata(model, PREFIX + "structure", json.dumps(summary, sort_keys=True, separators=(",", ":")))
    nodes = {node_label(node): node for node in model.graph.node}
    for g in groups:
        text = (
            f"onnxprune: channels {g.units * g.unit_channels} -> {g.kept * g.unit_channels} "
            f"({g.removed * g.unit_channels} removed, {g.dead * g.unit_channels} of them dead) [group {g.gid}]"
        )
        for source in g.sources:
            node = nodes.get(source)
            if node is not None:
                lines = [ln for ln in node.doc_string.splitlines() if not ln.startswith("onnxprune: channels")]
                node.doc_string = "\n".join([*lines, text])
