"""Inspect and prune the three real OCR models shipped in the rapidocr-onnxruntime wheel.

    .venv/bin/python tools/check_rapidocr.py [--workdir /tmp/rapidocr] [--json out.json]

Downloads the wheel with pip (PyPI only; not run by the tests), extracts the det, rec and
cls models (Paddle exports: every weight in a Constant node, BatchNorm unfused), and for
each model:

1. cross-checks discovery against the graph: every Conv/ConvTranspose/Gemm node and every
   MatMul with a stored operand must have its weight discovered (pruned, or listed with a
   reason such as --min-size);
2. prunes it at 0.5 local, 0.5 global, 0.5 global LAMP and 2:4 through the CLI (so each
   output is validated with onnx.checker and onnxruntime before it is written), and
3. measures fidelity of each pruned model to the dense one on a fixed random input
   (cosine similarity of the outputs), to show how much magnitude pruning alone costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

import onnxprune
from onnxprune import runtime
from onnxprune.graph.index import Scope, node_label

WHEEL = "rapidocr-onnxruntime==1.4.4"
MODELS = {
    "det": ("ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 320, 320)}),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}),
}
CONFIGS = {
    "local 0.5": ["--sparsity", "0.5"],
    "global 0.5": ["--sparsity", "0.5", "--scope", "global"],
    "lamp 0.5": ["--sparsity", "0.5", "--scope", "global", "--criterion", "lamp"],
    "2:4": ["--pattern", "2:4"],
}


def fetch_models(workdir: Path) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    wheels = list(workdir.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(workdir)], check=True
        )
        wheels = list(workdir.glob("rapidocr_onnxruntime-*.whl"))
    paths = {}
    with zipfile.ZipFile(wheels[0]) as wheel:
        for key, (name, _) in MODELS.items():
            target = workdir / name
            if not target.exists():
                target.write_bytes(wheel.read(f"rapidocr_onnxruntime/models/{name}"))
            paths[key] = target
    return paths


def expected_weight_inputs(model: onnx.ModelProto) -> set[tuple[str, int]]:
    """(node, input index) of every weight input that must be discovered, from the graph alone."""
    root = Scope.build(model.graph)
    expected = set()
    for scope in root.all_scopes():
        for node in scope.graph.node:
            label = node_label(node)
            if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
                expected.add((label, 1))
            elif node.op_type == "MatMul":
                for index, name in enumerate(node.input):
                    owner = scope.resolve(name)
                    if owner is not None and owner.stored_tensor(name) is not None:
                        expected.add((label, index))
    return expected


def inspect_model(path: Path) -> dict:
    model = onnx.load(str(path))
    inventory = onnxprune.inspect(model)
    found = {(r.node, r.input_index) for w in inventory.weights if w.role in ("weight", "mixed") for r in w.readers}
    expected = expected_weight_inputs(model)
    prunable = inventory.prunable
    storage = sorted({w.storage for w in prunable})
    return {
        "weight_inputs_in_graph": len(expected),
        "weight_inputs_discovered": len(expected & found),
        "missing": sorted(f"{n}:{i}" for n, i in expected - found),
        "prunable_tensors": len(prunable),
        "prunable_weights": sum(w.numel for w in prunable),
        "ops": {op: sum(op in w.ops for w in prunable) for op in sorted({o for w in prunable for o in w.ops})},
        "stored_as": storage,
        "skipped": {w.key: w.reason for w in inventory.skipped if w.role in ("weight", "mixed")},
        "not_weights": len([w for w in inventory.skipped if w.role not in ("weight", "mixed")]),
    }


def fidelity(dense: Path, pruned: Path, shapes: dict[str, tuple[int, ...]]) -> float:
    sess_d, sess_p = runtime.session(dense), runtime.session(pruned)
    feeds = runtime.synthetic_feeds(runtime.input_specs(sess_d), shapes, seed=1)
    a = sess_d.run(None, feeds)[0].ravel().astype(np.float64)
    b = sess_p.run(None, feeds)[0].ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune-rapidocr"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = fetch_models(args.workdir)
    report: dict[str, dict] = {}
    ok = True
    for key, path in paths.items():
        shapes = MODELS[key][1]
        info = inspect_model(path)
        ok &= not info["missing"]
        print(f"\n== {key}: {path.name}")
        print(
            f"weight inputs in graph {info['weight_inputs_in_graph']}, discovered {info['weight_inputs_discovered']}"
            f" (missing: {info['missing'] or 'none'}); prunable tensors {info['prunable_tensors']}"
            f" ({info['prunable_weights']:,} weights, stored as {', '.join(info['stored_as'])}), ops {info['ops']};"
            f" weights skipped {len(info['skipped'])}, other tensors listed {info['not_weights']}"
        )
        info["runs"] = {}
        for name, options in CONFIGS.items():
            out = args.workdir / f"{path.stem}.{name.replace(' ', '_').replace(':', 'of')}.onnx"
            shape_args = [f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items()]
            cmd = [sys.executable, "-m", "onnxprune", "prune", str(path), str(out), *options, "-q", "--force"]
            cmd += [a for s in shape_args for a in ("--input-shape", s)]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                ok = False
                print(f"  {name:<11} FAILED: {proc.stderr.strip()}")
                info["runs"][name] = {"error": proc.stderr.strip()}
                continue
            cosine = fidelity(path, out, shapes)
            print(
                f"  {name:<11} {proc.stdout.strip().splitlines()[-1][:110]}  | cosine to dense {cosine:.4f} | {seconds:.1f}s"
            )
            info["runs"][name] = {"summary": proc.stdout.strip(), "cosine": cosine, "seconds": seconds}
        report[key] = info
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print("\nall weight inputs discovered and every run validated" if ok else "\nPROBLEMS found (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
