"""Prune then quantize: dense, 50 %-pruned (magnitude; SparseGPT on calibration data) and each
of them + int8 (dynamic, and static QDQ calibrated on the same data), on the fixtures.

For every fixture all models go through one :func:`onnxprune.evaluate` call (the dense model
is the base), so the numbers line up and the HTML report (``--reports DIR``) shows dense,
pruned and pruned+int8 side by side: file size, deflate-compressed size, latency ratio
(interleaved onnxruntime runs, batch 1, candidate/dense median), held-out top-1 on
``NAME.test.npz`` / ``NAME.test_labels.npy``. Calibration (SparseGPT and static int8) reads
``NAME.calib.npz`` (128 samples by default), disjoint from the test set. The int8 columns
say how many of the float weights' zeros are int8 zeros (all of them, or the quantizer
refuses the output).

Prints a markdown table; ``--json`` writes the rows and every evaluation.

    .venv/bin/python tools/quantize_table.py [FIXTURE ...] [--json out.json] [--reports DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxprune
from onnxprune.report import write_report

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEFAULT = ("cnn_digits", "mlp_digits", "transformer_mnist1d")
PRUNED = {
    "dense": None,
    "magnitude 50%": onnxprune.PruneConfig(sparsity=0.5),
    "sparsegpt 50%": onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt"),
}
MODES = ("dynamic", "static")


def _slug(label: str) -> str:
    return label.replace(" ", "-").replace("%", "").replace("+", "")


def build(name: str, folder: Path, samples: int) -> tuple[Path, list[tuple[str, Path, Any]]]:
    """The fixture's dense model and its candidates: (label, path, QuantizeResult or None)."""
    source = FIXTURES / f"{name}.onnx"
    calib = onnxprune.calibration_data(source, FIXTURES / f"{name}.calib.npz", samples=samples)
    models: list[tuple[str, Path, Any]] = []
    for label, config in PRUNED.items():
        float_path = source
        if config is not None:
            float_path = folder / f"{name}.{_slug(label)}.onnx"
            run = onnxprune.prune_file(source, float_path, config, calibration=calib if config.calibrated else None)
            models.append((label, run.saved.path, None))
        for mode in MODES:
            out = folder / f"{name}.{_slug(label)}.int8-{mode}.onnx"
            quantized = onnxprune.quantize_file(float_path, out, mode=mode, calibration=calib)
            models.append((f"{label} + int8 {mode}", out, quantized))
    return source, models


def evaluate(name: str, source: Path, models: list[tuple[str, Path, Any]], args: argparse.Namespace) -> Any:
    options = onnxprune.EvalOptions(latency=onnxprune.LatencySettings(warmup=args.warmup, repeats=args.repeats))
    return onnxprune.evaluate(
        source,
        [path for _, path, _ in models],
        data=FIXTURES / f"{name}.test.npz",
        labels=FIXTURES / f"{name}.test_labels.npy",
        options=options,
    )


def rows_for(name: str, result: Any, models: list[tuple[str, Path, Any]]) -> list[dict[str, Any]]:
    base = result.base
    rows = [_row(name, "dense", base, base, None)]
    for (label, _, quantized), report in zip(models, result.candidates, strict=True):
        rows.append(_row(name, label, report, base, quantized))
    return rows


def _row(name: str, label: str, report: Any, base: Any, quantized: Any) -> dict[str, Any]:
    ratio = report.latency.ratio.median if report.latency is not None and report.latency.ratio is not None else 1.0
    return {
        "fixture": name,
        "model": label,
        "file_bytes": report.file_bytes,
        "compressed_bytes": report.compressed_bytes,
        "file_vs_dense": report.file_bytes / base.file_bytes,
        "compressed_vs_dense": (report.compressed_bytes or 0) / (base.compressed_bytes or 1),
        "latency_ms": report.latency.median_ms if report.latency is not None else None,
        "latency_ratio": ratio,
        "top1": (report.accuracy or {}).get("top1"),
        "int8": quantized.to_dict() if quantized is not None else None,
    }


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| fixture | model | file KiB | vs dense | deflate KiB | vs dense | latency ratio | top-1 | float zeros kept / int8 zeros |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|---|")
    for r in rows:
        q = r["int8"]
        kept = "-" if q is None else f"{q['zeros_before']:,} / {q['zeros_after']:,} of {q['elements']:,}"
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.1f}%"
        print(
            f"| {r['fixture']} | {r['model']} | {_kib(r['file_bytes'])} | {r['file_vs_dense']:.2f}x | "
            f"{_kib(r['compressed_bytes'])} | {r['compressed_vs_dense']:.2f}x | {r['latency_ratio']:.2f}x | "
            f"{top1} | {kept} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="*", help=f"fixture names (default: {' '.join(DEFAULT)})")
    parser.add_argument("--samples", type=int, default=128, help="calibration samples")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the rows and every evaluation here")
    parser.add_argument("--reports", type=Path, help="write one HTML report per fixture into this folder")
    args = parser.parse_args(argv)
    if args.reports is not None:
        args.reports.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    evaluations: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxprune-quant-") as tmp:
        for name in args.fixtures or DEFAULT:
            start = time.perf_counter()
            source, models = build(name, Path(tmp), args.samples)
            result = evaluate(name, source, models, args)
            print(f"  {name}: {len(models) + 1} models in {time.perf_counter() - start:.1f}s", file=sys.stderr)
            rows.extend(rows_for(name, result, models))
            evaluations[name] = result.to_dict()
            if args.reports is not None:
                write_report(evaluations[name], args.reports / f"{name}.quantize.html")
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "evaluations": evaluations}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
