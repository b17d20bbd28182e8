"""``onnxprune eval`` and ``prune --eval``: tables, files, and one-line errors for bad data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxprune.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CNN = FIXTURES / "cnn_digits.onnx"
DATA = FIXTURES / "cnn_digits.test.npz"
LABELS = FIXTURES / "cnn_digits.test_labels.npy"
FAST = ["--warmup", "1", "--repeats", "3"]


def _run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_eval") / "cnn50.onnx"
    result = _run("prune", CNN, out, "--sparsity", "0.5", "-q")
    assert result.exit_code == 0, result.output
    return out


def test_eval_prints_both_tables_and_writes_report_and_json(tmp_path: Path, pruned: Path):
    report, js = tmp_path / "r.html", tmp_path / "r.json"
    result = _run("eval", CNN, pruned, "--data", DATA, "--labels", LABELS, "--report", report, "--json", js, *FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "450 samples" in out
    assert re.search(r"cnn_digits\.onnx .* 99\.1%", out)  # base top-1
    assert re.search(r"cnn50\.onnx .*\d\.\d\dx \[", out)  # candidate latency ratio with its spread
    assert "will not run this faster" in out
    data = json.loads(js.read_text())
    assert [m["role"] for m in data["models"]] == ["base", "candidate"]
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "cnn50.onnx" in html


def test_prune_with_eval_evaluates_the_output_against_the_input(tmp_path: Path):
    out = tmp_path / "p.onnx"
    result = _run("prune", CNN, out, "--sparsity", "0.3", "--data", DATA, "--labels", LABELS, "--no-latency", "-q")
    assert result.exit_code == 0, result.output
    assert "pruned 5 weight tensors" in result.output
    # -q: the prune summary and one line of the evaluation, no tables
    assert re.search(r"\np\.onnx: file .*, top-1 \d+\.\d% \(-?\d\.\d pt\), cosine 0\.\d{4}\n", result.output)
    assert "latency ms" not in result.output


def test_eval_without_data_is_fidelity_only(pruned: Path):
    result = _run("eval", CNN, pruned, "--no-latency", "--samples", "8")
    assert result.exit_code == 0, result.output
    assert "synthetic data (fidelity only)" in result.output


def _error(result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


def test_error_input_names_do_not_match(tmp_path: Path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.load(DATA)["input"])
    _error(_run("eval", CNN, "--data", bad, "--no-latency"), 7, r"input.*pixels|pixels.*input")


def test_error_wrong_shape(tmp_path: Path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((10, 1, 9, 9), np.float32))
    _error(_run("eval", CNN, "--data", bad, "--no-latency"), 7, r"dim|shape|axis")


def test_error_wrong_dtype(tmp_path: Path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((10, 1, 8, 8), np.int64))
    _error(_run("eval", CNN, "--data", bad, "--no-latency"), 7, r"int64")


def test_error_empty_image_folder(tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    _error(_run("eval", CNN, "--data", folder, "--no-latency"), 7, r"no images found")


def test_error_label_count(tmp_path: Path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(449, np.int64))
    _error(_run("eval", CNN, "--data", DATA, "--labels", labels, "--no-latency"), 7, r"449 .*450")


def test_error_output_names_no_output():
    _error(_run("eval", CNN, "--data", DATA, "--output", "probs", "--no-latency"), 2, r"--output 'probs'.*logits")


def test_error_missing_model_and_unwritable_report(tmp_path: Path):
    _error(_run("eval", tmp_path / "nope.onnx", "--no-latency"), 2, r"does not exist")
    _error(_run("eval", CNN, "--report", "/proc/self/r.html", "--no-latency"), 6, r"--report")


def test_prune_eval_options_are_checked_before_pruning(tmp_path: Path):
    out = tmp_path / "p.onnx"
    result = _run("prune", CNN, out, "--sparsity", "0.5", "--eval", "--eval-batch-size", "0")
    _error(result, 2, r"batch size")
    assert not out.exists()


def test_eval_on_a_folder_of_images_with_class_subfolders(tmp_path: Path):
    """The digits test set written as 8x8 grayscale PNGs in class folders: labels come from the
    folders, pixels through --scale, and the accuracy matches the npz's up to 8-bit rounding."""
    from PIL import Image

    x, y = np.load(DATA)["input"][:120], np.load(LABELS)[:120]
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = tmp_path / "images" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    js = tmp_path / "r.json"
    result = _run("eval", CNN, "--data", tmp_path / "images", "--channels", "GRAY", "--json", js, "--no-latency")
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["data"]["kind"] == "images" and data["data"]["labels"] == "class folders"
    assert data["data"]["samples"] == 120
    logits = ort.InferenceSession(str(CNN)).run(None, {"input": x})[0]
    expected = float(np.mean(logits.argmax(1) == y))
    assert abs(data["models"][0]["accuracy"]["top1"] - expected) <= 2 / 120


