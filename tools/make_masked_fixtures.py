"""Train small models, mask-prune them with ``torch.nn.utils.prune`` and export them as ONNX fixtures.

These fixtures feed the *exact* part of onnxprune's structural pass: removing dead channels from
a model that was mask-pruned in another framework. A channel is dead when its producer's output
is a constant that does not depend on the input:

* a Conv / Linear output channel whose weight slice is all zero: its output is its bias
  (``b_c``), or, when a BatchNormalization follows, ``beta_c - gamma_c * mean_c / sqrt(var_c + eps)``;
* a BatchNormalization channel with ``gamma_c = 0``: its output is ``beta_c``.

After the activation such a channel carries the constant ``a_c = act(const_c)``, which a pruner
removes by folding ``W_consumer[:, c] * a_c`` (summed over the kernel window, where padding does
not cut it) into the consumer's bias. The biases and BN shifts are kept as trained, so ``a_c`` is
not zero and the fold is really exercised. No fine-tuning after masking: the fixtures are the
masked networks exactly as ``prune.ln_structured`` + ``prune.remove`` leave them.

What it makes (all under ``fixtures/masked/``, opset 17, input ``input`` with a dynamic ``batch``
dimension, output ``logits``, IR version as the exporter writes it, like ``tools/make_fixtures.py``):

* ``cnn_masked.onnx``         digits CNN: Conv-BN-Relu stem, residual block, inception-like
                              block (1x1 and 3x3 branches joined by Concat), depthwise 3x3/s2 +
                              pointwise 1x1, Flatten -> Gemm -> Relu -> Gemm. Every Conv and the
                              hidden Linear masked with L2 ``ln_structured`` (dim 0, 30-50 %), two
                              BN gammas of one layer set to 0. BatchNormalization kept unfused.
* ``transformer_masked.onnx`` MNIST-1D tiny encoder (``TinyTransformer`` of make_fixtures.py):
                              40 % of the first FFN Linear's neurons masked per layer (bias kept),
                              and one attention head per layer killed by zeroing its q, k and v
                              weight rows and bias entries. Nothing else is touched.
* ``mlp_masked.onnx``         digits MLP 64-256-128-10: both hidden Linear layers masked at 50 %.

For each ``<name>``: ``<name>.test.npz`` (key ``input``), ``<name>.test_labels.npy``,
``<name>.calib.npz`` (256 training samples, key ``input``), plus ``manifest.json`` and
``README.md`` with the zero output channels per layer (counted from the exported ONNX
initializers), the zero BN gammas and the onnxruntime held-out accuracy before and after masking.

Deterministic: running the script twice yields byte-identical files. Run from the repository root::

    .venv/bin/python tools/make_masked_fixtures.py
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import (
    ATOL,
    N_CALIB,
    NUM_CLASSES,
    OPSET,
    SEED,
    DigitsMLP,
    ResidualBlock,
    Split,
    TinyTransformer,
    TrainConfig,
    calibration_indices,
    conv_bn,
    count_params,
    digits_split,
    export_clean,
    mnist1d_split,
    op_counts,
    set_determinism,
    sha256,
    torch_logits,
    train_classifier,
    write_npz,
)

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "masked"
MAX_TOTAL_BYTES = 2 * 1024 * 1024
MAX_PARAMS = 200_000


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class InceptionBlock(nn.Module):
    """Two branches (1x1 and 3x3 Conv-BN-Relu) joined by Concat on channels."""

    def __init__(self, c_in: int, c_1x1: int, c_3x3: int) -> None:
        super().__init__()
        self.b1 = conv_bn(c_in, c_1x1, 1)
        self.b3 = conv_bn(c_in, c_3x3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.b1(x)), F.relu(self.b3(x))], dim=1)


class MaskedCNN(nn.Module):
    """stem -> residual -> inception (Concat) -> depthwise/s2 -> pointwise -> Flatten -> Gemm x2."""

    def __init__(self, width: int = 16, c_1x1: int = 12, c_3x3: int = 12, pw_out: int = 32, hidden: int = 64) -> None:
        super().__init__()
        cat = c_1x1 + c_3x3
        self.stem = conv_bn(1, width, 3)
        self.block = ResidualBlock(width)
        self.inception = InceptionBlock(width, c_1x1, c_3x3)
        self.dw = conv_bn(cat, cat, 3, stride=2, groups=cat)
        self.pw = conv_bn(cat, pw_out, 1)
        self.fc1 = nn.Linear(pw_out * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = self.block(x)
        x = self.inception(x)
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


# --------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Where to read a layer's dead channels: its weight module, the module whose output is watched, the activation."""

    weight: str
    watched: str
    activation: str


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "none": lambda t: t,
}


