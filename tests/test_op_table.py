"""The op table: what an op means is written once, in onnxprune/ops/.

- A lint: outside ``onnxprune/ops/`` no module may code an op rule more often than it did when
  the table was introduced. It counts, per module (the CLI aside, which names op types only in
  help and messages):

  * a switch on ``x.op_type``: a comparison (``==``, ``in`` ...), ``table[x.op_type]``,
    ``table.get(x.op_type)``;
  * a comparison of an op held elsewhere with op names: ``x.op`` (an onnx-graphsurgeon node),
    a name assigned from ``x.op_type``/``x.op`` (``op = node.op_type``), or an entry of a dict
    built with them as values (``ops = {label(n): n.op_type for n in ...}``; ``ops.get(k)``,
    ``ops[k]``), compared with a string, a tuple/list/set of strings (``op in ("A", "B")``,
    ``"Sequence" in op``) or a module-level set of op names;
  * a module-level set of op names: a ``{...}``, ``set(...)`` or ``frozenset(...)`` whose
    strings are all op names ONNX defines or the table registers (:data:`KNOWN_OPS`). Each
    counts once where it is defined, and each comparison with it again.

  Op names as data are fine: a label (``f"{node.op_type}"``), a new node
  (``helper.make_node("Add", ...)``), a dict keyed by something else that happens to be
  spelled like an op. The ceilings below are the debt still to move into the table; lower a
  number when you move a rule, never raise one, and a new module starts at zero.
- A toy producer op in one file (``tests/toy_linear.py``): once its spec is registered,
  discovery finds its weight, the evaluator counts its MACs and the unstructured pass prunes
  it, with nothing else changed.
- The table answers the questions that used to be coded in several places alike
  (Gemm's bias gains, quantized data slots, transparent ops, which ops constant folding
  leaves alone).
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

#: Op rules left outside the table, by module (lower these; never raise them).
CEILINGS: dict[str, int] = {}

#: Every op name ONNX defines (in any domain it knows) or the table registers.
KNOWN_OPS = frozenset(schema.name for schema in onnx.defs.get_all_schemas_with_history()) | {
    op for _, op in ops.registered()
}


def _is_op_type(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "op_type"


def _is_op(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("op_type", "op")


def _holds_op(node: ast.AST, aliases: set[str], maps: set[str]) -> bool:
    """``x.op_type``, ``x.op``, a name assigned from one of them, or ``ops.get(k)``/``ops[k]``
    of a dict of them."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        node = node.func.value
        return isinstance(node, ast.Name) and node.id in maps
    if isinstance(node, ast.Subscript):
        return isinstance(node.value, ast.Name) and node.value.id in maps
    return _is_op(node) or (isinstance(node, ast.Name) and node.id in aliases)


def _op_names(node: ast.AST, sets: set[str]) -> bool:
    """A string, a tuple/list/set of strings, or a module-level set of op names."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return isinstance(node, ast.Name) and node.id in sets


def _aliases(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names assigned from ``x.op_type`` or ``x.op`` (also one branch of ``a if c else b``), and
    names of dicts built with them as values."""
    names, maps = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            branches = (value.body, value.orelse) if isinstance(value, ast.IfExp) else (value,)
            if any(map(_is_op, branches)):
                names.add(node.targets[0].id)
            elif isinstance(value, ast.DictComp) and _is_op(value.value):
                maps.add(node.targets[0].id)
    return names, maps


def _is_set(node: ast.AST) -> bool:
    if isinstance(node, ast.Set):
        return True
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset")
    return isinstance(node, ast.BinOp) and (_is_set(node.left) or _is_set(node.right))


