"""The model's outputs with one stored tensor replaced, running only the nodes that depend on it.

The error-curve allocation's probe (:class:`onnxprune.passes.curve_allocation.OutputProbe`)
runs the model once per calibrated layer with that layer alone pruned. Only the *tail* of the
weight changes: the nodes that depend on it (through their inputs or a subgraph's reads). Every
other node computes what it computes in the dense model, so the tail's inputs from outside it
(its *cut*) are dense values, and those of a layer further down are, for the most part, computed
from those of the layer before. :class:`Tails` reads the cut through a :class:`~onnxprune.frontier.Frontier`
on the model (each node before the cut runs once per batch over all the layers, when they come
in the order of the graph), and runs the tail as a model of its own (:func:`~onnxprune.frontier.sub_model`)
with the new tensor stored in it. A layer near the output then costs a few nodes, not the model:
the probes cost about half the forward passes they did, plus one session per layer.

Layers in the graph's order do not always nest their tails: the lateral convolutions of a feature
pyramid, or the heads of a detector, sit on parallel branches, and the cut of the next one reads
values deep inside what the last one's frontier had already passed. Given the ``names`` it will be
asked for, in order, :class:`Tails` has the frontier retain every value a cut still to come reads
(:attr:`~onnxprune.frontier.Frontier.retain`), and lets each go after its last cut: on the PP-OCRv4
detector, 16 of 54 probes otherwise ran most of the model again (560 to 604 of its 672 nodes), batch
by batch: side by side, the probes took 103.5 s and take 70.8 s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from onnx import ModelProto, numpy_helper

from onnxprune import runtime
from onnxprune.frontier import Frontier, capture_session, sub_model

log = logging.getLogger(__name__)


class Tails:
    """``outputs(name, value)``: the float outputs of ``model`` over ``feeds`` with its main-graph
    initializer or Constant output ``name`` replaced by ``value`` (the model itself is not
    changed). ``folder``: an empty folder the caller owns and removes, for the cut's values. The
    model must be as given whenever :meth:`outputs` runs (a caller that writes into it restores it
    first): the cut's values are not checked against it (fingerprinting every stored tensor on
    each call took 3 s of all-MiniLM-L6-v2's 25 s of probes)."""

    def __init__(
        self,
        model: ModelProto,
        feeds: Sequence[dict[str, np.ndarray]],
        folder: str | Path,
        names: Sequence[str] = (),
    ) -> None:
        self.model, self.feeds = model, list(feeds)
        self.frontier = Frontier(model, folder, frozen=True)  # the model is never changed here
        self.graph = self.frontier.graph()
        self.names = [o.name for o in model.graph.output]
        # the tensors to be replaced, in the order they will be (module docstring): their cuts retained
        self.todo = list(names)
        self.cuts = {name: self._cut(name, self.graph.descendants(name)) for name in dict.fromkeys(names)}
        self._retain()

    def _outside(self, name: str, tail: set[int]) -> set[str]:
        """The values the nodes ``tail`` (those that depend on ``name``) read from nodes outside it."""
        graph = self.graph
        return {
            read
            for index in tail
            for read in graph.reads[index]
            if read != name and read in graph.producer and graph.producer[read] not in tail
        }

    def _cut(self, name: str, tail: set[int]) -> list[str]:
        """What the tail of ``name`` is fed: the values it reads from outside that depend on the
        graph inputs (the others are :meth:`_static`)."""
        return sorted(read for read in self._outside(name, tail) if read in self.graph.dynamic)

    def _static(self, name: str, tail: set[int]) -> set[int]:
        """The nodes that make the values the tail of ``name`` reads that depend on no graph input
        (Constants, and what is computed from them alone), run in the tail's model instead of fed
        to it: onnxruntime folds them and sees the weights as constants. Fed as inputs, the
        weights of a model stored in Constant nodes (PP-OCRv4's) cannot be fused or pre-packed:
        the tails of PP-OCRv4 rec ran 16–21 % slower, on as many inputs as nodes."""
        static = sorted(read for read in self._outside(name, tail) if read not in self.graph.dynamic)
        return self.graph.ancestors(static, {name})

    def share(self, name: str) -> float:
        """The share of the nodes that run on every batch (those that depend on the graph inputs)
        that the tail of ``name`` runs: what its probe costs against a run of the whole model. A
        node that depends on no input is folded once (a Constant, a weight's Transpose), so it does
        not count: PP-OCRv4 det stores its weights in Constant nodes, half of its 672 nodes."""
        graph = self.graph
        nodes = graph.model.graph.node
        run = [i for i, node in enumerate(nodes) if any(out in graph.dynamic for out in node.output)]
        tail = graph.descendants(name)
        return sum(1 for i in run if i in tail) / len(run) if run else 0.0

    def skip(self, names: set[str]) -> None:
        """Tensors of those given that will not be replaced after all: what only their cuts read is
        retained no longer."""
        self.todo = [name for name in self.todo if name not in names]
        self._retain()

    def _retain(self) -> None:
        """Retain the values the cuts still to come read (and no others)."""
        self.frontier.retain = {value for name in self.todo for value in self.cuts[name]}

    def outputs(
        self,
        name: str,
        value: np.ndarray,
        *,
        each: Callable[[int, dict[str, np.ndarray]], bool] | None = None,
        start: int = 0,
    ) -> dict[str, list[np.ndarray]]:
        """The graph outputs the tail of ``name`` computes, per batch (the others are the dense model's).

        ``each(index, outputs of that batch)`` is called after every batch instead of keeping
        them (the lists are then empty); once it returns True the tail runs no more batches (they
        are still read up to the cut, so the frontier stays whole). The tail runs from batch
        ``start`` (those before are read up to the cut only)."""
        graph = self.graph
        tail = graph.descendants(name)
        outputs = [out for out in self.names if graph.producer.get(out) in tail]
        if name in self.todo:  # its cut is read now: retained no longer for its sake
            self.todo.remove(name)
        if not outputs:
            self._retain()
            return {}
        cut = self.cuts.get(name) or self._cut(name, tail)
        segment = self.frontier.begin(cut)
        self._retain()  # what this segment reads is loaded now; what no later cut reads is dropped at the next
        replaced = {name: numpy_helper.from_array(np.asarray(value), name)}
        sess = None
        found: dict[str, list[np.ndarray]] = {out: [] for out in outputs}
        done = False
        for index, feeds in enumerate(self.feeds):
            given = segment.read(feeds, index)  # the cut: values the nodes before the tail make
            if done or index < start:
                continue
            if sess is None:
                fed = {n: (np.asarray(v).dtype, np.ndim(v)) for n, v in given.items()}
                nodes = sorted(tail | self._static(name, tail))
                sess = capture_session(sub_model(self.model, graph, nodes, fed, outputs, replaced))
            batch = runtime.run_batch(sess, outputs, {**feeds, **given}, index)  # a failure: DataError
            if each is not None:
                done = each(index, batch)
                continue
            for out, v in batch.items():
                found[out].append(v)
        segment.finish()
        log.debug("probe of '%s': %d of %d nodes run", name, len(tail), len(self.model.graph.node))
        return found
