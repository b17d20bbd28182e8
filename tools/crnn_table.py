"""Structured (channel) pruning of the CRNN fixture: sequence accuracy and CER against MACs.

``fixtures/crnn_digits.onnx`` (CNN + 2-layer bidirectional LSTM, CTC) is pruned by the
structural pass in a few settings, each written to a temporary folder by
``onnxprune.prune_file`` (which validates it), and scored on ``crnn_digits.test.npz`` /
``crnn_digits.test_labels.npy`` with onnxruntime: sequence accuracy and character error rate
of greedy CTC decoding (``tools/sequence_metrics.py``). With data, the default allocation
spreads the removal over the groups by their measured loss (``allocator=None``: "curves";
``amount`` is then the fraction of the parameters); "uniform" rows show the old allocation. Parameters as the evaluator counts
them; MACs at the data's shape (batch 1, width 64: 32 time steps). Calibration: the 128
lines of ``crnn_digits.calib.npz`` (disjoint from the test lines). Prints a markdown table,
plus the channels each run kept per group.

    .venv/bin/python tools/crnn_table.py [--flops 0.7] [--amount 0.3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from sequence_metrics import sequence_scores

import onnxprune
from onnxprune.compute import count_compute
from onnxprune.config import StructureConfig
from onnxprune.stats import param_stats

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NAME = "crnn_digits"


def scores(path: Path) -> tuple[float, float]:
    x = np.load(FIXTURES / f"{NAME}.test.npz")["input"]
    y = np.load(FIXTURES / f"{NAME}.test_labels.npy")
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return sequence_scores(out, y)


def sizes(path: Path) -> tuple[int, int]:
    model = onnx.load(str(path))
    macs = count_compute(model, input_shapes={"input": (1, 1, 12, 64)}).macs
    return param_stats(model).parameters, macs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flops", type=float, default=0.7, help="target_flops of the calibrated runs")
    parser.add_argument("--amount", type=float, default=0.3, help="fraction of each group of the local runs")
    args = parser.parse_args(argv)
    source = FIXTURES / f"{NAME}.onnx"
    calib = onnxprune.calibration_data(source, FIXTURES / f"{NAME}.calib.npz", samples=128)
    uniform = "uniform"
    runs = {
        f"local {args.amount:.0%} of each group, L2, no data": (StructureConfig(amount=args.amount, round_to=1), None),
        f"local {args.amount:.0%} of each group, calibrated + refit": (
            StructureConfig(amount=args.amount, round_to=1, allocator=uniform),
            calib,
        ),
        f"structured {args.amount:.0%} (of the parameters, by measured loss), calibrated + refit": (
            StructureConfig(amount=args.amount, round_to=1),
            calib,
        ),
        f"MACs <= {args.flops:.0%}, L2, no data": (StructureConfig(target_flops=args.flops, round_to=1), None),
        f"MACs <= {args.flops:.0%}, by normalized importance, calibrated + refit": (
            StructureConfig(target_flops=args.flops, round_to=1, allocator=uniform),
            calib,
        ),
        f"MACs <= {args.flops:.0%}, by measured loss, calibrated + refit": (
            StructureConfig(target_flops=args.flops, round_to=1),
            calib,
        ),
    }
    params0, macs0 = sizes(source)
    acc0, cer0 = scores(source)
    print("| model | params | MACs (1x1x12x64) | sequence accuracy | CER |")
    print("|---|---|---|---|---|")
    print(f"| dense | {params0:,} | {macs0:,} | {100 * acc0:.1f}% | {100 * cer0:.2f}% |")
    kept = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-crnn-") as tmp:
        for i, (label, (structure, data)) in enumerate(runs.items()):
            out = Path(tmp) / f"{NAME}.{i}.onnx"
            run = onnxprune.prune_file(source, out, None, structure=structure, calibration=data)
            params, macs = sizes(out)
            acc, cer = scores(out)
            print(
                f"| {label} | {params:,} ({params / params0:.2f}x) | {macs:,} ({macs / macs0:.2f}x) "
                f"| {100 * acc:.1f}% | {100 * cer:.2f}% |"
            )
            sys.stdout.flush()
            groups = run.structure.groups if run.structure is not None else ()
            kept.append(f"{label}: " + ", ".join(f"{g.name} {g.kept}/{g.units}" for g in groups if g.removed))
    print()
    for line in kept:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
