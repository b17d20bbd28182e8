"""Render the ``onnxprune analyze --report`` pages in real headless Chromium and check what they say.

    .venv/bin/python tools/check_analyze_report.py [--keep DIR]

1. Runs ``onnxprune analyze`` twice on ``fixtures/cnn_digits.onnx`` with its test data: the
   per-layer analysis with ``--target-sparsity 0.6``, and the channel-group analysis
   (``--structural``) with ``--target-latency 0.7``, each with ``--report`` and ``--json``.
2. Loads each page in headless Chromium twice: ``--dump-dom`` for the text the browser laid
   out, and a screenshot (1280 px wide) decoded with Pillow.
3. Checks, against the JSON of the same run:
   - the header names the loss and the number of layers / groups (never "0 layers", never
     "loss: not stated"), the data file and its sample count, and the goal;
   - the plan section states the goal, "N of M" with M the curves analysed, and each
     planned level of the JSON's plan appears in the page (as the page rounds it);
   - no sign is doubled ("−-", "+-", "−+") and no cell reads "nan";
   - the page is not blank and its chart drew its curves: the palette's first colour covers
     pixels in the screenshot.

Prints PASS/FAIL per check; exits 1 when a check fails, 2 when Chromium is missing.
Install Chromium with:  apt-get update && apt-get install -y chromium
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_report import INSTALL, check, colour_counts, dump_text, find_browser, screenshot

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "fixtures" / "cnn_digits.onnx"
DATA = ROOT / "fixtures" / "cnn_digits.test.npz"
SAMPLES = 96
CASES = {
    "layers": ["--target-sparsity", "0.6"],
    "groups": ["--structural", "--target-latency", "0.7"],
}
#: what each case's goal reads like on the page
GOALS = {"layers": "overall sparsity 60 %", "groups": "keep 70 % of the latency"}
FIRST_COLOUR = "#2563eb"  # onnxprune.report.charts.PALETTE[0]


def analyse(case: str, folder: Path) -> tuple[Path, dict]:
    page, data = folder / f"{case}.html", folder / f"{case}.json"
    command = [sys.executable, "-m", "onnxprune", "analyze", str(MODEL), "--data", str(DATA)]
    command += ["--samples", str(SAMPLES), *CASES[case], "--report", str(page), "--json", str(data)]
    command += ["--workers", "1", "--no-cache", "-q"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return page, json.loads(data.read_text())


def check_case(case: str, browser: str, folder: Path, results: list[bool]) -> None:
    page, data = analyse(case, folder)
    text = dump_text(browser, page, folder / "profile")
    noun = "groups" if case == "groups" else "layers"
    count = len(data["curves"])
    kind = data["curves"][0]["kind"]
    header = re.search(rf"loss: {re.escape(kind)} · (method: \w+ · )?{count} {noun}", text)
    check(f"{case}: header", header is not None, f"'loss: {kind} · … {count} {noun}'", results)
    bad = [t for t in ("0 layers", "not stated", "−-", "+-", "−+", " nan ") if t in text]
    check(f"{case}: no broken text", not bad, f"found {bad}" if bad else "none of −- +- −+ nan 'not stated'", results)
    check(f"{case}: data", f"{DATA} ({SAMPLES} samples)" in text, f"'{DATA.name} ({SAMPLES} samples)'", results)
    check(f"{case}: goal", GOALS[case] in text, f"'{GOALS[case]}'", results)
    planned = sum(1 for v in data["plan"]["plan"].values() if v > 0)
    check(f"{case}: plan counts", f"planned {noun} {planned} of {count}" in text, f"'{planned} of {count}'", results)
    levels = [v for v in data["plan"]["plan"].values() if v > 0]
    shown = [v for v in levels if f"{100 * v:.3g} %".replace(".0 %", " %") in text or f"{100 * v:.1f} %" in text]
    check(f"{case}: plan levels shown", len(shown) == len(levels), f"{len(shown)} of {len(levels)} levels", results)
    png = folder / f"{case}.png"
    screenshot(browser, page, png, 1280, 3000, folder / "profile")
    with Image.open(png) as image:
        pixels = colour_counts(image, [FIRST_COLOUR, "#ffffff"])
        total = image.width * image.height
    check(f"{case}: not blank", pixels["#ffffff"] < 0.995 * total, f"{pixels['#ffffff'] / total:.1%} white", results)
    check(f"{case}: curves drawn", pixels[FIRST_COLOUR] > 200, f"{pixels[FIRST_COLOUR]} px of {FIRST_COLOUR}", results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the pages, JSON and screenshots in this folder")
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print(f"Chromium not found: {INSTALL}")
        return 2
    results: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-analyze-") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        for case in CASES:
            check_case(case, browser, folder, results)
    print(f"\n{sum(results)} of {len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
