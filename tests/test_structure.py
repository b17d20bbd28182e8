"""Channel dependency analysis and channel removal (issue 5), on small ONNX graphs and the fixtures.

Each shape is checked four ways where it applies: the groups found (sources, sinks, members,
reasons for blocking), the structure of the result (shapes of the sliced tensors, rewritten
shape constants and attributes), numerical agreement in onnxruntime and ``onnx.checker``.

The reference for a removal that is not exact by itself: removing units gives the same outputs
as the original model with the consumer's input weights of those units zeroed (whatever the
removed channels carried, nothing reads it any more). For the exact pass (dead channels) the
reference is the original model itself. Tolerances are relative to ``max(1, max |y|)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import builders as b
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import structure_graphs as sg
from onnx import ModelProto, helper, numpy_helper

from onnxprune import runtime
from onnxprune.config import StructureConfig
from onnxprune.data import open_data
from onnxprune.errors import OptionError
from onnxprune.passes.pipeline import after_weights
from onnxprune.passes.structural import remove_channels
from onnxprune.structure.analysis import Analysis, analyze
from onnxprune.structure.apply import apply_removal
from onnxprune.structure.constants import dead_units, propagate
from onnxprune.structure.groups import Group

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MASKED = FIXTURES / "masked"
MANIFEST = json.loads((MASKED / "manifest.json").read_text())["models"]


# ---------------------------------------------------------------------------------------
# Helpers


def run(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # unused shape constants left by a removal are not worth a warning
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def copy(model: ModelProto) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(model)
    return out


def max_diff(before: ModelProto, after: ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """Max |Δ| over all outputs, relative to max(1, max |y|) of each output."""
    worst = 0.0
    for want, got in zip(run(before, feeds), run(after, feeds), strict=True):
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max())))
    return worst


def check(model: ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def by_source(analysis: Analysis, source: str) -> Group:
    found = [g for g in analysis.groups if source in g.sources]
    assert len(found) == 1, f"no single group with source {source}: {[g.sources for g in analysis.groups]}"
    return found[0]


def members(group: Group) -> set[tuple[str, str, int, int, int]]:
    """(kind, tensor, axis, offset, per) of every member."""
    return {(m.kind, m.tensor, m.axis, m.offset, m.segment.per) for m in group.members}


def zero_inputs(model: ModelProto, tensor: str, axis: int, index: np.ndarray) -> ModelProto:
    """A copy of ``model`` with elements ``index`` of ``axis`` of initializer ``tensor`` set to 0."""
    out = copy(model)
    init = next(t for t in out.graph.initializer if t.name == tensor)
    values = numpy_helper.to_array(init).copy()
    np.moveaxis(values, axis, 0)[index] = 0.0
    init.CopyFrom(numpy_helper.from_array(values, tensor))
    return out


def mlp_feeds(rows: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    return {"X": np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)}


def record(result: object, source: str) -> object:
    return next(g for g in result.groups if source in g.sources)


# ---------------------------------------------------------------------------------------
# 1. Group discovery


def test_conv_bn_relu_conv_is_one_group_with_its_bn_parameters():
    analysis = analyze(sg.conv_chain())
    group = by_source(analysis, "conv1")
    assert (group.n, group.unit, group.sinks, group.blocked) == (8, 1, ["conv2"], [])
    assert members(group) == {
        ("out", "W1", 0, 0, 1),
        ("out", "B1", 0, 0, 1),
        *(("param", f"bn1_{p}", 0, 0, 1) for p in ("scale", "B", "mean", "var")),
        ("in", "W2", 1, 0, 1),
    }
    assert [g.gid for g in analysis.prunable] == [group.gid]
    # conv2's own group ends in the graph output
    assert any("graph output" in r for r in by_source(analysis, "conv2").blocked)
    assert analysis.layouts["r1"].axis == 1 and analysis.layouts["r1"].length == 8


def test_residual_add_merges_both_branches_into_one_group():
    analysis = analyze(sg.residual_add())
    group = by_source(analysis, "conv_a")
    assert group is by_source(analysis, "conv_b")
    assert sorted(group.sources) == ["conv_a", "conv_b"]
    assert (group.n, group.sinks, group.blocked) == (8, ["conv_c"], [])
    assert {("out", "Wa", 0, 0, 1), ("out", "Wb", 0, 0, 1), ("in", "Wc", 1, 0, 1)} <= members(group)
    assert len(analysis.prunable) == 1


def test_concat_of_two_branches_gives_two_groups_at_offsets_of_the_consumer():
    analysis = analyze(sg.concat_branches())
    a, c = by_source(analysis, "conv_a"), by_source(analysis, "conv_b")
    assert a is not c
    assert (a.n, c.n) == (6, 10)
    assert ("in", "Wc", 1, 0, 1) in members(a)
    assert ("in", "Wc", 1, 6, 1) in members(c)
    assert a.sinks == c.sinks == ["conv_c"]
    assert {g.gid for g in analysis.prunable} == {a.gid, c.gid}
    layout = analysis.layouts["r"]
    assert [p.root() for p in layout.pieces] == [a, c] and layout.length == 16


def test_depthwise_conv_carries_the_group_and_edits_its_group_attribute():
    model = sg.depthwise_chain()
    analysis = analyze(model)
    group = by_source(analysis, "conv1")
    assert (group.n, group.sinks, group.blocked) == (8, ["conv2"], [])
    assert {("param", "Wd", 0, 0, 1), ("param", "Bd", 0, 0, 1), ("in", "W2", 1, 0, 1)} <= members(group)
    dw_index = [n.name for n in model.graph.node].index("dw")
    assert [e.target for e in group.edits] == [("attr", dw_index, "group")]
    assert "dw" not in [s for g in analysis.groups for s in g.sources]  # a depthwise conv starts no group


def test_flatten_before_gemm_makes_each_channel_a_block_of_h_times_w_rows():
    analysis = analyze(sg.flatten_gemm())
    group = by_source(analysis, "conv")
    assert (group.n, group.sinks, group.blocked) == (4, ["gemm"], [])
    assert ("in", "W2", 0, 0, 16) in members(group)
    assert analysis.layouts["f"].axis == 1 and analysis.layouts["f"].length == 64


def test_matmul_add_ffn_hidden_group():
    analysis = analyze(sg.ffn())
    group = by_source(analysis, "mm1")
    assert (group.n, group.sinks, group.blocked) == (32, ["mm2"], [])
    assert members(group) == {("out", "W1", 1, 0, 1), ("param", "b1", 0, 0, 1), ("in", "W2", 0, 0, 1)}
    assert [g.gid for g in analysis.prunable] == [group.gid]


@pytest.mark.parametrize("explicit", [True, False], ids=["heads-written", "minus-one"])
def test_attention_heads_are_one_group_of_h_units_of_head_dim_channels(explicit: bool):
    model = sg.attention(explicit=explicit)
    analysis = analyze(model)
    group = by_source(analysis, "q_mm")
    assert group is by_source(analysis, "k_mm") is by_source(analysis, "v_mm")
    assert (group.n, group.unit, group.sinks, group.blocked) == (4, 4, ["out_mm"], [])
    assert members(group) == {
        *(("out", f"W{p}", 1, 0, 4) for p in "qkv"),
        *(("param", f"b{p}", 0, 0, 4) for p in "qkv"),
        ("in", "Wo", 0, 0, 4),
    }
    edits = sorted({e.target for e in group.edits})
    if explicit:
        assert edits == [("tensor", "heads_shape", 2), ("tensor", "merge_shape", 2)]
        assert len(group.edits) == 4  # heads_shape is read by three Reshapes, each recorded
    else:
        assert edits == []  # -1 adapts by itself
    assert analysis.layouts["scores"].axis == 1  # [1, H, S, S]: heads on axis 1
    assert [g.gid for g in analysis.prunable] == [group.gid]


def test_split_on_channels_with_stored_sizes_keeps_both_groups_and_edits_the_sizes():
    analysis = analyze(sg.concat_split())
    a, c = by_source(analysis, "conv_a"), by_source(analysis, "conv_b")
    assert (a.n, a.sinks, c.n, c.sinks) == (4, ["conv_c"], 6, ["conv_d"])
    assert ("in", "Wc", 1, 0, 1) in members(a) and ("in", "Wd", 1, 0, 1) in members(c)
    assert [e.target for e in a.edits] == [("tensor", "sizes", 0)]
    assert [e.target for e in c.edits] == [("tensor", "sizes", 1)]
    assert {g.gid for g in analysis.prunable} == {a.gid, c.gid}


def test_slice_on_a_spatial_axis_carries_the_channels():
    analysis = analyze(sg.conv_slice(axis=2))
    group = by_source(analysis, "conv1")
    assert (group.sinks, group.blocked) == (["conv2"], [])
    assert ("in", "W2", 1, 0, 1) in members(group)


BLOCKERS = {
    "grouped-conv": (sg.grouped_chain, "conv1", "grouped convolution"),
    "split-cuts-group": (sg.split_cuts_group, "conv1", "cuts a channel group"),
    "slice-on-channels": (lambda: sg.conv_slice(axis=1), "conv1", "cuts the axis"),
    "layernorm-over-channels": (lambda: sg.ffn(layernorm=True), "mm1", "normalizes over these channels"),
    "graph-output": (sg.relu_is_output, "conv1", "graph output"),
    "read-in-if-branch": (sg.read_in_if, "mm1", "subgraph"),
    "shared-weight": (sg.shared_consumer_weight, "mm_a", "shares its weight"),
    "custom-domain-op": (sg.custom_op, "conv1", "domain com.example"),
}


@pytest.mark.parametrize("name", list(BLOCKERS))
def test_blocked_groups_carry_a_reason_and_are_left_whole(name: str):
    build, source, keyword = BLOCKERS[name]
    model = build()
    analysis = analyze(model)
    group = by_source(analysis, source)
    assert group.blocked, f"{source}'s group should be blocked"
    assert any(keyword in reason for reason in group.blocked), group.blocked
    assert analysis.prunable == []  # nothing else in these graphs can shrink either
    assert dead_units(analysis).units == {}
    # a structured pass removes nothing, says why, and leaves the graph as it was
    before = model.SerializeToString()
    result = remove_channels(model, StructureConfig(amount=0.5, fold=False))
    assert record(result, source).removed == 0 and keyword in record(result, source).blocked
    assert result.removed_units == 0
    assert model.SerializeToString() == before


def test_shared_weights_block_both_readers():
    analysis = analyze(sg.shared_consumer_weight())
    assert analysis.prunable == []
    for source in ("mm_a", "mm_b"):
        assert any("W2" in r for r in by_source(analysis, source).blocked)


# ---------------------------------------------------------------------------------------
# 2. Removal


# name -> (builder, {source: units removed}, expected shapes of the sliced tensors,
#          [(consumer tensor, axis, elements)] zeroed in the reference)
REMOVALS = {
    "conv-bn-relu-conv": (
        sg.conv_chain,
        {"conv1": [1, 5]},
        {"W1": (6, 3, 3, 3), "B1": (6,), "bn1_scale": (6,), "bn1_var": (6,), "W2": (6, 6, 3, 3)},
        [("W2", 1, [1, 5])],
    ),
    "residual-add": (
        sg.residual_add,
        {"conv_a": [0, 7]},
        {"Wa": (6, 4, 3, 3), "Ba": (6,), "Wb": (6, 4, 1, 1), "Bb": (6,), "Wc": (5, 6, 1, 1)},
        [("Wc", 1, [0, 7])],
    ),
    "concat": (
        sg.concat_branches,
        {"conv_a": [2], "conv_b": [0, 9]},
        {"Wa": (5, 4, 3, 3), "Ba": (5,), "Wb": (8, 4, 1, 1), "Bb": (8,), "Wc": (5, 13, 1, 1)},
        [("Wc", 1, [2, 6, 15])],
    ),
    "depthwise": (
        sg.depthwise_chain,
        {"conv1": [3, 4]},
        {"W1": (6, 4, 1, 1), "B1": (6,), "Wd": (6, 1, 3, 3), "Bd": (6,), "W2": (6, 6, 1, 1)},
        [("W2", 1, [3, 4])],
    ),
    "flatten-gemm": (
        sg.flatten_gemm,
        {"conv": [1]},
        {"W1": (3, 3, 3, 3), "B1": (3,), "W2": (48, 10)},
        [("W2", 0, list(range(16, 32)))],
    ),
    "ffn": (
        sg.ffn,
        {"mm1": list(range(0, 32, 3))},
        {"W1": (16, 21), "b1": (21,), "W2": (21, 16)},
        [("W2", 0, list(range(0, 32, 3)))],
    ),
    "attention-heads-written": (
        lambda: sg.attention(explicit=True),
        {"q_mm": [1]},
        {"Wq": (16, 12), "bq": (12,), "Wk": (16, 12), "Wv": (16, 12), "bv": (12,), "Wo": (12, 16)},
        [("Wo", 0, list(range(4, 8)))],
    ),
    "attention-minus-one": (
        lambda: sg.attention(explicit=False),
        {"q_mm": [0, 3]},
        {"Wq": (16, 8), "bk": (8,), "Wv": (16, 8), "Wo": (8, 16)},
        [("Wo", 0, [0, 1, 2, 3, 12, 13, 14, 15])],
    ),
    "slice-on-spatial-axis": (
        lambda: sg.conv_slice(axis=2),
        {"conv1": [0, 5]},
        {"W1": (6, 4, 1, 1), "W2": (3, 6, 1, 1)},
        [("W2", 1, [0, 5])],
    ),
    "split": (
        sg.concat_split,
        {"conv_a": [1], "conv_b": [2, 3]},
        {"Wa": (3, 4, 3, 3), "Wb": (4, 4, 1, 1), "Wc": (3, 3, 1, 1), "Wd": (5, 4, 1, 1)},
        [("Wc", 1, [1]), ("Wd", 1, [2, 3])],
    ),
}


@pytest.mark.parametrize("name", list(REMOVALS))
def test_removal_slices_every_member_and_matches_the_zeroed_consumers(name: str):
    build, units, shapes, zeroed = REMOVALS[name]
    model = build()
    original = copy(model)
    analysis = analyze(model)
    removed = {by_source(analysis, source).gid: np.asarray(u) for source, u in units.items()}
    sliced = apply_removal(model, analysis.groups, removed)
    for tensor, shape in shapes.items():
        assert sliced[tensor] == shape, tensor
        assert tuple(sg.tensor(model, tensor).shape) == shape
    check(model)
    reference = original
    for tensor, axis, index in zeroed:
        reference = zero_inputs(reference, tensor, axis, np.asarray(index))
    feeds = b.feeds(original, seed=3)
    assert max_diff(reference, model, feeds) <= 1e-5
    assert max_diff(original, model, feeds) > 1e-3  # the removed units mattered


def test_removal_keeps_the_values_of_the_kept_units():
    model = sg.concat_branches()
    original = copy(model)
    analysis = analyze(model)
    apply_removal(model, analysis.groups, {by_source(analysis, "conv_b").gid: np.array([0, 9])})
    np.testing.assert_array_equal(sg.tensor(model, "Wb"), np.delete(sg.tensor(original, "Wb"), [0, 9], axis=0))
    np.testing.assert_array_equal(sg.tensor(model, "Wc"), np.delete(sg.tensor(original, "Wc"), [6, 15], axis=1))
    np.testing.assert_array_equal(sg.tensor(model, "Wa"), sg.tensor(original, "Wa"))


def test_removal_edits_group_attribute_split_sizes_and_head_shapes():
    dw = sg.depthwise_chain()
    analysis = analyze(dw)
    apply_removal(dw, analysis.groups, {by_source(analysis, "conv1").gid: np.array([0, 1, 7])})
    node = next(n for n in dw.graph.node if n.name == "dw")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "group")) == 5

    split = sg.concat_split()
    analysis = analyze(split)
    apply_removal(split, analysis.groups, {by_source(analysis, "conv_b").gid: np.array([0, 2, 4])})
    split_node = next(n for n in split.graph.node if n.name == "split")
    assert sg.tensor(split, split_node.input[1]).tolist() == [4, 3]

    attn = sg.attention(explicit=True)
    analysis = analyze(attn)
    apply_removal(attn, analysis.groups, {by_source(analysis, "q_mm").gid: np.array([2])})
    shapes = {n.name: sg.tensor(attn, n.input[1]).tolist() for n in attn.graph.node if n.op_type == "Reshape"}
    assert shapes == {
        "q_reshape": [1, 6, 3, 4],
        "k_reshape": [1, 6, 3, 4],
        "v_reshape": [1, 6, 3, 4],
        "merge_reshape": [1, 6, 12],
    }
    check(attn)


def test_removing_every_unit_of_a_group_is_refused():
    model = sg.ffn()
    analysis = analyze(model)
    with pytest.raises(ValueError, match="cannot remove 32 of 32"):
        apply_removal(model, analysis.groups, {by_source(analysis, "mm1").gid: np.arange(32)})


EXACT = {
    # producer rows and bias zero, read by a Gemm
    "gemm": (lambda: sg.mlp(dead=[1, 5, 9], dead_bias=0.0), "fc1", 3, mlp_feeds()),
    # MatMul columns and Add bias zero, read by a MatMul
    "matmul": (lambda: sg.ffn(dead=[0, 3, 31], dead_bias=0.0), "mm1", 3, None),
    # conv filters and bias zero, read by a 1x1 conv
    "conv-1x1": (lambda: sg.conv_chain(bn=False, dead=[2, 6], dead_bias=0.0, k2=1, pad2=0), "conv1", 2, None),
    # both concat branches have zero filters
    "concat": (lambda: sg.concat_branches(dead_a=[1], dead_b=[0, 4]), "conv_b", 2, None),
    # a whole attention head: q, k, v columns and biases zero (its context is 0)
    "attention-head": (lambda: sg.attention(dead_heads=[2]), "q_mm", 1, None),
    "attention-head-minus-one": (lambda: sg.attention(explicit=False, dead_heads=[0, 3]), "q_mm", 2, None),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_pass_removes_zero_channels_and_keeps_the_outputs(name: str):
    build, source, count, feeds = EXACT[name]
    model = build()
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    rec = record(result, source)
    assert (rec.removed, rec.dead) == (count, count)
    assert result.removed_units == result.dead_units
    assert result.params_after < result.params_before
    assert result.exact_max_diff is not None and result.exact_max_diff <= 1e-5
    check(model)
    assert max_diff(original, model, feeds or b.feeds(original, seed=4)) <= 1e-5


# ---------------------------------------------------------------------------------------
# 3. Dead channels with nonzero constants


def test_dead_rows_with_a_nonzero_bias_carry_relu_of_the_bias():
    model = sg.mlp(dead=[1, 5, 9])
    bias = sg.tensor(model, "fc1_B")
    analysis = analyze(model)
    values = propagate(analysis)
    relu = values["r1"]
    np.testing.assert_allclose(relu[[1, 5, 9]], np.maximum(bias[[1, 5, 9]], 0.0), rtol=1e-6)
    assert np.isnan(np.delete(relu, [1, 5, 9])).all()
    assert dead_units(analysis).units[by_source(analysis, "fc1").gid].tolist() == [1, 5, 9]


def test_dead_rows_with_a_nonzero_bias_are_removed_and_folded_into_the_next_gemm():
    model = sg.mlp(dead=[1, 5, 9])
    assert (np.maximum(sg.tensor(model, "fc1_B")[[1, 5, 9]], 0) > 0).any(), "the test needs a nonzero constant"
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert record(result, "fc1").dead == 3
    assert sg.tensor(model, "fc1_W").shape == (61, 16) and sg.tensor(model, "fc2_W").shape == (32, 61)
    assert not np.allclose(sg.tensor(model, "fc2_B"), sg.tensor(original, "fc2_B"))  # the constant went somewhere
    check(model)
    assert max_diff(original, model, mlp_feeds(rows=32)) <= 1e-5


def test_dead_channels_with_a_nonzero_constant_into_a_padded_conv_are_kept_with_a_note():
    # relu(0.8) = 0.8 at the border of conv2's input would be 0 after removal: not exact
    model = sg.conv_chain(bn=False, dead=[2, 6], dead_bias=0.8, k2=3, pad2=1)
    before = model.SerializeToString()
    result = remove_channels(model, StructureConfig(fold=False))
    rec = record(result, "conv1")
    assert rec.removed == 0
    assert "padded Conv" in rec.note and "2 constant" in rec.note
    assert model.SerializeToString() == before


@pytest.mark.parametrize("dead_bias", [0.0, -0.5], ids=["zero-bias", "negative-bias-relu-zero"])
def test_dead_channels_with_a_zero_constant_into_a_padded_conv_are_removed(dead_bias: float):
    model = sg.conv_chain(bn=False, dead=[2, 6], dead_bias=dead_bias, k2=3, pad2=1)
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert record(result, "conv1").dead == 2
    assert sg.tensor(model, "W2").shape == (6, 6, 3, 3)
    check(model)
    assert max_diff(original, model, b.feeds(original, seed=5)) <= 1e-5


def test_dead_channels_with_a_nonzero_constant_into_an_unpadded_conv_are_folded():
    model = sg.conv_chain(bn=False, dead=[2, 6], dead_bias=0.8, k2=3, pad2=0)
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert record(result, "conv1").dead == 2
    check(model)
    assert max_diff(original, model, b.feeds(original, seed=6)) <= 1e-5


def test_bn_gamma_zero_after_a_live_conv_is_removed_exactly():
    model = sg.conv_chain(gamma_zero=[1, 4], k2=1, pad2=0)
    assert sg.tensor(model, "W1")[[1, 4]].any(), "conv1's filters are live"
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    rec = record(result, "conv1")
    assert (rec.removed, rec.dead) == (2, 2)
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]  # folded afterwards
    assert sg.tensor(model, "W2").shape == (6, 6, 1, 1)
    check(model)
    assert max_diff(original, model, b.feeds(original, seed=7)) <= 1e-5


def test_bn_gamma_zero_into_a_padded_conv_is_kept():
    model = sg.conv_chain(gamma_zero=[1, 4], k2=3, pad2=1)  # relu(beta) > 0
    result = remove_channels(model, StructureConfig())
    rec = record(result, "conv1")
    assert rec.removed == 0 and "padded Conv" in rec.note


def test_residual_join_with_only_one_dead_branch_is_not_removed():
    model = sg.residual_add(dead_a=[2, 3])
    analysis = analyze(model)
    assert np.isnan(propagate(analysis)["s"][[2, 3]]).all()  # the live branch makes the sum vary
    result = remove_channels(model, StructureConfig())
    assert result.removed_units == 0
    assert sg.tensor(model, "Wa").shape == (8, 4, 3, 3)


def test_residual_join_with_both_branches_dead_is_removed():
    model = sg.residual_add(dead_a=[2, 3], dead_b=[3])
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert (record(result, "conv_a").dead, record(result, "conv_b").dead) == (1, 1)  # channel 3 only
    assert sg.tensor(model, "Wa").shape == (7, 4, 3, 3) and sg.tensor(model, "Wb").shape == (7, 4, 1, 1)
    check(model)
    assert max_diff(original, model, b.feeds(original, seed=8)) <= 1e-5


def test_dead_channel_through_flatten_folds_its_block_into_the_gemm():
    model = sg.flatten_gemm(dead=[2], dead_bias=0.5)
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert record(result, "conv").dead == 1
    assert sg.tensor(model, "W2").shape == (48, 10)
    check(model)
    assert max_diff(original, model, b.feeds(original, seed=9)) <= 1e-5


def _set_attrs(model: ModelProto, node_name: str, **attrs: float) -> ModelProto:
    node = next(n for n in model.graph.node if n.name == node_name)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return model


@pytest.mark.parametrize(
    ("node_name", "attrs"),
    [("fc2", {"alpha": 2.0}), ("fc2", {"beta": 0.5}), ("fc1", {"beta": 0.5})],
    ids=["consumer-alpha", "consumer-beta", "producer-beta"],
)
def test_dead_rows_fold_exactly_with_gemm_alpha_and_beta(node_name: str, attrs: dict):
    model = _set_attrs(sg.mlp(dead=[1, 5]), node_name, **attrs)
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert record(result, "fc1").dead == 2
    assert max_diff(original, model, mlp_feeds()) <= 1e-5


def test_broadcast_bias_expanded_by_a_fold_is_sliced_with_its_group():
    model = sg.mlp(dead=[1, 5])  # fc1 rows dead with nonzero bias: folded into fc2's bias
    for t in model.graph.initializer:
        if t.name == "fc2_W":  # fc2 rows 3 and 7 dead too (constant relu(0) = 0)
            w = numpy_helper.to_array(t).copy()
            w[[3, 7]] = 0.0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
        if t.name == "fc2_B":
            t.CopyFrom(numpy_helper.from_array(np.zeros(1, np.float32), t.name))
    original = copy(model)
    result = remove_channels(model, StructureConfig(), check=False)
    assert (record(result, "fc1").dead, record(result, "fc2").dead) == (2, 2)
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    assert sg.tensor(model, fc2.input[2]).shape == (30,)  # grown to a full bias, then sliced with its group
    check(model)
    assert max_diff(original, model, mlp_feeds()) <= 1e-5


# ---------------------------------------------------------------------------------------
# 4. Structured removal


def test_amount_removes_that_fraction_of_every_prunable_group():
    model = sg.mlp()
    result = remove_channels(model, StructureConfig(amount=0.5))
    assert [(g.name, g.units, g.removed) for g in result.groups] == [("fc1", 64, 32), ("fc2", 32, 16), ("fc3", 10, 0)]
    assert record(result, "fc3").blocked is not None
    assert sg.tensor(model, "fc1_W").shape == (32, 16)
    assert sg.tensor(model, "fc2_W").shape == (16, 32)
    assert sg.tensor(model, "fc3_W").shape == (10, 16)
    assert result.params_after == sum(int(np.prod(t.dims)) for t in model.graph.initializer) < result.params_before
    check(model)
    assert run(model, mlp_feeds())[0].shape == (8, 10)


def test_l2_importance_removes_the_weakest_units():
    # three weak neurons: small input rows in fc1 and small columns in fc2 (every member of the group)
    model = zero_inputs(zero_inputs(sg.mlp(), "fc1_W", 0, np.array([3, 11, 40])), "fc2_W", 1, np.array([3, 11, 40]))
    for t in model.graph.initializer:
        if t.name in ("fc1_W", "fc2_W"):
            w = numpy_helper.to_array(t).copy()
            w[w == 0] = 1e-3
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    w1 = sg.tensor(model, "fc1_W")
    result = remove_channels(model, StructureConfig(amount=3 / 64 + 1e-3, importance="l2", round_to=1))
    assert record(result, "fc1").removed == 3
    np.testing.assert_array_equal(sg.tensor(model, "fc1_W"), np.delete(w1, [3, 11, 40], axis=0))


def test_round_to_keeps_a_multiple():
    model = sg.mlp()
    result = remove_channels(model, StructureConfig(amount=0.3, round_to=8))
    kept = {g.name: g.kept for g in result.groups}
    # 0.3 of 64 leaves 44.8, 0.3 of 32 leaves 22.4: kept counts round up to multiples of 8
    assert (kept["fc1"], kept["fc2"]) == (48, 24)
    assert sg.tensor(model, "fc1_W").shape == (48, 16) and sg.tensor(model, "fc2_W").shape == (24, 48)
    check(model)


def test_round_to_is_honoured_when_dead_units_are_removed_too():
    model = sg.mlp(dead=list(range(10)), dead_bias=0.0)
    result = remove_channels(model, StructureConfig(amount=0.2, round_to=8))
    assert record(result, "fc1").dead == 10
    assert record(result, "fc1").kept % 8 == 0


def test_max_fraction_caps_every_group():
    model = sg.mlp()
    result = remove_channels(model, StructureConfig(amount=0.8, max_fraction=0.5))
    assert record(result, "fc1").removed == 32 and record(result, "fc2").removed == 16
    uncapped = remove_channels(sg.mlp(), StructureConfig(amount=0.8))
    assert record(uncapped, "fc1").removed > 32


def test_target_flops_keeps_at_most_that_fraction_of_the_macs():
    model = sg.mlp()
    result = remove_channels(model, StructureConfig(target_flops=0.5))
    assert result.macs_before and result.macs_after
    assert result.macs_after / result.macs_before <= 0.55
    assert result.removed_units > 0
    check(model)
    assert run(model, mlp_feeds())[0].shape == (8, 10)


def test_target_flops_lands_near_the_target():
    result = remove_channels(sg.mlp(), StructureConfig(target_flops=0.5))
    assert 0.4 <= result.macs_after / result.macs_before <= 0.55


def test_calibrated_refit_lowers_every_consumers_error():
    model = sg.mlp()
    original = copy(model)
    rng = np.random.default_rng(11)
    specs = runtime.input_specs(runtime.session(model.SerializeToString()))
    data = open_data({"X": rng.standard_normal((96, 16)).astype(np.float32)}, specs=specs, samples=64)
    result = remove_channels(model, StructureConfig(amount=0.5), calibration=data)
    assert [name for name, _, _ in result.refits] == ["fc2", "fc3"]
    for _name, before, after in result.refits:
        assert 0.0 <= after <= before
    assert any(after < 0.5 * before for _, before, after in result.refits)
    check(model)
    # the refit model is closer to the original than the same removal without refit
    plain = copy(original)
    remove_channels(plain, StructureConfig(amount=0.5, refit=False), calibration=data)
    test = {"X": rng.standard_normal((256, 16)).astype(np.float32)}
    (want,) = run(original, test)
    err_refit = float(np.mean((run(model, test)[0] - want) ** 2))
    err_plain = float(np.mean((run(plain, test)[0] - want) ** 2))
    assert err_refit < err_plain


def test_structured_options_that_cannot_work_are_refused():
    with pytest.raises(OptionError, match="not both"):
        StructureConfig(amount=0.5, target_flops=0.5)
    with pytest.raises(OptionError, match="calibration"):
        remove_channels(sg.mlp(), StructureConfig(amount=0.5, importance="error"))


# ---------------------------------------------------------------------------------------
# 5. Fixtures


def _dead_lower_bounds(name: str) -> dict[str, int]:
    """Units the exact pass must remove per group source (from the manifest): zero output
    channels read by Gemm/MatMul/1x1 convs, dead heads, and the dead channels whose constant
    is zero after the activation (those pass the 3x3 depthwise conv)."""
    entry = MANIFEST[name]
    zero = {layer["node"]: layer["zero"] for layer in entry["zero_output_channels"]}
    if name == "mlp_masked":
        return {"/fc1/Gemm": zero["/fc1/Gemm"], "/fc2/Gemm": zero["/fc2/Gemm"]}
    if name == "transformer_masked":
        bounds = {f"/layers.{k}/ff1/MatMul": zero[f"/layers.{k}/ff1/MatMul"] for k in (0, 1)}
        bounds.update({f"/layers.{k}/attn/q_proj/MatMul": 1 for k in range(len(entry["dead_heads"]))})
        return bounds
    constants = {c["layer"]: c["dead"] - c["nonzero_after_activation"] for c in entry["dead_channel_constants"]}
    return {
        "/pw/pw.0/Conv": zero["/pw/pw.0/Conv"],
        "/fc1/Gemm": zero["/fc1/Gemm"],
        "/inception/b1/b1.0/Conv": constants["inception.b1.0"],
        "/inception/b3/b3.0/Conv": constants["inception.b3.0"],
    }


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_exact_pass_on_masked_fixtures_removes_dead_units_and_keeps_outputs(name: str):
    entry = MANIFEST[name]
    model = onnx.load(str(MASKED / entry["file"]))
    original = copy(model)
    result = remove_channels(model, StructureConfig())
    assert result.removed_units == result.dead_units > 0
    removed = {g.name: g.dead for g in result.groups}
    for source, bound in _dead_lower_bounds(name).items():
        assert removed[source] >= bound, (source, removed[source], bound)
    assert result.params_after < result.params_before
    check(model)
    feeds = {"input": np.load(MASKED / entry["test_data"])["input"][:200]}
    assert max_diff(original, model, feeds) <= 1e-5


def test_masked_transformer_loses_its_dead_heads_whole():
    model = onnx.load(str(MASKED / "transformer_masked.onnx"))
    result = remove_channels(model, StructureConfig())
    hd = MANIFEST["transformer_masked"]["head_dim"]
    for k in (0, 1):
        rec = record(result, f"/layers.{k}/attn/q_proj/MatMul")
        assert (rec.units, rec.unit_channels, rec.removed) == (4, hd, 1)
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert sg.tensor(model, f"layers.{k}.attn.{proj}.weight_t").shape == (64, 3 * hd)
        assert sg.tensor(model, f"layers.{k}.attn.out_proj.weight_t").shape == (3 * hd, 64)


FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_exact_pass_on_unmasked_fixtures_removes_nothing(name: str):
    path = FIXTURES / f"{name}.onnx"
    model = onnx.load(str(path))
    before = model.SerializeToString()
    # the light pass (what follows unstructured pruning) leaves the graph as it was
    light = remove_channels(model, after_weights(StructureConfig()))
    assert light.removed_units == 0 and not light.changed
    assert model.SerializeToString() == before
    # the default pass folds (BN, constants) but removes nothing and keeps the outputs
    original = onnx.load(str(path))
    result = remove_channels(model, StructureConfig())
    assert result.removed_units == 0 and result.dead_units == 0
    check(model)
    data = np.load(FIXTURES / f"{name}.test.npz")
    # one-input fixtures: key "input", a batch of 200; stateful_mnist1d: complete feeds, the first
    feeds = {"input": data["input"][:200]} if "input" in data.files else {k: np.asarray(data[k][0]) for k in data.files}
    assert max_diff(original, model, feeds) <= 1e-5


# ---------------------------------------------------------------------------------------
# 6. Recurrent layers


def test_lstm_hidden_units_are_a_group_and_can_go():
    """lstm_mnist1d: the LSTM's hidden units (gate blocks of W, R, B; R's columns; the zero
    initial state of a computed shape; hidden_size) form one group read by the head Gemm."""
    path = FIXTURES / "lstm_mnist1d.onnx"
    model = onnx.load(str(path))
    analysis = analyze(model)
    (group,) = analysis.prunable
    assert group.sources == ["/lstm/LSTM"] and group.n == 64
    assert sorted(group.sinks) == ["/fc/Gemm", "/lstm/LSTM"]  # R reads the layer's own state
    gate_rows = sorted(m.offset for m in group.members if m.tensor == "lstm.W")
    assert gate_rows == [0, 64, 128, 192]
    assert sorted(m.offset for m in group.members if m.tensor == "lstm.B") == [64 * k for k in range(8)]
    result = remove_channels(model, StructureConfig(amount=0.25))
    assert record(result, "/lstm/LSTM").removed == 16
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert next(a.i for a in lstm.attribute if a.name == "hidden_size") == 48
    assert sg.tensor(model, "lstm.W").shape == (1, 192, 1) and sg.tensor(model, "lstm.R").shape == (1, 192, 48)
    check(model)
    x = np.load(FIXTURES / "lstm_mnist1d.test.npz")["input"][:16]
    (out,) = run(model, {"input": x})
    assert out.shape == (16, 10) and np.isfinite(out).all()


def test_lstm_refit_of_its_own_recurrent_weights_recovers_accuracy():
    """Removing hidden units changes the state R reads: refitting R (and the head) on the
    captured states recovers most of the accuracy that plain removal loses."""
    path = FIXTURES / "lstm_mnist1d.onnx"
    x = np.load(FIXTURES / "lstm_mnist1d.test.npz")["input"]
    y = np.load(FIXTURES / "lstm_mnist1d.test_labels.npy")
    specs = runtime.input_specs(runtime.session(str(path)))
    accuracy = {}
    for refit in (False, True):
        model = onnx.load(str(path))
        data = open_data(str(FIXTURES / "lstm_mnist1d.calib.npz"), specs=specs, samples=256)
        result = remove_channels(model, StructureConfig(amount=0.25, refit=refit), calibration=data)
        assert record(result, "/lstm/LSTM").removed == 16
        if refit:
            assert {name for name, _, _ in result.refits} == {"/lstm/LSTM", "/fc/Gemm"}
            assert all(after < 0.1 * before for _, before, after in result.refits)
        check(model)
        (out,) = run(model, {"input": x})
        accuracy[refit] = float((out.argmax(1) == y).mean())
    assert accuracy[True] > 0.85 and accuracy[True] > accuracy[False] + 0.3
