"""The model's own values where the last capture stopped, so that the next one runs only what lies beyond.

Sequential calibration captures wave after wave on the model pruned so far: wave ``k`` reads the
inputs ``A_k`` of its layers. Run from the graph inputs, every capture runs the model as deep as
its wave, so ``L`` waves cost about ``L / 2`` forward passes. Yet the model before wave ``k + 1``
differs from the one before wave ``k`` only in what wave ``k`` wrote, and no ancestor of ``A_k``
reads that (a wave's layers do not feed each other). So every value that wave ``k``'s run computed
is still the model's value, and of those the next run needs only its *frontier*: the values the
nodes already run (the *region*) produced that a node outside the region reads.

:class:`Frontier` keeps the frontier of each calibration batch in memory up to
:data:`FRONTIER_MEMORY_BYTES`, beyond that as ``.npy`` files in a folder the caller owns, read
back memory-mapped. Each capture (:meth:`Frontier.begin`) runs a *segment*: the
nodes its names need that the region does not hold, with the frontier's values as extra graph
inputs; it returns the names and also the values that the grown region's frontier adds. The
waves' own side then costs one forward pass in all (each node runs once per batch), plus the
sessions of the segments.

Kept honest by the graph, not by the caller: the region's nodes are fingerprinted (CRC-32 of
each node, its subgraphs and attributes included, chained with that of every stored tensor it
reads). Should a fingerprint change between captures (a weight upstream written, a node
rewired), the frontier is dropped and the next capture runs from the graph inputs. Values that
do not depend on a graph input (constants, and what is computed from constants only) are never
kept: a segment recomputes them and onnxruntime folds them. A random generator's output counts
as a value of the inputs (it is drawn once and kept).

A caller that knows which values its later captures read names them in :attr:`Frontier.retain`:
such a value is kept once a segment computes it, and stays kept while it is named there, even when
no node outside the region reads it any more, so a later capture that needs it reads it instead of
running every node before it again (the probe's tails of parallel branches,
:mod:`onnxprune.tails`). A retained value is kept only within ``budget``: one that would pass it
is not kept (computed again when needed), and the frontier itself is not given up for it.

Given up, for good, when a value of the frontier is not a tensor (a sequence, an optional) or
the files would pass ``budget`` bytes: every capture then runs from the graph inputs, as without
a frontier. A capture whose batches are not those of the frontier (other shapes, another count)
runs from the graph inputs and the frontier starts again after it.
"""

from __future__ import annotations

import logging
import math
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper

from onnxprune import runtime
from onnxprune.errors import OnnxPruneError, UnsupportedModelError
from onnxprune.graph.edit import node_reads
from onnxprune.graph.writer import copy_fields
from onnxprune.ops import spec_of

log = logging.getLogger(__name__)

#: The most bytes a frontier keeps on disk (also at most a quarter of the folder's free space).
FRONTIER_DISK_BYTES = 4 << 30

#: Of the bytes kept, the most held in memory: a batch's value is written to an ``.npy`` file only
#: when holding it would pass this. On PP-OCRv4 rec (48×1280, 32 lines) the frontiers' ``np.save``
#: alone took 5.7 s of a 147 s run (profiled); held, the run took 142.6 s at 15 MB more peak memory.
FRONTIER_MEMORY_BYTES = 256 << 20

#: What a batch's feeds look like: (name, shape, dtype) of each input, sorted by name.
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


#: a sub-model's stored tensors of at least this many bytes go to its session as they are, not
#: serialized (:class:`SessionSource`)
SHARED_MIN_BYTES = 1 << 16
#: the location a shared tensor's stub declares (it is never read: the session is given the values)
SHARED_LOCATION = "onnxprune-in-memory"


