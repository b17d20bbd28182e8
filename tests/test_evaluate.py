"""The evaluator on the fixtures: every number checked against an independent computation."""

from __future__ import annotations

import json
import logging
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
from onnxprune.evaluation import EvalOptions, evaluate
from onnxprune.latency import LatencySettings
from onnxprune.provenance import STRUCTURE_KEY, STRUCTURE_OPTIONS_KEY, read_structure

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MASKED = FIXTURES / "masked"
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
    assert "onnxprune prune IN OUT --structured --sparsity 0.3" in warnings and "--dead-channels" in warnings
    assert "not yet available" not in warnings
    assert base.structure is None and cand.structure is None  # no structural pass ran
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
    assert (loaded["tool"], loaded["schema"], loaded["command"]) == ("onnxprune", 1, "eval")
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
    with pytest.raises(OptionError, match=r"^output 'probs' names no output.*logits"):
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


# --------------------------------------------------------------------------- structural provenance


@pytest.fixture(scope="module")
def dead_removed(tmp_path_factory) -> Path:
    """The mask-pruned CNN with its dead channels removed by the structural pass (exact)."""
    out = tmp_path_factory.mktemp("eval_structure") / "dead.onnx"
    onnxprune.prune_file(MASKED / "cnn_masked.onnx", out, None, structure=onnxprune.StructureConfig())
    return out


def _out_channels(path: Path) -> dict[str, int]:
    """Output channels of every Conv / Gemm node, by node name."""
    model = onnx.load(str(path))
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            out[node.name] = dims[node.input[1]][0]
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            out[node.name] = dims[node.input[1]][0 if trans_b else 1]
    return out


def _with_metadata(source: Path, target: Path, **values: str) -> Path:
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in values:
            entry.value = values[entry.key]
    onnx.save(model, str(target))
    return target


def test_structural_provenance_is_read_and_agrees_with_the_models(dead_removed: Path):
    base_path = MASKED / "cnn_masked.onnx"
    result = evaluate(base_path, [dead_removed], data=MASKED / "cnn_masked.test.npz", options=NO_LATENCY)
    base, cand = result.models
    assert base.structure is None and base.warnings == []
    s = cand.structure
    # parameters and MACs before/after: the evaluator's own counts of the two files
    assert s["params"] == {"before": base.parameters, "after": cand.parameters}
    assert s["macs"] == {"before": base.compute.macs, "after": cand.compute.macs}
    assert cand.parameters < base.parameters
    # every changed group: its node's output channels in the base and in the candidate
    before, after = _out_channels(base_path), _out_channels(dead_removed)
    raw = json.loads({e.key: e.value for e in onnx.load(str(dead_removed)).metadata_props}[STRUCTURE_KEY])
    assert [g["group"] for g in s["groups"]] == list(raw["groups"]) and s["groups"]
    for g in s["groups"]:
        assert before[g["group"]] == g["channels_before"] > g["channels_after"] == after[g["group"]]
        # a dead-channels-only run removes dead channels only
        assert g["dead_channels"] == g["channels_before"] - g["channels_after"]
        assert g["params_removed"] > 0
    assert sum(g["params_removed"] for g in s["groups"]) >= base.parameters - cand.parameters
    assert s["blocked"] and all(b["group"] and b["reason"] for b in s["blocked"])
    # exact: the pass's own check and the evaluator's fidelity agree that outputs did not move
    assert s["exact_max_diff"] is not None and s["exact_max_diff"] < 1e-4
    assert cand.fidelity["overall"]["max_abs"] < 1e-4 and cand.fidelity["overall"]["top1_agreement"] == 1.0
    assert s["options"]["dead_channels"] is True and s["options"]["amount"] is None
    # smaller tensors, not zeros inside dense ones: no "will not run this faster" warning
    assert not any("will not run this faster" in w for w in cand.warnings)
    loaded = json.loads(json.dumps(result.to_dict()))
    assert loaded["models"][0]["structure"] is None
    assert loaded["models"][1]["structure"] == s


