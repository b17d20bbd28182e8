"""Calibrated pruning (magnitude, Wanda, SparseGPT) of a real OCR recogniser, on rendered text lines.

    .venv/bin/python tools/check_calibrated_ocr.py [--workdir DIR] [--json out.json] [--font TTF]

What it does
    1. Model: ``ch_PP-OCRv4_rec_infer.onnx`` from the ``rapidocr-onnxruntime==1.4.4`` wheel (PyPI,
       ``pip download --no-deps``): PP-OCRv4 text recognition (SVTR-LCNet, CTC head), input
       ``x`` float32 ``[N, 3, 48, W]``, output per-timestep character probabilities
       ``[N, 40, 6625]`` (W = 320); the character set is in its ``character`` metadata.
    2. Data: real English text lines rendered offline with PIL: the sentences of
       ``bench_calibrate.sentences()`` (Python standard-library docstrings and the licence texts
       under /usr/share/common-licenses, deduplicated, shuffled with a fixed seed) are cut at word
       boundaries into lines of 6-20 characters, drawn in dark ink on a light background with the
       system's TrueType fonts (size, ink, background and margins drawn from a seeded RNG).
       Preprocessing as PaddleOCR's recogniser (``resize_norm_img``): resize to height 48 keeping
       the aspect ratio (width capped at 320), RGB, ``(x/255 - 0.5)/0.5``, NCHW, zero-padded on the
       right to width 320. ``calib.npz`` holds 64 lines, ``eval.npz`` 128 others (from the other half
       of the sentences), both keyed ``x``; the texts are in ``calib.txt`` / ``eval.txt``.
    3. Pruning: magnitude, wanda and sparsegpt at 30 % and 50 % through the CLI
       (``onnxprune prune rec.onnx out.onnx --sparsity S --method M --calibration calib.npz
       --samples 64``), each reaped with ``os.wait4`` (wall time, the child's peak RSS).
    4. Fidelity to the dense model on ``eval.npz`` with ``onnxprune.evaluate``: top-1 agreement of
       the per-timestep argmax and cosine; and, as a sanity check of data and preprocessing, the
       character error rate (CTC greedy decoding, Levenshtein distance / reference length) of every
       model against the rendered text.

Needs Pillow and a TrueType font (Debian/Ubuntu: ``apt-get install fonts-dejavu-core``, or pass
``--font``). Until the CLI has ``--method`` only the magnitude runs are made. Exit status 0 when
every run succeeded.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import (
    METHODS,
    SPARSITIES,
    cli_methods,
    fidelity_runs,
    print_fidelity,
    prune_command,
    run_prune,
    sentences,
    split_corpus,
)
from sequence_metrics import ctc_greedy, levenshtein

WHEEL = "rapidocr-onnxruntime==1.4.4"
MODEL = "ch_PP-OCRv4_rec_infer.onnx"
HEIGHT, WIDTH = 48, 320
CALIB_LINES = 64
EVAL_LINES = 128
SEED = 0
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
FONT_HINT = "install one (Debian/Ubuntu: apt-get install fonts-dejavu-core) or pass --font PATH.ttf"


def fetch_model(workdir: Path) -> Path:
    target = workdir / MODEL
    if target.exists():
        return target
    workdir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(workdir.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(workdir)], check=True
        )
        wheels = sorted(workdir.glob("rapidocr_onnxruntime-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        target.write_bytes(wheel.read(f"rapidocr_onnxruntime/models/{MODEL}"))
    return target


def find_fonts(explicit: Path | None) -> list[Path]:
    if explicit is not None:
        if not explicit.is_file():
            raise SystemExit(f"--font {explicit}: no such file; {FONT_HINT}")
        return [explicit]
    fonts = sorted(
        p
        for d in FONT_DIRS
        if d.is_dir()
        for p in d.rglob("*.ttf")
        if not any(w in p.name for w in ("Bold", "Italic", "Oblique", "ExtraLight"))
    )
    if not fonts:
        raise SystemExit(f"no TrueType font found under {', '.join(map(str, FONT_DIRS))}: {FONT_HINT}")
    return fonts


def text_lines(texts: list[str], count: int, *, min_chars: int = 6, max_chars: int = 20) -> list[str]:
    """Cut sentences at word boundaries into ``count`` distinct lines of ``min_chars``-``max_chars`` characters."""
    lines: list[str] = []
    seen: set[str] = set()
    for text in texts:
        current = ""
        for word in text.split():
            candidate = f"{current} {word}".strip()
            if len(candidate) <= max_chars:
                current = candidate
                continue
            if len(current) >= min_chars and current not in seen:
                seen.add(current)
                lines.append(current)
                if len(lines) == count:
                    return lines
            current = word if len(word) <= max_chars else ""
    raise SystemExit(f"too little text for {count} lines (made {len(lines)})")


def render(line: str, font_path: Path, rng: np.random.Generator) -> Any:
    """One RGB text-line image (PIL), cropped to the ink with a random margin."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), size=int(rng.integers(26, 41)))
    left, top, right, bottom = font.getbbox(line)
    margin = int(rng.integers(3, 11))
    paper = tuple(int(v) for v in rng.integers(205, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), paper)
    ImageDraw.Draw(image).text((margin - left, margin - top), line, font=font, fill=ink)
    return image


