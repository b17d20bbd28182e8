"""Train small real models and export them as ONNX test fixtures for onnxprune.

What it makes (all under ``fixtures/``, opset 17, input ``input`` with a dynamic
``batch`` dimension, output ``logits``):

* ``cnn_digits.onnx``          CNN on scikit-learn digits; Conv + unfused BatchNormalization,
                               a residual block, a depthwise + pointwise pair, Flatten -> Gemm.
* ``mlp_digits.onnx``          MLP 64-256-128-10 (Gemm + Relu) on digits.
* ``transformer_mnist1d.onnx`` tiny BERT-like encoder (hand-written attention) on MNIST-1D.
* ``lstm_mnist1d.onnx``        single-layer LSTM classifier on MNIST-1D.
* ``cnn_digits_const.onnx``    cnn_digits with every initializer turned into a Constant node.
* ``mlp_digits_fp16.onnx``     mlp_digits with float16 weights, each followed by Cast(to=FLOAT).
* ``stateful_mnist1d.onnx``    streaming GRU classifier on MNIST-1D with explicit state and a scalar
                               input: inputs ``x`` [batch, seq, 1], ``h0`` [1, batch, 32] (batch on
                               axis 1) and ``gain`` (rank 0); outputs ``logits`` and ``h_n``.
* ``crnn_digits.onnx``         CNN + 2-layer bidirectional LSTM text-line recognizer (CTC) on lines of
                               2-5 scikit-learn digits rendered side by side: input ``input``
                               [batch, 1, 12, width], output ``logits`` [batch, width / 2, 11] (CTC
                               log-probabilities; class 0 the blank, class d + 1 the digit d).
* ``if_digits.onnx``           mlp_digits' trained MLP twice, once in each branch of an ``If`` whose
                               condition is the batch's mean energy ``mean(input²)`` above a threshold
                               (every weight a branch-local initializer); built from
                               ``fixtures/mlp_digits.onnx``, no training.

For every model ``<name>`` it also writes ``<name>.test.npz`` (key ``input``, held-out split),
``<name>.test_labels.npy`` (int64 labels) and ``<name>.calib.npz`` (key ``input``, 256 samples
from the training split), plus ``manifest.json`` and ``README.md``. ``stateful_mnist1d`` has three
inputs, so its data is stored differently (see ``save_stream_fixture``): its ``.test.npz`` and
``.calib.npz`` (128 samples) are stacks of complete batch-1 feeds keyed by input name, and the
first 32 test samples also come as an ONNX test-data folder (``stateful_mnist1d.heldout/``), a
folder of per-sample .npz files (``stateful_mnist1d.samples/``) and
``stateful_mnist1d.heldout_labels.npy``. ``crnn_digits`` is a sequence model: its labels are
``[N, 5]`` int64 digit sequences padded with -1, its "accuracy" the sequence accuracy of greedy
CTC decoding (``tools/sequence_metrics.py``), and its ``.calib.npz`` holds 128 samples.
``if_digits`` reuses mlp_digits' data: the same test samples and labels, and the same 256
calibration samples reordered in blocks of 32 that take one branch each (see ``build_if``).

Everything is deterministic (fixed seeds, single thread, deterministic algorithms, fixed zip
timestamps): running the script twice yields byte-identical files. Accuracies in the manifest
are measured with onnxruntime on the exported files.

Requirements: torch, onnx, onnxruntime, numpy, scikit-learn and ``mnist1d`` (PyPI; the data set
is generated procedurally, nothing is downloaded). torch is only needed by this script.

Run from the repository root::

    .venv/bin/python tools/make_fixtures.py
    .venv/bin/python tools/make_fixtures.py --only stateful_mnist1d   # one fixture, others kept

``--only NAME`` (repeatable) builds only the named fixtures (training only the networks they
need) and merges their entries into the existing ``manifest.json``: the other entries keep their
place and content, a new one is appended, and ``README.md`` is rewritten from the merged manifest.
``if_digits`` is made from the ``mlp_digits.onnx`` on disk: rebuild it whenever mlp_digits changes
(``--only mlp_digits --only if_digits``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from sequence_metrics import sequence_scores
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
OPSET = 17
SEED = 0
N_CALIB = 256
NUM_CLASSES = 10
ATOL = 1e-4
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# stateful_mnist1d: each 40-step MNIST-1D signal is streamed as two chunks of 20 steps; the
# first chunk only produces the state, the model input is the second chunk.
STREAM_NAME = "stateful_mnist1d"
STREAM_STEPS = 40
STREAM_CHUNK = 20
STREAM_HIDDEN = 32
STREAM_GAINS = np.array([0.5, 1.0, 2.0], dtype=np.float32)  # powers of two: x / gain * gain is exact
STREAM_N_CALIB = 128
STREAM_N_TEST = 450
STREAM_N_HELDOUT = 32
STREAM_EPOCHS = 60

# crnn_digits: text lines of CRNN_MIN_DIGITS..CRNN_MAX_DIGITS sklearn digit glyphs (8x8) side by side
# on a CRNN_HEIGHT x CRNN_WIDTH canvas, read by a CNN + bidirectional LSTM trained with CTC.
CRNN_NAME = "crnn_digits"
CRNN_HEIGHT = 12
CRNN_WIDTH = 64
CRNN_MIN_DIGITS = 2
CRNN_MAX_DIGITS = 5
CRNN_N_TRAIN = 4000
CRNN_N_TEST = 300
CRNN_N_CALIB = 128
CRNN_EPOCHS = 20
CRNN_BLANK = 0  # output class 0; digit d is class d + 1

# if_digits: mlp_digits' MLP in both branches of an If on the batch's mean energy mean(input²).
IF_NAME = "if_digits"
IF_BASE = "mlp_digits"
#: calibration samples per block of one branch: the calibrated pass's default batch size, so that
#: each calibration batch takes, as a whole, the branch each of its samples takes alone
IF_BLOCK = 32


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def set_determinism() -> None:
    """Make torch training reproducible on CPU."""
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    np.random.seed(SEED)


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """A train / held-out split in the model's input layout."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    dataset: str

    def reshaped(self, shape: tuple[int, ...]) -> Split:
        """Return the same split with each sample reshaped to ``shape``."""
        return Split(
            self.x_train.reshape((-1, *shape)),
            self.y_train,
            self.x_test.reshape((-1, *shape)),
            self.y_test,
            self.dataset,
        )


def digits_split() -> Split:
    """scikit-learn digits, pixels scaled to [0, 1], stratified 75/25 split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return Split(x_tr, y_tr, x_te, y_te, "sklearn digits (8x8, /16), 75/25 stratified split")


def digit_lines(
    glyphs: np.ndarray, digits: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` text lines [count, 1, CRNN_HEIGHT, CRNN_WIDTH] of 2-5 glyphs ([n, 8, 8] in [0, 1],
    their digits ``digits``) side by side: a random left margin, a random vertical offset per glyph,
    gaps of -1 to 2 pixels (touching glyphs keep the brighter pixel), Gaussian noise (sigma 0.05).
    Labels: [count, CRNN_MAX_DIGITS] int64, the digits left to right padded with -1."""
    images = np.zeros((count, 1, CRNN_HEIGHT, CRNN_WIDTH), dtype=np.float32)
    labels = np.full((count, CRNN_MAX_DIGITS), -1, dtype=np.int64)
    for i in range(count):
        picks = rng.integers(0, len(glyphs), int(rng.integers(CRNN_MIN_DIGITS, CRNN_MAX_DIGITS + 1)))
        x = int(rng.integers(0, 4))
        for pick in picks:
            y = int(rng.integers(0, CRNN_HEIGHT - 8 + 1))
            window = images[i, 0, y : y + 8, x : x + 8]
            np.maximum(window, glyphs[pick], out=window)
            x += 8 + int(rng.integers(-1, 3))
        labels[i, : len(picks)] = digits[picks]
    images += rng.normal(0.0, 0.05, images.shape).astype(np.float32)
    return images, labels


