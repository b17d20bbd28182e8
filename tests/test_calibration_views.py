"""Weights that calibration used to leave to magnitude because of how they are read.

Four patterns (:mod:`onnxprune.passes.layers`): a weight read through element permutations
(Transpose, Reshape, Flatten, Squeeze/Unsqueeze, Cast), a weight shared by several nodes with
the same matrices, a batched MatMul weight ``W [*b, K, N]`` and a bidirectional recurrent ``R``.
Each is checked four ways on a small model: the result says ``sparsegpt`` (not a magnitude
fallback), the stored tensor holds the target sparsity, the pruned model's output on the
calibration data is measurably closer to the dense one than magnitude's at the same count (in
onnxruntime), and the stored tensor keeps its shape and dtype in a model that passes
``onnx.checker``. Plus the capture of the new row cuts against numpy, and the cases that must
still fall back, each with its reason.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import F32, init, ints, model, node, value

import onnxprune
from onnxprune.capture import LayerSpec, capture
from onnxprune.graph.discovery import DiscoveryOptions, discover
from onnxprune.graph.index import Scope
from onnxprune.passes.calibrated import waves
from onnxprune.passes.layers import calib_layer

SAMPLES = 192


def _inputs(shape: tuple[int, ...], seed: int, features: int | None = None) -> np.ndarray:
    """``SAMPLES`` inputs of ``shape`` (per sample) whose last axis (or ``features`` on axis 1)
    is correlated and off-centre, so that the data tells the solver something."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SAMPLES, *shape))
    axis = 1 if features is not None else x.ndim - 1
    n = x.shape[axis]
    rotation = np.linalg.qr(rng.standard_normal((n, n)))[0]
    mix = np.diag(np.geomspace(2.0, 0.02, n)) @ rotation  # a few strong directions, mixed over every feature
    x = np.moveaxis(np.moveaxis(x, axis, -1) @ mix, -1, axis) + 0.3
    return x.astype(np.float32)


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([y.astype(np.float64).reshape(-1) for y in sess.run(None, feeds)])


def _prune_both(
    tmp_path: Path,
    m: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    bias_correction: bool = False,
    **setting: object,
) -> tuple[dict[str, onnxprune.PruneRun], dict[str, float]]:
    """Magnitude and sparsegpt runs of ``m`` (every weight, ``setting``: sparsity or pattern)
    and each one's relative output error against the dense model on the calibration data."""
    onnx.checker.check_model(m)
    source = tmp_path / "dense.onnx"
    onnx.save(m, str(source))
    np.savez(tmp_path / "calib.npz", **feeds)
    data = onnxprune.calibration_data(source, tmp_path / "calib.npz")
    dense = _outputs(source, feeds)
    runs, errors = {}, {}
    for method in ("magnitude", "sparsegpt"):
        config = onnxprune.PruneConfig(  # uniform: every layer at the sparsity the checks expect
            **setting,
            method=method,
            min_size=0,
            bias_correction=bias_correction and method != "magnitude",
            allocator="uniform",
        )
        runs[method] = onnxprune.prune_file(
            source,
            tmp_path / f"{method}.onnx",
            config,
            calibration=data if method != "magnitude" else None,
            structure=onnxprune.StructureConfig(dead_channels=False),
        )
        errors[method] = float(np.linalg.norm(_outputs(tmp_path / f"{method}.onnx", feeds) - dense))
        errors[method] /= float(np.linalg.norm(dense))
    return runs, errors


