"""One graph for structural edits: an onnx-graphsurgeon ``gs.Graph`` read from a model
(:func:`to_gs`) and written back into that same model (:func:`from_gs`), losing nothing
onnxprune needs and copying no weight that is still in place.

**What gs's own round trip loses** (``gs.export_onnx(gs.import_onnx(m))``, onnx-graphsurgeon
0.5.2 and 0.6.1 alike unless said): the model's ``doc_string``, ``domain``, ``model_version``,
``metadata_props`` and ``training_info``; ``ir_version`` (0.5.2 writes onnx's newest, 0.6.1
keeps it); the graph's ``metadata_props`` and ``quantization_annotation``; every node's
``doc_string`` (torch writes an explicit empty one, so even its bytes change),
``metadata_props``, ``overload`` and attribute ``doc_string``; GRAPHS, SPARSE_TENSOR and
TYPE_PROTO attributes (skipped with a warning); an empty INTS/FLOATS attribute (export
fails); the ``doc_string`` and dim ``denotation`` of inputs, outputs and value_info, and any
non-tensor type gs cannot write (optional, map); the initializer order (written in the order
nodes read them); initializers nobody reads, and the graph-input entry of an initializer
(IR < 4 models, or overridable initializers of IR >= 4, which so stop being overridable);
value_info entries of initializers or of names nothing uses. In a subgraph it copies every
outer-scope initializer the subgraph reads into the subgraph's initializers (a second copy of
the weight) and adds value_info for outer-scope values whose type it knows. Functions are
rebuilt (constants become Constant nodes). ``export_onnx`` also copies every initializer
into the new ModelProto (protobuf ``extend`` copies), so a 400 MB model costs 400 MB more.

**How this module carries it.** :func:`to_gs` imports with ``gs.import_onnx`` (weights stay
in their TensorProto: gs ``LazyValues``) and links each gs Node and Graph to the proto it came
from (a private attribute on the gs object, so it travels with the object and disappears
with it; ``node.copy()`` makes a new, unlinked node). :func:`from_gs` writes the gs graph back
*into* the model it came from, in place: a linked node keeps its proto, and only the fields gs
changed are rewritten (op, name, domain, inputs, outputs, attributes whose value changed), so
doc strings, metadata, overloads, attribute doc strings and attributes gs cannot read stay;
kept initializers stay where they were, in their order (a renamed one is renamed in place; one
given new values is replaced at its place), new ones are appended; graph inputs, outputs and
value_info entries keep their proto unless gs's dtype or shape differs. Model fields
(metadata_props, doc_string, functions, training_info ...) are never touched; the default
opset, ir_version (0.6.1) and producer fields are written only if changed on the gs graph,
and a domain is added to opset_import only for a new node's domain. A
model's round trip without edits is byte-identical (tests/test_gs_adapter.py).

**Policies.** value_info is written only in graphs whose proto had some (adding it can slow
onnxruntime down, see the README): there, entries are kept for values that still exist and
added for new local values whose dtype or shape gs knows. An initializer nobody reads any more
is dropped with its graph-input entry; one nobody read when :func:`to_gs` ran is kept unless
``drop_unread=True`` (what cleanup asks for). An outer-scope initializer read in a subgraph
stays in the outer graph. New nodes, and nodes whose link is claimed twice, are written with
gs's exporter (a brand-new subgraph so gets gs's own policies). Functions are written back as
they were in the model: edits to ``graph.functions`` are not carried (onnxprune edits none).

The model must be the one :func:`to_gs` read, not edited since by other means.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

__all__ = ["from_gs", "keep_initializers", "source_of", "to_gs"]

_SOURCE = "_onnxprune_source"  # on a gs.Node / gs.Graph: the NodeProto / GraphProto it came from
_UNREAD = "_onnxprune_unread"  # on a gs.Graph: initializer names nothing read at import

#: Attribute types gs does not import: kept from the node's proto as they are.
_NOT_IMPORTED = {
    AttributeProto.GRAPHS,
    AttributeProto.SPARSE_TENSOR,
    AttributeProto.SPARSE_TENSORS,
    AttributeProto.TENSORS,
    AttributeProto.TYPE_PROTO,
    AttributeProto.TYPE_PROTOS,
    AttributeProto.UNDEFINED,
}


def to_gs(model: ModelProto) -> gs.Graph:
    """``model`` as a gs.Graph linked to its protos (see the module docstring); no weight
    is copied or decoded."""
    graph = gs.import_onnx(model)
    _link(graph, model.graph)
    return graph


def source_of(node: gs.Node) -> NodeProto | None:
    """The NodeProto ``node`` was read from by :func:`to_gs` (None for a node made since)."""
    return getattr(node, _SOURCE, None)


def keep_initializers(graph: gs.Graph) -> None:
    """Let :func:`from_gs` (without ``drop_unread``) keep every initializer the model holds
    now, in ``graph`` and its subgraphs, even those the edits leave unread: an editing pass
    then leaves them for :func:`~onnxprune.graph.cleanup.cleanup` to drop and count, as an
    edit on the protos would."""
    for g in (graph, *graph.subgraphs(recursive=True)):
        proto = getattr(g, _SOURCE, None)
        if proto is not None:
            names = {t.name for t in proto.initializer} | {s.values.name for s in proto.sparse_initializer}
            setattr(g, _UNREAD, getattr(g, _UNREAD, set()) | names)


def _link(graph: gs.Graph, proto: GraphProto) -> None:
    setattr(graph, _SOURCE, proto)
    _declared_io_types(graph, proto)
    read = {t.name for node in graph.nodes for t in node.inputs} | {t.name for t in graph.outputs}
    read |= _foreign_names(graph)
    setattr(graph, _UNREAD, {t.name for t in proto.initializer if t.name not in read})
    for node, node_proto in zip(graph.nodes, proto.node, strict=True):
        setattr(node, _SOURCE, node_proto)
        for attr in node_proto.attribute:
            if attr.type == AttributeProto.GRAPH and not attr.ref_attr_name:
                _link(node.attrs[attr.name], attr.g)


def _declared_io_types(graph: gs.Graph, proto: GraphProto) -> None:
    """Give ``graph``'s inputs and outputs the dtype and shape their own entries declare.

    gs reads ``value_info`` first and keeps what it found there, so a ``value_info`` entry that
    names a graph input or output (not what the field is for) and disagrees with it would
    otherwise replace the declared type on export. onnxruntime goes by the declared one and
    loads such a model, and would refuse the written one (a fuzzed model whose output
    ``logits`` was float and its ``value_info`` entry int64)."""
    declared = {v.name: v for v in (*proto.input, *proto.output)}
    for tensor in (*graph.inputs, *graph.outputs):
        entry = declared.get(tensor.name)
        if entry is None or not isinstance(tensor, gs.Variable):
            continue
        own = OnnxImporter.import_tensor(entry)
        if own.dtype is not None:
            tensor.dtype = own.dtype
        if own.shape is not None:
            tensor.shape = own.shape


def _foreign_names(graph: gs.Graph) -> set[str]:
    """Names read by the subgraphs of ``graph``'s nodes (any depth), outputs included."""
    names: set[str] = set()
    for node in graph.nodes:
        for sub in node.subgraphs():
            names.update(t.name for n in sub.nodes for t in n.inputs)
            names.update(t.name for t in sub.outputs)
            names |= _foreign_names(sub)
    return names