@dataclass(frozen=True)
class SessionSource:
    """A model for a session: its bytes, in which each tensor named in ``shared`` is a stub that
    declares external data, and those tensors' values, handed to onnxruntime as arrays
    (``SessionOptions.add_external_initializers``, which copies them into the graph). Serializing
    the weights into the bytes and parsing them back costs more: all-MiniLM-L6-v2 whole took
    169 ms to serialize and 158 ms to make a session of, against 0.3 ms and 66 ms so
    (onnxruntime 1.32; 1.18: 146 against 137 ms), with the same outputs."""

    model: bytes
    shared: Mapping[str, np.ndarray] = field(default_factory=dict)


#: the ONNX tensor types shared as numpy arrays (those numpy holds natively): a table, not onnx's
#: own mapping, which gives bfloat16 and float8 as float32 and int4 as int8 in onnx 1.16
_SHARED_TYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.UINT64: np.dtype(np.uint64),
    TensorProto.BOOL: np.dtype(np.bool_),
}


def add_initializers(target: ModelProto, tensors: Sequence[TensorProto]) -> dict[str, np.ndarray]:
    """Append ``tensors`` to ``target``'s main graph: those of :data:`SHARED_MIN_BYTES` or more held
    as plain little-endian bytes as stubs declaring external data, whose values are returned by
    name (views of the bytes, for :class:`SessionSource`); the others as they are."""
    shared: dict[str, np.ndarray] = {}
    for tensor in tensors:
        dtype = None
        if tensor.data_location != TensorProto.EXTERNAL and not tensor.external_data and np.little_endian:
            dtype = _SHARED_TYPES.get(tensor.data_type)
        raw = tensor.raw_data if dtype is not None else b""
        if dtype is None or len(raw) < SHARED_MIN_BYTES or len(raw) != dtype.itemsize * math.prod(tensor.dims):
            target.graph.initializer.append(tensor)
            continue
        stub = target.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stub.data_location = TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=SHARED_LOCATION)
        stub.external_data.add(key="length", value=str(len(raw)))
        shared[tensor.name] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(tuple(tensor.dims))
    return shared


def sub_model(
    model: ModelProto,
    graph: Graph,
    nodes: Sequence[int],
    fed: Mapping[str, tuple[np.dtype, int]],
    outputs: Sequence[str],
    replaced: Mapping[str, TensorProto] | None = None,
) -> SessionSource:
    """The main-graph ``nodes`` of ``model`` as a model of their own: the graph inputs, plus the
    values ``fed`` (name: dtype, rank; any dims) as inputs, the stored tensors the nodes read
    (those in ``replaced`` replaced; a name there that is no initializer, a Constant's output,
    becomes one; the large ones shared, :func:`add_initializers`), and ``outputs``."""
    source = model.graph
    used = {name for index in nodes for name in graph.reads[index]}
    replaced = replaced or {}
    out = ModelProto()
    copy_fields(model, out, skip=("graph",))
    target = out.graph
    target.name = source.name
    target.input.extend(source.input)
    for name, (dtype, ndim) in fed.items():
        target.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), [None] * ndim))
    target.node.extend(source.node[i] for i in sorted(nodes))
    stored = {t.name for t in source.initializer}
    shared = add_initializers(
        out,
        [
            *(replaced.get(t.name, t) for t in source.initializer if t.name in used),
            *(t for name, t in replaced.items() if name in used and name not in stored),
        ],
    )
    target.sparse_initializer.extend(t for t in source.sparse_initializer if t.values.name in used)
    target.value_info.extend(v for v in source.value_info if v.name in used and v.name not in fed)
    typed = {v.name: v for v in (*source.value_info, *source.output)}
    for name in outputs:
        if name in typed:
            target.output.append(typed[name])
        else:
            target.output.add(name=name)
    return SessionSource(out.SerializeToString(), shared)


def capture_session(source: SessionSource) -> ort.InferenceSession:
    """A CPU session, fully optimized, of a part of a model made to read its values (fusions never
    swallow a value that is a graph output, and the values read are graph outputs); what
    onnxruntime refuses is an :class:`UnsupportedModelError`."""
    try:
        return runtime.session(source.model, optimize=True, shared=source.shared)
    except OnnxPruneError:
        raise
    except Exception as exc:  # onnxruntime raises its own types; a model over 2 GiB cannot be serialized
        raise UnsupportedModelError(
            f"onnxruntime cannot load the model to capture calibration statistics ({runtime.ort_message(exc)})"
        ) from exc