def _check(
    tmp_path: Path,
    m: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    names: tuple[str, ...],
    *,
    amount: float = 0.5,
    ratio: float = 0.8,
    **options: object,
) -> tuple[dict[str, onnxprune.LayerResult], onnx.ModelProto]:
    """The four checks of the module docstring for the stored weights ``names``; returns their
    sparsegpt records and the sparsegpt model."""
    setting = {"sparsity": amount} if "pattern" not in options else {}
    runs, errors = _prune_both(tmp_path, m, feeds, **setting, **options)
    run = runs["sparsegpt"]
    by_name = {layer.name: layer for layer in run.result.pruned}
    dense = {t.name: t for t in m.graph.initializer}
    out = onnx.load(str(run.saved.path))
    onnx.checker.check_model(out, full_check=True)
    stored = {t.name: t for t in out.graph.initializer}
    for name in names:
        layer = by_name[name]
        assert layer.method == "sparsegpt", (name, layer.reason)  # (a) not "magnitude" (fallback)
        assert layer.error is not None and layer.error < layer.error_magnitude
        values = onnx.numpy_helper.to_array(stored[name])
        if "pattern" not in options:  # (b) the target sparsity, in the stored tensor
            assert np.count_nonzero(values == 0) == round(amount * values.size) == layer.zeros_after
        assert tuple(stored[name].dims) == tuple(dense[name].dims)  # (d) shape and dtype kept
        assert stored[name].data_type == dense[name].data_type
    assert errors["sparsegpt"] < ratio * errors["magnitude"], errors  # (c) closer to the dense output
    return by_name, out


def _layer(m: onnx.ModelProto, name: str):
    weight = next(w for w in discover(m, DiscoveryOptions(min_size=0)).weights if w.name == name)
    return calib_layer(m, Scope.build(m.graph), weight)


# --------------------------------------------------------------------------- element permutations


def _transposed_matmul() -> onnx.ModelProto:
    """x[n,64] @ Transpose(W[32,64]) -> [n,32]: a Linear layer exported with its weight as stored."""
    nodes = [node("Transpose", ["W"], ["Wt"], "t"), node("MatMul", ["x", "Wt"], ["y"], "mm")]
    inits = [init("W", np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32))]
    return model(nodes, [value("x", ["n", 64])], [value("y", ["n", 32])], inits)


def _reshaped_conv() -> onnx.ModelProto:
    """Conv(x[n,8,10,10], Reshape(W[16,72], [16,8,3,3])): a kernel stored flat."""
    nodes = [
        node("Reshape", ["W", "kshape"], ["Wk"], "reshape"),
        node("Conv", ["x", "Wk", "B"], ["y"], "conv", pads=[1, 1, 1, 1]),
    ]
    rng = np.random.default_rng(2)
    inits = [
        init("W", rng.standard_normal((16, 72)).astype(np.float32)),
        init("B", rng.standard_normal(16).astype(np.float32)),
        ints("kshape", [16, 8, 3, 3]),
    ]
    return model(nodes, [value("x", ["n", 8, 10, 10])], [value("y", ["n", 16, 10, 10])], inits)


def _flattened_matmul() -> onnx.ModelProto:
    """x[n,64] @ Flatten(W[4,16,32], axis=2) -> [n,32]."""
    nodes = [node("Flatten", ["W"], ["Wf"], "flatten", axis=2), node("MatMul", ["x", "Wf"], ["y"], "mm")]
    inits = [init("W", np.random.default_rng(3).standard_normal((4, 16, 32)).astype(np.float32))]
    return model(nodes, [value("x", ["n", 64])], [value("y", ["n", 32])], inits)


def _fp16_cast_transposed_gemm() -> onnx.ModelProto:
    """Gemm(x[n,64], Transpose(Cast(W fp16 [64,48]))) with transB=1: the fp16 weight read as [48,64]."""
    nodes = [
        node("Cast", ["W"], ["W32"], "cast", to=onnx.TensorProto.FLOAT),
        node("Transpose", ["W32"], ["Wt"], "t"),
        node("Gemm", ["x", "Wt"], ["y"], "gemm", transB=1),
    ]
    inits = [init("W", np.random.default_rng(4).standard_normal((64, 48)).astype(np.float16))]
    return model(nodes, [value("x", ["n", 64])], [value("y", ["n", 48])], inits)


