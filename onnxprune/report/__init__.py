"""The HTML report of an evaluation: one self-contained file, plots drawn as inline SVG.

    from onnxprune.report import render_html, write_report
    write_report(result.to_dict(), "report.html")

``result`` is the JSON-able dict of an evaluation (``EvalResult.to_dict()``): ``tool``,
``created``, ``environment``, ``data``, ``settings`` and ``models`` (the base first, then
the candidates), each model with ``size``, ``params``, ``layers``, ``compute``,
``latency``, ``accuracy``, ``fidelity`` and ``warnings``. Any part may be null or absent:
the page then says "not measured" there.

Writing is atomic: the page goes to a temporary file in the destination's folder, which
is renamed over the destination only once complete; a failure leaves any previous report
untouched and no temporary file behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxprune.graph.outputs import write_file
from onnxprune.report.page import render_html

__all__ = ["render_html", "write_report"]


def write_report(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render ``result`` and write it to ``path`` atomically; returns the path written."""
    return write_file(render_html(result), path, what="report", example="report.html")