# L2 ln_structured amount per module of MaskedCNN (dim 0: whole output filters / neurons).
CNN_AMOUNTS = {
    "stem.0": 0.3,
    "block.conv1": 0.4,
    "block.conv2": 0.3,
    "inception.b1.0": 0.5,
    "inception.b3.0": 0.4,
    "dw.0": 0.3,
    "pw.0": 0.5,
    "fc1": 0.4,
}
CNN_PROBES = [
    Probe("stem.0", "stem.1", "relu"),
    Probe("block.conv1", "block.bn1", "relu"),
    Probe("block.conv2", "block.bn2", "none"),  # added to the identity before the Relu
    Probe("inception.b1.0", "inception.b1.1", "relu"),
    Probe("inception.b3.0", "inception.b3.1", "relu"),
    Probe("dw.0", "dw.1", "relu"),
    Probe("pw.0", "pw.1", "relu"),
    Probe("fc1", "fc1", "relu"),
]
CNN_ZERO_GAMMA_BN = "inception.b3.1"
CNN_ZERO_GAMMAS = 2
CNN_MIN_ACCURACY = 0.95
FFN_AMOUNT = 0.4
MLP_PROBES = [Probe("fc1", "fc1", "relu"), Probe("fc2", "fc2", "relu")]
MLP_AMOUNTS = {"fc1": 0.5, "fc2": 0.5}


def ln_structured_masks(model: nn.Module, amounts: dict[str, float]) -> None:
    """Apply ``prune.ln_structured(n=2, dim=0)`` to the named modules and bake the masks in."""
    modules = dict(model.named_modules())
    for name, amount in amounts.items():
        prune.ln_structured(modules[name], "weight", amount=amount, n=2, dim=0)
        prune.remove(modules[name], "weight")


def zero_bn_gammas(model: nn.Module, bn_name: str, count: int, *, avoid: nn.Module) -> list[int]:
    """Set ``count`` gammas of a BN to 0: the smallest |gamma| among channels whose conv filter is alive."""
    bn = dict(model.named_modules())[bn_name]
    alive = avoid.weight.detach().flatten(1).abs().sum(1) > 0
    order = [int(i) for i in torch.argsort(bn.weight.detach().abs(), stable=True) if alive[i]]
    chosen = sorted(order[:count])
    with torch.no_grad():
        bn.weight[chosen] = 0.0
    return chosen


def kill_heads(model: TinyTransformer) -> dict[str, int]:
    """Per layer, zero the q/k/v weight rows and bias entries of the head with the smallest L2 norm there."""
    killed = {}
    for index, layer in enumerate(model.layers):
        attn = layer.attn
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        sq = sum(p.weight.detach().pow(2).sum(1) + p.bias.detach().pow(2) for p in projs)
        head = int(torch.argmin(sq.reshape(attn.n_heads, attn.head_dim).sum(1)))
        rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
        with torch.no_grad():
            for proj in projs:
                proj.weight[rows] = 0.0
                proj.bias[rows] = 0.0
        killed[f"layers.{index}"] = head
    return killed


# --------------------------------------------------------------------------------------------
# Inspection of the exported ONNX file
# --------------------------------------------------------------------------------------------


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def zero_output_channels(model: onnx.ModelProto) -> list[dict[str, object]]:
    """All-zero output channels of every Conv / Gemm / weight-MatMul, from the initializers.

    Conv weight ``[out, in/g, kh, kw]``: slice ``W[c]``. Gemm: row ``c`` when ``transB=1``,
    else column ``c``. MatMul with a constant right operand ``[in, out]``: column ``c``.
    """
    inits = {t.name: t for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        out_axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and _attr(node, "transB", 0)) else -1
        per_channel = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)
        zero = np.flatnonzero(~per_channel.any(axis=1))
        unit = "filters" if node.op_type == "Conv" else "neurons"
        layers.append(
            {
                "node": node.name,
                "op": node.op_type,
                "weight": node.input[1],
                "group": _attr(node, "group", 1) if node.op_type == "Conv" else None,
                "zero": len(zero),
                "total": int(w.shape[out_axis]),
                "zero_indices": [int(i) for i in zero],
                "summary": f"{node.input[1]} ({node.op_type}): {len(zero)}/{w.shape[out_axis]} zero {unit}",
            }
        )
    return layers