def digit_lines_split() -> Split:
    """Text lines of digits: training lines from the glyphs of the digits training split, test lines
    from its test glyphs (no glyph is seen in both)."""
    digits = digits_split()
    rng = np.random.default_rng(SEED)
    x_tr, y_tr = digit_lines(digits.x_train.reshape(-1, 8, 8), digits.y_train, CRNN_N_TRAIN, rng)
    x_te, y_te = digit_lines(digits.x_test.reshape(-1, 8, 8), digits.y_test, CRNN_N_TEST, rng)
    return Split(
        x_tr,
        y_tr,
        x_te,
        y_te,
        f"lines of {CRNN_MIN_DIGITS}-{CRNN_MAX_DIGITS} sklearn digits ({CRNN_HEIGHT}x{CRNN_WIDTH}, glyphs of the "
        f"75/25 digits split), {CRNN_N_TRAIN}/{CRNN_N_TEST} lines",
    )


def mnist1d_split() -> Split:
    """MNIST-1D with the package's default arguments (5000 samples, 4000/1000 split)."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return Split(
        np.asarray(data["x"], dtype=np.float32),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32),
        np.asarray(data["y_test"], dtype=np.int64),
        "MNIST-1D (mnist1d.make_dataset defaults, seed 42), 4000/1000 split",
    )


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv2d (no bias) followed by BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResidualBlock(nn.Module):
    """Conv-BN-Relu-Conv-BN plus identity skip, then Relu."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class DigitsCNN(nn.Module):
    """stem conv -> residual block -> depthwise(stride 2) -> pointwise -> Flatten -> Gemm x2."""

    def __init__(self, width: int = 24, pw_out: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.stem = conv_bn(1, width, 3)
        self.block = ResidualBlock(width)
        self.dw = conv_bn(width, width, 3, stride=2, groups=width)
        self.pw = conv_bn(width, pw_out, 1)
        self.fc1 = nn.Linear(pw_out * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = self.block(x)
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class DigitsMLP(nn.Module):
    """64 -> 256 -> 128 -> 10 with Relu."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out by hand (BERT-style ONNX pattern)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.d_model = d_model
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
        return x.reshape(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq = x.shape[0], x.shape[1]
        q = self._split_heads(self.q_proj(x), batch, seq)
        k = self._split_heads(self.k_proj(x), batch, seq)
        v = self._split_heads(self.v_proj(x), batch, seq)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, self.d_model)
        return self.out_proj(ctx)


class EncoderLayer(nn.Module):
    """Post-LN (BERT-style) encoder layer with a GELU feed-forward block."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.attn = SelfAttention(d_model, n_heads)
        self.ln1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.ln2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class TinyTransformer(nn.Module):
    """Patch embedding + learned positions, 2 encoder layers, mean-pool, Linear head."""

    def __init__(
        self,
        seq_len: int = 40,
        patch: int = 4,
        d_model: int = 64,
        n_heads: int = 4,
        d_ff: int = 256,
        n_layers: int = 2,
    ) -> None:
        super().__init__()
        self.n_tokens = seq_len // patch
        self.patch = patch
        self.embed = nn.Linear(patch, d_model)
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_tokens, d_model) * 0.02)
        self.ln_embed = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList([EncoderLayer(d_model, n_heads, d_ff) for _ in range(n_layers)])
        self.head = nn.Linear(d_model, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, self.n_tokens, self.patch)
        h = self.ln_embed(self.embed(tokens) + self.pos_embed)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(dim=1))


