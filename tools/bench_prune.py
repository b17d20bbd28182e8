"""Benchmark: wall time and peak memory of ``onnxprune prune`` on a large model.

What it measures
    A deterministic (seeded) model of about ``--params`` float32 parameters is built once,
    outside the timed region: a small Conv stem (4 Conv layers) followed by a stack of
    ``--layers`` linear layers arranged as transformer-FFN-like residual blocks
    (``h + W2 · Relu(W1 · h + b1) + b2``, alternating Gemm and MatMul + Add), and a Gemm
    head. Every weight has at least 256 elements; the input has a dynamic batch dimension.
    (``--model PATH`` measures an existing model instead, e.g. all-MiniLM-L6-v2.)
    Then four cases (more with ``--baseline``, ``--imports`` and ``--validated-floor``) run side by
    side, each in a fresh subprocess:

    (a) ``onnx.load`` + ``onnx.save`` of the model (the floor: what any tool that reads
        and writes the model pays);
    (b) ``onnxprune prune IN OUT --sparsity 0.5 --scope global -q``;
    (c) ``onnxprune prune IN OUT --sparsity 0.5 --scope local -q`` (the default run:
        validated, dead-channel watch on; since stop 41 ``-q`` without ``--json`` estimates no
        compressed size, which nothing would show: a run that prints the summary table adds
        the estimate's wait, about 0.03-0.06 s on MiniLM);
    (d) ``onnxprune prune IN OUT --sparsity 0.5 --no-validate -q`` (documented as unsafe);
    (e) with ``--baseline DIR`` (a checkout of another commit), case (c) run by that checkout's
        onnxprune, so that two commits are compared side by side on one machine state;
    (f), (g) with ``--imports``: ``python -c "import onnx"`` and ``python -c "import onnxprune.cli"``,
        the start-up and imports that (a) and (b)-(d) pay before any work. The report then gives
        (a) - (f) and (c) - (g), and their ratio: the work beside the floor's, which an import
        that is slow on one machine (ml_dtypes 0.7.0: 1.3 s, README "Dependencies") hides.
    (h) with ``--validated-floor``: the floor of a tool that validates its output, as issue 16
        bounds validation ("a model load + one run"): (a), then one onnxruntime session of the
        written file and one run of it on zeros (dynamic dims 1), in one script
        (:data:`VALIDATED_FLOOR_SCRIPT`). No pruning, no checker, no reference run, no durable
        write. The report then gives (c) / (h) and (h) / (a).

    The cases are interleaved over ``--repeats`` repetitions, each repetition in its own seeded
    random order (:func:`interleaved_orders`), so that drift of a shared machine hits all cases
    alike and no case always follows the same one. (A rotating order did: every case had the
    same predecessor in every repetition, and on this project's VMs a run's time depends on the
    run before it, likely on the memory it freed. The same code as (c) and as (e) measured 1.22×
    apart that way, 9 repetitions; 0.99× in seeded orders.) Reported per case:
    median, min and max wall time (process start to exit, interpreter start-up included)
    and peak resident memory.

How peak memory is measured
    The child is started with ``subprocess.Popen`` and reaped with ``os.wait4(pid)``,
    which returns the ``rusage`` of exactly that child: ``ru_maxrss`` is the child's own
    high-water RSS (the kernel's per-process ``maxrss``; what GNU ``/usr/bin/time -f %M``
    reports, as it uses the same call). ``RUSAGE_CHILDREN`` deltas would be wrong (it is
    the maximum over all children reaped so far, not a sum) and polling misses spikes.
    Caveat handled here: Linux carries the *parent's* RSS high-water mark into a child
    spawned by vfork + exec, so this script never loads the model itself: the model is
    built in a subprocess and the parent stays small (its own peak is reported).

Targets (PASS/FAIL; issue 16)
    time:   median (b) and (c) <= 1.3 x median (a); median (d) <= 1.1 x median (a)
    memory: peak RSS (b) and (c) <= 2.5 x model file size (the largest peak of the runs)

Run from the repository root (per 100 M parameters: ~2.5 GB free memory, ~1.3 GB disk)::

    .venv/bin/python tools/bench_prune.py                   # 100 M parameters, 5 repeats
    .venv/bin/python tools/bench_prune.py --repeats 3 --profile --json bench.json
    .venv/bin/python tools/bench_prune.py --params 2e7 --layers 16 --repeats 1   # quick
    .venv/bin/python tools/bench_prune.py --model /tmp/minilm/minilm.onnx --repeats 5 --imports --validated-floor
    git worktree add /tmp/base REV && .venv/bin/python tools/bench_prune.py --baseline /tmp/base   # (e): REV's (c)

``--profile`` also runs the global case once under cProfile and prints the top functions
by cumulative time. Linux/macOS only (``os.wait4``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEED = 0
OPSET = 17
IR_VERSION = 8  # onnx >= 1.22 defaults to an IR version that older onnxruntime cannot load
DEFAULT_PARAMS = 100_000_000
DEFAULT_LAYERS = 64
DEFAULT_REPEATS = 5
SPARSITY = "0.5"
#: seeds the order of the cases in each repetition (:func:`interleaved_orders`)
ORDER_SEED = 0
FFN_RATIO = 4  # d_ffn ~ 4 x d_model, as in a transformer
ALIGN = 64  # layer widths are multiples of this
STEM_CHANNELS = (32, 64, 128)  # Conv stem; its last Conv maps to d_model
IMAGE = (3, 32, 32)
NUM_CLASSES = 10
TIME_TARGET = 1.3  # (b), (c) median time / (a) median time: validation on (the default)
NO_VALIDATE_TARGET = 1.1  # (d) median time / (a) median time: --no-validate
MEMORY_TARGET = 2.5  # peak RSS / model file size, for (b) and (c)
PROFILE_TOP = 25
MODEL_NAME = "bench_model.onnx"
INFO_NAME = "bench_model.json"
CASE_LABELS = {
    "a": "(a) onnx.load + onnx.save",
    "b": "(b) onnxprune --scope global",
    "c": "(c) onnxprune --scope local",
    "d": "(d) onnxprune local --no-validate",
    "e": "(e) --baseline's onnxprune local",
    "f": "(f) python -c 'import onnx'",
    "g": "(g) python -c 'import onnxprune.cli'",
    "h": "(h) (a) + onnxruntime load and run",
}
#: runs the onnxprune CLI of the checkout given as the first argument (put first on the path,
#: ahead of the working directory and the installed one); ``--baseline``'s case, and
#: ``tools/bench_large.py``'s
FROM_CHECKOUT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from onnxprune.cli import main; sys.argv[0] = 'onnxprune'; main()"
)
LOAD_SAVE_SCRIPT = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
#: case (h): (a), then what issue 16 allows validation to cost: one onnxruntime session of the
#: written model and one run
VALIDATED_FLOOR_SCRIPT = """
import sys, numpy as np, onnx, onnxruntime as ort
onnx.save(onnx.load(sys.argv[1]), sys.argv[2])
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
         "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], types[i.type])
         for i in session.get_inputs()}
