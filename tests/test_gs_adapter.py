"""Tests of :mod:`onnxprune.graph.gs_adapter` (a model to a gs.Graph and back, in place) and of
cleanup's dead-code removal on it.

"Exact" here means byte-identical: ``from_gs(to_gs(m), like=m).SerializeToString()`` equals
``m.SerializeToString()`` taken before, for every fixture and for a model carrying every field
gs's own ``export_onnx`` loses; and cleanup on gs gives the same bytes as cleanup on protos."""

from __future__ import annotations

from pathlib import Path

import builders as b
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper

from onnxprune.graph import cleanup as cleanup_module
from onnxprune.graph.gs_adapter import from_gs, to_gs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ALL_FIXTURES = sorted(FIXTURES.glob("*.onnx")) + sorted((FIXTURES / "masked").glob("*.onnx"))


def copy(model: ModelProto) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(model)
    return out


def round_trip(model: ModelProto) -> ModelProto:
    return from_gs(to_gs(model), like=model)


def rich_model(*, value_info: bool = True) -> ModelProto:
    """Every field gs's own round trip loses: model/graph/node metadata and doc strings, model
    domain and version, an attribute doc string, an empty INTS attribute, a dim denotation, a
    sequence-typed input, an If whose branch reads a main-graph initializer, an unread
    initializer, an overridable initializer (also a graph input), a local function."""
    then = helper.make_graph(
        [helper.make_node("Mul", ["X", "w_then"], ["t"], name="then_mul", doc_string="then doc")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["X"], ["e"], name="else_neg")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    relu = helper.make_node("Relu", ["y_if"], ["r"], name="relu", doc_string="node doc")
    relu.metadata_props.add(key="node key", value="node value")
    transpose = helper.make_node("Transpose", ["r"], ["Y"], name="transpose", perm=[0])
    transpose.attribute[0].doc_string = "attribute doc"
    squeeze_like = helper.make_node("Identity", ["Y"], ["Y2"], name="identity")
    squeeze_like.attribute.append(helper.make_attribute("unused_list", [], attr_type=onnx.AttributeProto.INTS))
    squeeze_like.domain = "local"
    squeeze_like.op_type = "Same"
    nodes = [
        helper.make_node("If", ["cond"], ["y_if"], name="if", then_branch=then, else_branch=other),
        relu,
        transpose,
        squeeze_like,
        helper.make_node("Add", ["X", "overridable"], ["Z"], name="add"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [3])
    x.doc_string = "input doc"
    x.type.tensor_type.shape.dim[0].denotation = "DATA_CHANNEL"
    inputs = [
        x,
        helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        helper.make_tensor_value_info("overridable", TensorProto.FLOAT, [3]),
        helper.make_tensor_sequence_value_info("sequence", TensorProto.FLOAT, None),
    ]
    outputs = [
        helper.make_tensor_value_info("Y2", TensorProto.FLOAT, [3]),
        helper.make_tensor_value_info("Z", TensorProto.FLOAT, [3]),
    ]
    inits = [
        numpy_helper.from_array(np.full(3, 2.0, np.float32), "w_then"),
        numpy_helper.from_array(np.ones(5, np.float32), "unread"),
        numpy_helper.from_array(np.ones(3, np.float32), "overridable"),
    ]
    infos = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [3])] if value_info else []
    graph = helper.make_graph(nodes, "main", inputs, outputs, inits, doc_string="graph doc", value_info=infos)
    graph.metadata_props.add(key="graph key", value="graph value")
    same = helper.make_function(
        "local", "Same", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[same],
        ir_version=8,
        producer_name="producer",
        producer_version="1.0",
        doc_string="model doc",
        domain="model.domain",
        model_version=3,
    )
    model.metadata_props.add(key="k", value="v")
    return model


# ---------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.stem)
def test_round_trip_of_every_fixture_is_byte_identical(path):
    model = onnx.load(str(path))
    model.metadata_props.add(key="onnxprune.structure", value="{}")
    model.doc_string = "doc"
    want = model.SerializeToString()
    weights = list(model.graph.initializer)  # held, so that identity means the same proto
    assert round_trip(model).SerializeToString() == want
    assert all(a is b for a, b in zip(model.graph.initializer, weights, strict=True))  # in place, not copied


