"""Sanity of a loaded model: what protobuf and ``onnx.load`` accept but nothing can use.

:func:`check_model` runs once on every model :mod:`onnxprune.graph.model_io` loads, before
anything looks at it, and raises a one-line error naming the tensor instead of a ``reshape`` or
``IndexError`` deep inside a pass (the byte ranges of external data are checked against the
dims before they are read, by :func:`onnxprune.graph.model_io.check_external_data`):

- **types and opsets**: every stored tensor has an element type this onnx knows (not
  UNDEFINED, not a number no ONNX release defines), a string tensor keeps its values in
  ``string_data`` (ONNX forbids ``raw_data`` for strings); every opset the model (or one of
  its functions) imports has a version >= 0, and the ONNX domains' versions lie in
  1..:data:`MAX_OPSET`. :class:`~onnxprune.errors.ModelLoadError`;
- **payloads**: every stored tensor (initializers, sparse initializers, Constant-node and other
  tensor attributes, in every graph) holds as many values as its dims say: ``raw_data`` of
  ``numel · itemsize`` bytes (sub-byte types packed, ``ceil(numel · bits / 8)``), or that many
  entries in the typed field its type uses (``float_data``, ``int32_data`` ... two per element
  for complex types); no dimension is negative; a sparse tensor's values and indices agree on
  their count. :class:`~onnxprune.errors.ModelLoadError`;
- **names**: no two initializers of one graph share a name, and no name is the output of two
  nodes or of a node and an initializer (ONNX graphs are single-assignment; a second definition
  makes counts and edits pick one at random); the main graph has outputs, each defined by a
  node, an input or an initializer. :class:`~onnxprune.errors.ModelLoadError`;
- **text**: every name and string field protobuf holds as text is valid UTF-8 (protobuf
  parses a flipped byte in a name without complaint and fails only when the name is read).
  :class:`~onnxprune.errors.ModelLoadError`;
- **attributes**: every attribute of a node of an ONNX domain has a known type tag and, where
  the operator's schema (at the model's opset) defines the attribute, the schema's type (a
  ``transB`` tagged FLOAT, a ``beta`` holding a list or a string); onnxruntime refuses such
  nodes, and a pass reading the value would fail on it. Attributes the schema does not define
  are left to onnxruntime, which names them. :class:`~onnxprune.errors.ModelLoadError`;
- **weights that are no numbers**: a tensor read as a weight, bias, normalization parameter
  or shape (not an embedding table: a Gather of strings is a vocabulary) is not stored as
  strings or complex numbers, which no pass can read as floats (a Cast from strings parses
  them only when the model runs). :class:`~onnxprune.errors.UnsupportedModelError`;
- **non-finite weights** (with ``finite=True``, what pruning asks for): no tensor read as a
  weight, bias, normalization parameter or embedding holds NaN or ±inf (±inf allowed in one
  read only as an additive bias: attention masks; :func:`onnxprune.graph.discovery.nonfinite_in`).
  :class:`~onnxprune.errors.UnsupportedModelError`: the model is valid ONNX, but no criterion
  ranks NaN and no solver fits it, and the output would give NaN whatever was pruned; the
  caller's ``allow_nonfinite`` skips this check, and discovery then leaves such tensors as
  they are, with the reason.

Memory: tensors are looked at one at a time, each read once (its ``raw_data`` copied out of
protobuf once, the non-finite count made on that copy in chunks); the role of a tensor is
looked up (:func:`onnxprune.graph.discovery.stored_reads`, no value read) only when some float
tensor holds a non-finite value, which a valid model rarely does. A model with external data
is checked before its data is read (the external tensors are skipped: their byte ranges are
checked instead) and, with ``finite``, its weights once loaded (:func:`refuse_nonfinite`), so
a model of many GB is read once more only when NaN is looked for.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping

import numpy as np
import onnx.defs
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.errors import ModelLoadError, UnsupportedModelError, opt
from onnxprune.graph import tensors
from onnxprune.graph.discovery import nonfinite_in, stored_reads
from onnxprune.graph.index import node_label
from onnxprune.graph.walk import all_graphs

MALFORMED = "the model is malformed; export it again"

#: The domains whose opsets ONNX releases (versions 1, 2, ... one a release at most).
ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"})
#: The highest opset version of an ONNX domain a model may declare: releases add about one a
#: year (ai.onnx is in the twenties), so a larger one is a corrupt number, not a future release.
MAX_OPSET = 1000
#: The element types that hold no real numbers (what no pass can read a weight as).
NOT_REAL = frozenset({TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128})


def _types(*names: str) -> frozenset[int]:
    return frozenset(getattr(TensorProto, name) for name in names if hasattr(TensorProto, name))


#: The typed field each element type stores its values in, and its entries per element.
_FIELDS: dict[int, tuple[str, float]] = {
    data_type: (field, per_element)
    for field, per_element, types in (
        ("float_data", 1, _types("FLOAT")),
        ("float_data", 2, _types("COMPLEX64")),
        ("double_data", 1, _types("DOUBLE")),
        ("double_data", 2, _types("COMPLEX128")),
        ("int64_data", 1, _types("INT64")),
        ("uint64_data", 1, _types("UINT32", "UINT64")),
        ("string_data", 1, _types("STRING")),
        (
            "int32_data",
            1,
            _types("INT32", "INT16", "INT8", "UINT16", "UINT8", "BOOL", "FLOAT16", "BFLOAT16")
            | _types("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"),
        ),
        *(("int32_data", bits / 8, types) for bits, types in tensors.SUB_BYTE_BITS.items()),  # packed, a byte per entry
    )
    for data_type in types
}


def checked_numel(what: str, tensor: TensorProto) -> int:
    """Elements of ``tensor`` by its dims; :class:`ModelLoadError` (naming it as ``what``) for a
    negative dimension."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{what} has a negative dimension (dims {dims}): {MALFORMED}")
    return math.prod(dims)


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"type {data_type}"