session.run(None, feeds)
"""
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelInfo:
    path: str
    bytes: int
    parameters: int
    linear_layers: int
    conv_layers: int
    d_model: int
    d_ffn: int
    seed: int


def plan_dims(params: int, layers: int) -> tuple[int, int]:
    """``(d_model, d_ffn)`` so that ``layers // 2`` FFN blocks hold about ``params`` weights."""
    blocks = layers // 2
    per_block = params / blocks  # 2 * d * ffn
    d_model = max(ALIGN, round(math.sqrt(per_block / (2 * FFN_RATIO)) / ALIGN) * ALIGN)
    d_ffn = max(ALIGN, round(per_block / (2 * d_model) / ALIGN) * ALIGN)
    return d_model, d_ffn


def build_model(path: Path, params: int, layers: int, seed: int) -> ModelInfo:
    """Write the benchmark model to ``path`` (deterministic for a given seed); see module docstring."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layers < 2 or layers % 2:
        raise ValueError(f"--layers must be an even number >= 2, got {layers}")
    d_model, d_ffn = plan_dims(params, layers)
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    count = 0

    def weight(name: str, shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> str:
        nonlocal count
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale / math.sqrt(fan_in))
        inits.append(numpy_helper.from_array(values, name))
        count += values.size
        return name

    # Conv stem: 32x32 -> 16 -> 8 -> 4, then global pooling to [batch, d_model].
    x, channels = "input", IMAGE[0]
    for i, out_ch in enumerate((*STEM_CHANNELS, d_model)):
        w = weight(f"stem{i}.weight", (out_ch, channels, 3, 3), channels * 9, math.sqrt(2))
        b = weight(f"stem{i}.bias", (out_ch,), 1, 0.01)
        stride = 1 if i == 0 else 2
        nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [f"stem{i}.conv"], name=f"stem{i}", pads=[1, 1, 1, 1], strides=[stride, stride]
            )
        )
        nodes.append(helper.make_node("Relu", [f"stem{i}.conv"], [f"stem{i}.out"], name=f"stem{i}.relu"))
        x, channels = f"stem{i}.out", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["h0"], name="flatten", axis=1))

    # FFN blocks: even blocks Gemm(transB=1) up / MatMul + Add down, odd blocks the reverse.
    h = "h0"
    for blk in range(layers // 2):
        p = f"block{blk}"
        b1 = weight(f"{p}.up.bias", (d_ffn,), 1, 0.01)
        b2 = weight(f"{p}.down.bias", (d_model,), 1, 0.01)
        if blk % 2 == 0:
            w1 = weight(f"{p}.up.weight", (d_ffn, d_model), d_model, math.sqrt(2))
            nodes.append(helper.make_node("Gemm", [h, w1, b1], [f"{p}.up"], name=f"{p}.up", transB=1))
        else:
            w1 = weight(f"{p}.up.weight", (d_model, d_ffn), d_model, math.sqrt(2))
            nodes.append(helper.make_node("MatMul", [h, w1], [f"{p}.up.mm"], name=f"{p}.up"))
            nodes.append(helper.make_node("Add", [f"{p}.up.mm", b1], [f"{p}.up"], name=f"{p}.up.bias"))
        nodes.append(helper.make_node("Relu", [f"{p}.up"], [f"{p}.act"], name=f"{p}.relu"))
        # Residual branches scaled down so 30+ blocks stay finite without normalization.
        w2 = weight(f"{p}.down.weight", (d_ffn, d_model), d_ffn, 0.5)
        if blk % 2 == 0:
            nodes.append(helper.make_node("MatMul", [f"{p}.act", w2], [f"{p}.down.mm"], name=f"{p}.down"))
            nodes.append(helper.make_node("Add", [f"{p}.down.mm", b2], [f"{p}.down"], name=f"{p}.down.bias"))
        else:
            nodes.append(helper.make_node("Gemm", [f"{p}.act", w2, b2], [f"{p}.down"], name=f"{p}.down"))
        nodes.append(helper.make_node("Add", [h, f"{p}.down"], [f"{p}.out"], name=f"{p}.residual"))
        h = f"{p}.out"

    wh = weight("head.weight", (NUM_CLASSES, d_model), d_model)
    bh = weight("head.bias", (NUM_CLASSES,), 1, 0.01)
    nodes.append(helper.make_node("Gemm", [h, wh, bh], ["logits"], name="head", transB=1))

    graph = helper.make_graph(
        nodes,
        "bench_prune",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *IMAGE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="bench_prune"
    )
    onnx.save(model, str(path))
    return ModelInfo(
        path=str(path),
        bytes=path.stat().st_size,
        parameters=count,
        linear_layers=layers + 1,
        conv_layers=len(STEM_CHANNELS) + 1,
        d_model=d_model,
        d_ffn=d_ffn,
        seed=seed,
    )


def smoke_test(path: Path) -> None:
    """Run the model once in onnxruntime: it must load and give finite outputs."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.random.default_rng(SEED).standard_normal((2, *IMAGE), dtype=np.float32)
    (out,) = sess.run(None, {"input": feed})
    if out.shape != (2, NUM_CLASSES) or not np.all(np.isfinite(out)):
        raise RuntimeError(f"benchmark model gives shape {out.shape}, finite={np.all(np.isfinite(out))}")