def _unsqueezed_squeezed_matmul() -> onnx.ModelProto:
    """x[n,5,64] @ Squeeze(Unsqueeze(W[64,32], [0, 3]), [3]) = x @ W[1,64,32] (batched, one group)."""
    nodes = [
        node("Unsqueeze", ["W", "axes03"], ["W4"], "unsqueeze"),
        node("Squeeze", ["W4", "axes3"], ["W3"], "squeeze"),
        node("MatMul", ["x", "W3"], ["y"], "mm"),
    ]
    inits = [
        init("W", np.random.default_rng(5).standard_normal((64, 32)).astype(np.float32)),
        ints("axes03", [0, 3]),
        ints("axes3", [3]),
    ]
    return model(nodes, [value("x", ["n", 5, 64])], [value("y", ["n", 5, 32])], inits)


@pytest.mark.parametrize(
    ("build", "shape", "conv"),
    [
        (_transposed_matmul, (64,), False),
        (_reshaped_conv, (8, 10, 10), True),
        (_flattened_matmul, (64,), False),
        (_fp16_cast_transposed_gemm, (64,), False),
        (_unsqueezed_squeezed_matmul, (5, 64), False),
    ],
    ids=["transpose", "reshape-conv", "flatten", "fp16-cast-transpose", "unsqueeze-squeeze"],
)
def test_a_weight_read_through_element_permutations_is_calibrated(tmp_path: Path, build, shape, conv) -> None:
    m = build()
    layer, why = _layer(m, "W")
    assert layer is not None, why
    stored = [d for t in m.graph.initializer if t.name == "W" for d in t.dims]
    w = np.arange(np.prod(stored), dtype=np.float64).reshape(stored)
    assert np.array_equal(layer.from_matrix(layer.to_matrix(w)), w)  # the composed view round-trips
    x = _inputs(shape, seed=10, features=8 if conv else None)
    _check(tmp_path, m, {"x": x}, ("W",))


