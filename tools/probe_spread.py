"""How many samples the allocation's probe needs: per-batch output changes of every layer.

Runs one ``onnxprune prune`` (the arguments after ``--``) with every probe on all its samples
(``PROBE_REL_SE = 0``, unless ``--rel-se``), records each layer's per-batch change ``d_b`` and
batch sizes, writes them as JSON, and prints what the early-stop rule of
``onnxprune/passes/curve_allocation.py`` (stop once the relative standard error of the mean
per-sample change is at most a threshold, after a least number of samples and batches) would
have done at several thresholds: the mean samples a layer, and how far each stopped estimate
(scaled to all samples) lies from the estimate on all of them. This is how the rule's
constants were chosen (PP-OCRv4 det and rec, issue 16's note of stop 29).

    .venv/bin/python tools/probe_spread.py --json det.json -- \\
        ch_PP-OCRv4_det_infer.onnx out.onnx --sparsity 0.5 --method sparsegpt \\
        --calibration det_calib_32_640.npz --samples 32 --input-shape x:1x3x640x640
    .venv/bin/python tools/probe_spread.py --analyse det.json      # the table again, no run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

THRESHOLDS = (0.05, 0.08, 0.1, 0.15, 0.2)


def record(args: list[str], rel_se: float) -> dict[str, Any]:
    """Run ``onnxprune prune ARGS`` in this process, recording every layer's probe."""
    import onnxprune.passes.curve_allocation as allocation
    from onnxprune.cli import main

    records: dict[str, Any] = {}
    allocation.PROBE_REL_SE = rel_se
    allocation.PROBE_SCREEN = False  # every probe by its stopping rule alone
    settled, measure = allocation.OutputProbe._settled, allocation.OutputProbe.measure

    def spy_settled(self: Any, moved: list[float]) -> bool:
        self.trace = list(moved)
        return settled(self, moved)

    def spy_measure(self: Any, weight: Any, inventory: Any, stored: Any) -> Any:
        self.trace = []
        probed = measure(self, weight, inventory, stored)
        records[weight.key] = {"moved": self.trace, "counts": self.counts, "change": probed.change}
        return probed

    allocation.OutputProbe._settled = spy_settled  # type: ignore[method-assign]
    allocation.OutputProbe.measure = spy_measure  # type: ignore[method-assign]
    try:
        main(["prune", *args])
    finally:
        allocation.OutputProbe._settled, allocation.OutputProbe.measure = settled, measure  # type: ignore[method-assign]
    return records


def _relative_error(moved: list[float], counts: list[int]) -> float:
    rates = [m / c for m, c in zip(moved, counts, strict=True)]
    mean = sum(rates) / len(rates)
    if len(rates) < 2 or mean <= 0:
        return math.nan
    return statistics.stdev(rates) / math.sqrt(len(rates)) / mean


def analyse(records: dict[str, Any], min_samples: int, min_batches: int) -> list[str]:
    """Markdown rows: per threshold, the mean samples a layer and the stopped estimates' errors."""
    layers = [r for r in records.values() if r["counts"] and sum(r["moved"]) > 0]
    rows = ["| threshold | samples a layer | error median | error p90 | error max |", "|---|---|---|---|---|"]
    for threshold in THRESHOLDS:
        samples, errors = [], []
        for layer in layers:
            moved, counts = layer["moved"], layer["counts"]
            stop = len(moved)
            for k in range(min_batches, len(moved)):
                if sum(counts[:k]) >= min_samples and _relative_error(moved[:k], counts[:k]) <= threshold:
                    stop = k
                    break
            run = sum(counts[:stop])
            samples.append(run)
            errors.append(abs(sum(moved[:stop]) * sum(counts) / run / sum(moved) - 1))
        errors.sort()
        rows.append(
            f"| {threshold} | {sum(samples) / len(samples):.1f} | {statistics.median(errors):.3f} | "
            f"{errors[int(0.9 * (len(errors) - 1))]:.3f} | {errors[-1]:.3f} |"
        )
    full = sorted(_relative_error(r["moved"], r["counts"]) for r in layers)
    rows.append(f"\n{len(layers)} layers; relative standard error on all samples: {full[0]:.3f} to {full[-1]:.3f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prune_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the per-batch changes here")
    parser.add_argument("--analyse", type=Path, metavar="JSON", help="analyse a recorded run instead of running")
    parser.add_argument("--rel-se", type=float, default=0.0, help="the run's PROBE_REL_SE (default 0: all samples)")
    parser.add_argument("--min-samples", type=int, default=8)
    parser.add_argument("--min-batches", type=int, default=4)
    args = parser.parse_args(own)
    if args.analyse is not None:
        records = json.loads(args.analyse.read_text())
    elif prune_args:
        records = record(prune_args, args.rel_se)
        if args.json is not None:
            args.json.write_text(json.dumps(records))
    else:
        parser.error("give the prune arguments after --, or --analyse JSON")
    print("\n".join(analyse(records, args.min_samples, args.min_batches)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