def _op_sets(tree: ast.Module) -> set[str]:
    """Module-level names bound to a set whose strings are all op names (:data:`KNOWN_OPS`)."""
    found = set()
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if value is None or not _is_set(value):
            continue
        strings = [n.value for n in ast.walk(value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if strings and all(s in KNOWN_OPS for s in strings):
            found.update(t.id for t in targets if isinstance(t, ast.Name))
    return found


def _switches(node: ast.AST, aliases: set[str], maps: set[str], sets: set[str]) -> bool:
    """``x.op_type`` compared, used as a subscript or as the key of a ``.get``; or an op held in
    ``x.op`` or a name compared with op names."""
    if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        if any(map(_is_op_type, sides)):
            return True
        return any(_holds_op(s, aliases, maps) for s in sides) and any(_op_names(s, sets) for s in sides)
    if isinstance(node, ast.Subscript):
        return _is_op_type(node.slice)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and _is_op_type(node.args[0])
    return False


def op_type_switches(source: str) -> int:
    """The op rules coded in ``source`` (see the module docstring)."""
    tree = ast.parse(source)
    (aliases, maps), sets = _aliases(tree), _op_sets(tree)
    return len(sets) + sum(1 for node in ast.walk(tree) if _switches(node, aliases, maps, sets))


def test_the_lint_counts_what_it_should():
    assert op_type_switches("if node.op_type == 'Conv': pass") == 1
    assert op_type_switches("x = node.op_type in ('A', 'B')") == 1
    assert op_type_switches("r = RULES[node.op_type]; s = RULES.get(n.op_type)") == 2
    assert op_type_switches("label = f'{node.op_type}'; spec_of(node).macs") == 0
    # an op held elsewhere, compared with op names
    assert op_type_switches("a = n.op == 'Constant'; b = n.op in ('Conv', 'Gemm')") == 2
    assert op_type_switches("op = node.op_type\nif op in {'A', 'B'} or 'Sequence' in op: pass") == 2
    assert op_type_switches("op = n.op_type if n else 'Identity'\nif op == 'Transpose': pass") == 1
    assert (
        op_type_switches("ops = {n.name: n.op_type for n in g}\nr = ops.get(k) in ('LSTM', 'GRU') or ops[j] == 'A'")
        == 2
    )
    assert op_type_switches("ops = {n.name: n.op_type for n in g}\nlabel = ops.get(k) or '?'") == 0
    # a module-level set of op names counts, and so does each test against it
    assert op_type_switches("NEVER = frozenset({'RandomNormal'} | {'Constant'})") == 1
    assert op_type_switches("OPS = {'Conv', 'Gemm'}\nok = kernel.op in OPS") == 2
    # ... not a set of other strings, one computed from the table, or a dict keyed by op-like names
    assert op_type_switches("MODES = {'dynamic', 'static'}; ROLES = frozenset({'weight', 'Conv'})") == 0
    assert op_type_switches("NEVER = frozenset(op for d, op in registered() if d == '')") == 0
    assert op_type_switches("HANDLERS = {'Conv': 1, 'MatMul': 2}\nh = HANDLERS.get(spec.capture_op)") == 0
    # ... nor an op name used to make a node, or a comparison of other names
    assert op_type_switches("n = helper.make_node('Add', ['a', 'b'], ['c'])\nif mode == 'static': pass") == 0


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
    assert not over, f"op semantics belong in onnxprune/ops/ (module: (rules, allowed)): {over}"
    stale = {m: (found.get(m, 0), n) for m, n in CEILINGS.items() if found.get(m, 0) < n}
    assert not stale, f"lower these ceilings to what is left (module: (rules, ceiling)): {stale}"


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
        assert ops.lookup("Toy2", "com.example") is spec  # the newest range, remembered...
        with pytest.raises(ValueError, match="overlap"):
            ops.register(spec, "Toy2", domain="com.example", since=5)
        newer = ops.OpSpec()
        ops.register(newer, "Toy2", domain="com.example", since=11)
        assert ops.lookup("Toy2", "com.example") is newer  # ...until a newer one is registered
        assert ops.lookup("Toy2", "com.example", opset=3) is spec
        assert ops.lookup("Toy2", "com.example", opset=12) is newer
    finally:
        ops.unregister("Toy2", domain="com.example")
    assert ops.lookup("Toy2", "com.example") is ops.UNKNOWN  # and forgotten with it


def test_the_table_says_which_ops_constant_folding_leaves_alone():
    for op in ("RandomNormal", "Bernoulli", "DequantizeLinear", "Constant", "SequenceAt", "Optional"):
        assert not ops.lookup(op).foldable, op
    for op in ("Add", "Relu", "Cast", "Transpose", "ReverseSequence", "NoSuchOp"):
        assert ops.lookup(op).foldable, op


def _tile_model() -> onnx.ModelProto:
    """y = x + Tile(c, r): the Tile reads only constants."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["c", "r"], ["t"]), helper.make_node("Add", ["x", "t"], ["y"])],
        "tile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [
            numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "c"),
            numpy_helper.from_array(np.array([2], np.int64), "r"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_folding_asks_the_table():
    from onnxprune.graph.fold_constants import fold_constants

    model = _tile_model()
    assert fold_constants(model)[0] == 1 and [n.op_type for n in model.graph.node] == ["Add"]

    class Unfoldable(ops.OpSpec):
        foldable = False

    ops.register(Unfoldable(), "Tile")
    try:
        model = _tile_model()
        assert fold_constants(model) == (0, ()) and [n.op_type for n in model.graph.node] == ["Tile", "Add"]
    finally:
        ops.unregister("Tile")


def test_the_table_knows_which_integer_ops_dynamic_quantization_writes():
    from onnxprune.ops.quantized import written_by_dynamic_quantization

    assert all(map(written_by_dynamic_quantization, ("ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM")))
    assert not any(map(written_by_dynamic_quantization, ("QLinearConv", "DequantizeLinear", "Conv", "Nope")))
