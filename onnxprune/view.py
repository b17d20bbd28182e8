"""Open a model in Netron, served on localhost, and say what onnxprune recorded in it.

Netron (the optional ``netron`` package: ``pip install 'onnxprune[view]'``) serves the model
file over HTTP and draws its graph in the browser. Its *Model Properties* pane lists the
model's ``metadata_props``, so the provenance that :mod:`onnxprune.provenance` wrote is visible
there (``onnxprune.version``, ``onnxprune.options``, ``onnxprune.summary``, ``onnxprune.recipe``,
and after the structural pass ``onnxprune.structure`` and ``onnxprune.structure.options``); each node's pane
shows its ``doc_string``, where the pruned nodes carry ``onnxprune: ...`` lines.
:func:`provenance` formats the same record for a terminal.

Netron answers requests for the files of the model's folder (that is how it reads external
data): :func:`serve` listens on the loopback interface unless told another host.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from onnx import ModelProto

from onnxprune.errors import ModelLoadError, OptionError, opt
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.model_io import load_model
from onnxprune.provenance import PREFIX, STRUCTURE_KEY, STRUCTURE_OPTIONS_KEY, read_structure
from onnxprune.recipe import RECIPE_KEY

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'onnxprune[view]'"
NODE_PREFIX = "onnxprune:"


@dataclass(frozen=True)
class Address:
    """Where Netron serves a model."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def require_netron() -> ModuleType:
    """The ``netron`` module (:class:`~onnxprune.errors.OptionError` with the install line when it is missing)."""
    try:
        return importlib.import_module("netron")
    except ImportError as exc:
        raise OptionError(f"viewing a model needs Netron, which is not installed: {INSTALL_HINT}") from exc