def zero_bn_gamma_counts(model: onnx.ModelProto) -> list[dict[str, object]]:
    """Number and indices of gamma == 0 per BatchNormalization (only BNs that have any)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        gamma = numpy_helper.to_array(inits[node.input[1]])
        zero = np.flatnonzero(gamma == 0)
        if len(zero):
            out.append({"node": node.name, "scale": node.input[1], "zero": len(zero), "zero_indices": zero.tolist()})
    return out


def dead_channel_constants(model: nn.Module, x: np.ndarray, probes: list[Probe]) -> list[dict[str, object]]:
    """Check that every dead channel is a constant and count those that are nonzero after the activation.

    Dead channels are read from the weights: all-zero slices of the weight module along dim 0,
    plus ``gamma = 0`` when the watched module is a BatchNorm. The watched output is captured
    with a forward hook; the channel axis is 1 for 4-D (NCHW) outputs and the last one otherwise.
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[p.watched].register_forward_hook(
            lambda _m, _i, out, key=p.watched: captured.__setitem__(key, out.detach())
        )
        for p in probes
    ]
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    rows = []
    for p in probes:
        weight = modules[p.weight].weight.detach()
        dead = ~weight.flatten(1).any(1)
        watched = modules[p.watched]
        if isinstance(watched, nn.BatchNorm2d):
            dead |= watched.weight.detach() == 0
        out = ACTIVATIONS[p.activation](captured[p.watched])
        per_channel = out.movedim(1 if out.dim() == 4 else -1, 0).reshape(out.shape[1 if out.dim() == 4 else -1], -1)
        values = per_channel[dead]
        assert torch.equal(values.amin(1), values.amax(1)), f"{p.weight}: a dead channel is not constant"
        rows.append(
            {
                "layer": p.weight,
                "watched": p.watched,
                "activation": p.activation,
                "dead": int(dead.sum()),
                "nonzero_after_activation": int((values[:, 0] != 0).sum()),
            }
        )
    return rows


def ort_session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    """Single-threaded CPU session on a file or an in-memory model."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def ort_accuracy(model: onnx.ModelProto | Path, split: Split) -> tuple[float, np.ndarray]:
    """onnxruntime held-out accuracy and the logits."""
    logits = ort_session(model).run(["logits"], {"input": split.x_test})[0]
    return float((logits.argmax(1) == split.y_test).mean()), logits


def check_features(model: onnx.ModelProto, name: str) -> None:
    """Assert the exported graph holds the structures the fixture is meant to exercise."""
    ops = op_counts(model)
    graph = model.graph
    if name == "cnn_masked":
        convs = [n for n in graph.node if n.op_type == "Conv"]
        assert ops.get("BatchNormalization", 0) == len(convs) == 7, ops
        assert ops.get("Concat", 0) == 1 and ops.get("Add", 0) == 1 and ops.get("Flatten", 0) == 1, ops
        assert ops.get("Gemm", 0) == 2, ops
        assert sum(_attr(n, "group", 1) > 1 for n in convs) == 1, "expected one depthwise Conv"
    elif name == "transformer_masked":
        for op in ("MatMul", "Reshape", "Transpose", "Softmax", "LayerNormalization", "Erf"):
            assert ops.get(op, 0) > 0, (op, ops)
    elif name == "mlp_masked":
        assert ops == {"Gemm": 3, "Relu": 2}, ops
    assert set(ops) <= PLAIN_OPS, set(ops) - PLAIN_OPS


PLAIN_OPS = {
    "Add",
    "BatchNormalization",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Erf",
    "Flatten",
    "Gather",
    "Gemm",
    "LayerNormalization",
    "MatMul",
    "Mul",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Shape",
    "Softmax",
    "Sqrt",
    "Transpose",
    "Unsqueeze",
}


# --------------------------------------------------------------------------------------------
# One fixture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Masked:
    """A trained network, masked in place, plus what the manifest says about it."""

    name: str
    architecture: str
    features: str
    masking: str
    split: Split
    model: nn.Module
    acc_before: float
    keep_batchnorm: bool
    extra: dict[str, object]


def export(model: nn.Module, split: Split, keep_batchnorm: bool) -> onnx.ModelProto:
    """Export with make_fixtures' clean-up (readable names, shape inference, full checker)."""
    return export_clean(model, torch.from_numpy(split.x_test[:2]), keep_batchnorm=keep_batchnorm)


