"""Channel groups through the CNN -> RNN hand-off of a text recognizer (CRNN).

The conv features ``[B, C, H, W]`` become the LSTM's time steps ``[W, B, C·H]`` (a conv channel
is a block of ``H`` features), a bidirectional LSTM's ``Y [T, 2, B, Hd]`` becomes the next
layer's input ``[T, B, 2·Hd]`` (a hidden unit is 2 features, one per direction), with a dynamic
batch and width. Asserted on the small graphs of ``tests/crnn_graphs.py`` (every hand-off as
exporters write it) and on the trained fixture ``fixtures/crnn_digits.onnx``: the groups found
(structure), what removal changes (counts and shapes), onnx.checker, and onnxruntime (outputs
equal to the dense model's where the removed channels are dead; valid at other batch and width).
"""

from __future__ import annotations

import json
from pathlib import Path

import crnn_graphs as cg
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import init, ints, model, node, rand, value
from onnx import ModelProto, numpy_helper

from onnxprune import runtime
from onnxprune.config import StructureConfig
from onnxprune.data import open_data
from onnxprune.passes.structural import remove_channels
from onnxprune.structure.analysis import Analysis, analyze
from onnxprune.structure.apply import apply_removal
from onnxprune.structure.groups import Group

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CRNN = FIXTURES / "crnn_digits.onnx"
HANDOFFS = ["computed", "zeros", "batch_first", "squeeze"]  # dynamic batch and width; "static" below


