"""Held-out accuracy of magnitude, wanda, sparsegpt (with and without bias correction) and admm on
every fixture at 50 %, 70 % and 2:4 (``--settings`` picks rows; ``--block-epochs N``: block
reconstruction after the calibrated methods; ``--permute``: N:M with the channel
reorder first), plus the data-free mode at 50 %
(default allocation: curves); the calibrated methods with uniform and with curve allocation.

Calibration uses each fixture's ``NAME.calib.npz`` (128 samples, disjoint from the test
set); accuracy is measured on ``NAME.test.npz`` / ``NAME.test_labels.npy`` with onnxruntime
(top-1; for a sequence fixture, ``"task": "ctc"`` in the manifest, the sequence accuracy of greedy
CTC decoding, ``tools/sequence_metrics.py``).
Prints a markdown table (numbers for an issue note).

    .venv/bin/python tools/calibration_table.py [FIXTURE ...] [--samples 128] [--methods sparsegpt admm]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sequence_metrics import sequence_scores

import onnxprune
from onnxprune.reconstruct.methods import METHODS as SOLVERS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["models"]
TASKS = {name: entry.get("task", "classification") for name, entry in MANIFEST.items()}
#: a fixture whose output depends on the batch (an If on a batch statistic) is run in batches of this size
EVAL_BATCH = {name: entry["eval_batch_size"] for name, entry in MANIFEST.items() if "eval_batch_size" in entry}
SETTINGS = {"50%": {"sparsity": 0.5}, "70%": {"sparsity": 0.7}, "2:4": {"pattern": (2, 4)}}
#: (method, bias correction, allocation): "uniform" gives every layer the setting, "curves" splits
#: it by the layers' error curves (the default of the calibrated methods; not with N:M)
METHODS = [
    ("magnitude", False, "uniform"),
    ("magnitude", True, "uniform"),
    ("wanda", False, "uniform"),
    ("wanda", False, "curves"),
    ("sparsegpt", False, "uniform"),
    ("sparsegpt", True, "uniform"),
    ("sparsegpt", False, "curves"),
    ("sparsegpt", True, "curves"),
    ("admm", False, "uniform"),
    ("admm", False, "curves"),
]


def accuracy(path: Path, name: str) -> float:
    x = np.load(FIXTURES / f"{name}.test.npz")["input"]
    y = np.load(FIXTURES / f"{name}.test_labels.npy")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = EVAL_BATCH.get(name, len(x))
    logits = np.concatenate([session.run(None, {"input": x[i : i + step]})[0] for i in range(0, len(x), step)])
    if TASKS.get(name) == "ctc":
        return sequence_scores(logits, y)[0]
    return float(np.mean(logits.argmax(1) == y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="*")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="only these methods' columns")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="only these rows (e.g. 2:4)")
    parser.add_argument("--permute", action="store_true", help="N:M rows with the channel reorder first")
    parser.add_argument(
        "--block-epochs", type=int, default=0, metavar="N", help="calibrated methods: block reconstruction after"
    )
    args = parser.parse_args(argv)
    methods = [entry for entry in METHODS if not args.methods or entry[0] in args.methods]
    names = args.fixtures or sorted(p.stem for p in FIXTURES.glob("*.onnx"))
    columns = [f"{m}{'+bc' if bc else ''}{' curves' if a == 'curves' else ''}" for m, bc, a in methods]
    print("| fixture | dense | setting | " + " | ".join(columns) + " | data-free sparsegpt |")
    print("|" + "---|" * (4 + len(columns)))
    with tempfile.TemporaryDirectory(prefix="onnxprune-calib-") as tmp:
        for name in names:
            source = FIXTURES / f"{name}.onnx"
            if "input" not in np.load(FIXTURES / f"{name}.test.npz").files:  # e.g. stateful_mnist1d: x, h0, gain
                print(f"  {name}: skipped (its test data is not one 'input' array; see its README)", file=sys.stderr)
                continue
            dense = accuracy(source, name)
            calib = onnxprune.calibration_data(source, FIXTURES / f"{name}.calib.npz", samples=args.samples)
            # generated samples of the test data's shape (a dynamic width needs a number too)
            sample = np.load(FIXTURES / f"{name}.test.npz")["input"].shape[1:]
            free = onnxprune.calibration_data(
                source, data_free=True, samples=args.samples, input_shapes={"input": (1, *sample)}
            )
            for label, setting in SETTINGS.items():
                if args.settings and label not in args.settings:
                    continue
                cells = []
                for method, bc, allocator in methods:
                    if "pattern" in setting and (allocator == "curves" or method == "admm"):
                        cells.append("-")  # N:M fixes every layer's sparsity; admm is unstructured only
                        continue
                    config = onnxprune.PruneConfig(
                        **setting,
                        method=method,
                        bias_correction=bc,
                        allocator=allocator,
                        permute=args.permute and "pattern" in setting,
                        block_epochs=args.block_epochs if SOLVERS[method].needs_data else 0,
                    )
                    out = (
                        Path(tmp)
                        / f"{name}.{label.replace(':', '-').replace('%', '')}.{method}{int(bc)}{allocator}.onnx"
                    )
                    start = time.perf_counter()
                    data = calib if config.calibrated else None
                    run = onnxprune.prune_file(source, out, config, calibration=data)
                    cells.append(f"{100 * accuracy(run.saved.path, name):.1f}")
                    print(
                        f"  {name} {label} {method} bc={bc} {allocator}: {time.perf_counter() - start:.1f}s",
                        file=sys.stderr,
                    )
                free_cell = "-"
                if label == "50%":
                    config = onnxprune.PruneConfig(**setting, method="sparsegpt")
                    out = Path(tmp) / f"{name}.free.onnx"
                    run = onnxprune.prune_file(source, out, config, calibration=free)
                    free_cell = f"{100 * accuracy(run.saved.path, name):.1f}"
                print(f"| {name} | {100 * dense:.1f} | {label} | " + " | ".join(cells) + f" | {free_cell} |")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