def from_gs(graph: gs.Graph, like: ModelProto, *, drop_unread: bool = False) -> ModelProto:
    """Write ``graph`` back into ``like``, the model :func:`to_gs` read it from, in place, and
    return ``like`` (see the module docstring)."""
    if getattr(graph, _SOURCE, None) is not like.graph:
        raise ValueError("from_gs: the graph was not read from this model by to_gs")
    _write_graph(graph, like.graph, outer=set(), claimed=set(), main=True, drop_unread=drop_unread)
    _write_model_fields(graph, like)
    return like


# ---------------------------------------------------------------------------------------
# Graphs


def _write_graph(
    graph: gs.Graph, proto: GraphProto, *, outer: set[str], claimed: set[int], main: bool, drop_unread: bool
) -> None:
    if proto.name != (graph.name or ""):
        proto.name = graph.name or ""
    if proto.doc_string != (graph.doc_string or ""):
        proto.doc_string = graph.doc_string or ""
    local_constants = _constants_read(graph, outer)
    kept_inits = _write_initializers(graph, proto, local_constants, drop_unread=drop_unread, main=main)
    defined = (
        outer | kept_inits | {t.name for t in graph.inputs} | {t.name for n in graph.nodes for t in n.outputs if t.name}
    )
    _write_value_infos(proto.input, graph.inputs, keep=lambda v: v.name in kept_inits, main=main)
    _write_value_infos(proto.output, graph.outputs, keep=lambda v: False, main=main)
    _write_nodes(graph, proto, outer=defined, claimed=claimed, drop_unread=drop_unread)
    _write_value_info(graph, proto, outer=outer, kept_inits=kept_inits)