def ensure_model(workdir: Path, params: int, layers: int) -> ModelInfo:
    """Build the model in a subprocess (so this process stays small), or reuse a matching one."""
    path, info_path = workdir / MODEL_NAME, workdir / INFO_NAME
    d_model, d_ffn = plan_dims(params, layers)
    if path.is_file() and info_path.is_file():
        info = ModelInfo(**json.loads(info_path.read_text()))
        wanted = (SEED, layers + 1, d_model, d_ffn, path.stat().st_size)
        if (info.seed, info.linear_layers, info.d_model, info.d_ffn, info.bytes) == wanted:
            print(f"reusing {path}")
            return info
    print(f"building a model of ~{params:,} parameters ({layers} linear layers) in {workdir} ...", flush=True)
    start = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--build-only", str(path)]
    cmd += ["--params", str(params), "--layers", str(layers)]
    subprocess.run(cmd, check=True)
    info = ModelInfo(**json.loads(info_path.read_text()))
    print(f"built in {time.perf_counter() - start:.1f} s (not timed)")
    return info


COUNT_SCRIPT = (
    "import sys, json, onnx, numpy as np; from onnx import numpy_helper; m = onnx.load(sys.argv[1]); "
    "ws = [t for t in m.graph.initializer if t.data_type in (1, 10, 11, 16)]; "
    "print(json.dumps([sum(int(np.prod(t.dims)) for t in ws), "
    "sum(1 for n in m.graph.node if n.op_type == 'Conv'), "
    "sum(1 for n in m.graph.node if n.op_type in ('Gemm', 'MatMul'))]))"
)


