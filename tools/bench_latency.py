"""Benchmark: does ``measure_latency`` tell a model from its own byte-identical copy?

What it checks
    For each fixture (``fixtures/*.onnx``, or the files given), the model is copied byte for
    byte into a temporary folder and ``measure_latency([base, copy], feeds)`` is run
    ``--evaluations`` times, in this one process, on a batch of the fixture's test inputs
    (the first ``--batch`` rows of ``fixtures/NAME.test.npz``, key ``input``). The two
    models are the same, so every difference is measurement error: the median paired ratio
    copy/base of each evaluation should be 1.

Targets (PASS/FAIL)
    The median over evaluations of the per-evaluation median ratio lies in [0.95, 1.05].
    Also printed: the smallest and largest evaluation median, the per-evaluation p10-p90
    spread of the paired ratios, and the base's median latency and block size. Exit status
    1 if any fixture fails.

Run from the repository root::

    .venv/bin/python tools/bench_latency.py                      # all fixtures, 10 evaluations
    .venv/bin/python tools/bench_latency.py fixtures/mlp_digits.onnx --evaluations 20 --threads 1
    .venv/bin/python tools/bench_latency.py --repeats 100 --batch 1 --json latency.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxprune.latency import LatencySettings, measure_latency  # noqa: E402
from onnxprune.runtime import environment  # noqa: E402

LOW, HIGH = 0.95, 1.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: fixtures/*.onnx)")
    parser.add_argument("--evaluations", type=int, default=10, help="measure_latency calls per fixture")
    parser.add_argument("--repeats", type=int, default=LatencySettings.repeats, help="interleaved repeats per call")
    parser.add_argument("--warmup", type=int, default=LatencySettings.warmup, help="warm-up runs per model")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument(
        "--spinning", action="store_true", help="let idle onnxruntime threads busy-wait (onnxruntime's default)"
    )
    parser.add_argument("--batch", type=int, default=64, help="rows of the fixture's test inputs per run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.evaluations < 1 or args.batch < 1:
        parser.error("--evaluations and --batch must be at least 1")

    models = args.models or sorted((ROOT / "fixtures").glob("*.onnx"))
    settings = LatencySettings(warmup=args.warmup, repeats=args.repeats, threads=args.threads, spinning=args.spinning)
    env = environment()
    print(
        f"{env['cpu']}, {env['usable_cores']}/{env['logical_cores']} cores, {env['platform']}, "
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, python {env['python']}"
    )
    print(
        f"evaluations {args.evaluations}, repeats {args.repeats}, warm-up {args.warmup}, "
        f"threads {args.threads or 'default'}, spinning {'on' if args.spinning else 'off'}, batch {args.batch}; target: median ratio in [{LOW}, {HIGH}]\n"
    )
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"environment": env, "settings": options | {"models": [str(m) for m in models]}, "fixtures": {}}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            feeds = {"input": _batch(model, args.batch)}
            copy = Path(tmp) / f"copy_{model.name}"
            shutil.copyfile(model, copy)
            assert copy.read_bytes() == model.read_bytes()
            rows = []
            start = time.perf_counter()
            for _ in range(args.evaluations):
                base, cand = measure_latency([model, copy], feeds, settings=settings)
                rows.append(
                    {
                        "ratio_median": cand.ratio.median,
                        "ratio_p10": cand.ratio.p10,
                        "ratio_p90": cand.ratio.p90,
                        "base_median_ms": base.median_ms,
                        "copy_median_ms": cand.median_ms,
                        "runs_per_sample": [base.runs_per_sample, cand.runs_per_sample],
                    }
                )
            seconds = time.perf_counter() - start
            medians = [r["ratio_median"] for r in rows]
            overall = statistics.median(medians)
            ok = LOW <= overall <= HIGH
            if not ok:
                failed.append(model.name)
            _print_table(model.name, rows, overall, ok, seconds)
            report["fixtures"][model.name] = {"evaluations": rows, "median_ratio": overall, "pass": ok}
    print(f"{'FAIL: ' + ', '.join(failed) if failed else 'PASS'} ({len(models) - len(failed)}/{len(models)} fixtures)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


def _batch(model: Path, batch: int) -> np.ndarray:
    data = model.with_name(model.name.removesuffix(".onnx") + ".test.npz")
    if not data.is_file():
        raise SystemExit(f"{model}: no test inputs at {data}")
    with np.load(data) as npz:
        x = npz["input"]
    if batch > len(x):
        raise SystemExit(f"{data} has {len(x)} samples, fewer than --batch {batch}")
    return np.ascontiguousarray(x[:batch])


def _print_table(name: str, rows: list[dict], overall: float, ok: bool, seconds: float) -> None:
    print(f"{name}  ({seconds:.1f} s)")
    print(f"  {'eval':>4}  {'median ratio':>12}  {'p10':>6}  {'p90':>6}  {'base ms':>8}  {'copy ms':>8}  {'k':>9}")
    for i, r in enumerate(rows):
        k = "/".join(map(str, r["runs_per_sample"]))
        print(
            f"  {i:>4}  {r['ratio_median']:>12.4f}  {r['ratio_p10']:>6.3f}  {r['ratio_p90']:>6.3f}  "
            f"{r['base_median_ms']:>8.4f}  {r['copy_median_ms']:>8.4f}  {k:>9}"
        )
    medians = [r["ratio_median"] for r in rows]
    print(
        f"  median over evaluations {overall:.4f} (min {min(medians):.4f}, max {max(medians):.4f})  "
        f"{'PASS' if ok else 'FAIL'}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
