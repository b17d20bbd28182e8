"""Weight discovery on the graph shapes real exporters write, and pruning each of them.

Every case is asserted four ways (DESIGN.md, tests):

* the structure: the discovered record of every listed tensor (name, storage, role, ops,
  shape, dtype, output and reduction axes, prunable or the reason why not), and no other;
* what changed: each prunable tensor has exactly ``floor(0.5·n)`` zeros, in its own dtype,
  at the smallest magnitudes; every other stored tensor is byte-identical (doc strings
  aside, which carry the provenance); pruning again at the same sparsity adds nothing;
* ``onnx.checker`` (full check) on the pruned model;
* onnxruntime: the pruned model computes exactly what the dense model computes with the
  weights pruned independently in numpy, and differs from the dense model when (and
  only when) something was pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import builders as b
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import AttributeProto, ModelProto, TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import DiscoveryOptions, PruneConfig, PruneResult
from onnxprune.ops import TransformContext, lookup

HALF = PruneConfig(sparsity=0.5, min_size=0)
EVERYTHING = DiscoveryOptions(min_size=0)


# ---------------------------------------------------------------------------------------
# Helpers


@dataclass(frozen=True)
class Rec:
    """The expected discovery record of one tensor (``reason``: a substring, None if prunable)."""

    key: str
    shape: tuple[int, ...]
    ops: tuple[str, ...] = ()
    out_axis: int | None = None
    in_axis: int | None = None
    role: str = "weight"
    storage: str = "initializer"
    dtype: str = "float32"
    reason: str | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("::", 1)[-1]


def weight(key: str, shape: tuple[int, ...], op: str, out_axis: int | None, in_axis: int | None, **kw) -> Rec:
    return Rec(key, shape, (op,), out_axis, in_axis, **kw)


def bias(key: str, shape: tuple[int, ...], **kw) -> Rec:
    return Rec(key, shape, role="bias", reason="bias: not pruned", **kw)


def norm(key: str, shape: tuple[int, ...]) -> Rec:
    return Rec(key, shape, role="norm", reason="normalization parameter: not pruned")


def run(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warning for initializers listed as inputs
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def stored_tensors(model: ModelProto) -> dict[str, TensorProto]:
    """Every TensorProto of the model, keyed like ``Weight.key``: initializers by name,
    Constant nodes by output, other tensor attributes by ``node/attribute``; tensors of a
    subgraph prefixed with ``node/attribute::`` (nested with ``/``)."""
    found: dict[str, TensorProto] = {}

    def visit(graph: onnx.GraphProto, path: str) -> None:
        prefix = f"{path}::" if path else ""
        for tensor in graph.initializer:
            found[prefix + tensor.name] = tensor
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    key = node.output[0] if node.op_type == "Constant" else f"{node.name}/{attr.name}"
                    found[prefix + key] = attr.t
                elif attr.type == AttributeProto.GRAPH:
                    visit(attr.g, f"{path}/{node.name}/{attr.name}" if path else f"{node.name}/{attr.name}")

    visit(model.graph, "")
    return found


def tensor_bytes(tensor: TensorProto) -> bytes:
    """The serialized tensor without its doc_string (where the provenance goes)."""
    copy = TensorProto()
    copy.CopyFrom(tensor)
    copy.ClearField("doc_string")
    return copy.SerializeToString()


def bits(values: np.ndarray) -> np.ndarray:
    return values.view(f"u{values.dtype.itemsize}")


def magnitude_pruned(values: np.ndarray, count: int) -> np.ndarray:
    """``values`` with its ``count`` smallest magnitudes set to +0 (ties: lower flat index),
    computed independently of onnxprune."""
    order = np.argsort(np.abs(values.astype(np.float64)).reshape(-1), kind="stable")
    flat = values.copy().reshape(-1)
    flat[order[:count]] = 0
    return flat.reshape(values.shape)


def check_records(model: ModelProto, expected: Sequence[Rec], options: DiscoveryOptions = EVERYTHING) -> None:
    inventory = onnxprune.inspect(model, options)
    found = {w.key: w for w in inventory.weights}
    assert sorted(found) == sorted(r.key for r in expected), "discovered a different set of tensors"
    assert len(found) == len(inventory.weights), "a tensor was discovered twice"
    for rec in expected:
        w = found[rec.key]
        got = (w.name, w.storage, w.role, w.ops, w.shape, w.dtype, w.out_axis, w.in_axis, w.prunable)
        want = (rec.name, rec.storage, rec.role, rec.ops, rec.shape, rec.dtype, rec.out_axis, rec.in_axis)
        assert got == (*want, rec.reason is None), rec.key
        if rec.reason is None:
            assert w.reason is None
        else:
            assert w.reason is not None and rec.reason in w.reason, (rec.key, w.reason)
        if w.storage != "computed":
            values = numpy_helper.to_array(inventory.proto(w))
            assert w.numel == values.size == math.prod(rec.shape)
            assert w.zeros == values.size - np.count_nonzero(values)


def check_prune(
    model: ModelProto,
    pruned: set[str],
    feed_sets: Sequence[dict[str, np.ndarray]] | None = None,
    config: PruneConfig = HALF,
) -> tuple[ModelProto, PruneResult]:
    """Prune ``model`` with ``config`` (local scope) and assert what changed (see module docstring)."""
    amount = config.sparsity
    assert amount is not None and config.scope == "local"
    original = model.SerializeToString()
    out, result = onnxprune.prune(model, config)
    assert model.SerializeToString() == original, "the input model was modified"
    onnx.checker.check_model(out, full_check=True)

    before, after = stored_tensors(model), stored_tensors(out)
    assert before.keys() == after.keys()
    assert pruned <= before.keys()
    expected: dict[str, np.ndarray] = {}
    for key, tensor in before.items():
        new = after[key]
        if key not in pruned:
            assert tensor_bytes(new) == tensor_bytes(tensor), f"{key} changed"
            continue
        assert (new.data_type, list(new.dims)) == (tensor.data_type, list(tensor.dims)), key
        values = numpy_helper.to_array(tensor)
        count = math.floor(amount * values.size)
        expected[key] = magnitude_pruned(values, count)
        got = numpy_helper.to_array(new)
        assert got.dtype == values.dtype
        assert np.count_nonzero(got == 0) == count, key
        assert np.array_equal(bits(got), bits(expected[key])), f"{key}: not the smallest magnitudes, or not +0"

    assert {layer.key for layer in result.pruned} == pruned
    for layer in result.pruned:
        assert (layer.zeros_before, layer.zeros_after) == (0, math.floor(amount * layer.numel)), layer.key
        assert layer.pattern == "unstructured" and layer.target == amount
    for layer in result.skipped:
        assert layer.reason, f"{layer.key} skipped without a reason"

    reference = b.substitute(model, expected)
    changed = False
    for feeds in feed_sets or [b.feeds(model)]:
        dense, got, want = run(model, feeds), run(out, feeds), run(reference, feeds)
        for g, w, d in zip(got, want, dense, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
            changed |= not np.allclose(g, d)
            if not pruned:
                np.testing.assert_array_equal(g, d)
    assert changed == bool(pruned), "pruning changed nothing" if pruned else "outputs changed"

    again, second = onnxprune.prune(out, config)
    assert second.newly_zeroed == 0
    twice = stored_tensors(again)
    for key, tensor in after.items():
        assert tensor_bytes(twice[key]) == tensor_bytes(tensor), f"{key} changed when pruned again"
    return out, result


def ids_feeds(model: ModelProto) -> list[dict[str, np.ndarray]]:
    return [b.feeds(model, ids=np.arange(6, dtype=np.int64).reshape(2, 3) * 7)]


def both_branches(model: ModelProto) -> list[dict[str, np.ndarray]]:
    return [b.feeds(model, cond=np.asarray(True)), b.feeds(model, cond=np.asarray(False))]


# ---------------------------------------------------------------------------------------
# The export shapes


@dataclass(frozen=True)
class Case:
    build: Callable[[], ModelProto]
    records: tuple[Rec, ...]
    feeds: Callable[[ModelProto], list[dict[str, np.ndarray]]] | None = None


GATES_RECORDS = {
    op: (
        weight("W", (1, b.GATES[op] * 8, 16), op, 1, 2),
        weight("R", (1, b.GATES[op] * 8, 8), op, 1, 2),
        bias("B", (1, 2 * b.GATES[op] * 8)),
    )
    for op in b.GATES
}

CASES = {
    # convolutions
    "conv": Case(b.conv, (weight("W", (8, 4, 3, 3), "Conv", 0, 1), bias("B", (8,)))),
    "conv_transpose": Case(b.conv_transpose, (weight("W", (4, 8, 3, 3), "ConvTranspose", 1, 0), bias("B", (8,)))),
    "depthwise_conv": Case(b.depthwise_conv, (weight("W", (16, 1, 3, 3), "Conv", 0, 1),)),
    # Gemm and MatMul
    "gemm_transB0": Case(lambda: b.gemm(trans_b=0), (weight("W", (32, 16), "Gemm", 1, 0), bias("C", (16,)))),
    "gemm_transB1": Case(lambda: b.gemm(trans_b=1), (weight("W", (16, 32), "Gemm", 0, 1), bias("C", (16,)))),
    "gemm_constant_a": Case(b.gemm_constant_a, (weight("W", (16, 32), "Gemm", 0, 1),)),
    "gemm_constant_a_transA": Case(lambda: b.gemm_constant_a(trans_a=1), (weight("W", (32, 16), "Gemm", 1, 0),)),
    "matmul_right": Case(b.matmul_right, (weight("W", (32, 16), "MatMul", 1, 0),)),
    "matmul_left": Case(b.matmul_left, (weight("W", (16, 32), "MatMul", 0, 1),)),
    "matmul_batched": Case(b.matmul_batched, (weight("W", (3, 16, 8), "MatMul", 2, 1),)),
    # recurrent layers
    "lstm": Case(lambda: b.recurrent("LSTM"), GATES_RECORDS["LSTM"]),
    "gru": Case(lambda: b.recurrent("GRU"), GATES_RECORDS["GRU"]),
    "rnn": Case(lambda: b.recurrent("RNN"), GATES_RECORDS["RNN"]),
    # Constant nodes instead of initializers
    "conv_constant": Case(
        lambda: b.conv(as_constant=True),
        (weight("W", (8, 4, 3, 3), "Conv", 0, 1, storage="constant"), bias("B", (8,), storage="constant")),
    ),
    "gemm_constant": Case(
        lambda: b.gemm(trans_b=1, as_constant=True),
        (weight("W", (16, 32), "Gemm", 0, 1, storage="constant"), bias("C", (16,))),
    ),
    "matmul_constant": Case(
        lambda: b.matmul_right(as_constant=True), (weight("W", (32, 16), "MatMul", 1, 0, storage="constant"),)
    ),
    # transparent ops between the stored tensor and the weight input
    "identity": Case(b.identity_matmul, (weight("W", (32, 16), "MatMul", 1, 0),)),
    "cast_fp16_matmul": Case(b.cast_fp16_matmul, (weight("W", (32, 16), "MatMul", 1, 0, dtype="float16"),)),
    "cast_fp16_conv": Case(b.cast_fp16_conv, (weight("W", (8, 4, 3, 3), "Conv", 0, 1, dtype="float16"),)),
    "transpose_matmul": Case(b.transpose_matmul, (weight("W", (16, 32), "MatMul", 0, 1),)),
    "transpose_conv_hwio": Case(b.transpose_conv_hwio, (weight("W", (3, 3, 4, 8), "Conv", 3, 2),)),
    "reshape_conv": Case(b.reshape_conv, (weight("W", (8, 36), "Conv", 0, None),)),
    "reshape_matmul": Case(b.reshape_matmul, (weight("W", (1, 32, 16), "MatMul", 2, 1),)),
    "unsqueeze_matmul": Case(b.unsqueeze_matmul, (weight("W", (32, 16), "MatMul", 1, 0),)),
    "slice_matmul": Case(b.slice_matmul, (weight("W", (32, 32), "MatMul", 1, 0),)),
    "slice_steps_matmul": Case(b.slice_steps_matmul, (weight("W", (32, 32), "MatMul", 1, 0),)),
    "split_matmul": Case(b.split_matmul, (weight("W", (32, 48), "MatMul", 1, 0),)),
    "lstm_concat_gates": Case(
        b.lstm_concat_gates,
        (
            *(weight(p, (1, 8, 16), "LSTM", 1, 2) for p in ("W_i", "W_o", "W_f", "W_c")),
            weight("R", (1, 32, 8), "LSTM", 1, 2),
        ),
    ),
    "dequantize": Case(b.dequantize_matmul, (weight("W", (32, 16), "MatMul", 1, 0, dtype="int8", reason="quantized"),)),
    # sharing and subgraphs
    "shared": Case(b.shared_weight, (Rec("W", (32, 16), ("MatMul", "Gemm"), 1, 0),)),
    "if_outer_weight": Case(b.if_branches, (weight("W", (32, 16), "MatMul", 1, 0),), both_branches),
    "if_branch_constant": Case(
        b.if_branch_constant,
        (weight("if/then_branch::Wc", (32, 16), "MatMul", 1, 0, storage="constant"),),
        both_branches,
    ),
    "loop_body_initializer": Case(b.loop_body, (weight("loop/body::Wl", (16, 16), "MatMul", 1, 0),)),
    "loop_outer_weight": Case(b.loop_outer_weight, (weight("W", (16, 16), "MatMul", 0, 1),)),
    "if_in_loop_outer_weight": Case(b.loop_with_if, (weight("W", (16, 16), "MatMul", 1, 0),)),
    "scan_body_initializer": Case(b.scan_body, (weight("scan/body::Ws", (16, 16), "MatMul", 1, 0),)),
    # tensors that are not (only) weights
    "embedding": Case(
        b.embedding, (Rec("E", (50, 16), role="embedding", reason="embedding table read by Gather"),), ids_feeds
    ),
    "tied_embedding": Case(
        b.tied_embedding,
        (Rec("E", (50, 16), ("MatMul",), role="mixed", reason="also read as input 0 of Gather 'embed'"),),
        ids_feeds,
    ),
    "weight_is_output": Case(
        b.weight_is_output, (Rec("W", (32, 16), ("MatMul",), role="mixed", reason="also read as a graph output"),)
    ),
    "shape_reader": Case(b.shape_reader, (weight("W", (32, 16), "MatMul", 1, 0),)),
    "initializers_as_inputs": Case(b.initializers_as_inputs, (weight("W", (32, 16), "MatMul", 1, 0),)),
    "biases_and_norms": Case(
        b.biases_and_norms,
        (
            weight("conv.W", (8, 4, 3, 3), "Conv", 0, 1),
            bias("conv.B", (8,)),
            *(norm(f"bn.{p}", (8,)) for p in ("scale", "bias", "mean", "var")),
            weight("fc.W", (512, 16), "Gemm", 1, 0),
            bias("fc.C", (16,)),
            weight("proj.W", (16, 32), "MatMul", 1, 0),
            bias("proj.b", (32,)),
            norm("ln.gamma", (32,)),
            norm("ln.beta", (32,)),
        ),
    ),
    # weights computed at run time
    "conv_weight_is_input": Case(
        b.conv_computed_weight,
        (Rec("W", (), ("Conv",), storage="computed", dtype="?", reason="computed at run time by a graph input"),),
    ),
    "conv_weight_is_mul": Case(
        b.conv_scaled_weight,
        (Rec("Ws", (), ("Conv",), storage="computed", dtype="?", reason="computed at run time by Mul"),),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_discovered_and_pruned(case: Case) -> None:
    model = case.build()
    check_records(model, case.records)
    pruned = {r.key for r in case.records if r.reason is None}
    check_prune(model, pruned, case.feeds(model) if case.feeds else None)


# ---------------------------------------------------------------------------------------
# Details of particular shapes


def test_fp16_weight_is_pruned_in_float16() -> None:
    model = b.cast_fp16_matmul()
    out, result = check_prune(model, {"W"})
    tensor = stored_tensors(out)["W"]
    assert tensor.data_type == TensorProto.FLOAT16
    assert numpy_helper.to_array(tensor).dtype == np.float16
    assert result.pruned[0].dtype == "float16"
    assert len(tensor.raw_data) == 2 * 32 * 16


def test_discovery_keeps_where_a_few_zeros_are_and_nm_counts_from_them(monkeypatch) -> None:
    """A float weight with few zeros (``-0`` too) carries their flat indices, none past
    ZERO_INDEX_MAX; the N:M pass counts its zeros after from them, as the written tensor has."""
    from onnxprune.graph import discovery

    model = b.gemm(trans_b=1)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w.reshape(-1)[[3, 4, 5, 6, 70, 71, 300]] = [0.0, -0.0, 0.0, 0.0, 0.0, -0.0, 0.0]  # row 0: cols 4-6 in one group
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    found = {x.name: x for x in onnxprune.inspect(model).weights}["W"]
    assert found.zeros == 7 and found.zero_at.tolist() == [3, 4, 5, 6, 70, 71, 300]
    from onnxprune import sparsity

    monkeypatch.setattr(sparsity, "nm_zeros_after", None)  # not called: no read to count
    out, result = onnxprune.prune(model, PruneConfig(pattern=(2, 4)))
    monkeypatch.undo()
    written = numpy_helper.to_array(stored_tensors(out)["W"])
    assert result.pruned[0].zeros_after == int(np.count_nonzero(written == 0)) == 16 * 32 // 2 + 1
    monkeypatch.setattr(discovery, "ZERO_INDEX_MAX", 6)
    assert {x.name: x for x in onnxprune.inspect(model).weights}["W"].zero_at is None


def test_shared_weight_is_pruned_once() -> None:
    model = b.shared_weight()
    (w,) = onnxprune.inspect(model, EVERYTHING).weights
    assert w.nodes == ("matmul", "gemm")
    assert [(r.op_type, r.input_index) for r in w.readers] == [("MatMul", 1), ("Gemm", 1)]
    out, result = check_prune(model, {"W"})
    assert len(result.layers) == 1 and result.pruned[0].nodes == ("matmul", "gemm")
    feeds = b.feeds(model)
    pruned_w = numpy_helper.to_array(stored_tensors(out)["W"])
    y1, y2 = run(out, feeds)
    np.testing.assert_allclose(y1, feeds["X1"] @ pruned_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y2, feeds["X2"] @ pruned_w, rtol=1e-5, atol=1e-5)


def test_slice_and_split_pieces_share_one_stored_tensor() -> None:
    (w,) = onnxprune.inspect(b.slice_matmul(), EVERYTHING).weights
    assert w.nodes == ("matmul_a", "matmul_b")
    (w,) = onnxprune.inspect(b.split_matmul(), EVERYTHING).weights
    assert w.nodes == ("matmul_q", "matmul_k", "matmul_v")


def test_graph_output_is_a_reason_not_a_node() -> None:
    (w,) = onnxprune.inspect(b.weight_is_output(), EVERYTHING).weights
    assert w.nodes == ("matmul",)
    assert ("graph output", -1) in [(r.op_type, r.input_index) for r in w.readers]


def test_gemm_with_constant_a_reports_no_computed_weight() -> None:
    # B is the activation here; it must not be listed as a weight computed at run time.
    for model in (b.gemm_constant_a(), b.gemm_constant_a(trans_a=1)):
        assert [w.storage for w in onnxprune.inspect(model, EVERYTHING).weights] == ["initializer"]


def test_subgraph_weights_are_read_from_their_scope() -> None:
    inventory = onnxprune.inspect(b.if_branches(), EVERYTHING)
    (w,) = inventory.weights
    assert w.scope == "" and {r.scope for r in w.readers} == {"if/then_branch", "if/else_branch"}
    (w,) = onnxprune.inspect(b.loop_body(), EVERYTHING).weights
    assert (w.scope, w.name, w.key) == ("loop/body", "Wl", "loop/body::Wl")
    (w,) = onnxprune.inspect(b.loop_with_if(), EVERYTHING).weights
    assert w.scope == "" and [r.scope for r in w.readers] == ["loop/body/body_if/then_branch"]


def test_subgraphs_with_the_same_label_get_distinct_keys() -> None:
    model = b.if_colliding_labels()
    keys = [w.key for w in onnxprune.inspect(model, EVERYTHING).weights]
    assert keys == ["If_1/then_branch::Wa", "If_1/then_branch#2::Wa"]
    out, result = onnxprune.prune(model, HALF)
    assert [(layer.key, layer.zeros_after) for layer in result.pruned] == [(k, 256) for k in keys]
    for before, after in zip(model.graph.node, out.graph.node, strict=True):
        dense, pruned = (
            numpy_helper.to_array(helper.get_attribute_value(a).initializer[0])
            for n in (before, after)
            for a in n.attribute
            if a.name == "then_branch"
        )
        assert np.array_equal(bits(pruned), bits(magnitude_pruned(dense, 256)))
    feeds = b.feeds(model, cond=np.asarray(True))
    for got, dense in zip(run(out, feeds), run(model, feeds), strict=True):
        assert not np.allclose(got, dense)


def test_unnamed_nodes_get_labels() -> None:
    # Unnamed nodes: a subgraph is labelled op_type_index, a reader op_type(first output).
    model = b.loop_body()
    model.graph.node[0].name = ""
    for n in model.graph.node[0].attribute[0].g.node:
        n.name = ""
    (w,) = onnxprune.inspect(model, EVERYTHING).weights
    assert (w.key, w.nodes) == ("Loop_0/body::Wl", ("MatMul(hw)",))
    _, result = onnxprune.prune(model, HALF)
    assert [layer.key for layer in result.pruned] == ["Loop_0/body::Wl"]


def test_tensors_in_typed_fields_are_rewritten() -> None:
    # helper.make_tensor without raw=True stores the values in float_data.
    model = b.matmul_right()
    values = numpy_helper.to_array(model.graph.initializer[0])
    typed = helper.make_tensor("W", TensorProto.FLOAT, values.shape, values.reshape(-1).tolist())
    model.graph.initializer[0].CopyFrom(typed)
    assert len(model.graph.initializer[0].float_data) == values.size
    check_prune(model, {"W"})


@pytest.mark.parametrize(
    ("axis", "shape", "axis_map"),
    [(0, (1, 512), (None, None)), (1, (16, 32), (0, 1)), (2, (512, 1), (None, None)), (-1, (16, 32), (0, 1))],
)
def test_flatten_transform_axes(axis: int, shape: tuple[int, int], axis_map: tuple) -> None:
    # Flatten's axis lies in [-rank, rank]; axis == rank gives [n, 1].
    flatten = helper.make_node("Flatten", ["W"], ["F"], axis=axis)
    transform = lookup("Flatten").transform(TransformContext(flatten, 0, (16, 32), lambda name: None))
    assert transform is not None and (transform.shape, transform.axis_map) == (shape, axis_map)


# ---------------------------------------------------------------------------------------
# Options: min_size, include, exclude, op_types


def test_min_size_skips_small_tensors_with_the_reason() -> None:
    model = b.matmul_small()
    (w, _) = onnxprune.inspect(model).weights
    assert (w.name, w.prunable, w.reason) == ("W", False, "64 elements, below min_size=256")
    (w,) = onnxprune.inspect(b.depthwise_conv()).weights
    assert w.reason == "144 elements, below min_size=256"
    check_prune(b.depthwise_conv(), set(), config=PruneConfig(sparsity=0.5))


def test_min_size_is_inclusive() -> None:
    model = b.matmul_right()  # 512 weights
    assert onnxprune.inspect(model, DiscoveryOptions(min_size=512)).weights[0].prunable
    (w,) = onnxprune.inspect(model, DiscoveryOptions(min_size=513)).weights
    assert w.reason == "512 elements, below min_size=513"


FILTERS = {
    "include_tensor_name": ({"include": (r"^fc\.",)}, {"fc.weight"}, "not matched by include"),
    "include_node_name": ({"include": (r"^conv1$",)}, {"conv1.weight"}, "not matched by include"),
    "exclude": ({"exclude": (r"^head",)}, {"conv1.weight", "fc.weight"}, "matched by exclude"),
    "op_types": ({"op_types": ("Conv", "Gemm")}, {"conv1.weight", "fc.weight"}, "op MatMul not selected"),
    "include_and_exclude": (
        {"include": (r"weight$",), "exclude": (r"^fc$",)},
        {"conv1.weight", "head.weight"},
        "matched by exclude",
    ),
}


@pytest.mark.parametrize(("fields", "kept", "reason"), FILTERS.values(), ids=FILTERS.keys())
def test_filters(fields: dict, kept: set[str], reason: str) -> None:
    model = b.conv_gemm_matmul()
    inventory = onnxprune.inspect(model, DiscoveryOptions(min_size=0, **fields))
    assert {w.key for w in inventory.weights} == {"conv1.weight", "fc.weight", "head.weight"}
    assert {w.key for w in inventory.prunable} == kept
    for w in inventory.skipped:
        assert reason in w.reason, w.reason
    _, result = check_prune(model, kept, config=PruneConfig(sparsity=0.5, min_size=0, **fields))
    assert all(reason in layer.reason for layer in result.skipped)


# ---------------------------------------------------------------------------------------
# Cases where nothing may change


def test_nothing_changes_when_every_tensor_is_small() -> None:
    model = b.matmul_small()
    _, result = check_prune(model, set(), config=PruneConfig(sparsity=0.5))
    assert result.pruned == () and result.newly_zeroed == 0
    assert [layer.key for layer in result.skipped] == ["W", "b"]


@pytest.mark.parametrize("build", [b.biases_and_norms, b.cast_fp16_conv, b.if_branches], ids=lambda f: f.__name__)
def test_nothing_changes_at_zero_sparsity(build: Callable[[], ModelProto]) -> None:
    model = build()
    out, result = onnxprune.prune(model, PruneConfig(sparsity=0.0, min_size=0))
    assert result.pruned and result.newly_zeroed == 0
    before, after = stored_tensors(model), stored_tensors(out)
    assert {k: tensor_bytes(t) for k, t in before.items()} == {k: tensor_bytes(t) for k, t in after.items()}
    onnx.checker.check_model(out, full_check=True)
    feeds = both_branches(model)[0] if build is b.if_branches else b.feeds(model)
    for got, dense in zip(run(out, feeds), run(model, feeds), strict=True):
        np.testing.assert_array_equal(got, dense)


# ---------------------------------------------------------------------------------------
# Weights that are already sparse


def _with_zeros(fraction: float) -> tuple[ModelProto, int]:
    """matmul_right with the first ``fraction`` of W's weights (flat order) set to zero."""
    model = b.matmul_right()
    values = numpy_helper.to_array(model.graph.initializer[0]).copy()
    count = int(fraction * values.size)
    values.reshape(-1)[:count] = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(values, "W"))
    return model, count


