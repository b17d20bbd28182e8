"""Render an onnxprune HTML report in real headless Chromium and check that its plots show.

    .venv/bin/python tools/check_report.py [--keep shot.png] [--html report.html] [--sample]

1. Builds an evaluation result. When ``onnxprune.evaluate`` is importable and works, it
   prunes ``fixtures/cnn_digits.onnx`` at 0.3 / 0.5 / 0.7 with ``onnxprune.prune_file`` into
   a temporary folder, and once more with the structural pass (30 % of each channel group),
   and evaluates the five models on ``fixtures/cnn_digits.test.npz`` with its labels.
   Otherwise (or with ``--sample``) it uses the realistic sample result bundled below (the
   same network; base + 3 unstructured candidates + 1 structural).
2. Writes the report with ``onnxprune.report.write_report``.
3. Screenshots the whole page with headless Chromium (1280 px wide), and each plot alone
   at its own size, then decodes the PNGs with Pillow and checks that:
   - the page is not blank (enough non-background pixels, dark text pixels present);
   - the "Channels removed (structural pass)" section is there, with a chart per
     structural candidate (``plot-structure-<n>``), checked like every plot below;
   - the bar colours of the palette cover a reasonable number of pixels on the page;
   - in each plot, every bar colour covers at least 60 % (and at most 130 %) of the area
     its ``<rect class="bar">`` elements and legend swatches declare: the bars were
     really drawn, at the size the SVG says.

Prints PASS/FAIL per check; exits 1 when a check fails, 2 when Chromium is missing.
Install Chromium with:  apt-get update && apt-get install -y chromium
"""

from __future__ import annotations

import argparse
import copy
import html.parser
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from onnxprune.report import write_report  # noqa: E402
from onnxprune.report.charts import PALETTE  # noqa: E402

WIDTH = 1280
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "apt-get update && apt-get install -y chromium"

# cnn_digits: (weight, node, op, shape, MACs per inference, prunable)
_LAYERS = (
    ("stem.0.weight", "/stem/stem.0/Conv", "Conv", [24, 1, 3, 3], 13824, False),
    ("block.conv1.weight", "/block/conv1/Conv", "Conv", [24, 24, 3, 3], 331776, True),
    ("block.conv2.weight", "/block/conv2/Conv", "Conv", [24, 24, 3, 3], 331776, True),
    ("dw.0.weight", "/dw/dw.0/Conv", "Conv", [24, 1, 3, 3], 3456, False),
    ("pw.0.weight", "/pw/pw.0/Conv", "Conv", [32, 24, 1, 1], 12288, True),
    ("fc1.weight", "/fc1/Gemm", "Gemm", [64, 512], 32768, True),
    ("fc2.weight", "/fc2/Gemm", "Gemm", [10, 64], 640, True),
)
# candidate sparsity -> (file, compressed, sparse bytes, latency ms, ratio p10/median/p90, top1, top5, cosine, agreement)
_SAMPLE_RUNS = {
    0.0: (187241, 168410, 187020, 0.412, None, 0.9911, 1.0, None, None),
    0.3: (187241, 137220, 152880, 0.405, (0.93, 0.983, 1.04), 0.9911, 1.0, 0.99962, 1.0),
    0.5: (187241, 112930, 110310, 0.407, (0.94, 0.991, 1.05), 0.9889, 1.0, 0.99710, 0.9933),
    0.7: (187241, 86060, 67720, 0.402, (0.92, 0.976, 1.03), 0.9644, 0.9978, 0.97320, 0.9644),
}


