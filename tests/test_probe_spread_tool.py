"""``tools/probe_spread.py``: it records every probe on all its samples, with the layers' error
curves, and plays the probe's rounds back on them (how ``PROBE_REGRET`` was chosen)."""

from __future__ import annotations

from pathlib import Path

from tool_scripts import load_tool

from onnxprune.passes import curve_allocation

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def _tool():
    return load_tool("probe_spread", "probe_spread_tool")


def test_the_probe_spread_tool_records_the_curves_and_plays_the_rounds_back(tmp_path: Path) -> None:
    tool = _tool()
    before = curve_allocation.PROBE_REL_SE, curve_allocation.PROBE_SCREEN
    records = tool.record(
        [
            str(FIXTURES / "lstm_mnist1d.onnx"),
            str(tmp_path / "out.onnx"),
            "--sparsity",
            "0.5",
            "--method",
            "sparsegpt",
            "--calibration",
            str(FIXTURES / "lstm_mnist1d.calib.npz"),
        ],
        0.0,
    )
    assert before == (curve_allocation.PROBE_REL_SE, curve_allocation.PROBE_SCREEN)  # restored
    layers = {key: r for key, r in records.items() if not key.startswith("__")}
    assert layers and records["__allocation__"]["t"] == 0.5
    for r in layers.values():
        assert len(r["moved"]) == len(r["counts"])  # every batch ran: no screen, no early stop
        assert r["curve"]["levels"][0] == 0.0 and r["curve"]["numel"] > 0
    rows = tool.analyse_rounds(records, 8, 4)
    table = [row for row in rows if row.startswith("| ") and not row.startswith("| PROBE")]
    assert len(table) == 1 + len(tool.REGRETS)
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in table]
    assert cells[0][0].startswith("no screen") and cells[0][2].endswith("(1.00)") and cells[0][4] == "0"
    ruled = int(cells[0][2].split()[0])
    assert all(int(c[2].split()[0]) <= ruled for c in cells[1:])  # the rounds never run more than the rule
    assert "(no error curves" in tool.analyse_rounds({"x": {"moved": [1.0], "counts": [1]}}, 8, 4)[0]
