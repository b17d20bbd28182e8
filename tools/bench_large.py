"""Benchmark: ``onnxprune prune`` on a model with external data larger than memory allows.

What it measures
    A model of ``--size`` GB (10^9 bytes) of float32 weights is generated once, outside the
    timed region, deterministically (seeded, ``--seed``) and streamed: the weights are written
    to the external-data file a block of rows at a time and the ``.onnx`` file holds only the
    graph and the references, so the generator never holds more than one block. The graph is
    a chain of square ``D x D`` layers, alternating MatMul and Gemm (``transB=1``, with a bias),
    each weight exactly the ``--largest`` size (``D`` a multiple of 4, so 2:4 applies to every
    layer): the largest tensor is that size, and the model has ``round(size / largest)`` layers.

    Then, side by side, interleaved over ``--repeats`` repetitions (each repetition in its own
    seeded random order, ``bench_prune.interleaved_orders``: no case always follows the same one;
    each case in a fresh process, every output deleted after its case):

    - ``cp``: a plain copy of the model's two files (the I/O floor);
    - ``dcp``: the same copy made durable, each copied file ``fsync``-ed before the process
      exits (:data:`DURABLE_COPY`): the floor of a tool that, as onnxprune does, has its output
      on disk before it reports success. The report gives each case against it too (``x dcp``);
      the verdicts stay against ``cp``, issue 16's floor;
    - ``oracle``: the least work any magnitude pruner does (:data:`ORACLE`): the ``.onnx`` file
      copied; the data file's float32 words read (memory-mapped) and each written out as itself
      or ``+0`` against a cut handed to it, in one pass on every CPU through the page cache: no
      search for the cut, no validation, no ``fsync``, no library but numpy. A time target
      under this floor cannot be met by any pruner: the report says how far above ``cp`` it is,
      and gives each case against it too (``x oracle``). It is a floor where the page cache holds
      the model and its output (2 GB here); past memory its mapped reads and buffered writes
      compete for the page cache, and onnxprune, which writes past it, beats it (12 GB: 29.0 s
      against local's 21.1 s, stop 48);
    - ``local``: ``onnxprune prune IN OUT --sparsity 0.5``;
    - ``lamp``: ``onnxprune prune IN OUT --sparsity 0.5 --scope global --criterion lamp``;
    - ``nm``: ``onnxprune prune IN OUT --pattern 2:4``.

    Each prune also writes ``--json`` (what the validation ran on is reported). With
    ``--baseline DIR`` (a checkout of another commit: ``git worktree add DIR REV``), every prune
    case also runs with that checkout's onnxprune as ``base_<case>``, in the same orders, so
    that two commits are compared side by side on one machine state rather than across runs.

How peak memory and time are measured
    Wall time from process start to exit, and the child's own peak RSS from ``os.wait4`` (the
    method and helpers of ``tools/bench_prune.py``, imported: ``run_measured``, and ``warm_up``,
    which compiles onnxprune to bytecode first, as an install does). Memory-mapped pages of the
    model count in RSS while mapped, so reading the weights that way is no way around the
    figure. The generator runs in a subprocess, so this process stays small.

Page cache
    By default runs are *warm* as far as the page cache holds the model: it was just written,
    and every case reads it again. The report gives the model size against the memory
    (``MemTotal``, and ``Cached`` before each case from ``/proc/meminfo``) so the reader can
    tell how much of it was cached. How much that is moves from case to case with what the
    one before left, and with it the ``cp`` floor (12 GB: 11 to 30 s on the same machine).
    With ``--cold`` (root only) every case starts from an empty page cache instead (``sync``,
    then ``3`` into ``/proc/sys/vm/drop_caches``), as a model past memory is read: the same
    state for every case, from the device.

Targets (PASS/FAIL, per prune case)
    memory: peak RSS <= 4 x the largest tensor + 1 GB (10^9 bytes);
    time:   median wall time <= 2 x the median wall time of ``cp``.

The child processes' output goes to ``WORKDIR/logs``, kept. Disk: the model plus one output (about twice ``--size``) must fit in the work folder with
10 % to spare; the script checks before generating and deletes everything at the end unless
``--keep``. Run from the repository root::

    nice .venv/bin/python tools/bench_large.py --size 2                 # quick
    nice .venv/bin/python tools/bench_large.py --size 12 --largest 0.5  # the issue's case
    git worktree add /tmp/base c58110a && nice .venv/bin/python tools/bench_large.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prune import FROM_CHECKOUT, interleaved_orders, run_measured, warm_up

GB = 10**9
SEED = 0
OPSET = 17
IR_VERSION = 8
DROP_CACHES = "/proc/sys/vm/drop_caches"
MODEL_NAME = "large.onnx"
DATA_NAME = "large.onnx.data"
BLOCK_BYTES = 64 << 20  # rows generated and written at a time
MEMORY_SLACK = 1 * GB  # the "+ 1 GB" of the memory target
MEMORY_FACTOR = 4  # peak RSS <= MEMORY_FACTOR x largest tensor + MEMORY_SLACK
TIME_TARGET = 2.0  # prune median wall <= TIME_TARGET x cp median wall
DISK_SPARE = 1.1
CASES = ("cp", "dcp", "oracle", "local", "lamp", "nm")
FLOORS = ("cp", "dcp", "oracle")
#: case ``dcp``: the files given first copied into the folder given last (``shutil.copyfile``:
#: the kernel's copy, as ``cp``), each then ``fsync``-ed
DURABLE_COPY = (
    "import os, shutil, sys\n"
    "for source in sys.argv[1:-1]:\n"
    "    target = os.path.join(sys.argv[-1], os.path.basename(source))\n"
    "    shutil.copyfile(source, target)\n"
    "    fd = os.open(target, os.O_RDONLY)\n"
    "    os.fsync(fd)\n"
    "    os.close(fd)\n"
)
#: case ``oracle``: the model (first argument) and its data file (second) into the folder given
#: last, the data file's float32 words zeroed where ``|w| <= ORACLE_CUT`` (a cut handed over,
#: not searched: the cost of the pass does not depend on it), chunks of 4 Mi words on as many
#: threads as CPUs, each chunk one fused pass (keys, compare, select) and one ``pwrite``
ORACLE = (
    "import os, shutil, sys, threading\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "import numpy as np\n"
    "model, data, folder = sys.argv[1:4]\n"
    "shutil.copyfile(model, os.path.join(folder, os.path.basename(model)))\n"
    "words = np.memmap(data, dtype=np.uint32, mode='r')\n"
    "fd = os.open(os.path.join(folder, os.path.basename(data)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
    "cut, sign, chunk, local = np.uint32(ORACLE_CUT), np.uint32(0x7FFFFFFF), 1 << 22, threading.local()\n"
    "def prune(start):\n"
    "    if not hasattr(local, 'keys'):\n"
    "        local.keys, local.out = np.empty(chunk, np.uint32), np.empty(chunk, np.uint32)\n"
    "    bits = words[start : start + chunk]\n"
    "    keys, out = local.keys[: bits.size], local.out[: bits.size]\n"
    "    np.bitwise_and(bits, sign, out=keys)\n"
    "    np.multiply(bits, keys > cut, out=out)\n"
    "    os.pwrite(fd, out, 4 * start)\n"
    "with ThreadPoolExecutor(os.cpu_count()) as pool:\n"
    "    list(pool.map(prune, range(0, words.size, chunk)))\n"
    "os.close(fd)\n"
).replace("ORACLE_CUT", "0x3C23D70A")  # 0.01 as float32 bits
PRUNE_ARGS = {
    "local": ["--sparsity", "0.5"],
    "lamp": ["--sparsity", "0.5", "--scope", "global", "--criterion", "lamp"],
    "nm": ["--pattern", "2:4"],
}


# --------------------------------------------------------------------------- the model


def plan(size_gb: float, largest_gb: float) -> tuple[int, int]:
    """``(D, layers)``: the side of each square float32 weight (a multiple of 4, about
    ``largest_gb``) and how many make about ``size_gb``."""
    side = int(math.sqrt(largest_gb * GB / 4)) // 4 * 4
    layers = max(1, round(size_gb * GB / (side * side * 4)))
    return side, layers


def generate(folder: Path, side: int, layers: int, seed: int) -> None:
    """Write the model (run in a subprocess: see the module docstring)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / DATA_NAME
    inits: list[TensorProto] = []
    nodes = []
    offset = 0
    rows = max(1, BLOCK_BYTES // (side * 4))
    scale = np.float32(1.0 / math.sqrt(side))

    def reference(name: str, dims: list[int], start: int, length: int) -> TensorProto:
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_NAME), ("offset", str(start)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    with open(data_path, "wb") as data:
        for layer in range(layers):
            rng = np.random.default_rng([seed, layer])
            start = offset
            for first in range(0, side, rows):
                block = rng.standard_normal((min(rows, side - first), side), dtype=np.float32) * scale
                data.write(block.tobytes())
                offset += block.nbytes
            inits.append(reference(f"W{layer}", [side, side], start, offset - start))
            previous = "x" if layer == 0 else f"h{layer - 1}"
            if layer % 2 == 0:
                nodes.append(helper.make_node("MatMul", [previous, f"W{layer}"], [f"h{layer}"], name=f"matmul{layer}"))
            else:
                bias = (rng.standard_normal(side, dtype=np.float32) * scale).tobytes()
                data.write(bias)
                inits.append(reference(f"b{layer}", [side], offset, len(bias)))
                offset += len(bias)
                nodes.append(
                    helper.make_node(
                        "Gemm", [previous, f"W{layer}", f"b{layer}"], [f"h{layer}"], name=f"gemm{layer}", transB=1
                    )
                )
    graph = helper.make_graph(
        nodes,
        "bench_large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info(f"h{layers - 1}", TensorProto.FLOAT, [1, side])],
        inits,
    )
    model = helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.save_model(model, str(folder / MODEL_NAME))


# --------------------------------------------------------------------------- measuring


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                key, value = line.split(":", 1)
                found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


@dataclass
class Case:
    name: str
    command: list[str]
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    cached_before: list[int] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    returncodes: list[int] = field(default_factory=list)


def commands(model: Path, out_dir: Path, baseline: Path | None = None) -> dict[str, list[str]]:
    """The command of every case; with ``baseline`` (a checkout of another commit) also
    ``base_<case>`` for every prune case, the same command run by that checkout's onnxprune."""
    py = sys.executable
    data = model.with_name(DATA_NAME)
    found = {
        "cp": ["cp", str(model), str(data), str(out_dir)],
        "dcp": [py, "-c", DURABLE_COPY, str(model), str(data), str(out_dir)],
        "oracle": [py, "-c", ORACLE, str(model), str(data), str(out_dir)],
    }
    for case, args in PRUNE_ARGS.items():
        out = out_dir / f"out_{case}.onnx"
        found[case] = [py, "-m", "onnxprune", "prune", str(model), str(out), *args, "--json", f"{out}.json", "-q"]
        if baseline is not None:
            out = out_dir / f"out_base_{case}.onnx"
            found[f"base_{case}"] = [
                *(py, "-c", FROM_CHECKOUT, str(baseline.resolve())),
                *("prune", str(model), str(out), *args, "--json", f"{out}.json", "-q"),
            ]
    return found


def clean(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        path.unlink()


def validation_of(out_dir: Path, case: str) -> str:
    report = out_dir / f"out_{case}.onnx.json"
    if not report.exists():
        return ""
    validation = json.loads(report.read_text()).get("validation") or {}
    return str(validation.get("ran_on", ""))


def drop_page_cache() -> None:
    """Write back every dirty page, then empty the page cache (root only)."""
    os.sync()
    with open(DROP_CACHES, "w") as handle:
        handle.write("3\n")


def measure(cases: dict[str, Case], repeats: int, out_dir: Path, logs: Path, *, cold: bool = False) -> None:
    for rep, order in enumerate(interleaved_orders(list(cases), repeats)):
        for name in order:
            case = cases[name]
            if cold:
                drop_page_cache()
            cached = meminfo().get("Cached", 0)
            done = run_measured(case.command, logs / f"{name}_{rep}.log")
            case.wall_s.append(done.wall_s)
            case.cpu_s.append(done.cpu_s)
            case.peak_rss.append(done.peak_rss_bytes)
            case.cached_before.append(cached)
            case.returncodes.append(done.returncode)
            case.validation.append(validation_of(out_dir, name) if name not in FLOORS else "")
            print(
                f"  {name:10s} rep {rep}: {done.wall_s:7.1f} s wall, {done.cpu_s:7.1f} s CPU, "
                f"peak RSS {done.peak_rss_bytes / GB:6.2f} GB, exit {done.returncode}",
                flush=True,
            )
            clean(out_dir)


def report(cases: dict[str, Case], largest: int, size: int, side: int, layers: int) -> dict[str, Any]:
    memory_limit = MEMORY_FACTOR * largest + MEMORY_SLACK
    floor = statistics.median(cases["cp"].wall_s) if "cp" in cases and cases["cp"].wall_s else None
    durable = statistics.median(cases["dcp"].wall_s) if "dcp" in cases and cases["dcp"].wall_s else None
    oracle = statistics.median(cases["oracle"].wall_s) if "oracle" in cases and cases["oracle"].wall_s else None
    info = meminfo()
    print()
    print(
        f"model: {size / GB:.2f} GB of weights ({layers} layers of {side}x{side} float32), largest tensor "
        f"{largest / GB:.3f} GB; machine: {info.get('MemTotal', 0) / GB:.1f} GB memory, {os.cpu_count()} CPUs"
    )
    print(
        f"targets: peak RSS <= {MEMORY_FACTOR} x largest + 1 GB = {memory_limit / GB:.2f} GB; wall <= {TIME_TARGET} x cp"
    )
    header = (
        f"{'case':10s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'x cp':>6s} {'x dcp':>6s} {'x oracle':>8s}"
        f" {'peak GB':>8s}"
        f" {'x limit':>8s}  verdict"
    )
    print(header)
    summary: dict[str, Any] = {}
    for name, case in cases.items():
        median = statistics.median(case.wall_s)
        peak = max(case.peak_rss)
        ratio = median / floor if floor else float("nan")
        over_durable = median / durable if durable else float("nan")
        over_oracle = median / oracle if oracle else float("nan")
        mem_ratio = peak / memory_limit
        failed = any(case.returncodes)
        verdict = (
            "-"
            if name in FLOORS
            else "FAIL (exit)"
            if failed
            else (
                ("time PASS" if ratio <= TIME_TARGET else "time FAIL")
                + ", "
                + ("memory PASS" if mem_ratio <= 1 else "memory FAIL")
            )
        )
        print(
            f"{name:10s} {median:9.1f} {min(case.wall_s):7.1f} {max(case.wall_s):7.1f} {ratio:6.2f} "
            f"{over_durable:6.2f} {over_oracle:8.2f} {peak / GB:8.2f} {mem_ratio:8.2f}  {verdict}"
        )
        summary[name] = {
            **asdict(case),
            "median_s": median,
            "time_over_cp": ratio,
            "time_over_dcp": over_durable,
            "time_over_oracle": over_oracle,
            "peak_over_limit": mem_ratio,
        }
    if oracle and floor:
        print(
            f"oracle (a magnitude prune handed its cut: one pass, no search, validation or fsync) took "
            f"{oracle / floor:.2f} x cp: the time target ({TIME_TARGET} x cp) leaves a pruner "
            f"{max(0.0, TIME_TARGET * floor - oracle):.1f} s beyond it for the search, the checks and its start-up"
        )
    for name, case in cases.items():
        if case.validation and case.validation[0]:
            print(f"validation of {name}: {case.validation[0]}")
    cached = {name: [round(c / GB, 2) for c in case.cached_before] for name, case in cases.items()}
    print(f"page cache before each run (GB, /proc/meminfo Cached): {cached}; the model is {size / GB:.2f} GB")
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=12.0, help="GB (10^9 bytes) of weights (default 12)")
    parser.add_argument("--largest", type=float, default=0.5, help="GB of the largest (every) weight (default 0.5)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated among {','.join(CASES)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/i16_large/bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated model and the work folder")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="empty the page cache before every case (root only): the model read from disk",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (git worktree add DIR REV): its onnxprune runs every prune case "
        "too (base_<case>), interleaved with this one's",
    )
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # the generator's subprocess
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.workdir / "model"
    if args.generate:
        generate(model_dir, args.side, args.layers, args.seed)
        return 0
    if args.cold and not os.access(DROP_CACHES, os.W_OK):
        print(
            f"--cold empties the page cache through {DROP_CACHES}, which this user cannot write: "
            "run as root or drop --cold"
        )
        return 2
    side, layers = plan(args.size, args.largest)
    largest = side * side * 4
    size = layers * largest + (layers // 2) * side * 4
    args.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.workdir).free
    if free < DISK_SPARE * 2 * size:
        print(f"not enough disk in {args.workdir}: {free / GB:.1f} GB free, {DISK_SPARE * 2 * size / GB:.1f} GB needed")
        return 2
    out_dir, logs = args.workdir / "out", args.workdir / "logs"
    for folder in (out_dir, logs):
        folder.mkdir(exist_ok=True)
    try:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--generate",
                "--side",
                str(side),
                "--layers",
                str(layers),
                "--seed",
                str(args.seed),
                "--workdir",
                str(args.workdir),
            ],
            check=True,
        )
        print(
            f"generated {size / GB:.2f} GB in {time.perf_counter() - start:.0f} s (not timed): {model_dir}", flush=True
        )
        every = commands(model_dir / MODEL_NAME, out_dir, args.baseline)
        warm_up(*([args.baseline] if args.baseline is not None else []))
        names = args.cases.split(",")
        if args.baseline is not None:
            names += [f"base_{name}" for name in names if name in PRUNE_ARGS]
        cases = {name: Case(name, every[name]) for name in names}
        print(
            "page cache: emptied before every case (--cold)" if args.cold else "page cache: as the case before left it"
        )
        measure(cases, args.repeats, out_dir, logs, cold=args.cold)
        summary = report(cases, largest, size, side, layers)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "size_bytes": size,
                        "largest_bytes": largest,
                        "side": side,
                        "layers": layers,
                        "machine": platform.platform(),
                        "cold": args.cold,
                        "cases": summary,
                    },
                    indent=2,
                )
            )
    finally:
        if not args.keep:  # the logs stay
            for folder in (model_dir, out_dir):
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