def given_model(path: Path) -> ModelInfo:
    """What the report says of an existing model (counted in a subprocess: this one stays small)."""
    done = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, str(path)], check=True, capture_output=True, text=True)
    params, convs, linears = json.loads(done.stdout)
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return ModelInfo(str(path.resolve()), size, params, linears, convs, 0, 0, SEED)


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One measured child process."""

    case: str
    repeat: int
    position: int  # 0-based place in this repetition's order
    wall_s: float
    cpu_s: float  # user + system time of the child
    peak_rss_bytes: int
    returncode: int
    output_bytes: int | None = None


@dataclass
class CaseSummary:
    label: str
    command: list[str]
    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_rss_bytes: list[int] = field(default_factory=list)
    median_s: float = 0.0
    cpu_median_s: float = 0.0
    min_s: float = 0.0
    max_s: float = 0.0
    peak_rss_median_bytes: int = 0
    peak_rss_max_bytes: int = 0
    peak_over_model: float = 0.0
    time_over_a: float = 0.0


@dataclass(frozen=True)
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    returncode: int


def run_measured(cmd: Sequence[str], log_path: Path) -> Measured:
    """Run ``cmd`` (output to ``log_path``); wall and CPU time, peak RSS of that very process."""
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * MAXRSS_UNIT, proc.returncode)


def case_commands(
    model: Path, out_dir: Path, baseline: Path | None = None, imports: bool = False, validated_floor: bool = False
) -> dict[str, tuple[list[str], Path]]:
    """The command of every case, and the output file it writes; with ``baseline`` (a checkout of
    another commit: ``git worktree add DIR REV``) also (e), case (c) run by that checkout; with
    ``imports`` also (f) and (g), the interpreter's start and the imports of (a) and of (c) alone
    (they write nothing); with ``validated_floor`` also (h), the least a validated prune pays."""
    py = sys.executable
    outs = {case: out_dir / f"out_{case}.onnx" for case in CASE_LABELS}
    prune = [py, "-m", "onnxprune", "prune", str(model)]
    found = {
        "a": ([py, "-c", LOAD_SAVE_SCRIPT, str(model), str(outs["a"])], outs["a"]),
        "b": ([*prune, str(outs["b"]), "--sparsity", SPARSITY, "--scope", "global", "-q"], outs["b"]),
        "c": ([*prune, str(outs["c"]), "--sparsity", SPARSITY, "--scope", "local", "-q"], outs["c"]),
        "d": ([*prune, str(outs["d"]), "--sparsity", SPARSITY, "--no-validate", "-q"], outs["d"]),
    }
    if baseline is not None:
        base = [py, "-c", FROM_CHECKOUT, str(baseline.resolve()), "prune", str(model), str(outs["e"])]
        found["e"] = ([*base, "--sparsity", SPARSITY, "--scope", "local", "-q"], outs["e"])
    if imports:
        found["f"] = ([py, "-c", "import onnx"], outs["f"])
        found["g"] = ([py, "-c", "import onnxprune.cli"], outs["g"])
    if validated_floor:
        found["h"] = ([py, "-c", VALIDATED_FLOOR_SCRIPT, str(model), str(outs["h"])], outs["h"])
    return found


def remove_output(path: Path) -> int | None:
    """Delete an output model (and its external data); return its size in bytes."""
    size = path.stat().st_size if path.exists() else None
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)
    return size


def warm_up(*checkouts: Path) -> None:
    """Compile onnxprune's modules to bytecode, as an install does (this checkout's, and those of
    ``checkouts``: other commits' worktrees run side by side), and import the libraries once
    so the first timed case does not pay for a cold page cache. Without the compile, a machine
    with ``PYTHONDONTWRITEBYTECODE`` set (these do) compiles every module from source in every
    timed run: 0.3 s of a 2 GB model's prune, cProfile's ``builtins.compile``, which the floor
    (onnx's modules, compiled when pip installed them) never pays."""
    for root in (Path(__file__).resolve().parent.parent, *checkouts):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "onnxprune")], check=True)
    subprocess.run([sys.executable, "-c", "import onnx, onnxruntime, numpy, onnxprune.cli"], check=True)


