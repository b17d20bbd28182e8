"""Calibrated pruning of weights inside If / Loop / Scan bodies.

The capture reads body values through a copy of the model whose bodies hand them up to the
main graph (:mod:`onnxprune.graph.expose`); these tests check that copy against numpy, the
statistics against sums over the runs of each body, the order of sequential waves, and the
whole calibrated pass on small models: each weight solved by the method (not the magnitude
fallback), the sparsity it says, a smaller output error than magnitude on the calibration
data, a written model that passes the checker, runs, and carries no exposed output; and a
branch the data never takes falls back to magnitude with that reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import BOOL, F32, INT64, graph, init, model, node, rand, value
from click.testing import CliRunner
from onnx import helper

import onnxprune
from onnxprune.capture import LayerSpec, capture
from onnxprune.cli import main
from onnxprune.frontier import Frontier
from onnxprune.graph import expose
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.graph.walk import graphs_by_owner
from onnxprune.passes.calibrated import waves
from onnxprune.passes.layers import NEVER_RAN, calib_layer

N = 96  # calibration samples
D = 32  # features

# ---------------------------------------------------------------------------------------
# Models (dynamic batch "n"; every weight has at least 256 elements)


def if_two_layers() -> onnx.ModelProto:
    """If(cond): then ``X·Wt + bt`` (MatMul + Add), else ``Gemm(Relu(X), We, transB=1)``; each
    branch stores its own weight."""
    then_branch = graph(
        [node("MatMul", ["X", "Wt"], ["t_m"], "then_mm"), node("Add", ["t_m", "bt"], ["t_y"], "then_add")],
        [],
        [value("t_y", ("n", 16))],
        [init("Wt", rand((D, 16), 1)), init("bt", rand((16,), 2))],
    )
    else_branch = graph(
        [node("Relu", ["X"], ["rx"], "else_relu"), node("Gemm", ["rx", "We"], ["e_y"], "else_gemm", transB=1)],
        [],
        [value("e_y", ("n", 16))],
        [init("We", rand((16, D), 3))],
    )
    nodes = [node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    return model(nodes, [value("cond", (), BOOL), value("X", ("n", D))], [value("Y", ("n", 16))])


def if_shared() -> onnx.ModelProto:
    """The main graph's W read by a MatMul in each branch: then ``X·W``, else ``Relu(X)·W``."""
    then_branch = graph([node("MatMul", ["X", "W"], ["t_y"], "then_mm")], [], [value("t_y", ("n", 16))])
    else_branch = graph(
        [node("Relu", ["X"], ["rx"], "else_relu"), node("MatMul", ["rx", "W"], ["e_y"], "else_mm")],
        [],
        [value("e_y", ("n", 16))],
    )
    nodes = [node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    inputs = [value("cond", (), BOOL), value("X", ("n", D))]
    return model(nodes, inputs, [value("Y", ("n", 16))], [init("W", rand((D, 16), 4))])


def _loop_inits(trip: int) -> list[onnx.TensorProto]:
    return [init("trip", np.asarray(trip, np.int64)), init("keep_going", np.asarray(True))]


def loop_matmul() -> onnx.ModelProto:
    """A Loop of 3 iterations whose body holds Wl and bl: ``h = tanh(h·Wl + bl)``."""
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("MatMul", ["h_in", "Wl"], ["hw"], "body_mm"),
            node("Add", ["hw", "bl"], ["pre"], "body_add"),
            node("Tanh", ["pre"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", ("n", D))],
        [value("cond_out", (), BOOL), value("h_out", ("n", D))],
        [init("Wl", rand((D, D), 5) * 0.3), init("bl", rand((D,), 6))],
        name="body",
    )
    nodes = [node("Loop", ["trip", "keep_going", "X"], ["Y"], "loop", body=body)]
    return model(nodes, [value("X", ("n", D))], [value("Y", ("n", D))], _loop_inits(3))


def scan_matmul() -> onnx.ModelProto:
    """A Scan over axis 1 of X[n, 4, D] whose body holds Ws: ``h = tanh(x_t·Ws + h)``."""
    body = graph(
        [
            node("MatMul", ["x_t", "Ws"], ["xw"], "body_mm"),
            node("Add", ["xw", "h_in"], ["pre"], "body_add"),
            node("Tanh", ["pre"], ["h_out"], "body_tanh"),
            node("Identity", ["h_out"], ["y_t"], "body_out"),
        ],
        [value("h_in", ("n", D)), value("x_t", ("n", D))],
        [value("h_out", ("n", D)), value("y_t", ("n", D))],
        [init("Ws", rand((D, D), 7) * 0.3)],
        name="body",
    )
    scan = node(
        "Scan", ["H0", "X"], ["H", "Y"], "scan", body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1]
    )
    inputs = [value("H0", ("n", D)), value("X", ("n", 4, D))]
    return model([scan], inputs, [value("H", ("n", D)), value("Y", ("n", 4, D))])


def loop_if() -> onnx.ModelProto:
    """A Loop of 4 iterations whose body holds an If on ``i % 2 == 0``: then ``h·Wa`` (Wa stored
    in the branch), else ``Relu(h)·Wb``; then ``h = tanh(·)``. The branch alternates."""
    then_branch = graph(
        [node("MatMul", ["h_in", "Wa"], ["t_y"], "then_mm")],
        [],
        [value("t_y", ("n", D))],
        [init("Wa", rand((D, D), 8) * 0.3)],
    )
    else_branch = graph(
        [node("Relu", ["h_in"], ["rh"], "else_relu"), node("MatMul", ["rh", "Wb"], ["e_y"], "else_mm")],
        [],
        [value("e_y", ("n", D))],
        [init("Wb", rand((D, D), 9) * 0.3)],
    )
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("Mod", ["i", "two"], ["parity"], "body_mod"),
            node("Equal", ["parity", "zero"], ["even"], "body_even"),
            node("If", ["even"], ["hw"], "body_if", then_branch=then_branch, else_branch=else_branch),
            node("Tanh", ["hw"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", ("n", D))],
        [value("cond_out", (), BOOL), value("h_out", ("n", D))],
        [init("two", np.asarray(2, np.int64)), init("zero", np.asarray(0, np.int64))],
        name="body",
    )
    nodes = [node("Loop", ["trip", "keep_going", "X"], ["Y"], "loop", body=body)]
    return model(nodes, [value("X", ("n", D))], [value("Y", ("n", D))], _loop_inits(4))


def if_conv() -> onnx.ModelProto:
    """If(cond): then ``Conv(X, Wc[8,4,3,3], Bc, pads 1)`` (stored in the branch), else a 1×1
    Conv whose 32-element weight is below the size threshold."""
    then_branch = graph(
        [node("Conv", ["X", "Wc", "Bc"], ["t_y"], "then_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [],
        [value("t_y", ("n", 8, 8, 8))],
        [init("Wc", rand((8, 4, 3, 3), 10)), init("Bc", rand((8,), 11))],
    )
    else_branch = graph(
        [node("Conv", ["X", "W1"], ["e_y"], "else_conv", kernel_shape=[1, 1])],
        [],
        [value("e_y", ("n", 8, 8, 8))],
        [init("W1", rand((8, 4, 1, 1), 12))],
    )
    nodes = [node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    return model(nodes, [value("cond", (), BOOL), value("X", ("n", 4, 8, 8))], [value("Y", ("n", 8, 8, 8))])


# ---------------------------------------------------------------------------------------
# Helpers


def _data(m: onnx.ModelProto, cond=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Calibration samples for every input of ``m`` (one item per sample), ``cond`` per sample."""
    rng = np.random.default_rng(seed)
    out = {}
    for vi in m.graph.input:
        if vi.name == "cond":
            out["cond"] = np.asarray(cond, dtype=bool)
            continue
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim[1:]]
        out[vi.name] = (rng.standard_normal((N, *dims)) + 0.5).astype(np.float32)
    return out


def _outputs(path: Path, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The first output on every sample (one run per sample when a scalar input is fed)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if "cond" not in data:
        return [sess.run(None, data)[0]]
    return [
        sess.run(None, {k: (np.asarray(v[i]) if k == "cond" else v[i : i + 1]) for k, v in data.items()})[0]
        for i in range(N)
    ]


def _error(path: Path, dense: Path, data: dict[str, np.ndarray]) -> float:
    got, want = _outputs(path, data), _outputs(dense, data)
    num = sum(float(np.sum((g.astype(np.float64) - w) ** 2)) for g, w in zip(got, want, strict=True))
    return num / sum(float(np.sum(w.astype(np.float64) ** 2)) for w in want)


def _prune(tmp_path: Path, m: onnx.ModelProto, data, *, method: str = "sparsegpt", out: str = "", **options):
    source = tmp_path / "model.onnx"
    if not source.exists():
        onnx.save(m, str(source))
    calib = tmp_path / "calib.npz"
    np.savez(calib, **data)
    config = onnxprune.PruneConfig(sparsity=0.5, method=method, **options)
    dataset = onnxprune.calibration_data(source, calib, samples=N) if method != "magnitude" else None
    return onnxprune.prune_file(source, tmp_path / f"{out or method}.onnx", config, calibration=dataset)


def _structure(m: onnx.ModelProto) -> dict[tuple[str, ...], tuple]:
    """Per graph: its inputs, outputs and node op types (what exposure would have changed)."""
    return {
        key: (
            tuple(i.name for i in g.input),
            tuple(o.name for o in g.output),
            tuple(n.op_type for n in g.node),
            tuple(tuple(n.output) for n in g.node),
        )
        for key, g in graphs_by_owner(m.graph)
    }


def _check_run(tmp_path: Path, m: onnx.ModelProto, data, keys: set[str]):
    """Prune with sparsegpt and magnitude; the checks every model shares. Returns the run."""
    run = _prune(tmp_path, m, data)
    layers = {layer.key: layer for layer in run.result.pruned}
    assert keys <= set(layers), sorted(layers)
    for key in keys:
        layer = layers[key]
        assert layer.method == "sparsegpt", (key, layer.reason)
        assert layer.error is not None and layer.error_magnitude is not None
        assert layer.error < layer.error_magnitude, key
        assert layer.sparsity_after == pytest.approx(0.5, abs=1e-9), key
    written = onnx.load(str(run.saved.path))
    onnx.checker.check_model(written, full_check=True)
    found = {w.key: w for w in discover(written).weights}
    for key in keys:
        assert found[key].zeros == layers[key].zeros_after  # what the result says is what the file holds
    assert _structure(written) == _structure(m)  # no exposed output, node or input leaks into the output
    assert run.validation is not None and run.validation.checker == "passed"
    magnitude = _prune(tmp_path, m, data, method="magnitude")
    dense = tmp_path / "model.onnx"
    assert _error(run.saved.path, dense, data) < _error(magnitude.saved.path, dense, data)
    return run


# ---------------------------------------------------------------------------------------
# The exposed copy against numpy


def test_expose_gathers_alternating_branches_and_inner_loops_of_any_trip_count():
    """A Loop (5 iterations) holding an If on ``i % 2`` and an inner Loop of ``4 − i`` trips
    (the last one runs none): each exposed value is the stack of its value on every run."""
    then_branch = graph([node("MatMul", ["h_in", "W"], ["t_y"], "then_mm")], [], [value("t_y", (2, D))])
    else_branch = graph([node("Neg", ["h_in"], ["e_y"], "else_neg")], [], [value("e_y", (2, D))])
    inner = graph(
        [node("Identity", ["c2"], ["c2o"], "inner_cond"), node("Relu", ["g_in"], ["g_out"], "inner_relu")],
        [value("j", (), INT64), value("c2", (), BOOL), value("g_in", (2, D))],
        [value("c2o", (), BOOL), value("g_out", (2, D))],
        name="inner",
    )
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("Mod", ["i", "two"], ["parity"], "body_mod"),
            node("Equal", ["parity", "zero"], ["even"], "body_even"),
            node("If", ["even"], ["hw"], "body_if", then_branch=then_branch, else_branch=else_branch),
            node("Sub", ["four", "i"], ["trips"], "body_trips"),
            node("Loop", ["trips", "", "hw"], ["hw2"], "inner_loop", body=inner),
            node("Tanh", ["hw2"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", (2, D))],
        [value("cond_out", (), BOOL), value("h_out", (2, D))],
        [init(n, np.asarray(v, np.int64)) for n, v in (("two", 2), ("zero", 0), ("four", 4))],
        name="body",
    )
    inits = [init("W", rand((D, D), 20) * 0.3), init("trip", np.asarray(5, np.int64))]
    m = model(
        [node("Loop", ["trip", "", "X"], ["Y"], "loop", body=body)], [value("X", (2, D))], [value("Y", (2, D))], inits
    )
    onnx.checker.check_model(m, full_check=True)
    wanted = [
        expose.BodyValue("loop/body/body_if/then_branch", "h_in"),
        expose.BodyValue("loop/body/inner_loop/body", "g_in"),
        expose.BodyValue("loop/body", "h_in"),
    ]
    exposure = expose.plan(m, wanted)
    assert not exposure.refused
    copy = onnx.ModelProto()
    copy.CopyFrom(m)
    exposure.apply(copy.graph)
    for exposed in exposure.exposed.values():
        copy.graph.output.append(helper.make_tensor_value_info(exposed.name, onnx.TensorProto.FLOAT, None))
    assert len(m.graph.output) == 1 and len(m.graph.node[0].output) == 1  # the model itself is not changed
    x = rand((2, D), 21)
    got = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    w, h = rand((D, D), 20).astype(np.float64) * 0.3, x.astype(np.float64)
    then_in, inner_in, body_in = [], [], []
    for i in range(5):
        body_in.append(h)
        if i % 2 == 0:
            then_in.append(h)
        g = h @ w if i % 2 == 0 else -h
        for _ in range(4 - i):
            inner_in.append(g)
            g = np.maximum(g, 0)
        h = np.tanh(g)
    assert np.allclose(got[0], h, atol=1e-5)  # the model's own output is unchanged
    for value_, want, out in zip(wanted, (then_in, inner_in, body_in), got[1:], strict=True):
        runs = expose.runs(out, exposure.exposed[value_].depth)
        assert runs is not None and runs.shape == (len(want), 2, D), value_
        assert np.allclose(runs, np.stack(want), atol=1e-5), value_


def test_expose_through_a_loop_without_carried_values():
    """A Loop with only a scan output, whose body holds an If on ``i % 3 == 0`` reading X: two
    values go up through accumulators that become the Loop's first outputs."""
    then_branch = graph([node("Relu", ["X"], ["t_y"], "then_relu")], [], [value("t_y", (2, D))])
    else_branch = graph([node("Neg", ["X"], ["e_y"], "else_neg")], [], [value("e_y", (2, D))])
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("Mod", ["i", "three"], ["rest"], "body_mod"),
            node("Equal", ["rest", "zero"], ["first"], "body_first"),
            node("If", ["first"], ["y_t"], "body_if", then_branch=then_branch, else_branch=else_branch),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL)],
        [value("cond_out", (), BOOL), value("y_t", (2, D))],
        [init("three", np.asarray(3, np.int64)), init("zero", np.asarray(0, np.int64))],
        name="body",
    )
    inits = [init("trip", np.asarray(7, np.int64))]
    m = model(
        [node("Loop", ["trip", ""], ["Y"], "loop", body=body)], [value("X", (2, D))], [value("Y", (7, 2, D))], inits
    )
    wanted = [
        expose.BodyValue("loop/body/body_if/then_branch", "X"),
        expose.BodyValue("loop/body/body_if/else_branch", "X"),
    ]
    exposure = expose.plan(m, wanted)
    copy = onnx.ModelProto()
    copy.CopyFrom(m)
    exposure.apply(copy.graph)
    names = [exposure.exposed[w].name for w in wanted]
    assert list(copy.graph.node[-1].output) == [*names, "Y"]
    copy.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None] * 3) for n in names)
    onnx.checker.check_model(copy)
    x = rand((2, D), 22)
    y, then_x, else_x = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"X": x}
    )
    assert y.shape == (7, 2, D)
    assert np.array_equal(expose.runs(then_x, 1), np.stack([x] * 3))  # i = 0, 3, 6
    assert np.array_equal(expose.runs(else_x, 1), np.stack([x] * 4))


