"""``tools/ab_runs.py``: a worktree's CLI is the one that runs, and the summary's medians, ratio
and same-bytes verdicts follow the runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tool_scripts import load_tool

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    return load_tool("ab_runs")


def test_a_run_uses_the_cli_of_the_tree_it_names(tmp_path: Path) -> None:
    tool = _tool()
    ran = subprocess.run([sys.executable, "-c", tool.RUN, str(ROOT), "--help"], capture_output=True, text=True)
    assert ran.returncode == 0 and "prune" in ran.stdout
    # a tree without the package: the check refuses to run another one
    other = subprocess.run([sys.executable, "-c", tool.RUN, str(tmp_path), "--help"], capture_output=True, text=True)
    assert other.returncode != 0


def _run(seconds: float, digest: str, **phases: float) -> dict:
    return {"seconds": seconds, "peak_mb": 100, "phases": phases, "rc": 0, "sha256": digest}


def test_the_summary_takes_medians_and_compares_the_bytes() -> None:
    tool = _tool()
    runs = {
        "base": [_run(10.0, "a", probe=4.0), _run(14.0, "a", probe=6.0)],
        "head": [_run(9.0, "a", probe=3.0), _run(7.0, "a", probe=2.0)],
    }
    entry = tool.summarize(runs)
    assert entry["base"]["median_s"] == 12.0 and entry["head"]["median_s"] == 8.0
    assert entry["ratio"] == round(8.0 / 12.0, 3)
    assert entry["base"]["phases"] == {"probe": 5.0} and entry["head"]["phases"] == {"probe": 2.5}
    assert entry["same_bytes"] and entry["base"]["same_bytes"] and entry["head"]["same_bytes"]
    runs["head"][1]["sha256"] = "b"
    entry = tool.summarize(runs)
    assert not entry["same_bytes"] and entry["base"]["same_bytes"] and not entry["head"]["same_bytes"]


def test_the_machine_shares_are_those_of_the_counters_between_two_reads() -> None:
    tool = _tool()
    # user nice system idle iowait irq softirq steal
    before = [100, 0, 10, 50, 0, 0, 0, 40]
    after = [160, 0, 20, 80, 10, 0, 0, 70]  # 140 ticks: 30 stolen, 40 idle or waiting
    assert tool.cpu_shares(before, after) == {
        "steal_pct": round(100 * 30 / 140, 1),
        "idle_pct": round(100 * 40 / 140, 1),
    }
    assert tool.cpu_shares(None, after) == {} and tool.cpu_shares(before, before) == {}
    now = tool.cpu_times()
    assert now is None or (len(now) == 8 and all(v >= 0 for v in now))