def interleaved_orders(cases: Sequence[str], repeats: int, seed: int = ORDER_SEED) -> list[list[str]]:
    """The order of ``cases`` in each of ``repeats`` repetitions: a fresh permutation each time
    from a generator seeded with ``seed`` (the same orders every run of the script)."""
    rng = random.Random(seed)
    orders = []
    for _ in range(repeats):
        order = list(cases)
        rng.shuffle(order)
        orders.append(order)
    return orders


def measure(commands: dict[str, tuple[list[str], Path]], repeats: int, workdir: Path) -> list[Run]:
    """Run every case ``repeats`` times, interleaved, in :func:`interleaved_orders`."""
    runs: list[Run] = []
    for rep, order in enumerate(interleaved_orders(tuple(commands), repeats)):
        for position, case in enumerate(order):
            cmd, out = commands[case]
            log_path = workdir / f"log_{case}.txt"
            m = run_measured(cmd, log_path)
            size = remove_output(out)
            if m.returncode != 0:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"case {case} failed with exit code {m.returncode}:\n{tail}")
            runs.append(Run(case, rep, position, m.wall_s, m.cpu_s, m.peak_rss_bytes, m.returncode, size))
            print(
                f"  repeat {rep + 1}/{repeats}  {CASE_LABELS[case]:<30} {m.wall_s:7.2f} s wall "
                f"{m.cpu_s:7.2f} s cpu  {mib(m.peak_rss_bytes):>6} MiB",
                flush=True,
            )
    return runs