def test_expose_refuses_a_branch_inside_a_scan_and_says_why():
    then_branch = graph([node("Relu", ["x_t"], ["t_y"], "then_relu")], [], [value("t_y", (2, D))])
    else_branch = graph([node("Neg", ["x_t"], ["e_y"], "else_neg")], [], [value("e_y", (2, D))])
    body = graph(
        [node("If", ["c"], ["y_t"], "body_if", then_branch=then_branch, else_branch=else_branch)],
        [value("x_t", (2, D))],
        [value("y_t", (2, D))],
        name="body",
    )
    m = model(
        [node("Scan", ["X"], ["Y"], "scan", body=body, num_scan_inputs=1)],
        [value("c", (), BOOL), value("X", (3, 2, D))],
        [value("Y", (3, 2, D))],
    )
    wanted = expose.BodyValue("scan/body/body_if/then_branch", "x_t")
    exposure = expose.plan(m, [wanted])
    assert "Scan" in exposure.refused[wanted] and not exposure.exposed


# ---------------------------------------------------------------------------------------
# Statistics


def test_capture_sums_a_branch_over_the_batches_that_take_it():
    m = if_two_layers()
    specs = [
        LayerSpec(key="t", node="then_mm", capture_op="MatMul", activation="X", cols=D, scope="if/then_branch"),
        LayerSpec(key="e", node="else_gemm", capture_op="Gemm", activation="rx", cols=D, scope="if/else_branch"),
    ]
    xs = [rand((3, D), 30 + i) for i in range(4)]
    conds = [True, False, True, True]
    stats = capture(m, specs, [{"cond": np.asarray(c), "X": x} for c, x in zip(conds, xs, strict=True)])
    taken = np.concatenate([x for c, x in zip(conds, xs, strict=True) if c]).astype(np.float64)
    relu = np.maximum(xs[1], 0).astype(np.float64)
    assert stats["t"].rows == 9 and np.allclose(stats["t"].H[0], taken.T @ taken, **F32)
    assert stats["e"].rows == 3 and np.allclose(stats["e"].H[0], relu.T @ relu, **F32)
    assert np.allclose(stats["e"].mean[0], relu.mean(axis=0), **F32)
    never = capture(m, specs, [{"cond": np.asarray(True), "X": xs[0]}], reference=m)
    assert never["e"].rows == 0 and never["e"].skipped is None  # a branch never taken: no rows
    assert never["e"].C is not None and not never["e"].C.any()  # zero sums, so uses still add