def save(fx: Masked, calib_idx: np.ndarray) -> dict[str, object]:
    """Export the masked model, verify against torch, count zeros, write the data files."""
    proto = export(fx.model, fx.split, fx.keep_batchnorm)
    onnx.checker.check_model(proto, full_check=True)
    check_features(proto, fx.name)
    path = OUT / f"{fx.name}.onnx"
    onnx.save_model(proto, path)
    acc_after, logits = ort_accuracy(path, fx.split)
    max_diff = float(np.abs(logits - torch_logits(fx.model, fx.split.x_test)).max())
    assert max_diff < ATOL, f"{fx.name}: onnxruntime vs torch max abs diff {max_diff}"
    files = {
        "test_data": f"{fx.name}.test.npz",
        "test_labels": f"{fx.name}.test_labels.npy",
        "calib_data": f"{fx.name}.calib.npz",
    }
    write_npz(OUT / files["test_data"], input=fx.split.x_test.astype(np.float32))
    np.save(OUT / files["test_labels"], fx.split.y_test.astype(np.int64), allow_pickle=False)
    write_npz(OUT / files["calib_data"], input=fx.split.x_train[calib_idx].astype(np.float32))
    num_params = count_params(fx.model)
    assert num_params < MAX_PARAMS, (fx.name, num_params)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    layers = zero_output_channels(proto)
    gammas = zero_bn_gamma_counts(proto)
    ops = op_counts(proto)
    print(f"  {fx.name}.onnx: {path.stat().st_size} bytes, {num_params} params, max |ORT-torch| {max_diff:.2e}")
    print(f"    accuracy before masking {fx.acc_before:.4f}, after {acc_after:.4f} (onnxruntime)")
    print(f"    ops {ops}")
    for dead in fx.extra["dead_channel_constants"]:  # type: ignore[union-attr]
        print(
            f"    {dead['layer']}: {dead['nonzero_after_activation']}/{dead['dead']} dead channels nonzero after {dead['activation']}"
        )
    for layer in layers:
        print(f"    {layer['summary']}")
    for bn in gammas:
        print(f"    {bn['scale']} (BatchNormalization): {bn['zero']} gammas = 0 at {bn['zero_indices']}")
    return {
        "file": path.name,
        "input_name": "input",
        "input_shape": [d.dim_param or d.dim_value for d in dims],
        "input_dtype": "float32",
        "output_name": "logits",
        "ir_version": proto.ir_version,
        "num_params": num_params,
        "dataset": fx.split.dataset,
        "architecture": fx.architecture,
        "features": fx.features,
        "masking": fx.masking,
        "accuracy_before_masking": round(fx.acc_before, 4),
        "accuracy": round(acc_after, 4),
        "num_test": len(fx.split.y_test),
        "num_calib": N_CALIB,
        "max_abs_diff_vs_torch": max_diff,
        "zero_output_channels": layers,
        "zero_bn_gammas": gammas,
        "num_zero_bn_gammas": sum(int(bn["zero"]) for bn in gammas),
        **fx.extra,
        "op_types": ops,
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        **files,
    }


# --------------------------------------------------------------------------------------------
# Per-model builders
# --------------------------------------------------------------------------------------------