def sample_result() -> dict:
    """A realistic evaluation result for cnn_digits and three pruned copies (bundled sample)."""
    models = []
    for sparsity, run in _SAMPLE_RUNS.items():
        file_bytes, compressed, sparse, median, ratio, top1, top5, cosine, agreement = run
        layers, nodes = [], []
        for name, node, op, shape, macs, prunable in _LAYERS:
            params = 1
            for dim in shape:
                params *= dim
            nonzeros = params - (int(sparsity * params) if prunable else 0)
            layers.append(
                {
                    "name": name,
                    "scope": "",
                    "shape": shape,
                    "dtype": "float32",
                    "parameters": params,
                    "nonzeros": nonzeros,
                    "sparsity": 1 - nonzeros / params,
                    "dense_bytes": 4 * params,
                    "coo_bytes": nonzeros * (4 + 8 * len(shape)),
                }
            )
            nodes.append(
                {
                    "node": node,
                    "op_type": op,
                    "scope": "",
                    "macs": macs,
                    "nonzero_macs": round(macs * nonzeros / params),
                    "weight": name,
                    "density": nonzeros / params,
                    "counted": True,
                    "reason": None,
                }
            )
        parameters = 45306
        nonzeros = parameters - sum(la["parameters"] - la["nonzeros"] for la in layers)
        macs = sum(n["macs"] for n in nodes)
        nonzero_macs = sum(n["nonzero_macs"] for n in nodes)
        name = "cnn_digits.onnx" if sparsity == 0 else f"cnn_digits.p{int(sparsity * 100)}.onnx"
        models.append(
            {
                "name": name,
                "path": f"fixtures/{name}" if sparsity == 0 else f"out/{name}",
                "role": "base" if sparsity == 0 else "candidate",
                "size": {
                    "file_bytes": file_bytes,
                    "compressed_bytes": compressed,
                    "sparse_bytes": sparse,
                    "dense_weight_bytes": 4 * parameters,
                },
                "params": {"parameters": parameters, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / parameters},
                "layers": layers,
                "compute": {
                    "macs": macs,
                    "nonzero_macs": nonzero_macs,
                    "flops": 2 * macs,
                    "nonzero_flops": 2 * nonzero_macs,
                    "other": {"BatchNormalization": 9984, "Relu": 8128, "Add": 3456},
                    "nodes": nodes,
                    "uncounted": [],
                    "notes": ["BatchNormalization counted as element-wise (not folded)"],
                },
                "latency": {
                    "median_ms": median,
                    "p90_ms": round(median * 1.22, 3),
                    "min_ms": round(median * 0.91, 3),
                    "mean_ms": round(median * 1.05, 3),
                    "repeats": 50,
                    "ratio": None if ratio is None else {"p10": ratio[0], "median": ratio[1], "p90": ratio[2]},
                    "peak_memory_bytes": None,
                },
                "accuracy": {"top1": top1, "top5": top5, "samples": 450, "metric": None},
                "fidelity": None
                if cosine is None
                else {
                    "outputs": {
                        "logits": {"top1_agreement": agreement, "cosine": cosine, "rel_l2": 0.01, "max_abs": 0.2}
                    },
                    "overall": {"top1_agreement": agreement, "cosine": cosine, "rel_l2": 0.01, "max_abs": 0.2},
                },
                "warnings": []
                if sparsity == 0
                else [
                    "onnxruntime will not run this faster: its zeros are unstructured and every tensor keeps its "
                    "dense shape."
                ],
            }
        )
    models[-1]["warnings"].append("top-1 accuracy dropped 2.7 points against the base: check it on your own data.")
    models.append(_sample_structural(models[0]))
    return {
        "tool": {"name": "onnxprune", "version": "0.1.0"},
        "created": "2026-11-21T10:00:00Z",
        "environment": {
            "cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz",
            "cores": 2,
            "platform": "Linux-6.1-x86_64-with-glibc2.36",
            "python": "3.11.7",
            "onnxruntime": "1.31.1",
            "numpy": "2.4.6",
            "providers": ["CPUExecutionProvider"],
            "threads": 0,
        },
        "data": {
            "kind": "npz",
            "source": "fixtures/cnn_digits.test.npz",
            "samples": 450,
            "batch_size": 64,
            "synthetic": False,
            "labels": "fixtures/cnn_digits.test_labels.npy",
            "output": "logits",
        },
        "settings": {"warmup": 5, "repeats": 50, "input_shapes": {"input": [1, 1, 8, 8]}},
        "models": models,
    }


