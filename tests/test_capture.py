"""Capture of layer-input statistics (H = Σ xᵀx, E[x], Σ x²) in real onnxruntime sessions.

Checked against brute force (explicit loops over Conv output positions), against the
layer's own output (``Σ_g tr(W_g H_g W_gᵀ) = ‖Y − bias‖²`` proves the column order of
the patches matches the weight's), for streaming (several batches = one batch, small
blocks = one block), and for every error and skip.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
from builders import F32, FLOAT, init, model, node, rand, value
from onnx import helper

from onnxprune import capture as capture_module
from onnxprune import im2col, runtime
from onnxprune.capture import LayerSpec, LayerStats, capture
from onnxprune.errors import DataError, OptionError
from onnxprune.im2col import ConvGeometry, patch_blocks, patch_rows

# ---------------------------------------------------------------------------------------
# Models and references


def conv_model(w: np.ndarray, x_shape, **attrs) -> onnx.ModelProto:
    """x -> Relu -> a (no value_info: an untyped extra output) -> Conv(W) -> y."""
    rank = len(x_shape) - 2
    return model(
        [
            node("Relu", ["x"], ["a"], "relu"),
            node("Conv", ["a", "W"], ["y"], "conv", kernel_shape=list(w.shape[2:]), **attrs),
        ],
        [value("x", ["n", *x_shape[1:]])],
        [value("y", ["n", w.shape[0], *(None,) * rank])],
        [init("W", w)],
    )


def conv_spec(w: np.ndarray, *, groups=1, strides=(), pads=(), dilations=(), auto_pad="NOTSET", activation="a"):
    return LayerSpec(
        key="W",
        node="conv",
        capture_op="Conv",
        activation=activation,
        cols=int(np.prod(w.shape[1:])),
        groups=groups,
        kernel=tuple(w.shape[2:]),
        strides=tuple(strides),
        pads=tuple(pads),
        dilations=tuple(dilations),
        auto_pad=auto_pad,
    )


def brute_force_conv_h(a: np.ndarray, *, groups, kernel, strides, pads, dilations) -> np.ndarray:
    """H per group from explicit loops over samples, output positions, channels and taps."""
    n, c = a.shape[:2]
    rank = len(kernel)
    cg = c // groups
    padded = np.pad(a.astype(np.float64), [(0, 0), (0, 0), *((pads[i], pads[i + rank]) for i in range(rank))])
    out = [(padded.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(rank)]
    h = np.zeros((groups, cg * int(np.prod(kernel)), cg * int(np.prod(kernel))))
    for g in range(groups):
        for sample in range(n):
            for pos in itertools.product(*(range(o) for o in out)):
                row = []
                for ch in range(cg):
                    for tap in itertools.product(*(range(k) for k in kernel)):
                        where = tuple(pos[i] * strides[i] + tap[i] * dilations[i] for i in range(rank))
                        row.append(padded[(sample, g * cg + ch, *where)])
                row = np.array(row)
                h[g] += np.outer(row, row)
    return h


def weight_energy(w_groups: np.ndarray, h: np.ndarray) -> float:
    """Σ_g tr(W_g H_g W_gᵀ) for W_g [groups, out, cols]."""
    return float(np.einsum("gmc,gcd,gmd->", w_groups, h, w_groups))


def run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return runtime.session(m.SerializeToString()).run(None, feeds)


def assert_same_stats(a: LayerStats, b: LayerStats) -> None:
    assert a.rows == b.rows
    assert a.skipped == b.skipped
    for x, y in ((a.H, b.H), (a.mean, b.mean), (a.sqnorm, b.sqnorm)):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(x, y, **F32)


# ---------------------------------------------------------------------------------------
# Conv


CONV_CASES = {
    # name: (x shape, weight shape, groups, strides, pads, dilations)
    "grouped-strided-dilated": ((2, 4, 9, 8), (6, 2, 3, 2), 2, (2, 2), (1, 0, 2, 1), (2, 2)),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "1d": ((3, 2, 11), (4, 2, 3), 1, (2,), (1, 2), (1,)),
    "3d-grouped": ((1, 4, 4, 5, 3), (4, 2, 2, 2, 2), 2, (1, 2, 1), (0, 1, 1, 1, 0, 0), (1, 1, 2)),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_h_matches_brute_force_and_layer_output(case):
    x_shape, w_shape, groups, strides, pads, dilations = CONV_CASES[case]
    w = rand(w_shape, seed=1)
    m = conv_model(w, x_shape, group=groups, strides=list(strides), pads=list(pads), dilations=list(dilations))
    x = rand(x_shape, seed=2)
    spec = conv_spec(w, groups=groups, strides=strides, pads=pads, dilations=dilations)

    stats = capture(m, [spec], [{"x": x}])["W"]

    a = np.maximum(x, 0)
    ref = brute_force_conv_h(a, groups=groups, kernel=w_shape[2:], strides=strides, pads=pads, dilations=dilations)
    (y,) = run(m, {"x": x})
    assert stats.skipped is None
    assert stats.H.shape == ref.shape == (groups, spec.cols, spec.cols)
    np.testing.assert_allclose(stats.H, ref, **F32)
    assert stats.rows == x_shape[0] * int(np.prod(y.shape[2:]))
    w_groups = w.astype(np.float64).reshape(groups, w_shape[0] // groups, -1)
    expected = float(np.sum(y.astype(np.float64) ** 2))
    assert weight_energy(w_groups, stats.H) == pytest.approx(expected, rel=1e-6)
    # mean and sqnorm are the diagonal's companions: Σx² is diag(H), mean·rows sums the patches.
    np.testing.assert_allclose(stats.sqnorm, np.diagonal(ref, axis1=1, axis2=2), **F32)
    patches = np.concatenate(
        list(patch_blocks(a, ConvGeometry(groups, w_shape[2:], strides, pads, dilations), max_bytes=1 << 20)), axis=1
    )
    np.testing.assert_allclose(stats.mean, patches.astype(np.float64).mean(axis=1), **F32)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad_matches_layer_output(auto_pad):
    w = rand((3, 2, 3, 2), seed=3)
    # 8x7 input, strides 2x3, kernel 3x2: one pad row and one pad column, whose side auto_pad decides.
    m = conv_model(w, (2, 2, 8, 7), auto_pad=auto_pad, strides=[2, 3])
    x = rand((2, 2, 8, 7), seed=4)
    stats = capture(m, [conv_spec(w, strides=(2, 3), auto_pad=auto_pad)], [{"x": x}])["W"]
    (y,) = run(m, {"x": x})
    assert stats.rows == 2 * y.shape[2] * y.shape[3]
    expected = float(np.sum(y.astype(np.float64) ** 2))
    assert weight_energy(w.astype(np.float64).reshape(1, 3, -1), stats.H) == pytest.approx(expected, rel=1e-6)


def test_conv_blocks_cut_over_positions_and_samples_give_the_same_stats():
    x_shape, w_shape, groups, strides, pads, dilations = CONV_CASES["grouped-strided-dilated"]
    w = rand(w_shape, seed=1)
    m = conv_model(w, x_shape, group=groups, strides=list(strides), pads=list(pads), dilations=list(dilations))
    spec = conv_spec(w, groups=groups, strides=strides, pads=pads, dilations=dilations)
    x = rand((5, *x_shape[1:]), seed=5)
    whole = capture(m, [spec], [{"x": x}])["W"]
    row_bytes = groups * spec.cols * 8
    # One output line (4 positions) per block, then one and a half samples per block.
    for max_bytes in (4 * row_bytes, 30 * row_bytes, 1):
        assert_same_stats(capture(m, [spec], [{"x": x}], max_bytes=max_bytes)["W"], whole)
    geometry = ConvGeometry(groups, w_shape[2:], strides, pads, dilations)
    blocks = list(patch_blocks(x.astype(np.float64), geometry, max_bytes=4 * row_bytes))
    assert len(blocks) > 5 and all(b.nbytes <= 4 * row_bytes for b in blocks)


def test_conv_on_a_graph_input_reads_the_feed():
    w = rand((4, 3, 3, 3), seed=6)
    m = model(
        [node("Conv", ["x", "W"], ["y"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [value("x", ["n", 3, 5, 5])],
        [value("y", ["n", 4, 5, 5])],
        [init("W", w)],
    )
    x = rand((2, 3, 5, 5), seed=7)
    stats = capture(m, [conv_spec(w, pads=(1, 1, 1, 1), activation="x")], [{"x": x}])["W"]
    ref = brute_force_conv_h(x, groups=1, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    np.testing.assert_allclose(stats.H, ref, **F32)


# ---------------------------------------------------------------------------------------
# Gemm and MatMul


def test_gemm_trans_a_trans_b():
    k, m_rows, n_out = 5, 7, 3
    w = rand((n_out, k), seed=8)
    b = rand((n_out,), seed=9)
    m = model(
        [
            node("Sigmoid", ["x"], ["a"], "sig"),
            node("Gemm", ["a", "W", "B"], ["y"], "gemm", transA=1, transB=1),
        ],
        [value("x", [k, "m"])],
        [value("y", ["m", n_out])],
        [init("W", w), init("B", b)],
    )
    x = rand((k, m_rows), seed=10)
    spec = LayerSpec(key="W", node="gemm", capture_op="Gemm", activation="a", cols=k, trans_a=True)
    stats = capture(m, [spec], [{"x": x}])["W"]
    a = 1 / (1 + np.exp(-x.astype(np.float64)))  # [K, M]
    assert stats.rows == m_rows
    np.testing.assert_allclose(stats.H[0], a @ a.T, rtol=1e-6)
    np.testing.assert_allclose(stats.mean[0], a.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.sqnorm[0], (a**2).sum(axis=1), rtol=1e-6)
    (y,) = run(m, {"x": x})
    expected = float(np.sum((y.astype(np.float64) - b) ** 2))
    assert weight_energy(w.astype(np.float64)[None], stats.H) == pytest.approx(expected, rel=1e-6)


def batched_matmul_model(k: int = 6, n_out: int = 4) -> tuple[onnx.ModelProto, np.ndarray]:
    w = rand((k, n_out), seed=11)
    m = model(
        [node("Tanh", ["x"], ["a"], "tanh"), node("MatMul", ["a", "W"], ["y"], "mm")],
        [value("x", ["b", "t", k])],
        [value("y", ["b", "t", n_out])],
        [init("W", w)],
    )
    return m, w


MM_SPEC = LayerSpec(key="W", node="mm", capture_op="MatMul", activation="a", cols=6)


def test_batched_matmul_3d_activation():
    m, w = batched_matmul_model()
    x = rand((3, 5, 6), seed=12)
    stats = capture(m, [MM_SPEC], [{"x": x}])["W"]
    a = np.tanh(x.astype(np.float64)).reshape(-1, 6)
    assert stats.rows == 15
    assert stats.H.shape == (1, 6, 6) and stats.mean.shape == stats.sqnorm.shape == (1, 6)
    np.testing.assert_allclose(stats.H[0], a.T @ a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.mean[0], a.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.sqnorm[0], (a**2).sum(axis=0), rtol=1e-6)
    (y,) = run(m, {"x": x})
    assert weight_energy(w.T.astype(np.float64)[None], stats.H) == pytest.approx(float(np.sum(y.astype(float) ** 2)))


def test_float64_activations_keep_float64_products_and_float32_ones_stay_within_rounding():
    rows = 3 * capture_module.BLOCK_ROWS // 2  # more rows than one float32 product takes
    x = np.random.default_rng(21).standard_normal((rows, 6)) * 2.0 + 0.5
    for dtype, elem, tol in ((np.float64, onnx.TensorProto.DOUBLE, {"rtol": 1e-12}), (np.float32, FLOAT, F32)):
        m = model(
            [node("Tanh", ["x"], ["a"], "tanh"), node("MatMul", ["a", "W"], ["y"], "mm")],
            [value("x", ["n", 6], elem)],
            [value("y", ["n", 4], elem)],
            [init("W", rand((6, 4), seed=11).astype(dtype))],
        )
        stats = capture(m, [MM_SPEC], [{"x": x.astype(dtype)}])["W"]
        a = np.tanh(x.astype(dtype)).astype(np.float64)
        assert stats.H.dtype == stats.mean.dtype == np.float64
        np.testing.assert_allclose(stats.H[0], a.T @ a, **tol)
        np.testing.assert_allclose(stats.mean[0], a.mean(axis=0), **tol)


def test_streaming_batches_equals_one_batch_and_reports_progress():
    m, _ = batched_matmul_model()
    w = rand((6, 6, 3, 3), seed=13)
    cm = conv_model(w, (1, 6, 6, 6), pads=[1, 1, 1, 1])
    x = rand((7, 5, 6), seed=14)
    xc = rand((7, 6, 6, 6), seed=15)
    cspec = conv_spec(w, pads=(1, 1, 1, 1))
    seen = []
    for mod, spec, data in ((m, MM_SPEC, x), (cm, cspec, xc)):
        whole = capture(mod, [spec], [{"x": data}])["W"]
        parts = [{"x": data[:3]}, {"x": data[3:4]}, {"x": data[4:]}]
        streamed = capture(mod, [spec], iter(parts), progress=seen.append, max_bytes=200)["W"]
        assert_same_stats(streamed, whole)
    assert seen == [3, 1, 3, 3, 1, 3]


def test_layers_reading_one_input_share_read_only_stats():
    m, _ = batched_matmul_model()
    other = LayerSpec(key="W2", node="mm2", capture_op="MatMul", activation="a", cols=6)
    stats = capture(m, [MM_SPEC, other], [{"x": rand((2, 3, 6), seed=16)}])
    assert list(stats) == ["W", "W2"]
    assert stats["W"].H is stats["W2"].H
    with pytest.raises(ValueError):
        stats["W"].H += 1


# ---------------------------------------------------------------------------------------
# Skips and errors


def test_cap_skips_h_but_keeps_mean_and_sqnorm():
    m, _ = batched_matmul_model()
    x = rand((2, 3, 6), seed=17)
    full = capture(m, [MM_SPEC], [{"x": x}])["W"]
    capped = capture(m, [MM_SPEC], [{"x": x}], max_cols=5)["W"]
    assert capped.H is None
    assert capped.skipped == "reduction length 6 above the capture cap 5"
    assert capped.rows == full.rows == 6
    np.testing.assert_allclose(capped.mean, full.mean)
    np.testing.assert_allclose(capped.sqnorm, full.sqnorm, **F32)


def test_missing_or_mismatched_activation_is_skipped_with_a_reason():
    m, _ = batched_matmul_model()
    specs = [
        MM_SPEC,
        LayerSpec(key="nowhere", node="n", capture_op="MatMul", activation="nope", cols=6),
        LayerSpec(key="const", node="c", capture_op="MatMul", activation="W", cols=4),
        LayerSpec(key="wide", node="w", capture_op="MatMul", activation="a", cols=7),
    ]
    stats = capture(m, specs, [{"x": rand((2, 3, 6), seed=18)}])
    assert stats["W"].skipped is None and stats["W"].rows == 6
    assert "not a value of the main graph" in stats["nowhere"].skipped
    assert "constant" in stats["const"].skipped
    assert "does not end with K = 7" in stats["wide"].skipped
    for key in ("nowhere", "const", "wide"):
        assert stats[key].H is None and stats[key].mean is None and stats[key].rows == 0


def test_nan_at_a_layer_input_names_node_and_batch():
    m, _ = batched_matmul_model()
    bad = rand((2, 3, 6), seed=19)
    bad[1, 2, 0] = np.nan
    with pytest.raises(DataError, match=r"NaN/inf at the input of node 'mm' \('a'\) in batch 1: check the data"):
        capture(m, [MM_SPEC], [{"x": rand((2, 3, 6), seed=20)}, {"x": bad}])


def test_finite_inputs_whose_squares_overflow_are_a_data_error(recwarn: pytest.WarningsRecorder) -> None:
    """Activations of 1e25 are finite in float32 but their products are not (found by tools/fuzz.py
    on a model with a flipped exponent bit): a one-line DataError naming the node, no warning."""
    m = model(
        [node("Relu", ["x"], ["a"], "relu"), node("MatMul", ["a", "W"], ["y"], "mm")],
        [value("x", ["b", 6])],
        [value("y", ["b", 4])],
        [init("W", rand((6, 4), seed=11))],
    )
    huge = np.abs(rand((5, 6), seed=22)).astype(np.float32) * np.float32(1e25)
    with pytest.raises(DataError, match=r"statistics of node 'mm' overflow: its input \('a'\) is finite"):
        capture(m, [MM_SPEC], [{"x": huge}])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_no_batches_and_bad_feeds_are_data_errors():
    m, _ = batched_matmul_model()
    with pytest.raises(DataError, match="no calibration samples"):
        capture(m, [MM_SPEC], [])
    with pytest.raises(DataError, match="fails on calibration batch 0"):
        capture(m, [MM_SPEC], [{"wrong": rand((2, 3, 6), seed=21)}])
    with pytest.raises(DataError, match="fails on calibration batch 0"):
        capture(m, [MM_SPEC], [{"x": rand((2, 3, 5), seed=21)}])


def test_bad_specs_are_option_errors():
    m, _ = batched_matmul_model()
    data = [{"x": rand((1, 1, 6), seed=22)}]
    bad = [
        [MM_SPEC, MM_SPEC],
        [LayerSpec(key="k", node="n", capture_op="Relu", activation="a", cols=6)],
        [LayerSpec(key="k", node="n", capture_op="Conv", activation="a", cols=6, kernel=(3,), pads=(1,))],
        [LayerSpec(key="k", node="n", capture_op="Conv", activation="a", cols=6, kernel=(3,), auto_pad="SAME")],
    ]
    for specs in bad:
        with pytest.raises(OptionError):
            capture(m, specs, data)
    with pytest.raises(OptionError):
        capture(m, [MM_SPEC], data, max_cols=0)


def test_model_given_as_bytes_or_path(tmp_path):
    m, _ = batched_matmul_model()
    data = [{"x": rand((2, 3, 6), seed=23)}]
    ref = capture(m, [MM_SPEC], data)["W"]
    path = tmp_path / "mm.onnx"
    onnx.save(m, path)
    assert_same_stats(capture(m.SerializeToString(), [MM_SPEC], data)["W"], ref)
    assert_same_stats(capture(path, [MM_SPEC], data)["W"], ref)
    assert len(m.graph.output) == 1  # the caller's model is left as it was


# ---------------------------------------------------------------------------------------
# Fixtures: every Conv/Gemm/MatMul weight, checked against the layer's own output


def _attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def fixture_layers(m: onnx.ModelProto):
    """(spec, W as [groups, out, cols] float64, output name, bias or 0) of each weight layer."""
    inits = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    layers = []
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or n.input[1] not in inits:
            continue
        w, at = inits[n.input[1]], _attrs(n)
        if n.op_type == "Conv":
            g = at.get("group", 1)
            kernel = tuple(w.shape[2:])
            spec = LayerSpec(
                key=n.input[1],
                node=n.name,
                capture_op="Conv",
                activation=n.input[0],
                cols=int(np.prod(w.shape[1:])),
                groups=g,
                kernel=kernel,
                strides=tuple(at.get("strides", ())),
                pads=tuple(at.get("pads", ())),
                dilations=tuple(at.get("dilations", ())),
            )
            w_groups, bias = w.reshape(g, w.shape[0] // g, -1), 0.0
            if len(n.input) > 2:
                bias = inits[n.input[2]].reshape(-1, *(1,) * len(kernel))
        elif n.op_type == "Gemm":
            assert at.get("alpha", 1.0) == 1.0 and not at.get("transA", 0)
            w2 = w if at.get("transB", 0) else w.T
            spec = LayerSpec(key=n.input[1], node=n.name, capture_op="Gemm", activation=n.input[0], cols=w2.shape[1])
            w_groups = w2[None]
            bias = at.get("beta", 1.0) * inits[n.input[2]] if len(n.input) > 2 else 0.0
        else:
            spec = LayerSpec(key=n.input[1], node=n.name, capture_op="MatMul", activation=n.input[0], cols=w.shape[0])
            w_groups, bias = w.T[None], 0.0
        layers.append((spec, w_groups, n.output[0], bias))
    return layers


@pytest.mark.parametrize(("name", "expected_layers"), [("cnn_digits", 7), ("transformer_mnist1d", 14)])
def test_fixture_layers_energy_matches_layer_outputs(fixtures_dir, name, expected_layers):
    m = onnx.load(fixtures_dir / f"{name}.onnx")
    calib = np.load(fixtures_dir / f"{name}.calib.npz")["input"]
    layers = fixture_layers(m)
    assert len(layers) == expected_layers
    specs = [spec for spec, *_ in layers]
    batches = [{"input": calib[i : i + 64]} for i in range(0, len(calib), 64)]
    stats = capture(m, specs, batches)

    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    known = {o.name for o in probe.graph.output}
    wanted = list(dict.fromkeys(out for _, _, out, _ in layers))
    probe.graph.output.extend(helper.ValueInfoProto(name=o) for o in wanted if o not in known)
    outputs = dict(zip(wanted, runtime.session(probe.SerializeToString()).run(wanted, {"input": calib}), strict=True))
    for spec, w_groups, out, bias in layers:
        s = stats[spec.key]
        assert s.skipped is None, spec.key
        assert s.H.shape == (spec.groups, spec.cols, spec.cols)
        y = outputs[out].astype(np.float64) - bias
        expected = float(np.sum(y**2))
        assert weight_energy(w_groups, s.H) == pytest.approx(expected, rel=1e-6), spec.key
        assert s.rows * w_groups.shape[1] * spec.groups == y.size, spec.key


def test_reference_model_gives_cross_statistics():
    """C = Σ xᵀ x_d and H_ref = Σ x_dᵀ x_d against a second model with the same graph."""
    rng = np.random.default_rng(11)
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 5)).astype(np.float32)

    def model(first: np.ndarray) -> onnx.ModelProto:
        nodes = [
            onnx.helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            onnx.helper.make_node("Relu", ["h"], ["r"], name="relu"),
            onnx.helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ]
        graph = onnx.helper.make_graph(
            nodes,
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 5])],
            [onnx.numpy_helper.from_array(first, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
        )
        return onnx.helper.make_model(graph, ir_version=8, opset_imports=[onnx.helper.make_opsetid("", 17)])

    pruned_w1 = np.where(np.abs(w1) < 0.5, 0, w1).astype(np.float32)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    spec = LayerSpec(key="w2", node="mm2", capture_op="MatMul", activation="r", cols=6)
    batches = [{"x": x[:25]}, {"x": x[25:]}]
    stats = capture(model(pruned_w1), [spec], batches, reference=model(w1).SerializeToString())["w2"]
    r = np.maximum(x.astype(np.float64) @ pruned_w1, 0)
    r_dense = np.maximum(x.astype(np.float64) @ w1, 0)
    np.testing.assert_allclose(stats.H[0], r.T @ r, rtol=1e-5)
    np.testing.assert_allclose(stats.C[0], r.T @ r_dense, rtol=1e-5)
    np.testing.assert_allclose(stats.H_ref[0], r_dense.T @ r_dense, rtol=1e-5)
    np.testing.assert_allclose(stats.mean_ref[0], r_dense.mean(0), rtol=1e-5)
    plain = capture(model(pruned_w1), [spec], batches)["w2"]
    assert plain.C is None and plain.H_ref is None


def _patch_matrix(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """``P_j`` of every group by the definition (im2col's module docstring), one element at a time."""
    count, channels, *spatial = x.shape
    rank = len(spatial)
    pads = geometry.resolved_pads(spatial)
    padded = np.pad(x, [(0, 0), (0, 0), *((pads[i], pads[i + rank]) for i in range(rank))])
    out = geometry.output_shape(spatial)
    taps = list(np.ndindex(*geometry.kernel))
    per_group = channels // geometry.groups
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    full = np.zeros((geometry.groups, count * math.prod(out), per_group * len(taps)), dtype=dtype)
    for n in range(count):
        for index, o in enumerate(np.ndindex(*out)):
            for j in range(geometry.groups):
                for c in range(per_group):
                    for k, t in enumerate(taps):
                        at = tuple(o[i] * geometry.strides[i] + t[i] * geometry.dilations[i] for i in range(rank))
                        full[j, n * math.prod(out) + index, c * len(taps) + k] = padded[(n, j * per_group + c, *at)]
    return full


@pytest.mark.parametrize(
    "shape, geometry",
    [
        ((3, 4, 9, 7), ConvGeometry(2, (3, 3), (2, 1), (1, 0, 1, 2), (1, 1))),
        ((2, 6, 11, 10), ConvGeometry(3, (3, 2), (1, 2), (2, 1, 0, 1), (2, 3))),  # dilated, uneven
        ((2, 4, 8, 9), ConvGeometry(1, (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), "SAME_LOWER")),
        ((2, 4, 8, 9), ConvGeometry(4, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), "SAME_UPPER")),  # depthwise
        ((3, 5, 17), ConvGeometry(1, (4,), (3,), (1, 2), (2,))),  # 1-D
        ((2, 2, 5, 6, 4), ConvGeometry(2, (2, 3, 2), (1, 2, 1), (1, 0, 1, 0, 1, 1), (1, 1, 2))),  # 3-D
        ((2, 3, 6, 6), ConvGeometry(1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))),  # pointwise, no pads
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
@pytest.mark.parametrize("split", [False, True])  # gathered on one thread, or the channels split between threads
def test_patch_rows_are_those_rows_of_the_patch_matrix(shape, geometry, dtype, split, monkeypatch):
    if split:
        monkeypatch.setattr(im2col, "GATHER_SPLIT_BYTES", 0)
    x = (np.random.default_rng(3).standard_normal(shape) * 4).astype(dtype)
    full = _patch_matrix(x, geometry)
    blocks = list(patch_blocks(x, geometry, max_bytes=full.shape[0] * full.shape[2] * full.dtype.itemsize * 3))
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), full)
    assert all(b.shape[1] <= 3 for b in blocks)
    rows = np.sort(np.random.default_rng(4).choice(full.shape[1], size=full.shape[1] // 3, replace=False))
    for max_bytes in (1 << 20, full.shape[0] * full.shape[2] * full.dtype.itemsize * 2):  # one block; rows in twos
        blocks = list(patch_rows(x, geometry, rows, max_bytes=max_bytes))
        got = np.concatenate(blocks, axis=1)
        assert got.dtype == full.dtype and all(b.shape[1] <= max(2, len(rows)) for b in blocks)
        np.testing.assert_array_equal(got, full[:, rows])