def preprocess(image: Any, width: int = WIDTH) -> np.ndarray:
    """PaddleOCR's rec ``resize_norm_img`` for imgH=48, imgW=``width`` (320): [3, 48, width] float32."""
    from PIL import Image

    w, h = image.size
    resized_w = min(width, math.ceil(HEIGHT * w / h))
    resized = np.asarray(image.resize((resized_w, HEIGHT), Image.BILINEAR), dtype=np.float32)
    chw = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    padded = np.zeros((3, HEIGHT, width), dtype=np.float32)
    padded[:, :, :resized_w] = chw
    return padded


def make_data(workdir: Path, fonts: list[Path]) -> dict[str, list[str]]:
    corpus = sentences()
    half = len(corpus) // 2
    first, second = split_corpus(corpus, half, len(corpus) - half, seed=SEED)
    sets = {"calib": text_lines(first, CALIB_LINES), "eval": text_lines(second, EVAL_LINES)}
    rng = np.random.default_rng(SEED)
    for name, lines in sets.items():
        images = [render(line, fonts[int(rng.integers(len(fonts)))], rng) for line in lines]
        np.savez(workdir / f"{name}.npz", x=np.stack([preprocess(im) for im in images]))
        (workdir / f"{name}.txt").write_text("\n".join(lines) + "\n")
        if name == "eval":
            for index in range(3):
                images[index].save(workdir / f"eval_{index}.png")
    return sets


def character_error_rates(models: dict[str, Path], data: Path, truth: list[str]) -> dict[str, float]:
    """CER of each model's CTC greedy decoding against the rendered text (rapidocr's CTCLabelDecode)."""
    import onnx
    import onnxruntime as ort

    meta = {p.key: p.value for p in onnx.load(str(next(iter(models.values())))).metadata_props}
    characters = ["blank", *meta["character"].splitlines(), " "]
    x = np.load(data)["x"]
    rates = {}
    for name, path in models.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probs = np.concatenate([session.run(None, {"x": x[i : i + 32]})[0] for i in range(0, len(x), 32)])
        errors = 0
        for decoded, reference in zip(ctc_greedy(probs), truth, strict=True):
            errors += levenshtein("".join(characters[i] for i in decoded), reference)
        rates[name] = errors / sum(len(t) for t in truth)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune-calibrated-ocr"))
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    parser.add_argument("--font", type=Path, help="a TrueType font (default: every regular one found)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per prune run before it is killed")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    fonts = find_fonts(args.font)
    model = fetch_model(workdir)
    sets = make_data(workdir, fonts)
    calib, data = workdir / "calib.npz", workdir / "eval.npz"
    print(f"== {model.name}; {len(fonts)} fonts; calib {CALIB_LINES} lines, eval {EVAL_LINES} lines ({workdir})")
    print(f"   e.g. {' | '.join(sets['eval'][:3])}  (eval_0.png ...)")

    methods = cli_methods()
    missing = []
    if not methods:
        missing.append("`onnxprune prune --help` lists no --method/--calibration: only magnitude (plain prune) runs")
    elif unknown := [m for m in METHODS if m not in methods]:
        missing.append(f"--method does not offer {', '.join(unknown)} (it offers {', '.join(methods)})")
    report: dict[str, Any] = {"methods_in_cli": list(methods), "missing": missing, "runs": {}}
    ok = True
    outputs: dict[str, Path] = {}
    print("\n== prune (child processes, os.wait4)")
    for sparsity in SPARSITIES:
        for method in METHODS:
            name = f"{method}@{sparsity}"
            out = workdir / f"rec.{method}.{int(sparsity * 100)}.onnx"
            cmd = prune_command(
                model, out, method=method, sparsity=sparsity, calib=calib, samples=CALIB_LINES, methods=methods
            )
            if cmd is None:
                print(f"  {name:<14} MISSING (the CLI cannot run --method {method} yet)")
                report["runs"][name] = {"missing": True}
                continue
            cmd += ["--input-shape", f"x:1x3x{HEIGHT}x{WIDTH}"]
            entry = run_prune(name, cmd, args.timeout)
            ok = ok and entry["returncode"] == 0
            if entry["returncode"] == 0:
                outputs[name] = out
            report["runs"][name] = entry

    if outputs:
        print(f"\n== fidelity to the dense model on eval.npz ({EVAL_LINES} rendered lines)")
        table = fidelity_runs(model, outputs, data)
        cer = character_error_rates({"dense": model, **outputs}, data, sets["eval"])
        for name, entry in table.items():
            entry["overall"]["cer"] = cer[name]
        print_fidelity(
            table,
            [
                ("overall", "top1_agreement", "timestep top-1 agree"),
                ("overall", "cosine", "cosine"),
                ("overall", "rel_l2", "rel L2"),
                ("overall", "cer", "CER vs text"),
            ],
        )
        print(f"  dense model CER vs the rendered text: {cer['dense']:.4f}")
        report["fidelity"] = table
        report["dense_cer"] = cer["dense"]
    for line in missing:
        print(f"\nMISSING: {line}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    ok = ok and not missing
    print("\nOK" if ok else "\nNOT OK (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