# cnn_digits with 30 % of each channel group removed (onnxprune.StructureConfig(amount=0.3)):
# group -> (channels before, after, dead, parameters removed)
_SAMPLE_GROUPS = {
    "/block/conv1/Conv": (24, 17, 0, 3059),
    "/fc1/Gemm": (64, 45, 0, 9937),
    "/pw/pw.0/Conv": (32, 23, 0, 9477),
    "/stem/stem.0/Conv": (24, 17, 0, 3465),
}


def _sample_structural(base: dict) -> dict:
    """The base's entry, pruned by the structural pass: fewer parameters and MACs, and its provenance."""
    model = copy.deepcopy(base)
    model.update(name="cnn_digits.s30.onnx", path="out/cnn_digits.s30.onnx", role="candidate")
    model["size"] = {"file_bytes": 96410, "compressed_bytes": 87370, "sparse_bytes": 92220, "dense_weight_bytes": 92220}
    model["params"] = {"parameters": 23055, "nonzeros": 23055, "sparsity": 0.0}
    model["compute"] = {**model["compute"], "macs": 368434, "nonzero_macs": 368434, "flops": 736868}
    model["compute"]["nonzero_flops"] = 736868
    model["latency"] = {**model["latency"], "median_ms": 0.301, "ratio": {"p10": 0.69, "median": 0.731, "p90": 0.8}}
    model["accuracy"] = {"top1": 0.98, "top5": 1.0, "samples": 450, "metric": None}
    model["fidelity"] = {
        "outputs": {"logits": {"top1_agreement": 0.982, "cosine": 0.9801, "rel_l2": 0.2588, "max_abs": 1.9}},
        "overall": {"top1_agreement": 0.982, "cosine": 0.9801, "rel_l2": 0.2588, "max_abs": 1.9},
    }
    model["warnings"] = ["top-1 accuracy drops by 1.1 points (99.1% -> 98.0%)"]
    model["structure"] = {
        "params": {"before": 45562, "after": 23055},
        "macs": {"before": 726528, "after": 368434},
        "groups": [
            {"group": g, "channels_before": b, "channels_after": a, "dead_channels": d, "params_removed": r}
            for g, (b, a, d, r) in _SAMPLE_GROUPS.items()
        ],
        "blocked": [{"group": "/fc2/Gemm", "reason": "'logits' is a graph output (its shape must not change)"}],
        "exact_max_diff": None,
        "options": {"amount": 0.3, "scope": "local", "importance": "auto", "refit": True},
    }
    return model


