"""Interleaved A/B timing of two commits on issue 16's calibrated workloads, through the CLI.

    .venv/bin/python tools/ab_runs.py BASE [HEAD] [--workload det rec minilm] [--repeats 2]
        [--metrics] [--json out.json] [--prune-args '--workers 2']

Why
    This machine is shared and its speed drifts: the same PP-OCRv4 det run took 89.9 s and
    112.9 s within half an hour. A change is judged by runs of both commits side by side, the
    order alternating, never by comparing with a figure from another hour.

What it does
    1. ``BASE`` and ``HEAD`` (git revisions; ``HEAD`` by default) are checked out in temporary
       git worktrees and byte-compiled. The working tree is never run, so it can be edited while
       this runs.
    2. For each repeat and workload, the two commits run back to back, ``BASE`` first on even
       repeats and ``HEAD`` first on odd ones. Each run is the CLI of that worktree
       (``python -c`` with the worktree first on ``sys.path``; it checks that the package
       imported is the worktree's) in a child process reaped with ``os.wait4``
       (``bench_calibrate.measure``: wall time, the child's own peak RSS), with ``-v``, whose
       log gives the phases (``bench_calibrate.PHASES``).
    3. Workloads (data prepared by ``tools/check_ocr_targets.py --prepare-only --calib 32 --eval 128
       --det-calib 32 --det-eval 64 --rec-width 1280`` and ``tools/bench_calibrate.py
       --prepare-only``, in ``--ocr-dir`` and ``--minilm-dir``):
         * det: PP-OCRv4 det, ``--sparsity 0.5 --method sparsegpt``, 32 pages of 640×640;
         * rec: PP-OCRv4 rec, ``--sparsity 0.7 --method sparsegpt``, 32 lines of 48×1280;
         * minilm: all-MiniLM-L6-v2, ``--sparsity 0.5 --method sparsegpt``, 128 sentences.
    4. Printed: every run's wall time, peak memory and phases, and the machine's CPU time over the
       run from ``/proc/stat`` (Linux): the share *stolen* by the hypervisor for other guests and
       the share idle, both of all cores (a run here lost 20–40 % to steal on a busy day, which
       no comparison across hours can undo; side by side, both commits pay it); per commit the medians; the ratio
       ``HEAD / BASE`` of the medians; whether each commit wrote the same bytes in every repeat
       and whether the two commits wrote the same bytes. With ``--metrics``, after every timed
       run (the parent keeps away from onnxruntime until then), each commit's last output is
       scored on the held-out data: det's text-map IoU against the dense model
       (``check_ocr_targets.det_metrics``), rec's character error rate
       (``check_calibrated_ocr.character_error_rates``), MiniLM's sentence-embedding cosine to the
       dense model (``onnxprune.evaluate``, as ``bench_calibrate.fidelity_runs`` reads it).

Exit status 0 when every run succeeded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_calibrate import ROOT, fidelity_runs, measure, median, phases

RUN = (
    "import sys; tree = sys.argv[1]; sys.path.insert(0, tree); import onnxprune; "
    "assert onnxprune.__file__.startswith(tree), onnxprune.__file__; "
    "sys.argv = ['onnxprune', *sys.argv[2:]]; from onnxprune.cli import main; main()"
)
DET, REC = "ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"
DET_SHAPE, REC_SHAPE = "x:1x3x640x640", "x:1x3x48x1280"


def workloads(ocr: Path, minilm: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each workload's dense model and the prune arguments after ``IN OUT``."""

    def sparsegpt(sparsity: str, data: Path, *more: str) -> list[str]:
        return ["--sparsity", sparsity, "--method", "sparsegpt", "--calibration", str(data), *more]

    return {
        "det": (
            ocr / DET,
            sparsegpt("0.5", ocr / "det_calib_32_640.npz", "--samples", "32", "--input-shape", DET_SHAPE),
        ),
        "rec": (
            ocr / REC,
            sparsegpt("0.7", ocr / "rec_calib_32_w1280.npz", "--samples", "32", "--input-shape", REC_SHAPE),
        ),
        "minilm": (minilm / "minilm.onnx", sparsegpt("0.5", minilm / "calib.npz")),
    }


