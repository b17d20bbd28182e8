"""The mask-pruned fixtures of ``fixtures/masked`` (made by ``tools/make_masked_fixtures.py``) are what the manifest says.

A zero output channel of a Conv weight ``[out, in/g, kh, kw]`` is an all-zero ``W[c]``; of a Gemm
it is row ``c`` when ``transB=1`` (column otherwise); of a MatMul with a constant ``[in, out]``
right operand it is column ``c``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

MASKED = Path(__file__).resolve().parent.parent / "fixtures" / "masked"
MANIFEST = json.loads((MASKED / "manifest.json").read_text())["models"]
NAMES = sorted(MANIFEST)


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _zero_channels(node: onnx.NodeProto, w: np.ndarray) -> list[int]:
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b):
        rows = w.reshape(w.shape[0], -1)
    else:
        rows = w.reshape(-1, w.shape[-1]).T
    return [i for i in range(rows.shape[0]) if not np.any(rows[i])]


def _test_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    entry = MANIFEST[name]
    return np.load(MASKED / entry["test_data"])["input"], np.load(MASKED / entry["test_labels"])


def test_manifest_lists_the_three_models():
    assert NAMES == ["cnn_masked", "mlp_masked", "transformer_masked"]
    assert {p.name for p in MASKED.glob("*.onnx")} == {MANIFEST[n]["file"] for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_loads_checks_and_runs_with_any_batch(name):
    entry = MANIFEST[name]
    path = MASKED / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], "fixture changed since the manifest"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == entry["ir_version"] == 8
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    x, _ = _test_data(name)
    calib = np.load(MASKED / entry["calib_data"])["input"]
    assert calib.shape == (entry["num_calib"], *x.shape[1:])
    for batch in (1, 7):
        (logits,) = sess.run(["logits"], {"input": x[:batch]})
        assert logits.shape == (batch, 10)
        assert np.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_zero_channel_counts_match_the_initializers(name):
    entry = MANIFEST[name]
    model = onnx.load(str(MASKED / entry["file"]))
    weights = _weights(model)
    found = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in weights:
            zero = _zero_channels(node, weights[node.input[1]])
            found[node.input[1]] = (len(zero), zero)
    recorded = {layer["weight"]: (layer["zero"], layer["zero_indices"]) for layer in entry["zero_output_channels"]}
    assert recorded == found
    assert sum(count for count, _ in found.values()) > 0, "a masked fixture without any dead channel"
    gammas = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            zero = np.flatnonzero(weights[node.input[1]] == 0).tolist()
            if zero:
                gammas[node.input[1]] = zero
    assert {bn["scale"]: bn["zero_indices"] for bn in entry["zero_bn_gammas"]} == gammas
    assert entry["num_zero_bn_gammas"] == sum(len(v) for v in gammas.values())


def test_cnn_has_the_structures_and_gammas_it_promises():
    entry = MANIFEST["cnn_masked"]
    model = onnx.load(str(MASKED / entry["file"]))
    ops = [n.op_type for n in model.graph.node]
    assert {"Concat", "Add", "Flatten", "BatchNormalization"} <= set(ops)
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert max(groups) > 1
    assert entry["num_zero_bn_gammas"] == 2
    assert all(layer["zero"] > 0 for layer in entry["zero_output_channels"] if layer["weight"] != "fc2.weight")
    assert entry["accuracy_before_masking"] > 0.95


def _perturb_out_proj_rows(model: onnx.ModelProto, heads: dict[str, int], hd: int) -> onnx.ModelProto:
    """A copy with random out_proj rows for the given heads (the rows that read those heads' context)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(0)
    for layer, head in heads.items():
        tensor = next(t for t in out.graph.initializer if t.name == f"{layer}.attn.out_proj.weight_t")
        w = numpy_helper.to_array(tensor).copy()
        w[head * hd : (head + 1) * hd, :] = rng.normal(size=(hd, w.shape[1])).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    return out


def test_transformer_dead_heads_contribute_nothing():
    """The killed heads' q/k/v columns and biases are zero, and out_proj's rows for them do not matter."""
    entry = MANIFEST["transformer_masked"]
    model = onnx.load(str(MASKED / entry["file"]))
    weights = _weights(model)
    hd = entry["head_dim"]
    dead = entry["dead_heads"]
    assert len(dead) == 2
    for layer, head in dead.items():
        cols = slice(head * hd, (head + 1) * hd)
        for proj in ("q_proj", "k_proj", "v_proj"):
            w = weights[f"{layer}.attn.{proj}.weight_t"]
            assert not w[:, cols].any()
            assert not weights[f"{layer}.attn.{proj}.bias"][cols].any()
            per_head = w.reshape(w.shape[0], -1, hd).any(axis=(0, 2))
            assert per_head.sum() == per_head.size - 1, "exactly one dead head per projection"
    x, _ = _test_data("transformer_masked")
    feeds = {"input": x[:64]}
    (reference,) = _session(model).run(["logits"], feeds)
    (dead_changed,) = _session(_perturb_out_proj_rows(model, dead, hd)).run(["logits"], feeds)
    np.testing.assert_allclose(dead_changed, reference, atol=1e-5)
    live = {layer: (head + 1) % (64 // hd) for layer, head in dead.items()}
    (live_changed,) = _session(_perturb_out_proj_rows(model, live, hd)).run(["logits"], feeds)
    assert np.abs(live_changed - reference).max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_recorded_accuracy_matches_onnxruntime(name):
    entry = MANIFEST[name]
    x, y = _test_data(name)
    assert len(y) == entry["num_test"]
    (logits,) = _session(MASKED / entry["file"]).run(["logits"], {"input": x})
    accuracy = float((logits.argmax(1) == y).mean())
    assert abs(accuracy - entry["accuracy"]) < 1e-4
    assert entry["accuracy"] < entry["accuracy_before_masking"]
