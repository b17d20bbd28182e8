"""Provenance: what onnxprune did, written into the model for Netron and for audits.

* ``metadata_props``: ``onnxprune.version``, ``onnxprune.options`` (the configuration as
  JSON) and ``onnxprune.summary`` (totals and per-tensor sparsity before -> after, JSON).
* ``onnxprune.structure`` and ``onnxprune.structure.options`` after the structural pass
  (channels before, after and dead per group), and a line on each group's source nodes;
  :func:`read_structure` reads them back (for the evaluator and the viewer), never raising.
* ``onnxprune.recipe``: the recipe of the run (:mod:`onnxprune.recipe`, stamped by the
  pipeline); :func:`read_recipe` reads it back as lines for the report, never raising.
* each pruned tensor's ``doc_string`` and a line in each reading node's ``doc_string``:
  its sparsity and pattern, so a user who clicks the node in Netron sees it.

Everything is derived from the configuration and the result (no time stamps), so the same
input and options give byte-identical outputs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import ModelProto, NodeProto

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.index import Scope, node_label
from onnxprune.ops import constant_tensor
from onnxprune.passes.result import PruneResult

if TYPE_CHECKING:
    from onnxprune.passes.structural import StructuralResult
    from onnxprune.recipe import Stage

PREFIX = "onnxprune."
#: The structural pass's summary and options in ``metadata_props`` (see :func:`read_structure`).
STRUCTURE_KEY = PREFIX + "structure"
STRUCTURE_OPTIONS_KEY = PREFIX + "structure.options"


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
        **({"reordered": result.reordered} if result.reordered else {}),
        **({"blocks": {k: v for k, v in result.blocks.items() if k != "records"}} if result.blocks else {}),
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
            if constant_tensor(node) is not None:
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
    _set_metadata(model, STRUCTURE_OPTIONS_KEY, json.dumps(result.config, sort_keys=True))
    _set_metadata(model, STRUCTURE_KEY, json.dumps(summary, sort_keys=True, separators=(",", ":")))
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


def read_structure(model: ModelProto) -> tuple[dict[str, Any] | None, str | None]:
    """(the structural pass's provenance in ``model``'s metadata, or None; a problem to warn of, or None).

    ``onnxprune.structure`` holds ``{"params": [before, after], "macs": [before, after],
    "groups": {name: [channels_before, channels_after, dead_channels, params_removed]},
    "blocked": [[name, reason], ...], "exact_max_diff": float | null}``. It is returned as
    ``{"params": {"before", "after"}, "macs": {"before", "after"}, "groups": [{"group",
    "channels_before", "channels_after", "dead_channels", "params_removed"}], "blocked":
    [{"group", "reason"}], "exact_max_diff", "options"}``, ``options`` the JSON object of
    ``onnxprune.structure.options`` (None when absent or malformed). A model without the key
    gives (None, None); a malformed value gives (None, why) (malformed options: the summary
    and why), never an exception.
    """
    meta = {entry.key: entry.value for entry in model.metadata_props}
    if STRUCTURE_KEY not in meta:
        return None, None
    try:
        structure = _parse_structure(json.loads(meta[STRUCTURE_KEY]))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        detail = (
            f"no {exc} entry" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120] or type(exc).__name__
        )
        return None, (
            f"the model's '{STRUCTURE_KEY}' metadata is malformed ({detail}): its structural-pass summary is left "
            "out; re-run onnxprune prune to record it again"
        )
    options, problem = None, None
    if STRUCTURE_OPTIONS_KEY in meta:
        try:
            options = json.loads(meta[STRUCTURE_OPTIONS_KEY])
        except ValueError:
            options = None
        if not isinstance(options, dict):
            problem = f"the model's '{STRUCTURE_OPTIONS_KEY}' metadata is not a JSON object: the options are left out"
            options = None
    return {**structure, "options": options}, problem


def _count(value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _parse_structure(raw: Any) -> dict[str, Any]:
    """The metadata's compact JSON as self-describing fields; raises ValueError where it does not fit."""
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON object was expected, got {type(raw).__name__}")
    params, macs = raw["params"], raw.get("macs") or [None, None]
    if not isinstance(raw["groups"], dict) or len(params) != 2 or len(macs) != 2:
        raise ValueError("'groups' must be an object, 'params' and 'macs' pairs")
    groups = []
    for name, entry in raw["groups"].items():
        if not isinstance(entry, list) or len(entry) != 4:
            raise ValueError(f"group '{name}' must be [before, after, dead, params removed]")
        before, after, dead, removed = (_count(v) for v in entry)
        groups.append(
            {
                "group": name,
                "channels_before": before,
                "channels_after": after,
                "dead_channels": dead,
                "params_removed": removed,
            }
        )
    blocked = []
    for entry in raw.get("blocked") or []:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError("'blocked' must list [group, reason] pairs")
        blocked.append({"group": str(entry[0]), "reason": str(entry[1])})
    diff = raw.get("exact_max_diff")
    if diff is not None and (isinstance(diff, bool) or not isinstance(diff, (int, float)) or not np.isfinite(diff)):
        raise ValueError(f"'exact_max_diff' {diff!r} is not a number")
    return {
        "params": {"before": _count(params[0]), "after": _count(params[1])},
        "macs": {"before": _count(macs[0], optional=True), "after": _count(macs[1], optional=True)},
        "groups": groups,
        "blocked": blocked,
        "exact_max_diff": None if diff is None else float(diff),
    }


