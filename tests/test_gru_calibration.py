"""Calibration of a GRU's recurrent weight ``R`` with ``linear_before_reset`` = 0.

Its blocks ``R_z, R_r`` read ``h_{t−1}`` but ``R_h`` reads ``r_t ⊙ h_{t−1}``
(:mod:`onnxprune.ops.recurrent`), so ``R`` is ``3·D`` groups ``[H, H]``. Checked against an
independent numpy GRU: (a) the captured ``H`` of every group is ``Σ x xᵀ`` of the rows that
block really multiplies, the initial state (a value computed from the data) first and
sequence lengths honoured; (b) sparsegpt at 50 % calibrates ``R`` (no fallback) and its output
error on ``Y`` is below magnitude pruning's; (c) with ``linear_before_reset`` = 1 the view and the
capture stay one ``Directions`` group per direction of the states ``Y``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import F32, init, ints, model, node, value
from onnx import TensorProto

import onnxprune
from onnxprune.capture import capture
from onnxprune.graph.discovery import DiscoveryOptions, discover
from onnxprune.graph.index import Scope
from onnxprune.passes.layers import calib_layer

STEPS, INPUT, HIDDEN, SAMPLES = 7, 6, 8, 96
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _gru(direction: str, lbr: int, *, lens: bool = False) -> onnx.ModelProto:
    """x [n, T, I] -> [T, n, I] -> GRU (stored W, R, B; initial state ``tanh(x_0 P)`` per
    direction; ``lens``: a ``sequence_lens`` input) -> Y [T, D, n, H] -> y [n, T, D, H]."""
    dirs = DIRECTIONS[direction]
    rng = np.random.default_rng(41 + lbr)
    inits = [
        init("W", (rng.standard_normal((dirs, 3 * HIDDEN, INPUT)) / 2).astype(np.float32)),
        init("R", (rng.standard_normal((dirs, 3 * HIDDEN, HIDDEN)) / 2).astype(np.float32)),
        init("B", (rng.standard_normal((dirs, 6 * HIDDEN)) / 2).astype(np.float32)),
        init("P", (rng.standard_normal((INPUT, HIDDEN)) / 2).astype(np.float32)),
        ints("first", [0]),
    ]
    nodes = [
        node("Transpose", ["x"], ["xt"], "to_time", perm=[1, 0, 2]),
        node("Gather", ["xt", "first"], ["x0"], "first_step", axis=0),  # [1, n, I]
        node("MatMul", ["x0", "P"], ["p0"], "start"),
        node("Tanh", ["p0"], ["h0_one"], "squash"),
        (
            node("Concat", ["h0_one", "h0_one"], ["h0"], "per_direction", axis=0)
            if dirs == 2
            else node("Identity", ["h0_one"], ["h0"], "one_direction")
        ),
        node(
            "GRU",
            ["xt", "W", "R", "B", "lens" if lens else "", "h0"],
            ["Y"],
            "gru",
            hidden_size=HIDDEN,
            direction=direction,
            linear_before_reset=lbr,
        ),
        node("Transpose", ["Y"], ["y"], "to_batch", perm=[2, 0, 1, 3]),
    ]
    inputs = [value("x", ["n", STEPS, INPUT])] + ([value("lens", ["n"], TensorProto.INT32)] if lens else [])
    return model(nodes, inputs, [value("y", ["n", STEPS, dirs, HIDDEN])], inits)


def _data(seed: int, n: int = SAMPLES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((INPUT, INPUT)) / np.sqrt(INPUT)
    return (rng.standard_normal((n, STEPS, INPUT)) @ mix + 0.2).astype(np.float32)


def _stored(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _numpy_gru(
    m: onnx.ModelProto, x: np.ndarray, direction: str, lbr: int, lens: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """ONNX's GRU step by step in float64: ``Y [T, D, n, H]`` and, per direction, the rows
    ``h_{t−1}`` and ``r_t ⊙ h_{t−1}`` of every step the sequence has (``[steps, H]`` each)."""
    s = _stored(m)
    xt = x.astype(np.float64).transpose(1, 0, 2)  # [T, n, I]
    n = x.shape[0]
    h0 = np.tanh(xt[0] @ s["P"])
    length = np.full(n, STEPS) if lens is None else lens
    dirs = DIRECTIONS[direction]
    y = np.zeros((STEPS, dirs, n, HIDDEN))
    rows = []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        w, r, b = s["W"][d], s["R"][d], s["B"][d]
        wz, wr, wh = np.split(w, 3)
        rz, rr, rh = np.split(r, 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(b, 6)
        prev_rows, reset_rows = [], []
        for i in range(n):
            h = h0[i]
            order = range(length[i] - 1, -1, -1) if reverse else range(length[i])
            for t in order:
                z = _sigmoid(xt[t, i] @ wz.T + h @ rz.T + wbz + rbz)
                reset = _sigmoid(xt[t, i] @ wr.T + h @ rr.T + wbr + rbr)
                if lbr:
                    cand = np.tanh(xt[t, i] @ wh.T + reset * (h @ rh.T + rbh) + wbh)
                else:
                    cand = np.tanh(xt[t, i] @ wh.T + (reset * h) @ rh.T + rbh + wbh)
                prev_rows.append(h)
                reset_rows.append(reset * h)
                h = (1 - z) * cand + z * h
                y[t, d, i] = h
        rows.append((np.array(prev_rows), np.array(reset_rows)))
    return y, rows


def _r_layer(m: onnx.ModelProto):
    weight = next(w for w in discover(m, DiscoveryOptions(min_size=0)).weights if w.name == "R")
    return calib_layer(m, Scope.build(m.graph), weight)


def _ort_y(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0].astype(np.float64)  # y [n, T, D, H]


@pytest.mark.parametrize(
    "direction, lens", [("forward", False), ("reverse", False), ("bidirectional", False), ("bidirectional", True)]
)
def test_the_reset_block_captures_r_times_h_and_the_others_the_previous_state(direction: str, lens: bool) -> None:
    m = _gru(direction, 0, lens=lens)
    onnx.checker.check_model(m)
    x = _data(3, n=12)
    feeds: dict[str, np.ndarray] = {"x": x}
    length = None
    if lens:
        length = np.random.default_rng(4).integers(2, STEPS + 1, size=len(x))
        feeds["lens"] = length.astype(np.int32)
    want_y, rows = _numpy_gru(m, x, direction, 0, length)
    got_y = _ort_y(m, feeds).transpose(1, 2, 0, 3)  # the numpy GRU is ONNX's: [T, D, n, H]
    np.testing.assert_allclose(got_y, want_y, atol=2e-5)
    layer, why = _r_layer(m)
    dirs = DIRECTIONS[direction]
    assert layer is not None, why
    assert (layer.spec.capture_op, layer.groups, layer.view.rows, layer.view.cols) == ("Directions", 3 * dirs, 8, 8)
    assert layer.reads_own_output and layer.spec.reads[:3] == ("xt", "W", "R")
    stats = capture(m, [layer.spec], [feeds])["R"]
    assert stats.skipped is None and stats.H.shape == (3 * dirs, HIDDEN, HIDDEN)
    for d, (prev, reset) in enumerate(rows):
        for k, block in enumerate((prev, prev, reset)):  # blocks z, r, h of direction d
            np.testing.assert_allclose(stats.H[3 * d + k], block.T @ block, rtol=1e-5, atol=1e-5)
    # the groups are R's gate blocks as stored
    r = onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "R"))
    matrices = layer.to_matrix(r)
    np.testing.assert_array_equal(matrices[3 * (dirs - 1) + 2], r[dirs - 1, 2 * HIDDEN :])
    np.testing.assert_array_equal(layer.from_matrix(matrices), r)


def _prune(tmp_path: Path, m: onnx.ModelProto, x: np.ndarray, method: str) -> tuple[onnxprune.LayerResult, float]:
    """``R`` alone pruned at 50 % by ``method``; its record and the relative error of ``y``."""
    source = tmp_path / "dense.onnx"
    onnx.save(m, str(source))
    np.savez(tmp_path / "calib.npz", x=x)
    config = onnxprune.PruneConfig(sparsity=0.5, method=method, min_size=0, include=("^R$",), allocator="uniform")
    run = onnxprune.prune_file(
        source,
        tmp_path / f"{method}.onnx",
        config,
        calibration=onnxprune.calibration_data(source, tmp_path / "calib.npz") if method != "magnitude" else None,
        structure=onnxprune.StructureConfig(dead_channels=False),
    )
    out = onnx.load(str(run.saved.path))
    onnx.checker.check_model(out, full_check=True)
    values = onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "R"))
    assert np.count_nonzero(values == 0) == values.size // 2
    dense, pruned = _ort_y(m, {"x": x}), _ort_y(out, {"x": x})
    layer = next(layer for layer in run.result.pruned if layer.name == "R")
    return layer, float(np.linalg.norm(pruned - dense) / np.linalg.norm(dense))


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_sparsegpt_calibrates_r_and_beats_magnitude(tmp_path: Path, direction: str) -> None:
    m = _gru(direction, 0)
    x = _data(5)
    _, magnitude_error = _prune(tmp_path, m, x, "magnitude")
    layer, error = _prune(tmp_path, m, x, "sparsegpt")
    assert layer.method == "sparsegpt" and layer.reason is None, layer.reason
    assert layer.error is not None and layer.error < layer.error_magnitude
    assert error < 0.8 * magnitude_error, (error, magnitude_error)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_linear_before_reset_keeps_one_group_of_states_per_direction(direction: str) -> None:
    m = _gru(direction, 1)
    layer, why = _r_layer(m)
    dirs = DIRECTIONS[direction]
    assert layer is not None, why
    assert (layer.spec.capture_op, layer.groups, layer.spec.reads, layer.spec.prepare) == ("Directions", dirs, (), None)
    x = _data(6, n=10)
    stats = capture(m, [layer.spec], [{"x": x}])["R"]
    y = _ort_y(m, {"x": x})  # [n, T, D, H]: the states h_1 … h_T stand in for h_0 … h_{T−1}
    for d in range(dirs):
        states = y[:, :, d].reshape(-1, HIDDEN)
        np.testing.assert_allclose(stats.H[d], states.T @ states, **F32)


def test_a_reset_gate_other_than_sigmoid_has_no_view() -> None:
    m = _gru("forward", 0)
    gru = next(n for n in m.graph.node if n.op_type == "GRU")
    gru.attribute.extend([onnx.helper.make_attribute("activations", ["HardSigmoid", "Tanh"])])
    layer, why = _r_layer(m)
    assert layer is None and "reset gate is not Sigmoid" in why