def worktree(rev: str, folder: Path) -> tuple[Path, str]:
    """``rev`` checked out (detached) in ``folder``, byte-compiled; its commit."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True, text=True)
    sha = commit.stdout.strip()
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(folder), sha], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder / "onnxprune")], check=True)
    return folder, sha[:7]


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``'s ``cpu`` line, in clock ticks: user, nice,
    system, idle, iowait, irq, softirq, steal), or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return [int(v) for v in fields[1:9]] if fields and fields[0] == "cpu" and len(fields) >= 9 else None


def cpu_shares(before: list[int] | None, after: list[int] | None) -> dict[str, float]:
    """The shares of all cores' time between two :func:`cpu_times` that were stolen and idle (%)."""
    if before is None or after is None:
        return {}
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    if total <= 0:
        return {}
    return {"steal_pct": round(100 * delta[7] / total, 1), "idle_pct": round(100 * (delta[3] + delta[4]) / total, 1)}


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def scores(name: str, dense: Path, outputs: dict[str, Path], ocr: Path, minilm: Path) -> dict[str, Any]:
    """The held-out metric of each commit's output (module docstring)."""

    if name == "det":
        from check_ocr_targets import det_metrics

        boxes = json.loads((ocr / "det_eval_64_640.json").read_text())
        return {
            side: det_metrics(dense, out, ocr / "det_eval_64_640.npz", boxes)["iou_mean"]
            for side, out in outputs.items()
        }
    if name == "rec":
        from check_calibrated_ocr import character_error_rates

        truth = (ocr / "rec_eval_128_w1280.txt").read_text(encoding="utf-8").splitlines()
        return character_error_rates(outputs, ocr / "rec_eval_128_w1280.npz", truth)
    table = fidelity_runs(dense, outputs, minilm / "eval.npz")  # onnxprune.evaluate against the dense model
    return {side: table[side]["sentence_embedding"]["cosine"] for side in outputs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare against (a git revision)")
    parser.add_argument("head", nargs="?", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--workload", nargs="+", choices=("det", "rec", "minilm"), default=["det", "rec", "minilm"])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each commit per workload (default 2)")
    parser.add_argument("--metrics", action="store_true", help="score each commit's output on held-out data")
    parser.add_argument("--ocr-dir", type=Path, default=Path("/tmp/onnxprune-ocr-targets"))
    parser.add_argument("--minilm-dir", type=Path, default=Path("/tmp/minilm"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument(
        "--prune-args",
        default="",
        help="more prune options for every run, one string (e.g. --prune-args='--workers 2')",
    )
    args = parser.parse_args()
    try:
        more = shlex.split(args.prune_args)
    except ValueError as exc:  # an unclosed quote
        parser.error(f"--prune-args: {exc}")
    jobs = workloads(args.ocr_dir.resolve(), args.minilm_dir.resolve())
    missing = [str(jobs[w][0]) for w in args.workload if not jobs[w][0].exists()]
    if missing:
        print(f"missing: {', '.join(missing)}; prepare the data first (module docstring)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"workloads": {}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="ab_runs.") as scratch:
        folder = Path(scratch)
        trees = {}
        try:
            for side, rev in (("base", args.base), ("head", args.head)):
                trees[side] = worktree(rev, folder / side)
            report["commits"] = {side: sha for side, (_, sha) in trees.items()}
            for name in args.workload:
                dense, extra = jobs[name]
                runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
                for repeat in range(args.repeats):
                    for side in ("base", "head") if repeat % 2 == 0 else ("head", "base"):
                        tree, sha = trees[side]
                        out = folder / f"{name}.{side}.onnx"
                        cmd = [sys.executable, "-c", RUN, str(tree), "prune", str(dense), str(out), *extra, *more, "-v"]
                        before = cpu_times()
                        done = measure(cmd, timeout_s=args.timeout)
                        cpu = cpu_shares(before, cpu_times())
                        run = {
                            "seconds": round(done.seconds, 1),
                            "peak_mb": round(done.peak_rss_bytes / 1e6),
                            "phases": phases(done.stderr + done.stdout),
                            "rc": done.returncode,
                            "sha256": digest(out),
                            **cpu,
                        }
                        ok &= done.returncode == 0
                        runs[side].append(run)
                        steps = ", ".join(f"{k} {v:.1f}" for k, v in run["phases"].items())
                        machine = f" [steal {cpu['steal_pct']} %, idle {cpu['idle_pct']} %]" if cpu else ""
                        print(
                            f"{name} {side} ({sha}): {run['seconds']} s, {run['peak_mb']} MB; {steps}{machine}",
                            flush=True,
                        )
                        if done.returncode:
                            print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", file=sys.stderr)
                report["workloads"][name] = summarize(runs)
            # scored only after every workload's timed runs (module docstring): the scores load data
            # into this process, and a child's peak RSS (os.wait4) starts from its parent's
            # high-water mark (MiniLM's runs after det's and rec's scores read 2.7 GB; alone, at
            # stop 35, 1.1 GB)
            for name, entry in report["workloads"].items():
                if args.metrics and ok:
                    outputs = {side: folder / f"{name}.{side}.onnx" for side in ("base", "head")}
                    dense = jobs[name][0]
                    entry["metric"] = scores(name, dense, outputs, args.ocr_dir.resolve(), args.minilm_dir.resolve())
                print_summary(name, entry, report["commits"])
        finally:
            for tree, _ in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per commit, the ratio of the medians, and whether the outputs were the same bytes."""
    entry: dict[str, Any] = {"runs": runs}
    for side, items in runs.items():
        names = sorted({k for run in items for k in run["phases"]})
        entry[side] = {
            "median_s": median([run["seconds"] for run in items]),
            "peak_mb": max(run["peak_mb"] for run in items),
            "phases": {k: median([run["phases"][k] for run in items if k in run["phases"]]) for k in names},
            "same_bytes": len({run["sha256"] for run in items}) == 1,
        }
    entry["ratio"] = round(entry["head"]["median_s"] / entry["base"]["median_s"], 3)
    entry["same_bytes"] = {run["sha256"] for side in runs for run in runs[side]} == {runs["base"][0]["sha256"]}
    return entry


def print_summary(name: str, entry: dict[str, Any], commits: dict[str, str]) -> None:
    base, head = entry["base"], entry["head"]
    print(
        f"\n{name}: median {base['median_s']:.1f} s ({commits['base']}) -> {head['median_s']:.1f} s ({commits['head']})"
    )
    print(f"  head/base {entry['ratio']:.3f}; peak {base['peak_mb']} -> {head['peak_mb']} MB")
    for key in sorted(set(base["phases"]) | set(head["phases"])):
        print(f"  {key}: {base['phases'].get(key, float('nan')):.1f} -> {head['phases'].get(key, float('nan')):.1f} s")
    same = "the same bytes" if entry["same_bytes"] else "different bytes"
    print(f"  outputs: {same} (each commit alike in every repeat: {base['same_bytes']}, {head['same_bytes']})")
    if "metric" in entry:
        print(f"  metric: {entry['metric']}")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
