"""``tools/check_ocr_targets.py --against-full``: issue 16's verdicts follow the runs' figures
(the sampled capture's quality against the full capture's, its wall time and peak RSS)."""

from __future__ import annotations

from tool_scripts import load_tool


def _tool():
    return load_tool("check_ocr_targets")


def _run(seconds: float, peak: float, **metrics: float) -> dict:
    return {"seconds": seconds, "peak_rss_bytes": int(peak), "returncode": 0, "metrics": metrics}


def _verdicts(rows: list[dict]) -> dict[tuple[str, str], bool]:
    return {(row["run"], row["target"]): row["pass"] for row in rows}


def test_a_sampled_run_passes_within_the_slack_of_the_full_capture_and_fails_past_it(capsys) -> None:
    tool = _tool()
    runs = {
        "det": _run(66.0, 1.3e9, iou_mean=0.9880),
        "det_full": _run(120.0, 1.5e9, iou_mean=0.9929),  # 0.0049 better: within 0.005
        "rec": _run(65.0, 0.97e9, cer_pruned=0.0347),
        "rec_full": _run(88.0, 1.1e9, cer_pruned=0.0327),  # 0.20 points: at the limit
    }
    found = _verdicts(tool.against_full(runs, ["det", "rec"]))
    assert all(found.values()) and len(found) == 5
    assert "| rec | peak RSS | 0.97 GB" in capsys.readouterr().out
    runs["det_full"]["metrics"]["iou_mean"] = 0.9931  # 0.0051 below the full capture
    runs["rec"]["metrics"]["cer_pruned"] = 0.0348  # 0.21 points above
    found = _verdicts(tool.against_full(runs, ["det", "rec"]))
    assert not found[("det", "text-map IoU vs the full capture")]
    assert not found[("rec", "CER vs the full capture")]
    assert found[("det", "wall time")] and found[("rec", "peak RSS")]


def test_a_sampled_run_that_does_better_than_the_full_capture_passes() -> None:
    tool = _tool()
    runs = {"rec": _run(65.0, 1e9, cer_pruned=0.0290), "rec_full": _run(88.0, 1e9, cer_pruned=0.0341)}
    assert all(row["pass"] for row in tool.against_full(runs, ["rec"]))


def test_time_memory_and_failed_runs_are_judged() -> None:
    tool = _tool()
    runs = {
        "rec": _run(90.5, 1.6e9, cer_pruned=0.03),
        "rec_full": {"seconds": 10.0, "peak_rss_bytes": 1, "returncode": 1},  # no metrics: failed
    }
    found = _verdicts(tool.against_full(runs, ["rec"]))
    assert found == {("rec", "CER vs the full capture"): False, ("rec", "wall time"): False, ("rec", "peak RSS"): False}
    runs["rec"]["returncode"] = 1  # a failed sampled run never passes on time, however quick
    runs["rec"]["seconds"] = 1.0
    assert not _verdicts(tool.against_full(runs, ["rec"]))[("rec", "wall time")]