def test_round_trip_keeps_what_gs_export_loses():
    model = rich_model()
    want = model.SerializeToString()
    with pytest.raises(ValueError, match="empty iterator"):  # gs cannot write an empty INTS attribute
        gs.export_onnx(gs.import_onnx(copy(model)), do_type_check=False)
    without_empty = copy(model)
    del without_empty.graph.node[3].attribute[:]
    exported = gs.export_onnx(gs.import_onnx(without_empty), do_type_check=False)
    assert exported.SerializeToString() != without_empty.SerializeToString()  # what the adapter is for:
    assert not exported.metadata_props and not exported.doc_string and not exported.graph.metadata_props
    assert [t.name for t in exported.graph.initializer] == ["overridable"]  # unread and outer ones moved/lost
    then = next(a.g for a in exported.graph.node[0].attribute if a.name == "then_branch")
    assert [t.name for t in then.initializer] == ["w_then"]  # an outer weight copied into the branch
    assert round_trip(model).SerializeToString() == want
    assert [(p.key, p.value) for p in model.metadata_props] == [("k", "v")]
    assert model.doc_string == "model doc" and model.graph.doc_string == "graph doc"
    assert [n.doc_string for n in model.graph.node][1] == "node doc"


def test_if_subgraph_survives_an_edit_and_keeps_the_outer_weight_outside():
    model = rich_model()
    graph = to_gs(model)
    relu = next(n for n in graph.nodes if n.name == "relu")
    relu.op = "Sigmoid"
    relu.name = "sigmoid"
    from_gs(graph, like=model)
    node = model.graph.node[1]
    assert (node.op_type, node.name, node.doc_string) == ("Sigmoid", "sigmoid", "node doc")
    assert [(p.key, p.value) for p in node.metadata_props] == [("node key", "node value")]
    branches = {a.name: a.g for a in model.graph.node[0].attribute}
    assert [n.name for n in branches["then_branch"].node] == ["then_mul"]
    assert branches["then_branch"].node[0].doc_string == "then doc"
    assert not branches["then_branch"].initializer and not branches["then_branch"].value_info
    assert "w_then" in [t.name for t in model.graph.initializer]


def if_model_for_onnxruntime() -> ModelProto:
    then = b.graph([b.node("Mul", ["X", "w_then"], ["t"], "then_mul")], [], [b.value("t", (3,))], name="then")
    other = b.graph([b.node("Neg", ["X"], ["e"], "else_neg")], [], [b.value("e", (3,))], name="else")
    nodes = [b.node("If", ["cond"], ["Y"], "if", then_branch=then, else_branch=other)]
    inputs = [b.value("X", (3,)), b.value("cond", (), b.BOOL)]
    return b.model(nodes, inputs, [b.value("Y", (3,))], [b.init("w_then", np.full(3, 2.0, np.float32))])


def test_edited_weights_and_new_nodes_run_in_onnxruntime():
    model = if_model_for_onnxruntime()
    graph = to_gs(model)
    (if_node,) = graph.nodes
    then = if_node.attrs["then_branch"]
    then.nodes[0].inputs[1].values = np.full(3, 3.0, np.float32)  # new values, same name: replaced in place
    y = graph.outputs[0]
    out = gs.Variable("Y_abs", dtype=np.float32, shape=(3,))
    graph.nodes.append(gs.Node("Abs", inputs=[y], outputs=[out]))
    graph.outputs = [out]
    from_gs(graph, like=model)
    onnx.checker.check_model(model, full_check=True)
    assert [t.name for t in model.graph.initializer] == ["w_then"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, -2.0, 3.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"X": x, "cond": np.asarray(True)})[0], np.abs(3 * x))
    np.testing.assert_array_equal(session.run(None, {"X": x, "cond": np.asarray(False)})[0], np.abs(x))