def test_malformed_structure_metadata_is_a_warning_not_a_crash(tmp_path: Path, dead_removed: Path, caplog):
    caplog.set_level(logging.INFO, logger="onnxprune.evaluation")
    broken = _with_metadata(dead_removed, tmp_path / "broken.onnx", **{STRUCTURE_KEY: "{not json"})
    result = evaluate(MASKED / "cnn_masked.onnx", [broken], data=MASKED / "cnn_masked.test.npz", options=NO_LATENCY)
    cand = result.models[1]
    assert cand.structure is None
    assert any(f"'{STRUCTURE_KEY}' metadata is malformed" in w for w in cand.warnings)
    assert cand.fidelity["overall"]["max_abs"] < 1e-4  # everything else was still measured
    assert result.to_dict()["models"][1]["structure"] is None
    assert any("broken.onnx" in r.getMessage() and "malformed" in r.getMessage() for r in caplog.records)


def _meta(**values: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        "[1, 2]",
        '{"groups": {}}',
        '{"params": [1], "groups": {}}',
        '{"params": [3, 2], "groups": []}',
        '{"params": [3, 2], "groups": {"g": [4, 2, "x", 1]}}',
        '{"params": [3, 2], "groups": {"g": [4, 2, 0]}}',
        '{"params": [3, -2], "groups": {}}',
        '{"params": [3, 2], "groups": {}, "blocked": ["g"]}',
        '{"params": [3, 2], "groups": {}, "exact_max_diff": NaN}',
        '{"params": [3, 2], "groups": {}, "macs": 7}',
    ],
)
def test_read_structure_rejects_malformed_values_with_one_line(value: str):
    structure, problem = read_structure(_meta(**{STRUCTURE_KEY: value}))
    assert structure is None
    assert problem.startswith(f"the model's '{STRUCTURE_KEY}' metadata is malformed (") and "\n" not in problem


def test_read_structure_minimal_absent_and_bad_options():
    assert read_structure(_meta()) == (None, None)
    assert read_structure(_meta(**{STRUCTURE_OPTIONS_KEY: '{"amount": 0.3}'})) == (None, None)
    structure, problem = read_structure(_meta(**{STRUCTURE_KEY: '{"params": [3, 2], "groups": {"g": [4, 1, 2, 9]}}'}))
    assert problem is None
    assert structure == {
        "params": {"before": 3, "after": 2},
        "macs": {"before": None, "after": None},
        "groups": [{"group": "g", "channels_before": 4, "channels_after": 1, "dead_channels": 2, "params_removed": 9}],
        "blocked": [],
        "exact_max_diff": None,
        "options": None,
    }
    good = '{"params": [3, 2], "groups": {}, "blocked": [["h", "why"]], "exact_max_diff": 0}'
    structure, problem = read_structure(_meta(**{STRUCTURE_KEY: good, STRUCTURE_OPTIONS_KEY: "[oops"}))
    assert structure["blocked"] == [{"group": "h", "reason": "why"}] and structure["exact_max_diff"] == 0.0
    assert structure["options"] is None and STRUCTURE_OPTIONS_KEY in problem


def test_a_slower_int8_candidate_is_called_slower_in_plain_words(tmp_path: Path):
    """int8 that runs slower than the float base is said so, with the measured ratio; faster, or
    within noise, says nothing. The rule is fed latency ratios: timings belong in benchmarks."""
    import dataclasses

    from onnxprune.evaluation import candidate_warnings
    from onnxprune.latency import LatencyStats, RatioStats
    from onnxprune.quantize import quantize_file

    source = FIXTURES / "mlp_digits.onnx"
    quantized = quantize_file(source, tmp_path / "q.onnx")  # MatMulInteger: every onnxruntime has it
    report = evaluate(source, [quantized.saved.path], options=EvalOptions(latency=None, compressed=False))
    base, cand = report.models

    def timed(median: float, p10: float, p90: float):
        latency = LatencyStats(1.0, 1.0, 1.0, 1.0, 3, (1.0,) * 3, RatioStats(median, p10, p90), None)
        return dataclasses.replace(cand, latency=latency, warnings=[])

    slower = [n for n in candidate_warnings(base, timed(6.12, 5.8, 6.4), False) if n.startswith("int8 made it slower")]
    assert len(slower) == 1 and "6.12x the time of the float base" in slower[0] and "5.80-6.40x" in slower[0]
    for median, p10 in ((0.7, 0.6), (1.02, 0.98), (1.2, 0.97)):  # faster, flat, or not consistently slower
        assert not any("int8" in n for n in candidate_warnings(base, timed(median, p10, 1.3), False))
    same = dataclasses.replace(base, latency=timed(6.12, 5.8, 6.4).latency)  # a float candidate: no int8 note
    assert not any("int8" in n for n in candidate_warnings(base, same, False))