def signature(feeds: Mapping[str, np.ndarray]) -> Signature:
    """The names, shapes and dtypes of ``feeds``: a frontier serves only batches like those it holds."""
    return tuple(sorted((name, tuple(np.shape(v)), str(np.asarray(v).dtype)) for name, v in feeds.items()))


def _feedable(dtype: np.dtype) -> bool:
    """Whether a value of ``dtype`` can be kept as ``.npy`` and fed back as a graph input."""
    if dtype.hasobject:
        return False
    try:
        helper.np_dtype_to_tensor_dtype(dtype)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _tensor_crc(tensor: object) -> int:
    """CRC-32 of a stored tensor: of its fields but its raw bytes, chained with the bytes read in
    place. Serializing a tensor copies its bytes into a new message first: all-MiniLM-L6-v2's 101
    initializers took 85 ms so, and a capture's check of the region makes one such pass each."""
    raw = tensor.raw_data if isinstance(tensor, TensorProto) else b""
    if not raw:  # values in typed fields, an external tensor's entries, a sparse tensor
        return zlib.crc32(tensor.SerializeToString())  # type: ignore[attr-defined]
    fields = TensorProto()
    copy_fields(tensor, fields, skip=("raw_data",))
    return zlib.crc32(raw, zlib.crc32(fields.SerializeToString()))


@dataclass
class Graph:
    """The main graph as the segments see it: producers, reads and which values depend on the inputs."""

    model: ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    reads: list[list[str]] = field(default_factory=list)
    consumers: dict[str, set[int]] = field(default_factory=dict)
    dynamic: set[str] = field(default_factory=set)
    inputs: set[str] = field(default_factory=set)
    stored: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, model: ModelProto) -> Graph:
        graph = model.graph
        found = cls(model)
        found.stored = {t.name: t for t in graph.initializer}
        found.stored.update({t.values.name: t for t in graph.sparse_initializer})
        found.inputs = {i.name for i in graph.input if i.name not in found.stored}
        found.dynamic = set(found.inputs)
        for index, node in enumerate(graph.node):
            reads = node_reads(node)  # subgraphs' outer reads included
            found.reads.append(reads)
            for name in reads:
                found.consumers.setdefault(name, set()).add(index)
            outputs = [name for name in node.output if name]
            for name in outputs:
                found.producer[name] = index
            if any(name in found.dynamic for name in reads) or spec_of(node).draws:
                found.dynamic.update(outputs)
        return found

    def node_key(self, index: int) -> str:
        """A name for node ``index`` that edits keep: its first named output (else its name)."""
        node = self.model.graph.node[index]
        return next((name for name in node.output if name), node.name)

    def fingerprint(self, index: int, stored_crc: dict[str, int]) -> int:
        """CRC-32 of node ``index`` chained with that of every stored tensor it reads."""
        crc = zlib.crc32(self.model.graph.node[index].SerializeToString())
        for name in self.reads[index]:
            tensor = self.stored.get(name)
            if tensor is None:
                continue
            if name not in stored_crc:
                stored_crc[name] = _tensor_crc(tensor)
            crc = zlib.crc32(stored_crc[name].to_bytes(4, "little"), crc)
        return crc

    def made(self, nodes: set[int]) -> set[str]:
        """The values ``nodes`` make."""
        return {name for index in nodes for name in self.model.graph.node[index].output if name}

    def descendants(self, name: str) -> set[int]:
        """The nodes whose value depends on ``name`` (through inputs and subgraph reads)."""
        nodes: set[int] = set()
        stack = [name]
        while stack:
            for index in self.consumers.get(stack.pop(), ()):
                if index not in nodes:
                    nodes.add(index)
                    stack.extend(out for out in self.model.graph.node[index].output if out)
        return nodes

    def ancestors(self, names: Sequence[str], known: set[str]) -> set[int]:
        """The nodes that compute ``names`` from ``known``, the graph inputs and the stored tensors."""
        nodes: set[int] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in known or name in self.inputs or name in self.stored:
                continue
            index = self.producer.get(name)
            if index is None or index in nodes:
                continue
            nodes.add(index)
            stack.extend(self.reads[index])
        return nodes