def test_the_composed_view_is_the_node_s_matrix(tmp_path: Path) -> None:
    """``to_matrix(W_stored)`` times capture's rows is the node's output (onnxruntime)."""
    m = _reshaped_conv()
    layer, _ = _layer(m, "W")
    x = _inputs((8, 10, 10), seed=11, features=8)[:4]
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    stored = next(onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "W").astype(np.float64)
    bias = next(onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "B").astype(np.float64)
    from onnxprune.im2col import ConvGeometry, patch_blocks

    geometry = ConvGeometry(groups=1, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    patches = np.concatenate(list(patch_blocks(x, geometry, max_bytes=1 << 30)), axis=1)[0]  # [n·100, 72]
    got = layer.to_matrix(stored)[0] @ patches.T + bias[:, None]  # [16, n·100]
    want = np.moveaxis(y, 1, 0).reshape(16, -1)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_two_to_four_follows_the_columns_the_node_reads(tmp_path: Path) -> None:
    """W stored [N, K] and read transposed: the 2:4 groups run along K, the stored axis 1."""
    m = _transposed_matmul()
    _, out = _check(tmp_path, m, {"x": _inputs((64,), seed=12)}, ("W",), pattern=(2, 4))
    w = next(onnx.numpy_helper.to_array(t) for t in out.graph.initializer if t.name == "W")
    assert (np.count_nonzero(w.reshape(32, 16, 4) == 0, axis=2) >= 2).all()
    assert np.count_nonzero(w == 0) == w.size // 2


def test_a_weight_behind_a_slice_still_falls_back_and_says_why(tmp_path: Path) -> None:
    nodes = [
        node("Slice", ["W", "starts", "ends", "axes"], ["Ws"], "slice"),
        node("MatMul", ["x", "Ws"], ["y"], "mm"),
    ]
    inits = [
        init("W", np.random.default_rng(6).standard_normal((64, 40)).astype(np.float32)),
        ints("starts", [0]),
        ints("ends", [32]),
        ints("axes", [1]),
    ]
    m = model(nodes, [value("x", ["n", 64])], [value("y", ["n", 32])], inits)
    layer, why = _layer(m, "W")
    assert layer is None and "Slice 'slice'" in why and "no element permutation" in why
    runs, _ = _prune_both(tmp_path, m, {"x": _inputs((64,), seed=13)}, sparsity=0.5)
    (record,) = runs["sparsegpt"].result.pruned
    assert record.method == "magnitude" and "Slice" in record.reason and record.zeros_after == 64 * 40 // 2


# --------------------------------------------------------------------------- shared weights


def _tied_matmuls() -> onnx.ModelProto:
    """y = relu(x @ W + b1) @ W + b2: one W [64,64] used twice, each use with its own bias."""
    rng = np.random.default_rng(7)
    nodes = [
        node("MatMul", ["x", "W"], ["a"], "mm1"),
        node("Add", ["a", "b1"], ["ab"], "add1"),
        node("Relu", ["ab"], ["r"], "relu"),
        node("MatMul", ["r", "W"], ["c"], "mm2"),
        node("Add", ["c", "b2"], ["y"], "add2"),
    ]
    inits = [
        init("W", (rng.standard_normal((64, 64)) / 8).astype(np.float32)),
        init("b1", rng.standard_normal(64).astype(np.float32)),
        init("b2", rng.standard_normal(64).astype(np.float32)),
    ]
    return model(nodes, [value("x", ["n", 64])], [value("y", ["n", 64])], inits)


def _conv_two_branches(shared_bias: bool = False) -> onnx.ModelProto:
    """One Conv weight W [16,8,3,3] on x and on relu(x) (stride 2), each with its bias."""
    rng = np.random.default_rng(8)
    b2 = "B1" if shared_bias else "B2"
    nodes = [
        node("Conv", ["x", "W", "B1"], ["y1"], "conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["x"], ["r"], "relu"),
        node("Conv", ["r", "W", b2], ["y2"], "conv2", strides=[2, 2]),
    ]
    inits = [
        init("W", rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
        init("B1", rng.standard_normal(16).astype(np.float32)),
    ]
    if not shared_bias:
        inits.append(init("B2", rng.standard_normal(16).astype(np.float32)))
    outputs = [value("y1", ["n", 16, 10, 10]), value("y2", ["n", 16, 4, 4])]
    return model(nodes, [value("x", ["n", 8, 10, 10])], outputs, inits)


def _matmul_and_transposed_gemm() -> onnx.ModelProto:
    """x1 @ W and Gemm(x2, Transpose(W), transB=1): two ops, one matrix Wᵀ [32, 64]."""
    nodes = [
        node("MatMul", ["x1", "W"], ["y1"], "mm"),
        node("Transpose", ["W"], ["Wt"], "t"),
        node("Gemm", ["x2", "Wt"], ["y2"], "gemm", transB=1),
    ]
    inits = [init("W", np.random.default_rng(9).standard_normal((64, 32)).astype(np.float32))]
    inputs = [value("x1", ["n", 64]), value("x2", ["n", 64])]
    return model(nodes, inputs, [value("y1", ["n", 32]), value("y2", ["n", 32])], inits)


def test_a_tied_weight_is_fitted_once_on_the_stacked_rows_and_each_bias_corrected(tmp_path: Path) -> None:
    m = _tied_matmuls()
    layer, _ = _layer(m, "W")
    assert [use.node.name for use in layer.uses] == ["mm1", "mm2"]
    assert waves(m, [layer]) == [[layer]]  # its second use reads its first's output: it waits for nobody
    by_name, out = _check(tmp_path, m, {"x": _inputs((64,), seed=14)}, ("W",), bias_correction=True)
    assert by_name["W"].bias == "corrected"
    assert not any(t.name.endswith("onnxprune_bias") for t in out.graph.initializer)


def test_a_conv_weight_on_two_branches_is_one_problem(tmp_path: Path) -> None:
    m = _conv_two_branches()
    by_name, _ = _check(tmp_path, m, {"x": _inputs((8, 10, 10), seed=15, features=8)}, ("W",), bias_correction=True)
    assert by_name["W"].bias == "corrected"


def test_a_weight_shared_by_a_matmul_and_a_transposed_gemm_is_one_problem(tmp_path: Path) -> None:
    m = _matmul_and_transposed_gemm()
    feeds = {"x1": _inputs((64,), seed=16), "x2": _inputs((64,), seed=17)}
    by_name, _ = _check(tmp_path, m, feeds, ("W",), bias_correction=True)
    # the MatMul has no Add after it: that use is left as it is, the Gemm's gets a bias
    assert "mm: not corrected: MatMul without a following Add" in by_name["W"].bias
    assert "gemm: added" in by_name["W"].bias


def test_shared_statistics_are_the_sum_over_uses(tmp_path: Path) -> None:
    """The fit sees ``H = H_1 + H_2``: capture each use's input and compare."""
    from onnxprune.capture import stacked

    m = _matmul_and_transposed_gemm()
    layer, _ = _layer(m, "W")
    feeds = {"x1": _inputs((64,), seed=18)[:32], "x2": _inputs((64,), seed=19)[:32]}
    stats = capture(m, [use.spec for use in layer.uses], [feeds])
    both = stacked([stats[use.spec.key] for use in layer.uses])
    rows = np.concatenate([feeds["x1"], feeds["x2"]]).astype(np.float64)
    np.testing.assert_allclose(both.H[0], rows.T @ rows, **F32)
    np.testing.assert_allclose(both.mean[0], rows.mean(axis=0), **F32)
    assert both.rows == 64


def test_a_shared_bias_is_left_uncorrected_and_says_why(tmp_path: Path) -> None:
    m = _conv_two_branches(shared_bias=True)
    runs, _ = _prune_both(
        tmp_path, m, {"x": _inputs((8, 10, 10), seed=20, features=8)}, sparsity=0.5, bias_correction=True
    )
    record = next(layer for layer in runs["sparsegpt"].result.pruned if layer.name == "W")
    assert record.method == "sparsegpt" and record.bias == "not corrected: the bias is shared with other nodes"


def test_uses_that_see_different_matrices_fall_back_and_name_them(tmp_path: Path) -> None:
    """x1 @ W (Wᵀ, 32×64) and x2 @ Transpose(W) (W, 64×32): no one matrix to fit."""
    nodes = [
        node("MatMul", ["x1", "W"], ["y1"], "mm1"),
        node("Transpose", ["W"], ["Wt"], "t"),
        node("MatMul", ["x2", "Wt"], ["y2"], "mm2"),
    ]
    inits = [init("W", np.random.default_rng(21).standard_normal((64, 32)).astype(np.float32))]
    inputs = [value("x1", ["n", 64]), value("x2", ["n", 32])]
    m = model(nodes, inputs, [value("y1", ["n", 32]), value("y2", ["n", 64])], inits)
    layer, why = _layer(m, "W")
    assert layer is None and "different shapes" in why and "'mm1' 1×32×64" in why and "'mm2' 1×64×32" in why
    feeds = {"x1": _inputs((64,), seed=22), "x2": _inputs((32,), seed=23)}
    runs, _ = _prune_both(tmp_path, m, feeds, sparsity=0.5)
    (record,) = runs["sparsegpt"].result.pruned
    assert record.method == "magnitude" and "several nodes" in record.reason and record.zeros_after == 64 * 32 // 2


# --------------------------------------------------------------------------- batched MatMul


def _batched(x_dims: list, w_shape: tuple[int, ...], y_dims: list, bias: bool = False) -> onnx.ModelProto:
    nodes = [node("MatMul", ["x", "W"], ["xw" if bias else "y"], "bmm")]
    inits = [init("W", np.random.default_rng(24).standard_normal(w_shape).astype(np.float32))]
    if bias:
        nodes.append(node("Add", ["xw", "b"], ["y"], "add"))
        inits.append(init("b", np.ones(w_shape[-1], np.float32)))
    return model(nodes, [value("x", x_dims)], [value("y", y_dims)], inits)


BATCHED = {
    # x [n, 4, 6, 32] @ W [4, 32, 16]: one W per head
    "heads": (["n", 4, 6, 32], (4, 32, 16), ["n", 4, 6, 16], (4, 6, 32)),
    # x [n, 2, 1, 5, 32] @ W [2, 3, 32, 16]: x broadcast over W's second batch axis
    "x-broadcast": (["n", 2, 1, 5, 32], (2, 3, 32, 16), ["n", 2, 3, 5, 16], (2, 1, 5, 32)),
    # x [n, 2, 3, 5, 32] @ W [2, 1, 32, 16]: W broadcast over x's axis of 3 (more rows per group)
    "w-broadcast": (["n", 2, 3, 5, 32], (2, 1, 32, 16), ["n", 2, 3, 5, 16], (2, 3, 5, 32)),
}


@pytest.mark.parametrize("case", list(BATCHED))
def test_batched_matmul_rows_per_group(case: str) -> None:
    """Capture's "BatchedMatMul" cut: group ``g`` holds the ``M`` rows of every batch element
    whose broadcast index on W's batch axes is ``g`` (numpy's broadcasting, element by element)."""
    x_dims, w_shape, _, shape = BATCHED[case]
    m = _batched(x_dims, w_shape, BATCHED[case][2])
    layer, why = _layer(m, "W")
    assert layer is not None and layer.spec.capture_op == "BatchedMatMul", why
    batch = w_shape[:-2]
    assert layer.groups == np.prod(batch) and (layer.view.rows, layer.view.cols) == (16, 32)
    x = _inputs(shape, seed=25)[:3]
    stats = capture(m, [layer.spec], [{"x": x}])["W"]
    out = np.broadcast_shapes(x.shape[:-2], batch)
    full = np.broadcast_to(x.astype(np.float64), (*out, *x.shape[-2:]))
    lead = len(out) - len(batch)
    want = np.zeros((int(np.prod(batch)), 32, 32))
    for position in itertools.product(*(range(d) for d in out)):
        g = np.ravel_multi_index(tuple(p if d != 1 else 0 for p, d in zip(position[lead:], batch, strict=True)), batch)
        want[g] += full[position].T @ full[position]
    np.testing.assert_allclose(stats.H, want, **F32)
    # W_g times the group's rows is the MatMul's output (onnxruntime)
    w = next(onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "W").astype(np.float64)
    matrices = layer.to_matrix(w)
    for g, index in enumerate(itertools.product(*(range(d) for d in batch))):
        np.testing.assert_array_equal(matrices[g], w[index].T)


@pytest.mark.parametrize("case", list(BATCHED))
def test_a_batched_matmul_weight_is_calibrated_one_group_per_batch_element(tmp_path: Path, case: str) -> None:
    x_dims, w_shape, y_dims, shape = BATCHED[case]
    _check(tmp_path, _batched(x_dims, w_shape, y_dims), {"x": _inputs(shape, seed=26)}, ("W",))


def test_a_batched_weight_of_one_batch_element_gets_its_bias_corrected(tmp_path: Path) -> None:
    """x[n,5,64] @ Unsqueeze(W[64,32], [0]) + b: one group, the Add's [N] bias takes the delta."""
    nodes = [
        node("Unsqueeze", ["W", "axes0"], ["W3"], "unsqueeze"),
        node("MatMul", ["x", "W3"], ["xw"], "mm"),
        node("Add", ["xw", "b"], ["y"], "add"),
    ]
    inits = [
        init("W", np.random.default_rng(31).standard_normal((64, 32)).astype(np.float32)),
        init("b", np.zeros(32, np.float32)),
        ints("axes0", [0]),
    ]
    m = model(nodes, [value("x", ["n", 5, 64])], [value("y", ["n", 5, 32])], inits)
    by_name, _ = _check(tmp_path, m, {"x": _inputs((5, 64), seed=32)}, ("W",), bias_correction=True)
    assert by_name["W"].bias == "corrected"


def test_a_batched_matmul_bias_is_not_corrected_and_says_why(tmp_path: Path) -> None:
    x_dims, w_shape, y_dims, shape = BATCHED["heads"]
    m = _batched(x_dims, w_shape, y_dims, bias=True)
    by_name, _ = _check(tmp_path, m, {"x": _inputs(shape, seed=27)}, ("W",), bias_correction=True)
    assert "batched MatMul" in by_name["W"].bias and by_name["W"].bias.startswith("not corrected")


# --------------------------------------------------------------------------- bidirectional recurrent R

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
STEPS, INPUT, HIDDEN = 8, 12, 16


def _bidirectional(op: str, **attrs: object) -> onnx.ModelProto:
    """x [n, T, I] -> [T, n, I] -> bidirectional op -> Y [T, 2, n, H] -> [n, T, 2, H]."""
    gates = GATES[op]
    rng = np.random.default_rng(28)
    inits = [
        init("W", (rng.standard_normal((2, gates * HIDDEN, INPUT)) / 3).astype(np.float32)),
        init("R", (rng.standard_normal((2, gates * HIDDEN, HIDDEN)) / 3).astype(np.float32)),
    ]
    nodes = [
        node("Transpose", ["x"], ["xt"], "to_time", perm=[1, 0, 2]),
        node(op, ["xt", "W", "R"], ["Y"], "rnn", hidden_size=HIDDEN, direction="bidirectional", **attrs),
        node("Transpose", ["Y"], ["y"], "to_batch", perm=[2, 0, 1, 3]),
    ]
    return model(nodes, [value("x", ["n", STEPS, INPUT])], [value("y", ["n", STEPS, 2, HIDDEN])], inits)


RECURRENT = {"LSTM": {}, "GRU": {"linear_before_reset": 1}, "RNN": {}}


@pytest.mark.parametrize("op", list(RECURRENT))
def test_bidirectional_r_is_captured_per_direction(op: str) -> None:
    m = _bidirectional(op, **RECURRENT[op])
    layer, why = _layer(m, "R")
    assert layer is not None and layer.spec.capture_op == "Directions" and layer.groups == 2, why
    x = _inputs((STEPS, INPUT), seed=29)[:5]
    stats = capture(m, [layer.spec], [{"x": x}])["R"]
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for d in range(2):  # y [n, T, 2, H]: direction d's states are its rows
        rows = y[:, :, d].astype(np.float64).reshape(-1, HIDDEN)
        np.testing.assert_allclose(stats.H[d], rows.T @ rows, **F32)


@pytest.mark.parametrize("op", list(RECURRENT))
def test_bidirectional_r_is_calibrated(tmp_path: Path, op: str) -> None:
    m = _bidirectional(op, **RECURRENT[op])
    by_name, _ = _check(tmp_path, m, {"x": _inputs((STEPS, INPUT), seed=30)}, ("W", "R"))
    assert by_name["R"].bias == by_name["W"].bias is None


def test_a_bidirectional_gru_r_without_linear_before_reset_is_calibrated_per_gate_block(tmp_path: Path) -> None:
    m = _bidirectional("GRU")  # R_h reads r_t ⊙ h_{t−1}: one group per direction and gate block
    layer, why = _layer(m, "R")
    assert layer is not None and layer.spec.capture_op == "Directions" and layer.groups == 6, why
    by_name, _ = _check(tmp_path, m, {"x": _inputs((STEPS, INPUT), seed=30)}, ("W", "R"))
    assert by_name["R"].reason is None


def test_the_capture_ops_are_checked() -> None:
    from onnxprune.errors import OptionError

    bad = LayerSpec(key="k", node="n", capture_op="BatchedMatMul", activation="x", cols=4, groups=3, batch=(2,))
    with pytest.raises(OptionError, match="product of the batch dims"):
        capture(_batched(["n", 2, 3, 4], (2, 4, 5), ["n", 2, 3, 5]), [bad], [])


# --------------------------------------------------------------------------- ConvTranspose


def _conv_transpose(
    kernel: tuple[int, int], strides: tuple[int, int], *, bias: bool, **attrs: object
) -> onnx.ModelProto:
    """ConvTranspose(x[n,12,5,5], W[12,16,*kernel]) (+ B[16]): an upsampling head."""
    rng = np.random.default_rng(41)
    inputs = ["x", "W", "B"] if bias else ["x", "W"]
    nodes = [node("ConvTranspose", inputs, ["y"], "up", kernel_shape=list(kernel), strides=list(strides), **attrs)]
    inits = [init("W", rng.standard_normal((12, 16, *kernel)).astype(np.float32))]
    if bias:
        inits.append(init("B", rng.standard_normal(16).astype(np.float32)))
    return model(nodes, [value("x", ["n", 12, 5, 5])], [value("y", ["n", 16, None, None])], inits)


CONV_TRANSPOSE = {"2x2 stride 2, bias": ((2, 2), (2, 2), True), "2x3 stride 3, no bias": ((2, 3), (3, 3), False)}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE))
def test_the_conv_transpose_view_is_one_matrix_per_tap_on_the_input_pixels(case: str) -> None:
    """``Y[:, :, s·i + t] = W_t · x_i`` with the view's matrices, against onnxruntime."""
    kernel, strides, _ = CONV_TRANSPOSE[case]
    m = _conv_transpose(kernel, strides, bias=False)
    layer, reason = _layer(m, "W")
    assert layer is not None, reason
    x = _inputs((12, 5, 5), seed=42, features=12)[:4]
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    w = onnx.numpy_helper.to_array(m.graph.initializer[0])
    matrices = layer.to_matrix(w)  # [taps, C_out, C_in]
    assert matrices.shape == (kernel[0] * kernel[1], 16, 12)
    for t, (a, b) in enumerate(itertools.product(range(kernel[0]), range(kernel[1]))):
        expected = np.einsum("oc,nchw->nohw", matrices[t], x)
        np.testing.assert_allclose(y[:, :, a :: strides[0], b :: strides[1]][:, :, :5, :5], expected, atol=1e-4)
    np.testing.assert_array_equal(layer.from_matrix(matrices), w)
    stats = capture(m, [layer.spec], [{"x": x}])[layer.spec.key]
    pixels = x.transpose(0, 2, 3, 1).reshape(-1, 12).astype(np.float64)
    np.testing.assert_allclose(stats.H[0], pixels.T @ pixels, **F32)


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE))
def test_a_conv_transpose_without_overlapping_windows_is_calibrated_and_its_bias_corrected(
    tmp_path: Path, case: str
) -> None:
    kernel, strides, bias = CONV_TRANSPOSE[case]
    m = _conv_transpose(kernel, strides, bias=bias)
    by_name, out = _check(tmp_path, m, {"x": _inputs((12, 5, 5), seed=43, features=12)}, ("W",), bias_correction=True)
    assert by_name["W"].bias == ("corrected" if bias else "added")
    biases = [t for t in out.graph.initializer if t.name != "W"]
    assert [tuple(t.dims) for t in biases] == [(16,)]  # one per output channel, not per tap


def test_a_conv_transpose_with_overlapping_windows_still_falls_back_and_says_why(tmp_path: Path) -> None:
    m = _conv_transpose((3, 3), (2, 2), bias=True, pads=[1, 1, 1, 1])
    layer, reason = _layer(m, "W")
    assert layer is None and "overlapping" in reason and "strides" in reason and "pads" in reason
