"""Control flow: If, Loop and Scan, ops whose work is in their subgraphs.

- If runs one of its branches (``then_branch``, ``else_branch``); which one is known only at
  run time, so the compute count lists both node by node and adds neither to the totals.
- Loop and Scan run their ``body`` once per iteration (or per scanned slice), a number of
  times not known statically: the body is counted once into the totals, with a note.

None of them does work of its own (:attr:`~onnxprune.ops.spec.OpSpec.no_work`); the work is
the nodes of the subgraphs, counted where they are.
"""

from __future__ import annotations

from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec


class ControlFlowSpec(OpSpec):
    no_work = True

    def __init__(self, subgraphs: str) -> None:
        self.subgraphs = subgraphs


register(ControlFlowSpec("branches"), "If")
register(ControlFlowSpec("repeated"), "Loop", "Scan")