@dataclass(frozen=True)
class _Kept:
    """A value of the frontier: its files' stem, dtype and rank, and its bytes over every batch."""

    stem: str
    dtype: np.dtype
    ndim: int
    nbytes: int = 0


class Frontier:
    """The frontier of the captures run so far on ``model`` (module docstring), kept in ``folder``.

    ``model`` is the model the captures read (changed in place between them by the caller);
    ``folder`` an empty folder the caller owns and removes; ``budget`` the most bytes kept (None:
    :data:`FRONTIER_DISK_BYTES`, at most a quarter of the folder's free space), of which at most
    ``memory`` (None: :data:`FRONTIER_MEMORY_BYTES`) in memory, the rest in ``folder``. ``frozen``:
    the caller promises the model does not change, so the region is not fingerprinted.
    """

    def __init__(
        self,
        model: ModelProto,
        folder: str | Path,
        *,
        budget: int | None = None,
        memory: int | None = None,
        frozen: bool = False,
    ) -> None:
        self.model = model
        self.frozen = frozen
        self._graph: Graph | None = None
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free // 4
        self.budget = min(FRONTIER_DISK_BYTES, free) if budget is None else budget
        self.memory = FRONTIER_MEMORY_BYTES if memory is None else memory
        self.held: dict[str, dict[int, np.ndarray]] = {}  # stem -> batch -> value held in memory
        self.held_bytes = 0
        self.enabled = True
        self.region: dict[str, int] = {}  # node key -> fingerprint of the nodes run
        self.kept: dict[str, _Kept] = {}
        self.retain: set[str] = set()  # values kept once computed, frontier or not (module docstring)
        self.batches: list[Signature] = []
        self._stems = 0
        self.segments_run = 0  # captures served by a segment (for the log and the tests)

    def path(self, stem: str, index: int) -> Path:
        return self.folder / f"{stem}_b{index}.npy"

    def store(self, stem: str, index: int, value: np.ndarray) -> None:
        """Keep batch ``index`` of the value ``stem``: a read-only copy in memory while
        :attr:`memory` allows, else an ``.npy`` file."""
        if self.held_bytes + value.nbytes <= self.memory:
            held = np.array(value, order="C", copy=True)
            held.flags.writeable = False
            self.held.setdefault(stem, {})[index] = held
            self.held_bytes += held.nbytes
            return
        np.save(self.path(stem, index), np.require(value, requirements="C"), allow_pickle=False)

    def load(self, stem: str, index: int) -> np.ndarray:
        """Batch ``index`` of the value ``stem``, as :meth:`store` kept it (a file memory-mapped)."""
        held = self.held.get(stem, {}).get(index)
        return held if held is not None else np.load(self.path(stem, index), mmap_mode="r")

    def stem(self) -> str:
        self._stems += 1
        return f"v{self._stems}"

    def reset(self, why: str) -> None:
        """Forget the region and remove the files (the next capture runs from the graph inputs)."""
        if self.region or self.kept:
            log.debug("frontier dropped: %s", why)
        for kept in self.kept.values():
            self._remove(kept.stem)
        self.region, self.kept, self.batches = {}, {}, []

    def give_up(self, why: str) -> None:
        """Reset and run every later capture from the graph inputs."""
        log.info("the captures run from the graph inputs: %s", why)
        self.reset(why)
        self.enabled = False

    def _remove(self, stem: str) -> None:
        self.held_bytes -= sum(value.nbytes for value in self.held.pop(stem, {}).values())
        for path in self.folder.glob(f"{stem}_b*.npy"):
            path.unlink(missing_ok=True)

    def graph(self) -> Graph:
        """The model's :class:`Graph`: made again for every capture (the caller edits the model
        between them), once for a frozen model."""
        if not self.frozen or self._graph is None:
            self._graph = Graph.of(self.model)
        return self._graph

    def begin(self, names: Sequence[str]) -> Segment:
        """The run of one capture that reads ``names`` (main-graph values), batch by batch."""
        graph = self.graph()
        stored_crc: dict[str, int] = {}
        if self.region and not self.frozen:
            moved = self._moved(graph, stored_crc)
            if moved is not None:
                self.reset(moved)
        if not self.enabled:
            return Segment(self, graph, names, known=set(), stored_crc=stored_crc, grow=False)
        return Segment(self, graph, names, known=set(self.kept), stored_crc=stored_crc, grow=True)

    def _moved(self, graph: Graph, stored_crc: dict[str, int]) -> str | None:
        """Why the region no longer holds (a node gone or changed), or None."""
        for key, crc in self.region.items():
            index = graph.producer.get(key)
            if index is None or graph.node_key(index) != key:
                return f"node '{key}' is gone"
            if graph.fingerprint(index, stored_crc) != crc:
                return f"node '{key}' or a tensor it reads changed"
        return None


