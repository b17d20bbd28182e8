"""The dead-channel watch looks only where a zero slice can make a channel constant: along
the output-channel axis of each weight, as the op table places it."""

from __future__ import annotations

import builders
import numpy as np
import pytest
from onnx import helper

from onnxprune.passes.deadwatch import DeadWatch, channel_axes, has_zero_slice


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: builders.conv(), (0,)),
        (lambda: builders.conv(as_constant=True), (0,)),
        (lambda: builders.depthwise_conv(), (0,)),
        (lambda: builders.conv_transpose(), (1,)),
        (lambda: builders.gemm(trans_b=1), (0,)),
        (lambda: builders.gemm(trans_b=0), (1,)),
        (lambda: builders.matmul_right(), (1,)),
        (lambda: builders.matmul_left(), (0,)),
        (lambda: builders.transpose_matmul(), None),  # read through a Transpose: both end axes
    ],
)
def test_output_channel_axes_come_from_the_op_table(build, expected):
    axes = channel_axes(build())
    assert axes["W"] == expected
    assert "B" not in axes and "C" not in axes  # biases kill no channel


def test_grouped_conv_transpose_looks_inside_each_group():
    m = builders.conv_transpose()
    m.graph.node[0].attribute.append(helper.make_attribute("group", 2))
    assert channel_axes(m)["W"] == ("groups", 2, 1)
    w = np.ones((4, 8, 3, 3))
    w[2:, 5] = 0  # output channel 5 of group 1: no full slice along either end axis is zero
    assert not has_zero_slice(w) and has_zero_slice(w, ("groups", 2, 1))
    w = np.ones((4, 8, 3, 3))
    w[:1, 5] = 0  # half of group 0's channel 5: not dead
    assert not has_zero_slice(w, ("groups", 2, 1))


def test_a_zero_reduction_row_does_not_fire_an_output_column_does():
    m = builders.matmul_right()  # W[32, 16]: rows reduce, columns are output channels
    w = np.ones((32, 16), np.float32).view(np.uint32)
    row = w.copy()
    row[3] = 0
    col = w.copy()
    col[:, 7] = 0
    for values, fires in ((row, False), (col, True)):
        watch = DeadWatch(m)
        wrapped = watch.wrap({"W": lambda proto, v=values: memoryview(v.tobytes())})
        wrapped["W"](next(t for t in m.graph.initializer if t.name == "W"))
        assert bool(watch.fired) is fires
    # without the model the watch knows no layout and looks at both end axes
    assert has_zero_slice(row) and has_zero_slice(col)


def test_an_embedding_fires_on_a_feature_column_not_on_a_token_row():
    table = builders.init("E", np.ones((50, 8), np.float32))
    nodes = [builders.node("Gather", ["E", "ids"], ["Y"], "embed", axis=0)]
    m = builders.model(
        nodes,
        [builders.value("ids", (2, 3), builders.INT64)],
        [builders.value("Y", (2, 3, 8))],
        [table],
    )
    assert channel_axes(m)["E"] == (1,)
    e = np.ones((50, 8))
    e[7] = 0  # an unused token: no channel
    assert not has_zero_slice(e, (1,))
    e[:, 2] = 0
    assert has_zero_slice(e, (1,))