class LSTMClassifier(nn.Module):
    """Signal reshaped to (steps, features) -> 1-layer LSTM -> last hidden -> Linear."""

    def __init__(self, seq_len: int = 40, features: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.steps = seq_len // features
        self.features = features
        self.lstm = nn.LSTM(features, hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.reshape(-1, self.steps, self.features)
        _, (h_n, _) = self.lstm(seq)
        return self.fc(h_n[-1])


class StreamingGRU(nn.Module):
    """One chunk of a streamed signal: ``x * gain`` through a GRU started from ``h0``, Linear head
    on the new state. Returns ``(logits, h_n)``; ``h0``/``h_n`` are ``[1, batch, hidden]``."""

    def __init__(self, hidden: int = STREAM_HIDDEN) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, h_n = self.gru(x * gain, h0)
        return self.fc(h_n[-1]), h_n


class DigitsCRNN(nn.Module):
    """CRNN: conv-BN-relu-pool x2, a residual conv-BN, then the hand-off ``[B, C, H, W]`` -> permute
    -> reshape ``[W, B, C·H]`` (each time step a column of the feature map), a 2-layer bidirectional
    LSTM, Linear, log-softmax; output ``[B, T = W / 2, classes]``."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 32), hidden: int = 32) -> None:
        super().__init__()
        self.block1 = nn.Sequential(conv_bn(1, channels[0], 3), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(conv_bn(channels[0], channels[1], 3), nn.ReLU(), nn.MaxPool2d((2, 1)))
        self.res = conv_bn(channels[1], channels[2], 3)
        self.rnn = nn.LSTM(channels[2] * (CRNN_HEIGHT // 4), hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, NUM_CLASSES + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.block2(self.block1(x))
        f = F.relu(self.res(f) + f)
        b, c, h, w = f.size()
        seq = f.permute(3, 0, 1, 2).reshape(w, b, c * h)  # [T, B, C·H]: channel c is features c·H .. c·H + H - 1
        out, _ = self.rnn(seq)
        return F.log_softmax(self.fc(out), dim=-1).transpose(0, 1)


class WholeSequence(nn.Module):
    """Training view of a StreamingGRU: the whole 40-step signal from a zero state, gain 1. A GRU
    over two chunks with the state handed on computes the same as over the whole signal."""

    def __init__(self, stream: StreamingGRU, steps: int = STREAM_STEPS) -> None:
        super().__init__()
        self.stream = stream
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.stream.gru(x.reshape(-1, self.steps, 1))
        return self.stream.fc(h_n[-1])


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimiser settings for one model."""

    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    grad_clip: float | None = None


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up followed by cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of ``model`` in eval mode."""
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train_classifier(model: nn.Module, split: Split, cfg: TrainConfig, seed: int) -> None:
    """Train with AdamW + cross-entropy, shuffling with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    x_tr = torch.from_numpy(split.x_train)
    y_tr = torch.from_numpy(split.y_train)
    n = len(y_tr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_epochs * steps_per_epoch))
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
        if (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:
            acc = torch_accuracy(model, split.x_test, split.y_test)
            print(f"    epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss.item():.4f}  test {acc:.4f}")
    model.eval()


def train_ctc(model: nn.Module, split: Split, epochs: int, seed: int, lr: float = 3e-3, batch_size: int = 32) -> None:
    """Train a ``[B, T, classes]`` log-probability model with CTC (blank CRNN_BLANK, labels padded
    with -1, digit d the class d + 1): AdamW, one-cycle learning rate, gradients clipped at 5."""
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    n = len(y_tr)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * math.ceil(n / batch_size))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            log_probs = model(x_tr[idx]).transpose(0, 1)  # [T, B, classes], as ctc_loss reads it
            target = y_tr[idx]
            lengths = (target >= 0).sum(1)
            steps = torch.full((len(idx),), log_probs.shape[0], dtype=torch.long)
            loss = F.ctc_loss(log_probs, target[target >= 0] + 1, steps, lengths, blank=CRNN_BLANK, zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
        if (epoch + 1) % max(1, epochs // 5) == 0 or epoch + 1 == epochs:
            seq_acc, cer = sequence_scores(torch_logits(model, split.x_test), split.y_test, CRNN_BLANK)
            print(
                f"    epoch {epoch + 1:3d}/{epochs}  loss {loss.item():.4f}  test sequences {seq_acc:.4f}  CER {cer:.4f}"
            )
    model.eval()


# --------------------------------------------------------------------------------------------
# ONNX export and graph clean-up
# --------------------------------------------------------------------------------------------


def export_torch(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    keep_batchnorm: bool,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("logits",),
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> onnx.ModelProto:
    """Export with the TorchScript exporter; PRESERVE mode keeps BatchNormalization unfused.
    By default one input ``input`` and one output ``logits``, both with a dynamic ``batch`` axis 0."""
    model.eval()
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    if dynamic_axes is None:
        dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example if isinstance(example, tuple) else (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            training=mode,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def undo_initializer_dedup(graph: onnx.GraphProto) -> None:
    """Replace ``Identity(initializer)`` nodes (exporter de-duplication) by real copies."""
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


ROLE_NAMES = {
    ("MatMul", 1): "weight_t",
    ("LSTM", 1): "W",
    ("LSTM", 2): "R",
    ("LSTM", 3): "B",
    ("GRU", 1): "W",
    ("GRU", 2): "R",
    ("GRU", 3): "B",
}


def readable_initializer_name(node: onnx.NodeProto, index: int) -> str:
    """Name an anonymous initializer after the node that consumes it."""
    parts = [p for p in node.name.split("/") if p]
    role = ROLE_NAMES.get((node.op_type, index))
    if role is not None and len(parts) > 1:
        return ".".join([*parts[:-1], role])
    return ".".join([*parts, f"input{index}"])


def rename_anonymous_initializers(graph: onnx.GraphProto) -> None:
    """Give ``onnx::Op_123``-style initializers names derived from their consumer."""
    anonymous = {t.name for t in graph.initializer if t.name.startswith("onnx::")}
    used = {t.name for t in graph.initializer}
    mapping: dict[str, str] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in anonymous and name not in mapping:
                new = readable_initializer_name(node, i)
                while new in used:
                    new += "_"
                used.add(new)
                mapping[name] = new
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strip doc strings, run shape inference and the full checker."""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_clean(
    model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], keep_batchnorm: bool, **names: object
) -> onnx.ModelProto:
    """Export a torch model and tidy the resulting graph (``names``: export_torch's keywords)."""
    proto = export_torch(model, example, keep_batchnorm, **names)  # type: ignore[arg-type]
    undo_initializer_dedup(proto.graph)
    rename_anonymous_initializers(proto.graph)
    return finalize(proto)


def initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn every initializer into a Constant node placed at the top of the graph."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = [helper.make_node("Constant", [], [t.name], name=f"{t.name}/Constant", value=t) for t in graph.initializer]
    nodes = consts + list(graph.node)
    del graph.initializer[:]
    del graph.node[:]
    graph.node.extend(nodes)
    return finalize(out)


def initializers_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store float32 initializers as float16, each followed by ``Cast(to=FLOAT)``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    new_inits, casts = [], []
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            new_inits.append(tensor)
            continue
        half = numpy_helper.to_array(tensor).astype(np.float16)
        new_inits.append(numpy_helper.from_array(half, f"{tensor.name}_fp16"))
        casts.append(
            helper.make_node(
                "Cast",
                [f"{tensor.name}_fp16"],
                [tensor.name],
                name=f"{tensor.name}/Cast",
                to=TensorProto.FLOAT,
            )
        )
    nodes = casts + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    return finalize(out)


# --------------------------------------------------------------------------------------------
# Verification helpers
# --------------------------------------------------------------------------------------------


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an ONNX file with onnxruntime on CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def ort_session(path: Path) -> ort.InferenceSession:
    """A single-threaded onnxruntime CPU session."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode torch logits."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op type histogram, sorted by name."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def value_dims(value: onnx.ValueInfoProto) -> list[str | int]:
    """A graph input's or output's dims: the symbol where there is one, else the size."""
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_graph_features(model: onnx.ModelProto, name: str) -> None:
    """Assert that each fixture really contains the structures it is meant to exercise."""
    ops = op_counts(model)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    consts = {n.output[0] for n in graph.node if n.op_type == "Constant"}
    if name == "cnn_digits":
        assert ops.get("BatchNormalization", 0) == 5, ops
        assert ops.get("Add", 0) >= 1 and ops.get("Flatten", 0) == 1, ops
        groups = [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert max(groups) > 1, groups
        assert ops.get("Gemm", 0) == 2, ops
    elif name == "transformer_mnist1d":
        for op in ("MatMul", "Reshape", "Transpose", "Softmax", "LayerNormalization"):
            assert ops.get(op, 0) > 0, (op, ops)
        weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
        assert len(weight_matmuls) == 1 + 2 * 6, len(weight_matmuls)
    elif name == "lstm_mnist1d":
        lstm = [n for n in graph.node if n.op_type == "LSTM"]
        assert len(lstm) == 1 and all(i in inits for i in lstm[0].input[1:3]), lstm
    elif name == "cnn_digits_const":
        assert not inits and consts, "expected Constant nodes only"
    elif name == CRNN_NAME:
        assert value_dims(graph.input[0]) == ["batch", 1, CRNN_HEIGHT, "width"], value_dims(graph.input[0])
        lstm = [n for n in graph.node if n.op_type == "LSTM"]
        assert len(lstm) == 2 and all(i in inits for n in lstm for i in n.input[1:4]), lstm
        assert all(
            helper.get_attribute_value(a) == b"bidirectional"
            for n in lstm
            for a in n.attribute
            if a.name == "direction"
        )
        producers = {o: n for n in graph.node for o in n.output}
        first = producers[lstm[0].input[0]]  # the hand-off: Reshape(Transpose(conv features), computed shape)
        assert first.op_type == "Reshape" and producers[first.input[0]].op_type == "Transpose", first
        assert producers[first.input[1]].op_type == "Concat", "the hand-off's target shape should be computed"
        assert producers[lstm[1].input[0]].op_type == "Reshape", "LSTM 2 reads LSTM 1's directions merged"
    elif name == "mlp_digits_fp16":
        assert all(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)
        assert ops.get("Cast", 0) == len(graph.initializer), ops
    elif name == STREAM_NAME:
        inputs = {v.name: value_dims(v) for v in graph.input}
        outputs = {v.name: value_dims(v) for v in graph.output}
        assert list(inputs) == ["x", "h0", "gain"], inputs
        assert inputs["x"] == ["batch", "seq", 1], inputs
        assert inputs["h0"] == [1, "batch", STREAM_HIDDEN], inputs  # batch on axis 1
        assert inputs["gain"] == [], inputs  # rank 0
        assert graph.input[2].type.tensor_type.HasField("shape"), "gain must have a known (empty) shape"
        assert outputs == {"logits": ["batch", NUM_CLASSES], "h_n": [1, "batch", STREAM_HIDDEN]}, outputs
        gru = [n for n in graph.node if n.op_type == "GRU"]
        assert len(gru) == 1 and all(i in inits for i in gru[0].input[1:4]), gru
        assert len(gru[0].input) == 6 and gru[0].input[5] == "h0", gru[0].input  # initial_h is h0
        assert "h_n" in gru[0].output, gru[0].output
        mul = [n for n in graph.node if n.op_type == "Mul" and "gain" in n.input and "x" in n.input]
        assert len(mul) == 1, ops
    elif name == IF_NAME:
        assert [t.name for t in graph.initializer] == ["energy_threshold"], "only the threshold in the main graph"
        assert ops == {"Greater": 1, "If": 1, "Mul": 1, "ReduceMean": 1}, ops
        branching = next(n for n in graph.node if n.op_type == "If")
        branches = {a.name: a.g for a in branching.attribute}
        assert sorted(branches) == ["else_branch", "then_branch"], branches
        for branch in branches.values():
            gemms = [n for n in branch.node if n.op_type == "Gemm"]
            stored = {t.name for t in branch.initializer}
            assert len(gemms) == 3 and all(n.input[1] in stored and n.input[2] in stored for n in gemms), gemms
            assert gemms[0].input[0] == "input", "the first Gemm reads the enclosing graph's input"


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed .npz with a fixed zip timestamp, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            contiguous = np.ascontiguousarray(arr).reshape(np.shape(arr))  # ascontiguousarray makes rank 0 rank 1
            np.lib.format.write_array(buf, contiguous, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def calibration_indices(n_train: int, seed: int, size: int = N_CALIB) -> np.ndarray:
    """``size`` (256) sorted training indices, drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=size, replace=False))


def write_data_files(name: str, split: Split, calib_idx: np.ndarray) -> dict[str, str]:
    """Write the test inputs, test labels and calibration inputs for one fixture."""
    files = {
        "test_data": f"{name}.test.npz",
        "test_labels": f"{name}.test_labels.npy",
        "calib_data": f"{name}.calib.npz",
    }
    write_npz(FIXTURES / files["test_data"], input=split.x_test.astype(np.float32))
    np.save(FIXTURES / files["test_labels"], split.y_test.astype(np.int64), allow_pickle=False)
    write_npz(FIXTURES / files["calib_data"], input=split.x_train[calib_idx].astype(np.float32))
    return files


@dataclass
class Fixture:
    """Everything the manifest and README need to know about one exported model."""

    name: str
    architecture: str
    features: str
    split: Split
    proto: onnx.ModelProto
    num_params: int
    reference: np.ndarray | None
    base: str | None = None
    info: dict[str, object] = field(default_factory=dict)
    #: "classification" (logits [N, classes], labels [N]) or "ctc" (log-probabilities [N, T, classes],
    #: labels [N, L] padded with -1; accuracy: sequence accuracy of greedy decoding)
    task: str = "classification"
    calib_size: int = N_CALIB
    #: the training samples of the calibration file, in file order (None: calibration_indices')
    calib_indices: np.ndarray | None = None


def fixture_accuracy(fx: Fixture, logits: np.ndarray) -> dict[str, float]:
    """The manifest's accuracy of a fixture's held-out outputs (and, for a CTC model, its CER)."""
    if fx.task == "ctc":
        seq_acc, cer = sequence_scores(logits, fx.split.y_test, CRNN_BLANK)
        return {"accuracy": round(seq_acc, 4), "cer": round(cer, 4)}
    return {"accuracy": round(float((logits.argmax(1) == fx.split.y_test).mean()), 4)}


def save_fixture(fx: Fixture, calib_idx: np.ndarray) -> dict[str, object]:
    """Save model + data, verify against torch, measure onnxruntime accuracy."""
    path = FIXTURES / f"{fx.name}.onnx"
    onnx.save_model(fx.proto, path)
    check_graph_features(fx.proto, fx.name)
    logits = ort_logits(path, fx.split.x_test)
    max_diff = None
    if fx.reference is not None:
        max_diff = float(np.abs(logits - fx.reference).max())
        assert max_diff < ATOL, f"{fx.name}: onnxruntime vs torch max abs diff {max_diff}"
    scores = fixture_accuracy(fx, logits)
    files = write_data_files(fx.name, fx.split, calib_idx)
    dims = fx.proto.graph.input[0].type.tensor_type.shape.dim
    size = path.stat().st_size
    assert size < 2 * 1024 * 1024, f"{fx.name} is {size} bytes"
    diff_txt = "n/a" if max_diff is None else f"{max_diff:.2e}"
    print(f"  {fx.name}.onnx: {size} bytes, ORT accuracy {scores['accuracy']:.4f}, max |ORT-torch| {diff_txt}")
    return {
        "file": path.name,
        "input_name": "input",
        "input_shape": [d.dim_param or d.dim_value for d in dims],
        "input_dtype": "float32",
        "output_name": "logits",
        "num_params": fx.num_params,
        **scores,
        "num_test": len(fx.split.y_test),
        "num_calib": len(calib_idx),
        "max_abs_diff_vs_torch": max_diff,
        "base_model": fx.base,
        "dataset": fx.split.dataset,
        "architecture": fx.architecture,
        "features": fx.features,
        **({} if fx.task == "classification" else {"task": fx.task}),
        **fx.info,
        "op_types": op_counts(fx.proto),
        "sha256": sha256(path),
        "size_bytes": size,
        **files,
    }


@dataclass
class StreamFixture:
    """The stateful (streaming) fixture: a model with several inputs and its stacked feeds."""

    name: str
    architecture: str
    features: str
    dataset: str
    proto: onnx.ModelProto
    model: StreamingGRU
    num_params: int
    calib: dict[str, np.ndarray]  # input name -> [N, *shape with batch 1]
    test: dict[str, np.ndarray]
    test_labels: np.ndarray
    whole_sequence_logits: np.ndarray  # torch, the test signals in one piece from a zero state


def feed_of(feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Sample ``i`` of a stack of feeds: exactly what the model receives (batch 1)."""
    return {k: np.array(v[i], copy=True, order="C") for k, v in feeds.items()}  # rank 0 stays rank 0


def stream_feeds(model: StreamingGRU, signals: np.ndarray, gain_seed: int) -> dict[str, np.ndarray]:
    """Stacked batch-1 feeds for a signal's second chunk: ``h0`` is the GRU's state after the first
    chunk (from a zero state), ``gain`` one of STREAM_GAINS per sample and ``x`` the chunk / gain."""
    seq = signals.reshape(-1, STREAM_STEPS, 1).astype(np.float32)
    first, second = seq[:, :STREAM_CHUNK], seq[:, STREAM_CHUNK:]
    model.eval()
    with torch.no_grad():
        _, h = model.gru(torch.from_numpy(np.ascontiguousarray(first)))
    h = h.numpy()  # [1, N, hidden]
    gain = np.random.default_rng(gain_seed).choice(STREAM_GAINS, size=len(seq)).astype(np.float32)
    x = (second / gain[:, None, None]).astype(np.float32)
    assert np.array_equal(x * gain[:, None, None], second), "x * gain must give the chunk back exactly"
    return {
        "x": x[:, None],  # [N, 1, chunk, 1]
        "h0": np.moveaxis(h, 1, 0)[:, :, None, :].astype(np.float32),  # [N, 1, 1, hidden]
        "gain": gain,  # [N]
    }


def run_stream(fx: StreamFixture, path: Path, feeds: dict[str, np.ndarray]) -> tuple[list[list[np.ndarray]], float]:
    """onnxruntime outputs for every feed of a stack, and their max abs diff to torch."""
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    outs, max_diff = [], 0.0
    for i in range(len(feeds["gain"])):
        feed = feed_of(feeds, i)
        got = sess.run(names, feed)
        with torch.no_grad():
            ref = fx.model(*(torch.from_numpy(feed[k]) for k in ("x", "h0", "gain")))
        for a, b in zip(got, ref, strict=True):
            max_diff = max(max_diff, float(np.abs(a - b.numpy()).max()))
        outs.append(got)
    return outs, max_diff


def write_heldout(
    fx: StreamFixture, outputs: list[list[np.ndarray]], input_names: list[str], output_names: list[str]
) -> dict[str, str]:
    """The first STREAM_N_HELDOUT test samples as an ONNX test-data folder, a folder of per-sample
    .npz files (batch axes removed) and their labels."""
    files = {
        "heldout_data": f"{fx.name}.heldout",
        "heldout_samples": f"{fx.name}.samples",
        "heldout_labels": f"{fx.name}.heldout_labels.npy",
    }
    heldout, samples = FIXTURES / files["heldout_data"], FIXTURES / files["heldout_samples"]
    for folder in (heldout, samples):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
    batch_axes = {"x": 0, "h0": 1}
    shapes = {"x": (1, STREAM_CHUNK, 1), "h0": (1, 1, STREAM_HIDDEN), "gain": ()}
    for i in range(STREAM_N_HELDOUT):
        feed = feed_of(fx.test, i)
        assert {k: v.shape for k, v in feed.items()} == shapes, {k: v.shape for k, v in feed.items()}
        case = heldout / f"test_data_set_{i}"
        case.mkdir()
        for j, name in enumerate(input_names):
            tensor = numpy_helper.from_array(feed[name], name=name)
            (case / f"input_{j}.pb").write_bytes(tensor.SerializeToString())
        for j, name in enumerate(output_names):
            tensor = numpy_helper.from_array(outputs[i][j], name=name)
            (case / f"output_{j}.pb").write_bytes(tensor.SerializeToString())
        unbatched = {k: (np.squeeze(v, axis=batch_axes[k]) if k in batch_axes else v) for k, v in feed.items()}
        assert unbatched["x"].shape == (STREAM_CHUNK, 1) and unbatched["h0"].shape == (1, STREAM_HIDDEN)
        assert unbatched["gain"].shape == ()
        write_npz(samples / f"sample_{i:03d}.npz", **unbatched)
    np.save(FIXTURES / files["heldout_labels"], fx.test_labels[:STREAM_N_HELDOUT].astype(np.int64), allow_pickle=False)
    return files


def save_stream_fixture(fx: StreamFixture) -> dict[str, object]:
    """Save the stateful model and its data in every format, verify against torch (per sample,
    batch 1: ``gain`` is one scalar per feed) and measure onnxruntime accuracy."""
    path = FIXTURES / f"{fx.name}.onnx"
    onnx.save_model(fx.proto, path)
    check_graph_features(fx.proto, fx.name)
    graph = fx.proto.graph
    input_names = [v.name for v in graph.input]
    output_names = [v.name for v in graph.output]
    outputs, max_diff = run_stream(fx, path, fx.test)
    _, calib_diff = run_stream(fx, path, fx.calib)
    max_diff = max(max_diff, calib_diff)
    assert max_diff < ATOL, f"{fx.name}: onnxruntime vs torch max abs diff {max_diff}"
    logits = np.stack([o[0][0] for o in outputs])
    whole_diff = float(np.abs(logits - fx.whole_sequence_logits).max())
    assert whole_diff < ATOL, f"{fx.name}: streamed vs whole-sequence logits differ by {whole_diff}"
    acc = float((logits.argmax(1) == fx.test_labels).mean())

    files = {
        "test_data": f"{fx.name}.test.npz",
        "test_labels": f"{fx.name}.test_labels.npy",
        "calib_data": f"{fx.name}.calib.npz",
    }
    write_npz(FIXTURES / files["test_data"], **{k: fx.test[k] for k in input_names})
    np.save(FIXTURES / files["test_labels"], fx.test_labels.astype(np.int64), allow_pickle=False)
    write_npz(FIXTURES / files["calib_data"], **{k: fx.calib[k] for k in input_names})
    files.update(write_heldout(fx, outputs, input_names, output_names))

    size = path.stat().st_size
    assert size < 100 * 1024, f"{fx.name} is {size} bytes"
    print(f"  {fx.name}.onnx: {size} bytes, ORT accuracy {acc:.4f}, max |ORT-torch| {max_diff:.2e}")
    batch_axes = {"x": 0, "h0": 1, "gain": None}
    first = graph.input[0]
    return {
        "file": path.name,
        "input_name": first.name,
        "input_shape": value_dims(first),
        "input_dtype": "float32",
        "output_name": output_names[0],
        "inputs": [
            {"name": v.name, "shape": value_dims(v), "dtype": "float32", "batch_axis": batch_axes[v.name]}
            for v in graph.input
        ],
        "outputs": [{"name": v.name, "shape": value_dims(v), "dtype": "float32"} for v in graph.output],
        "num_params": fx.num_params,
        "accuracy": round(acc, 4),
        "num_test": len(fx.test_labels),
        "num_calib": len(fx.calib["gain"]),
        "num_heldout": STREAM_N_HELDOUT,
        "max_abs_diff_vs_torch": max_diff,
        "max_abs_diff_vs_whole_sequence": whole_diff,
        "base_model": None,
        "dataset": fx.dataset,
        "architecture": fx.architecture,
        "features": fx.features,
        "data_layout": "test/calib .npz: a stack of complete batch-1 feeds keyed by input name "
        "(x [N, 1, 20, 1], h0 [N, 1, 1, 32], gain [N]); heldout: ONNX test-data folder "
        "test_data_set_<i>/input_<j>.pb (graph input order) + output_<j>.pb; samples: "
        "sample_<iii>.npz keyed by input name, batch axes removed (x [20, 1], h0 [1, 32], gain [])",
        "op_types": op_counts(fx.proto),
        "sha256": sha256(path),
        "size_bytes": size,
        **files,
    }


def input_column(entry: dict[str, object]) -> str:
    """The README's input cell: the one input's shape, or each input's name and shape."""

    def fmt(shape: object) -> str:
        return "[" + ", ".join(str(d) for d in shape) + "]"  # type: ignore[attr-defined]

    if "inputs" not in entry:
        return fmt(entry["input_shape"])
    return ", ".join(f"`{i['name']}` {fmt(i['shape'])}" for i in entry["inputs"])  # type: ignore[attr-defined,index]


def write_readme(entries: dict[str, dict[str, object]]) -> None:
    """Write fixtures/README.md with one table row per fixture."""
    lines = [
        "# onnxprune test fixtures",
        "",
        "Generated by `.venv/bin/python tools/make_fixtures.py` (deterministic; do not edit by",
        "hand). Accuracy is measured with onnxruntime on the held-out split. Each model `<name>`",
        "comes with `<name>.test.npz` (key `input`), `<name>.test_labels.npy` (int64) and",
        f"`<name>.calib.npz` (key `input`, {N_CALIB} training samples). All models use opset",
        f"{OPSET}, input `input` with a dynamic `batch` dimension and output `logits`, except",
        f"`{STREAM_NAME}` (below). `manifest.json` holds the same data plus op counts and sha256",
        "of each file.",
        "",
        f"`{STREAM_NAME}.onnx` is a streaming model exported with explicit state and a scalar input:",
        "inputs `x` [batch, seq, 1], `h0` [1, batch, 32] (ONNX recurrent state layout, batch on axis",
        "1) and `gain` (rank 0, multiplies `x` before the GRU); outputs `logits` [batch, 10] and `h_n`",
        "[1, batch, 32]. Each 40-step MNIST-1D signal is split in two chunks of 20 steps: `h0` is the",
        "trained GRU's state after the first chunk, `x` is the second chunk divided by `gain` (0.5, 1",
        "or 2 per sample), so `x * gain` is the real chunk. Its data comes in three formats, all",
        "holding the same values:",
        "",
        f"- `{STREAM_NAME}.test.npz` ({STREAM_N_TEST} test samples) and `{STREAM_NAME}.calib.npz`",
        f"  ({STREAM_N_CALIB} training samples): a stack of complete feeds, keyed by input name: `x`",
        "  [N, 1, 20, 1], `h0` [N, 1, 1, 32], `gain` [N]; sample `i` (`x[i]`, `h0[i]`, `gain[i]`) is",
        f"  exactly what the model receives with batch 1. Labels: `{STREAM_NAME}.test_labels.npy`.",
        f"- `{STREAM_NAME}.heldout/`: an ONNX test-data folder (as in the ONNX model zoo) with the",
        f"  first {STREAM_N_HELDOUT} test samples: `test_data_set_<i>/input_0.pb`, `input_1.pb`,",
        "  `input_2.pb` (serialized `TensorProto`s named `x`, `h0`, `gain`, graph input order, batch",
        "  1) and `output_0.pb`, `output_1.pb` (`logits`, `h_n` from onnxruntime).",
        f"- `{STREAM_NAME}.samples/`: the same {STREAM_N_HELDOUT} samples as one .npz per sample,",
        "  `sample_000.npz` ..., keyed by input name with the batch axis removed: `x` [20, 1], `h0`",
        f"  [1, 32] (axis 1 removed), `gain` []. Labels: `{STREAM_NAME}.heldout_labels.npy`.",
        "",
        f"`{CRNN_NAME}.onnx` is a sequence recognizer (CRNN trained with CTC): input `input`",
        f"[batch, 1, {CRNN_HEIGHT}, width] (a line of {CRNN_MIN_DIGITS}-{CRNN_MAX_DIGITS} digits; the data files hold width",
        f"{CRNN_WIDTH}), output `logits` [batch, width / 2, {NUM_CLASSES + 1}] (log-probabilities per time step; class 0 is",
        "the CTC blank, class d + 1 the digit d). `crnn_digits.test_labels.npy` is int64",
        f"[N, {CRNN_MAX_DIGITS}]: each line's digits left to right, padded with -1. Its accuracy is the sequence",
        "accuracy (exact match) of greedy CTC decoding, `cer` in the manifest its character error",
        f"rate (`tools/sequence_metrics.py`); `{CRNN_NAME}.calib.npz` holds {CRNN_N_CALIB} training lines.",
        "",
        f"`{IF_NAME}.onnx` keeps every weight inside the branches of an `If`, as some streaming audio models do:",
        "the condition is computed from the data, `ReduceMean(input * input) > energy_threshold` (the",
        "batch's mean energy, a scalar: the If takes one branch per run, for the whole batch); the",
        f"`then_branch` (`high`) and the `else_branch` (`low`) each hold a copy of `{IF_BASE}`'s trained",
        "weights as branch-local initializers, so the dense model computes exactly what",
        f"`{IF_BASE}` does. Built from `{IF_BASE}.onnx` (no training). Its data are `{IF_BASE}`'s: the",
        "same test samples and labels, and the same 256 calibration samples, whose median energy is",
        f"the threshold, reordered in blocks of {IF_BLOCK} all above or all below it, alternating (high",
        f"first): in batches of {IF_BLOCK} (onnxprune's default) each calibration sample takes the branch it",
        "takes alone, and every 64 samples feed both branches 32 each. Run alone, the test samples take",
        "both branches (`test_branch_samples` in the manifest); run as one batch, the whole test set",
        "takes one branch (`test_batch_branch`), so measure a pruned model per sample (batch 1).",
        "",
        "| file | architecture | dataset | input | params | accuracy | graph features |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries.values():
        shape = input_column(e)
        dataset = str(e["dataset"]).split(" (")[0]
        lines.append(
            f"| `{e['file']}` | {e['architecture']} | {dataset} | {shape} | {e['num_params']} "
            f"| {float(e['accuracy']):.2%} | {e['features']} |"  # type: ignore[arg-type]
        )
    lines.append("")
    (FIXTURES / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Per-model builders
# --------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def build_cnn(split: Split) -> tuple[Fixture, Fixture]:
    """cnn_digits and its Constant-node twin."""
    torch.manual_seed(SEED)
    model = DigitsCNN()
    train_classifier(model, split, TrainConfig(epochs=40, lr=3e-3, weight_decay=1e-4), SEED)
    proto = export_clean(model, torch.from_numpy(split.x_test[:2]), keep_batchnorm=True)
    ref = torch_logits(model, split.x_test)
    base = Fixture(
        name="cnn_digits",
        architecture="Conv-BN stem, residual block, depthwise 3x3/s2 + pointwise 1x1, Flatten, 2x Gemm",
        features="unfused BatchNormalization, residual Add, grouped (depthwise) Conv, "
        "Flatten->Gemm over 32 channels x 4x4",
        split=split,
        proto=proto,
        num_params=count_params(model),
        reference=ref,
    )
    const = Fixture(
        name="cnn_digits_const",
        architecture="same trained network as cnn_digits",
        features="no initializers: every weight is a Constant node",
        split=split,
        proto=initializers_to_constants(proto),
        num_params=base.num_params,
        reference=ref,
        base="cnn_digits",
    )
    return base, const


def build_mlp(split: Split) -> tuple[Fixture, Fixture]:
    """mlp_digits and its float16-weight twin."""
    torch.manual_seed(SEED)
    model = DigitsMLP()
    train_classifier(model, split, TrainConfig(epochs=60, lr=2e-3, weight_decay=1e-4), SEED)
    proto = export_clean(model, torch.from_numpy(split.x_test[:2]), keep_batchnorm=False)
    base = Fixture(
        name="mlp_digits",
        architecture="MLP 64-256-128-10, Relu",
        features="Gemm (transB=1) chain",
        split=split,
        proto=proto,
        num_params=count_params(model),
        reference=torch_logits(model, split.x_test),
    )
    fp16 = Fixture(
        name="mlp_digits_fp16",
        architecture="same trained network as mlp_digits",
        features="float16 initializers, each Cast(to=FLOAT) before use",
        split=split,
        proto=initializers_to_fp16(proto),
        num_params=base.num_params,
        reference=None,
        base="mlp_digits",
    )
    return base, fp16


def build_transformer(split: Split) -> Fixture:
    """BERT-like tiny encoder on MNIST-1D."""
    torch.manual_seed(SEED)
    model = TinyTransformer()
    cfg = TrainConfig(epochs=80, batch_size=64, lr=1e-3, weight_decay=1e-2, warmup_epochs=5, grad_clip=1.0)
    train_classifier(model, split, cfg, SEED)
    return Fixture(
        name="transformer_mnist1d",
        architecture="10 tokens x 4 samples, Linear embed + learned positions + LN, 2 post-LN "
        "encoder layers (d=64, 4 heads, FFN 256 GELU), mean-pool, Linear",
        features="MatMul+Add linears with constant weights, Reshape/Transpose heads, Softmax, "
        "LayerNormalization, Erf GELU, ReduceMean",
        split=split,
        proto=export_clean(model, torch.from_numpy(split.x_test[:2]), keep_batchnorm=False),
        num_params=count_params(model),
        reference=torch_logits(model, split.x_test),
    )


def build_lstm(split: Split) -> Fixture:
    """LSTM classifier on MNIST-1D."""
    torch.manual_seed(SEED)
    model = LSTMClassifier()
    cfg = TrainConfig(epochs=60, batch_size=64, lr=3e-3, weight_decay=1e-4, grad_clip=1.0)
    train_classifier(model, split, cfg, SEED)
    return Fixture(
        name="lstm_mnist1d",
        architecture="reshape to 40 steps x 1 feature, LSTM(hidden 64), last hidden state, Linear",
        features="LSTM op with constant W/R/B initializers, Reshape, Gather, Gemm",
        split=split,
        proto=export_clean(model, torch.from_numpy(split.x_test[:2]), keep_batchnorm=False),
        num_params=count_params(model),
        reference=torch_logits(model, split.x_test),
    )


def build_stateful(split: Split) -> StreamFixture:
    """Streaming GRU on MNIST-1D: trained on whole signals, exported for one chunk with state."""
    torch.manual_seed(SEED)
    model = StreamingGRU()
    cfg = TrainConfig(epochs=STREAM_EPOCHS, batch_size=64, lr=1e-2, weight_decay=1e-4, grad_clip=1.0)
    t0 = time.perf_counter()
    train_classifier(WholeSequence(model), split, cfg, SEED)
    print(f"    trained in {time.perf_counter() - t0:.1f}s")
    model.eval()
    calib_idx = calibration_indices(len(split.y_train), SEED, STREAM_N_CALIB)
    calib = stream_feeds(model, split.x_train[calib_idx], SEED + 1)
    test = stream_feeds(model, split.x_test[:STREAM_N_TEST], SEED + 2)
    example = (
        torch.from_numpy(test["x"][:2, 0]),
        torch.from_numpy(np.concatenate(test["h0"][:2], 1)),
        torch.tensor(1.0),
    )
    proto = export_clean(
        model,
        example,
        False,
        input_names=("x", "h0", "gain"),
        output_names=("logits", "h_n"),
        dynamic_axes={"x": {0: "batch", 1: "seq"}, "h0": {1: "batch"}, "logits": {0: "batch"}, "h_n": {1: "batch"}},
    )
    return StreamFixture(
        name=STREAM_NAME,
        architecture=f"streaming chunk of {STREAM_CHUNK} steps x 1 feature: x * gain, GRU(hidden "
        f"{STREAM_HIDDEN}) from state h0, Linear on the new state; outputs logits and h_n",
        features="3 inputs (x [batch, seq, 1]; recurrent state h0 [1, batch, 32] with batch on axis 1; "
        "rank-0 scalar gain), 2 outputs (logits, state h_n), GRU op with constant W/R/B and "
        "initial_h = h0, Mul by a scalar input, Transpose, Gather, Gemm",
        dataset="MNIST-1D (mnist1d.make_dataset defaults, seed 42), streamed: last 20 of 40 steps "
        f"with the state after the first 20; {STREAM_N_CALIB} calibration samples from the 4000 "
        f"training signals, the first {STREAM_N_TEST} of the 1000 test signals",
        proto=proto,
        model=model,
        num_params=count_params(model),
        calib=calib,
        test=test,
        test_labels=split.y_test[:STREAM_N_TEST].astype(np.int64),
        whole_sequence_logits=torch_logits(WholeSequence(model), split.x_test[:STREAM_N_TEST]),
    )


def build_crnn(split: Split) -> Fixture:
    """CNN + bidirectional LSTM text-line recognizer on digit lines, trained with CTC, exported with a
    dynamic batch and width (time) axis."""
    torch.manual_seed(SEED)
    model = DigitsCRNN()
    t0 = time.perf_counter()
    train_ctc(model, split, CRNN_EPOCHS, SEED)
    print(f"    trained in {time.perf_counter() - t0:.1f}s")
    example = torch.from_numpy(split.x_test[:2])
    dynamic = {"input": {0: "batch", 3: "width"}, "logits": {0: "batch", 1: "steps"}}
    proto = export_clean(model, example, keep_batchnorm=False, dynamic_axes=dynamic)
    # the width is dynamic: the exported graph must agree with torch on another width too
    narrow = np.ascontiguousarray(split.x_test[:16, :, :, : CRNN_WIDTH - 16])
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    diff = float(np.abs(sess.run(None, {"input": narrow})[0] - torch_logits(model, narrow)).max())
    assert diff < ATOL, f"{CRNN_NAME} at width {narrow.shape[3]}: onnxruntime vs torch max abs diff {diff}"
    return Fixture(
        name=CRNN_NAME,
        architecture="Conv-BN-Relu-MaxPool x2, residual Conv-BN (16-32-32 channels), permute + reshape "
        "[B, C, H, W] -> [W, B, C·H], 2-layer bidirectional LSTM (hidden 32), Linear, LogSoftmax; CTC",
        features="dynamic batch and width, BN folded into Conv, conv -> LSTM hand-off by Transpose + Reshape "
        "with a computed target (Shape/Gather/Mul/Concat), bidirectional LSTM outputs merged by Transpose + "
        "Reshape [0, 0, -1], zero initial states sliced from one ConstantOfShape, MatMul+Add head, output "
        "[batch, steps, 11]",
        split=split,
        proto=proto,
        num_params=count_params(model),
        reference=torch_logits(model, split.x_test),
        task="ctc",
        calib_size=CRNN_N_CALIB,
        info={
            "output_shape": ["batch", "steps", NUM_CLASSES + 1],
            "labels_format": f"int64 [N, {CRNN_MAX_DIGITS}]: the digits of each line left to right, padded with -1; "
            "output class 0 is the CTC blank and class d + 1 the digit d; accuracy is the sequence accuracy "
            "(exact match) of greedy CTC decoding, cer the character error rate (tools/sequence_metrics.py)",
        },
    )


def mean_energy(x: np.ndarray) -> np.ndarray:
    """Each sample's mean energy ``mean(x²)`` over its features (float64)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return (flat * flat).mean(axis=1)


def energy_threshold(energies: np.ndarray, others: np.ndarray) -> np.float32:
    """A median of an even number of ``energies``: a point between the two middle values, so that
    exactly half lie on each side (refused when those two tie). Of those points, the middle of the
    widest gap between ``energies`` and ``others`` (the test samples'), so that float32 rounding
    cannot send any sample to the other branch."""
    ordered = np.sort(energies)
    half = len(ordered) // 2
    low, high = ordered[half - 1], ordered[half]
    assert len(ordered) % 2 == 0 and high > low, f"no median between two distinct energies ({low}, {high})"
    inside = np.unique(np.concatenate([[low, high], others[(others > low) & (others < high)]]))
    widest = int(np.argmax(np.diff(inside)))
    threshold = np.float32((inside[widest] + inside[widest + 1]) / 2)
    assert low < threshold < high, (low, threshold, high)
    return threshold


def alternating_blocks(above: np.ndarray, block: int) -> np.ndarray:
    """Positions of ``above`` (one bool per sample) reordered into blocks of ``block`` samples all
    above the threshold or all below it, alternating, above first; each side keeps its order."""
    ups, downs = np.flatnonzero(above), np.flatnonzero(~above)
    assert len(ups) == len(downs) and len(ups) % block == 0, (len(ups), len(downs), block)
    blocks = [side[start : start + block] for start in range(0, len(ups), block) for side in (ups, downs)]
    return np.concatenate(blocks)


def mlp_branch(graph: onnx.GraphProto, prefix: str, output: str) -> onnx.GraphProto:
    """A one-input graph as an If branch: the same nodes, reading the enclosing graph's input, with
    a copy of each initializer stored in the branch; every other name gets ``prefix``
    (``fc1.weight`` -> ``<prefix>.fc1.weight``, ``/fc1/Gemm`` -> ``/<prefix>/fc1/Gemm``) and the
    graph's output becomes ``output``."""
    outer = {v.name for v in graph.input}
    initializers = {t.name for t in graph.initializer}
    (result,) = graph.output

    def rename(name: str) -> str:
        if not name or name in outer:
            return name
        if name == result.name:
            return output
        if name.startswith("/"):
            return f"/{prefix}{name}"
        return f"{prefix}.{name}"

    assert all(name.startswith("/") or name in initializers or name == result.name for name in _names(graph))
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = rename(node.name)
        copy.input[:] = [rename(name) for name in node.input]
        copy.output[:] = [rename(name) for name in node.output]
        nodes.append(copy)
    stored = []
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        stored.append(copy)
    out = onnx.ValueInfoProto()
    out.CopyFrom(result)
    out.name = output
    return helper.make_graph(nodes, f"{prefix}_branch", [], [out], initializer=stored)


def _names(graph: onnx.GraphProto) -> set[str]:
    """The names a graph's nodes define or read, and its initializers' (its inputs left out)."""
    outer = {v.name for v in graph.input}
    names = {t.name for t in graph.initializer}
    names.update(name for node in graph.node for name in (node.name, *node.input, *node.output) if name)
    return names - outer


def if_model(base: onnx.ModelProto, threshold: np.float32) -> onnx.ModelProto:
    """``base`` (one input, one output) in both branches of an If on the batch's mean energy:
    ``If(ReduceMean(input · input) > energy_threshold)``, then branch ``high``, else ``low``, each
    with its own copy of the weights; the main graph stores only the scalar threshold."""
    graph = base.graph
    (inp,) = graph.input
    (out,) = graph.output
    nodes = [
        helper.make_node("Mul", [inp.name, inp.name], ["/Mul_output_0"], name="/Mul"),
        helper.make_node("ReduceMean", ["/Mul_output_0"], ["/ReduceMean_output_0"], name="/ReduceMean", keepdims=0),
        helper.make_node(
            "Greater", ["/ReduceMean_output_0", "energy_threshold"], ["/Greater_output_0"], name="/Greater"
        ),
        helper.make_node(
            "If",
            ["/Greater_output_0"],
            [out.name],
            name="/If",
            then_branch=mlp_branch(graph, "high", "high.logits"),
            else_branch=mlp_branch(graph, "low", "low.logits"),
        ),
    ]
    stored = [numpy_helper.from_array(np.asarray(threshold, dtype=np.float32), "energy_threshold")]
    main = helper.make_graph(nodes, graph.name, [inp], [out], initializer=stored)
    model = helper.make_model(main, opset_imports=list(base.opset_import), producer_name="onnxprune make_fixtures")
    model.ir_version = base.ir_version
    return finalize(model)


def model_logits(proto: onnx.ModelProto, x: np.ndarray, *, alone: bool = False) -> np.ndarray:
    """onnxruntime logits of ``x`` as one batch, or of each sample run alone (batch 1: an If then
    takes each sample's own branch)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    if not alone:
        return sess.run(["logits"], {"input": x})[0]
    return np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(len(x))])


def build_if(split: Split) -> Fixture:
    """mlp_digits' trained MLP in both branches of an If on the batch's mean energy (no training).

    The If takes one branch per run, chosen by the mean energy ``mean(x²)`` over every element of
    the batch, i.e. the mean of its samples' energies. The threshold is the median of the 256
    calibration samples' energies (mlp_digits' calibration samples, the same seeded draw), so half
    of them take each branch alone. The calibration file holds those samples in blocks of
    IF_BLOCK (32) that are all above or all below the threshold, alternating (above first): a
    block's mean lies on its samples' side, so calibrating in batches of 32 (onnxprune's default),
    or of any divisor of 32, sends every sample through the branch it takes alone, and both
    branches run on every 64 samples (the first 128: 64 each). The test file is mlp_digits' (same
    order): run alone, its samples split between the branches (about half each); run as one
    batch of 450 (its mean energy is below the threshold) it takes the ``low`` branch as a whole.
    Both branches hold the same weights, so the dense logits are mlp_digits' either way; a
    pruned model's are not.
    """
    base_path = FIXTURES / f"{IF_BASE}.onnx"
    base = onnx.load(base_path)
    calib_idx = calibration_indices(len(split.y_train), SEED)
    calib = split.x_train[calib_idx]
    reused = np.load(FIXTURES / f"{IF_BASE}.calib.npz")["input"]
    assert np.array_equal(calib, reused), f"the calibration samples are not {IF_BASE}'s"
    assert np.array_equal(split.x_test, np.load(FIXTURES / f"{IF_BASE}.test.npz")["input"])
    energies, test_energy = mean_energy(calib), mean_energy(split.x_test)
    threshold = energy_threshold(energies, test_energy)
    order = alternating_blocks(energies > threshold, IF_BLOCK)
    ordered_energy = energies[order]
    for start in range(0, len(order), IF_BLOCK):
        block = ordered_energy[start : start + IF_BLOCK]
        above = (start // IF_BLOCK) % 2 == 0
        assert np.all((block > threshold) == above) and (block.mean() > threshold) == above
    margin = float(np.abs(np.concatenate([energies, test_energy]) - threshold).min())
    assert margin > 1e-5, f"a sample's energy is {margin} from the threshold: float32 could take either branch"
    test_high = int((test_energy > threshold).sum())
    batch_branch = "high" if test_energy.mean() > threshold else "low"
    proto = if_model(base, threshold)
    # both branches hold the base's weights: per sample and as one batch the logits are the base's
    alone, batched = model_logits(proto, split.x_test, alone=True), model_logits(proto, split.x_test)
    want = model_logits(base, split.x_test)
    diff = float(max(np.abs(alone - want).max(), np.abs(batched - want).max()))
    assert diff < ATOL, f"{IF_NAME}: logits differ from {IF_BASE}'s by {diff}"
    branch_ops = dict(sorted(Counter(n.op_type for n in base.graph.node).items()))
    print(
        f"    threshold {threshold:.6f} (margin {margin:.2e}); test samples alone: {test_high} high, "
        f"{len(test_energy) - test_high} low; the test set as one batch: {batch_branch}"
    )
    return Fixture(
        name=IF_NAME,
        architecture=f"If on the batch's mean energy mean(input²) > {threshold:.6g}; each branch a copy of "
        f"{IF_BASE}'s trained MLP 64-256-128-10",
        features="every weight inside an If branch (branch-local initializers, 3 Gemm + 2 Relu per branch, "
        "reading the outer input); condition computed from the data (Mul, ReduceMean, Greater); only a "
        "scalar threshold in the main graph; calibration file in blocks of 32 that take one branch each",
        split=Split(
            calib,
            split.y_train[calib_idx],
            split.x_test,
            split.y_test,
            f"{split.dataset}; {IF_BASE}'s data, its 256 calibration samples in alternating blocks of "
            f"{IF_BLOCK} above / below the energy threshold",
        ),
        proto=proto,
        num_params=2 * sum(int(np.prod(t.dims)) for t in base.graph.initializer),
        reference=None,
        base=IF_BASE,
        calib_indices=order,
        info={
            "max_abs_diff_vs_base": diff,
            "energy_threshold": float(threshold),
            "branches": {
                "then_branch": "high: batch mean energy above the threshold",
                "else_branch": "low: at or below it",
            },
            "branch_op_types": branch_ops,
            "calib_layout": f"blocks of {IF_BLOCK} samples all above (high) or all below (low) the threshold, "
            "alternating, high first: batches of 32 (or a divisor) take each sample's own branch",
            "calib_branch_samples": {
                "high": int((energies > threshold).sum()),
                "low": int((energies <= threshold).sum()),
            },
            "test_branch_samples": {"high": test_high, "low": len(test_energy) - test_high},
            "test_batch_branch": batch_branch,
            "eval_batch_size": 1,  # each test sample through its own branch (tools read it)
        },
    )


ORDER = [
    "cnn_digits",
    "mlp_digits",
    "transformer_mnist1d",
    "lstm_mnist1d",
    "cnn_digits_const",
    "mlp_digits_fp16",
    STREAM_NAME,
    CRNN_NAME,
    IF_NAME,
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line: ``--only NAME`` (repeatable)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=ORDER,
        metavar="NAME",
        help="build only this fixture (repeatable) and merge it into the existing manifest.json; "
        f"one of: {', '.join(ORDER)}",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Build every fixture (or those named by --only), then write manifest.json and README.md."""
    args = parse_args(argv)
    only = set(args.only) if args.only else None
    t0 = time.perf_counter()
    set_determinism()
    FIXTURES.mkdir(exist_ok=True)
    digits, mnist1d = cache(digits_split), cache(mnist1d_split)
    builders: list[tuple[str, tuple[str, ...], Callable[[], tuple[Fixture | StreamFixture, ...]]]] = [
        ("cnn_digits", ("cnn_digits", "cnn_digits_const"), lambda: build_cnn(digits().reshaped((1, 8, 8)))),
        ("mlp_digits", ("mlp_digits", "mlp_digits_fp16"), lambda: build_mlp(digits())),
        ("transformer_mnist1d", ("transformer_mnist1d",), lambda: (build_transformer(mnist1d()),)),
        ("lstm_mnist1d", ("lstm_mnist1d",), lambda: (build_lstm(mnist1d()),)),
        (STREAM_NAME, (STREAM_NAME,), lambda: (build_stateful(mnist1d()),)),
        (CRNN_NAME, (CRNN_NAME,), lambda: (build_crnn(digit_lines_split()),)),
        (IF_NAME, (IF_NAME,), lambda: (build_if(digits()),)),  # reads mlp_digits.onnx, written above
    ]
    built: dict[str, dict[str, object]] = {}
    for label, names, build in builders:
        if only is not None and not only.intersection(names):
            continue
        print(f"[{time.perf_counter() - t0:6.1f}s] training {label}")
        fixtures = build()
        for fx in fixtures:
            if only is not None and fx.name not in only:
                continue
            if isinstance(fx, StreamFixture):
                built[fx.name] = save_stream_fixture(fx)
            else:
                calib_idx = fx.calib_indices
                if calib_idx is None:
                    calib_idx = calibration_indices(len(fx.split.y_train), SEED, fx.calib_size)
                built[fx.name] = save_fixture(fx, calib_idx)
    if only is None:
        manifest = {k: built[k] for k in ORDER}
    else:
        existing_path = FIXTURES / "manifest.json"
        manifest = json.loads(existing_path.read_text())["models"] if existing_path.exists() else {}
        for name in ORDER:  # replaced in place, new ones appended after the existing entries
            if name in built:
                manifest[name] = built[name]
    text = json.dumps({"opset": OPSET, "models": manifest}, indent=2, sort_keys=False)
    (FIXTURES / "manifest.json").write_text(text + "\n")
    write_readme(manifest)
    print(f"\nDone in {time.perf_counter() - t0:.1f}s")
    for name, entry in manifest.items():
        mark = "" if name in built else "  (kept)"
        print(f"  {name:22s} accuracy (onnxruntime) {entry['accuracy']:.4f}{mark}")


if __name__ == "__main__":
    main()