def _constants_read(graph: gs.Graph, outer: set[str]) -> dict[str, gs.Constant]:
    """Constants read in ``graph`` or its subgraphs (any depth) that no enclosing graph
    defines, in reading order: the initializers ``graph`` must hold."""
    found: dict[str, gs.Constant] = {}
    nested = set()  # initializer protos of nested subgraphs: theirs, not graph's
    for sub in graph.subgraphs(recursive=True):
        source = getattr(sub, _SOURCE, None)
        if source is not None:
            nested.update(id(t) for t in source.initializer)
            nested.update(id(t) for t in source.sparse_initializer)

    def take(tensor: gs.Tensor, top: bool) -> None:
        if not isinstance(tensor, gs.Constant) or tensor.name in outer:
            return
        if top or not isinstance(tensor._values, (LazyValues, SparseValues)) or id(tensor._values.tensor) not in nested:
            found.setdefault(tensor.name, tensor)

    def visit(g: gs.Graph, top: bool) -> None:
        for node in g.nodes:
            for tensor in node.inputs:
                take(tensor, top)
            for sub in node.subgraphs():
                visit(sub, False)
        for tensor in g.outputs:
            take(tensor, top)

    visit(graph, True)
    return found


def _write_initializers(
    graph: gs.Graph, proto: GraphProto, constants: dict[str, gs.Constant], *, drop_unread: bool, main: bool
) -> set[str]:
    """Keep (renamed in place if gs renamed it), replace in place (same name, new values) or
    drop ``proto``'s initializers; append new ones. Returns the names ``proto`` then holds."""
    by_proto = {
        id(c._values.tensor): c for c in constants.values() if isinstance(c._values, (LazyValues, SparseValues))
    }
    unread = set() if drop_unread else getattr(graph, _UNREAD, set())
    inputs = {v.name for v in proto.input}
    placed: set[int] = set()
    drop: list[int] = []
    for i, tensor in enumerate(proto.initializer):
        constant = by_proto.get(id(tensor))
        if constant is not None and id(constant) not in placed:
            if tensor.name != constant.name:
                tensor.name = constant.name
            placed.add(id(constant))
            continue
        constant = constants.get(tensor.name)
        if constant is not None and id(constant) not in placed and not isinstance(constant._values, LazyValues):
            tensor.CopyFrom(OnnxExporter.export_tensor_proto(constant))
            placed.add(id(constant))
        elif tensor.name not in unread and (main or tensor.name not in inputs):
            drop.append(i)  # kept: never read at import (unless asked), or a subgraph's own input
    for i in reversed(drop):
        del proto.initializer[i]
    drop = []
    for i, sparse in enumerate(proto.sparse_initializer):
        constant = by_proto.get(id(sparse))
        if constant is not None and id(constant) not in placed:
            placed.add(id(constant))
        elif sparse.values.name not in unread:
            drop.append(i)
    for i in reversed(drop):
        del proto.sparse_initializer[i]
    for constant in constants.values():
        if id(constant) in placed:
            continue
        if isinstance(constant._values, SparseValues):
            proto.sparse_initializer.add().CopyFrom(OnnxExporter.export_sparse_tensor_proto(constant))
        else:
            proto.initializer.add().CopyFrom(OnnxExporter.export_tensor_proto(constant))
    return {t.name for t in proto.initializer} | {s.values.name for s in proto.sparse_initializer}


def _same_type(proto: ValueInfoProto, tensor: gs.Tensor) -> bool:
    """True if gs reads ``proto`` as ``tensor``'s name, dtype, shape and kind of type (an
    initializer's entry always matches: its type is the tensor's)."""
    if proto.name != tensor.name:
        return False
    if isinstance(tensor, gs.Constant):
        return True
    read = OnnxImporter.import_tensor(proto)
    return (read.dtype, read.shape, read.type) == (tensor.dtype, tensor.shape, tensor.type)