def run(m: ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


def inputs(handoff: str, batch: int, width: int, seed: int = 0) -> np.ndarray:
    height = 1 if handoff == "squeeze" else 3
    return np.random.default_rng(seed).standard_normal((batch, 1, height, width)).astype(np.float32)


def group(analysis: Analysis, source: str) -> Group:
    (found,) = [g for g in analysis.groups if source in g.sources]
    return found


def reads(g: Group) -> set[tuple[str, int, int, int]]:
    """(tensor, axis, offset, per) of every consumer member of ``g``."""
    return {(m.tensor, m.axis, m.offset, m.segment.per) for m in g.members if m.kind == "in"}


def tensor(m: ModelProto, name: str) -> np.ndarray:
    (found,) = [t for t in m.graph.initializer if t.name == name]
    return numpy_helper.to_array(found)


def greedy_sequence_accuracy(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Greedy CTC decoding (repeats merged, blank 0 dropped, digit d = class d + 1) against labels padded with -1."""
    hits = 0
    for steps, truth in zip(log_probs.argmax(-1), labels, strict=True):
        keep = np.r_[True, steps[1:] != steps[:-1]] & (steps != 0)
        hits += (steps[keep] - 1).tolist() == [int(v) for v in truth if v >= 0]
    return hits / len(labels)


# ---------------------------------------------------------------------------------------
# The groups found through each hand-off


@pytest.mark.parametrize("handoff", [*HANDOFFS, "static"])
def test_every_group_flows_through_the_handoff_and_the_bidirectional_merge(handoff: str):
    analysis = analyze(cg.crnn(handoff, dynamic=handoff != "static"))
    conv, lstm1, lstm2 = (group(analysis, s) for s in ("conv", "lstm1", "lstm2"))
    assert not conv.blocked and not lstm1.blocked and not lstm2.blocked
    assert [g.sources for g in analysis.prunable] == [["conv"], ["lstm1"], ["lstm2"]]
    # a conv channel is H consecutive input features of the first LSTM (H = 1 once squeezed)
    height = 1 if handoff == "squeeze" else 3
    assert (conv.n, reads(conv)) == (cg.C, {("lstm1.W", 2, 0, height)})
    # a hidden unit of a bidirectional layer is two features of the next one: d·Hd + u for d = 0, 1
    hd = cg.HIDDEN
    assert reads(lstm1) == {("lstm1.R", 2, 0, 1), ("lstm2.W", 2, 0, 1), ("lstm2.W", 2, hd, 1)}
    assert reads(lstm2) == {("lstm2.R", 2, 0, 1), ("fc.W", 0, 0, 1), ("fc.W", 0, hd, 1)}
    # the hidden units own their rows of every gate block of W, R and both halves of B
    rows = sorted(m.offset for m in lstm1.members if m.tensor == "lstm1.W" and m.kind == "out")
    assert rows == [k * hd for k in range(4)]
    assert sorted(m.offset for m in lstm1.members if m.tensor == "lstm1.B") == [k * hd for k in range(8)]
    (head,) = analysis.blocked
    assert head.sources == ["fc/MatMul"] and "graph output" in head.blocked[0]


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_the_groups_do_not_depend_on_the_sizes_the_dynamic_dims_are_given(handoff: str):
    """The batch and width are symbols: a batch of 1 is not mistaken for a static axis of size 1."""
    height = 1 if handoff == "squeeze" else 3
    found = []
    for shape in ((1, 1, height, 8), (4, 1, height, 16), (1, 1, height, 1)):
        analysis = analyze(cg.crnn(handoff), input_shapes={"X": shape})
        found.append([(g.sources, g.n, sorted(reads(g)), g.blocked) for g in analysis.groups])
    assert found[0] == found[1] == found[2]


def test_a_reshape_that_merges_a_dynamic_axis_into_the_channels_blocks():
    """[B, C, H, W] -> Transpose -> [B, C, W, H] -> Reshape [b, -1]: each channel's block holds the
    dynamic W (its size differs from run to run), so the channels cannot follow. With the width
    filled in by a number, the products alone would have let it through."""
    nodes = [
        node("Conv", ["X", "W"], ["F"], "conv", pads=[1, 1, 1, 1]),
        node("Transpose", ["F"], ["FT"], "t", perm=[0, 1, 3, 2]),
        node("Shape", ["FT"], ["s"], "shape"),
        node("Slice", ["s", "zero", "one"], ["lead"], "slice"),
        node("Concat", ["lead", "minus_one"], ["target"], "concat", axis=0),
        node("Reshape", ["FT", "target"], ["R"], "reshape"),
        node("ReduceSum", ["R", "one"], ["Y"], "sum", keepdims=0),
    ]
    inits = [init("W", rand((4, 1, 3, 3), 0)), ints("zero", [0]), ints("one", [1]), ints("minus_one", [-1])]
    m = model(nodes, [value("X", ("batch", 1, 3, "width"))], [value("Y", ("batch",))], inits)
    (g,) = analyze(m).groups
    assert "Reshape 'reshape' mixes these channels with other axes" in g.blocked


def test_a_channel_count_read_for_another_tensor_blocks():
    """Shape(F)[1] (the channel count) sizes a Reshape of the input, not of F: it would not
    follow a removal, so the group is kept whole; read for F's own Reshape it follows."""
    m = cg.crnn("computed")
    graph = m.graph
    graph.node.extend(
        [
            node("Concat", ["minus_one", "dim_c"], ["dim_c_other"], "other/Concat", axis=0),
            node("Reshape", ["X", "dim_c_other"], ["X2"], "other/Reshape"),
        ]
    )
    graph.initializer.append(ints("minus_one", [-1]))
    graph.output.append(value("X2", (None, None)))
    onnx.checker.check_model(m)
    conv = group(analyze(m), "conv")
    assert "Shape 'dim_c/Shape' reads the number of these channels" in conv.blocked
    assert not group(analyze(cg.crnn("computed")), "conv").blocked


# ---------------------------------------------------------------------------------------
# Removing channels


@pytest.mark.parametrize("handoff", [*HANDOFFS, "static"])
def test_removing_channels_and_hidden_units_gives_a_valid_model(handoff: str):
    dynamic = handoff != "static"
    m = cg.crnn(handoff, dynamic=dynamic)
    result = remove_channels(m, StructureConfig(amount=0.5, round_to=1))
    removed = {g.name: (g.removed, g.units) for g in result.groups if g.removed}
    assert removed == {"conv": (3, 6), "lstm1": (2, 4), "lstm2": (2, 4)}
    onnx.checker.check_model(m, full_check=True)
    height, hd = (1 if handoff == "squeeze" else 3), cg.HIDDEN // 2
    assert tensor(m, "conv.W").shape == (3, 1, 3, 3)
    assert tensor(m, "lstm1.W").shape == (2, 4 * hd, 3 * height)
    assert tensor(m, "lstm1.R").shape == (2, 4 * hd, hd) and tensor(m, "lstm1.B").shape == (2, 8 * hd)
    assert tensor(m, "lstm2.W").shape == (2, 4 * hd, 2 * hd) and tensor(m, "fc.W").shape == (2 * hd, cg.K)
    lstms = [n for n in m.graph.node if n.op_type == "LSTM"]
    assert [next(a.i for a in n.attribute if a.name == "hidden_size") for n in lstms] == [hd, hd]
    # the zero initial states, sliced from one ConstantOfShape for both layers, are dropped (zeros by default)
    assert all(not name for n in lstms for name in n.input[4:])
    assert not any(n.op_type == "ConstantOfShape" for n in m.graph.node)
    for batch, width in ((2, 8), (3, 5), (1, 11)) if dynamic else ((2, 8),):
        out = run(m, inputs(handoff, batch, width))
        assert out.shape == (width, batch, cg.K) and np.isfinite(out).all()


def test_the_count_read_from_the_shape_follows_the_channels():
    """Without folding, the hand-off's target entry is Mul(Shape(F)[1], Shape(F)[2]), computed at run
    time from F itself: nothing to edit, it reads the new channel count."""
    m = cg.crnn("computed")
    analysis = analyze(m)
    conv = group(analysis, "conv")
    assert not any(e.target[0] == "tensor" for e in conv.edits)  # no stored entry to change
    apply_removal(m, analysis.groups, {conv.gid: np.array([0, 2, 5])})
    onnx.checker.check_model(m, full_check=True)
    assert any(n.op_type == "Mul" and n.name == "handoff/Mul" for n in m.graph.node)
    assert tensor(m, "lstm1.W").shape == (2, 4 * cg.HIDDEN, 3 * 3)
    for batch, width in ((2, 8), (1, 3)):
        assert run(m, inputs("computed", batch, width)).shape == (width, batch, cg.K)


@pytest.mark.parametrize("candidate_only", [False, True])
@pytest.mark.parametrize("handoff", HANDOFFS)
def test_dead_channels_and_hidden_units_go_and_the_outputs_stay_the_same(handoff: str, candidate_only: bool):
    """Zeroed conv filters (relu(0) = 0 through the hand-off) and LSTM units whose candidate rows
    are zero (their state stays 0: see onnxprune/ops/recurrent.py) are removed by the exact pass;
    the outputs are the dense model's."""
    dense = cg.crnn(handoff, dead_channels=[1, 4], dead_units=[0, 2], candidate_only=candidate_only)
    m = cg.crnn(handoff, dead_channels=[1, 4], dead_units=[0, 2], candidate_only=candidate_only)
    result = remove_channels(m, StructureConfig())
    assert {g.name: (g.removed, g.dead) for g in result.groups if g.removed} == {"conv": (2, 2), "lstm1": (2, 2)}
    onnx.checker.check_model(m, full_check=True)
    assert tensor(m, "lstm1.W").shape[1:] == (4 * (cg.HIDDEN - 2), 4 * (1 if handoff == "squeeze" else 3))
    assert tensor(m, "lstm2.W").shape[2] == 2 * (cg.HIDDEN - 2)
    for batch, width in ((2, 8), (3, 5)):
        x = inputs(handoff, batch, width, seed=batch)
        np.testing.assert_allclose(run(m, x), run(dense, x), rtol=0, atol=1e-6)


def test_nothing_is_removed_where_nothing_is_dead():
    m = cg.crnn("computed")
    before = cg.crnn("computed")
    result = remove_channels(m, StructureConfig())
    assert result.removed_units == 0 and result.dead_units == 0
    x = inputs("computed", 2, 8)
    np.testing.assert_allclose(run(m, x), run(before, x), rtol=0, atol=1e-6)


def test_a_unit_with_a_nonzero_initial_state_is_not_dead():
    """h_0 ≠ 0 reaches the other units through R at the first step: removing the unit would change them."""
    m = cg.crnn("zeros", dynamic=False, dead_units=[1])
    lstm = next(n for n in m.graph.node if n.name == "lstm1")
    h0 = np.zeros((2, 2, cg.HIDDEN), dtype=np.float32)
    h0[:, :, 1] = 0.5
    m.graph.initializer.append(init("h0", h0))
    lstm.input.append("h0")
    result = remove_channels(m, StructureConfig())
    assert result.dead_units == 0


# ---------------------------------------------------------------------------------------
# The trained fixture


def test_fixture_groups_are_all_prunable_but_the_classes():
    analysis = analyze(onnx.load(str(CRNN)))
    assert [g.sources for g in analysis.prunable] == [
        ["/block1/block1.0/block1.0.0/Conv"],
        ["/block2/block2.0/block2.0.0/Conv", "/res/res.0/Conv"],  # the residual joins them
        ["/rnn/LSTM"],
        ["/rnn/LSTM_1"],
    ]
    (blocked,) = analysis.blocked
    assert blocked.blocked == ["LogSoftmax '/LogSoftmax' normalizes over these channels"]
    # the conv channels reach the LSTM as blocks of H = 3 features (the Reshape's target is computed)
    residual = group(analysis, "/res/res.0/Conv")
    assert reads(residual) == {("res.res.0.Conv.input1", 1, 0, 1), ("rnn.W", 2, 0, 3)}
    # the first LSTM's units are 2 features each of the second's input, the second's of the head's
    assert reads(group(analysis, "/rnn/LSTM")) == {("rnn.R", 2, 0, 1), ("rnn.W_", 2, 0, 1), ("rnn.W_", 2, 32, 1)}
    assert reads(group(analysis, "/rnn/LSTM_1")) == {
        ("rnn.R_", 2, 0, 1),
        ("fc.weight_t", 0, 0, 1),
        ("fc.weight_t", 0, 32, 1),
    }


def test_fixture_structured_prune_removes_the_lstm_units_too():
    """Before the hand-off rules, 30 % of each group removed 16 % of the parameters (the conv groups
    only; the LSTMs were blocked by their computed initial state and the direction merge)."""
    m = onnx.load(str(CRNN))
    result = remove_channels(m, StructureConfig(amount=0.3))
    removed = {g.name: g.removed for g in result.groups if g.removed}
    assert removed == {"/block2/block2.0/block2.0.0/Conv": 8, "/rnn/LSTM": 8, "/rnn/LSTM_1": 8}
    assert result.params_after / result.params_before < 0.6  # was 0.84 (61,788 of 73,132)
    onnx.checker.check_model(m, full_check=True)
    x = np.load(FIXTURES / "crnn_digits.test.npz")["input"][:32]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for width in (64, 40):
        (out,) = sess.run(None, {"input": np.ascontiguousarray(x[..., :width])})
        assert out.shape == (32, width // 2, 11) and np.isfinite(out).all()


def test_fixture_calibrated_prune_at_70_percent_of_the_macs_keeps_most_lines_right():
    entry = json.loads((FIXTURES / "manifest.json").read_text())["models"]["crnn_digits"]
    x = np.load(FIXTURES / "crnn_digits.test.npz")["input"]
    labels = np.load(FIXTURES / "crnn_digits.test_labels.npy")
    assert labels.shape == (entry["num_test"], 5) and entry["task"] == "ctc"
    dense = ort.InferenceSession(str(CRNN), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert greedy_sequence_accuracy(dense, labels) == pytest.approx(entry["accuracy"], abs=1e-4)
    m = onnx.load(str(CRNN))
    calib = open_data(
        str(FIXTURES / "crnn_digits.calib.npz"), specs=runtime.input_specs(runtime.session(str(CRNN))), samples=128
    )
    result = remove_channels(m, StructureConfig(target_flops=0.7, round_to=1), calibration=calib)
    assert result.macs_after / result.macs_before <= 0.72
    assert "/rnn/LSTM" in {name for name, _, _ in result.refits}  # the bidirectional W is refitted (both directions)
    onnx.checker.check_model(m, full_check=True)
    pruned = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert greedy_sequence_accuracy(pruned, labels) > 0.85  # dense 0.96


def test_fixture_structured_30_percent_with_data_spreads_the_parameters_by_measured_loss():
    x = np.load(FIXTURES / "crnn_digits.test.npz")["input"]
    labels = np.load(FIXTURES / "crnn_digits.test_labels.npy")
    calib = open_data(
        str(FIXTURES / "crnn_digits.calib.npz"), specs=runtime.input_specs(runtime.session(str(CRNN))), samples=128
    )
    m = onnx.load(str(CRNN))
    result = remove_channels(m, StructureConfig(amount=0.3, round_to=1), calibration=calib)
    assert result.config["allocator"] is None  # the default: curves, with data
    assert 0.25 <= 1 - result.params_after / result.params_before <= 0.35  # 30 % of the parameters, not of each group
    kept = {g.name: g.removed / g.units for g in result.groups if g.removed}
    assert len(set(kept.values())) > 1  # not the same fraction of every group
    onnx.checker.check_model(m, full_check=True)
    pruned = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert greedy_sequence_accuracy(pruned, labels) > 0.9  # dense 0.96; the same fraction of each group: 0.88
    uniform = onnx.load(str(CRNN))
    result = remove_channels(uniform, StructureConfig(amount=0.3, round_to=1, allocator="uniform"), calibration=calib)
    assert {g.removed for g in result.groups if g.removed and g.units == 32} == {9}


def test_measured_loss_helpers():
    from onnxprune.passes.channel_loss import measured_counts, relative_error
    from onnxprune.sparsity.channels import GroupBudget

    b = GroupBudget(n_units=32, scores=np.ones(32), max_fraction=0.9, round_to=4)
    counts = measured_counts(b)
    assert counts == sorted(set(counts)) and all(c in b.steps() for c in counts) and counts[-1] == b.steps()[-1]
    y = [np.ones(4), np.zeros(2)]
    assert relative_error(y, [np.ones(4), np.zeros(2)]) == 0.0
    assert relative_error(y, [2 * np.ones(4), np.zeros(2)]) == pytest.approx(1.0)
    assert relative_error(y, [np.full(4, np.nan), np.zeros(2)]) == float("inf")


def test_a_log_softmax_output_moved_by_a_transpose_is_compared_as_probabilities():
    from onnxprune.passes.structural import log_probability_outputs

    assert log_probability_outputs(onnx.load(str(CRNN))) == (True,)  # LogSoftmax -> Transpose -> logits
    m = onnx.load(str(CRNN))
    (last,) = [n for n in m.graph.node if n.op_type == "LogSoftmax"]
    last.op_type = "Softmax"
    assert log_probability_outputs(m) == (False,)