def real_result(workdir: Path) -> tuple[dict | None, str]:
    """Prune cnn_digits three times and evaluate with onnxprune.evaluate, if it exists and works."""
    try:  # the module behind the onnxprune.evaluate function
        evaluation = importlib.import_module("onnxprune.evaluation")
    except ImportError:
        return None, "onnxprune.evaluation is not available"
    import onnxprune

    base = ROOT / "fixtures" / "cnn_digits.onnx"
    candidates = []
    try:
        for sparsity in (0.3, 0.5, 0.7):
            out = workdir / f"cnn_digits.p{int(sparsity * 100)}.onnx"
            onnxprune.prune_file(base, out, onnxprune.PruneConfig(sparsity=sparsity))
            candidates.append(out)
        structural = workdir / "cnn_digits.s30.onnx"
        onnxprune.prune_file(base, structural, None, structure=onnxprune.StructureConfig(amount=0.3))
        candidates.append(structural)
        result = evaluation.evaluate(
            base,
            candidates,
            data=ROOT / "fixtures" / "cnn_digits.test.npz",
            labels=ROOT / "fixtures" / "cnn_digits.test_labels.npy",
        )
        data = result.to_dict() if hasattr(result, "to_dict") else result
        json.dumps(data)  # the contract: JSON-able
        return data, "evaluated with onnxprune.evaluation"
    except Exception as exc:  # a tool: report and fall back, never hide why
        return None, f"onnxprune.evaluation did not work here ({type(exc).__name__}: {exc})"


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_text(browser: str, page: Path, profile: Path) -> str:
    """The page's text as Chromium laid it out (``--dump-dom``, tags removed)."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--dump-dom"]
    done = subprocess.run([*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    text = re.sub(r"<(style|title)[^>]*>.*?</\1>", " ", done.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def screenshot(browser: str, page: Path, png: Path, width: int, height: int, profile: Path) -> None:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def colour_counts(image: Image.Image, colours: list[str], tolerance: int = 8) -> dict[str, int]:
    """Pixels within ``tolerance`` (per channel) of each colour."""
    rgb = image.convert("RGB")
    histogram = rgb.getcolors(maxcolors=1 << 24) or []
    counts = dict.fromkeys(colours, 0)
    targets = [(c, _rgb(c)) for c in colours]
    for count, pixel in histogram:
        for colour, (r, g, b) in targets:
            if abs(pixel[0] - r) <= tolerance and abs(pixel[1] - g) <= tolerance and abs(pixel[2] - b) <= tolerance:
                counts[colour] += count
                break
    return counts


class _Figures(html.parser.HTMLParser):
    """Figure ids and, per figure, the declared area of each bar/swatch colour and the svg size."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.area: dict[str, dict[str, float]] = {}
        self.size: dict[str, tuple[float, float]] = {}
        self.marks: dict[str, list[str]] = {}  # point charts (Pareto): the colour of each marked point

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and (a.get("id") or "").startswith("plot-"):
            self.current = a["id"]
            self.area[self.current] = {}
        elif self.current and tag == "svg":
            self.size[self.current] = (float(a["width"]), float(a["height"]))
        elif self.current and tag == "circle" and a.get("class") == "mark":
            self.marks.setdefault(self.current, []).append((a.get("fill") or "").lower())
        elif self.current and tag == "rect" and (a.get("class") in ("bar", "swatch")):
            fill = (a.get("fill") or "").lower()
            area = max(float(a["width"]) - 1, 0) * max(float(a["height"]) - 1, 0)
            self.area[self.current][fill] = self.area[self.current].get(fill, 0.0) + area

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.current = None