class Segment:
    """One capture's run (:meth:`Frontier.begin`): :meth:`read` per batch, in order, then :meth:`finish`."""

    def __init__(
        self,
        frontier: Frontier,
        graph: Graph,
        names: Sequence[str],
        *,
        known: set[str],
        stored_crc: dict[str, int],
        grow: bool,
    ) -> None:
        self.frontier, self.graph, self.names = frontier, graph, list(dict.fromkeys(names))
        self.known = known
        nodes = graph.ancestors(self.names, known)
        self.store: list[str] = []
        self.optional: set[str] = set()  # of the store, the values kept only because they are retained
        self.dropped: list[str] = []
        self.fingerprints: dict[str, int] = {}
        if grow:
            region = {graph.producer[key] for key in frontier.region}
            grown = region | nodes
            frontier_names = {
                name
                for name in graph.made(grown)
                if name in graph.dynamic and any(c not in grown for c in graph.consumers.get(name, ()))
            }
            missing = [name for name in frontier_names if name not in known and name not in graph.made(nodes)]
            if missing:  # values the region made that a node added since reads: computed again
                nodes |= graph.ancestors(missing, known)
            computed = graph.made(nodes)
            # what a later capture reads, kept within the budget although no node outside reads it
            self.optional = {n for n in computed & frontier.retain if n in graph.dynamic} - frontier_names
            self.store = sorted(n for n in frontier_names | self.optional if n in computed and n not in known)
            self.dropped = [name for name in known if name not in frontier_names and name not in frontier.retain]
            self.fingerprints = {
                graph.node_key(i): 0 if frontier.frozen else graph.fingerprint(i, stored_crc) for i in nodes
            }
        self.nodes = sorted(nodes)
        self.grow = grow
        produced = graph.made(nodes)
        self.outputs = list(dict.fromkeys([*(n for n in self.names if n in produced), *self.store]))
        read = {name for index in self.nodes for name in graph.reads[index]}
        self.feeds_from = sorted(name for name in known if name in read)
        # the kept values a batch reads from disk: the segment's inputs and the names asked for
        self.loaded = sorted(name for name in known if name in read or name in self.names)
        self.sess = self._session() if self.outputs else None
        self.seen: list[Signature] = []
        self.written: dict[str, _Kept] = {}
        self.broken: str | None = None  # why the frontier is dropped after this capture
        self.plain: Segment | None = None  # the run from the graph inputs, should a batch not fit

    def _session(self) -> ort.InferenceSession:
        return capture_session(self._model())

    def _model(self) -> SessionSource:
        """The segment as a model: its nodes, the frontier values they read as extra inputs, the
        outputs :attr:`outputs`."""
        kept = self.frontier.kept
        fed = {name: (kept[name].dtype, kept[name].ndim) for name in self.feeds_from}
        return sub_model(self.graph.model, self.graph, self.nodes, fed, self.outputs)

    def read(self, feeds: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        """The values :attr:`names` on batch ``index`` (the batches come in order from 0)."""
        frontier = self.frontier
        shape = signature(feeds)
        held = frontier.batches
        if self.broken is None and self.known and (index >= len(held) or held[index] != shape):
            self.broken = f"batch {index} is not one the frontier holds"
        if self.broken is not None and self.known:
            if self.plain is None:
                self.plain = Segment(frontier, self.graph, self.names, known=set(), stored_crc={}, grow=False)
            return self.plain.read(feeds, index)
        self.seen.append(shape)
        loaded = {name: frontier.load(frontier.kept[name].stem, index) for name in self.loaded}
        given = {name: loaded[name] for name in self.feeds_from}
        values = runtime.run_batch(self.sess, self.outputs, {**feeds, **given}, index) if self.sess else {}
        if self.grow and self.broken is None:
            self._keep(values, index)
        out: dict[str, np.ndarray] = {}
        for name in self.names:
            if name in feeds:
                out[name] = np.asarray(feeds[name])
            elif name in values:
                out[name] = values[name]
            elif name in loaded:
                out[name] = loaded[name]
        return out

    def _keep(self, values: Mapping[str, object], index: int) -> None:
        """Save this batch's values of the store; the frontier's own first, then the retained ones,
        which give way (:meth:`_abandon`) to the frontier's should the budget run short."""
        frontier = self.frontier
        total = sum(k.nbytes for name, k in frontier.kept.items() if name not in self.dropped)
        total += sum(k.nbytes for k in self.written.values())
        for name in sorted(self.store, key=lambda n: n in self.optional):
            if name not in self.store:  # a retained value given way to the frontier's
                continue
            value = values[name]
            feedable = isinstance(value, np.ndarray) and _feedable(value.dtype)
            size = value.nbytes if isinstance(value, np.ndarray) else 0
            if name not in self.optional:
                while total + size > frontier.budget and any(n in self.optional for n in self.written):
                    total -= self._abandon(next(n for n in self.written if n in self.optional))
            if name in self.optional and (total + size > frontier.budget or not feedable):
                total -= self._abandon(name)  # a retained value only: computed again should a capture need it
                continue
            if not feedable or not isinstance(value, np.ndarray):
                self.broken = f"'{name}' is not a tensor of numbers"
                frontier.enabled = False
                return
            if total + size > frontier.budget:
                self.broken = f"its values would pass {frontier.budget / 2**20:.0f} MiB"
                frontier.enabled = False
                return
            kept = self.written.get(name) or _Kept(frontier.stem(), value.dtype, value.ndim)
            frontier.store(kept.stem, index, value)
            self.written[name] = _Kept(kept.stem, kept.dtype, kept.ndim, kept.nbytes + size)
            total += size

    def _abandon(self, name: str) -> int:
        """Keep the retained value ``name`` no more (its files of the batches so far are removed):
        the bytes freed."""
        self.store.remove(name)
        kept = self.written.pop(name, None)
        if kept is not None:
            self.frontier._remove(kept.stem)
        log.debug("'%s' is not kept for later captures: it would pass the frontier's budget", name)
        return 0 if kept is None else kept.nbytes

    def finish(self) -> None:
        """Make this capture's region and frontier the frontier's (or drop it, saying why)."""
        frontier = self.frontier
        if not self.grow:
            return
        if self.broken is None and self.known and len(self.seen) != len(frontier.batches):
            self.broken = f"{len(self.seen)} batches, where the frontier holds {len(frontier.batches)}"
        if self.broken is not None:
            for kept in self.written.values():
                frontier._remove(kept.stem)
            if frontier.enabled:
                frontier.reset(self.broken)
            else:
                frontier.give_up(self.broken)
            return
        for name in self.dropped:
            frontier._remove(frontier.kept.pop(name).stem)
        frontier.kept.update(self.written)
        frontier.region.update(self.fingerprints)
        frontier.batches = self.seen
        frontier.segments_run += 1
