"""``tools/probe_spread.py``: it records every probe on all its samples, with the layers' error
curves, and plays the probe's rounds back on them (how ``PROBE_REGRET`` was chosen) and the
layers kept dense unprobed (how ``UNPROBED_TOTAL`` was chosen)."""

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
    before = curve_allocation.PROBE_REL_SE, curve_allocation.PROBE_SCREEN, curve_allocation.UNPROBED_TOTAL
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
    assert before == (curve_allocation.PROBE_REL_SE, curve_allocation.PROBE_SCREEN, curve_allocation.UNPROBED_TOTAL)
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
    assert all(0.0 < r["tail"] <= 1.0 for r in layers.values())  # every layer probed, with its tail's share
    bare = {key: {k: v for k, v in r.items() if k != "tail"} for key, r in records.items()}
    assert "(no tails' shares" in tool.analyse_unprobed(bare)[0]


def test_the_probe_spread_tool_plays_the_unprobed_layers_back(tmp_path: Path, monkeypatch) -> None:
    """On the CNN fixture (two 3×3 layers of 11.6 % each run most of the model): no cap keeps none
    dense; a cap of 15 % keeps one, saves some of the probes' time and cannot lower the
    predicted output change of the allocation from every sample."""
    tool = _tool()
    model = FIXTURES / "cnn_digits.onnx"
    args = [str(model), str(tmp_path / "out.onnx"), "--sparsity", "0.5", "--method", "sparsegpt", "-q"]
    records = tool.record([*args, "--calibration", str(FIXTURES / "cnn_digits.calib.npz")], 0.0)
    monkeypatch.setattr(tool, "UNPROBED_CAPS", (0.0, 0.15))
    rows = [row for row in tool.analyse_unprobed(records) if row.startswith("| 0")]
    none, one = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    assert none[1:4] == ["0", "0.00%", "0%"] and none[5] == "+0.00%"
    assert one[1] == "1" and one[2] == "11.64%" and one[3] != "0%" and float(one[5].rstrip("%")) >= 0
