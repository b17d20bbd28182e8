"""Fuzz the ``onnxprune`` command line with hostile inputs: mutated models, data, plans and options.

What it does
    Each case copies a fixture model (fixtures/*.onnx) into a temporary folder of its own,
    mutates it (or its calibration data, labels, plan file, options or output paths), runs one
    command (``prune``, ``inspect``, ``eval`` or ``analyze``) there, and checks what a hostile
    input must never cause:

    internal-error     exit code 70 (onnxprune's "a bug, rerun with --debug")
    traceback          "Traceback" anywhere in stdout or stderr
    crash-signal       the process died of a signal (segfault, abort, file-size limit ...)
    bad-exit-code      an exit code that is not documented (0, 1-7, 10, 70)
    hang               still running after --timeout seconds (killed, with its process group)
    write-outside      a file written, changed or removed outside the case's run folder: the
                       case's own folder (its parent), the folder of all cases, fixtures/
    input-changed      an input file (model, external data, npz, labels, plan ...) whose sha256
                       changed, or that disappeared
    leftover-staging   a hidden ``.NAME.*.tmp`` file or folder left behind (the staging names
                       of onnxprune.graph.model_io: StagedOutput, write_file)
    leftover-temp      something left in the case's TMPDIR
    undeclared-output  a new file that is none of the outputs the command line names (OUT,
                       OUT.data, --json, --report, --eval-json, --plan-out, --cache-dir); in
                       HOME only the XDG cache may be written
    missing-output     prune exited 0 but OUT does not exist
    escape-accepted    a model whose external data points outside its folder (absolute path,
                       '..', a symbolic link out, a device) was accepted (exit 0)
    stray-process      a process of the case still alive after the command exited

    Every other exit (0, a documented error code with its one-line message, 10 nothing to
    prune) is a pass: a hostile input is expected to be refused cleanly.

Isolation
    Each case gets ``CASES/cNNNNNN/`` with ``run/`` (the working directory: inputs and
    outputs), ``home/`` (HOME and the XDG_* folders) and ``tmp/`` (TMPDIR), and bait files
    next to ``run/`` that the model's external data may point at. The command runs in its own
    session (process group) with a timeout, an address-space limit (--memory-limit) and a
    file-size limit.

Speed
    ``--runner fork`` (default): each of --jobs worker processes imports onnxprune once, then
    forks a child per case that runs the click command in-process (the child resets HOME,
    TMPDIR and the working directory, runs atexit handlers and exits with the command's code),
    so a case costs only its own work, not the ~1 s of imports of ``python -m onnxprune``.
    ``--runner subprocess`` runs ``python -m onnxprune`` per case instead (slower, for
    comparison). Cases are seeded: case I of seed S is the same on every run and machine with
    the same fixtures, so ``--only I`` reruns it.

Usage (from the repository root)::

    .venv/bin/python tools/fuzz.py --cases 300 --seed 0              # ~1-2 min on 2 cores
    .venv/bin/python tools/fuzz.py --cases 10000 --jobs 8 --json fuzz.json   # nightly
    .venv/bin/python tools/fuzz.py --seed 0 --only 17,40-45 --keep-failures /tmp/fuzz-kept
    /tmp/fuzz-kept/case-000017/repro.sh --debug                        # rerun with the traceback

It prints the counts by outcome (ok, clean errors by exit code, failures by kind), the
distinct failure signatures with a repro command each, and the wall time; it exits 1 if any
case failed. ``--keep-failures DIR`` regenerates each failing case in DIR with ``repro.sh``
(extra arguments are passed to onnxprune), ``result.json``, the captured output and a listing
of the case folder after the run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import io
import json
import os
import random
import re
import resource
import selectors
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"

#: Fixture stems (relative to fixtures/) and how often each is drawn: small models more often.
FIXTURE_MODELS: tuple[tuple[str, float], ...] = (
    ("mlp_digits", 3.0),
    ("cnn_digits", 3.0),
    ("mlp_digits_fp16", 1.0),
    ("cnn_digits_const", 1.0),
    ("lstm_mnist1d", 1.0),
    ("transformer_mnist1d", 1.0),
    ("masked/mlp_masked", 1.0),
    ("masked/cnn_masked", 1.0),
    ("masked/transformer_masked", 0.5),
)

COMMANDS = {"prune": 0.5, "inspect": 0.15, "eval": 0.2, "analyze": 0.15}
#: Exit codes a hostile input may cause (README, "Exit codes"); 70 is a bug.
CLEAN_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 10}
INTERNAL_ERROR = 70
FAILURE_KINDS = (
    "internal-error",
    "traceback",
    "crash-signal",
    "bad-exit-code",
    "hang",
    "write-outside",
    "input-changed",
    "leftover-staging",
    "leftover-temp",
    "undeclared-output",
    "missing-output",
    "escape-accepted",
    "stray-process",
    "harness-error",
)
#: The staging names of onnxprune.graph.model_io (mkdtemp / mkstemp prefix ".NAME.", suffix ".tmp").
STAGING = re.compile(r"^\..*\.tmp$")
#: One BLAS thread per case: --jobs processes share the cores, and no BLAS pool lives across fork().
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Files of a case folder that the harness itself writes.
HARNESS_FILES = {"stdout.txt", "stderr.txt"}
CASE_DIRS = ("run", "home", "tmp")
#: Files that a dependency (not onnxprune) leaves in TMPDIR on import, with who writes them: not findings.
THIRD_PARTY_TEMP = {".ses": "onnxruntime's telemetry session file, written when onnxruntime is imported"}


# ----------------------------------------------------------------------------------------------
# Case folders
# ----------------------------------------------------------------------------------------------


def case_name(index: int) -> str:
    return f"c{index:06d}"


def make_box(box: Path) -> None:
    """The folder of one case: run/ (cwd), home/ (HOME, XDG), tmp/ (TMPDIR) and bait files."""
    if box.exists():
        shutil.rmtree(box)
    for sub in CASE_DIRS:
        (box / sub).mkdir(parents=True)
    # bait next to run/: external data may point here ('../outside.bin', links); it must be refused
    (box / "outside.bin").write_bytes(bytes(range(256)) * 64)
    (box / "secret.txt").write_text("not for onnxprune\n")


def case_env(box: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ONNXPRUNE"))}
    home = box / "home"
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_RUNTIME_DIR=str(home / ".run"),
        TMPDIR=str(box / "tmp"),
        TEMP=str(box / "tmp"),
        TMP=str(box / "tmp"),
        PYTHONDONTWRITEBYTECODE="1",
        COLUMNS="120",
        **THREAD_ENV,
    )
    env.pop("PYTHONSTARTUP", None)
    return env


def walk(root: Path, *, skip: set[str] = frozenset()) -> dict[str, tuple]:
    """relative path -> (kind, size, mtime_ns, inode, link target) for everything under root
    (links are not followed); top-level names in ``skip`` are left out."""
    found: dict[str, tuple] = {}
    if not root.exists():
        return found
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if folder == root and entry.name in skip:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.is_symlink():
                found[rel] = ("link", 0, st.st_mtime_ns, st.st_ino, os.readlink(path))
            elif entry.is_dir(follow_symlinks=False):
                found[rel] = ("dir", 0, st.st_mtime_ns, st.st_ino, "")
                stack.append(path)
            else:
                found[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_ino, "")
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (links: their target text)."""
    out = {}
    for rel, (kind, *_rest, target) in walk(root).items():
        if kind == "file":
            out[rel] = sha256(root / rel)
        elif kind == "link":
            out[rel] = f"link:{target}"
    return out


def diff(before: dict[str, tuple], after: dict[str, tuple], *, mtime: bool = True) -> list[str]:
    changes = []
    for rel in sorted(set(before) | set(after)):
        a, b = before.get(rel), after.get(rel)
        if a is None:
            changes.append(f"created {rel}")
        elif b is None:
            changes.append(f"removed {rel}")
        elif a[0] != b[0] or a[1] != b[1] or a[4] != b[4] or (mtime and a[0] != "dir" and a[2] != b[2]):
            changes.append(f"changed {rel}")
    return changes


# ----------------------------------------------------------------------------------------------
# Hostile inputs
# ----------------------------------------------------------------------------------------------


def png(width: int, height: int, *, data_rows: int | None = None) -> bytes:
    """A grayscale PNG; ``data_rows`` < height makes the declared size a lie (a bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = height if data_rows is None else data_rows
    raw = b"".join(b"\x00" + bytes((x * 7 + y * 13) % 256 for x in range(min(width, 64))) for y in range(rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def npy_bomb_npz(name: str) -> bytes:
    """An .npz whose member declares a 4 TiB array but holds 64 bytes."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 64), }"
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 64
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}.npy", member)
    return buffer.getvalue()


class Fixture:
    """One fixture model and its data, read once per worker."""

    def __init__(self, stem: str) -> None:
        import numpy as np
        import onnx

        self.stem = stem
        self.path = FIXTURES / f"{stem}.onnx"
        self.calib_path = FIXTURES / f"{stem}.calib.npz"
        self.test_path = FIXTURES / f"{stem}.test.npz"
        self.labels_path = FIXTURES / f"{stem}.test_labels.npy"
        self.data = self.path.read_bytes()
        self.model = onnx.load_from_string(self.data)
        with np.load(self.calib_path) as z:
            self.calib = {k: z[k] for k in z.files}
        with np.load(self.test_path) as z:
            self.test = {k: z[k] for k in z.files}
        self.labels = np.load(self.labels_path)
        inits = {t.name for t in self.model.graph.initializer}
        self.inputs = [i for i in self.model.graph.input if i.name not in inits]
        self.input_name = self.inputs[0].name
        dims = self.inputs[0].type.tensor_type.shape.dim
        self.input_dims = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        self.output_names = [o.name for o in self.model.graph.output]
        self.weight_names = [t.name for t in tensors(self.model) if len(t.dims) >= 2]


def tensors(model: Any) -> list[Any]:
    """Graph-level initializers and Constant-node tensors."""
    import onnx

    out = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            out.extend(a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR)
    return out


def _place(path: Path, make) -> None:
    """Make the bait at ``path`` once: a case may apply the same mutation twice."""
    if not (path.exists() or path.is_symlink()):
        make(path)


def words(text: str) -> list[str]:
    """A list of choices written as one string (keeps the tables below short)."""
    return text.split()