def test_existing_zeros_count_toward_the_target() -> None:
    model, existing = _with_zeros(0.3)
    (w,) = onnxprune.inspect(model).weights
    assert (w.zeros, w.numel) == (existing, 512)
    out, result = onnxprune.prune(model, PruneConfig(sparsity=0.5))
    (layer,) = result.pruned
    assert (layer.zeros_before, layer.zeros_after, result.newly_zeroed) == (existing, 256, 256 - existing)
    got = numpy_helper.to_array(stored_tensors(out)["W"])
    assert np.count_nonzero(got == 0) == 256
    assert not got.reshape(-1)[:existing].any()


def test_a_weight_sparser_than_the_target_is_left_alone() -> None:
    model, existing = _with_zeros(0.7)
    out, result = onnxprune.prune(model, PruneConfig(sparsity=0.5))
    (layer,) = result.pruned
    assert (layer.zeros_before, layer.zeros_after, result.newly_zeroed) == (existing, existing, 0)
    assert tensor_bytes(stored_tensors(out)["W"]) == tensor_bytes(model.graph.initializer[0])


def test_provenance_marks_only_the_reading_node_of_the_right_scope():
    """A main-graph node named like the Loop body's reader gets no provenance line."""
    model = b.loop_body()
    body = model.graph.node[0].attribute[0].g
    model.graph.node.append(b.node("Identity", ["Y"], ["Y2"], "body_matmul"))  # same name, main graph
    model.graph.output[0].name = "Y2"
    pruned, result = onnxprune.prune(model, PruneConfig(sparsity=0.5, min_size=0))
    assert [layer.name for layer in result.pruned] == ["Wl"]
    body = pruned.graph.node[0].attribute[0].g
    assert "onnxprune:" in next(n for n in body.node if n.name == "body_matmul").doc_string
    assert "onnxprune:" not in pruned.graph.node[1].doc_string
