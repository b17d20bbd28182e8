"""The op table: what an op means is written once, in onnxprune/ops/.

- A lint: outside ``onnxprune/ops/`` no module may switch on ``node.op_type`` more often than
  it did when the table was introduced (comparisons, ``table[node.op_type]``,
  ``table.get(node.op_type)``). The ceilings below are the debt still to move into the table;
  lower a number when you move a rule, never raise one, and a new module starts at zero.
- A toy producer op in one file (``tests/toy_linear.py``): once its spec is registered,
  discovery finds its weight, the evaluator counts its MACs and the unstructured pass prunes
  it, with nothing else changed.
- The table answers the questions that used to be coded in several places alike
  (Gemm's bias gains, quantized data slots, transparent ops).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
import toy_linear
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import ops
from onnxprune.compute import count_compute

PACKAGE = Path(onnxprune.__file__).resolve().parent

#: op_type switches left outside the table, by module (lower these; never raise them).
CEILINGS = {
    "capture.py": 1,  # LayerSpec.op_type is the table's MatrixView.capture_op (how rows are cut), not a node's op
    "graph/discovery.py": 1,  # the "graph output" pseudo reader of a Reader record, not an op rule
}


def _is_op_type(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "op_type"


def _switches(node: ast.AST) -> bool:
    """``x.op_type`` compared, used as a subscript, or as the key of a ``.get``."""
    if isinstance(node, ast.Compare):
        return _is_op_type(node.left) or any(map(_is_op_type, node.comparators))
    if isinstance(node, ast.Subscript):
        return _is_op_type(node.slice)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and _is_op_type(node.args[0])
    return False


def op_type_switches(source: str) -> int:
    """Comparisons with ``x.op_type`` and lookups keyed by it, in ``source``."""
    return sum(1 for node in ast.walk(ast.parse(source)) if _switches(node))


def test_the_lint_counts_what_it_should():
    assert op_type_switches("if node.op_type == 'Conv': pass") == 1
    assert op_type_switches("x = node.op_type in ('A', 'B')") == 1
    assert op_type_switches("r = RULES[node.op_type]; s = RULES.get(n.op_type)") == 2
    assert op_type_switches("label = f'{node.op_type}'; spec_of(node).macs") == 0


def test_no_module_outside_the_op_table_switches_on_op_types_more_than_it_did():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("ops/") or relative.startswith("cli"):
            continue  # the table itself; the CLI names op types only in help and messages
        count = op_type_switches(path.read_text(encoding="utf-8"))
        if count:
            found[relative] = count
    over = {m: (n, CEILINGS.get(m, 0)) for m, n in found.items() if n > CEILINGS.get(m, 0)}
    assert not over, f"op semantics belong in onnxprune/ops/ (module: (switches, allowed)): {over}"
    stale = {m: (found.get(m, 0), n) for m, n in CEILINGS.items() if found.get(m, 0) < n}
    assert not stale, f"lower these ceilings to what is left (module: (switches, ceiling)): {stale}"


# --------------------------------------------------------------------------- a toy producer op


def _toy_model() -> onnx.ModelProto:
    """x[1, 64] -> ToyLinear(W[64, 32]) -> y[1, 32]; ToyLinear is a model-local function."""
    body = helper.make_node("MatMul", ["x", "w"], ["y"])
    function = helper.make_function(
        toy_linear.DOMAIN, "ToyLinear", ["x", "w"], ["y"], [body], [helper.make_opsetid("", 17)]
    )
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ToyLinear", ["x", "W"], ["y"], name="toy", domain=toy_linear.DOMAIN)],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(weight, "W")],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(toy_linear.DOMAIN, 1)],
        functions=[function],
        ir_version=8,
    )


@pytest.fixture
def toy_registered():
    toy_linear.install()
    yield
    ops.unregister("ToyLinear", domain=toy_linear.DOMAIN)


def test_an_unknown_op_is_not_pruned_and_not_counted(tmp_path):
    """Nothing must change: without its spec, ToyLinear's W is no weight and does no MACs."""
    model = _toy_model()
    inventory = onnxprune.discover(model)
    assert not any(w.prunable for w in inventory.weights)
    assert count_compute(model, input_shapes={"x": (1, 64)}).macs == 0


def test_a_new_producer_op_is_one_spec(tmp_path, toy_registered):
    model = _toy_model()
    (weight,) = [w for w in onnxprune.discover(model).weights if w.prunable]
    assert (weight.name, weight.out_axis, weight.in_axis) == ("W", 1, 0)
    assert count_compute(model, input_shapes={"x": (1, 64)}).macs == 64 * 32
    source = tmp_path / "toy.onnx"
    onnx.save_model(model, str(source))
    run = onnxprune.prune_file(source, tmp_path / "toy.p50.onnx", onnxprune.PruneConfig(sparsity=0.5))
    assert [layer.name for layer in run.result.pruned] == ["W"] and run.result.zeros_after == 64 * 16
    pruned = onnx.load(str(run.saved.path))
    onnx.checker.check_model(pruned, full_check=True)
    w = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "W"))
    assert int((w == 0).sum()) == 64 * 16


# --------------------------------------------------------------------------- one answer each


def _node(op: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, ["a", "b", "c"], ["y"], **attrs)


def test_gemm_gains_are_alpha_and_beta_and_other_layers_gain_one():
    gemm = ops.lookup("Gemm")
    node = _node("Gemm", alpha=2.0, beta=0.5)
    assert (gemm.weight_gain(node), gemm.bias_gain(node), gemm.bias_input(node)) == (2.0, 0.5, 2)
    conv = ops.lookup("Conv")
    assert (conv.weight_gain(_node("Conv")), conv.bias_gain(_node("Conv")), conv.bias_input(_node("Conv"))) == (1, 1, 2)
    assert ops.lookup("LSTM").bias_layout == "gates" and ops.lookup("MatMul").bias_input(_node("MatMul")) is None


def test_quantized_data_slots_and_transparent_ops():
    assert ops.lookup("DequantizeLinear").quantized_data_slots == (0,)
    assert ops.lookup("MatMulInteger").quantized_data_slots == (0, 1)
    assert ops.lookup("QGemm", "com.microsoft").quantized_data_slots == (0, 3)
    assert ops.lookup("Relu").quantized_data_slots == () and ops.lookup("NoSuchOp") is ops.UNKNOWN
    assert ops.lookup("Identity").keeps_layout and ops.lookup("Transpose").keeps_values
    assert not ops.lookup("Transpose").keeps_layout and not ops.lookup("Reshape").keeps_values


def test_registering_an_op_twice_for_overlapping_opsets_is_refused():
    spec = ops.OpSpec()
    ops.register(spec, "Toy2", domain="com.example", since=1, until=10)
    try:
        with pytest.raises(ValueError, match="overlap"):
            ops.register(spec, "Toy2", domain="com.example", since=5)
        ops.register(ops.OpSpec(), "Toy2", domain="com.example", since=11)
        assert ops.lookup("Toy2", "com.example", opset=3) is spec
        assert ops.lookup("Toy2", "com.example", opset=12) is not spec
    finally:
        ops.unregister("Toy2", domain="com.example")