class Builder:
    """Builds case ``index`` of ``seed`` into ``box``: writes its inputs, returns its spec.

    Each case has one *focus*, the kind of input that is hostile in it (the model, the data and
    plan files, the option values, the output paths, several at once, or none), so that an early
    refusal of one bad input does not hide what a later one would do.
    """

    FOCUS: ClassVar[dict[str, float]] = {
        "model": 0.42,
        "files": 0.16,
        "options": 0.18,
        "paths": 0.1,
        "multi": 0.06,
        "none": 0.08,
    }

    def __init__(self, seed: int, index: int, box: Path, fixtures: dict[str, Fixture], commands: list[str]) -> None:
        import numpy as np

        self.r = random.Random(f"onnxprune-fuzz:{seed}:{index}")
        self.nr = np.random.default_rng([abs(seed), index])
        self.seed, self.index = seed, index
        self.box, self.run = box, box / "run"
        self.fixtures = fixtures
        self.commands = commands
        self.focus = self.weighted(self.FOCUS)
        self.args: list[str] = []
        self.tags: list[str] = []
        self.outputs: list[str] = []
        self.output_dirs: list[str] = []
        self.may_change: list[str] = []
        self.must_fail = False
        self.expect_file: str | None = None
        self.n_samples: int | None = None

    # -- choices ------------------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def hostile(self, focus: str, p: float = 0.5) -> bool:
        """Whether to make this input hostile: likely where it is the case's focus."""
        if self.focus == focus:
            return self.chance(p)
        return self.focus == "multi" and self.chance(p / 2)

    def pick(self, items: Any) -> Any:
        items = words(items) if isinstance(items, str) else list(items)
        return items[self.r.randrange(len(items))]

    def weighted(self, table: dict[Any, float]) -> Any:
        pairs = list(table.items())
        x = self.r.random() * sum(w for _, w in pairs)
        for item, w in pairs:
            x -= w
            if x < 0:
                return item
        return pairs[-1][0]

    def tag(self, text: str) -> None:
        self.tags.append(text)

    def write(self, rel: str, data: bytes | str) -> str:
        path = self.run / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return rel

    def fixture(self) -> Fixture:
        return self.fixtures[self.weighted(dict(FIXTURE_MODELS))]

    def local(self, path: str) -> bool:
        """Whether ``path`` is a file of the run folder itself (not a fixture, nor a link to one)."""
        return not os.path.isabs(path) and ".." not in Path(path).parts and not (self.run / path).is_symlink()

    # -- the case -----------------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        command = self.weighted({c: w for c, w in COMMANDS.items() if c in self.commands})
        getattr(self, f"cmd_{command}")()
        return {
            "index": self.index,
            "seed": self.seed,
            "command": command,
            "focus": self.focus,
            "args": [command, *self.args],
            "tags": self.tags,
            "outputs": self.outputs,
            "output_dirs": self.output_dirs,
            "may_change": self.may_change,
            "must_fail": self.must_fail,
            "expect_file": self.expect_file,
        }

    # -- models -------------------------------------------------------------------------------
    def model_arg(self, fx: Fixture, name: str = "model.onnx", p_mutate: float = 0.9) -> str:
        """Writes the input model (maybe mutated); returns its path as given on the command line."""
        kind = "none"
        if self.hostile("model", p_mutate):
            kind = self.weighted({"proto": 0.55, "bytes": 0.2, "ext": 0.2, "path": 0.05})
        elif self.chance(0.05):
            kind = "ext-ok"  # a healthy model with external data
        if kind == "none":
            if self.chance(0.25):
                return str(fx.path)  # the fixture itself: it must stay untouched
            return self.write(name, fx.data)
        if kind == "bytes":
            return self.write(name, self.mutate_bytes(fx.data))
        if kind == "path":
            variant = self.pick("missing folder empty npz-as-model link-to-fixture")
            self.tag(f"model-path:{variant}")
            if variant == "missing":
                return "missing.onnx"
            if variant == "folder":
                (self.run / name).mkdir()
            elif variant == "empty":
                self.write(name, b"")
            elif variant == "npz-as-model":
                self.write(name, fx.calib_path.read_bytes())
            else:
                (self.run / name).symlink_to(fx.path)
            return name
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(fx.model)
        if kind in ("ext", "ext-ok"):
            return self.external(model, name, "ok" if kind == "ext-ok" else None)
        for _ in range(1 + self.chance(0.2)):
            self.mutate_proto(model)
        try:
            data = model.SerializeToString()
        except Exception as exc:  # a mutation that protobuf cannot write: say so, use the original
            self.tag(f"unserializable:{type(exc).__name__}")
            data = fx.data
        return self.write(name, data)

    def mutate_bytes(self, data: bytes) -> bytes:
        variant = self.pick("flip flip flip truncate truncate head append insert random length-bomb text")
        self.tag(f"bytes:{variant}")
        buf = bytearray(data)
        if variant == "flip":
            for _ in range(self.r.randint(1, 24)):
                buf[self.r.randrange(len(buf))] ^= 1 << self.r.randrange(8)
            return bytes(buf)
        if variant == "truncate":
            return bytes(buf[: self.r.randrange(1, len(buf))])
        if variant == "head":
            return bytes(buf[: self.r.randint(1, 64)])
        if variant == "append":
            return bytes(buf) + self.r.randbytes(self.r.randint(1, 512))
        if variant == "insert":
            at = self.r.randrange(len(buf))
            return bytes(buf[:at]) + self.r.randbytes(self.r.randint(1, 64)) + bytes(buf[at:])
        if variant == "random":
            return self.r.randbytes(self.r.randint(1, 4096))
        if variant == "length-bomb":  # ir_version 8, then field 7 (graph) claiming 2**35 bytes
            return b"\x08\x08\x3a\x80\x80\x80\x80\x80\x01" + bytes(buf[:128])
        return b"ir_version: 8\ngraph { name: 'x' }\n"

    MUTATIONS: ClassVar[dict[str, float]] = {
        "init_dims": 2,
        "init_dtype": 2,
        "io_dtype": 1,
        "attr": 3,
        "rename_input": 2,
        "drop_init": 1,
        "dup_init": 1,
        "nan_weights": 2,
        "empty_graph": 1,
        "input_dims": 2,
        "opset": 2,
        "op_type": 1,
        "dup_output": 1,
        "raw_payload": 1,
        "deep_subgraph": 0.5,
        "long_chain": 0.5,
        "sparse_init": 0.5,
        "value_info": 0.5,
        "local_function": 0.5,
        "weight_is_input": 0.5,
    }

    def mutate_proto(self, model: Any) -> None:
        for _ in range(5):
            try:
                tag = getattr(self, f"m_{self.weighted(self.MUTATIONS)}")(model)
            except (IndexError, ValueError, TypeError, KeyError):  # not applicable to what an earlier one left
                tag = None
            if tag:
                self.tag(f"model:{tag}")
                return

    def _weights(self, model: Any) -> list[Any]:
        found = [t for t in tensors(model) if len(t.dims) >= 2]
        return found or tensors(model)

    def m_init_dims(self, model: Any) -> str | None:
        t = self.pick(self._weights(model))
        dims = list(t.dims)
        variant = self.pick("reverse plus-one zero negative huge drop add scalar")
        new = {
            "reverse": dims[::-1] if len(set(dims)) > 1 else [*dims, 2],
            "plus-one": [dims[0] + 1, *dims[1:]] if dims else [1],
            "zero": [0, *dims[1:]],
            "negative": [-1, *dims[1:]],
            "huge": [2**40, *dims[1:]],
            "drop": dims[:-1],
            "add": [*dims, 1, 3],
            "scalar": [],
        }[variant]
        del t.dims[:]
        t.dims.extend(new)
        return f"init-dims:{variant}"

    def m_init_dtype(self, model: Any) -> str | None:
        t = self.pick(self._weights(model))
        t.data_type = self.pick([0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 22, 23, 99, -1])
        return f"init-dtype:{t.data_type}"

    def m_io_dtype(self, model: Any) -> str | None:
        where = self.pick("input output")
        value = (model.graph.input if where == "input" else model.graph.output)[0]
        variant = self.pick("int64 string bool float16 undefined sequence no-type")
        if variant == "sequence":
            elem = value.type.tensor_type.elem_type
            value.type.ClearField("tensor_type")
            value.type.sequence_type.elem_type.tensor_type.elem_type = elem
        elif variant == "no-type":
            value.ClearField("type")
        else:
            codes = {"int64": 7, "string": 8, "bool": 9, "float16": 10, "undefined": 0}
            value.type.tensor_type.elem_type = codes[variant]
        return f"{where}-dtype:{variant}"

    def m_attr(self, model: Any) -> str | None:
        import onnx

        A = onnx.AttributeProto
        node = self.pick([n for n in model.graph.node if n.attribute])
        attr = self.pick(node.attribute)
        variant = self.pick("huge negative zero string nan empty remove unknown mistyped")
        if variant == "remove":
            node.attribute.remove(attr)
        elif variant == "unknown":
            node.attribute.append(onnx.helper.make_attribute("fuzz_bogus", 7))
        elif variant == "string":
            name = attr.name
            attr.Clear()
            attr.name, attr.type, attr.s = name, A.STRING, b"abc"
        elif variant == "mistyped":  # the type tag says INTS (or FLOAT), the value is elsewhere
            attr.type = A.INTS if attr.type != A.INTS else A.FLOAT
        elif attr.type == A.INT:
            attr.i = {"huge": 2**62, "negative": -(2**31), "zero": 0, "nan": -1, "empty": 0}[variant]
        elif attr.type == A.INTS:
            n = len(attr.ints)
            value = {"huge": [2**62] * n, "negative": [-1] * n, "zero": [0] * n, "nan": [-5] * (n + 3), "empty": []}
            del attr.ints[:]
            attr.ints.extend(value[variant])
        elif attr.type == A.FLOAT:
            attr.f = {"huge": 3e38, "negative": -1.0, "zero": 0.0, "nan": float("nan"), "empty": float("inf")}[variant]
        elif attr.type == A.FLOATS:
            del attr.floats[:]
            attr.floats.extend([] if variant == "empty" else [float("nan")] * 3)
        elif attr.type == A.TENSOR:
            del attr.t.dims[:]
            attr.t.dims.extend({"huge": [2**40], "negative": [-3], "zero": [0], "nan": [], "empty": [1, 0, 5]}[variant])
        elif attr.type == A.STRING:
            attr.s = {"huge": b"x" * 10000, "negative": b"-1", "zero": b"", "nan": b"nan", "empty": b""}[variant]
        else:
            node.attribute.remove(attr)
            variant = "remove"
        return f"attr:{node.op_type}.{attr.name}={variant}"

    def m_rename_input(self, model: Any) -> str | None:
        node = self.pick([n for n in model.graph.node if n.input])
        k = self.r.randrange(len(node.input))
        variant = self.pick("unknown empty graph-input self-cycle later-output")
        node.input[k] = {
            "unknown": "fuzz_unknown_tensor",
            "empty": "",
            "graph-input": model.graph.input[0].name if model.graph.input else "x",
            "self-cycle": node.output[0] if node.output else "y",
            "later-output": model.graph.node[-1].output[0],
        }[variant]
        return f"rename-input:{variant}"

    def m_drop_init(self, model: Any) -> str | None:
        if not model.graph.initializer:
            return None
        if self.chance(0.2):
            del model.graph.initializer[:]
            return "drop-init:all"
        del model.graph.initializer[self.r.randrange(len(model.graph.initializer))]
        return "drop-init:one"

    def m_dup_init(self, model: Any) -> str | None:
        t = self.pick([t for t in model.graph.initializer if len(t.dims) >= 2])
        copy = model.graph.initializer.add()
        copy.CopyFrom(t)
        variant = self.pick("same other-shape other-dtype")
        if variant == "other-shape":
            del copy.dims[:]
            copy.dims.extend([int(self.nr.integers(1, 5)) for _ in range(2)])
        elif variant == "other-dtype":
            copy.data_type = 11
        return f"dup-init:{variant}"

    def m_nan_weights(self, model: Any) -> str | None:
        from onnx import numpy_helper

        t = self.pick([t for t in self._weights(model) if t.data_type in (1, 10, 11, 16)])
        arr = numpy_helper.to_array(t).copy()
        variant = self.pick("one-nan all-nan inf -inf row-nan max")
        flat = arr.reshape(-1)
        if variant == "one-nan":
            flat[self.r.randrange(flat.size)] = float("nan")
        elif variant == "all-nan":
            flat[:] = float("nan")
        elif variant == "inf":
            flat[:: max(1, flat.size // 7)] = float("inf")
        elif variant == "-inf":
            flat[self.r.randrange(flat.size)] = float("-inf")
        elif variant == "row-nan" and arr.ndim >= 2:
            arr[0] = float("nan")
        else:
            flat[:] = 3e38 if arr.dtype.itemsize >= 4 else 65504
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        return f"nan-weights:{variant}"

    def m_empty_graph(self, model: Any) -> str | None:
        variant = self.pick("no-nodes nothing no-outputs no-graph")
        g = model.graph
        if variant == "no-graph":
            model.ClearField("graph")
        elif variant == "no-outputs":
            del g.output[:]
        else:
            del g.node[:]
            if variant == "nothing":
                del g.input[:], g.output[:], g.initializer[:], g.value_info[:]
        return f"empty-graph:{variant}"

    def m_input_dims(self, model: Any) -> str | None:
        inits = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits and i.type.HasField("tensor_type")]
        shape = inputs[0].type.tensor_type.shape
        variant = self.pick("huge-batch huge-all int64-max zero negative rank-up rank-down no-shape")
        if variant == "no-shape":
            inputs[0].type.tensor_type.ClearField("shape")
        elif variant == "rank-up":
            for _ in range(3):
                shape.dim.add().dim_value = 1
        elif variant == "rank-down":
            del shape.dim[-1]
        else:
            value = {"huge-batch": 2**31 - 1, "huge-all": 2**40, "int64-max": 2**63 - 1, "zero": 0, "negative": -5}
            for k, dim in enumerate(shape.dim):
                if variant == "huge-all" or k == 0 or (variant != "huge-batch" and self.chance(0.5)):
                    dim.dim_value = value[variant]
        return f"input-dims:{variant}"

    def m_opset(self, model: Any) -> str | None:
        variant = self.pick("v1 v6 v99 v10000 v0 v-1 none dup ir0 ir3 ir99 ir-huge")
        if variant.startswith("v"):
            for entry in model.opset_import:
                if entry.domain in ("", "ai.onnx"):
                    entry.version = int(variant[1:])
        elif variant == "none":
            del model.opset_import[:]
        elif variant == "dup":
            model.opset_import.add(domain="", version=9)
        else:
            model.ir_version = {"ir0": 0, "ir3": 3, "ir99": 99, "ir-huge": 2**40}[variant]
        return f"opset:{variant}"

    def m_op_type(self, model: Any) -> str | None:
        node = self.pick(model.graph.node)
        variant = self.pick("bogus empty lowercase evil-domain")
        if variant == "evil-domain":
            node.domain = "evil.fuzz"
        else:
            node.op_type = {"bogus": "FuzzBogusOp", "empty": "", "lowercase": node.op_type.lower()}[variant]
        return f"op-type:{variant}"

    def m_dup_output(self, model: Any) -> str | None:
        a, b = self.r.sample([n for n in model.graph.node if n.output], 2)
        variant = self.pick("node initializer graph-output-missing")
        if variant == "node":
            b.output[0] = a.output[0]
        elif variant == "initializer" and model.graph.initializer:
            b.output[0] = self.pick(model.graph.initializer).name
        else:
            variant = "graph-output-missing"
            model.graph.output[0].name = "fuzz_missing_output"
        return f"dup-output:{variant}"

    def m_raw_payload(self, model: Any) -> str | None:
        t = self.pick([t for t in self._weights(model) if t.raw_data])
        variant = self.pick("half plus-3 empty float-data-too string")
        if variant == "half":
            t.raw_data = t.raw_data[: len(t.raw_data) // 2]
        elif variant == "plus-3":
            t.raw_data = t.raw_data + b"\x01\x02\x03"
        elif variant == "empty":
            t.raw_data = b""
        elif variant == "float-data-too":
            t.float_data.extend([1.0, 2.0, 3.0])
        else:
            t.ClearField("raw_data")
            t.data_type = 8
            n = 1
            for d in t.dims:
                n *= d
            t.string_data.extend([b"x"] * min(n, 100000))
        return f"raw-payload:{variant}"

    def m_deep_subgraph(self, model: Any) -> str | None:
        from onnx import TensorProto, helper

        depth = self.pick([8, 20, 30])  # deeper cannot be built: protobuf's nesting limit (about 100 messages)
        model.graph.initializer.append(helper.make_tensor("fuzz_cond", TensorProto.BOOL, [], [True]))

        def leaf(name: str) -> Any:
            value = helper.make_tensor("v", TensorProto.FLOAT, [], [1.0])
            node = helper.make_node("Constant", [], [name], value=value)
            return helper.make_graph(
                [node], f"g_{name}", [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, [])]
            )

        inner = leaf(f"fuzz_leaf_{depth}")
        for k in range(depth - 1, -1, -1):
            out = "fuzz_deep" if k == 0 else f"fuzz_o{k}"
            node = helper.make_node("If", ["fuzz_cond"], [out], then_branch=inner, else_branch=leaf(f"fuzz_e{k}"))
            inner = helper.make_graph([node], f"g{k}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [])])
        model.graph.node.extend(inner.node)
        model.graph.output.append(helper.make_tensor_value_info("fuzz_deep", TensorProto.FLOAT, []))
        return f"deep-subgraph:{depth}"

    def m_long_chain(self, model: Any) -> str | None:
        from onnx import helper

        source = model.graph.input[0].name
        length = self.pick([1200, 3000])
        chain = [
            helper.make_node("Identity", [source if k == 0 else f"fuzz_c{k - 1}"], [f"fuzz_c{k}"])
            for k in range(length)
        ]
        for node in model.graph.node:
            for k, name in enumerate(node.input):
                if name == source:
                    node.input[k] = f"fuzz_c{length - 1}"
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(chain + nodes)
        return f"long-chain:{length}"

    def m_sparse_init(self, model: Any) -> str | None:
        import numpy as np
        from onnx import numpy_helper

        variant = self.pick("bad-index shadow-weight")
        weights = [t for t in model.graph.initializer if len(t.dims) >= 2]
        name = weights[0].name if variant == "shadow-weight" and weights else "fuzz_sparse"
        sp = model.graph.sparse_initializer.add()
        sp.values.CopyFrom(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), name))
        sp.indices.CopyFrom(numpy_helper.from_array(np.array([0, 10**9], np.int64), f"{name}_idx"))
        sp.dims.extend([4, 4] if name == "fuzz_sparse" else list(weights[0].dims))
        return f"sparse-init:{variant}"

    def m_value_info(self, model: Any) -> str | None:
        from onnx import TensorProto, helper

        node = self.pick([n for n in model.graph.node if n.output])
        variant = self.pick("shape dtype")
        if variant == "shape":
            vi = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [7, 7, 7])
        else:
            vi = helper.make_tensor_value_info(node.output[0], TensorProto.INT64, None)
        model.graph.value_info.append(vi)
        return f"value-info:{variant}"

    def m_local_function(self, model: Any) -> str | None:
        from onnx import helper

        node = self.pick([n for n in model.graph.node if n.op_type == "Relu"] or model.graph.node)
        variant = self.pick("bogus-body recursive empty-body")
        body = {
            "bogus-body": [helper.make_node("FuzzBogusOp", ["x"], ["y"])],
            "recursive": [helper.make_node("Fuzz", ["x"], ["y"], domain="fuzz.local")],
            "empty-body": [],
        }[variant]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("fuzz.local", 1)]
        model.functions.append(helper.make_function("fuzz.local", "Fuzz", ["x"], ["y"], body, opsets))
        model.opset_import.add(domain="fuzz.local", version=1)
        node.op_type, node.domain = "Fuzz", "fuzz.local"
        del node.input[1:]
        del node.attribute[:]
        return f"local-function:{variant}"

    def m_weight_is_input(self, model: Any) -> str | None:
        from onnx import helper

        t = self.pick([t for t in model.graph.initializer if len(t.dims) >= 2])
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        return "weight-is-input"

    # -- external data ------------------------------------------------------------------------
    EXTERNAL = words(
        "loc:.. loc:/etc/passwd loc:. loc:missing loc:short loc:../outside loc:abs-outside loc:abs-inside "
        "loc:sub/../../outside loc:link-out loc:link-etc loc:dirlink loc:/dev/zero loc:self loc:empty loc:nul "
        "loc:long loc:hardlink no-location offset:-1 offset:huge offset:abc offset:past-end length:-5 "
        "length:huge length:0 length:abc length:past-end data-is-output"
    )
    #: Locations that leave the model's folder: onnxprune must refuse them (README, model_io).
    ESCAPES = frozenset(
        words(
            "loc:.. loc:/etc/passwd loc:../outside loc:abs-outside loc:sub/../../outside loc:link-out "
            "loc:link-etc loc:dirlink loc:/dev/zero loc:hardlink"
        )
    )

    def external(self, model: Any, name: str, variant: str | None = None) -> str:
        """Saves ``model`` with external data in the run folder, then points its references
        somewhere hostile."""
        import onnx
        from onnx.external_data_helper import convert_model_to_external_data

        variant = variant or self.pick(self.EXTERNAL)
        self.tag(f"ext:{variant}")
        # data-is-output: the data file is the one `prune ... out.onnx --external-data` writes
        data_name = "out.onnx.data" if variant == "data-is-output" else f"{name}.data"
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data_name, size_threshold=256)
        onnx.save_model(model, str(self.run / name))
        if variant in ("ok", "data-is-output"):
            return name
        model = onnx.load(str(self.run / name), load_external_data=False)
        external = [t for t in tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
        if not external:
            return name
        chosen = external if self.chance(0.5) else [self.pick(external)]
        data_size = (self.run / data_name).stat().st_size
        self.must_fail = variant in self.ESCAPES
        location = {
            "loc:..": "..",
            "loc:/etc/passwd": "/etc/passwd",
            "loc:.": ".",
            "loc:missing": "missing.bin",
            "loc:short": "short.bin",
            "loc:../outside": "../outside.bin",
            "loc:abs-outside": str(self.box / "outside.bin"),
            "loc:abs-inside": str(self.run / data_name),
            "loc:sub/../../outside": "sub/../../outside.bin",
            "loc:link-out": "link.bin",
            "loc:link-etc": "link-etc.bin",
            "loc:dirlink": "root/etc/passwd",
            "loc:/dev/zero": "/dev/zero",
            "loc:self": name,
            "loc:empty": "",
            "loc:nul": f"{data_name}\x00.txt",
            "loc:long": "d" * 5000,
            "loc:hardlink": "hard.bin",
        }.get(variant)
        run = self.run
        if variant == "loc:short":
            self.write("short.bin", b"\x00" * 10)
        elif variant == "loc:link-out":
            _place(run / "link.bin", lambda p: p.symlink_to("../outside.bin"))
        elif variant == "loc:link-etc":
            _place(run / "link-etc.bin", lambda p: p.symlink_to("/etc/passwd"))
        elif variant == "loc:dirlink":
            _place(run / "root", lambda p: p.symlink_to("/"))
        elif variant == "loc:sub/../../outside":
            _place(run / "sub", lambda p: p.mkdir())
        elif variant == "loc:hardlink":  # a hard link to a file outside the folder
            _place(run / "hard.bin", lambda p: os.link(self.box / "outside.bin", p))
        for t in chosen:
            entries = {e.key: e.value for e in t.external_data}
            if location is not None:
                entries["location"] = location
            elif variant == "no-location":
                entries.pop("location", None)
            else:
                key, how = variant.split(":")
                values = {"-1": "-1", "-5": "-5", "huge": str(2**62), "abc": "abc", "0": "0"}
                entries[key] = values.get(how, str(data_size + 4096))
            del t.external_data[:]
            for key, value in entries.items():
                t.external_data.add(key=key, value=value)
        self.write(name, model.SerializeToString())
        return name

    # -- data, labels, plans, shapes, outputs --------------------------------------------------
    DATA = words(
        "wrong-shape wrong-rank wrong-name extra-key pickled empty zero-samples one-sample dtype:int64 "
        "dtype:float64 dtype:complex64 dtype:bool dtype:str dtype:float16 nan inf truncated not-zip npy-not-npz "
        "header-bomb scalar dir-empty dir-garbage-png dir-bomb-png dir-png missing a-folder-file"
    )

    def data_arg(self, fx: Fixture, which: str = "calib", small: int = 32) -> str:
        """A calibration / evaluation data path (npz or image folder), maybe hostile."""
        import numpy as np

        arrays = fx.calib if which == "calib" else fx.test
        name = fx.input_name
        if not self.hostile("files", 0.7):
            if self.chance(0.3):
                self.n_samples = None
                return str(fx.calib_path if which == "calib" else fx.test_path)
            np.savez(self.run / f"{which}.npz", **{k: v[:small] for k, v in arrays.items()})
            self.n_samples = small
            return f"{which}.npz"
        x = arrays[name][:small]
        variant = self.pick(self.DATA)
        self.tag(f"{which}-data:{variant}")
        path = f"{which}.npz"
        target = self.run / path
        if variant == "wrong-shape":
            np.savez(target, **{name: np.zeros((x.shape[0], *(d + 1 for d in x.shape[1:])), x.dtype)})
        elif variant == "wrong-rank":
            np.savez(target, **{name: x.reshape(x.shape[0], -1)[..., None, None]})
        elif variant == "wrong-name":
            np.savez(target, bogus=x)
        elif variant == "extra-key":
            np.savez(target, **{name: x, "extra": x})
        elif variant == "pickled":
            obj = np.empty(len(x), dtype=object)
            obj[:] = [{"sample": i} for i in range(len(x))]
            np.savez(target, **{name: obj})
        elif variant == "empty":
            np.savez(target)
        elif variant == "zero-samples":
            np.savez(target, **{name: x[:0]})
        elif variant == "one-sample":
            np.savez(target, **{name: x[:1]})
        elif variant.startswith("dtype:"):
            dtype = variant.split(":")[1]
            np.savez(target, **{name: x.astype("U3") if dtype == "str" else x.astype(dtype)})
        elif variant in ("nan", "inf"):
            bad = x.astype(np.float32).copy()
            bad.reshape(-1)[:: max(1, bad.size // 5)] = float(variant)
            np.savez(target, **{name: bad})
        elif variant == "truncated":
            np.savez(target, **{name: x})
            target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
        elif variant == "not-zip":
            target.write_bytes(self.r.randbytes(300))
        elif variant == "npy-not-npz":
            with open(target, "wb") as stream:
                np.save(stream, x)
        elif variant == "header-bomb":
            target.write_bytes(npy_bomb_npz(name))
        elif variant == "scalar":
            np.savez(target, **{name: np.float32(1.0)})
        elif variant == "missing":
            return "missing.npz"
        elif variant == "a-folder-file":
            target.mkdir()
        else:
            path = f"{which}_images"
            folder = self.run / path
            folder.mkdir()
            if variant == "dir-garbage-png":
                (folder / "a.png").write_bytes(self.r.randbytes(200))
            elif variant == "dir-bomb-png":
                (folder / "bomb.png").write_bytes(png(100000, 100000, data_rows=1))
            elif variant == "dir-png":
                for k in range(3):
                    (folder / f"img{k}.png").write_bytes(png(8, 8))
        return path

    def labels_arg(self, fx: Fixture) -> str:
        import numpy as np

        n = self.n_samples or len(fx.labels)
        labels = fx.labels[:n]
        target = self.run / "labels.npy"
        if not self.hostile("files", 0.5):
            if n == len(fx.labels):
                return str(fx.labels_path)
            np.save(target, labels)
            return "labels.npy"
        variant = self.pick("wrong-count strings 2d negative float empty garbage txt-junk huge-ids pickled npz-keys")
        self.tag(f"labels:{variant}")
        if variant == "wrong-count":
            np.save(target, labels[: max(1, n // 2)])
        elif variant == "strings":
            np.save(target, np.array([f"c{v}" for v in labels]))
        elif variant == "2d":
            np.save(target, np.stack([labels, labels], 1))
        elif variant == "negative":
            np.save(target, -1 - labels)
        elif variant == "float":
            np.save(target, labels.astype(np.float64) + 0.5)
        elif variant == "empty":
            np.save(target, labels[:0])
        elif variant == "garbage":
            target.write_bytes(self.r.randbytes(100))
        elif variant == "txt-junk":
            return self.write("labels.txt", "cat\n\x00\xff dog\n" * n)
        elif variant == "huge-ids":
            np.save(target, np.full(n, 2**62, np.int64))
        elif variant == "pickled":
            obj = np.empty(n, dtype=object)
            obj[:] = [None] * n
            np.save(target, obj, allow_pickle=True)
        else:
            np.savez(self.run / "labels.npz", a=labels, b=labels)
            return "labels.npz"
        return "labels.npy"

    PLANS = words(
        "unknown-name value:1.5 value:-0.1 value:str value:null value:list value:NaN value:1e999 value:true "
        "top:list top:string top:null layers:list bad-json deep-list deep-dict empty-file binary not-utf8 utf16 "
        "many-keys dup-keys folder missing"
    )

    def plan_arg(self, fx: Fixture) -> str:
        names = fx.weight_names or ["w"]
        if not self.hostile("files", 0.8):
            plan = {n: round(self.r.uniform(0.1, 0.9), 2) for n in self.r.sample(names, min(len(names), 2))}
            return self.write("plan.json", json.dumps(plan if self.chance(0.7) else {"layers": plan}))
        variant = self.pick(self.PLANS)
        self.tag(f"plan:{variant}")
        name = names[0]
        values = {
            "1.5": "1.5",
            "-0.1": "-0.1",
            "str": '"abc"',
            "null": "null",
            "list": "[0.5]",
            "NaN": "NaN",
            "1e999": "1e999",
            "true": "true",
        }
        texts: dict[str, str | bytes] = {
            "unknown-name": '{"fuzz.no.such.weight": 0.5}',
            "top:list": "[0.5, 0.6]",
            "top:string": '"plan"',
            "top:null": "null",
            "layers:list": '{"layers": [1, 2]}',
            "bad-json": f'{{"{name}": 0.',
            "deep-list": "[" * 100000 + "]" * 100000,
            "deep-dict": '{"a":' * 50000 + "0" + "}" * 50000,
            "empty-file": "",
            "binary": self.r.randbytes(64),
            "not-utf8": b'{"\xff\xfe": 0.5}',
            "utf16": json.dumps({name: 0.5}).encode("utf-16"),
            "many-keys": json.dumps({f"w{k}": 0.5 for k in range(20000)}),
            "dup-keys": f'{{"{name}": 0.5, "{name}": 0.9}}',
        }
        if variant.startswith("value:"):
            return self.write("plan.json", f'{{"{name}": {values[variant.split(":")[1]]}}}')
        if variant == "folder":
            (self.run / "plan.json").mkdir()
            return "plan.json"
        if variant == "missing":
            return "missing-plan.json"
        return self.write("plan.json", texts[variant])

    def shape_arg(self, fx: Fixture) -> str:
        name, rest = fx.input_name, "x".join(map(str, fx.input_dims[1:]))
        good = f"{name}:1x{rest}"
        if not self.hostile("options", 0.6):
            return good
        variant = self.pick(
            "zero negative huge int64-max letters empty no-name unknown-name trailing-x float rank-9 equals spaces"
        )
        self.tag(f"input-shape:{variant}")
        return {
            "zero": f"{name}:0x{rest}",
            "negative": f"{name}:-1x{rest}",
            "huge": f"{name}:99999999999x{rest}",
            "int64-max": f"{name}:{2**63 - 1}x{rest}",
            "letters": f"{name}:axb",
            "empty": f"{name}:",
            "no-name": ":1x64",
            "unknown-name": "fuzz_nosuch:1x64",
            "trailing-x": good + "x",
            "float": f"{name}:1.5x{rest}",
            "rank-9": f"{name}:" + "x".join(["1"] * 9),
            "equals": good.replace(":", "=", 1),
            "spaces": good.replace("x", " x ", 1),
        }[variant]

    def out_arg(self, model: str, default: str, what: str, *, data: bool = False) -> str:
        """An output path (declared), maybe hostile: the input, a missing folder, a folder ..."""
        if not self.hostile("paths", 0.6):
            self.declare(default, data=data)
            return default
        variant = self.pick("input missing-folder folder dot trailing-slash empty link-to-input long-name newline")
        if variant in ("input", "link-to-input") and not self.local(model):
            variant = "missing-folder"  # never aim an output at a fixture: a bug would damage the repository
        self.tag(f"{what}:{variant}")
        path = {
            "input": model,
            "missing-folder": f"missing/{default}",
            "folder": "outdir",
            "dot": ".",
            "trailing-slash": f"{default}/",
            "empty": "",
            "link-to-input": f"link-{default}",
            "long-name": "o" * 300 + default,
            "newline": f"out\n{default}",
        }[variant]
        if variant == "folder":
            (self.run / "outdir").mkdir(exist_ok=True)
        elif variant == "link-to-input" and not (self.run / path).is_symlink():
            (self.run / path).symlink_to(model)
        if variant not in ("input", "link-to-input"):  # never declare an input as an output
            self.declare(path, data=data)
        return path

    def declare(self, path: str, *, data: bool = False) -> None:
        self.outputs.append(path)
        if data:
            self.outputs.append(f"{path}.data")

    def eval_options(self, prune: bool = False) -> list[str]:
        """Options that keep an evaluation short (latency repeats, samples), or hostile numbers."""
        samples = "--eval-samples" if prune else "--samples"
        if not self.hostile("options", 0.4):
            if self.chance(0.7):
                return ["--repeats", "2", "--warmup", "1", samples, "16"]
            return ["--no-latency", samples, "16"]
        option = self.pick("batch-size samples threads warmup repeats latency-batch providers output memory")
        flag = {"batch-size": "--eval-batch-size" if prune else "--batch-size", "samples": samples}.get(
            option, f"--{option}"
        )
        value = {
            "batch-size": self.pick("0 -1 1 1000000000"),
            "samples": self.pick("0 -1 1 1000000000"),
            "threads": self.pick("-1 1 100000"),
            "warmup": self.pick("-1 0"),
            "repeats": self.pick("0 -1 1"),
            "latency-batch": self.pick("0 -1 4096"),
            "providers": self.pick(["CUDAExecutionProvider", "FuzzBogusProvider", ",", "CPUExecutionProvider,,"]),
            "output": self.pick(["fuzz_no_such_output", "", "logits"]),
            "memory": None,
        }[option]
        self.tag(f"opt:{flag}={value}" if value is not None else f"opt:{flag}")
        extra = [] if option in ("warmup", "repeats") else ["--repeats", "2", "--warmup", "0"]
        if option != "samples":
            extra += [samples, "16"]
        return [flag, *([] if value is None else [value]), *extra]

    def image_options(self) -> list[str]:
        option = self.pick("image-size crop mean std scale layout channels image-input")
        value = self.pick(
            {
                "image-size": "abc 0 -1 8 8x8 100000x100000 x",
                "crop": "0x0 9x9 abc -1x4",
                "mean": "1,2 a,b,c 0.5,0.5,0.5 nan,nan,nan",
                "std": "0,0,0 0 -1,1,1 inf,1,1",
                "scale": "0 nan -1 abc",
                "layout": "NCHW NHWC bogus",
                "channels": "RGB GRAY bogus",
                "image-input": "fuzz_nosuch input",
            }[option]
        )
        self.tag(f"opt:--{option}={value}")
        return [f"--{option}", value]

    def option(self, flag: str, good: str, bad: str, p: float = 0.5) -> list[str]:
        """``[flag, value]``: a valid value, or (where options are the focus) a hostile one."""
        if self.hostile("options", p):
            value = self.pick(bad)
            self.tag(f"opt:{flag}={value}")
            return [flag, value]
        return [flag, self.pick(good)]

    # -- commands -----------------------------------------------------------------------------
    def discovery_options(self) -> list[str]:
        out: list[str] = []
        if self.chance(0.15):
            flag = self.pick("--include --exclude")
            if self.hostile("options", 0.7):
                value = self.pick(["(", "[a-", "*", "", "(a+)+$", "\\"])
                self.tag(f"opt:{flag}={value}")
            else:
                value = self.pick(["Gemm", ".*", "weight", "fc"])
            out += [flag, value]
        if self.chance(0.1):
            out += self.option("--op-types", "Conv,MatMul Gemm LSTM", "FuzzBogus , Gemm,, conv")
        if self.chance(0.1):
            out += self.option("--min-size", "0 1 1024", f"-1 1000000000000 {2**70}")
        return out

    def cmd_inspect(self) -> None:
        fx = self.fixture()
        model = self.model_arg(fx)
        self.args += [model, *self.discovery_options()]
        if self.chance(0.3):
            self.args.append("--all")
        if self.chance(0.3):
            self.args += ["--json", self.out_arg(model, "inventory.json", "json-out")]
        if self.chance(0.1):
            self.args.append("-v")

    def cmd_prune(self) -> None:
        fx = self.fixture()
        model = self.model_arg(fx)
        external = self.chance(0.1)
        if "ext:data-is-output" in self.tags:
            out, external = "out.onnx", True
            self.declare(out, data=True)
        else:
            out = self.out_arg(model, "out.onnx", "out", data=True)
        a = self.args
        a += [model, out]
        if out == "out.onnx":
            self.expect_file = out
        if out == model and self.local(model) and self.chance(0.5):
            a.append("--force")
            self.tag("opt:--force")
            self.may_change += [model, f"{model}.data"]
            self.declare(model, data=True)
        if external:
            a.append("--external-data")
        a += self.discovery_options()
        # what to prune: one consistent mode (hostile values where options are the focus)
        mode = self.weighted({"sparsity": 0.55, "pattern": 0.12, "plan": 0.1, "structured": 0.18, "dead": 0.05})
        sparsity = self.option(
            "--sparsity",
            "0.1 0.3 0.5 0.5 0.7 0.9 0.99",
            "0 0.999999 1 1.0000001 -0.0 -0.1 2 1e308 1e-320 nan inf -inf abc 0x1p-1",
            0.4,
        )
        uses_data = False
        if mode == "sparsity":
            a += sparsity
        elif mode == "pattern":
            bad = f"0:4 4:4 5:4 2:0 0:0 -1:4 2:-4 abc 2: :4 2:4:8 2.5:4 {'9' * 20}:4 1:99999999"
            a += self.option("--pattern", "2:4 1:4 4:8", bad)
            if self.chance(0.3):
                a += ["--nm-fallback", self.pick("unstructured skip")]
            if self.chance(0.4):
                a.append("--permute")  # channels reordered first (a model with external data: loaded whole)
        elif mode == "plan":
            a += ["--plan", self.plan_arg(fx)]
            if self.chance(0.3):
                a += sparsity
        elif mode == "dead":
            a.append("--dead-channels")
        if mode != "pattern" and self.chance(0.01):
            a.append("--permute")  # without a pattern: a one-line error
        if mode in ("sparsity", "plan"):
            if self.chance(0.25):
                a += ["--scope", "global"]
                if self.chance(0.4):
                    a += ["--criterion", self.pick("magnitude lamp")]
                if self.chance(0.2):
                    a += self.option("--max-layer-sparsity", "0.5 0.9", "0 1 2 nan -1")
            elif self.chance(0.08):
                a += ["--criterion", "random", *self.option("--seed", "0 7", f"-1 {2**70}")]
        if mode in ("sparsity", "pattern", "plan") and "random" not in a and self.chance(0.35):
            method = self.pick("wanda sparsegpt refit")
            a += ["--method", method]
            uses_data = True
            if self.chance(0.15):
                a.append(self.pick("--bias-correction --parallel"))
            if self.chance(0.1):
                a += self.option("--percdamp", "0.01 0.1", "0 -1 nan inf 1e300")
            if self.chance(0.2):  # block reconstruction after the solves
                a += self.option("--block-epochs", "1 2", "-1 1001 x 1.5")
        elif self.chance(0.01):
            a += ["--block-epochs", "2"]  # without a calibrated method: a one-line error
        if mode == "structured":
            a.append("--structured")
            if self.chance(0.3):
                a += self.option("--target-flops", "0.5 0.8", "0 1 1.5 -1 nan")
            else:
                a += sparsity
            if self.chance(0.3):
                a += self.option("--round-to", "1 8", "0 -1 1000000000")
            if self.chance(0.2):
                a += self.option("--max-group-sparsity", "0.5 0.9", "0 1 2 -1 nan")
            if self.chance(0.3):
                a += ["--importance", self.pick("auto l2 error")]
            if self.chance(0.15):
                a.append("--no-refit")
            if self.chance(0.15):
                a.append("--no-fold")
            uses_data = self.chance(0.6)
        elif mode != "dead" and self.chance(0.1):
            a.append(self.pick("--dead-channels --no-dead-channels"))
        if self.chance(0.1):
            a += ["--quantize", "int8"]
            if self.chance(0.5):
                mode = self.pick("dynamic static")
                a += ["--quantize-mode", mode]
                uses_data = uses_data or mode == "static"
        if uses_data:
            choice = self.weighted({"calibration": 0.7, "data-free": 0.25, "none": 0.05})
            if choice == "calibration":
                a += ["--calibration", self.data_arg(fx, "calib")]
            elif choice == "data-free":
                a.append("--data-free")
            a += self.option("--samples", "16", "0 -1 1 1000000000", 0.3)
        if self.chance(0.15):
            a += ["--input-shape", self.shape_arg(fx)]
        if self.chance(0.12):  # evaluation afterwards, kept short
            self.n_samples = None
            if self.chance(0.5):
                a += ["--data", self.data_arg(fx, "test", small=48)]
                if self.chance(0.6):
                    a += ["--labels", self.labels_arg(fx)]
            if self.chance(0.4):
                a += ["--report", self.out_arg(model, "report.html", "report-out")]
            if self.chance(0.4):
                a += ["--eval-json", self.out_arg(model, "eval.json", "eval-json-out")]
            a += ["--eval", *self.eval_options(prune=True)]
            if self.hostile("options", 0.2):
                a += self.image_options()
        if self.chance(0.2):
            a += ["--json", self.out_arg(model, "report.json", "json-out")]
        if self.chance(0.1):
            a.append(self.pick("--compressed-size --no-compressed-size"))
        a.append("-q" if self.chance(0.7) else "-v")

    def cmd_eval(self) -> None:
        fx = self.fixture()
        base = self.model_arg(fx, "model.onnx")
        candidates = []
        for k in range(self.pick([0, 1, 1, 1, 2, 3])):
            variant = "same-fixture"
            if self.hostile("model", 0.4):
                variant = self.weighted({"other-fixture": 0.4, "base-again": 0.2, "missing": 0.2, "folder": 0.2})
                self.tag(f"candidate:{variant}")
            if variant == "same-fixture":
                candidates.append(self.model_arg(fx, f"cand{k}.onnx", p_mutate=0.3))
            elif variant == "other-fixture":
                candidates.append(str(self.fixture().path))
            elif variant == "base-again":
                candidates.append(base)
            elif variant == "missing":
                candidates.append("missing-candidate.onnx")
            else:
                (self.run / f"cand{k}.onnx").mkdir()
                candidates.append(f"cand{k}.onnx")
        a = self.args
        a += [base, *candidates]
        if self.chance(0.6):
            a += ["--data", self.data_arg(fx, "test", small=48)]
            if self.chance(0.6):
                a += ["--labels", self.labels_arg(fx)]
        a += self.eval_options()
        if self.hostile("options", 0.2):
            a += self.image_options()
        if self.chance(0.15):
            a += ["--input-shape", self.shape_arg(fx)]
        if self.chance(0.3):
            a += ["--json", self.out_arg(base, "eval.json", "json-out")]
        if self.chance(0.2):
            a += ["--report", self.out_arg(base, "report.html", "report-out")]
        a.append("-q")

    def cmd_analyze(self) -> None:
        fx = self.fixture()
        model = self.model_arg(fx)
        a = self.args
        a.append(model)
        with_data = self.chance(0.5)
        if with_data:
            a += ["--data", self.data_arg(fx, "calib", small=32)]
            if self.chance(0.3):
                a += ["--labels", self.labels_arg(fx)]
            a += ["--samples", "16"]
        elif self.chance(0.2):
            a += ["--data-free", "--samples", "8"]
        a += self.option(
            "--levels",
            ["0.5", "0.3,0.6", "0.5,0.9"],
            ["abc", "", "1.5", "-0.1", "0.5,abc", "nan", "0.5,0.5", "1", "0", ",,", "0.9,0.1"],
        )
        a += self.option("--workers", "1", "0 -1 2", 0.2)
        if self.chance(0.2):
            a += ["--method", self.pick("wanda sparsegpt")]
        if with_data and self.chance(0.15):
            a.append("--structural")
        cache = self.weighted({"default": 0.3, "no-cache": 0.35, "dir": 0.35})
        if self.hostile("paths", 0.4):
            value = self.pick("missing/cache model-file a-file")
            if value == "model-file" and not self.local(model):
                value = "a-file"
            self.tag(f"opt:--cache-dir={value}")
            if value == "model-file":
                a += ["--cache-dir", model]
            elif value == "a-file":
                self.write("cachefile", "x")
                a += ["--cache-dir", "cachefile"]
            else:
                a += ["--cache-dir", value]
                self.output_dirs.append(value)
        elif cache == "no-cache":
            a.append("--no-cache")
        elif cache == "dir":
            a += ["--cache-dir", "cache"]
            self.output_dirs.append("cache")
        if self.chance(0.3):
            flags = "--target-sparsity --target-flops --max-loss --target-latency" if with_data else "--target-sparsity"
            flag = self.pick(flags)
            a += self.option(flag, "0.5", "0 1 1.5 -1 nan")
            if self.chance(0.5):
                a += ["--plan-out", self.out_arg(model, "plan.json", "plan-out")]
        if self.chance(0.2):
            a += ["--json", self.out_arg(model, "curves.json", "json-out")]
        if self.chance(0.15):
            a += ["--report", self.out_arg(model, "curves.html", "report-out")]
        if self.chance(0.1):
            a += ["--input-shape", self.shape_arg(fx)]
        if self.chance(0.1):
            a += self.option("--min-size", "0 256", "-1 1000000000000")
        a.append("-q")


# ----------------------------------------------------------------------------------------------
# Running one case (in a worker)
# ----------------------------------------------------------------------------------------------


def custom_spec(
    index: int,
    argv: list[str] | None = None,
    *,
    args: list[str] | None = None,
    files: dict[str, str] | None = None,
    outputs: list[str] = (),
    output_dirs: list[str] = (),
) -> dict[str, Any]:
    """A hand-written case: ``argv`` (any program, run in the case's run/ folder) or ``args``
    (an onnxprune command line, run like the generated ones); ``files`` (name -> text) are
    written into run/ first. The tests use it to prove that each detector fires."""
    if (argv is None) == (args is None):
        raise ValueError("give argv or args")
    return {
        "index": index,
        "seed": None,
        "command": "exec" if argv is not None else args[0],
        "exec": list(argv) if argv is not None else None,
        "args": list(argv if argv is not None else args),
        "files": dict(files or {}),
        "tags": ["custom"],
        "outputs": list(outputs),
        "output_dirs": list(output_dirs),
        "may_change": [],
        "must_fail": False,
        "expect_file": None,
    }


class Worker:
    """Builds and runs cases; owned by one worker process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.cases_dir = Path(config["cases_dir"])
        self.seed = config["seed"]
        self.runner = config["runner"]
        self.timeout = config["timeout"]
        self.memory = config["memory_mb"] * 1024 * 1024
        self.keep = Path(config["keep"]) if config.get("keep") else None
        self.commands = config["commands"]
        self.proto_fd: int | None = None
        self._fixtures: dict[str, Fixture] | None = None

    @property
    def fixtures(self) -> dict[str, Fixture]:
        if self._fixtures is None:
            self._fixtures = {stem: Fixture(stem) for stem, _ in FIXTURE_MODELS}
        return self._fixtures

    def build(self, request: dict[str, Any], box: Path) -> dict[str, Any]:
        make_box(box)
        spec = request.get("spec")
        if spec is not None:
            for rel, text in spec.get("files", {}).items():
                (box / "run" / rel).parent.mkdir(parents=True, exist_ok=True)
                (box / "run" / rel).write_text(text)
            return spec
        return Builder(self.seed, request["index"], box, self.fixtures, self.commands).build()

    def limits(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 30, 2 << 30))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def execute(self, spec: dict[str, Any], box: Path) -> tuple[int | None, int | None, bool, float]:
        """Runs the case; returns (exit code, signal, timed out, seconds)."""
        env = case_env(box)
        run = box / "run"
        argv = spec.get("exec")
        start = time.monotonic()
        if self.runner == "subprocess":
            command = argv or [sys.executable, "-m", "onnxprune", *spec["args"]]
            with open(box / "stdout.txt", "wb") as out, open(box / "stderr.txt", "wb") as err:
                proc = subprocess.Popen(
                    command,
                    cwd=run,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=self.limits,
                )
                try:
                    code = proc.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    kill_group(proc.pid)
                    proc.wait()
                    return None, None, True, time.monotonic() - start
            pid = proc.pid
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                self.child(spec, box, env, argv)
            status, timed_out = wait_pid(pid, self.timeout)
            if timed_out:
                return None, None, True, time.monotonic() - start
            code = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        stray = reap_group(pid)
        self._stray = stray
        if code < 0:
            return None, -code, False, seconds
        return code, None, False, seconds

    def child(self, spec: dict[str, Any], box: Path, env: dict[str, str], argv: list[str] | None) -> None:
        code = 1
        try:
            os.setsid()
            if self.proto_fd is not None:
                os.close(self.proto_fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            out = os.open(box / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(box / "stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1)
            os.dup2(err, 2)
            for fd in (null, out, err):
                os.close(fd)
            self.limits()
            os.chdir(box / "run")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if argv:
                os.execvpe(argv[0], argv, env)
            os.environ.clear()
            os.environ.update(env)
            tempfile.tempdir = None
            sys.argv = ["onnxprune", *spec["args"]]
            from onnxprune.cli import main

            try:
                main(args=list(spec["args"]), prog_name="onnxprune")
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code & 0xFF
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            # what the interpreter does on exit: join threads, atexit handlers (temp folders ...)
            with contextlib.suppress(BaseException):
                threading._shutdown()  # type: ignore[attr-defined]
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
                sys.stderr.flush()
            code = 1
        os._exit(code)

    def run_case(self, request: dict[str, Any]) -> dict[str, Any]:
        index = request["index"]
        box = self.cases_dir / case_name(index)
        try:
            spec = self.build(request, box)
        except Exception:
            shutil.rmtree(box, ignore_errors=True)
            print(f"case {index}: building it failed:\n{traceback.format_exc()}", file=sys.stderr)
            return harness_failure(request, traceback.format_exc().strip().splitlines()[-1])
        run = box / "run"
        inputs = hash_files(run)
        box_before = walk(box, skip=set(CASE_DIRS) | HARNESS_FILES)
        fixtures_before = walk(FIXTURES)
        run_before = walk(run)
        self._stray = []
        code, sig, timed_out, seconds = self.execute(spec, box)
        failures = self.check(spec, box, inputs, box_before, fixtures_before, run_before, code, sig, timed_out)
        stdout = read_text(box / "stdout.txt")
        stderr = read_text(box / "stderr.txt")
        result = {
            "index": index,
            "command": spec["command"],
            "custom": request.get("spec") is not None,
            "args": spec["args"],
            "tags": spec["tags"],
            "exit": code,
            "signal": sig,
            "timed_out": timed_out,
            "seconds": round(seconds, 3),
            "failures": failures,
            "last_line": error_line(stderr) or last_line(stdout),
            "stdout_tail": stdout[-2000:],
            "stderr_tail": stderr[-4000:],
        }
        if failures and self.keep is not None:
            with contextlib.suppress(Exception):
                result["kept"] = str(self.keep_case(request, spec, box, result, stdout, stderr))
        shutil.rmtree(box, ignore_errors=True)
        return result

    def check(
        self,
        spec: dict[str, Any],
        box: Path,
        inputs: dict[str, str],
        box_before: dict,
        fixtures_before: dict,
        run_before: dict,
        code: int | None,
        sig: int | None,
        timed_out: bool,
    ) -> list[dict[str, str]]:
        failures: list[dict[str, str]] = []

        def fail(kind: str, detail: str) -> None:
            failures.append({"kind": kind, "detail": detail})

        run = box / "run"
        stdout, stderr = read_text(box / "stdout.txt"), read_text(box / "stderr.txt")
        if timed_out:
            fail("hang", f"still running after {self.timeout:g} s (killed)")
        elif sig is not None:
            fail("crash-signal", f"killed by signal {sig} ({signal_name(sig)})")
        elif code == INTERNAL_ERROR:
            fail("internal-error", error_line(stderr) or "exit 70")
        elif code not in CLEAN_CODES:
            fail("bad-exit-code", f"exit {code}: {error_line(stderr)}")
        if "Traceback" in stdout or "Traceback" in stderr:
            fail("traceback", traceback_line(stderr if "Traceback" in stderr else stdout))
        # writes outside the run folder: the case folder, the folder of all cases, fixtures/
        outside = diff(box_before, walk(box, skip=set(CASE_DIRS) | HARNESS_FILES))
        foreign = sorted(name for name in os.listdir(self.cases_dir) if not re.fullmatch(r"c\d{6}", name))
        fixtures_changes = diff(fixtures_before, walk(FIXTURES))
        for change in outside:
            fail("write-outside", f"case folder: {change}")
        for name in foreign:
            fail("write-outside", f"folder of all cases: created {name}")
            with contextlib.suppress(OSError):
                (shutil.rmtree if (self.cases_dir / name).is_dir() else os.unlink)(self.cases_dir / name)
        for change in fixtures_changes:
            fail("write-outside", f"fixtures/: {change}")
        # inputs
        may_change = {os.path.normpath(p) for p in spec.get("may_change", [])}
        for rel, digest in inputs.items():
            if rel in may_change and code == 0:
                continue
            path = run / rel
            now = None
            if path.is_symlink():
                now = f"link:{os.readlink(path)}"
            elif path.is_file():
                now = sha256(path)
            if now != digest:
                fail("input-changed", f"{rel}: {'removed' if now is None else 'content changed'}")
        if timed_out:
            return failures  # a killed run may leave anything behind: the hang is the finding
        # leftovers
        for where in ("run", "home", "tmp"):
            for rel, (kind, *_rest) in walk(box / where).items():
                if STAGING.match(Path(rel).name):
                    fail("leftover-staging", f"{where}/{rel} ({kind})")
        tmp_left = [
            rel
            for rel in walk(box / "tmp")
            if "/" not in rel and not STAGING.match(rel) and rel not in THIRD_PARTY_TEMP
        ]
        for rel in tmp_left:
            fail("leftover-temp", f"tmp/{rel}")
        # undeclared outputs in run/ and home/
        declared = {os.path.normpath(p) for p in spec.get("outputs", []) if p}
        dirs = [os.path.normpath(p) for p in spec.get("output_dirs", [])]
        run_after = walk(run)
        for change in diff(run_before, run_after):
            what, rel = change.split(" ", 1)
            if what == "removed" or STAGING.match(Path(rel).name) or any(STAGING.match(p) for p in Path(rel).parts):
                continue
            if rel in inputs or (rel in run_before and run_before[rel][0] == "dir" and what == "changed"):
                continue  # input changes are reported above; a folder's mtime changes with its content
            if rel in declared or any(rel == d or rel.startswith(d + "/") for d in dirs):
                continue
            if run_after.get(rel, ("",))[0] == "dir" and any(p.startswith(rel + "/") for p in declared | set(dirs)):
                continue  # a declared output's folder (created by the command)
            fail("undeclared-output", f"run/{change}")
        for rel, (kind, *_rest) in walk(box / "home").items():
            if kind != "dir" and not rel.startswith(".cache/"):  # only the XDG cache may be written in HOME
                fail("undeclared-output", f"home/{rel}")
        expect = spec.get("expect_file")
        if spec["command"] == "prune" and code == 0 and expect and not (run / expect).is_file():
            fail("missing-output", f"exit 0 but {spec['expect_file']} was not written")
        if spec.get("must_fail") and code == 0:
            fail("escape-accepted", f"{', '.join(t for t in spec['tags'] if t.startswith('ext:'))}: exit 0")
        for pid in getattr(self, "_stray", []):
            fail("stray-process", f"pid {pid} still alive after the command exited")
        return failures

    def keep_case(
        self, request: dict[str, Any], spec: dict[str, Any], box: Path, result: dict, stdout: str, stderr: str
    ) -> Path:
        """Regenerates the case under --keep-failures with repro.sh and what the run showed."""
        assert self.keep is not None
        kept = self.keep / f"case-{request['index']:06d}"
        listing = "\n".join(f"{rel}  {kind} {size}" for rel, (kind, size, *_r) in sorted(walk(box).items()))
        again = self.build(request, kept)
        for sub in ("home", "tmp"):
            shutil.rmtree(kept / sub, ignore_errors=True)
            (kept / sub).mkdir()
        (kept / "stdout.txt").write_text(stdout)
        (kept / "stderr.txt").write_text(stderr)
        (kept / "after.txt").write_text(listing + "\n")
        (kept / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        argv = again.get("exec") or [sys.executable, "-m", "onnxprune", *again["args"]]
        lines = [
            "#!/bin/sh",
            f"# onnxprune fuzz case {request['index']} (seed {self.seed}): {' '.join(again['tags']) or 'no mutation'}",
            f"# found: {'; '.join(f['kind'] + ': ' + f['detail'] for f in result['failures'])[:600]}",
            "# extra arguments go to the command, e.g. ./repro.sh --debug",
            "# regenerate: " + repro_command(None if "spec" in request else self.seed, request["index"]),
            'cd "$(dirname "$0")" || exit 1',
            'here="$(pwd)"',
            "rm -rf home tmp && mkdir -p home tmp",
            'export HOME="$here/home" XDG_CACHE_HOME="$here/home/.cache" XDG_CONFIG_HOME="$here/home/.config"',
            'export XDG_DATA_HOME="$here/home/.local/share" XDG_STATE_HOME="$here/home/.local/state"',
            'export TMPDIR="$here/tmp" TEMP="$here/tmp" TMP="$here/tmp"',
            "export " + " ".join(f"{k}={v}" for k, v in THREAD_ENV.items()),
            f"ulimit -v {self.memory // 1024} 2>/dev/null",
            "cd run || exit 1",
            "exec " + " ".join(shlex.quote(x) for x in argv) + ' "$@"',
        ]
        (kept / "repro.sh").write_text("\n".join(lines) + "\n")
        (kept / "repro.sh").chmod(0o755)
        return kept


def wait_pid(pid: int, timeout: float) -> tuple[int, bool]:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        if time.monotonic() > deadline:
            kill_group(pid)
            os.waitpid(pid, 0)
            return 0, True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "?"


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return members


def reap_group(pgid: int) -> list[int]:
    """Processes of the case's group still alive shortly after it exited (then killed)."""
    if not os.path.isdir("/proc"):
        return []
    deadline = time.monotonic() + 1.0
    members = group_members(pgid)
    while members and time.monotonic() < deadline:
        time.sleep(0.05)
        members = group_members(pgid)
    if members:
        kill_group(pgid)
    return members


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def traceback_line(text: str) -> str:
    """The exception line that ends the first traceback in ``text``."""
    lines = text[text.index("Traceback") :].splitlines()
    for line in lines[1:]:
        if line and not line.startswith((" ", "\t")):
            return line.strip()
    return last_line(text)


def error_line(text: str) -> str:
    """The line that says what went wrong: onnxprune's one-line error, else the last line."""
    for line in text.splitlines():
        if line.startswith("onnxprune: error:"):
            return line.strip()
    return last_line(text)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def worker_main(config_text: str) -> None:
    config = json.loads(config_text)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of libraries go to the worker's log, not the protocol
    worker = Worker(config)
    worker.proto_fd = proto.fileno()
    if config["runner"] == "fork":  # import once what the commands import lazily
        for module in (
            "onnxprune.cli",
            "onnxruntime",
            "onnx_graphsurgeon",
            "onnxprune.evaluation",
            "onnxprune.quantize",
            "onnxprune.sensitivity.sweep",
            "onnxruntime.quantization",
            "PIL.Image",
        ):
            with contextlib.suppress(Exception):
                __import__(module)
    with contextlib.suppress(Exception):
        worker.fixtures  # noqa: B018 (read the fixtures once, before the first case)
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = worker.run_case(request)
        except Exception:
            result = harness_failure(request, traceback.format_exc().strip().splitlines()[-1])
        proto.write(json.dumps(result) + "\n")


# ----------------------------------------------------------------------------------------------
# The parent: dispatch, progress, summary
# ----------------------------------------------------------------------------------------------


def repro_command(seed: int | None, index: int) -> str:
    if seed is None:
        return "(custom case)"
    return f".venv/bin/python tools/fuzz.py --seed {seed} --only {index} --keep-failures /tmp/onnxprune-fuzz-kept"


class Pool:
    def __init__(self, config: dict[str, Any], jobs: int, logs: Path) -> None:
        self.config, self.logs = config, logs
        self.selector = selectors.DefaultSelector()
        self.procs: dict[int, dict[str, Any]] = {}
        self.next_id = 0
        for _ in range(jobs):
            self.start()

    def start(self) -> None:
        slot = self.next_id
        self.next_id += 1
        log = open(self.logs / f"worker-{slot}.log", "wb")  # noqa: SIM115 (closed in stop())
        # the worker's own HOME and TMPDIR: what its imports write (onnxruntime's telemetry files) stays here
        home, tmp = self.logs / f"worker-{slot}-home", self.logs / f"worker-{slot}-tmp"
        home.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(tmp), **THREAD_ENV)
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=REPO,
        )
        state = {"proc": proc, "log": log, "request": None, "deadline": None, "ready": False, "slot": slot}
        self.procs[slot] = state
        self.selector.register(proc.stdout, selectors.EVENT_READ, slot)

    def stop(self, slot: int) -> None:
        state = self.procs.pop(slot)
        with contextlib.suppress(Exception):
            self.selector.unregister(state["proc"].stdout)
        with contextlib.suppress(Exception):
            state["proc"].kill()
        with contextlib.suppress(Exception):
            state["proc"].wait(5)
        state["log"].close()

    def close(self) -> None:
        for slot in list(self.procs):
            state = self.procs[slot]
            with contextlib.suppress(Exception):
                state["proc"].stdin.close()
            with contextlib.suppress(Exception):
                state["proc"].wait(10)
            self.stop(slot)


def run_cases(
    requests: list[dict[str, Any]],
    *,
    seed: int,
    jobs: int = 2,
    timeout: float = 60.0,
    runner: str = "fork",
    keep: Path | None = None,
    memory_mb: int = 4096,
    commands: list[str] | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Runs the cases (``{"index": I}`` generated, or ``{"index": I, "spec": custom_spec(...)}``)
    on ``jobs`` worker processes; returns one result per case, in index order."""
    root = Path(tempfile.mkdtemp(prefix="onnxprune-fuzz-"))
    cases_dir, logs = root / "cases", root / "logs"
    cases_dir.mkdir()
    logs.mkdir()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    config = {
        "cases_dir": str(cases_dir),
        "seed": seed,
        "runner": runner,
        "timeout": timeout,
        "memory_mb": memory_mb,
        "keep": str(keep.resolve()) if keep else None,
        "commands": commands or list(COMMANDS),
    }
    pending = list(reversed(requests))
    results: list[dict[str, Any]] = []
    pool = Pool(config, max(1, min(jobs, len(requests) or 1)), logs)
    slack = 120.0  # building a case, checking it, the worker's own start
    try:
        while pending or any(s["request"] is not None for s in pool.procs.values()):
            for state in pool.procs.values():
                if state["ready"] and state["request"] is None and pending:
                    request = pending.pop()
                    state["request"] = request
                    state["deadline"] = time.monotonic() + timeout + slack
                    state["proc"].stdin.write((json.dumps(request) + "\n").encode())
                    state["proc"].stdin.flush()
            for key, _ in pool.selector.select(timeout=1.0):
                slot = key.data
                state = pool.procs.get(slot)
                if state is None:
                    continue
                line = state["proc"].stdout.readline()
                if not line:  # the worker died
                    request = state["request"]
                    pool.stop(slot)
                    tail = (logs / f"worker-{slot}.log").read_text(errors="replace")[-500:]
                    if request is not None:
                        results.append(harness_failure(request, f"worker died: {last_line(tail)}"))
                        if progress:
                            progress(results[-1])
                    pool.start()
                    continue
                message = json.loads(line)
                if message.get("ready"):
                    state["ready"] = True
                    continue
                state["request"] = None
                results.append(message)
                if progress:
                    progress(message)
            for slot, state in list(pool.procs.items()):
                if state["request"] is not None and time.monotonic() > state["deadline"]:
                    request = state["request"]
                    pool.stop(slot)
                    results.append(
                        harness_failure(request, "the worker did not answer (building or checking the case hung)")
                    )
                    if progress:
                        progress(results[-1])
                    pool.start()
    finally:
        pool.close()
        shutil.rmtree(root, ignore_errors=True)
    return sorted(results, key=lambda r: r["index"])


def harness_failure(request: dict[str, Any], detail: str) -> dict[str, Any]:
    """The result of a case the harness itself failed on (``detail``: the error's last line)."""
    return {
        "index": request["index"],
        "command": "?",
        "args": [],
        "tags": [],
        "exit": None,
        "signal": None,
        "seconds": 0.0,
        "failures": [{"kind": "harness-error", "detail": detail}],
        "last_line": detail,
    }


def outcome(result: dict[str, Any]) -> str:
    if result["failures"]:
        return "failed"
    if result["exit"] == 0:
        return "ok (exit 0)"
    if result["exit"] == 10:
        return "nothing to prune (exit 10)"
    return f"clean error (exit {result['exit']})"


def normalize(line: str) -> str:
    line = re.sub(r"/[^\s'\"]*/(c\d{6}|case-\d{6})/", "<case>/", line)
    line = line.replace(str(FIXTURES), "<fixtures>")
    line = re.sub(r"\.[A-Za-z0-9_]{6,}\.tmp", ".*.tmp", line)
    line = re.sub(r"0x[0-9a-fA-F]+", "0x…", line)
    line = re.sub(r"(.)\1{11,}", r"\1\1\1…", line)
    line = re.sub(r"\d+", "N", line)
    return line[:220]


def signature(result: dict[str, Any], failure: dict[str, str]) -> tuple[str, str, str, str]:
    kind = failure["kind"]
    if kind in ("internal-error", "bad-exit-code"):
        text = result.get("last_line") or failure["detail"]
    else:
        text = failure["detail"]
    exit_text = (
        "timeout"
        if result.get("timed_out")
        else f"signal {result['signal']}"
        if result.get("signal")
        else str(result["exit"])
    )
    return kind, result["command"], exit_text, normalize(text)


def summarize(results: list[dict[str, Any]], seconds: float, seed: int, jobs: int, runner: str) -> dict[str, Any]:
    outcomes = Counter(outcome(r) for r in results)
    kinds: Counter[str] = Counter()
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        seen = set()
        for failure in r["failures"]:
            if failure["kind"] not in seen:
                kinds[failure["kind"]] += 1
                seen.add(failure["kind"])
            key = signature(r, failure)
            if not groups[key] or groups[key][-1] is not r:
                groups[key].append(r)
    signatures = []
    for (kind, command, exit_text, text), members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        example = members[0]
        tags = Counter(t for m in members for t in (m["tags"] or ["no mutation"]))
        signatures.append(
            {
                "kind": kind,
                "command": command,
                "exit": exit_text,
                "line": text,
                "count": len(members),
                "cases": [m["index"] for m in members],
                "tags": [t for t, _ in tags.most_common(6)],
                "example_tags": example["tags"],
                "example_args": example["args"],
                "repro": repro_command(None if example.get("custom") else seed, example["index"]),
            }
        )
    return {
        "seed": seed,
        "cases": len(results),
        "jobs": jobs,
        "runner": runner,
        "wall_s": round(seconds, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "failed_cases": sum(1 for r in results if r["failures"]),
        "failures": {k: kinds[k] for k in FAILURE_KINDS if kinds[k]},
        "signatures": signatures,
        "slowest": sorted(
            ({"index": r["index"], "seconds": r["seconds"], "command": r["command"]} for r in results),
            key=lambda x: -x["seconds"],
        )[:5],
        "results": [
            {
                k: r.get(k)
                for k in (
                    "index",
                    "command",
                    "args",
                    "tags",
                    "exit",
                    "signal",
                    "seconds",
                    "failures",
                    "last_line",
                    "kept",
                )
            }
            for r in results
            if r["failures"]
        ],
    }


def print_summary(summary: dict[str, Any], stream: Any = sys.stdout) -> None:
    def out(text: str = "") -> None:
        print(text, file=stream)

    out(
        f"onnxprune fuzz: seed {summary['seed']}, {summary['cases']} cases, {summary['jobs']} jobs, "
        f"{summary['runner']} runner, {summary['wall_s']:.1f} s"
    )
    out("outcomes:")
    for name, n in summary["outcomes"].items():
        out(f"  {name:<28} {n:>6}")
    if summary["failures"]:
        out(f"failures by kind (cases; a case may show several): {summary['failed_cases']} cases failed")
        for kind, n in summary["failures"].items():
            out(f"  {kind:<28} {n:>6}")
        out(f"distinct failure signatures: {len(summary['signatures'])}")
        for k, sig in enumerate(summary["signatures"], 1):
            out(f"{k:>3}. [{sig['kind']}] {sig['command']} exit {sig['exit']} x{sig['count']}: {sig['line']}")
            out(f"     mutations: {', '.join(sig['tags'])}")
            out(f"     cases: {', '.join(map(str, sig['cases'][:12]))}{' ...' if len(sig['cases']) > 12 else ''}")
            command = shlex.join(
                ["onnxprune", *sig["example_args"]] if sig["command"] != "exec" else sig["example_args"]
            )
            command = re.sub(r"(.)\1{11,}", lambda m: f"{m.group(1) * 3}…[{len(m.group(0))}×]", command)
            out(f"     case {sig['cases'][0]} ran: {command if len(command) < 400 else command[:400] + ' ...'}")
            out(f"     repro: {sig['repro']}")
    else:
        out("no failures")
    out(f"wall time: {summary['wall_s']:.1f} s")


def run_failure(summary: dict[str, Any], kind: str) -> None:
    """Count a failure of the whole run (no one case's) in ``summary``."""
    summary["failures"][kind] = summary["failures"].get(kind, 0) + 1
    summary["failed_cases"] += 1


def package_digest() -> tuple[str, str]:
    """Where the ``onnxprune`` every case runs is imported from (the same interpreter and
    environment as the cases), and a digest of its sources: an editable install runs the
    working tree, so edits made during a long run would mix two versions into one result."""
    import importlib.util

    spec = importlib.util.find_spec("onnxprune")
    if spec is None or spec.origin is None:
        return "?", ""
    folder = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return str(folder), digest.hexdigest()


def parse_only(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return sorted(set(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fuzz the onnxprune command line with mutated fixtures, data, plans and options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (case I of seed S is always the same)")
    parser.add_argument("--cases", type=int, default=300, help="number of cases (indices 0..N-1)")
    parser.add_argument("--only", help="run only these case indices, e.g. 17,40-45 (ignores --cases)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--runner", choices=("fork", "subprocess"), default="fork", help="fork (fast) or subprocess")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="commands to draw from, comma-separated")
    parser.add_argument("--memory-limit", type=int, default=4096, metavar="MIB", help="address-space limit per case")
    parser.add_argument(
        "--keep-failures", type=Path, metavar="DIR", help="regenerate failing cases here, with repro.sh"
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="write counts, signatures and failing cases as JSON ('-': stdout)"
    )
    parser.add_argument("--log", type=Path, metavar="PATH", help="write every case's result as a JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return 0
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown or not commands:
        parser.error(f"--commands: unknown {unknown}; choose from {', '.join(COMMANDS)}")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    indices = parse_only(args.only) if args.only else list(range(args.cases))
    requests = [{"index": i} for i in indices]
    fixtures_before = {rel: sha256(FIXTURES / rel) for rel, (kind, *_r) in walk(FIXTURES).items() if kind == "file"}
    package, sources_before = package_digest()
    start = time.monotonic()
    done: Counter[str] = Counter()
    tty = sys.stderr.isatty()
    every = max(1, len(requests) // 20)

    def progress(result: dict[str, Any]) -> None:
        done["n"] += 1
        done["failed" if result["failures"] else "passed"] += 1
        if args.quiet:
            return
        line = (
            f"[{done['n']:>{len(str(len(requests)))}}/{len(requests)}] "
            f"passed {done['passed']}, failed {done['failed']}, {time.monotonic() - start:.0f} s"
        )
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif done["n"] % every == 0 or done["n"] == len(requests):
            print(line, file=sys.stderr, flush=True)

    results = run_cases(
        requests,
        seed=args.seed,
        jobs=args.jobs,
        timeout=args.timeout,
        runner=args.runner,
        keep=args.keep_failures,
        memory_mb=args.memory_limit,
        commands=commands,
        progress=progress,
    )
    if tty and not args.quiet:
        print(file=sys.stderr)
    fixtures_after = {rel: sha256(FIXTURES / rel) for rel, (kind, *_r) in walk(FIXTURES).items() if kind == "file"}
    seconds = time.monotonic() - start
    summary = summarize(results, seconds, args.seed, args.jobs, args.runner)
    summary["package"] = package
    if package_digest()[1] != sources_before:  # the run tested two versions: no result to trust
        summary["sources_changed"] = True
        run_failure(summary, "sources-changed")
    if fixtures_after != fixtures_before:
        changed = sorted(
            k for k in set(fixtures_before) | set(fixtures_after) if fixtures_before.get(k) != fixtures_after.get(k)
        )
        summary["fixtures_changed"] = changed
        run_failure(summary, "write-outside")
    if args.log:
        with open(args.log, "w") as stream:
            for result in results:
                stream.write(json.dumps({"outcome": outcome(result), **result}) + "\n")
    print_summary(summary)
    print(f"onnxprune under test: {package}")
    if summary.get("fixtures_changed"):
        print(f"fixtures changed during the run: {', '.join(summary['fixtures_changed'])}")
    if summary.get("sources_changed"):
        print(
            f"the onnxprune sources in {package} changed during the run, so its cases ran two versions: run the "
            "fuzzer from a clone of the commit (PYTHONPATH=<clone>) while you edit"
        )
    if args.json:
        text = json.dumps(summary, indent=2) + "\n"
        if str(args.json) == "-":
            sys.stdout.write(text)
        else:
            args.json.write_text(text)
    return 1 if summary["failed_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
