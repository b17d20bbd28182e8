"""onnxruntime sessions, synthetic inputs and the environment a latency report records.

Input shapes, one policy for the whole package (:func:`resolve_input_shapes`): a user-given
shape (``input_shapes={"x": (1, 3, 224, 224)}``) wins, and must keep the declared rank and
fixed dimensions; fixed dimensions are kept; the dynamic batch dim (on the axis
:mod:`onnxprune.batch_axes` infers: axis 0, or where the batch symbol sits, as in a recurrent
state ``[1, batch, 32]``) is 1; another dynamic dimension takes the size the caller tries (validation tries a few common
sizes, :data:`CANDIDATE_SIZES`, until the model runs), else a default by layout: the last
two axes of an input of rank >= 3 are spatial (:data:`DEFAULT_SPATIAL`), any other is a
sequence (:data:`DEFAULT_SEQUENCE`). Synthetic feeds: every graph input gets an array of
its declared dtype, shaped so. A user-given shape of more than :data:`MAX_INPUT_ELEMENTS`
elements (or with a dimension that large) is refused up front, before anything is allocated.

**Whose fault is an onnxruntime error?** A model that ``onnx.load`` and onnxprune's own checks
accept may still be one onnxruntime refuses (an attribute of the wrong type, dims that do not
fit, a cycle, an opset it does not know): the error then surfaces wherever onnxprune first runs
a session, often on a model derived from the input. A command registers the models it reads
(:func:`reads_model`, within the scope of :func:`input_scope`); when an onnxruntime error
escapes it, :func:`input_rejection` asks onnxruntime whether it loads each input model itself,
and runs it on one synthetic batch where its input shapes are known. If it cannot, the input is
at fault: one line, :class:`~onnxprune.errors.UnsupportedModelError` (a
:class:`~onnxprune.errors.MissingKernelError` where this onnxruntime lacks a kernel). If it can,
the error stays onnxprune's (an internal error). Nothing is checked until something failed: the
success path costs nothing. Validation of an output that fails asks the same of the input
(:func:`input_load_error`, :func:`rejection`), so both say it in the same words.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import ModelProto

from onnxprune.batch_axes import batch_axes as infer_batch_axes
from onnxprune.errors import DataError, MissingKernelError, OnnxPruneError, OptionError, UnsupportedModelError, opt

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

#: Sizes tried, in order, for dynamic non-batch dimensions.
CANDIDATE_SIZES = (32, 48, 64, 16, 128, 224, 8, 1)
#: Default sizes of dynamic input dimensions (batch excluded) when neither a shape nor a size is given.
DEFAULT_SEQUENCE = 16
DEFAULT_SPATIAL = 64
#: The most elements of one input onnxprune makes from a user-given shape (2^30: 4 GiB as
#: float32, and synthetic values are drawn in float64): more is a typo, or memory the machine lacks.
MAX_INPUT_ELEMENTS = 1 << 30

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, imported on first use: a command that runs no session (a
    magnitude prune with ``--no-validate``, ``inspect``, ``--help``) never loads it (its import
    took 25–38 ms on the 2-core machines, where the whole CLI starts in 0.24–0.33 s).
    """
    import onnxruntime as ort

    return ort


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` specs (a scalar is ``name:``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name:
            raise OptionError(f"{opt('input_shapes')} '{spec}' must look like NAME:1x3x224x224")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            raise OptionError(f"{opt('input_shapes')} '{spec}': dimensions must be integers separated by 'x'") from None
        if any(d < 1 for d in shape):
            raise OptionError(
                f"{opt('input_shapes')} '{spec}': dimensions must be >= 1 (an empty input gives nothing to run or measure)"
            )
        check_shape_size(name, shape)
        shapes[name] = shape
    return shapes


def check_shape_size(name: str, shape: Sequence[int]) -> None:
    """Raise :class:`OptionError` for a user-given shape of input ``name`` with more than
    :data:`MAX_INPUT_ELEMENTS` elements or a dimension larger than that (even beside a 0)."""
    total = math.prod(shape)
    if total <= MAX_INPUT_ELEMENTS and all(d <= MAX_INPUT_ELEMENTS for d in shape):
        return
    size = f"{total:,} elements" if total > MAX_INPUT_ELEMENTS else f"a dimension of {max(shape):,}"
    raise OptionError(
        f"{opt('input_shapes')} {name}:{'x'.join(map(str, shape))} has {size}, more than the {MAX_INPUT_ELEMENTS:,} "
        "(2^30) onnxprune makes for one input: give the shape of one realistic batch"
    )


def check_providers(providers: Sequence[str] | None) -> list[str]:
    """The execution providers to use, in priority order; None means the CPU provider.

    Raises :class:`OptionError` for an empty list or a provider this onnxruntime build does
    not offer (the message lists ``onnxruntime.get_available_providers()``).
    """
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    ort = onnxruntime()
    available = ort.get_available_providers()
    if not providers:
        raise OptionError(f"no execution provider given; choose from: {', '.join(available)}")
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise OptionError(
            f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime "
            f"({ort.__version__}); choose from: {', '.join(available)}"
        )
    return list(dict.fromkeys(providers))


def session(
    model: str | os.PathLike[str] | bytes,
    *,
    threads: int = 0,
    optimize: bool = False,
    providers: Sequence[str] | None = None,
    spinning: bool = False,
    prepack: bool = True,
    shared: Mapping[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """A session with quiet logging (errors propagate as onnxruntime exceptions; onnxruntime's
    own log of them shows only when this module logs at DEBUG, i.e. with --debug).

    ``providers`` None means CPU only; others are validated by :func:`check_providers`
    before the model is read. Execution is sequential (no inter-op threads run);
    ``threads`` > 0 sets the intra-op threads, 0 leaves onnxruntime's default.
    ``optimize`` False disables graph optimizations (validation runs the graph as
    written); True keeps onnxruntime's default, ``ORT_ENABLE_ALL``. ``spinning``: whether idle
    intra-op threads busy-wait for the next run (onnxruntime's default). Off here: the runs of
    every session in this package alternate with numpy work on the same cores (the captures'
    sums, the probe's distances, the solves), and threads spinning between runs take those
    cores from it. SparseGPT on PP-OCRv4 det (50 %, 32 pages of 640×640) took 127.3 s with
    spinning and 105.0 s without, rec (70 %, 32 lines of 48×1280) 137.5 → 117.0 s (its probe
    53–70 → 36–47 s), the same bytes (medians of three interleaved runs on 2 shared cores).
    ``prepack`` False: the kernels do not repack their weights at load (a session made to run
    once, as validation's: the 100 M-parameter bench model's took 0.110 s to make without and
    0.387 s with, its run 0.023 against 0.016 s, medians of 5; all-MiniLM-L6-v2's 0.080 against
    0.105 s, its run 0.010 against 0.006 s, medians of 7).
    ``shared``: the values of the tensors that ``model`` declares as external data, by name
    (:class:`onnxprune.frontier.SessionSource`), copied into the session's graph as it loads.
    """
    chosen = check_providers(providers)
    ort = onnxruntime()
    options = ort.SessionOptions()
    # onnxruntime logs a failing kernel as an ERROR before it raises: the exception says it
    # (one line, :func:`ort_message`), its log only with --debug
    options.log_severity_level = 3 if log.isEnabledFor(logging.DEBUG) else 4
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if shared:  # onnxruntime copies them as the model loads: the OrtValues need not outlive this call
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for v in shared.values()]
        options.add_external_initializers(list(shared), values)
    if not isinstance(model, bytes):
        return ort.InferenceSession(str(Path(model)), options, providers=chosen)
    try:
        return ort.InferenceSession(model, options, providers=chosen)
    except Exception as exc:
        if _NEEDS_PATH not in str(exc):
            raise
    # onnxruntime 1.24-1.28 cannot optimize an initializer inside a subgraph (an If branch's
    # Conv+BN reading an outer weight) of a model given as bytes: it asks for the model's
    # path. The same bytes from a file load; the session keeps the model once it is made.
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model)
        return ort.InferenceSession(str(path), options, providers=chosen)


#: What onnxruntime 1.24-1.28 says when a model given as bytes needs a path.
_NEEDS_PATH = "model_path must not be empty"


#: Noise in onnxruntime messages: the status prefix, the path of the model it loaded, and
#: the C++ source location with the full signature of the function that failed.
_ORT_NOISE = (
    re.compile(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : "),
    re.compile(r"Load model from .*? failed:\s*"),
    re.compile(r"\S+\.(?:cc|cpp|h):\d+ (?:[\w:*&<>]+ )*?[^\s(]+\([^)]*\)(?: const)?\s*"),
)


#: onnxruntime's account of a node it refuses: its name, op, domain, version and every input and
#: output with its type (hundreds of characters) before the error; shortened to name and op.
_NODE_PREAMBLE = re.compile(r'In Node, \("([^"]*)", ([\w.]+), "[^"]*", -?\d+\) : \(.*?\) -> \(.*?\) , Error ')


_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\S+?)\((\d+)\) node(?: with name '([^']*)')?")


@dataclass(frozen=True)
class MissingKernel:
    """onnxruntime has no kernel for an op (at this opset, for these types) in this build."""

    op: str
    opset: int
    node: str

    def advice(self, alternative: str = "") -> str:
        """One sentence: the runtime lacks the kernel, and what to do about it (``alternative``:
        another way out, appended to the usual ones)."""
        node = f" (node '{self.node}')" if self.node else ""
        other = f", or {alternative}" if alternative else ""
        ort = onnxruntime()
        return (
            f"this onnxruntime ({ort.__version__}, providers {', '.join(ort.get_available_providers())}) has no kernel "
            f"for {self.op}({self.opset}) with these types{node}: the runtime lacks it, the model is valid ONNX; "
            f"upgrade onnxruntime, use a build or execution provider that implements it{other}"
        )


def missing_kernel(exc: BaseException) -> MissingKernel | None:
    """The op onnxruntime says it has no implementation for, if that is why ``exc`` was raised."""
    found = _MISSING_KERNEL.search(str(exc))
    return MissingKernel(found.group(1), int(found.group(2)), found.group(3) or "") if found else None


def run_batch(
    sess: ort.InferenceSession, names: Sequence[str], feeds: Mapping[str, np.ndarray], index: int
) -> dict[str, np.ndarray]:
    """The values ``names`` on calibration batch ``index``: those in ``feeds`` as given, the
    others run by ``sess``. A batch the model fails on is a :class:`DataError`."""
    wanted = [name for name in names if name not in feeds]
    try:
        values = sess.run(wanted, dict(feeds)) if wanted else []
    except Exception as exc:  # onnxruntime raises its own types
        raise DataError(
            f"the model fails on calibration batch {index} ({ort_message(exc)}); "
            "check the data's input names, shapes and dtypes"
        ) from exc
    out = {name: np.asarray(feeds[name]) for name in names if name in feeds}
    out.update(zip(wanted, values, strict=True))
    return out


def ort_message(exc: BaseException) -> str:
    """The first meaningful line of an onnxruntime exception (status prefix and C++ location removed)."""
    text = str(exc).strip()
    for noise in _ORT_NOISE:
        text = noise.sub("", text)
    text = _NODE_PREAMBLE.sub(r"In node '\1' (\2): ", text).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def from_onnxruntime(exc: BaseException) -> bool:
    """True if ``exc`` is an onnxruntime error (its pybind exception types, or a text that
    carries its status prefix, as one re-raised from a worker process does)."""
    return type(exc).__module__.startswith("onnxruntime") or "[ONNXRuntimeError]" in str(exc)


@dataclass(frozen=True)
class InputModel:
    """A model a command reads, with the input shapes the user gave for it (full shapes)."""

    path: Path
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


_INPUTS: ContextVar[list[InputModel] | None] = ContextVar("onnxprune_input_models", default=None)


@contextlib.contextmanager
def input_scope() -> Iterator[list[InputModel]]:
    """The scope of one command: the models :func:`reads_model` registers within it are
    added to the list yielded, which the caller keeps to ask :func:`input_rejection` about
    after an error (the list outlives the block)."""
    registered: list[InputModel] = []
    token = _INPUTS.set(registered)
    try:
        yield registered
    finally:
        _INPUTS.reset(token)


def reads_model(path: str | os.PathLike[str], input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
    """Register ``path`` as a model the running command reads (with the user's full
    ``input_shapes`` for it); nothing outside an :func:`input_scope`."""
    registered = _INPUTS.get()
    if registered is None:
        return
    model = InputModel(Path(path), {name: tuple(int(d) for d in shape) for name, shape in (input_shapes or {}).items()})
    if model.path not in {m.path for m in registered}:
        registered.append(model)


def input_rejection(exc: BaseException, inputs: Sequence[InputModel]) -> OnnxPruneError | None:
    """After ``exc``, an onnxruntime error: the one-line error that blames the first of
    ``inputs`` onnxruntime cannot load (or, where its input shapes are known, run on one
    synthetic batch) by itself; None when ``exc`` is no onnxruntime error or every input
    loads and runs, so the error is onnxprune's (see the module docstring)."""
    if not from_onnxruntime(exc):
        return None
    for model in inputs:
        found = rejection(model)
        if found is not None:
            return found
    return None


def rejection(model: InputModel) -> OnnxPruneError | None:
    """Why onnxruntime rejects input ``model`` by itself (it cannot load it, or run it on one
    synthetic batch where its input shapes are known), or None: it loads and runs, or it
    cannot be told. Each onnxruntime session is tried as validation makes it, then as
    evaluation does (optimized)."""
    for optimize in (False, True):  # as validation runs a graph, and as evaluation does
        try:
            sess = session(model.path, optimize=optimize)
        except Exception as exc:  # onnxruntime raises its own types
            return input_load_error(model.path, exc) if from_onnxruntime(exc) else None
        try:
            specs = input_specs(sess)
            if needs_guess(specs, model.shapes):
                return None  # no shape to run it on: only the load could be checked
            feeds = synthetic_feeds(specs, model.shapes)
        except (OnnxPruneError, ValueError, MemoryError):
            return None
        try:
            sess.run(None, feeds)
        except Exception as exc:
            if not from_onnxruntime(exc):
                return None
            return UnsupportedModelError(
                f"onnxruntime cannot run the input model '{model.path}' on the synthetic input "
                f"{describe_feeds(feeds)} ({ort_message(exc)}): {_refused()}"
            )
    return None


def _refused() -> str:
    """What an error that blames the input model on onnxruntime's word says to do."""
    return (
        "the model itself is refused, not one onnxprune made: fix it or export it again, at an IR version and "
        f"opsets that onnxruntime {onnxruntime().__version__} supports (or upgrade onnxruntime)"
    )


def input_load_error(path: str | os.PathLike[str], exc: BaseException) -> OnnxPruneError:
    """The one-line error for input model ``path`` that onnxruntime cannot load (``exc``, what it
    raised): :class:`MissingKernelError` where it lacks a kernel (the runtime's limit), else
    :class:`UnsupportedModelError` with its message (the model's fault, or too new a model)."""
    missing = missing_kernel(exc)
    if missing is not None:
        return MissingKernelError(
            f"onnxruntime cannot load the input model '{path}': {missing.advice()}", kernel=missing
        )
    return UnsupportedModelError(f"onnxruntime cannot load the input model '{path}' ({ort_message(exc)}): {_refused()}")


def environment() -> dict[str, Any]:
    """What a latency report needs to be read elsewhere: CPU, cores, platform and versions."""
    ort = onnxruntime()
    return {
        "cpu": _cpu_name(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "providers": ort.get_available_providers(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: type
    dims: tuple[int | str | None, ...]


def input_specs(sess: ort.InferenceSession) -> list[InputSpec]:
    specs = []
    for arg in sess.get_inputs():
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise OptionError(f"input '{arg.name}' has type {arg.type}, which onnxprune cannot synthesize")
        specs.append(InputSpec(arg.name, dtype, tuple(arg.shape)))
    return specs


def is_dynamic(dim: int | str | None) -> bool:
    """True unless ``dim`` is a positive size. A declared size of 0 counts as unknown: a feed
    with an empty axis gives nothing to measure, and some onnxruntime kernels abort the
    process on one (SIGABRT, no exception to catch), so such a dim is filled like a free one."""
    return not isinstance(dim, int) or dim <= 0


def needs_guess(specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """True if some non-batch dynamic dimension has no user-given size."""
    return bool(guessed_dims({s.name: s.dims for s in specs}, shapes))


def shape_hint(dims: Sequence[int | str | None], batch_axis: int | None) -> str:
    """What to give ``--input-shape`` for an input of ``dims``: ``1`` on its batch axis, ``N`` (a
    number to choose) for every other dynamic dim, fixed dims as declared (``1xNx1``)."""
    return "x".join("1" if axis == batch_axis else "N" if is_dynamic(d) else str(d) for axis, d in enumerate(dims))


def guessed_dims(
    declared: Mapping[str, Sequence[int | str | None]], shapes: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """The axes of each input whose size a synthetic feed has to guess: dynamic, not its batch
    axis, and no size given in ``shapes``."""
    axes = infer_batch_axes(declared)
    out: dict[str, list[int]] = {}
    for name, dims in declared.items():
        if name in shapes:
            continue
        guessed = [axis for axis, d in enumerate(dims) if is_dynamic(d) and axis != axes[name]]
        if guessed:
            out[name] = guessed
    return out


def declared_dims(model: ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """The declared dimensions of ``model``'s graph inputs (initializers excluded), as a session
    reports them: an int when fixed, the dim_param (or None) when dynamic."""
    stored = {t.name for t in model.graph.initializer}
    return {
        value.name: tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim
        )
        for value in model.graph.input
        if value.name not in stored
    }


def resolve_input_shapes(
    declared: Mapping[str, Sequence[int | str | None]],
    given: Mapping[str, Sequence[int]] | None = None,
    *,
    size: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """The concrete shape of each input, ``declared`` by name (see the module docstring for the
    policy); ``size`` fills the dynamic non-batch dims, else the layout's default does."""
    checked = check_given_shapes(declared, given or {})
    axes = infer_batch_axes(declared)
    named: dict[str, int] = {}  # one size for a symbol, whichever input declares it
    for name, shape in checked.items():
        for d, given_size in zip(declared[name], shape, strict=True):
            if isinstance(d, str) and d:
                named.setdefault(d, given_size)
    out: dict[str, tuple[int, ...]] = {}
    for name, dims in declared.items():
        if name in checked:
            out[name] = checked[name]
            continue
        batch = axes[name] if axes[name] is not None and axes[name] >= 0 else 0
        filled = []
        for axis, d in enumerate(dims):
            if not is_dynamic(d):
                filled.append(int(d))
            elif isinstance(d, str) and d in named:
                filled.append(named[d])
            else:
                filled.append(1 if axis == batch else _fill(axis, len(dims), size))
                if isinstance(d, str) and d:
                    named[d] = filled[-1]
        shape = tuple(filled)
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise UnsupportedModelError(
                f"input '{name}' declares shape {'x'.join(map(str, shape))} ({math.prod(shape):,} elements), more than "
                f"the {MAX_INPUT_ELEMENTS:,} (2^30) onnxprune makes for one input: the model cannot be run on a "
                "synthetic batch; export it with realistic input dims"
            )
        out[name] = shape
    return out


def check_given_shapes(
    declared: Mapping[str, Sequence[int | str | None]],
    given: Mapping[str, Sequence[int]],
    *,
    skip_batch: bool = False,
    batch_axes: Mapping[str, int | None] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The user's ``given`` full shapes as integer tuples, each checked against its input's
    ``declared`` dims: the input exists, the rank matches, every fixed dim is kept (with
    ``skip_batch`` not the batch dim: the input's axis in ``batch_axes``, else axis 0).
    One-line :class:`OptionError` otherwise."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise OptionError(
            f"{opt('input_shapes')} names unknown input(s) {', '.join(unknown)}; "
            f"the model's inputs are: {', '.join(declared)}"
        )
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in given.items():
        dims, full = declared[name], tuple(int(d) for d in shape)
        check_shape_size(name, full)
        skip = (batch_axes or {}).get(name, 0) if skip_batch else None
        if len(full) != len(dims) or any(
            not is_dynamic(d) and d != s and axis != skip for axis, (d, s) in enumerate(zip(dims, full, strict=True))
        ):
            shown = ", ".join("?" if d is None else str(d) for d in dims)
            raise OptionError(
                f"{opt('input_shapes')} {name}:{'x'.join(map(str, full))} does not fit the model's declared shape "
                f"[{shown}]"
            )
        out[name] = full
    return out


def _fill(axis: int, rank: int, size: int | None) -> int:
    """The size of dynamic non-batch dimension ``axis`` of an input of ``rank`` (see the
    module docstring)."""
    if size is not None:
        return size
    return DEFAULT_SPATIAL if rank >= 3 and axis >= rank - 2 else DEFAULT_SEQUENCE


def synthetic_feeds(
    specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]], *, size: int = CANDIDATE_SIZES[0], seed: int = 0
) -> dict[str, np.ndarray]:
    """One batch of reproducible synthetic inputs (see module docstring)."""
    resolved = resolve_input_shapes({s.name: s.dims for s in specs}, shapes, size=size)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = resolved[spec.name]
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype is np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=np.bool_)
        else:
            fill = 1 if "mask" in spec.name.lower() else 0
            feeds[spec.name] = np.full(shape, fill, dtype=spec.dtype)
    return feeds


def describe_feeds(feeds: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name}:{'x'.join(map(str, a.shape))}" for name, a in feeds.items())