def _value_info(tensor: gs.Tensor) -> ValueInfoProto:
    return OnnxExporter.export_value_info_proto(tensor, do_type_check=False)


def _write_value_infos(field: Any, tensors: Iterable[gs.Tensor], *, keep: Any, main: bool) -> None:
    """Rewrite a graph's input or output list as ``tensors`` (entries that ``keep`` says,
    initializer-inputs, stay at their place), reusing every entry whose type is unchanged."""
    tensors = list(tensors)
    old = list(field)
    by_name: dict[str, ValueInfoProto] = {}
    for v in old:
        by_name.setdefault(v.name, v)
    plan: list[ValueInfoProto] = []
    wanted = iter(tensors)
    pending = next(wanted, None)
    for v in old:
        if keep(v):
            plan.append(v)
            continue
        if pending is not None and v.name == pending.name and _same_type(v, pending):
            plan.append(v)
            pending = next(wanted, None)
    if pending is not None or len(plan) != len(old):
        # something changed: rebuild in gs's order, initializer-inputs after the rest
        fresh: list[ValueInfoProto] = []
        for tensor in tensors:
            v = by_name.get(tensor.name)
            fresh.append(_copy(v) if v is not None and _same_type(v, tensor) else _carry_doc(_value_info(tensor), v))
        fresh += [_copy(v) for v in old if keep(v) and v.name not in {t.name for t in tensors}]
        del field[:]
        field.extend(fresh)


def _copy(v: ValueInfoProto) -> ValueInfoProto:
    out = ValueInfoProto()
    out.CopyFrom(v)
    return out


def _carry_doc(new: ValueInfoProto, old: ValueInfoProto | None) -> ValueInfoProto:
    if old is not None and old.doc_string:
        new.doc_string = old.doc_string
    return new


def _write_value_info(graph: gs.Graph, proto: GraphProto, *, outer: set[str], kept_inits: set[str]) -> None:
    """value_info only where the graph had some: entries of values still there, refreshed
    where gs's type differs, then new local values whose type gs knows."""
    if not len(proto.value_info):
        return
    boundary = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    local: dict[str, gs.Tensor] = {}
    for node in graph.nodes:
        for tensor in (*node.inputs, *node.outputs):
            if tensor.name and tensor.name not in outer and tensor.name not in boundary:
                local.setdefault(tensor.name, tensor)
    kept: list[ValueInfoProto] = []
    changed = False
    seen: set[str] = set()
    for v in proto.value_info:
        tensor = local.get(v.name)
        if tensor is None and (v.name in kept_inits or v.name in outer):
            kept.append(v)
        elif tensor is None:
            changed = True
        elif isinstance(tensor, gs.Constant) or _same_type(v, tensor):
            kept.append(v)
        else:
            kept.append(_carry_doc(_value_info(tensor), v))
            changed = True
        seen.add(v.name)
    for name, tensor in local.items():
        if (
            name not in seen
            and isinstance(tensor, gs.Variable)
            and (tensor.dtype is not None or tensor.shape is not None)
        ):
            kept.append(_value_info(tensor))
            changed = True
    if changed:
        fresh = [_copy(v) for v in kept]
        del proto.value_info[:]
        proto.value_info.extend(fresh)


# ---------------------------------------------------------------------------------------
# Nodes


def _write_nodes(graph: gs.Graph, proto: GraphProto, *, outer: set[str], claimed: set[int], drop_unread: bool) -> None:
    """Edit linked nodes in place, drop the rest, append new ones, then sort as gs orders them."""
    present = {id(n) for n in proto.node}
    order: list[int] = []
    for node in graph.nodes:
        source = getattr(node, _SOURCE, None)
        if source is not None and id(source) in present and id(source) not in claimed:
            claimed.add(id(source))
            _write_node(node, source, outer=outer, claimed=claimed, drop_unread=drop_unread)
            order.append(id(source))
        else:
            added = proto.node.add()
            added.CopyFrom(OnnxExporter.export_node(node))
            order.append(id(added))
            present.add(id(added))
    keep = set(order)
    for i in range(len(proto.node) - 1, -1, -1):
        if id(proto.node[i]) not in keep:
            del proto.node[i]
    if [id(n) for n in proto.node] != order:
        rank = {key: i for i, key in enumerate(order)}
        proto.node.sort(key=lambda n: rank[id(n)])