def summarize(
    runs: Sequence[Run], commands: dict[str, tuple[list[str], Path]], model_bytes: int
) -> dict[str, CaseSummary]:
    summaries: dict[str, CaseSummary] = {}
    for case in commands:
        mine = [r for r in runs if r.case == case]
        times = [r.wall_s for r in mine]
        peaks = [r.peak_rss_bytes for r in mine]
        summaries[case] = CaseSummary(
            label=CASE_LABELS[case],
            command=commands[case][0],
            times_s=[round(t, 4) for t in times],
            cpu_s=[round(r.cpu_s, 4) for r in mine],
            peak_rss_bytes=peaks,
            median_s=statistics.median(times),
            cpu_median_s=statistics.median(r.cpu_s for r in mine),
            min_s=min(times),
            max_s=max(times),
            peak_rss_median_bytes=int(statistics.median(peaks)),
            peak_rss_max_bytes=max(peaks),
            peak_over_model=max(peaks) / model_bytes,
        )
    for summary in summaries.values():
        summary.time_over_a = summary.median_s / summaries["a"].median_s
    return summaries


def checks(summaries: dict[str, CaseSummary]) -> list[dict[str, Any]]:
    """The targets, each with its measured value and PASS/FAIL."""
    items = [
        ("time (b) / (a), median", summaries["b"].time_over_a, TIME_TARGET),
        ("time (c) / (a), median", summaries["c"].time_over_a, TIME_TARGET),
        ("time (d) / (a), median", summaries["d"].time_over_a, NO_VALIDATE_TARGET),
        ("peak memory (b) / model size", summaries["b"].peak_over_model, MEMORY_TARGET),
        ("peak memory (c) / model size", summaries["c"].peak_over_model, MEMORY_TARGET),
    ]
    return [
        {"check": name, "value": round(value, 3), "target": target, "pass": value <= target}
        for name, value, target in items
    ]


# --------------------------------------------------------------------------- reporting


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        for cells in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def print_report(
    info: ModelInfo, summaries: dict[str, CaseSummary], results: list[dict[str, Any]], repeats: int
) -> None:
    print(
        f"\nmodel: {info.parameters:,} float32 parameters, {info.bytes:,} bytes ({mib(info.bytes)} MiB); "
        f"{info.conv_layers} Conv + {info.linear_layers} Gemm/MatMul layers (d_model {info.d_model}, d_ffn {info.d_ffn})"
    )
    print(f"{repeats} repetitions per case, interleaved; peak RSS via os.wait4 ru_maxrss of each child\n")
    rows = [
        [
            s.label,
            f"{s.median_s:.2f}",
            f"{s.min_s:.2f}",
            f"{s.max_s:.2f}",
            f"{s.time_over_a:.2f}x",
            f"{s.cpu_median_s:.2f}",
            mib(s.peak_rss_median_bytes),
            mib(s.peak_rss_max_bytes),
            f"{s.peak_over_model:.2f}x",
        ]
        for s in summaries.values()
    ]
    header = [
        "case",
        "median s",
        "min s",
        "max s",
        "time/(a)",
        "cpu s (med)",
        "peak MiB (med)",
        "peak MiB (max)",
        "peak/model",
    ]
    print(table(rows, header))
    print()
    for item in results:
        verdict = "PASS" if item["pass"] else "FAIL"
        print(f"{verdict}  {item['check']}: {item['value']:.2f} (target <= {item['target']})")
    if "e" in summaries:
        print(
            f"this checkout against --baseline's: (c) / (e), median: {summaries['c'].median_s / summaries['e'].median_s:.3f}"
        )
    if "h" in summaries:
        h = summaries["h"]
        print(
            f"against the validated floor (h) ({h.median_s:.2f} s, {h.time_over_a:.2f}x (a)): "
            f"(c) / (h) {summaries['c'].median_s / h.median_s:.2f}, (d) / (h) {summaries['d'].median_s / h.median_s:.2f}"
        )
    beyond = work_beyond_imports(summaries)
    if beyond is not None:
        print(
            f"beyond start-up and imports (medians): (a) - (f) {beyond['a']:.2f} s, (c) - (g) {beyond['c']:.2f} s, "
            f"(d) - (g) {beyond['d']:.2f} s; (c) / (a) there: {beyond['c_over_a']:.2f}"
        )