def read_recipe(model: ModelProto) -> dict[str, Any] | None:
    """How ``model`` was made, from the recipe it carries (:func:`onnxprune.recipe.from_model`:
    ``onnxprune.recipe``, or the options of a model pruned before recipes were stamped).

    ``stages`` lists each stage with the options a reader compares candidates by and ``text``,
    one line of them (:func:`stage_summary`); ``text`` is the line of the only stage, or of each
    stage named, joined by " → ". A recipe of one stage also has that stage's options at the top
    (``method``, ``sparsity``, ``scope``, ...). None when onnxprune did not make the model or its
    recipe cannot be read; never raises."""
    from onnxprune.recipe import from_model

    try:
        recipe = from_model(model)
        stages = [stage_summary(stage) for stage in recipe.stages] if recipe is not None else None
    except (OnnxPruneError, ValueError, TypeError, KeyError, AttributeError):  # a malformed recipe: none
        return None
    if not stages:
        return None
    if len(stages) == 1:
        return {**stages[0], "stages": stages}
    return {"stages": stages, "text": " → ".join(f"{s['name']}: {s['text']}" for s in stages)}


def stage_summary(stage: Stage) -> dict[str, Any]:
    """One stage of a recipe as :func:`read_recipe` lists it: its ``name``, ``structured``, the
    options a reader compares candidates by (a weight stage: ``method``, ``sparsity``,
    ``scope``, ``criterion``, ``pattern``, ``allocator`` as it resolves; a structural stage:
    ``sparsity``, ``target_flops``, ``scope``, ``allocator``), ``plan`` as the number of its
    entries, and ``text``, one line of them."""
    summary: dict[str, Any] = {"name": stage.name, "structured": stage.structured, "plan": len(stage.plan)}
    if stage.structured:
        keys = ("sparsity", "target_flops", "scope", "allocator")
        summary.update({key: getattr(stage, key) for key in keys})
        return {**summary, "text": channels_text(summary)}
    config = stage.prune_config()
    summary.update(
        method=config.method,
        sparsity=config.sparsity,
        scope=config.scope,
        criterion=config.criterion,
        pattern=config.pattern_name,
        allocator=config.resolved_allocator,
    )
    return {**summary, "text": recipe_text(summary)}


def recipe_text(recipe: dict[str, Any]) -> str:
    """One line of a weight stage (:func:`stage_summary`)."""
    parts = [str(recipe.get("method") or "magnitude")]
    pattern = recipe.get("pattern")
    if pattern and pattern != "unstructured":
        parts.append(f"{pattern} pattern")
    sparsity = recipe.get("sparsity")
    if isinstance(sparsity, int | float) and not isinstance(sparsity, bool):
        parts.append(f"{100 * sparsity:.4g} %")
    if recipe.get("plan"):
        parts.append(f"a plan of {recipe['plan']} tensor(s)")
    if recipe.get("scope") == "global":
        parts.append(f"global {recipe.get('criterion') or 'magnitude'}")
    elif recipe.get("criterion") not in (None, "magnitude"):
        parts.append(str(recipe["criterion"]))
    if recipe.get("allocator") not in (None, "uniform") and recipe.get("method") not in (None, "magnitude"):
        parts.append(f"{recipe['allocator']} allocation")
    return ", ".join(parts)


def channels_text(summary: dict[str, Any]) -> str:
    """One line of a structural stage (:func:`stage_summary`)."""
    parts = ["channels"]
    if summary.get("sparsity") is not None:
        parts.append(f"{100 * summary['sparsity']:.4g} %")
    if summary.get("target_flops") is not None:
        parts.append(f"{100 * summary['target_flops']:.4g} % of the MACs kept")
    if summary.get("plan"):
        parts.append(f"a plan of {summary['plan']} group(s)")
    if len(parts) == 1:
        return "dead channels"
    if summary.get("scope") == "global":
        parts.append("global")
    if summary.get("allocator") not in (None, "uniform"):
        parts.append(f"{summary['allocator']} allocation")
    return ", ".join(parts)