def test_capture_of_a_conv_in_a_loop_joins_iterations_to_the_batch():
    """Σ over iterations of the im2col H equals the H of all iterations' inputs as one batch."""
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("Conv", ["h_in", "Wk"], ["conv"], "body_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            node("Tanh", ["conv"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", ("n", 4, 6, 6))],
        [value("cond_out", (), BOOL), value("h_out", ("n", 4, 6, 6))],
        [init("Wk", rand((4, 4, 3, 3), 40) * 0.2)],
        name="body",
    )
    m = model(
        [node("Loop", ["trip", "keep_going", "X"], ["Y"], "loop", body=body)],
        [value("X", ("n", 4, 6, 6))],
        [value("Y", ("n", 4, 6, 6))],
        _loop_inits(3),
    )
    spec = LayerSpec(
        key="k", node="body_conv", capture_op="Conv", activation="h_in", cols=36, kernel=(3, 3), pads=(1, 1, 1, 1),
        scope="loop/body",
    )  # fmt: skip
    x = rand((2, 4, 6, 6), 41)
    stats = capture(m, [spec], [{"X": x}])
    # the same layer in the main graph, fed the three iterations' inputs as one batch
    flat = model(
        [node("Conv", ["A", "Wk"], ["B"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [value("A", ("n", 4, 6, 6))],
        [value("B", ("n", 4, 6, 6))],
        [init("Wk", rand((4, 4, 3, 3), 40) * 0.2)],
    )
    sess = ort.InferenceSession(flat.SerializeToString(), providers=["CPUExecutionProvider"])
    h, inputs = x, []
    for _ in range(3):
        inputs.append(h)
        h = np.tanh(sess.run(None, {"A": h})[0])
    main = capture(flat, [LayerSpec(key="k", node="conv", capture_op="Conv", activation="A", cols=36,
                                    kernel=(3, 3), pads=(1, 1, 1, 1))], [{"A": np.concatenate(inputs)}])  # fmt: skip
    assert stats["k"].rows == main["k"].rows == 3 * 2 * 36
    assert np.allclose(stats["k"].H, main["k"].H, rtol=1e-5, atol=1e-4)


def _growing_body() -> onnx.GraphProto:
    """A Loop body whose carried state ``h [n, t, D]`` grows by one step per iteration (its
    MatMul input cannot be a scan output)."""
    return graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("MatMul", ["h_in", "Wg"], ["hw"], "body_mm"),
            node("Slice", ["hw", "last", "end", "one"], ["step"], "body_last"),
            node("Concat", ["h_in", "step"], ["h_out"], "body_grow", axis=1),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", ("n", None, D))],
        [value("cond_out", (), BOOL), value("h_out", ("n", None, D))],
        [
            init("Wg", rand((D, D), 60)),
            *(init(k, np.asarray([v], np.int64)) for k, v in (("last", -1), ("end", 2**62), ("one", 1))),
        ],
        name="body",
    )


def test_a_body_value_whose_shape_grows_each_iteration_is_given_up_not_fatal():
    """A Loop whose carried state grows by one step per iteration (``[n, t, D]``, t = 1, 2, 3): its
    MatMul input cannot be a scan output; that layer is given up with the reason, the main
    graph's layer after the Loop is still captured."""
    body = _growing_body()
    nodes = [
        node("Loop", ["trip", "keep_going", "X"], ["H"], "loop", body=body),
        node("MatMul", ["H", "Wo"], ["Y"], "out_mm"),
    ]
    inits = [init("Wo", rand((D, D), 61)), *_loop_inits(3)]
    m = model(nodes, [value("X", ("n", 1, D))], [value("Y", ("n", 4, D))], inits)
    specs = [
        LayerSpec(key="g", node="body_mm", capture_op="MatMul", activation="h_in", cols=D, scope="loop/body"),
        LayerSpec(key="o", node="out_mm", capture_op="MatMul", activation="H", cols=D),
    ]
    stats = capture(m, specs, [{"X": rand((2, 1, D), 62)}, {"X": rand((2, 1, D), 63)}])
    assert stats["g"].skipped is not None and "could not be read" in stats["g"].skipped
    assert stats["o"].skipped is None and stats["o"].rows == 2 * 2 * 4


def test_a_body_given_up_after_the_first_batch_leaves_the_frontier_as_it_was(tmp_path):
    """The Loop's trip count is a graph input: 1 on the first batch (its body value can be read),
    3 on the second (it grows: given up there). The rest of that capture runs on a session, not
    on a segment begun at the second batch, so the frontier holds no batch it did not see whole,
    and a later capture on it reads the values of a capture without it."""
    body = _growing_body()
    nodes = [
        node("Loop", ["trip", "keep_going", "X"], ["H"], "loop", body=body),
        node("Relu", ["H"], ["R"], "relu"),
        node("MatMul", ["R", "Wo"], ["Y"], "out_mm"),
    ]
    inits = [init("Wo", rand((D, D), 61)), init("keep_going", np.asarray(True))]
    m = model(nodes, [value("X", ("n", 1, D)), value("trip", (), INT64)], [value("Y", ("n", None, D))], inits)
    specs = [
        LayerSpec(key="g", node="body_mm", capture_op="MatMul", activation="h_in", cols=D, scope="loop/body"),
        LayerSpec(key="o", node="out_mm", capture_op="MatMul", activation="R", cols=D),
    ]
    batches = [{"X": rand((2, 1, D), 62), "trip": np.asarray(1, np.int64)}]
    batches.append({"X": rand((2, 1, D), 63), "trip": np.asarray(3, np.int64)})
    frontier = Frontier(m, tmp_path / "frontier")
    first = capture(m, specs, batches, frontier=frontier)
    assert "could not be read" in (first["g"].skipped or "")
    assert first["o"].skipped is None and first["o"].rows == 2 * 2 + 2 * 4
    assert not frontier.batches and not frontier.kept  # nothing grown from the second batch alone
    again = capture(m, specs[1:], batches, frontier=frontier)["o"]
    alone = capture(m, specs[1:], batches)["o"]
    np.testing.assert_allclose(again.H, alone.H, rtol=1e-6)
    np.testing.assert_allclose(first["o"].H, alone.H, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Layers and waves


def _layers(m: onnx.ModelProto):
    scope = Scope.build(m.graph)
    out = []
    for weight in discover(m).prunable:
        layer, why = calib_layer(m, scope, weight)
        assert layer is not None, (weight.key, why)
        out.append(layer)
    return out


def test_body_layers_come_after_what_their_owner_node_reads_and_in_body_order():
    """main MatMul Wm -> Loop whose body holds two MatMuls in a row (W1 then W2) -> MatMul Wo."""
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("MatMul", ["h_in", "W1"], ["a"], "body_mm1"),
            node("Tanh", ["a"], ["ta"], "body_tanh1"),
            node("MatMul", ["ta", "W2"], ["b"], "body_mm2"),
            node("Tanh", ["b"], ["h_out"], "body_tanh2"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", ("n", D))],
        [value("cond_out", (), BOOL), value("h_out", ("n", D))],
        [init("W1", rand((D, D), 50)), init("W2", rand((D, D), 51))],
        name="body",
    )
    nodes = [
        node("MatMul", ["X", "Wm"], ["xm"], "main_mm"),
        node("Loop", ["trip", "keep_going", "xm"], ["h"], "loop", body=body),
        node("MatMul", ["h", "Wo"], ["Y"], "out_mm"),
    ]
    inits = [init("Wm", rand((D, D), 52)), init("Wo", rand((D, D), 53)), *_loop_inits(2)]
    m = model(nodes, [value("X", ("n", D))], [value("Y", ("n", D))], inits)
    wave_of = {layer.weight.key: i for i, group in enumerate(waves(m, _layers(m))) for layer in group}
    assert wave_of["Wm"] < wave_of["loop/body::W1"] < wave_of["loop/body::W2"] < wave_of["Wo"]


def test_the_two_branches_of_an_if_are_independent_and_wait_for_the_condition():
    m = if_two_layers()
    layers = _layers(m)
    assert {layer.spec.scope for layer in layers} == {"if/then_branch", "if/else_branch"}
    assert len(waves(m, layers)) == 1


def test_a_shared_weight_in_both_branches_is_one_layer_with_two_uses():
    m = if_shared()
    (layer,) = _layers(m)
    reads = {use.spec.scope: use.spec.activation for use in layer.uses}
    assert reads == {"if/then_branch": "X", "if/else_branch": "rx"}


# ---------------------------------------------------------------------------------------
# The calibrated pass end to end


def test_if_branches_taken_across_samples_are_both_calibrated(tmp_path: Path):
    m = if_two_layers()
    run = _check_run(tmp_path, m, _data(m, cond=np.arange(N) % 3 == 0), {"if/then_branch::Wt", "if/else_branch::We"})
    bias = {layer.key: layer.bias for layer in run.result.pruned}
    assert bias == {"if/then_branch::Wt": None, "if/else_branch::We": None}  # not asked for


def test_bias_correction_goes_into_the_branch(tmp_path: Path):
    m = if_two_layers()
    data = _data(m, cond=np.arange(N) % 2 == 0)
    run = _prune(tmp_path, m, data, bias_correction=True, out="corrected")
    bias = {layer.key: layer.bias for layer in run.result.pruned}
    assert bias == {"if/then_branch::Wt": "corrected", "if/else_branch::We": "added"}
    written = onnx.load(str(run.saved.path))
    branches = {key[-1]: g for key, g in graphs_by_owner(written.graph) if key}
    assert any(t.name.endswith("onnxprune_bias") for t in branches["else_branch"].initializer)
    assert not any(t.name.endswith("onnxprune_bias") for t in written.graph.initializer)
    gemm = next(n for n in branches["else_branch"].node if n.op_type == "Gemm")
    assert len(gemm.input) == 3
    onnx.checker.check_model(written, full_check=True)
    plain = _prune(tmp_path, m, data)
    dense = tmp_path / "model.onnx"
    assert _error(run.saved.path, dense, data) < _error(plain.saved.path, dense, data)


def test_a_branch_the_data_never_takes_falls_back_to_magnitude_and_says_why(tmp_path: Path):
    m = if_two_layers()
    run = _prune(tmp_path, m, _data(m, cond=np.ones(N, bool)))
    layers = {layer.key: layer for layer in run.result.pruned}
    assert layers["if/then_branch::Wt"].method == "sparsegpt"
    never = layers["if/else_branch::We"]
    assert never.method == "magnitude" and NEVER_RAN in (never.reason or "")
    assert never.sparsity_after == pytest.approx(0.5)  # still pruned, by magnitude
    onnx.checker.check_model(onnx.load(str(run.saved.path)), full_check=True)


def test_a_weight_shared_by_both_branches_is_fitted_on_both(tmp_path: Path):
    m = if_shared()
    run = _check_run(tmp_path, m, _data(m, cond=np.arange(N) % 2 == 0), {"W"})
    assert run.result.pruned[0].error < run.result.pruned[0].error_magnitude
    # one branch only: the other use adds no rows, the weight is still calibrated
    (tmp_path / "only").mkdir()
    only = _prune(tmp_path / "only", m, _data(m, cond=np.zeros(N, bool)))
    assert {layer.key: layer.method for layer in only.result.pruned} == {"W": "sparsegpt"}


def test_loop_body_weight_is_calibrated_with_its_bias_corrected(tmp_path: Path):
    m = loop_matmul()
    run = _check_run(tmp_path, m, _data(m), {"loop/body::Wl"})
    corrected = _prune(tmp_path, m, _data(m), bias_correction=True, out="corrected")
    assert {layer.key: layer.bias for layer in corrected.result.pruned} == {"loop/body::Wl": "corrected"}
    assert run.result.pruned[0].method == "sparsegpt"


def test_scan_body_weight_is_calibrated(tmp_path: Path):
    m = scan_matmul()
    _check_run(tmp_path, m, _data(m), {"scan/body::Ws"})


def test_if_nested_in_a_loop_calibrates_both_alternating_branches(tmp_path: Path):
    m = loop_if()
    _check_run(tmp_path, m, _data(m), {"loop/body/body_if/then_branch::Wa", "loop/body/body_if/else_branch::Wb"})


def test_conv_in_an_if_branch_is_calibrated(tmp_path: Path):
    m = if_conv()
    _check_run(tmp_path, m, _data(m, cond=np.arange(N) % 4 != 0), {"if/then_branch::Wc"})


def test_cli_prunes_a_model_whose_weights_are_all_in_branches(tmp_path: Path):
    m = if_two_layers()
    source, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(m, str(source))
    np.savez(calib, **_data(m, cond=np.arange(N) % 2 == 0))
    args = ["prune", str(source), str(tmp_path / "out.onnx"), "--method", "sparsegpt", "--sparsity", "0.5"]
    result = CliRunner().invoke(main, [*args, "--calibration", str(calib)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "::" in line]
    assert len(lines) >= 2 and all("sparsegpt" in line for line in lines if "Wt" in line or "We" in line), result.output
