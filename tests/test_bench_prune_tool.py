"""``tools/bench_prune.py --validated-floor``: case (h) runs only when asked, and its script
writes the model and runs it in onnxruntime."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
