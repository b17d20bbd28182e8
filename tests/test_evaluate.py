"""The evaluator on the fixtures: every number checked against an independent computation."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.compute import count_compute
from onnxprune.errors import DataError, OptionError
from onnxprune.evaluate import EvalOptions, evaluate
from onnxprune.latency import LatencySettings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FAST = EvalOptions(latency=LatencySettings(warmup=1, repeats=3))
NO_LATENCY = EvalOptions(latency=None)


def _fixture(name: str) -> tuple[Path, Path, Path]:
    return FIXTURES / f"{name}.onnx", FIXTURES / f"{name}.test.npz", FIXTURES / f"{name}.test_labels.npy"


@pytest.fixture(scope="module")
def pruned_cnn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "cnn50.onnx"
    onnxprune.prune_file(FIXTURES / "cnn_digits.onnx", out, onnxprune.PruneConfig(sparsity=0.5))
    return out


def _ort_logits(model: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_base_and_pruned_candidate_numbers(pruned_cnn: Path):
    model, data, labels = _fixture("cnn_digits")
    result = evaluate(model, [pruned_cnn], data=data, labels=labels, options=FAST)
    base, cand = result.models
    x, y = np.load(data)["input"], np.load(labels)

    # accuracy: the same as running onnxruntime by hand
    for report, path in ((base, model), (cand, pruned_cnn)):
        logits = _ort_logits(path, x)
        assert report.accuracy["top1"] == pytest.approx(np.mean(logits.argmax(1) == y))
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        assert report.accuracy["top5"] == pytest.approx(np.mean((top5 == y[:, None]).any(1)))
        assert report.accuracy["samples"] == 450
    assert base.accuracy["top1"] == pytest.approx(0.9911, abs=1e-4)  # the manifest's accuracy

    # fidelity: by hand on the whole output
    ref, out = _ort_logits(model, x).astype(np.float64), _ort_logits(pruned_cnn, x).astype(np.float64)
    fid = cand.fidelity["outputs"]["logits"]
    assert fid["top1_agreement"] == pytest.approx(np.mean(ref.argmax(1) == out.argmax(1)))
    assert fid["rel_l2"] == pytest.approx(np.linalg.norm(out - ref) / np.linalg.norm(ref), rel=1e-6)
    assert fid["max_abs"] == pytest.approx(np.abs(out - ref).max(), rel=1e-6)
    cos = np.sum(ref * out, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert fid["cosine"] == pytest.approx(cos.mean(), rel=1e-6)
    assert base.fidelity is None

    # size: bytes on disk and deflate of the file
    for report, path in ((base, model), (cand, pruned_cnn)):
        assert report.file_bytes == path.stat().st_size
        assert report.compressed_bytes == len(zlib.compress(path.read_bytes(), 6))
    assert cand.compressed_bytes < 0.7 * base.compressed_bytes
    assert cand.parameters == base.parameters and cand.nonzeros < 0.52 * base.nonzeros

    # compute: what count_compute says at batch 1
    expected = count_compute(onnx.load(str(model)), input_shapes={"input": (1, 1, 8, 8)})
    assert base.compute.macs == expected.macs == cand.compute.macs
    assert cand.compute.nonzero_macs < 0.55 * base.compute.macs

    # latency: both measured, the ratio only for the candidate
    assert base.latency.ratio is None and cand.latency.ratio is not None
    assert cand.latency.repeats == 3

    warnings = " ".join(cand.warnings)
    assert "will not run this faster" in warnings and "compressed (as shipped)" in warnings
    assert base.warnings == []


def test_identical_copy_is_perfectly_faithful(tmp_path: Path):
    model, data, labels = _fixture("transformer_mnist1d")
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(model, copy)
    result = evaluate(model, [copy], data=data, labels=labels, options=NO_LATENCY)
    base, cand = result.models
    overall = cand.fidelity["overall"]
    assert overall["top1_agreement"] == 1.0 and overall["rel_l2"] == 0.0 and overall["max_abs"] == 0.0
    assert overall["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert cand.accuracy == base.accuracy
    assert cand.warnings == []  # nothing was pruned: nothing to warn about
    assert base.latency is None


def test_json_has_every_section_and_round_trips(tmp_path: Path, pruned_cnn: Path):
    model, data, labels = _fixture("cnn_digits")
    result = evaluate(model, [pruned_cnn], data=data, labels=labels, options=FAST)
    path = result.write_json(tmp_path / "eval.json")
    loaded = json.loads(path.read_text())
    assert loaded["tool"]["name"] == "onnxprune"
    assert loaded["environment"]["onnxruntime"] == ort.__version__
    assert loaded["data"] == {
        "kind": "npz",
        "source": str(data),
        "samples": 450,
        "batch_size": 32,
        "synthetic": False,
        "labels": str(labels),
        "output": "logits",
    }
    cand = loaded["models"][1]
    assert set(cand) >= {"size", "params", "layers", "compute", "latency", "accuracy", "fidelity", "warnings"}
    assert sum(layer["parameters"] for layer in cand["layers"]) == cand["params"]["parameters"]


def test_synthetic_data_gives_fidelity_only_and_says_so(pruned_cnn: Path):
    result = evaluate(FIXTURES / "cnn_digits.onnx", [pruned_cnn], options=EvalOptions(latency=None, samples=16))
    base, cand = result.models
    assert result.data["synthetic"] and result.data["samples"] == 16
    assert base.accuracy is None and cand.accuracy is None
    assert cand.fidelity["overall"]["cosine"] is not None
    assert any("synthetic data" in w for w in cand.warnings)


def test_readers_iterables_and_a_user_metric(pruned_cnn: Path):
    model, data, labels = _fixture("cnn_digits")
    x, y = np.load(data)["input"], np.load(labels)

    class Reader:  # onnxruntime's CalibrationDataReader protocol
        def __init__(self):
            self.batches = iter([{"input": x[i : i + 50]} for i in range(0, 450, 50)])

        def get_next(self):
            return next(self.batches, None)

    def accuracy_metric(outputs, labels):
        return float(np.mean(outputs.argmax(1) == labels))

    from_npz = evaluate(model, [pruned_cnn], data=data, labels=labels, options=NO_LATENCY)
    from_reader = evaluate(model, [pruned_cnn], data=Reader(), labels=y, options=NO_LATENCY, metric=accuracy_metric)
    batches = ({"input": x[i : i + 10]} for i in range(0, 450, 10))
    from_iterable = evaluate(model, [pruned_cnn], data=batches, labels=y, options=NO_LATENCY)
    for other in (from_reader, from_iterable):
        for a, b in zip(from_npz.models, other.models, strict=True):
            assert a.accuracy["top1"] == b.accuracy["top1"]
    metric = from_reader.models[1].accuracy["metric"]
    assert metric == {"name": "accuracy_metric", "value": pytest.approx(from_npz.models[1].accuracy["top1"])}


def test_clear_errors(tmp_path: Path):
    model, data, labels = _fixture("cnn_digits")
    with pytest.raises(OptionError, match=r"--output 'probs' names no output.*logits"):
        evaluate(model, data=data, options=EvalOptions(latency=None, output="probs"))
    short = tmp_path / "short.npy"
    np.save(short, np.load(labels)[:-1])
    with pytest.raises(DataError, match="449 labels but the data has 450 samples"):
        evaluate(model, data=data, labels=short, options=NO_LATENCY)
    wrong_name = tmp_path / "wrong.npz"
    np.savez(wrong_name, x=np.load(data)["input"])
    with pytest.raises(DataError, match="input"):
        evaluate(model, data=wrong_name, options=NO_LATENCY)
    with pytest.raises(DataError, match="takes inputs"):
        evaluate(model, [FIXTURES / "mlp_digits.onnx"], data=data, options=NO_LATENCY)