def build_cnn(split: Split) -> Masked:
    """Digits CNN with Concat and depthwise Conv, every Conv + fc1 masked, two BN gammas zeroed."""
    torch.manual_seed(SEED)
    model = MaskedCNN()
    train_classifier(model, split, TrainConfig(epochs=30, lr=3e-3, weight_decay=1e-4), SEED)
    acc_before, _ = ort_accuracy(export(model, split, keep_batchnorm=True), split)
    assert acc_before > CNN_MIN_ACCURACY, f"cnn_masked reaches only {acc_before:.4f} before masking"
    ln_structured_masks(model, CNN_AMOUNTS)
    modules = dict(model.named_modules())
    gammas = zero_bn_gammas(model, CNN_ZERO_GAMMA_BN, CNN_ZERO_GAMMAS, avoid=modules["inception.b3.0"])
    amounts = ", ".join(f"{k} {v:.0%}" for k, v in CNN_AMOUNTS.items())
    return Masked(
        name="cnn_masked",
        architecture="Conv-BN-Relu stem (16), residual block (16), inception block (1x1: 12 | 3x3: 12, Concat -> 24), "
        "depthwise 3x3/s2 (24) + pointwise 1x1 (32), Flatten (32 x 4x4), Gemm 512-64, Relu, Gemm 64-10",
        features="unfused BatchNormalization after every Conv, residual Add, Concat on channels, depthwise Conv "
        "(group 24), Flatten->Gemm (each channel a block of 16 Gemm inputs)",
        masking=f"prune.ln_structured(n=2, dim=0) + prune.remove on {amounts}; {CNN_ZERO_GAMMA_BN}.weight "
        f"(BN gamma) set to 0 at {gammas}; biases and BN beta/mean/var kept as trained; no fine-tuning",
        split=split,
        model=model,
        acc_before=acc_before,
        keep_batchnorm=True,
        extra={
            "zeroed_bn": {"module": CNN_ZERO_GAMMA_BN, "indices": gammas},
            "dead_channel_constants": dead_channel_constants(model, split.x_test, CNN_PROBES),
        },
    )


def build_transformer(split: Split) -> Masked:
    """TinyTransformer with 40 % of FFN neurons and one head per layer masked."""
    torch.manual_seed(SEED)
    model = TinyTransformer()
    cfg = TrainConfig(epochs=40, batch_size=64, lr=1e-3, weight_decay=1e-2, warmup_epochs=3, grad_clip=1.0)
    train_classifier(model, split, cfg, SEED)
    acc_before, _ = ort_accuracy(export(model, split, keep_batchnorm=False), split)
    ln_structured_masks(model, {f"layers.{i}.ff1": FFN_AMOUNT for i in range(len(model.layers))})
    heads = kill_heads(model)
    probes = [Probe(f"layers.{i}.ff1", f"layers.{i}.ff1", "gelu") for i in range(len(model.layers))]
    head_txt = ", ".join(f"{k} head {v}" for k, v in heads.items())
    return Masked(
        name="transformer_masked",
        architecture="10 tokens x 4 samples, Linear embed + learned positions + LN, 2 post-LN encoder layers "
        "(d=64, 4 heads of 16, FFN 256 GELU), mean-pool, Linear",
        features="MatMul+Add linears (weights stored [in, out]), separate q/k/v projections, Reshape/Transpose "
        "heads, Softmax, LayerNormalization, Erf GELU, residual Add, ReduceMean",
        masking=f"prune.ln_structured(n=2, dim=0, amount {FFN_AMOUNT}) + prune.remove on each ff1 (bias kept); "
        f"one head per layer killed (q, k, v weight rows and bias entries zeroed): {head_txt}; no fine-tuning",
        split=split,
        model=model,
        acc_before=acc_before,
        keep_batchnorm=False,
        extra={
            "dead_heads": heads,
            "head_dim": model.layers[0].attn.head_dim,
            "dead_channel_constants": dead_channel_constants(model, split.x_test, probes),
        },
    )


def build_mlp(split: Split) -> Masked:
    """Digits MLP with both hidden layers masked at 50 %."""
    torch.manual_seed(SEED)
    model = DigitsMLP()
    train_classifier(model, split, TrainConfig(epochs=40, lr=2e-3, weight_decay=1e-4), SEED)
    acc_before, _ = ort_accuracy(export(model, split, keep_batchnorm=False), split)
    ln_structured_masks(model, MLP_AMOUNTS)
    amounts = ", ".join(f"{k} {v:.0%}" for k, v in MLP_AMOUNTS.items())
    return Masked(
        name="mlp_masked",
        architecture="MLP 64-256-128-10, Relu",
        features="Gemm (transB=1) chain",
        masking=f"prune.ln_structured(n=2, dim=0) + prune.remove on {amounts}; biases kept; no fine-tuning",
        split=split,
        model=model,
        acc_before=acc_before,
        keep_batchnorm=False,
        extra={"dead_channel_constants": dead_channel_constants(model, split.x_test, MLP_PROBES)},
    )


# --------------------------------------------------------------------------------------------
# Manifest and README
# --------------------------------------------------------------------------------------------


