"""Benchmark: latency against FLOPs of the structural pass (whole channels removed).

    .venv/bin/python tools/bench_structural.py [--quick] [--models det,minilm] [--amounts 0.2,0.3,0.5]
        [--round-to 1,8] [--workdir DIR] [--minilm-dir DIR] [--ocr-dir DIR] [--json out.json] [--reports DIR]

Definitions (per candidate against its dense base, every number from ``onnxprune.evaluate``)
    macs_ratio     dense MACs of the candidate / the base's (Conv, Gemm, MatMul ...), at batch 1 and
                   the evaluation data's sample shape.
    latency_ratio  onnxruntime latency at batch 1: the median over interleaved repeats of the paired
                   ratio t_candidate / t_base of the same repeat, and its 10th-90th percentiles
                   (:mod:`onnxprune.latency`; all candidates of a model are timed in one run, at
                   least ``--repeats`` repeats and ``--min-time`` seconds).
    efficiency     ``(1 - latency_ratio) / (1 - macs_ratio)``: the share of the FLOPs reduction that
                   shows up as a latency reduction (1: latency falls as fast as the MACs, 0: flat,
                   < 0: slower). Its range is the same formula at the p90 and p10 ratios.
    target         efficiency >= 0.7 for a CNN at batch 1 (rapidocr det at 1x3x640x640, cnn_digits)
                   and for a transformer encoder at sequence length 128 (MiniLM), judged on the
                   calibrated (refit) candidates. Where the MACs fall by less than 5 % (round_to
                   can leave small groups whole) the efficiency is timing noise over a tiny
                   denominator: shown, marked n/a, not judged. A model meets the target when, for
                   some ``round_to``, every judged amount has efficiency >= 0.7.

Models (``--models``; ``--quick``: the fixtures only)
    cnn_digits, cnn_digits_const, mlp_digits, mlp_digits_fp16, transformer_mnist1d, lstm_mnist1d
        ``fixtures/*.onnx``: held-out top-1 on ``*.test.npz`` / ``*.test_labels.npy``; calibration on
        the 256 samples of ``*.calib.npz``. Each amount is pruned twice: with calibration (channels
        ranked by the output error they cause at their consumers, consumers refitted by least
        squares; "refit" in the table) and without (``calibration=None``: L2 importance, no
        refit; "L2"), so the table shows what the reconstruction recovers.
    minilm
        all-MiniLM-L6-v2 (6-layer BERT encoder, hidden 384) exported by ``tools/bench_calibrate.py``
        (its preparation runs in a child process unless ``minilm.onnx``, ``calib.npz`` and
        ``eval.npz`` exist in ``--minilm-dir``): real sentences packed into 128 tokens; 64
        calibration samples; fidelity (cosine, relative L2: overall and of the sentence
        embedding) on 128 held-out samples; latency at batch 1, sequence length 128.
    det, rec, cls
        the three models of the ``rapidocr-onnxruntime==1.4.4`` wheel (found in, or downloaded to,
        ``--ocr-dir``), fed as rapidocr feeds them (RGB, ``(x / 255 - 0.5) / 0.5``, NCHW). Text is
        rendered offline as ``tools/check_calibrated_ocr.py`` does (its sentences, fonts and
        ``render``); calibration and evaluation come from disjoint halves of the sentences.
        rec (1x3x48x320): that tool's ``calib.npz`` (64 lines) and ``eval.npz`` (128 lines), plus
        the character error rate of CTC greedy decoding against the rendered text.
        det (1x3x640x640): pages of rendered lines (calibration 16, evaluation 8), plus the IoU
        of each candidate's text mask (probability > 0.3, rapidocr's threshold) with the dense
        model's. cls (1x3x48x192): rendered lines, every other one turned by 180 degrees
        (calibration 64, evaluation 128 with labels: top-1 of the 0/180 classifier).
        ``--data-free-ocr``: det and cls on onnxprune's data-free procedural images instead
        (normalised the same way; seed 0 to calibrate, seed 1 to evaluate; fidelity only). On
        det that calibration is not representative: the model sees no text, and the pruned
        models' text maps on real pages collapse (cosine ~0.03 at 30 %, against 0.99 calibrated
        on text pages).

Pruning: ``onnxprune.prune_file(model, out, None, structure=StructureConfig(amount=a, round_to=r),
calibration=..., input_shapes=...)`` for every amount ``a`` (fraction of each channel group's
units; ``--scope global``: of all groups' parameters, least important first) and ``round_to``
``r`` (1 and 8; 1, 8 and 16 for MiniLM: channel counts that are not multiples of 8 are slow in
onnxruntime's kernels), timed in this process (wall seconds; the
calibration set is built once per model, outside the timing). ``prune_file`` validates its
output (onnx checker, onnxruntime, finite outputs). Blocked channel groups are counted by reason
(names in quotes replaced by '…'); the JSON lists each with its full reason.

Output: a table per model as it goes, a summary table and the targets at the end; ``--json`` every
number; ``--reports DIR`` the evaluator's HTML report (and JSON) per model. Exit status 0 when every
prune and evaluation succeeded and every target checked was met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_calibrate
import check_calibrated_ocr

import onnxprune
from onnxprune.console import table

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ("cnn_digits", "cnn_digits_const", "mlp_digits", "mlp_digits_fp16", "transformer_mnist1d", "lstm_mnist1d")
OCR_MODELS = {
    "det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640)),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
}
MODELS = (*FIXTURES, "minilm", "det", "rec", "cls")
AMOUNTS = (0.2, 0.3, 0.5)
TARGET = 0.7
TARGETS = {"cnn_digits": "CNN at batch 1", "det": "CNN at batch 1", "minilm": "transformer encoder at seq 128"}
FIXTURE_CALIB = 256
MINILM_CALIB, MINILM_EVAL = 64, 128
#: rapidocr samples for (calibration, evaluation): det pages, rec and cls text lines
RENDERED = {"det": (16, 8), "rec": (64, 128), "cls": (64, 128)}
#: rapidocr's threshold of the det probability map (config.yaml, Det.thresh)
DET_THRESH = 0.3
#: below this MACs reduction the efficiency is mostly timing noise: shown, not judged
MIN_MACS_DROP = 0.05


@dataclass(frozen=True)
class Subject:
    """One model to benchmark and what it is measured on."""

    name: str
    family: str  # "cnn" | "mlp" | "transformer"
    model: Path
    calibration: Any  # an onnxprune Dataset
    data: Any  # evaluation data: an .npz path or a dict of arrays
    data_note: str
    labels: Path | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    round_to: tuple[int, ...] = (1, 8)
    without_refit: bool = False
    eval_samples: int | None = None
    cer: tuple[Path, tuple[str, ...]] | None = None  # rec: (eval.npz, the rendered texts)
    det_maps: bool = False  # det: IoU of the binarised probability maps against the dense model's
    key_output: str | None = None  # an output whose fidelity is shown besides the overall one


@dataclass(frozen=True)
class Variant:
    amount: float
    round_to: int
    refit: bool

    def file_name(self, model: str) -> str:
        return f"{model}.s{round(self.amount * 100)}.r{self.round_to}{'' if self.refit else '.l2'}.onnx"


# ---------------------------------------------------------------- models and data


def fixture_subject(name: str) -> Subject:
    model = ROOT / "fixtures" / f"{name}.onnx"
    calib = onnxprune.calibration_data(model, ROOT / "fixtures" / f"{name}.calib.npz", samples=FIXTURE_CALIB)
    return Subject(
        name=name,
        family="cnn" if name.startswith("cnn") else "mlp" if name.startswith("mlp") else "transformer",
        model=model,
        calibration=calib,
        data=ROOT / "fixtures" / f"{name}.test.npz",
        data_note=f"fixtures/{name}.test.npz with labels; calibration {FIXTURE_CALIB} samples of {name}.calib.npz",
        labels=ROOT / "fixtures" / f"{name}.test_labels.npy",
        without_refit=True,
    )


def minilm_subject(folder: Path) -> Subject:
    model, calib, data = folder / "minilm.onnx", folder / "calib.npz", folder / "eval.npz"
    if not (model.exists() and calib.exists() and data.exists()):
        print(f"  preparing MiniLM in {folder} (tools/bench_calibrate.py --prepare-only)")
        cmd = [sys.executable, str(ROOT / "tools" / "bench_calibrate.py"), "--workdir", str(folder), "--prepare-only"]
        prep = bench_calibrate.measure(cmd)
        if prep.returncode != 0:
            tail = (prep.stderr.strip() or prep.stdout.strip()).splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"MiniLM preparation failed: {tail[0]}")
    seq = bench_calibrate.SEQ_LEN
    shapes = dict.fromkeys(("input_ids", "attention_mask", "token_type_ids"), (1, seq))
    return Subject(
        name="minilm",
        family="transformer",
        model=model,
        calibration=onnxprune.calibration_data(model, calib, samples=MINILM_CALIB),
        data=data,
        data_note=f"eval.npz: {MINILM_EVAL} held-out texts of {seq} tokens; calibration {MINILM_CALIB} samples",
        input_shapes=shapes,
        round_to=(1, 8, 16),
        eval_samples=MINILM_EVAL,
        key_output="sentence_embedding",
    )


def rapidocr_model(folder: Path, file_name: str) -> Path:
    """A model of the rapidocr wheel, extracted into ``folder`` (the wheel downloaded there if missing)."""
    target = folder / file_name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                check_calibrated_ocr.WHEEL,
                "-d",
                str(folder),
            ],
            check=True,
        )
        wheels = sorted(folder.glob("rapidocr_onnxruntime-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        target.write_bytes(wheel.read(f"rapidocr_onnxruntime/models/{file_name}"))
    return target


def procedural_images(model: Path, shape: tuple[int, ...], *, samples: int, seed: int) -> dict[str, np.ndarray]:
    """onnxprune's data-free images (in [0, 1]) normalised as rapidocr feeds its models."""
    dataset = onnxprune.calibration_data(model, data_free=True, samples=samples, input_shapes={"x": shape}, seed=seed)
    x = np.concatenate([feeds["x"] for feeds in dataset.batches(samples)])
    return {"x": ((x - 0.5) / 0.5).astype(np.float32)}