def test_value_info_is_not_added_where_the_model_had_none():
    for had in (False, True):
        model = rich_model(value_info=had)
        graph = to_gs(model)
        transpose = next(n for n in graph.nodes if n.name == "transpose")
        mid = gs.Variable("r_abs", dtype=np.float32, shape=(3,))  # a new value of known type
        graph.nodes.insert(graph.nodes.index(transpose), gs.Node("Abs", inputs=[transpose.inputs[0]], outputs=[mid]))
        transpose.inputs[0] = mid
        from_gs(graph, like=model)
        names = [v.name for v in model.graph.value_info]
        assert names == (["r", "r_abs"] if had else [])
        for _, sub in cleanup_module.graphs_by_owner(model.graph):
            if sub is not model.graph:
                assert not sub.value_info


def test_a_value_info_entry_contradicting_a_graph_output_does_not_replace_its_type():
    """gs reads value_info first; the output's own declaration wins, as in onnxruntime (fuzz
    seed 82 case 285: value_info said int64 for a float output, and the edited model was refused)."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [w],
        value_info=[helper.make_tensor_value_info("y", TensorProto.INT64, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # loads as given
    edited = to_gs(model)
    assert edited.outputs[0].dtype == np.float32
    edited.nodes[0].name = "renamed"  # an edit, so that the graph is written back
    from_gs(edited, like=model)
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in model.graph.value_info if v.name == "y")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.ones((2, 4), np.float32)})[0].tolist() == [[4.0] * 3] * 2


def test_unread_initializers_stay_unless_dropped():
    model = rich_model()
    from_gs(to_gs(model), like=model)
    assert "unread" in [t.name for t in model.graph.initializer]
    from_gs(to_gs(model), like=model, drop_unread=True)
    assert "unread" not in [t.name for t in model.graph.initializer]
    assert [i.name for i in model.graph.input] == ["X", "cond", "overridable", "sequence"]


def test_from_gs_refuses_another_model():
    with pytest.raises(ValueError, match="to_gs"):
        from_gs(to_gs(rich_model()), like=rich_model())


# ---------------------------------------------------------------------------------------
# Cleanup on gs against cleanup on protos


def both_engines(model: ModelProto, **options: bool) -> tuple[bytes, bytes]:
    results = []
    for on_gs in (False, True):
        work = copy(model)
        old, cleanup_module._DEAD_CODE_ON_GS = cleanup_module._DEAD_CODE_ON_GS, on_gs
        try:
            result = cleanup_module.cleanup(work, **options)
        finally:
            cleanup_module._DEAD_CODE_ON_GS = old
        results.append((work.SerializeToString(), result))
    (old_bytes, old_result), (new_bytes, new_result) = results
    assert new_result == old_result
    return old_bytes, new_bytes


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.stem)
def test_cleanup_on_gs_is_byte_identical_on_every_fixture(path):
    model = onnx.load(str(path))
    model.graph.node.append(b.node("Relu", [model.graph.input[0].name], ["dead"], "dead_relu"))
    model.graph.initializer.append(b.init("orphan", np.ones(3, np.float32)))
    old, new = both_engines(model)
    assert new == old


def test_cleanup_on_gs_keeps_what_the_proto_code_keeps():
    """A node without outputs, a value read only as a branch's output, an initializer-input
    of IR < 4 read nowhere (dropped with its input entry), dead code in a branch."""
    then = b.graph([b.node("Abs", ["X"], ["dead_in_branch"], "dead_abs")], [], [b.value("passed", (3,))], name="then")
    other = b.graph([b.node("Neg", ["X"], ["e"], "else_neg")], [], [b.value("e", (3,))], name="else")
    nodes = [
        b.node("Relu", ["X"], ["passed"], "read_by_the_branch_only"),
        b.node("If", ["cond"], ["Y"], "if", then_branch=then, else_branch=other),
        helper.make_node("Print", ["X"], [], name="no_outputs", domain="custom"),
        b.node("Sigmoid", ["X"], ["dead"], "dead"),
    ]
    inputs = [b.value("X", (3,)), b.value("cond", (), b.BOOL), b.value("old_style", (2,))]
    model = b.model(nodes, inputs, [b.value("Y", (3,))], [b.init("old_style", np.ones(2, np.float32))])
    model.ir_version = 3
    old, new = both_engines(model, fold_constants=False)
    assert new == old
    result = ModelProto.FromString(new)
    assert [n.name for n in result.graph.node] == ["read_by_the_branch_only", "if", "no_outputs"]
    assert [i.name for i in result.graph.input] == ["X", "cond"]
