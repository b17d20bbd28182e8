"""Tests of :class:`onnxprune.graph.gs_edit.EditGraph`: the one gs graph the structural pass
and the BatchNormalization folds edit, written back into the model once.

Each test checks the model that comes back (its protos and an onnxruntime run), not gs's
objects: what reaches the user is the written model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper, numpy_helper

from onnxprune.graph.cleanup import cleanup, fold_batchnorm
from onnxprune.graph.gs_edit import EditGraph

F = TensorProto.FLOAT


def _run(model: ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _shared_weight_model() -> ModelProto:
    """Two MatMuls read one weight ``w``; a Constant node holds a shape; the graph and a node
    carry doc strings and metadata that must survive."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    unread = numpy_helper.from_array(np.ones(2, np.float32), "unread")
    shape = helper.make_node(
        "Constant", [], ["shape"], name="shape_const", value=numpy_helper.from_array(np.array([2, 3], np.int64))
    )
    a = helper.make_node("MatMul", ["x", "w"], ["a"], name="mm_a", doc_string="keep me")
    a.metadata_props.add(key="k", value="v")
    b = helper.make_node("MatMul", ["x", "w"], ["b"], name="mm_b")
    add = helper.make_node("Add", ["a", "b"], ["s"], name="add")
    reshape = helper.make_node("Reshape", ["s", "shape"], ["y"], name="reshape")
    graph = helper.make_graph(
        [shape, a, b, add, reshape],
        "g",
        [helper.make_tensor_value_info("x", F, [2, 4])],
        [helper.make_tensor_value_info("y", F, [2, 3])],
        initializer=[w, unread],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.doc_string = "model doc"
    model.metadata_props.add(key="author", value="test")
    onnx.checker.check_model(model)
    return model


def test_an_unedited_graph_writes_back_byte_identical():
    model = _shared_weight_model()
    before = model.SerializeToString()
    graph = EditGraph(model)
    assert graph.values("w").shape == (4, 3) and graph.constant("shape") is not None
    graph.commit()
    assert model.SerializeToString() == before


def test_own_copies_a_shared_weight_for_the_given_readers_only():
    model = _shared_weight_model()
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    graph = EditGraph(model)
    assert graph.readers("w") == {(1, 1), (2, 1)} and graph.uses("w") == 2
    mine = graph.own("w", {(1, 1)})
    assert mine != "w" and graph.readers(mine) == {(1, 1)} and graph.readers("w") == {(2, 1)}
    assert graph.own(mine, {(1, 1)}) == mine  # now it is the reader's own: no second copy
    graph.set_values(mine, np.zeros((4, 3), np.float32))
    graph.commit()
    onnx.checker.check_model(model)
    (y,) = _run(model, x)
    np.testing.assert_allclose(y, (x @ w).reshape(2, 3), rtol=1e-6)  # mm_a now reads zeros
    node = model.graph.node[1]
    assert node.doc_string == "keep me" and node.metadata_props[0].value == "v"
    assert model.doc_string == "model doc" and model.metadata_props[0].key == "author"
    assert [t.name for t in model.graph.initializer][:2] == ["w", "unread"]  # kept, in place


def test_a_constant_node_value_is_edited_in_its_node():
    model = _shared_weight_model()
    graph = EditGraph(model)
    graph.set_values("shape", np.array([3, 2], np.int64))
    graph.commit()
    (node,) = [n for n in model.graph.node if n.op_type == "Constant"]
    assert numpy_helper.to_array(node.attribute[0].t).tolist() == [3, 2]
    assert not node.attribute[0].t.HasField("name")  # no name field where the proto had none


def test_a_new_node_is_placed_after_its_producer_and_the_graph_stays_sorted():
    model = _shared_weight_model()
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    (dense,) = _run(model, x)
    graph = EditGraph(model)
    bias = graph.add_constant("mm_a.bias", np.full(3, 0.5, np.float32))
    renamed = graph.take_output(1, "a.nobias")
    index = graph.add_after(1, "Add", [renamed, bias], [graph.tensor("a")], name="mm_a.bias_add")
    assert index == 5 and graph.readers(bias.name) == {(5, 1)}
    graph.commit()
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node] == ["shape_const", "mm_a", "mm_a.bias_add", "mm_b", "add", "reshape"]
    (y,) = _run(model, x)
    np.testing.assert_allclose(y, dense + 0.5, rtol=1e-6)


def test_commit_keeps_initializers_an_edit_leaves_unread_for_cleanup_to_count():
    model = _shared_weight_model()
    graph = EditGraph(model)
    zeros = graph.add_constant("w0", np.zeros((4, 3), np.float32))
    graph.set_input(1, 1, zeros)
    graph.set_input(2, 1, zeros)  # nothing reads "w" any more
    graph.commit()
    assert {"w", "unread", zeros.name} <= {t.name for t in model.graph.initializer}
    result = cleanup(model)
    assert result.initializers_removed == 2  # "w" and the never-read "unread"
    assert {t.name for t in model.graph.initializer} == {zeros.name}


def test_proto_follows_a_touched_node():
    model = _shared_weight_model()
    graph = EditGraph(model)
    node = graph.node(1)
    assert graph.proto(node) is model.graph.node[1]
    node.attrs["note"] = 1
    graph.touch(node)
    fresh = graph.proto(node)
    assert fresh is not model.graph.node[1] and [a.name for a in fresh.attribute] == ["note"]


def _bn_in_a_branch() -> ModelProto:
    """An If whose then-branch runs Conv → BatchNormalization on a weight the main graph's
    Conv reads too: the fold inside the branch must copy it, the main Conv keeps it."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((2, 1, 1, 1)).astype(np.float32), "w")
    params = [
        numpy_helper.from_array(v.astype(np.float32), n)
        for n, v in (
            ("scale", rng.uniform(0.5, 2, 2)),
            ("beta", rng.standard_normal(2)),
            ("mean", rng.standard_normal(2)),
            ("var", rng.uniform(0.5, 2, 2)),
        )
    ]
    branch = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="inner_conv"),
            helper.make_node("BatchNormalization", ["c", "scale", "beta", "mean", "var"], ["t"], name="bn"),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("t", F, [1, 2, 2, 2])],
        initializer=params,
    )
    other = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["e"], name="else_conv")],
        "else",
        [],
        [helper.make_tensor_value_info("e", F, [1, 2, 2, 2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["main"], name="main_conv"),
            helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=branch, else_branch=other),
            helper.make_node("Add", ["main", "branch"], ["y"], name="add"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", F, [1, 1, 2, 2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", F, [1, 2, 2, 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_a_bn_in_a_subgraph_folds_and_copies_the_weight_it_shares():
    model = _bn_in_a_branch()
    x = np.random.default_rng(4).standard_normal((1, 1, 2, 2)).astype(np.float32)
    feeds = [{"x": x, "cond": np.array(c)} for c in (True, False)]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dense = [session.run(None, f)[0] for f in feeds]
    folded, kept = fold_batchnorm(model)
    assert folded == ["bn"] and kept == []
    onnx.checker.check_model(model)
    (branch,) = [a.g for a in model.graph.node[1].attribute if a.name == "then_branch"]
    assert [n.op_type for n in branch.node] == ["Conv"]
    assert branch.node[0].input[1] != "w" and model.graph.node[0].input[1] == "w"  # the branch has its own copy
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for f, want in zip(feeds, dense, strict=True):
        np.testing.assert_allclose(session.run(None, f)[0], want, rtol=1e-5, atol=1e-6)
