"""Measure row subsampling of the calibration capture against the full capture, layer by layer.

    .venv/bin/python tools/capture_rows.py MODEL DATA.npz [--samples N] [--caps all 4 16 16d 64]
        [--min-rows R] [--sparsity 0.5] [--batch 32] [--per-layer] [--json out.json]
    .venv/bin/python tools/capture_rows.py --fixtures [--caps ...]     (every fixture, its calib set)

For each cap ``k`` (``capture_rows``; "all" is the full capture, the reference; ``Kd``: ``k = K``
with the damped dimension on, as the error curves' capture draws (at its own ``k``): a capped
layer's batches after its first sized by ``d_λ`` at damping 0.1, :mod:`onnxprune.row_sampling`;
the waves' captures draw ``K`` plain) it captures the
statistics of every layer the calibrated pass handles, on the dense model (parallel mode: no
reference model, so that only the rows differ), with :class:`onnxprune.row_sampling.RowSampling`
``(k, min_rows)``, and reports per layer, then summarised over layers (median and max):

- ``H err``: ``‖Ĥ − H‖_F / ‖H‖_F`` (Ĥ on the scale of all rows: :mod:`onnxprune.row_sampling`);
- ``mean err``: ``‖Ê[x] − E[x]‖ / ‖E[x]‖``;
- the layer pruned by SparseGPT at ``--sparsity`` (damping 0.1, block 128, the exact refit: the
  CLI's defaults) from Ĥ and from H, both judged on the full H: ``out err`` =
  ``‖(Ŵ_Ĥ − Ŵ_H) X‖ / ‖Ŵ_H X‖`` (how far the pruned layer's output moves), and ``loss ratio`` =
  ``‖(W − Ŵ_Ĥ) X‖² / ‖(W − Ŵ_H) X‖²`` (1: as good as with the full capture);
- the capture's wall time and the rows its sums used (``rows_used``) against every row.

``--min-rows`` lowers the rule's floor (default 1024 rows per sample) so that small inputs (the
fixtures' 8x8 images) are subsampled at all. The end metric (accuracy, IoU, CER) is measured by
the tools that run the CLI: ``tools/check_ocr_targets.py --capture-rows K`` and
``tools/bench_calibrate.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import onnxprune
from onnxprune.capture import LayerSpec, LayerStats, capture, stacked
from onnxprune.config import PruneConfig
from onnxprune.graph import tensors
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.passes.layers import CalibLayer, calib_layer
from onnxprune.reconstruct.methods import METHODS, LayerProblem
from onnxprune.row_sampling import MIN_ROWS, RowSampling

ROOT = Path(__file__).resolve().parent.parent
PERCDAMP, BLOCKSIZE = 0.1, 128


def layers_of(model: onnx.ModelProto) -> list[CalibLayer]:
    """Every weight the calibrated pass would solve (min_size and selection at the defaults)."""
    inventory = discover(model, PruneConfig(sparsity=0.5).selection)
    scope = Scope.build(model.graph)
    found = []
    for weight in inventory.prunable:
        layer, _ = calib_layer(model, scope, weight)
        if layer is not None:
            found.append(layer)
    return found


def specs_of(layers: list[CalibLayer]) -> list[LayerSpec]:
    return [use.spec for layer in layers for use in layer.uses]


def solve(w: np.ndarray, h: np.ndarray, sparsity: float) -> np.ndarray:
    """SparseGPT with the CLI's defaults on one group's matrix ``w`` and statistics ``h``."""
    problem = LayerProblem(
        w=w,
        goal=w,
        H=h,
        sqnorm=np.diagonal(h).copy(),
        mask=None,
        amount=sparsity,
        nm=None,
        percdamp=PERCDAMP,
        blocksize=BLOCKSIZE,
        row_wise=w.shape[1] >= 64,
        exact_refit=True,
        count=int(sparsity * w.size),
    )
    return METHODS["sparsegpt"].solve(problem)


def quad(a: np.ndarray, h: np.ndarray) -> float:
    """``Σ_rows a_i H a_iᵀ`` = ``‖a Xᵀ‖²``."""
    return float(np.vdot(a @ h, a))


def compare(
    model: onnx.ModelProto,
    layers: list[CalibLayer],
    full: dict[str, LayerStats],
    est: dict[str, LayerStats],
    sparsity: float,
) -> list[dict[str, Any]]:
    rows = []
    inventory = discover(model, PruneConfig(sparsity=0.5).selection)
    for layer in layers:
        a = stacked([full[u.spec.key] for u in layer.uses])
        b = stacked([est[u.spec.key] for u in layer.uses])
        if a.skipped or a.H is None or b.H is None or a.rows == 0:
            continue
        values = tensors.read_array(inventory.proto(layer.weight)).astype(np.float64)
        w = layer.to_matrix(values)
        h_err = float(np.linalg.norm(b.H - a.H) / max(np.linalg.norm(a.H), 1e-300))
        m_norm = float(np.linalg.norm(a.mean))
        mean_err = float(np.linalg.norm(b.mean - a.mean) / m_norm) if m_norm > 0 else 0.0
        move = ref_loss = est_loss = base = 0.0
        for g in range(layer.groups):
            k = 0 if a.H.shape[0] == 1 else g
            h_full, h_est = a.H[k], b.H[k]
            new_full, new_est = solve(w[g], h_full, sparsity), solve(w[g], h_est, sparsity)
            move += quad(new_est - new_full, h_full)
            base += quad(new_full, h_full)
            ref_loss += quad(w[g] - new_full, h_full)
            est_loss += quad(w[g] - new_est, h_full)
        rows.append(
            {
                "layer": layer.weight.key,
                "cols": int(w.shape[2]),
                "rows": int(a.rows),
                "rows_used": int(b.rows_used if b.rows_used is not None else b.rows),
                "h_err": h_err,
                "mean_err": mean_err,
                "out_err": math.sqrt(move / base) if base > 0 else 0.0,
                "loss_ratio": est_loss / ref_loss if ref_loss > 0 else 1.0,
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {"layers": len(rows)}
    for name in ("h_err", "mean_err", "out_err", "loss_ratio"):
        values = np.array([r[name] for r in rows]) if rows else np.zeros(1)
        out[f"{name}_median"] = float(np.median(values))
        out[f"{name}_max"] = float(values.max())
    out["rows"] = int(sum(r["rows"] for r in rows))
    out["rows_used"] = int(sum(r["rows_used"] for r in rows))
    return out


def parse_cap(token: str) -> tuple[int, bool] | None:
    """``all`` -> None; ``K`` -> (K, False); ``Kd`` -> (K, True): the damped dimension on."""
    if token == "all":
        return None
    return (int(token[:-1]), True) if token.endswith("d") else (int(token), False)


def measure(
    name: str, model_path: Path, data_path: Path, args: argparse.Namespace, caps: list[tuple[int, bool] | None]
) -> dict[str, Any]:
    model = onnx.load(str(model_path))
    layers = layers_of(model)
    specs = specs_of(layers)
    data = onnxprune.calibration_data(model_path, data=str(data_path), samples=args.samples)
    feeds = list(data.batches(args.batch))
    samples = data.num_samples()
    print(f"\n== {name}: {len(layers)} layers, {samples} samples, batch {args.batch}")
    print(
        "| capture_rows | capture s | rows used / all | H err med / max | mean err med | out err med / max | loss ratio med / max |"
    )
    print("|---|---|---|---|---|---|---|")
    tick = time.perf_counter()
    full = capture(model, specs, feeds)
    result: dict[str, Any] = {"layers": len(layers), "samples": samples, "full_seconds": time.perf_counter() - tick}
    print(f"| all | {result['full_seconds']:.1f} | - | - | - | - | - |")
    for cap in caps:
        if cap is None:
            continue
        per_col, damped = cap
        damp = PERCDAMP if damped else None
        sampling = RowSampling(per_col=per_col, seed=args.seed, min_rows=args.min_rows, damp=damp)
        label = f"{per_col}{'d' if damped else ''}"
        tick = time.perf_counter()
        est = capture(model, specs, feeds, sampling=sampling)
        seconds = time.perf_counter() - tick
        rows = compare(model, layers, full, est, args.sparsity)
        s = summary(rows)
        result[label] = {"seconds": seconds, "summary": s, "per_layer": rows}
        print(
            f"| {label} | {seconds:.1f} | {s['rows_used']}/{s['rows']} ({s['rows_used'] / max(s['rows'], 1):.3f}) | "
            f"{s['h_err_median']:.4f} / {s['h_err_max']:.4f} | {s['mean_err_median']:.4f} | "
            f"{s['out_err_median']:.4f} / {s['out_err_max']:.4f} | {s['loss_ratio_median']:.4f} / {s['loss_ratio_max']:.4f} |"
        )
        if args.per_layer:
            for r in rows:
                print(
                    f"    {r['layer']}: cols {r['cols']}, rows {r['rows_used']}/{r['rows']}, H err {r['h_err']:.4f}, "
                    f"out err {r['out_err']:.4f}, loss ratio {r['loss_ratio']:.4f}"
                )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("data", nargs="?", type=Path, help=".npz keyed by input name (a stack of feeds)")
    parser.add_argument("--fixtures", action="store_true", help="every fixture with its calib set")
    parser.add_argument(
        "--caps", nargs="+", default=["all", "4", "16", "16d", "64"], help="capture_rows values (Kd: damped dimension)"
    )
    parser.add_argument("--min-rows", type=int, default=MIN_ROWS, help="the rule's floor per sample")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="samples per capture batch (the pass uses 32)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-layer", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    caps = [parse_cap(c) for c in args.caps]
    runs: list[tuple[str, Path, Path]] = []
    if args.fixtures:
        for model in sorted((ROOT / "fixtures").glob("*.onnx")):
            calib = model.with_suffix(".calib.npz")
            if calib.exists():
                runs.append((model.stem, model, calib))
    elif args.model and args.data:
        runs.append((args.model.stem, args.model, args.data))
    else:
        parser.error("give MODEL DATA.npz or --fixtures")
    report = {"caps": args.caps, "min_rows": args.min_rows, "sparsity": args.sparsity, "models": {}}
    for name, model, data in runs:
        report["models"][name] = measure(name, model, data, args, caps)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