def normalise(image: Any) -> np.ndarray:
    """An RGB PIL image as rapidocr feeds it: CHW, ``(x / 255 - 0.5) / 0.5``."""
    return (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5


def text_pages(texts: list[str], count: int, fonts: list[Path], *, seed: int, size: int = 640) -> np.ndarray:
    """``count`` pages of rendered text lines (``check_calibrated_ocr.render``), [count, 3, size, size]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = iter(check_calibrated_ocr.text_lines(texts, 16 * count, min_chars=10, max_chars=40))
    pages = []
    for _ in range(count):
        page = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(205, 256, size=3)))
        y = int(rng.integers(4, 32))
        while True:
            line = check_calibrated_ocr.render(next(lines), fonts[int(rng.integers(len(fonts)))], rng)
            if line.width > size - 8:
                line = line.resize((size - 8, max(1, round(line.height * (size - 8) / line.width))))
            if y + line.height > size:
                break
            page.paste(line, (int(rng.integers(0, size - line.width + 1)), y))
            y += line.height + int(rng.integers(2, 32))
        pages.append(normalise(page))
    return np.stack(pages).astype(np.float32)


def cls_lines(texts: list[str], fonts: list[Path], *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rendered lines preprocessed as rapidocr's classifier (height 48, width <= 192, zero-padded),
    every other one turned by 180 degrees: (images, labels) with label 1 = '180'."""
    from PIL import Image

    _, _, height, width = OCR_MODELS["cls"][1]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, text in enumerate(texts):
        image = check_calibrated_ocr.render(text, fonts[int(rng.integers(len(fonts)))], rng)
        if index % 2:
            image = image.rotate(180)
        resized_w = min(width, math.ceil(height * image.width / image.height))
        padded = np.zeros((3, height, width), dtype=np.float32)
        padded[:, :, :resized_w] = normalise(image.resize((resized_w, height), Image.BILINEAR))
        images.append(padded)
        labels.append(index % 2)
    return np.stack(images), np.array(labels, dtype=np.int64)


def rendered_data(name: str, folder: Path) -> dict[str, Path]:
    """det pages or cls lines (calibration and evaluation, from disjoint halves of the text), cached in ``folder``."""
    n_calib, n_eval = RENDERED[name]
    paths = {"calib": folder / f"{name}_calib.npz", "eval": folder / f"{name}_eval.npz"}
    if name == "cls":
        paths["labels"] = folder / "cls_eval_labels.npy"
    if all(p.exists() for p in paths.values()):
        return paths
    print(f"  rendering {name} data into {folder}")
    fonts = check_calibrated_ocr.find_fonts(None)
    corpus = bench_calibrate.sentences()
    halves = bench_calibrate.split_corpus(corpus, len(corpus) // 2, len(corpus) - len(corpus) // 2)
    for (part, count), texts, seed in zip((("calib", n_calib), ("eval", n_eval)), halves, (0, 1), strict=True):
        if name == "det":
            np.savez(paths[part], x=text_pages(texts, count, fonts, seed=seed))
            continue
        images, labels = cls_lines(check_calibrated_ocr.text_lines(texts, count), fonts, seed=seed)
        np.savez(paths[part], x=images)
        if part == "eval":
            np.save(paths["labels"], labels)
    return paths


def ocr_subject(name: str, folder: Path, *, data_free: bool) -> Subject:
    file_name, shape = OCR_MODELS[name]
    model = rapidocr_model(folder, file_name)
    shapes = {"x": shape}
    if name == "rec":
        calib, data, texts = folder / "calib.npz", folder / "eval.npz", folder / "eval.txt"
        if not (calib.exists() and data.exists() and texts.exists()):
            print(f"  rendering text lines into {folder} (tools/check_calibrated_ocr.py)")
            check_calibrated_ocr.make_data(folder, check_calibrated_ocr.find_fonts(None))
        truth = tuple(texts.read_text().splitlines())
        return Subject(
            name=name,
            family="cnn",
            model=model,
            calibration=onnxprune.calibration_data(model, calib, samples=RENDERED["rec"][0]),
            data=data,
            data_note=f"{len(truth)} rendered text lines (eval.npz); calibration {RENDERED['rec'][0]} other lines",
            input_shapes=shapes,
            cer=(data, truth),
        )
    n_calib, n_eval = RENDERED[name]
    size = "x".join(map(str, shape[1:]))
    if data_free:
        calib = procedural_images(model, shape, samples=n_calib, seed=0)
        return Subject(
            name=name,
            family="cnn",
            model=model,
            calibration=onnxprune.calibration_data(model, calib, samples=n_calib),
            data=procedural_images(model, shape, samples=n_eval, seed=1),
            data_note=(
                f"{n_eval} procedural images {size} (data-free generator, seed 1), (x-0.5)/0.5; "
                f"calibration {n_calib} more (seed 0): fidelity only"
            ),
            input_shapes=shapes,
        )
    paths = rendered_data(name, folder)
    what = "pages of rendered text lines" if name == "det" else "rendered text lines, every other one upside down"
    return Subject(
        name=name,
        family="cnn",
        model=model,
        calibration=onnxprune.calibration_data(model, paths["calib"], samples=n_calib),
        data=paths["eval"],
        data_note=f"{n_eval} {what} ({size}); calibration {n_calib} others from other sentences",
        labels=paths.get("labels"),
        input_shapes=shapes,
        det_maps=name == "det",
    )


def make_subject(name: str, args: argparse.Namespace) -> Subject:
    if name in FIXTURES:
        subject = fixture_subject(name)
    elif name == "minilm":
        subject = minilm_subject(args.minilm_dir)
    else:
        subject = ocr_subject(name, args.ocr_dir, data_free=args.data_free_ocr)
    if args.round_to:
        subject = replace(subject, round_to=tuple(args.round_to))
    return subject


# ---------------------------------------------------------------- measuring


def reason_kind(reason: str) -> str:
    """A blocking reason without the names in it, so that reasons can be counted."""
    return re.sub(r"'[^']*'", "'…'", reason)


def blocked_summary(structure: Any) -> dict[str, Any]:
    groups = [(g.name, g.blocked) for g in structure.blocked]
    kinds = Counter(reason_kind(reason) for _, why in groups for reason in why.split("; "))
    return {
        "groups": len(structure.groups),
        "blocked": len(groups),
        "reasons": dict(kinds.most_common()),
        "list": [{"group": name, "reason": why} for name, why in groups],
    }


def prune_variant(subject: Subject, variant: Variant, out_dir: Path, *, scope: str) -> dict[str, Any]:
    out = out_dir / variant.file_name(subject.name)
    out.unlink(missing_ok=True)
    entry: dict[str, Any] = {"amount": variant.amount, "round_to": variant.round_to, "refit": variant.refit}
    start = time.perf_counter()
    try:
        run = onnxprune.prune_file(
            subject.model,
            out,
            None,
            structure=onnxprune.StructureConfig(amount=variant.amount, round_to=variant.round_to, scope=scope),
            calibration=subject.calibration if variant.refit else None,
            input_shapes=subject.input_shapes or None,
        )
    except onnxprune.OnnxPruneError as exc:
        entry.update(error=f"{type(exc).__name__}: {exc}", prune_s=time.perf_counter() - start)
        return entry
    entry["prune_s"] = time.perf_counter() - start
    structure = run.structure
    validation = run.validation
    entry.update(
        path=str(out) if run.saved is not None else None,
        valid=None if validation is None else validation.checker == "passed" and validation.outputs_finite,
        validation=None if validation is None else validation.__dict__,
        units_removed=structure.removed_units,
        groups_changed=sum(1 for g in structure.groups if g.removed),
        pass_params=[structure.params_before, structure.params_after],
        pass_macs=[structure.macs_before, structure.macs_after],
        refits=len(structure.refits),
        notes=list(structure.notes),
        blocked=blocked_summary(structure),
    )
    if run.saved is None:
        entry["error"] = "nothing was removed (no output written)"
    return entry


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def efficiency(latency_ratio: float | None, macs_ratio: float | None) -> float | None:
    if latency_ratio is None or macs_ratio is None or macs_ratio >= 1.0:
        return None
    return (1.0 - latency_ratio) / (1.0 - macs_ratio)


def measured(base: Any, cand: Any) -> dict[str, Any]:
    """The numbers of one candidate against the base, from the evaluator's reports."""
    macs = ratio(cand.compute.macs, base.compute.macs) if cand.compute and base.compute else None
    lat = cand.latency.ratio if cand.latency is not None else None
    fid = (cand.fidelity or {}).get("overall") or {}
    outputs = (cand.fidelity or {}).get("outputs") or {}
    row = {
        "params_ratio": ratio(cand.parameters, base.parameters),
        "macs_ratio": macs,
        "macs": [base.compute.macs if base.compute else None, cand.compute.macs if cand.compute else None],
        "latency_ms": [base.latency.median_ms, cand.latency.median_ms] if cand.latency and base.latency else None,
        "latency_ratio": lat.to_dict() if lat is not None else None,
        "efficiency": None,
        "top1": [(base.accuracy or {}).get("top1"), (cand.accuracy or {}).get("top1")],
        "cosine": fid.get("cosine"),
        "rel_l2": fid.get("rel_l2"),
        "top1_agreement": fid.get("top1_agreement"),
        "per_output": {name: {"cosine": o.get("cosine"), "rel_l2": o.get("rel_l2")} for name, o in outputs.items()},
        "warnings": list(cand.warnings),
    }
    if lat is not None:
        row["efficiency"] = {
            "median": efficiency(lat.median, macs),
            "low": efficiency(lat.p90, macs),
            "high": efficiency(lat.p10, macs),
        }
    return row


def bench_subject(subject: Subject, amounts: Sequence[float], args: argparse.Namespace) -> dict[str, Any]:
    out_dir = args.workdir / "out" / subject.name
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = [
        Variant(a, r, refit)
        for r in subject.round_to
        for a in amounts
        for refit in ((True, False) if subject.without_refit else (True,))
    ]
    result: dict[str, Any] = {
        "model": str(subject.model),
        "family": subject.family,
        "data": subject.data_note,
        "key_output": subject.key_output,
    }
    runs = []
    for variant in variants:
        entry = prune_variant(subject, variant, out_dir, scope=args.scope)
        runs.append(entry)
        label = Path(variant.file_name(subject.name)).stem
        if "error" in entry:
            print(f"  prune {label:<34} FAILED ({entry['prune_s']:.1f}s): {entry['error']}")
        else:
            p0, p1 = entry["pass_params"]
            print(
                f"  prune {label:<34} {entry['prune_s']:6.1f}s  {entry['units_removed']:5d} units from "
                f"{entry['groups_changed']:3d} groups  params {p1 / p0:.3f}x  valid {entry['valid']}"
            )
    first = next((r for r in runs if "blocked" in r), None)
    result["blocked"] = first["blocked"] if first else None
    done = [r for r in runs if r.get("path")]
    result["runs"] = runs
    if not done:
        return result
    settings = onnxprune.LatencySettings(
        warmup=args.warmup, repeats=args.repeats, threads=args.threads, min_time_s=args.min_time
    )
    options = onnxprune.EvalOptions(
        samples=subject.eval_samples, input_shapes=dict(subject.input_shapes), latency=settings, compressed=False
    )
    start = time.perf_counter()
    try:
        report = onnxprune.evaluate(
            subject.model, [r["path"] for r in done], data=subject.data, labels=subject.labels, options=options
        )
    except onnxprune.OnnxPruneError as exc:
        result["eval_error"] = f"{type(exc).__name__}: {exc}"
        print(f"  evaluation FAILED: {result['eval_error']}")
        return result
    result["eval_s"] = time.perf_counter() - start
    result["latency_settings"] = report.settings
    result["base_latency_ms"] = report.base.latency.median_ms if report.base.latency else None
    for entry, cand in zip(done, report.candidates, strict=True):
        entry.update(measured(report.base, cand))
    if subject.cer is not None:
        data, truth = subject.cer
        named = {"dense": subject.model, **{Path(r["path"]).name: Path(r["path"]) for r in done}}
        rates = check_calibrated_ocr.character_error_rates(named, data, list(truth))
        result["base_cer"] = rates["dense"]
        for entry in done:
            entry["cer"] = rates[Path(entry["path"]).name]
    if subject.det_maps:
        named = {"dense": subject.model, **{Path(r["path"]).name: Path(r["path"]) for r in done}}
        ious, result["base_text_fraction"] = det_map_iou(named, Path(subject.data))
        for entry in done:
            entry["map_iou"] = ious[Path(entry["path"]).name]
    if args.reports is not None:
        from onnxprune.report import write_report

        args.reports.mkdir(parents=True, exist_ok=True)
        write_report(report.to_dict(), args.reports / f"{subject.name}.html")
        report.write_json(args.reports / f"{subject.name}.json")
    return result


def det_map_iou(models: dict[str, Path], data: Path) -> tuple[dict[str, float], float]:
    """IoU of each model's text mask (probability > DET_THRESH) with the dense model's on the evaluation
    pages, and the fraction of pixels the dense model calls text."""
    import onnxruntime as ort

    x = np.load(data)["x"]
    masks = {}
    for name, path in models.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        maps = [session.run(None, {"x": x[i : i + 2]})[0] for i in range(0, len(x), 2)]
        masks[name] = np.concatenate(maps) > DET_THRESH
    dense = masks.pop("dense")
    ious = {name: float((m & dense).sum() / max(int((m | dense).sum()), 1)) for name, m in masks.items()}
    return ious, float(dense.mean())


# ---------------------------------------------------------------- printing


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def quality(entry: dict[str, Any], result: dict[str, Any]) -> str:
    top1 = entry.get("top1") or [None, None]
    parts = []
    if top1[1] is not None:
        parts.append(f"top1 {100 * top1[1]:.1f}% (dense {100 * top1[0]:.1f}%)")
    parts.append(f"cos {_f(entry.get('cosine'), '.4f')} rL2 {_f(entry.get('rel_l2'), '.3f')}")
    key = result.get("key_output")
    if key and key in (entry.get("per_output") or {}):
        out = entry["per_output"][key]
        parts.append(f"{key} cos {_f(out['cosine'], '.4f')} rL2 {_f(out['rel_l2'], '.3f')}")
    if entry.get("cer") is not None:
        parts.append(f"CER {entry['cer']:.3f} (dense {result['base_cer']:.3f})")
    if entry.get("map_iou") is not None:
        parts.append(f"text-map IoU {entry['map_iou']:.3f}")
    return ", ".join(parts)


def judged(entry: dict[str, Any]) -> str:
    """PASS / fail against the target, n/a where the MACs barely changed (or were not measured)."""
    eff, macs = (entry.get("efficiency") or {}).get("median"), entry.get("macs_ratio")
    if eff is None or macs is None or 1.0 - macs < MIN_MACS_DROP:
        return "n/a"
    return "PASS" if eff >= TARGET else "fail"


def rows_of(name: str, result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for entry in result.get("runs", []):
        lat, eff = entry.get("latency_ratio"), entry.get("efficiency")
        target = judged(entry) if name in TARGETS and entry.get("refit") else ""
        rows.append(
            [
                name,
                f"{entry['amount']:.2f}",
                str(entry["round_to"]),
                "refit" if entry["refit"] else "L2",
                _f(entry.get("prune_s"), ".1f"),
                _f(entry.get("params_ratio"), ".3f"),
                _f(entry.get("macs_ratio"), ".3f"),
                "-" if not entry.get("latency_ms") else f"{entry['latency_ms'][1]:.3f}",
                "-" if not lat else f"{lat['median']:.3f} [{lat['p10']:.2f}-{lat['p90']:.2f}]",
                "-"
                if not eff or eff["median"] is None
                else f"{eff['median']:.2f} [{eff['low']:.2f}-{eff['high']:.2f}]",
                target,
                quality(entry, result) if "macs_ratio" in entry else f"FAILED: {entry.get('error', '?')}"[:90],
            ]
        )
    return rows


HEADER = [
    "model",
    "amount",
    "round",
    "rank",
    "prune s",
    "params",
    "MACs",
    "ms",
    "latency [p10-p90]",
    "eff [range]",
    ">=0.7",
    "quality (vs dense)",
]


def print_model(name: str, result: dict[str, Any]) -> None:
    if result.get("base_latency_ms") is not None:
        print(f"  dense latency {result['base_latency_ms']:.3f} ms at batch 1; evaluation {result['eval_s']:.0f}s")
    print(table(rows_of(name, result), HEADER, right={1, 2, 4, 5, 6, 7, 8, 9}))
    blocked = result.get("blocked")
    if blocked:
        print(f"  blocked groups: {blocked['blocked']} of {blocked['groups']}")
        for reason, n in blocked["reasons"].items():
            print(f"    {n:4d}  {reason}")


def target_summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per target model and round_to: the efficiency at each amount (with refit) and whether all are >= TARGET."""
    summary: dict[str, Any] = {}
    for name, what in TARGETS.items():
        if name not in results:
            continue
        per_round: dict[int, dict[str, Any]] = {}
        for entry in results[name].get("runs", []):
            if not entry["refit"]:
                continue
            slot = per_round.setdefault(entry["round_to"], {"efficiency": {}, "verdict": {}})
            slot["efficiency"][entry["amount"]] = (entry.get("efficiency") or {}).get("median")
            slot["verdict"][entry["amount"]] = judged(entry)
        for slot in per_round.values():
            verdicts = [v for v in slot["verdict"].values() if v != "n/a"]
            slot["met"] = bool(verdicts) and all(v == "PASS" for v in verdicts)
        summary[name] = {"what": what, "round_to": per_round, "met": any(s["met"] for s in per_round.values())}
    return summary


# ---------------------------------------------------------------- main


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def names(text: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=names, default=list(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="the fixtures only")
    parser.add_argument("--amounts", type=floats, default=list(AMOUNTS), help="fractions of each channel group")
    parser.add_argument("--round-to", type=ints, help="round_to values for every model (default 1,8; MiniLM 1,8,16)")
    parser.add_argument(
        "--scope",
        choices=("local", "global"),
        default="local",
        help="local: every group loses the amount; global: the amount of all groups' parameters, least important first",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune-bench-structural"))
    parser.add_argument("--minilm-dir", type=Path, help="MiniLM files of bench_calibrate (default WORKDIR/minilm)")
    parser.add_argument("--ocr-dir", type=Path, help="rapidocr wheel, models, text lines (default WORKDIR/ocr)")
    parser.add_argument(
        "--data-free-ocr",
        action="store_true",
        help="det and cls: data-free procedural images instead of rendered text (fidelity only)",
    )
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    parser.add_argument("--reports", type=Path, help="write the evaluator's HTML report (and JSON) per model here")
    parser.add_argument("--repeats", type=int, default=50, help="interleaved latency repeats (at least)")
    parser.add_argument("--min-time", type=float, default=10.0, help="seconds of timing per model set (at least)")
    parser.add_argument("--warmup", type=int, default=10, help="latency warm-up runs per model")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.minilm_dir = (args.minilm_dir or args.workdir / "minilm").resolve()
    args.ocr_dir = (args.ocr_dir or args.workdir / "ocr").resolve()
    models = list(FIXTURES) if args.quick else args.models
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    print(
        f"onnxprune {onnxprune.__version__}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"amounts {', '.join(map(str, args.amounts))} ({args.scope}); latency: batch 1, threads {args.threads or 'default'}, "
        f"{args.repeats}+ interleaved repeats (>= {args.min_time:g}s)"
    )
    results: dict[str, dict[str, Any]] = {}
    ok = True
    for name in models:
        print(f"\n== {name}")
        start = time.perf_counter()
        try:
            subject = make_subject(name, args)
        except (onnxprune.OnnxPruneError, RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            print(f"  preparation FAILED: {type(exc).__name__}: {exc}")
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            ok = False
            continue
        print(f"  {subject.model.name}: {subject.data_note} (ready in {time.perf_counter() - start:.1f}s)")
        result = bench_subject(subject, args.amounts, args)
        result["seconds"] = time.perf_counter() - start
        results[name] = result
        ok = ok and "eval_error" not in result and all("error" not in r for r in result["runs"])
        print_model(name, result)

    print(f"\n== summary (efficiency = (1 - latency ratio) / (1 - MACs ratio); target >= {TARGET})")
    print(
        table(
            [row for name, result in results.items() for row in rows_of(name, result)], HEADER, {1, 2, 4, 5, 6, 7, 8, 9}
        )
    )
    targets = target_summary(results)
    print("\n== targets")
    for name, entry in targets.items():
        for r, slot in entry["round_to"].items():
            effs = ", ".join(
                f"{a:g}: {_f(e, '.2f')}{' (n/a)' if slot['verdict'][a] == 'n/a' else ''}"
                for a, e in slot["efficiency"].items()
            )
            print(f"  {name:<8} round_to {r:<3} {effs}  -> {'met' if slot['met'] else 'NOT met'}")
        print(f"  {name:<8} {entry['what']}: {'MET' if entry['met'] else 'NOT MET'}")
        ok = ok and entry["met"]
    total = time.perf_counter() - started
    print(f"\ntotal {total / 60:.1f} min")
    if args.json:
        report = {
            "cpus": os.cpu_count(),
            "amounts": args.amounts,
            "scope": args.scope,
            "latency": {"repeats": args.repeats, "min_time_s": args.min_time, "threads": args.threads},
            "seconds": total,
            "models": results,
            "targets": targets,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"JSON: {args.json}")
    print("OK" if ok else "NOT OK (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