#: Every element type this onnx defines, UNDEFINED excepted.
_KNOWN_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}


def check_type(what: str, tensor: TensorProto) -> None:
    """Raise :class:`ModelLoadError` for a tensor of no known element type, and for a string
    tensor with ``raw_data`` (see module docstring)."""
    if tensor.data_type not in _KNOWN_TYPES:
        kind = (
            "no element type (UNDEFINED)"
            if tensor.data_type == TensorProto.UNDEFINED
            else (f"element type {tensor.data_type}, which is no type ONNX defines")
        )
        raise ModelLoadError(f"{what} has {kind}: {MALFORMED}")
    if tensor.data_type == TensorProto.STRING and tensor.HasField("raw_data"):
        raise ModelLoadError(
            f"{what} is a string tensor stored as raw_data, which ONNX allows only for numbers (strings go in "
            f"string_data): {MALFORMED}"
        )


def check_opsets(model: ModelProto) -> None:
    """Raise :class:`ModelLoadError` for an opset import with a negative version, or one of an
    ONNX domain outside 1..:data:`MAX_OPSET` (in the model or one of its functions)."""
    imports = [("the model", entry) for entry in model.opset_import]
    imports += [(f"function '{f.name}'", entry) for f in model.functions for entry in f.opset_import]
    for where, entry in imports:
        official = entry.domain in ONNX_DOMAINS
        if entry.version < 0 or (official and not 1 <= entry.version <= MAX_OPSET):
            domain = entry.domain or "ai.onnx"
            allowed = f"versions 1 to {MAX_OPSET}" if official else "versions >= 0"
            raise ModelLoadError(
                f"{where} imports opset version {entry.version} of domain '{domain}', which no release has "
                f"({allowed}): {MALFORMED}"
            )