def write_readme(entries: dict[str, dict[str, object]]) -> None:
    """fixtures/masked/README.md: one section per fixture."""
    lines = [
        "# Mask-pruned fixtures for the structural pass",
        "",
        "Generated by `.venv/bin/python tools/make_masked_fixtures.py` (deterministic; do not edit by hand).",
        "Each network was trained, then mask-pruned with `torch.nn.utils.prune.ln_structured` (L2, dim 0)",
        "and `prune.remove`, and exported without fine-tuning. Biases, BN beta and running statistics are kept",
        "as trained, so a dead channel's output is a nonzero constant that a pruner must fold into the",
        "consumers' biases. Each model `<name>` comes with `<name>.test.npz` (key `input`),",
        f"`<name>.test_labels.npy` (int64) and `<name>.calib.npz` (key `input`, {N_CALIB} training samples).",
        f"Opset {OPSET}, input `input` with a dynamic `batch` dimension, output `logits`. Accuracies are",
        "onnxruntime on the held-out split; zero counts are read from the exported ONNX initializers.",
        "`manifest.json` holds the same data plus the zero channel indices, op counts and sha256.",
        "",
        "A dead channel is an all-zero output filter / neuron of a Conv or Linear, or a BN channel with",
        "gamma = 0; its output is a constant. The 'nonzero constants' lines count the dead channels whose",
        "constant is nonzero after the activation (checked in torch on the held-out inputs); those are the",
        "folds into the consumers' biases that a structural pruner must get right. A killed attention head",
        "has zero q, k and v weights and biases, so its context is exactly 0 and nothing needs folding.",
        "",
    ]
    for e in entries.values():
        shape = "[" + ", ".join(str(d) for d in e["input_shape"]) + "]"  # type: ignore[union-attr]
        lines += [
            f"## `{e['file']}`",
            "",
            f"- architecture: {e['architecture']}",
            f"- graph features: {e['features']}",
            f"- data: {e['dataset']}, input {shape}",
            f"- parameters: {e['num_params']}",
            f"- masking: {e['masking']}",
            f"- held-out accuracy: {float(e['accuracy_before_masking']):.2%} before masking, "  # type: ignore[arg-type]
            f"{float(e['accuracy']):.2%} after",  # type: ignore[arg-type]
            f"- BN gammas = 0: {e['num_zero_bn_gammas']}",
            f"- ops: {', '.join(f'{k} {v}' for k, v in e['op_types'].items())}",  # type: ignore[union-attr]
            "- nonzero constants among the dead channels (layer -> watched output (activation): nonzero / dead):",
            *(
                f"  - {d['layer']} -> {d['watched']} ({d['activation']}): {d['nonzero_after_activation']}/{d['dead']}"
                for d in e["dead_channel_constants"]  # type: ignore[union-attr]
            ),
            "- all-zero output channels per layer:",
            *(f"  - {layer['summary']}" for layer in e["zero_output_channels"]),  # type: ignore[union-attr]
            "",
        ]
    (OUT / "README.md").write_text("\n".join(lines))


def main() -> None:
    """Build, mask, export and check every fixture, then write manifest.json and README.md."""
    t0 = time.perf_counter()
    set_determinism()
    OUT.mkdir(parents=True, exist_ok=True)
    digits = digits_split()
    mnist1d = mnist1d_split()
    builders: list[tuple[str, Callable[[], Masked]]] = [
        ("cnn_masked", lambda: build_cnn(digits.reshaped((1, 8, 8)))),
        ("transformer_masked", lambda: build_transformer(mnist1d)),
        ("mlp_masked", lambda: build_mlp(digits)),
    ]
    manifest: dict[str, dict[str, object]] = {}
    for label, build in builders:
        print(f"[{time.perf_counter() - t0:6.1f}s] training {label}")
        fx = build()
        calib_idx = calibration_indices(len(fx.split.y_train), SEED)
        manifest[fx.name] = save(fx, calib_idx)
    text = json.dumps({"opset": OPSET, "models": manifest}, indent=2)
    (OUT / "manifest.json").write_text(text + "\n")
    write_readme(manifest)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    assert total < MAX_TOTAL_BYTES, f"fixtures/masked holds {total} bytes"
    print(f"\nDone in {time.perf_counter() - t0:.1f}s, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
