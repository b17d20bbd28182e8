"""Evaluate magnitude pruning on every fixture: accuracy, fidelity, size and latency.

For each fixture in ``fixtures/`` the model is pruned with local magnitude pruning at each
``--sparsity`` (default 0.3, 0.5, 0.7) into a temporary folder, then ``onnxprune.evaluate``
compares the base with all candidates on the fixture's labelled held-out data
(``NAME.test.npz``, ``NAME.test_labels.npy``), latency interleaved. Prints one markdown
table (numbers for an issue note) and, with ``--reports DIR``, writes one HTML report and
one JSON per fixture. A sequence fixture (``"task": "ctc"`` in the manifest: its labels are
sequences, not classes) is evaluated without labels (fidelity only; its sequence accuracy and
CER: ``tools/crnn_table.py``).

Run from the repository root::

    .venv/bin/python tools/eval_fixtures.py
    .venv/bin/python tools/eval_fixtures.py --reports out/fixture_reports --repeats 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnxprune
from onnxprune.latency import LatencySettings
from onnxprune.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_table import FIXTURES, TASKS  # the fixtures' manifest, read once for the tools

ROOT = FIXTURES.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=50, help="interleaved latency repeats")
    parser.add_argument("--latency-batch", type=int, default=1)
    parser.add_argument("--reports", type=Path, help="write NAME.html and NAME.json here")
    parser.add_argument("fixtures", nargs="*", help="fixture names (default: all)")
    args = parser.parse_args(argv)
    names = args.fixtures or sorted(p.stem for p in FIXTURES.glob("*.onnx"))
    if args.reports:
        args.reports.mkdir(parents=True, exist_ok=True)

    header = [
        "fixture",
        "model",
        "top-1",
        "agree",
        "cosine",
        "rel L2",
        "compressed",
        "vs base",
        "MACs nz",
        "latency ratio",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="onnxprune-eval-") as tmp:
        for name in names:
            base = FIXTURES / f"{name}.onnx"
            candidates = []
            for amount in args.sparsity:
                out = Path(tmp) / f"{name}.s{round(100 * amount)}.onnx"
                onnxprune.prune_file(base, out, onnxprune.PruneConfig(sparsity=amount))
                candidates.append(out)
            options = onnxprune.EvalOptions(
                latency=LatencySettings(repeats=args.repeats), latency_batch=args.latency_batch
            )
            result = onnxprune.evaluate(
                base,
                candidates,
                data=FIXTURES / f"{name}.test.npz",
                labels=None if TASKS.get(name) == "ctc" else FIXTURES / f"{name}.test_labels.npy",
                options=options,
            )
            for m in result.models:
                overall = (m.fidelity or {}).get("overall") or {}
                ratio = m.latency.ratio if m.latency else None
                cells = [
                    name,
                    "base" if m.role == "base" else m.name.replace(f"{name}.", "").replace(".onnx", ""),
                    f"{100 * m.accuracy['top1']:.1f}%" if m.accuracy else "-",
                    "-" if overall.get("top1_agreement") is None else f"{100 * overall['top1_agreement']:.1f}%",
                    "-" if overall.get("cosine") is None else f"{overall['cosine']:.4f}",
                    "-" if overall.get("rel_l2") is None else f"{overall['rel_l2']:.3f}",
                    f"{m.compressed_bytes / 1024:.1f} KiB",
                    f"{m.compressed_bytes / result.base.compressed_bytes:.2f}x",
                    f"{m.compute.nonzero_macs / result.base.compute.macs:.2f}x" if m.compute else "-",
                    "1.00" if ratio is None else f"{ratio.median:.2f} [{ratio.p10:.2f}-{ratio.p90:.2f}]",
                ]
                print("| " + " | ".join(cells) + " |")
            sys.stdout.flush()
            if args.reports:
                write_report(result.to_dict(), args.reports / f"{name}.html")
                result.write_json(args.reports / f"{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
