"""The benchmarks' floors: ``tools/bench_prune.py --validated-floor`` (case (h) runs only when
asked, and its script writes the model and runs it in onnxruntime) and ``tools/bench_large.py``'s
oracle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from tool_scripts import load_tool

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_the_validated_floor_is_a_case_only_when_asked(tmp_path: Path) -> None:
    tool = load_tool("bench_prune")
    model = FIXTURES / "cnn_digits.onnx"
    assert "h" not in tool.case_commands(model, tmp_path)
    commands = tool.case_commands(model, tmp_path, validated_floor=True)
    cmd, out = commands["h"]
    ran = subprocess.run(cmd, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert out.stat().st_size > 0.9 * model.stat().st_size  # (a)'s save, then the run of that file


def test_each_repetition_runs_every_case_once_in_a_seeded_order_that_varies() -> None:
    tool = load_tool("bench_prune")
    cases = ["a", "b", "c", "d", "e"]
    orders = tool.interleaved_orders(cases, 30)
    assert all(sorted(order) == cases for order in orders)
    assert orders == tool.interleaved_orders(cases, 30)  # the same orders every run
    assert orders != tool.interleaved_orders(cases, 30, seed=1)
    before_c = {order[order.index("c") - 1] for order in orders if order.index("c") > 0}
    assert len(before_c) >= 3  # no case always follows the same one (a rotation would give one)


def test_the_oracle_floor_writes_the_weights_zeroed_below_its_cut(tmp_path: Path) -> None:
    """``tools/bench_large.py``'s ``oracle`` case copies the model and writes the data file with
    every weight of magnitude at most 0.01 zeroed, the others as they were."""
    tool = load_tool("bench_large")
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    model = source / tool.MODEL_NAME
    model.write_bytes(b"the model's graph")
    weights = np.random.default_rng(0).normal(0.0, 0.02, (1 << 22) + 1001).astype(np.float32)  # two chunks
    weights[:4] = (0.01, -0.01, np.nextafter(np.float32(0.01), np.float32(1)), -0.0)
    (source / tool.DATA_NAME).write_bytes(weights.tobytes())
    ran = subprocess.run(tool.commands(model, out)["oracle"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert (out / tool.MODEL_NAME).read_bytes() == b"the model's graph"
    written = np.fromfile(out / tool.DATA_NAME, dtype=np.float32)
    expected = np.where(np.abs(weights) > np.float32(0.01), weights, np.float32(0))
    assert written.tobytes() == expected.tobytes()
    assert 0.3 < np.mean(written == 0) < 0.5  # the cut zeroes some and keeps some