def check_payload(what: str, tensor: TensorProto) -> bytes | None:
    """Raise :class:`ModelLoadError` unless ``tensor`` holds as many values as its dims say
    (see module docstring); returns its ``raw_data`` when it has one (read once), else None.
    A tensor whose data is still external is left to :func:`onnxprune.graph.model_io.check_external_data`."""
    check_type(what, tensor)
    numel = checked_numel(what, tensor)
    if tensor.data_location == TensorProto.EXTERNAL:
        return None
    kind = _type_name(tensor.data_type)
    if tensor.HasField("raw_data"):
        raw = tensor.raw_data
        expected = tensors.payload_bytes(tensor.data_type, numel)
        if expected is not None and len(raw) != expected:
            raise ModelLoadError(
                f"{what} has dims {list(tensor.dims)} ({numel} {kind} values, {expected} bytes) but its raw_data "
                f"holds {len(raw)} bytes: {MALFORMED}"
            )
        return raw
    field = _FIELDS.get(tensor.data_type)
    if field is None:  # an unknown or undefined type: nothing to compare with
        return None
    name, per_element = field
    expected = math.ceil(numel * per_element)
    held = len(getattr(tensor, name))
    if held != expected:
        holds = f"its {name} holds {held}" if held else "it holds no values"
        raise ModelLoadError(
            f"{what} has dims {list(tensor.dims)} ({numel} {kind} values, {expected} in {name}) but {holds}: {MALFORMED}"
        )
    return None


def _check_sparse(what: str, values: TensorProto, indices: TensorProto, dims: list[int]) -> None:
    if len(values.dims) != 1 or len(indices.dims) not in (1, 2) or values.dims[0] != indices.dims[0]:
        raise ModelLoadError(
            f"{what} has {list(values.dims)} values and {list(indices.dims)} indices: a sparse tensor holds "
            f"[NNZ] values and [NNZ] or [NNZ, rank] indices; {MALFORMED}"
        )
    if len(indices.dims) == 2 and indices.dims[1] != len(dims):
        raise ModelLoadError(
            f"{what} has indices of {indices.dims[1]} coordinates for its {len(dims)} dims {dims}: {MALFORMED}"
        )
    try:
        found = np.asarray(numpy_helper.to_array(indices), dtype=np.int64)
    except Exception:  # a malformed payload: the payload check of the indices says what is wrong
        return
    if found.ndim == 2:  # coordinates -> linear positions (row-major)
        if found.size and ((found < 0).any() or (found >= np.asarray(dims, dtype=np.int64)).any()):
            raise ModelLoadError(f"{what} has an index outside its dims {dims}: {MALFORMED}")
        found = np.ravel_multi_index(found.T, dims) if found.size else found.reshape(-1)
    numel = int(np.prod(dims, dtype=np.int64))
    if found.size and (found.min() < 0 or found.max() >= numel or (np.diff(found) <= 0).any()):
        raise ModelLoadError(
            f"{what} has indices outside [0, {numel}) or not strictly increasing (ONNX requires both): {MALFORMED}"
        )