def check(name: str, ok: bool, detail: str, results: list[bool]) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    results.append(ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the full-page screenshot at this path (PNG)")
    parser.add_argument("--html", type=Path, help="keep the report at this path")
    parser.add_argument("--sample", action="store_true", help="use the bundled sample even if evaluate works")
    parser.add_argument("--height", type=int, default=4000, help="browser window height (default 4000)")
    args = parser.parse_args()

    browser = find_browser()
    if browser is None:
        print(f"FAIL  chromium: no headless browser found ({', '.join(BROWSERS)}); install it with: {INSTALL}")
        return 2

    results: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="check_report.") as tmp:
        work = Path(tmp)
        result, how = (None, "--sample given") if args.sample else real_result(work)
        if result is None:
            result = sample_result()
            how = f"bundled sample ({how})"
        print(f"result: {how}; {len(result.get('models') or [])} models")
        if args.html:
            args.html.parent.mkdir(parents=True, exist_ok=True)
        report = write_report(copy.deepcopy(result), args.html or work / "report.html")
        text = report.read_text(encoding="utf-8")
        check("self-contained", not re.search(r"https?://|\bsrc\s*=|<script", text), f"{len(text):,} bytes", results)

        shot = work / "page.png"
        screenshot(browser, report, shot, WIDTH, args.height, work / "profile")
        page = Image.open(shot)
        grey = page.convert("L")
        histogram = grey.histogram()
        background = max(range(256), key=lambda v: histogram[v])
        total = grey.width * grey.height
        ink = sum(n for v, n in enumerate(histogram) if abs(v - background) > 16)
        dark = sum(histogram[:100])
        check("page not blank", ink > 0.05 * total, f"{100 * ink / total:.1f} % non-background pixels", results)
        check("text rendered", dark > 3000, f"{dark:,} dark pixels", results)
        laid_out = dump_text(browser, report, work / "profile")
        names = [str(m.get("name")) for m in result.get("models") or []]
        from onnxprune.report.numbers import fmt_percent

        numbers = [fmt_percent(m["accuracy"]["top1"]) for m in result.get("models") or [] if m.get("accuracy")]
        missing = [t for t in (*names, *numbers) if t not in laid_out]
        check("numbers present", not missing, f"{len(names)} names, {len(numbers)} top-1 values" + (
            f"; missing {missing}" if missing else ""), results)  # fmt: skip
        broken = [t for t in ("−-", "+-", "−+", " nan ", "None") if t in laid_out]
        check("no broken text", not broken, f"found {broken}" if broken else "none of −- +- −+ nan None", results)
        counts = colour_counts(page, list(PALETTE))
        shown = [c for c, n in counts.items() if n >= 300]
        check(
            "plot colours on the page",
            len(shown) >= 5,
            ", ".join(f"{c} {n:,}px" for c, n in counts.items()),
            results,
        )

        figures = _Figures()
        figures.feed(text)
        check("all plots present", len(figures.area) >= 6, ", ".join(figures.area), results)
        structural = [m for m in result.get("models") or [] if isinstance(m, dict) and m.get("structure")]
        if structural:
            charts = [f for f in figures.area if f.startswith("plot-structure-")]
            check(
                "structural pass section",
                'id="structure"' in text and "Channels removed (structural pass)" in text
                and len(charts) == len(structural),
                f"{len(structural)} structural candidate(s), charts: {', '.join(charts) or 'none'}",
                results,
            )  # fmt: skip
        style = re.search(r"<style>(.*?)</style>", text, re.S)
        for plot_id, areas in figures.area.items():
            if plot_id not in figures.size:
                check(plot_id, False, "no svg (not measured)", results)
                continue
            match = re.search(rf'<figure id="{plot_id}"[^>]*>(.*?)</figure>', text, re.S)
            width, height = figures.size[plot_id]
            single = work / f"{plot_id}.html"
            single.write_text(
                f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style.group(1) if style else ''}"
                "body{margin:0;background:#fff} svg{display:block}</style></head>"
                f"<body>{match.group(1) if match else ''}</body></html>",
                encoding="utf-8",
            )
            png = work / f"{plot_id}.png"
            screenshot(browser, single, png, int(width) + 40, int(height) + 120, work / "profile")
            # the plot's own page has no figure CSS: the svg renders at its declared size
            marks = figures.marks.get(plot_id, [])
            if marks and not areas:  # a point chart: every point's colour is on the screen
                seen = colour_counts(Image.open(png), marks, tolerance=24)
                missing = [c for c in marks if seen[c] < 10]
                detail = f"{len(marks) - len(missing)} of {len(marks)} points seen" + (
                    f", missing {missing}" if missing else ""
                )
                check(f"{plot_id} points drawn", not missing, detail, results)
                continue
            seen = colour_counts(Image.open(png), list(areas))
            ratios = {c: seen[c] / areas[c] for c in areas if areas[c] > 0}
            ok = bool(ratios) and all(0.6 <= r <= 1.3 for r in ratios.values())
            detail = ", ".join(f"{c} {seen[c]:,}/{areas[c]:,.0f}px" for c in areas)
            check(f"{plot_id} bars drawn", ok, detail, results)
        if args.keep:
            args.keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, args.keep)
            for png in work.glob("plot-*.png"):
                shutil.copyfile(png, args.keep.with_name(f"{args.keep.stem}.{png.name}"))
            print(f"screenshot kept at {args.keep}")
    failed = results.count(False)
    print(f"{'FAIL' if failed else 'PASS'}: {len(results) - failed}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
