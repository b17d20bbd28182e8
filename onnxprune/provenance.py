"""Provenance: what onnxprune did, written into the model for Netron and for audits.

* ``metadata_props``: ``onnxprune.version``, ``onnxprune.options`` (the configuration as
  JSON) and ``onnxprune.summary`` (totals and per-tensor sparsity before -> after, JSON).
* each pruned tensor's ``doc_string`` and a line in each reading node's ``doc_string``:
  its sparsity and pattern, so a user who clicks the node in Netron sees it.

Everything is derived from the configuration and the result (no time stamps), so the same
input and options give byte-identical outputs.
"""

from __future__ import annotations

import json

from onnx import ModelProto, NodeProto

from onnxprune.graph.index import Scope, node_label
from onnxprune.passes.result import PruneResult

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