def work_beyond_imports(summaries: dict[str, CaseSummary]) -> dict[str, float] | None:
    """With (f) and (g): each of (a), (c), (d) less the start-up and imports it pays (medians), and
    the ratio of (c)'s to (a)'s, where the time of an import no longer hides the work."""
    if "f" not in summaries or "g" not in summaries:
        return None
    a = summaries["a"].median_s - summaries["f"].median_s
    c = summaries["c"].median_s - summaries["g"].median_s
    d = summaries["d"].median_s - summaries["g"].median_s
    return {"a": a, "c": c, "d": d, "c_over_a": c / a if a > 0 else math.inf}


def run_profile(model: Path, workdir: Path, top: int) -> list[dict[str, Any]]:
    """Profile the global case once (cProfile on ``-m onnxprune``); print and return the top functions."""
    prof, out = workdir / "prune_global.prof", workdir / "out_profile.onnx"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "onnxprune", "prune", str(model), str(out)]
    cmd += ["--sparsity", SPARSITY, "--scope", "global", "-q"]
    print(f"\nprofiling (b) once under cProfile: {' '.join(cmd[1:])}")
    m = run_measured(cmd, workdir / "log_profile.txt")
    remove_output(out)
    if m.returncode != 0:
        raise RuntimeError(f"profiled run failed with exit code {m.returncode}")
    stats = pstats.Stats(str(prof))
    entries = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = func if file == "~" else f"{Path(file).name}:{line}({func})"
        entries.append({"function": where, "file": file, "calls": calls, "tottime_s": tottime, "cumtime_s": cumtime})
    prof.unlink(missing_ok=True)
    entries.sort(key=lambda e: e["cumtime_s"], reverse=True)
    print(f"profiled run: {m.wall_s:.2f} s wall (profiler overhead included), peak {mib(m.peak_rss_bytes)} MiB")
    print(f"top {top} by cumulative time:")
    rows = [
        [e["function"][:90], str(e["calls"]), f"{e['tottime_s']:.3f}", f"{e['cumtime_s']:.3f}"] for e in entries[:top]
    ]
    print(table(rows, ["function", "calls", "tottime s", "cumtime s"]))
    by_self = sorted(entries, key=lambda e: e["tottime_s"], reverse=True)[:15]
    print("\ntop 15 by own time:")
    rows = [[e["function"][:90], str(e["calls"]), f"{e['tottime_s']:.3f}", f"{e['cumtime_s']:.3f}"] for e in by_self]
    print(table(rows, ["function", "calls", "tottime s", "cumtime s"]))
    return entries[:top]