def _write_node(node: gs.Node, proto: NodeProto, *, outer: set[str], claimed: set[int], drop_unread: bool) -> None:
    proto.op_type = node.op  # a field copy (the same string leaves the bytes as they were)
    if proto.name != (node.name or ""):
        proto.name = node.name or ""
    domain = proto.domain if proto.HasField("domain") else None
    if domain != node.domain:
        if node.domain is None:
            proto.ClearField("domain")
        else:
            proto.domain = node.domain
    for field, tensors in ((proto.input, node.inputs), (proto.output, node.outputs)):
        names = [t.name for t in tensors]
        if list(field) != names:
            del field[:]
            field.extend(names)
    _write_attributes(node, proto, outer=outer, claimed=claimed, drop_unread=drop_unread)


def _write_attributes(
    node: gs.Node, proto: NodeProto, *, outer: set[str], claimed: set[int], drop_unread: bool
) -> None:
    attrs = node.attrs
    drop = []
    for i, attr in enumerate(proto.attribute):
        if attr.name not in attrs:
            if attr.type not in _NOT_IMPORTED or attr.ref_attr_name:
                drop.append(i)
            continue
        value = attrs[attr.name]
        if attr.type == AttributeProto.GRAPH and not attr.ref_attr_name and getattr(value, _SOURCE, None) is attr.g:
            _write_graph(value, attr.g, outer=outer, claimed=claimed, main=False, drop_unread=drop_unread)
        elif not _same_attribute(value, attr):
            if isinstance(value, (list, tuple)) and not len(value):  # onnx cannot infer an empty list's type
                new = onnx.helper.make_attribute(attr.name, [], attr_type=attr.type)
            else:
                (new,) = OnnxExporter.export_attributes({attr.name: value})
            if attr.doc_string:
                new.doc_string = attr.doc_string
            if new.type == AttributeProto.TENSOR and not attr.t.HasField("name") and not new.t.name:
                new.t.ClearField("name")  # gs writes an explicit empty name where the proto had none
            attr.CopyFrom(new)
    for i in reversed(drop):
        del proto.attribute[i]
    have = {a.name for a in proto.attribute}
    new_attrs = {k: v for k, v in attrs.items() if k not in have}
    if new_attrs:
        proto.attribute.extend(OnnxExporter.export_attributes(new_attrs))


def _same_attribute(value: Any, attr: AttributeProto) -> bool:
    """True if ``value`` is what gs read from ``attr`` (a tensor: the very proto, renamed in
    place if gs renamed it)."""
    if attr.ref_attr_name:
        return isinstance(value, gs.Node.AttributeRef) and value.name == attr.ref_attr_name
    if attr.type == AttributeProto.TENSOR:
        if not (isinstance(value, gs.Constant) and isinstance(value._values, LazyValues)):
            return False
        if value._values.tensor is not attr.t:
            return False
        if attr.t.name != value.name:
            attr.t.name = value.name
        return True
    if attr.type == AttributeProto.GRAPH:
        return False
    read = OnnxImporter.import_attributes([attr], {}, {}, None, None).get(attr.name)
    try:
        return bool(read == value)
    except ValueError:  # an array compared element-wise
        return False


# ---------------------------------------------------------------------------------------
# Model fields


def _write_model_fields(graph: gs.Graph, model: ModelProto) -> None:
    if graph.producer_name is not None and model.producer_name != graph.producer_name:
        model.producer_name = graph.producer_name
    if graph.producer_version is not None and model.producer_version != graph.producer_version:
        model.producer_version = graph.producer_version
    ir_version = vars(graph).get("ir_version")  # gs >= 0.6 (0.5.2's getattr logs an error)
    if ir_version is not None and model.ir_version != ir_version:
        model.ir_version = ir_version
    versions = {o.domain: o for o in model.opset_import}
    default = versions.get("") or versions.get("ai.onnx")
    if graph.opset is not None and default is not None and default.version != graph.opset:
        default.version = graph.opset
    wanted = {o.domain: o.version for o in (graph.import_domains or [])}
    graphs = (graph, *graph.subgraphs(recursive=True))
    used = {n.domain for g in graphs for n in g.nodes if n.domain and not hasattr(n, _SOURCE)}  # new nodes' only
    for domain in sorted(used - set(versions) - {"ai.onnx"}):
        model.opset_import.add(domain=domain, version=wanted.get(domain, 1))