# --------------------------------------------------------------------------- structural pass


MASKED = FIXTURES / "masked" / "cnn_masked.onnx"
MASKED_DATA = FIXTURES / "masked" / "cnn_masked.test.npz"


@pytest.fixture(scope="module")
def dead_removed(tmp_path_factory) -> Path:
    import onnxprune

    out = tmp_path_factory.mktemp("cli_eval_structure") / "dead.onnx"
    onnxprune.prune_file(MASKED, out, None, structure=onnxprune.StructureConfig())
    return out


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {e.key: e.value for e in onnx.load(str(path)).metadata_props}


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k"


def test_eval_prints_a_line_per_structurally_pruned_candidate(tmp_path: Path, dead_removed: Path, pruned: Path):
    js = tmp_path / "r.json"
    result = _run("eval", MASKED, dead_removed, "--data", MASKED_DATA, "--no-latency", "--json", js)
    assert result.exit_code == 0, result.output
    raw = json.loads(_metadata(dead_removed)["onnxprune.structure"])
    groups = raw["groups"].values()
    removed = sum(before - after for before, after, _, _ in groups)
    dead = sum(d for _, _, d, _ in groups)
    (params_before, params_after), (macs_before, macs_after) = raw["params"], raw["macs"]
    expected = (
        f"dead.onnx: structural pass removed {removed} channels in {len(groups)} groups "
        f"({dead} dead, {len(raw['blocked'])} blocked); params {_k(params_before)} -> {_k(params_after)}; "
        f"MACs {_k(macs_before)} -> {_k(macs_after)}; exact, max |diff| {raw['exact_max_diff']:.2g}"
    )
    lines = [line for line in result.output.splitlines() if "structural pass" in line]
    assert lines == [expected]
    assert "will not run this faster" not in result.output  # the tensors shrank
    structure = json.loads(js.read_text())["models"][1]["structure"]
    assert [g["group"] for g in structure["groups"]] == list(raw["groups"])
    # an unstructured candidate carries no such line
    plain = _run("eval", CNN, pruned, "--data", DATA, "--no-latency")
    assert plain.exit_code == 0 and "structural pass" not in plain.output


def test_eval_warns_of_malformed_structure_metadata(tmp_path: Path, dead_removed: Path):
    import onnx

    model = onnx.load(str(dead_removed))
    for entry in model.metadata_props:
        if entry.key == "onnxprune.structure":
            entry.value = '{"params": [1, 2], "groups": "oops"}'
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report = tmp_path / "r.html"
    result = _run("eval", MASKED, broken, "--data", MASKED_DATA, "--no-latency", "--report", report)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "structural pass removed" not in result.output
    assert re.search(r"note \(broken\.onnx\): the model's 'onnxprune\.structure' metadata is malformed", result.output)
    html = report.read_text()
    assert 'id="structure"' not in html and "metadata is malformed" in html  # shown as a warning


def test_a_noisy_latency_ratio_is_printed_as_such():
    from types import SimpleNamespace

    from onnxprune.cli_eval import _ratio
    from onnxprune.latency import TOO_NOISY, RatioStats

    def report(ratio):
        return SimpleNamespace(latency=SimpleNamespace(ratio=ratio), role="candidate")

    assert _ratio(report(RatioStats(1.09, 0.25, 4.04))) == f"1.09x [0.25-4.04] {TOO_NOISY}"
    assert _ratio(report(RatioStats(0.55, 0.52, 0.58))) == "0.55x [0.52-0.58]"


def test_repeats_auto_on_the_command_line(tmp_path):
    out = tmp_path / "e.json"
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "mlp_digits.onnx"
    result = CliRunner().invoke(
        main, ["eval", str(fixture), str(fixture), "--repeats", "auto", "--latency-budget", "3", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "latency (--repeats auto): " in result.output
    latency = json.loads(out.read_text())["models"][1]["latency"]
    assert latency["repeats"] >= 20 and latency["stopped"]
    bad = CliRunner().invoke(main, ["eval", str(fixture), "--repeats", "some"])
    assert bad.exit_code == 2 and "neither a number of repeats nor 'auto'" in bad.output