def versions() -> dict[str, str]:
    """Interpreter, packages, and the git state of the onnxprune sources measured."""
    found = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for package in ("onnx", "onnxruntime", "numpy", "protobuf", "onnxprune"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "absent"
    root = Path(__file__).resolve().parents[1]
    for key, git_args in (("git_commit", ["rev-parse", "HEAD"]), ("git_dirty", ["status", "--porcelain", "onnxprune"])):
        try:
            done = subprocess.run(["git", "-C", str(root), *git_args], capture_output=True, text=True, check=True)
            found[key] = done.stdout.strip() if key == "git_commit" else str(bool(done.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            found[key] = "unknown"
    return found


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", type=float, default=DEFAULT_PARAMS, help="approximate parameter count (default 1e8)"
    )
    parser.add_argument(
        "--layers", type=int, default=DEFAULT_LAYERS, help="linear layers in the FFN stack, even (default 64)"
    )
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="repetitions per case (default 5)")
    parser.add_argument(
        "--workdir", type=Path, help="folder for the model and outputs (default: a new folder under /tmp)"
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--profile", action="store_true", help="also profile the global case once with cProfile")
    parser.add_argument(
        "--keep", action="store_true", help="keep the model and logs (a later run with --workdir reuses the model)"
    )
    parser.add_argument("--model", type=Path, help="measure this model instead of building one")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (git worktree add DIR REV): case (c) also run by its onnxprune, as (e)",
    )
    parser.add_argument(
        "--imports",
        action="store_true",
        help="also time (f) 'import onnx' and (g) 'import onnxprune.cli' alone, and print the cases less them",
    )
    parser.add_argument(
        "--validated-floor",
        action="store_true",
        help="also time (h): onnx.load + onnx.save, then one onnxruntime session and run of the output",
    )
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # internal: build in a child process
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.layers < 2 or args.layers % 2:
        parser.error("--layers must be an even number >= 2")
    args.params = int(args.params)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build_only:
        info = build_model(args.build_only, args.params, args.layers, SEED)
        smoke_test(args.build_only)
        args.build_only.with_name(INFO_NAME).write_text(json.dumps(asdict(info), indent=2))
        return 0

    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="onnxprune-bench-", dir="/tmp")) if own_dir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        info = given_model(args.model) if args.model else ensure_model(workdir, args.params, args.layers)
        model = Path(info.path)
        commands = case_commands(model, workdir, args.baseline, args.imports, args.validated_floor)
        env = versions()
        print(f"onnxprune at {env['git_commit'][:12]} (uncommitted changes under onnxprune/: {env['git_dirty']})")
        warm_up(*([args.baseline] if args.baseline is not None else []))
        print(f"measuring {len(commands)} cases x {args.repeats} repetitions ...")
        runs = measure(commands, args.repeats, workdir)
        summaries = summarize(runs, commands, info.bytes)
        results = checks(summaries)
        print_report(info, summaries, results, args.repeats)
        profile = run_profile(model, workdir, PROFILE_TOP) if args.profile else None
        parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT
        print(f"\n(this process peaked at {mib(parent_peak)} MiB RSS; children inherit at most that from it)")
        if args.json:
            report = {
                "model": {k: v for k, v in asdict(info).items() if k != "path"},
                "environment": env,
                "repeats": args.repeats,
                "sparsity": float(SPARSITY),
                "memory_method": "os.wait4(pid) ru_maxrss of each child (its own high-water RSS)",
                "cases": {case: asdict(s) for case, s in summaries.items()},
                "ratios": {
                    "time_b_over_a": summaries["b"].time_over_a,
                    "time_c_over_a": summaries["c"].time_over_a,
                    "time_c_over_e": summaries["c"].median_s / summaries["e"].median_s if "e" in summaries else None,
                    "time_c_over_h": summaries["c"].median_s / summaries["h"].median_s if "h" in summaries else None,
                    "beyond_imports": work_beyond_imports(summaries),
                    "peak_over_model": {case: s.peak_over_model for case, s in summaries.items()},
                },
                "checks": results,
                "all_pass": all(item["pass"] for item in results),
                "runs": [asdict(r) for r in runs],
                "parent_peak_rss_bytes": parent_peak,
                "profile_global_top": profile,
            }
            args.json.write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        elif own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for name in (
                MODEL_NAME,
                INFO_NAME,
                *(f"log_{c}.txt" for c in (*CASE_LABELS, "profile")),
                "prune_global.prof",
            ):
                (workdir / name).unlink(missing_ok=True)
            for _, out in case_commands(workdir / MODEL_NAME, workdir).values():
                remove_output(out)
            remove_output(workdir / "out_profile.onnx")
            with contextlib.suppress(OSError):
                workdir.rmdir()  # only if now empty
    return 0


if __name__ == "__main__":
    sys.exit(main())
