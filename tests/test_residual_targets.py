"""A layer whose output is summed with another activation (a residual connection) is fitted to the
dense sum: the graph rule that finds ``r`` (passes/layers.py), the capture of ``R = Σ xᵀ(r_d − r)``
(capture.py) and the target it gives (reconstruct.layer.dense_target)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import F32, init, model, node, rand, value

from onnxprune import runtime
from onnxprune.capture import capture
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.passes.layers import calib_layer
from onnxprune.reconstruct.layer import dense_target, output_error


def _block(*, tail: str = "residual", bias: bool = True) -> onnx.ModelProto:
    """x -> MatMul(W1) -> Relu = h;  h -> MatMul(W2) [-> Add(b2)] -> tail, where tail is
    "residual": Add(h) -> y;  "stored": Add(c) -> y;  "two uses": Add(h) -> y, and Relu -> z too."""
    nodes = [
        node("MatMul", ["x", "W1"], ["a"], "mm1"),
        node("Relu", ["a"], ["h"], "relu"),
        node("MatMul", ["h", "W2"], ["o"], "mm2"),
    ]
    inits = [init("W1", rand((8, 8), seed=1)), init("W2", rand((8, 8), seed=2))]
    out = "o"
    if bias:
        nodes.append(node("Add", ["o", "b2"], ["ob"], "bias"))
        inits.append(init("b2", rand((8,), seed=3)))
        out = "ob"
    outputs = [value("y", ["n", 8])]
    if tail == "stored":
        nodes.append(node("Add", [out, "c"], ["y"], "sum"))
        inits.append(init("c", rand((8,), seed=4)))
    else:
        nodes.append(node("Add", ["h", out], ["y"], "sum"))  # the residual on the left: either side
    if tail == "two uses":
        nodes.append(node("Relu", [out], ["z"], "also"))
        outputs.append(value("z", ["n", 8]))
    return model(nodes, [value("x", ["n", 8])], outputs, inits)


def _residual_of(m: onnx.ModelProto, name: str) -> str:
    inventory = discover(m)
    weight = next(w for w in inventory.weights if w.name == name)
    layer, why = calib_layer(m, Scope.build(m.graph), weight)
    assert layer is not None, why
    return layer.spec.residual


@pytest.mark.parametrize("bias", [True, False])
def test_the_other_operand_of_the_sum_is_the_residual(bias):
    m = _block(bias=bias)
    assert _residual_of(m, "W2") == "h"
    assert _residual_of(m, "W1") == ""  # its output goes into Relu


@pytest.mark.parametrize("tail", ["stored", "two uses"])
def test_no_residual_for_a_stored_operand_or_an_output_read_elsewhere(tail):
    assert _residual_of(_block(tail=tail), "W2") == ""


def test_capture_gives_the_cross_term_with_the_residual_error():
    dense = _block()
    pruned = _block()
    w1 = rand((8, 8), seed=1)
    w1[np.abs(w1) < 0.5] = 0  # the upstream layer pruned: h differs from the dense model's
    pruned.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w1, "W1"))
    inventory = discover(pruned)
    weight = next(w for w in inventory.weights if w.name == "W2")
    layer, _ = calib_layer(pruned, Scope.build(pruned.graph), weight)
    x = rand((64, 8), seed=5)
    stats = capture(pruned, [layer.spec], [{"x": x[:40]}, {"x": x[40:]}], reference=dense)[layer.spec.key]

    def h(m):
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        probe.graph.output.extend([value("h", ["n", 8])])
        return runtime.session(probe.SerializeToString()).run(["h"], {"x": x})[0].astype(np.float64)

    h_now, h_dense = h(pruned), h(dense)
    d = h_dense - h_now
    np.testing.assert_allclose(stats.residual.cross, h_now.T @ d, **F32)
    np.testing.assert_allclose(stats.residual.cross_ref, h_dense.T @ d, **F32)
    np.testing.assert_allclose(stats.residual.mean, d.mean(axis=0), **F32)
    assert stats.residual.energy == pytest.approx(float(np.sum(d**2)), rel=1e-9)
    # the error at the sum from these terms is the error of the sum itself
    w2 = rand((8, 8), seed=2).astype(np.float64)
    new = w2.T * (np.abs(w2.T) > 0.7)
    got = output_error(new, w2.T, stats.H[0], stats.C[0], stats.H_ref[0], stats.residual)
    assert got == pytest.approx(float(np.sum((h_dense @ w2 + h_dense - (h_now @ new.T + h_now)) ** 2)), rel=1e-4)
    # without a reference there is no error to take up
    assert capture(pruned, [layer.spec], [{"x": x}])[layer.spec.key].residual is None


def test_the_target_is_the_ridge_least_squares_fit_of_the_dense_sum():
    rng = np.random.default_rng(7)
    x_dense = rng.standard_normal((500, 6))
    x = x_dense + 0.1 * rng.standard_normal((500, 6))  # the input as the pruned model gives it
    r_dense = rng.standard_normal((500, 4))
    r = r_dense + 0.2 * x[:, :4] + 0.05 * rng.standard_normal((500, 4))  # an error partly in x's span
    w = rng.standard_normal((4, 6))
    h, c = x.T @ x, x.T @ x_dense
    got = dense_target(w, h, c @ w.T, 0.0, x.T @ (r_dense - r))
    # min ‖(X_d Wᵀ + R_d) − (X W*ᵀ + R)‖²: lstsq of X against the dense sum minus R
    want = np.linalg.lstsq(x, x_dense @ w.T + r_dense - r, rcond=None)[0].T
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    plain = dense_target(w, h, c @ w.T, 0.0)
    sum_error = lambda v: np.linalg.norm(x_dense @ w.T + r_dense - (x @ v.T + r))  # noqa: E731
    assert sum_error(got) < 0.8 * sum_error(plain)


def test_a_broadcast_residual_gives_no_terms_and_no_error():
    """``y + r`` with ``r`` [1, 8] (a mean over the batch): not one row of ``r`` per row of ``x``."""
    dense = model(
        [
            node("MatMul", ["x", "W1"], ["h"], "mm1"),
            node("ReduceMean", ["h"], ["r"], "mean", axes=[0], keepdims=1),
            node("MatMul", ["h", "W2"], ["o"], "mm2"),
            node("Add", ["o", "r"], ["y"], "sum"),
        ],
        [value("x", ["n", 8])],
        [value("y", ["n", 8])],
        [init("W1", rand((8, 8), seed=1)), init("W2", rand((8, 8), seed=2))],
        opset=17,
    )
    pruned = onnx.ModelProto()
    pruned.CopyFrom(dense)
    pruned.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(rand((8, 8), seed=1) * 0.5, "W1"))
    weight = next(w for w in discover(pruned).weights if w.name == "W2")
    layer, _ = calib_layer(pruned, Scope.build(pruned.graph), weight)
    assert layer.spec.residual == "r"
    stats = capture(pruned, [layer.spec], [{"x": rand((16, 8), seed=5)}], reference=dense)[layer.spec.key]
    assert stats.C is not None and stats.residual is None


def test_a_residual_from_the_same_wave_is_not_taken_up():
    """``y_1 + y_2`` of two layers reading one input (one wave): each is the other's residual, and
    each fits its own error away, so neither takes up the other's (it would be counted twice); a
    sum with a value of earlier waves (``_block``'s ``h + y``) keeps its residual."""
    from onnxprune.passes.calibrated import settled_residuals, waves

    m = model(
        [
            node("MatMul", ["x", "W0"], ["h"], "mm0"),
            node("MatMul", ["h", "W1"], ["a"], "mm1"),
            node("MatMul", ["h", "W2"], ["b"], "mm2"),
            node("Add", ["a", "b"], ["y"], "sum"),
        ],
        [value("x", ["n", 8])],
        [value("y", ["n", 8])],
        [init(f"W{i}", rand((8, 8), seed=i)) for i in range(3)],
    )
    for graph, with_residual, settled in ((m, {"W1", "W2"}, set()), (_block(), {"W2"}, {"W2"})):
        scope = Scope.build(graph.graph)
        layers = [layer for w in discover(graph).weights if (layer := calib_layer(graph, scope, w)[0]) is not None]
        assert {layer.spec.key for layer in layers if layer.spec.residual} == with_residual
        assert settled_residuals(graph, waves(graph, layers)) == settled
