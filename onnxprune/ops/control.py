"""Control flow: If, Loop and Scan, ops whose work is in their subgraphs.

- If runs one of its branches (``then_branch``, ``else_branch``); which one is known only at
  run time, so the compute count lists both node by node and adds neither to the totals.
- Loop and Scan run their ``body`` once per iteration (or per scanned slice), a number of
  times not known statically: the body is counted once into the totals, with a note.

None of them does work of its own (:attr:`~onnxprune.ops.spec.OpSpec.no_work`); the work is
the nodes of the subgraphs, counted where they are.

How a Loop's or Scan's body lines up with the node (:class:`BodyLayout`, what
:mod:`onnxprune.graph.expose` reads to add a scan output or a loop-carried value)::

    Loop  node inputs  M, cond, v_initial…        body inputs   iteration, cond, v…
          node outputs v_final…, scan_outputs…    body outputs  cond, v…, scan_output_t…
    Scan  node inputs  state_initial…, scanned…   body inputs   state…, slice…
          node outputs state_final…, scan_outputs… body outputs state…, scan_output_t…

A Loop's carried values may change shape from one iteration to the next; a Scan's states and
every scan output keep one shape. Scan before opset 9 (a batch axis and ``sequence_lens``) has
no layout here.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec


@dataclass(frozen=True)
class BodyLayout:
    """How a repeated body's inputs and outputs line up with its node's (module docstring)."""

    inputs_before: int  # node inputs before the carried values (Loop: M and cond)
    outputs_before: int  # body outputs that are no node output (Loop: cond)
    carried_may_grow: bool  # a carried value may change shape between iterations (Loop)
    scan_output_attributes: tuple[str, ...] = ()  # attributes holding one entry per scan output


class ControlFlowSpec(OpSpec):
    no_work = True

    def __init__(self, subgraphs: str, body: BodyLayout | None = None) -> None:
        self.subgraphs = subgraphs
        self.body = body


register(ControlFlowSpec("branches"), "If")
register(ControlFlowSpec("repeated", BodyLayout(2, 1, carried_may_grow=True)), "Loop")
register(
    ControlFlowSpec("repeated", BodyLayout(0, 0, False, ("scan_output_axes", "scan_output_directions"))),
    "Scan",
    since=9,
)
register(ControlFlowSpec("repeated"), "Scan", until=8)