def _attribute_tensors(node: NodeProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    label = f"attribute '{{}}' of node '{node_label(node)}'{where}"
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            yield label.format(attr.name), attr.t
        elif attr.type == AttributeProto.TENSORS:
            for i, tensor in enumerate(attr.tensors):
                yield label.format(f"{attr.name}[{i}]"), tensor
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            sparse = attr.sparse_tensor
            what = f"sparse {label.format(attr.name)}"
            _check_sparse(what, sparse.values, sparse.indices, list(sparse.dims))
            yield f"the values of {what}", sparse.values
            yield f"the indices of {what}", sparse.indices


def stored_tensors(model: ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """``(what, tensor)`` for every tensor stored in ``model``, ``what`` naming it in a message
    (the tensors of :func:`onnxprune.graph.walk.all_tensors`, in every graph)."""
    for path, graph in all_graphs(model.graph):
        where = f" in subgraph '{path}'" if path else ""
        for tensor in graph.initializer:
            yield f"initializer '{tensor.name}'{where}", tensor
        for sparse in graph.sparse_initializer:
            what = f"sparse initializer '{sparse.values.name}'{where}"
            _check_sparse(what, sparse.values, sparse.indices, list(sparse.dims))
            yield f"the values of {what}", sparse.values
            yield f"the indices of {what}", sparse.indices
        for node in graph.node:
            yield from _attribute_tensors(node, where)


def _check_graph_names(graph: GraphProto, where: str) -> None:
    stored: set[str] = set()
    for name in [t.name for t in graph.initializer] + [s.values.name for s in graph.sparse_initializer]:
        if name and name in stored:
            raise ModelLoadError(
                f"two initializers are named '{name}'{where}: a name is defined once in an ONNX graph "
                f"(onnx.checker refuses it too); {MALFORMED}"
            )
        stored.add(name)
    producers: dict[str, str] = {}
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in producers or out in stored:
                first = f"node '{producers[out]}'" if out in producers else "an initializer"
                raise ModelLoadError(
                    f"'{out}' is defined twice{where}, as an output of {first} and of node '{node_label(node)}': ONNX "
                    f"graphs define each name once (onnx.checker refuses it too); {MALFORMED}"
                )
            producers[out] = node_label(node)


def check_names(model: ModelProto) -> None:
    """Raise :class:`ModelLoadError` for a name defined twice in one graph, and for a model whose
    graph has no outputs or an output that nothing defines (see module docstring)."""
    for path, graph in all_graphs(model.graph):
        _check_graph_names(graph, f" in subgraph '{path}'" if path else "")
    graph = model.graph
    if not graph.output:
        raise ModelLoadError(f"the graph declares no outputs, so it computes nothing: {MALFORMED}")
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer} | {out for node in graph.node for out in node.output}
    missing = [v.name for v in graph.output if v.name not in defined]
    if missing:
        raise ModelLoadError(
            f"graph output '{missing[0]}' is not computed by any node, nor a graph input or initializer: {MALFORMED}"
        )


def _float_values(tensor: TensorProto, raw: bytes | None) -> np.ndarray:
    """The values of a float tensor, from its ``raw_data`` already read when it has one."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if raw is None or dtype.itemsize * tensors.numel(tensor) != len(raw):  # bfloat16 as float32 (older onnx)
        return tensors.read_array(tensor)
    return np.frombuffer(raw, dtype=dtype)


def _refusal(
    key: str, role: str, tensor: TensorProto, nan: int, infinite: int, advice: str | None
) -> UnsupportedModelError:
    counts = " and ".join(
        f"{n} {what}" for n, what in ((nan, "NaN"), (infinite if role != "bias" else 0, "infinite")) if n
    )
    advice = advice or (
        f"fix the model, or pass {opt('allow_nonfinite', True)} to prune the rest and leave such tensors as they are"
    )
    return UnsupportedModelError(
        f"{role} '{key}' holds {counts} values (of {tensors.numel(tensor)}): no criterion ranks them, no solver "
        f"fits them and the pruned model would still give NaN; {advice}"
    )


def check_finite(model: ModelProto, suspects: list[tuple[TensorProto, int, int]], *, advice: str | None = None) -> None:
    """Raise :class:`UnsupportedModelError` for the first of ``suspects`` (float tensors of
    ``model`` with their NaN and ±inf counts) that is read as a weight, bias, normalization
    parameter or embedding and whose non-finite values matter for its role (see module
    docstring). ``advice`` ends the message (default: fix the model or allow them)."""
    if not suspects:
        return
    roles = {id(tensor): (key, role) for key, tensor, role in stored_reads(model)}
    for tensor, nan, infinite in suspects:  # the suspects hold their tensors: their ids stay theirs
        found = roles.get(id(tensor))
        if found is not None and nonfinite_in(found[1], nan, infinite):
            raise _refusal(found[0], found[1], tensor, nan, infinite, advice)


def refuse_nonfinite(
    model: ModelProto,
    *,
    advice: str | None = None,
    read: tensors.ArrayReader | None = None,
    only: Collection[str] | None = None,
    external_only: bool = False,
    counted: Mapping[str, int] | None = None,
) -> None:
    """:func:`check_finite` on every weight of ``model`` (a model already checked by
    :func:`check_model` without ``finite``): each read once, one at a time. ``read``: a lazy
    source, for a model whose external data is not loaded (its external weights are then read
    through it); ``only``: the keys of the tensors read as weights to look at (those a reader
    found non-finite: discovery gives a NaN weight that reason); tensors of every other role
    (biases, normalization parameters, embedding tables, mixed) are all looked at.
    ``external_only``: only the tensors whose data is external (the loader's :func:`check_model`
    with ``finite`` looked at those in the file as it read them). ``counted``: key -> the
    non-finite count that matters (:func:`~onnxprune.graph.discovery.nonfinite_in`) of tensors
    already read, e.g. by discovery in a streamed run: those counted 0 are not read again."""
    for key, tensor, role in stored_reads(model, external=read is not None):
        if external_only and tensor.data_location != TensorProto.EXTERNAL:
            continue
        if counted is not None and counted.get(key) == 0:
            continue
        if tensors.is_float(tensor) and (only is None or key in only or role != "weight"):
            nan, infinite = tensors.nonfinite_counts((read or tensors.read_array)(tensor))
            if nonfinite_in(role, nan, infinite):
                raise _refusal(key, role, tensor, nan, infinite, advice)


def check_real(model: ModelProto, suspects: list[TensorProto]) -> None:
    """Raise :class:`UnsupportedModelError` for the first of ``suspects`` (tensors of ``model``
    of a :data:`NOT_REAL` type) read as anything but an embedding table (see module docstring)."""
    if not suspects:
        return
    ids = {id(tensor) for tensor in suspects}
    for key, tensor, role in stored_reads(model):
        if id(tensor) in ids and role != "embedding":
            what = "weight" if role == "mixed" else role
            raise UnsupportedModelError(
                f"{what} '{key}' is stored as {_type_name(tensor.data_type)} values, which onnxprune cannot read as "
                "real numbers (no operator computes with them directly; a Cast parses strings only when the model "
                "runs): store it as a float tensor"
            )


def _graph_text(graph: GraphProto) -> Iterator[str | bytes]:
    yield graph.name
    yield graph.doc_string
    for value in (*graph.input, *graph.output, *graph.value_info):
        yield value.name
    for tensor in (*graph.initializer, *(s.values for s in graph.sparse_initializer)):
        yield tensor.name
        for entry in tensor.external_data:
            yield from (entry.key, entry.value)
    for node in graph.node:
        yield from _node_text(node)


def _node_text(node: NodeProto) -> Iterator[str | bytes]:
    yield from (node.name, node.op_type, node.domain, node.doc_string, *node.input, *node.output)
    for attr in node.attribute:
        yield from (attr.name, attr.ref_attr_name, attr.doc_string)
        if attr.type == AttributeProto.TENSOR:
            yield attr.t.name
            for entry in attr.t.external_data:
                yield from (entry.key, entry.value)


def _model_text(model: ModelProto) -> Iterator[str | bytes]:
    yield from (model.producer_name, model.producer_version, model.domain, model.doc_string)
    for entry in model.metadata_props:
        yield from (entry.key, entry.value)
    yield from (opset.domain for opset in model.opset_import)
    for _, graph in all_graphs(model.graph):
        yield from _graph_text(graph)
    for function in model.functions:
        yield from (function.name, function.domain, *function.input, *function.output)
        for node in function.node:
            yield from _node_text(node)


def check_text(model: ModelProto) -> None:
    """Raise :class:`ModelLoadError` if a text field of ``model`` (names, op types, domains,
    doc strings, metadata, external-data entries, in every graph and function) is not UTF-8:
    protobuf parses such bytes without complaint and hands them out as ``bytes`` (or raises
    ``UnicodeDecodeError`` when they are copied into another message)."""
    try:
        bad = next((text for text in _model_text(model) if isinstance(text, bytes)), None)
    except UnicodeDecodeError as exc:
        bad = exc.object
    if bad is not None:
        raise ModelLoadError(
            f"the model holds a name or text that is not UTF-8 ({bytes(bad[:60])!r}): the file is corrupt; "
            "export or copy it again"
        )


def _attribute_type_name(code: int) -> str:
    try:
        return AttributeProto.AttributeType.Name(code)
    except ValueError:
        return f"type {code}"


def check_attributes(model: ModelProto) -> None:
    """Raise :class:`ModelLoadError` for the first attribute (in any graph) whose type tag is
    not one ONNX defines, or differs from the type the node's schema gives that attribute."""
    versions = {d.domain or "": d.version for d in model.opset_import}
    versions.setdefault("", versions.get("ai.onnx", 0))
    schemas: dict[tuple[str, str], onnx.defs.OpSchema | None] = {}
    for path, graph in all_graphs(model.graph):
        for node in graph.node:
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            key = (domain, node.op_type)
            if key not in schemas:
                schemas[key] = _schema(node.op_type, domain, versions.get(domain))
            schema = schemas[key]
            for attr in node.attribute:
                if attr.ref_attr_name:
                    continue
                expected = schema.attributes.get(attr.name) if schema is not None else None
                valid = attr.type in AttributeProto.AttributeType.values() and attr.type != AttributeProto.UNDEFINED
                if valid and (expected is None or attr.type == expected.type):
                    continue
                where = f"'{node_label(node)}' ({node.op_type})" + (f" in subgraph {path}" if path else "")
                want = f"; its schema says {_attribute_type_name(expected.type)}" if expected is not None else ""
                raise ModelLoadError(
                    f"attribute '{attr.name}' of node {where} is tagged {_attribute_type_name(attr.type)}{want}: "
                    + MALFORMED
                )


def _schema(op_type: str, domain: str, version: int | None) -> onnx.defs.OpSchema | None:
    """The schema of ``op_type`` in ``domain`` at opset ``version``; None for a domain ONNX does
    not define or an operator it does not know (other checks and onnxruntime name those)."""
    if domain not in ONNX_DOMAINS or version is None or version < 1:
        return None
    try:
        return onnx.defs.get_schema(op_type, min(version, MAX_OPSET), domain)
    except onnx.defs.SchemaError:
        return None


def check_model(model: ModelProto, *, finite: bool = False, text: bool = True) -> None:
    """Check ``model`` once, tensor by tensor (see module docstring): text (unless ``text`` is
    False: the caller checked it first), opsets, names, types, payloads, weights that are no
    numbers and, with ``finite``, that no weight holds NaN or ±inf. One-line errors naming the
    tensor."""
    if text:
        check_text(model)
    check_opsets(model)
    check_names(model)
    check_attributes(model)
    suspects: list[tuple[TensorProto, int, int]] = []
    not_real: list[TensorProto] = []
    for what, tensor in stored_tensors(model):
        raw = check_payload(what, tensor)
        if tensor.data_type in NOT_REAL:
            not_real.append(tensor)
        if finite and tensors.is_float(tensor) and tensor.data_location != TensorProto.EXTERNAL:
            nan, infinite = tensors.nonfinite_counts(_float_values(tensor, raw))
            if nan or infinite:
                suspects.append((tensor, nan, infinite))
        del raw
    check_real(model, not_real)
    check_finite(model, suspects)
