"""Benchmark: dead-code removal in :mod:`onnxprune.graph.cleanup` on onnx protos (old) and on
an onnx-graphsurgeon gs.Graph (:mod:`onnxprune.graph.gs_adapter`, new), time and peak memory.

What it measures
    The 100 M-parameter model of ``tools/bench_prune.py`` (built once by its builder, in a
    child, outside the timed region; reused from ``--workdir``), to which each child adds a
    little dead code after loading (a dead chain of 8 nodes reading a weight, and 2 unread
    initializers), so that there is something to remove. Four cases, each one fresh child
    process, interleaved over ``--repeats`` repetitions, each in its own seeded order
    (``bench_prune.interleaved_orders``):

    dead-onnx / dead-gs   the dead-node and unused-initializer step alone
                          (``_prune`` vs ``_prune_gs``: to_gs, gs cleanup, from_gs)
    full-onnx / full-gs   the whole ``cleanup(model)`` with either engine

    Each child times its step with ``time.perf_counter`` (load excluded) and checks that it
    removed what was added; the parent reaps it with ``os.wait4`` and takes ``ru_maxrss``
    (that child's own high-water RSS, as in bench_prune.py). The child also reports its RSS
    high-water mark right after loading, so the step's own growth is visible. Medians.

Run from the repository root (~1.3 GB disk, ~2 GB free memory)::

    .venv/bin/python tools/bench_gs.py                       # 100 M parameters, 5 repeats
    .venv/bin/python tools/bench_gs.py --params 2e7 --layers 16 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prune  # tools/ is not a package

CASES = ("dead-onnx", "dead-gs", "full-onnx", "full-gs")
MAXRSS_UNIT = bench_prune.MAXRSS_UNIT


def add_dead_code(model) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    d = 256
    graph.initializer.append(numpy_helper.from_array(np.ones((d, d), np.float32), "dead.weight"))
    graph.initializer.append(numpy_helper.from_array(np.ones(d, np.float32), "unused.a"))
    graph.initializer.append(numpy_helper.from_array(np.ones(d, np.float32), "unused.b"))
    x = "dead.in"
    graph.node.append(helper.make_node("RandomNormal", [], [x], name="dead.source", shape=[1, d]))
    for i in range(7):
        op = "MatMul" if i == 0 else "Relu"
        inputs = [x, "dead.weight"] if i == 0 else [x]
        graph.node.append(helper.make_node(op, inputs, [f"dead.{i}"], name=f"dead.{i}"))
        x = f"dead.{i}"


def child(case: str, path: str) -> None:
    import onnx

    from onnxprune.graph import cleanup as cleanup_module

    model = onnx.load(path)
    add_dead_code(model)
    nodes, inits = len(model.graph.node), len(model.graph.initializer)
    loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT
    on_gs = case.endswith("-gs")
    cleanup_module._DEAD_CODE_ON_GS = on_gs
    start = time.perf_counter()
    if case.startswith("dead"):
        removed = cleanup_module._Removed()
        (cleanup_module._prune_gs(model, removed) if on_gs else cleanup_module._prune(model.graph, removed, main=True))
        counts = (removed.nodes, removed.initializers)
    else:
        result = cleanup_module.cleanup(model)
        counts = (result.nodes_removed, result.initializers_removed)
    seconds = time.perf_counter() - start
    assert counts == (8, 3), counts
    assert (len(model.graph.node), len(model.graph.initializer)) == (nodes - 8, inits - 3)
    print(json.dumps({"seconds": seconds, "loaded_peak": loaded_peak}))


def run_child(case: str, model: Path) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, str(model)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here: this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{case} failed:\n{err.read().decode()}")
        report = json.loads(out.read().decode().strip().splitlines()[-1])
    return {**report, "peak": usage.ru_maxrss * MAXRSS_UNIT}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=bench_prune.DEFAULT_PARAMS)
    parser.add_argument("--layers", type=int, default=bench_prune.DEFAULT_LAYERS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the model here")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="onnxprune-bench-gs-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = bench_prune.ensure_model(workdir, int(args.params), args.layers)
    model = Path(info.path)
    runs: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for order in bench_prune.interleaved_orders(CASES, args.repeats):
        for case in order:
            runs[case].append(run_child(case, model))
    print(f"\nmodel: {info.parameters:,} parameters, {info.bytes / 2**20:.0f} MiB; {args.repeats} repeats, interleaved")
    print(f"{'case':<10} {'median s':>10} {'min s':>8} {'max s':>8} {'peak RSS MiB':>13} {'after load MiB':>15}")
    summary = {}
    for case in CASES:
        seconds = [r["seconds"] for r in runs[case]]
        peak = statistics.median(r["peak"] for r in runs[case])
        loaded = statistics.median(r["loaded_peak"] for r in runs[case])
        summary[case] = {"median_s": statistics.median(seconds), "seconds": seconds, "peak_rss": peak, "loaded": loaded}
        print(
            f"{case:<10} {statistics.median(seconds):>10.4f} {min(seconds):>8.4f} {max(seconds):>8.4f}"
            f" {peak / 2**20:>13.0f} {loaded / 2**20:>15.0f}"
        )
    for step in ("dead", "full"):
        old, new = summary[f"{step}-onnx"], summary[f"{step}-gs"]
        print(
            f"{step}: gs/onnx time {new['median_s'] / old['median_s']:.2f}x, "
            f"peak RSS {new['peak_rss'] / 2**20:.0f} vs {old['peak_rss'] / 2**20:.0f} MiB"
        )
    if args.json:
        args.json.write_text(json.dumps({"model": info.__dict__, "cases": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
