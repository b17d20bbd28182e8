"""Row subsampling of the capture (:mod:`onnxprune.row_sampling`): the sums over a seeded subset
of rows, weighted by ``rows / used``, checked against brute force on the same rows (Conv patches
from explicit loops; MatMul rows with a reference model and a residual), against the full capture
when the cap is not hit (bit for bit), for determinism, for the bound on the rows used, and for
the estimator's scale (its mean over many seeds is the full sum)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from builders import init, model, node, rand, value

import onnxprune
from onnxprune.capture import LayerSpec, LayerStats, capture, stacked
from onnxprune.config import PruneConfig
from onnxprune.errors import OptionError
from onnxprune.row_sampling import ALL_ROWS, RowSampling, draw, statistical_dimension

# ---------------------------------------------------------------------------------------
# Models


def conv_model(w: np.ndarray, n_in: int, **attrs) -> onnx.ModelProto:
    """x -> Relu -> a -> Conv(W) -> y."""
    return model(
        [node("Relu", ["x"], ["a"], "relu"), node("Conv", ["a", "W"], ["y"], "conv", **attrs)],
        [value("x", ["n", n_in, None, None])],
        [value("y", ["n", w.shape[0], None, None])],
        [init("W", w)],
    )


def conv_spec(w: np.ndarray, *, groups=1, strides=(1, 1), pads=(0, 0, 0, 0)) -> LayerSpec:
    return LayerSpec(
        key="W",
        node="conv",
        capture_op="Conv",
        activation="a",
        cols=int(np.prod(w.shape[1:])),
        groups=groups,
        kernel=tuple(w.shape[2:]),
        strides=strides,
        pads=pads,
        dilations=(1, 1),
    )


def patches(a: np.ndarray, *, groups, kernel, strides, pads) -> np.ndarray:
    """Every patch row ``[groups, n·positions, C/g·∏k]`` from explicit loops, (sample, position) order."""
    n, c = a.shape[:2]
    cg = c // groups
    padded = np.pad(a.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    out = [(padded.shape[2 + i] - kernel[i]) // strides[i] + 1 for i in range(2)]
    rows = []
    for sample in range(n):
        for pos in itertools.product(*(range(o) for o in out)):
            row = [
                [
                    padded[sample, g * cg + ch, pos[0] * strides[0] + t[0], pos[1] * strides[1] + t[1]]
                    for ch in range(cg)
                    for t in itertools.product(*(range(k) for k in kernel))
                ]
                for g in range(groups)
            ]
            rows.append(row)
    return np.array(rows).transpose(1, 0, 2)


GEOMETRY = {"groups": 2, "kernel": (3, 3), "strides": (2, 1), "pads": (1, 0, 1, 2)}


def conv_case():
    w = rand((4, 2, 3, 3), 1)  # 4 channels in, 2 groups: cols = 2·9 = 18
    m = conv_model(w, 4, group=2, kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 1, 2])
    spec = conv_spec(w, groups=2, strides=(2, 1), pads=(1, 0, 1, 2))
    batches = [{"x": rand((3, 4, 9, 7), 10 + b)} for b in range(2)]
    return m, spec, batches


# ---------------------------------------------------------------------------------------
# Against brute force on the chosen rows


def test_subsampled_conv_sums_are_the_weighted_sums_of_the_drawn_patches():
    m, spec, batches = conv_case()
    sampling = RowSampling(per_col=1, min_rows=4, seed=3)  # cap: 3 samples · max(18, 4) = 54 rows a batch
    stats = capture(m, [spec], batches, sampling=sampling)["W"]
    h = np.zeros((2, 18, 18))
    total = np.zeros((2, 18))
    rows = used = 0
    for b, feeds in enumerate(batches):
        p = patches(np.maximum(feeds["x"], 0), **GEOMETRY)
        chosen = draw(p.shape[1], sampling.cap(18, 3), sampling.stream("a", b, 0)).chosen
        assert chosen is not None and len(chosen) == 54 < p.shape[1]  # the cap is hit
        weight = p.shape[1] / len(chosen)
        h += weight * np.einsum("gri,grj->gij", p[:, chosen], p[:, chosen])
        total += weight * p[:, chosen].sum(axis=1)
        rows += p.shape[1]
        used += len(chosen)
    assert stats.rows == rows and stats.rows_used == used == 108
    np.testing.assert_allclose(stats.H, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.mean, total / rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.sqnorm, np.diagonal(h, axis1=1, axis2=2), rtol=1e-5, atol=1e-5)


def residual_model(scale: float) -> onnx.ModelProto:
    """x -> Mul(s) -> Relu -> a -> MatMul(W) -> y;  r = Neg(a);  Add(y, r) -> out (``scale`` moves a and r)."""
    return model(
        [
            node("Mul", ["x", "s"], ["m"], "mul"),
            node("Relu", ["m"], ["a"], "relu"),
            node("MatMul", ["a", "W"], ["y"], "mm"),
            node("Neg", ["a"], ["r"], "neg"),
            node("Add", ["y", "r"], ["out"], "sum"),
        ],
        [value("x", ["n", 40, 6])],
        [value("out", ["n", 40, 6])],
        [init("W", rand((6, 6), 2)), init("s", np.array([scale], np.float32))],
    )


def test_subsampled_rows_with_a_reference_and_a_residual_share_one_draw():
    spec = LayerSpec(key="W", node="mm", capture_op="MatMul", activation="a", cols=6, residual="r", width=6)
    batches = [{"x": rand((2, 40, 6), 20 + b)} for b in range(3)]
    sampling = RowSampling(per_col=2, min_rows=1, seed=5)  # cap: 2 samples · 12 = 24 of 80 rows
    current, reference = residual_model(0.9), residual_model(1.1)
    stats = capture(current, [spec], batches, reference=reference, sampling=sampling)["W"]
    h = np.zeros((6, 6))
    c = np.zeros((6, 6))
    h_ref = np.zeros((6, 6))
    cross = np.zeros((6, 6))
    cross_ref = np.zeros((6, 6))
    energy = 0.0
    d_total = np.zeros(6)
    for b, feeds in enumerate(batches):
        x = np.maximum(0.9 * feeds["x"].astype(np.float64), 0).reshape(-1, 6)
        x_d = np.maximum(1.1 * feeds["x"].astype(np.float64), 0).reshape(-1, 6)
        d = -x_d + x  # r_d − r with r = −a
        chosen = draw(80, sampling.cap(6, 2), sampling.stream("a", b, 0)).chosen
        assert chosen is not None and len(chosen) == 24
        k = 80 / 24
        x, x_d, d = x[chosen], x_d[chosen], d[chosen]
        h += k * x.T @ x
        c += k * x.T @ x_d
        h_ref += k * x_d.T @ x_d
        cross += k * x.T @ d
        cross_ref += k * x_d.T @ d
        energy += k * float((d * d).sum())
        d_total += k * d.sum(axis=0)
    assert stats.rows == 240 and stats.rows_used == 72
    for got, want in ((stats.H[0], h), (stats.C[0], c), (stats.H_ref[0], h_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    res = stats.residual
    assert res is not None
    np.testing.assert_allclose(res.cross, cross, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.cross_ref, cross_ref, rtol=1e-5, atol=1e-5)
    assert res.energy == pytest.approx(energy, rel=1e-5)
    np.testing.assert_allclose(res.mean, d_total / 240, rtol=1e-5, atol=1e-6)
    # given the weight (one output: its products, not C and H_d), the same draw, the same residual
    w = rand((1, 1, 6), 3).astype(np.float64)
    given = capture(current, [spec], batches, reference=reference, sampling=sampling, weights={"W": w})["W"]
    assert given.C is None and given.residual is not None
    np.testing.assert_allclose(given.CW[0], c @ w[0].T, rtol=1e-5, atol=1e-5)
    assert given.energy_ref[0] == pytest.approx(float(np.vdot(w[0] @ h_ref, w[0])), rel=1e-5)
    for field in ("cross", "cross_ref", "energy", "mean"):
        np.testing.assert_array_equal(getattr(given.residual, field), getattr(res, field))


# ---------------------------------------------------------------------------------------
# All rows, determinism, the bound


def test_all_rows_and_an_unreached_cap_are_the_full_capture_bit_for_bit():
    m, spec, batches = conv_case()
    full = capture(m, [spec], batches)["W"]
    for sampling in (ALL_ROWS, RowSampling(per_col=64, seed=1)):  # 3 · max(64·18, 1024) rows > 3·4·9
        same = capture(m, [spec], batches, sampling=sampling)["W"]
        assert same.rows == same.rows_used == full.rows
        for a, b in ((full.H, same.H), (full.mean, same.mean), (full.sqnorm, same.sqnorm)):
            assert np.array_equal(a, b)
    brute = sum(np.einsum("gri,grj->gij", p, p) for p in (patches(np.maximum(f["x"], 0), **GEOMETRY) for f in batches))
    np.testing.assert_allclose(full.H, brute, rtol=1e-5, atol=1e-5)


def test_the_draw_is_seeded():
    m, spec, batches = conv_case()
    runs = [
        capture(m, [spec], batches, sampling=RowSampling(per_col=1, min_rows=1, seed=seed))["W"] for seed in (7, 7, 8)
    ]
    assert np.array_equal(runs[0].H, runs[1].H) and np.array_equal(runs[0].mean, runs[1].mean)
    assert not np.array_equal(runs[0].H, runs[2].H)


@pytest.mark.parametrize("per_col, min_rows", [(1, 1), (2, 1), (1, 40)])
def test_the_cap_bounds_the_rows_used(per_col, min_rows):
    m, spec, batches = conv_case()
    stats = capture(m, [spec], batches, sampling=RowSampling(per_col=per_col, min_rows=min_rows))["W"]
    cap = 3 * max(per_col * 18, min_rows)  # 3 samples a batch
    per_batch = 3 * 5 * 7  # 5 × 7 output positions a sample
    assert stats.rows == 2 * per_batch
    assert stats.rows_used == 2 * min(cap, per_batch)


def test_the_weighted_sums_estimate_the_full_ones_on_their_scale():
    """Averaged over many seeds, Ĥ and the mean approach the full capture (unbiased, same scale)."""
    m, spec, batches = conv_case()
    full = capture(m, [spec], batches)["W"]
    draws = [capture(m, [spec], batches, sampling=RowSampling(per_col=1, seed=s, min_rows=1))["W"] for s in range(200)]
    h_bar = np.mean([d.H for d in draws], axis=0)
    one = np.linalg.norm(draws[0].H - full.H) / np.linalg.norm(full.H)
    avg = np.linalg.norm(h_bar - full.H) / np.linalg.norm(full.H)
    assert avg < one / 5  # the error of one draw averages away (≈ 1/√200)
    assert avg < 0.02
    np.testing.assert_allclose(np.mean([d.mean for d in draws], axis=0), full.mean, rtol=0.05, atol=0.01)


def test_the_statistical_dimension_is_the_sum_of_the_damped_eigenvalue_ratios():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    e = np.array([50.0, 20.0, 5.0, 1.0, 0.1, 0.0])
    H = q @ np.diag(e) @ q.T
    H = (H + H.T) / 2
    lam = 0.1 * np.trace(H) / 6  # percdamp · mean(diag H)
    assert statistical_dimension(H, 0.1) == pytest.approx(float(np.sum(e / (e + lam))), rel=1e-9)
    assert statistical_dimension(H, 0.0) == 6.0  # no damping: no reduction
    dead = np.zeros((8, 8))
    dead[1:7, 1:7] = H  # dead columns add nothing and do not dilute the mean diagonal
    assert statistical_dimension(dead, 0.1) == pytest.approx(statistical_dimension(H, 0.1), rel=1e-9)
    assert statistical_dimension(np.zeros((3, 3)), 0.1) == 0.0


def low_rank_case(batches: int = 3):
    """A MatMul whose 96 input columns carry 6 strong directions and a faint rest: 256 rows a sample."""
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((6, 96))
    w = rand((96, 4), 2)
    m = model(
        [node("MatMul", ["x", "W"], ["y"], "mm")],
        [value("x", ["n", 256, 96])],
        [value("y", ["n", 256, 4])],
        [init("W", w)],
    )
    spec = LayerSpec(key="W", node="mm", capture_op="MatMul", activation="x", cols=96)
    feeds = [
        {"x": (rng.standard_normal((4, 256, 6)) @ mix + 0.01 * rng.standard_normal((4, 256, 96))).astype(np.float32)}
        for _ in range(batches)
    ]
    return m, spec, feeds


def test_a_capped_layer_sizes_its_later_batches_by_its_damped_dimension():
    m, spec, feeds = low_rank_case()
    full = capture(m, [spec], feeds)["W"]
    by_cols = capture(m, [spec], feeds, sampling=RowSampling(per_col=2, min_rows=1, seed=1))["W"]
    by_dim = capture(m, [spec], feeds, sampling=RowSampling(per_col=2, min_rows=1, seed=1, damp=0.1))["W"]
    assert by_cols.rows == by_dim.rows == full.rows == 3 * 4 * 256
    assert by_cols.rows_used == 3 * 4 * 2 * 96  # k · cols a sample, every batch
    dim = statistical_dimension(full.H[0], 0.1)
    assert dim < 20  # 6 strong directions, the faint rest far below the damping
    # the first batch as before (the same draw), the later ones k · ⌈d_λ⌉ a sample
    later = by_dim.rows_used - 4 * 2 * 96
    assert 2 * 4 * 2 * 6 <= later <= 2 * 4 * 2 * 20
    # the damped matrices stay close: H_λ⁻¹ᐟ² Ĥ_λ H_λ⁻¹ᐟ² near I in the spectral norm
    lam = 0.1 * np.trace(full.H[0]) / 96
    vals, vecs = np.linalg.eigh(full.H[0] + lam * np.eye(96))
    root = vecs @ np.diag(vals**-0.5) @ vecs.T
    for est in (by_cols, by_dim):
        spectral = np.linalg.norm(root @ (est.H[0] + lam * np.eye(96)) @ root - np.eye(96), 2)
        assert spectral < 0.6, spectral


def test_no_damping_or_an_uncapped_layer_keeps_the_rows_by_columns():
    m, spec, feeds = low_rank_case()
    by_cols = capture(m, [spec], feeds, sampling=RowSampling(per_col=2, min_rows=1, seed=1))["W"]
    undamped = capture(m, [spec], feeds, sampling=RowSampling(per_col=2, min_rows=1, seed=1, damp=0.0))["W"]
    assert np.array_equal(by_cols.H, undamped.H) and by_cols.rows_used == undamped.rows_used
    full = capture(m, [spec], feeds)["W"]
    uncapped = capture(m, [spec], feeds, sampling=RowSampling(per_col=64, seed=1, damp=0.1))["W"]
    assert np.array_equal(full.H, uncapped.H)  # 4 · max(64·96, 1024) rows > 4 · 256: every row


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_the_sampling_damping_is_validated(bad):
    with pytest.raises(OptionError, match="damp"):
        RowSampling(damp=bad)


def test_draw_keeps_every_row_under_the_cap():
    assert draw(10, None, None).chosen is None
    assert draw(10, 10, None).chosen is None
    got = draw(10, 4, np.random.default_rng(0))
    assert got.used == 4 and got.weight == 2.5 and list(got.chosen) == sorted(set(got.chosen))


# ---------------------------------------------------------------------------------------
# Config and the pass


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "16"])
def test_capture_rows_is_validated(bad):
    with pytest.raises(OptionError, match="capture_rows"):
        PruneConfig(sparsity=0.5, method="sparsegpt", capture_rows=bad)


def test_capture_rows_defaults_and_all():
    assert PruneConfig(sparsity=0.5).capture_rows == 16
    assert PruneConfig(sparsity=0.5, capture_rows=None).reconstruction.row_sampling().per_col is None


def _pruned_weight(tmp_path, size: int, capture_rows: int | None) -> np.ndarray:
    w = rand((8, 4, 1, 1), 3)  # a 1x1 Conv: cols 4, a sample of size² positions
    m = conv_model(w, 4, kernel_shape=[1, 1])
    path = tmp_path / "conv.onnx"
    onnx.save(m, path)
    data = onnxprune.calibration_data(path, [{"x": rand((8, 4, size, size), 4)}], samples=8)
    config = PruneConfig(sparsity=0.5, method="sparsegpt", min_size=1, capture_rows=capture_rows, allocator="uniform")
    pruned, _ = onnxprune.prune(m, config, calibration=data)
    return onnx.numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "W"))


def test_the_pass_uses_the_option(tmp_path):
    # 8x8 = 64 positions a sample, under the floor (1024): the default is the full capture
    assert np.array_equal(_pruned_weight(tmp_path, 8, 16), _pruned_weight(tmp_path, 8, None))
    # 48x48 = 2304 positions a sample, above max(1·4, 1024): subsampled, so the solve differs
    assert not np.array_equal(_pruned_weight(tmp_path, 48, 1), _pruned_weight(tmp_path, 48, None))


def test_only_the_error_curves_capture_is_sized_by_the_damped_dimension(tmp_path, monkeypatch):
    """The curves' capture gets the run's damping (0.1 with real data), the waves' none: their
    ``H`` is what the solves fit (row_sampling, "Damped dimension")."""
    from onnxprune.passes import calibrated, curve_allocation

    seen: dict[str, list[RowSampling]] = {"curves": [], "waves": []}

    def recording(where: str, real):
        def wrapped(*args, **kwargs):
            seen[where].append(kwargs.get("sampling", ALL_ROWS))
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(curve_allocation, "capture", recording("curves", curve_allocation.capture))
    monkeypatch.setattr(calibrated, "capture", recording("waves", calibrated.capture))
    m = _two_convs(rand((4, 4, 1, 1), 5), rand((4, 2, 3, 3), 6))
    path = tmp_path / "two.onnx"
    onnx.save(m, path)
    data = onnxprune.calibration_data(path, [{"x": rand((8, 4, 9, 7), 7)}], samples=8)
    config = PruneConfig(sparsity=0.5, method="sparsegpt", min_size=1, allocator="curves")
    onnxprune.prune(m, config, calibration=data)
    assert seen["curves"] and seen["waves"]
    assert all(s.damp == 0.1 and s.per_col == 8 for s in seen["curves"])  # 16 / CURVE_ROWS_DIVISOR
    assert all(s.damp is None and s.per_col == 16 for s in seen["waves"])


# ---------------------------------------------------------------------------------------
# C wᵀ and tr(w H_d wᵀ) accumulated from the layer's own weight


def _two_convs(w0: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """x -> Conv(W0, 1x1) -> Relu = a -> Conv(W, 3x3, two groups) -> y."""
    return model(
        [
            node("Conv", ["x", "W0"], ["c0"], "conv0", kernel_shape=[1, 1]),
            node("Relu", ["c0"], ["a"], "relu"),
            node("Conv", ["a", "W"], ["y"], "conv", group=2, kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 1, 2]),
        ],
        [value("x", ["n", 4, None, None])],
        [value("y", ["n", w.shape[0], None, None])],
        [init("W0", w0), init("W", w)],
    )


@pytest.mark.parametrize("sampling", [ALL_ROWS, RowSampling(per_col=1, min_rows=4, seed=3)])
def test_products_with_the_weight_are_those_of_the_reference_matrices(sampling):
    w0, w = rand((4, 4, 1, 1), 2), rand((4, 2, 3, 3), 1)  # two groups of 2 outputs over 18 columns
    dense = _two_convs(w0, w)
    current = _two_convs(np.where(np.abs(w0) > 0.4, w0, 0).astype(np.float32), w)  # another input
    spec = conv_spec(w, groups=2, strides=(2, 1), pads=(1, 0, 1, 2))
    batches = [{"x": rand((3, 4, 9, 7), 10 + b)} for b in range(2)]
    matrix = w.reshape(2, 2, 18).astype(np.float64)  # [groups, out, cols], as the solver reads it
    plain = capture(current, [spec], batches, reference=dense, sampling=sampling)["W"]
    given = capture(current, [spec], batches, reference=dense, sampling=sampling, weights={"W": matrix})["W"]
    assert plain.C is not None and plain.H_ref is not None and plain.CW is None
    assert given.C is None and given.H_ref is None  # 4·2·2·18 operations a row, not 3·2·18²: the products
    cw = np.matmul(plain.C, np.swapaxes(matrix, 1, 2))
    energy = np.sum(np.matmul(matrix, plain.H_ref) * matrix, axis=(1, 2))
    np.testing.assert_allclose(given.CW, cw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(given.energy_ref, energy, rtol=1e-5)
    for field in ("H", "mean", "mean_ref", "sqnorm"):  # the rest as without the weight
        np.testing.assert_array_equal(getattr(given, field), getattr(plain, field))


def test_a_weight_with_many_outputs_keeps_the_matrices_and_gets_their_products():
    """32 outputs of 8 columns: ``C`` and ``H_d`` are cheaper (3·8² against 4·32·8 a row); the layer
    still gets ``CW`` and ``energy_ref``, from them, and not the matrices."""
    w1, w2 = rand((8, 8), 1), rand((8, 32), 2)
    nodes = [node("MatMul", ["x", "W1"], ["a"], "mm1"), node("MatMul", ["a", "W2"], ["y"], "mm2")]
    dense = model(nodes, [value("x", ["n", 8])], [value("y", ["n", 32])], [init("W1", w1), init("W2", w2)])
    current = model(nodes, [value("x", ["n", 8])], [value("y", ["n", 32])], [init("W1", np.triu(w1)), init("W2", w2)])
    spec = LayerSpec(key="W2", node="mm2", capture_op="MatMul", activation="a", cols=8)
    batches = [{"x": rand((16, 8), 5)}]
    matrix = w2.T[None].astype(np.float64)  # MatMul x @ W: the solver's rows are W's columns
    plain = capture(current, [spec], batches, reference=dense)["W2"]
    given = capture(current, [spec], batches, reference=dense, weights={"W2": matrix})["W2"]
    assert given.C is None and given.H_ref is None
    np.testing.assert_allclose(given.CW, np.matmul(plain.C, np.swapaxes(matrix, 1, 2)), rtol=1e-12)
    a, a_d = np.triu(w1), w1
    x_d, x = batches[0]["x"] @ a_d, batches[0]["x"] @ a
    np.testing.assert_allclose(given.energy_ref, [np.sum((x_d @ w2) ** 2)], rtol=1e-5)
    np.testing.assert_allclose(given.CW[0], x.T @ (x_d @ w2), rtol=1e-4, atol=1e-4)
    without = capture(current, [spec], batches)["W2"]  # no reference: nothing to multiply
    assert without.CW is None and without.C is None


def test_one_input_for_every_group_of_the_weight_broadcasts():
    """A weight of two groups over one input (a recurrent W's directions): ``CW[g] = Σ Xᵀ X_d W_gᵀ``."""
    w1 = rand((8, 8), 1)
    nodes = [node("MatMul", ["x", "W1"], ["a"], "mm1"), node("Relu", ["a"], ["y"], "relu")]
    dense = model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], [init("W1", w1)])
    current = model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], [init("W1", np.tril(w1))])
    spec = LayerSpec(key="R", node="relu", capture_op="MatMul", activation="y", cols=8)
    batches = [{"x": rand((16, 8), 5)}, {"x": rand((8, 8), 6)}]
    matrix = rand((2, 2, 8), 7).astype(np.float64)  # 4·2·2·8 < 3·8²: the products
    plain = capture(current, [spec], batches, reference=dense)["R"]
    given = capture(current, [spec], batches, reference=dense, weights={"R": matrix})["R"]
    assert given.C is None and given.CW.shape == (2, 8, 2) and given.energy_ref.shape == (2,)
    np.testing.assert_allclose(given.CW, np.matmul(plain.C, np.swapaxes(matrix, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        given.energy_ref, np.sum(np.matmul(matrix, plain.H_ref) * matrix, axis=(1, 2)), rtol=1e-5
    )


def test_stacked_uses_add_their_products():
    """A weight two nodes multiply: ``Σ_u X_uᵀ X_d,u Wᵀ`` and ``Σ_u ‖X_d,u Wᵀ‖²`` add like H."""
    parts = [
        LayerStats(
            rows=r,
            H=np.eye(3)[None] * r,
            mean=np.ones((1, 3)) * r,
            sqnorm=np.ones((1, 3)) * r,
            mean_ref=np.full((1, 3), float(r)),
            CW=np.full((1, 3, 2), float(r)),
            energy_ref=np.array([10.0 * r]),
        )
        for r in (1, 3)
    ]
    both = stacked(parts)
    np.testing.assert_array_equal(both.CW, np.full((1, 3, 2), 4.0))
    np.testing.assert_array_equal(both.energy_ref, [40.0])
    np.testing.assert_allclose(both.mean_ref, np.full((1, 3), 10 / 4))  # (1·1 + 3·3) / 4
    assert both.C is None and both.H_ref is None


def test_the_capture_rows_tool_reads_a_damped_cap():
    from tool_scripts import load_tool

    tool = load_tool("capture_rows")
    assert tool.parse_cap("all") is None
    assert tool.parse_cap("16") == (16, False) and tool.parse_cap("16d") == (16, True)