@contextmanager
def _keep_root_logging() -> Iterator[None]:
    """netron.serve configures the root logger when it has no handler: a library must not."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def serve(
    path: str | os.PathLike[str], *, port: int | None = None, browse: bool = True, host: str = "127.0.0.1"
) -> Address:
    """Serve the model file ``path`` in Netron at ``host:port`` (in a background thread) and return where.

    ``port`` None lets Netron pick (8080, 8081, else a free one), 0 asks the system for a free
    port. ``browse`` opens the page in the default web browser. Stop with :func:`stop`.
    """
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise OptionError(f"port must be a number from 0 to 65535, got {port!r}")
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"'{file}' is not a file: give the path of an .onnx model file")
    netron = require_netron()
    try:
        with _keep_root_logging():
            served = netron.serve(str(file), None, address=(host, port), browse=browse)
    except (OSError, ValueError) as exc:  # address in use, unknown host, no free port
        where = f"{host}:{port}" if port else host
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise OptionError(
            f"cannot serve on {where} ({detail}): choose another {opt('port')}, or leave it out for a free one"
        ) from exc
    address = Address(str(served[0]), int(served[1]))
    logger.info("Netron serves '%s' at %s", file, address.url)
    return address


def stop(address: Address | None = None, *, timeout: float = 5.0) -> None:
    """Stop serving at ``address`` (every model this process serves when None); returns once stopped.

    Netron only asks its server thread to stop; this waits up to ``timeout`` seconds for it to end.
    """
    try:
        netron = importlib.import_module("netron")
    except ImportError:  # nothing can be served without it
        return
    where = None if address is None else (address.host, address.port)
    netron.stop(where)
    deadline = time.monotonic() + timeout
    while netron.status(where) and time.monotonic() < deadline:
        time.sleep(0.02)
    if netron.status(where):
        logger.warning("Netron still serves at %s %.0f s after being asked to stop", where or "some address", timeout)


def is_serving(address: Address) -> bool:
    """Whether Netron still serves at ``address`` in this process."""
    try:
        netron = importlib.import_module("netron")
    except ImportError:
        return False
    return bool(netron.status((address.host, address.port)))


def provenance(model: str | os.PathLike[str] | ModelProto) -> list[str]:
    """What onnxprune recorded in ``model`` (a path or a ModelProto), as lines for a terminal.

    The ``onnxprune.*`` metadata (version, options, summary, recipe, structure) first, then one line
    per ``onnxprune:`` line of a node's doc_string (subgraph nodes with their scope). Empty
    when onnxprune did not write the model. A path is loaded and checked like any input
    (:class:`~onnxprune.errors.ModelLoadError` when it is not a readable model).
    """
    proto = model if isinstance(model, ModelProto) else load_model(model)
    meta = {entry.key: entry.value for entry in proto.metadata_props if entry.key.startswith(PREFIX)}
    lines: list[str] = []
    if PREFIX + "version" in meta:
        lines.append(f"written by onnxprune {meta.pop(PREFIX + 'version')}")
    if PREFIX + "options" in meta:
        lines.append(f"options: {_compact(meta.pop(PREFIX + 'options'))}")
    if PREFIX + "summary" in meta:
        lines.extend(_summary(meta.pop(PREFIX + "summary")))
    if RECIPE_KEY in meta:
        lines.append(f"recipe: {_compact(meta.pop(RECIPE_KEY))}")
    if STRUCTURE_KEY in meta:
        lines.extend(_structure(proto, meta.pop(STRUCTURE_KEY)))
    if STRUCTURE_OPTIONS_KEY in meta:
        lines.append(f"structure options: {_compact(meta.pop(STRUCTURE_OPTIONS_KEY))}")
    lines.extend(f"{key.removeprefix(PREFIX)}: {value}" for key, value in sorted(meta.items()))
    nodes = _node_lines(proto)
    if nodes:
        lines.append(f"nodes ({len(nodes)} lines; Netron shows them in each node's properties):")
        lines.extend(f"  {line}" for line in nodes)
    return lines


def _compact(text: str) -> str:
    """A JSON value on one line (the text itself when it is not JSON)."""
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(", ", ": "))
    except ValueError:
        return text


def _summary(text: str) -> list[str]:
    try:
        totals: dict[str, Any] = json.loads(text)["totals"]
        weights, zeros = int(totals["weights"]), int(totals["zeros_after"])
        return [
            f"summary: {zeros:,} of {weights:,} weights zero ({zeros / max(weights, 1):.1%}) in "
            f"{int(totals['pruned_tensors'])} pruned tensors ({int(totals['zeros_before']):,} zero before); "
            f"{int(totals['skipped_tensors'])} tensors not pruned"
        ]
    except (ValueError, TypeError, KeyError):
        return [f"summary (not as onnxprune writes it): {text}"]


def _structure(model: ModelProto, text: str) -> list[str]:
    structure, problem = read_structure(model)
    if structure is None:
        return [f"structure ({problem}): {text}"]
    params, macs = structure["params"], structure["macs"]
    lines = [
        f"structure: parameters {params['before']:,} -> {params['after']:,}, MACs {macs['before']:,} -> "
        f"{macs['after']:,}; {len(structure['groups'])} channel groups cut, {len(structure['blocked'])} blocked"
    ]
    lines.extend(
        f"  {g['group']}: channels {g['channels_before']} -> {g['channels_after']} ({g['dead_channels']} dead, "
        f"{g['params_removed']:,} parameters removed)"
        for g in structure["groups"]
    )
    lines.extend(f"  {b['group']}: not cut ({b['reason']})" for b in structure["blocked"])
    return lines


def _node_lines(model: ModelProto) -> list[str]:
    out = []
    for scope in Scope.build(model.graph).all_scopes():
        where = f"{scope.path}: " if scope.path else ""
        for node in scope.graph.node:
            for line in node.doc_string.splitlines():
                if line.startswith(NODE_PREFIX):
                    out.append(f"{where}{node_label(node)}: {line.removeprefix(NODE_PREFIX).strip()}")
    return out
