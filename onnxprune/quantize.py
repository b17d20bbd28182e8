"""Int8 quantization after pruning, through ``onnxruntime.quantization``, keeping zeros zero.

Weights are quantized symmetrically to int8, per output channel where the op allows it
(per tensor otherwise, e.g. ``ConvInteger`` in dynamic mode)::

    s_c = max_i |w_ci| / 127.5        (onnxruntime: 2·max|w| / (127 − (−128)))
    q_ci = clamp(round(w_ci / s_c), −128, 127),   zero point z_c = 0
    ŵ_ci = s_c · q_ci

With a zero point of 0, ``round(0 / s) = 0``: every weight pruning set to zero is stored as
the int8 value 0 and dequantizes to exactly 0.0, so the pruned sparsity survives
quantization (and deflate compresses the int8 zeros as well as the float ones). This is
checked, not assumed: after quantizing, every int8 weight is compared with the float weight
it came from (found by following the graph, see :mod:`onnxprune.graph.quantized`; one that
cannot be traced is an error), and the output is refused unless each float zero is an int8 zero
(``zeros_after >= zeros_before``; more int8 zeros are fine: small weights round to 0).

Two modes (``mode``):

- **dynamic** (``quantize_dynamic``): weights int8; activations are quantized at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``/``ConvInteger``). Needs no data.
- **static** (``quantize_static``, QDQ format): weights int8 per channel, activations int8
  with ranges (min/max) measured on calibration data, the same :class:`~onnxprune.data.Dataset`
  the calibrated pruning methods read. onnxruntime fuses the QDQ pairs into integer kernels.

Before quantizing, float tensors held in ``Constant`` nodes of the main graph are moved to
initializers (lossless; the quantizer only quantizes initializers), and onnxruntime's
``quant_pre_process`` runs its shape inference (no graph optimization, so tensor names and
values stay those of the pruned model); if that fails, the model is quantized as it is. A
model whose subgraphs nest deeper than :data:`MAX_PREPROCESS_DEPTH` skips it: onnxruntime's
symbolic inference infers every branch of an If once per enclosing branch (2^depth passes:
30 levels ran for hours), so such a model is quantized as it is.

The output is written atomically (a staging folder next to it, renamed into place after
validation: ``onnx.checker``, an onnxruntime session and a run on synthetic input, see
:mod:`onnxprune.validate`); the input is never overwritten. What was done is recorded in the
output's ``metadata_props`` under ``onnxprune.quantize`` (JSON).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto

from onnxprune import runtime
from onnxprune.data import Dataset
from onnxprune.errors import (
    MissingKernelError,
    OnnxPruneError,
    OptionError,
    UnsupportedModelError,
    ValidationError,
    opt,
)
from onnxprune.graph import tensors
from onnxprune.graph.model_io import (
    EXTERNAL_DATA_THRESHOLD,
    SavedModel,
    StagedOutput,
    load_model,
    load_model_with_files,
    refuse_input_as_output,
    save_model,
    tensor_bytes,
)
from onnxprune.graph.quantized import float_weights, trace_integer_weights
from onnxprune.graph.walk import all_graphs, graphs_by_owner
from onnxprune.ops import constant_tensor
from onnxprune.ops.quantized import written_by_dynamic_quantization
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult
from onnxprune.validate import ValidationReport, validate_model

log = logging.getLogger(__name__)

MODES = ("dynamic", "static")
#: Samples per onnxruntime run while collecting activation ranges (static mode).
CALIBRATION_BATCH = 32
METADATA_KEY = "onnxprune.quantize"


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize: ``mode`` dynamic or static (static needs calibration data),
    ``per_channel`` weight scales, ``op_types`` to quantize (None: onnxruntime's default
    set), ``preprocess`` with onnxruntime's shape inference first."""

    mode: str = "dynamic"
    per_channel: bool = True
    op_types: tuple[str, ...] | None = None
    preprocess: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"quantization mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.op_types is not None and not self.op_types:
            raise OptionError("op_types to quantize is empty: give op types such as ('MatMul', 'Conv'), or None")

    def check_data(self, calibration: Dataset | None) -> None:
        """Raise :class:`OptionError` if static mode has no calibration data."""
        if self.mode == "static" and calibration is None:
            raise OptionError(
                f"{opt('quantize.mode', 'static')} needs calibration data for the activation ranges: give "
                f"{opt('calibration')} calib.npz (or a folder of images), or {opt('data_free', True)}; "
                f"or use {opt('quantize.mode', 'dynamic')}"
            )


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight stored as int8: its float zeros before, its int8 zeros after."""

    name: str  # the float weight
    shape: tuple[int, ...]  # the float weight's
    zeros_before: int
    zeros_after: int
    stored: str = ""  # the int8 initializer (the quantizer names it)
    layout: str = ""  # "transposed" when the int8 copy's axes are in another order
    reader: str = ""  # the quantized op that reads it


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_file` did and wrote."""

    mode: str
    per_channel: bool
    weights: tuple[QuantizedWeight, ...]
    saved: SavedModel
    bytes_before: int  # the input model and its external data
    bytes_after: int  # the output model and its external data
    validation: ValidationReport
    preprocessed: bool  # onnxruntime's shape inference ran first
    constants_lifted: int  # Constant-node weights moved to initializers first

    @property
    def weights_quantized(self) -> int:
        return len(self.weights)

    @property
    def elements(self) -> int:
        return sum(int(np.prod(w.shape)) for w in self.weights)

    @property
    def zeros_before(self) -> int:
        """Zeros of the float weights that were quantized."""
        return sum(w.zeros_before for w in self.weights)

    @property
    def zeros_after(self) -> int:
        """Zeros of their int8 copies (counted in the written model)."""
        return sum(w.zeros_after for w in self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "output": str(self.saved.path),
            "weights_quantized": self.weights_quantized,
            "elements": self.elements,
            "zeros_before": self.zeros_before,
            "zeros_after": self.zeros_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "preprocessed": self.preprocessed,
            "constants_lifted": self.constants_lifted,
            "weights": [{**asdict(w), "shape": list(w.shape)} for w in self.weights],
        }


class DatasetReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over a :class:`Dataset`: its batches,
    in order, as writable feed dicts; ``rewind`` starts again."""

    def __init__(self, dataset: Dataset, *, batch_size: int = CALIBRATION_BATCH) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self.dataset.batches(self.batch_size)
        batch = next(self._batches, None)
        return None if batch is None else {name: np.array(array) for name, array in batch.items()}

    def rewind(self) -> None:
        self._batches = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch

    def set_range(self, start_index: int, end_index: int) -> None:  # part of the protocol, unused by MinMax
        raise NotImplementedError("a DatasetReader is read whole")


def quantize_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    mode: str = "dynamic",
    calibration: Dataset | None = None,
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
    preprocess: bool = True,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
) -> QuantizeResult:
    """Quantize the weights of the model at ``source`` to int8 into ``output`` (see the module docstring).

    ``calibration`` (static mode only, required there) gives the activation ranges;
    ``input_shapes`` shape the synthetic input of the validation run. Raises
    :class:`OptionError` for a bad mode or static mode without data,
    :class:`UnsupportedModelError` when onnxruntime cannot quantize the model (or finds no
    weight to quantize), :class:`ValidationError` when a zero of the float weights is not
    an int8 zero or the output fails validation. Nothing is written then.
    """
    config = QuantizeConfig(
        mode=mode,
        per_channel=per_channel,
        op_types=tuple(op_types) if op_types is not None else None,
        preprocess=preprocess,
    )
    config.check_data(calibration)
    if not force:
        refuse_input_as_output(source, output)
    model, files = load_model_with_files(source)
    external = len(files) > 1 or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    lifted = lift_constants(model)
    depth = subgraph_depth(model)
    with StagedOutput(output, input_path=source, force=force) as staged:
        work = staged.model_path.with_name(f"float.{staged.out.name}")  # never the output's own name
        _save(model, work, external)
        del model
        if config.preprocess:
            work, preprocessed = _preprocess(work, external, depth)
        else:
            preprocessed = False
        with _ort_logs_demoted():
            _quantize(work, staged.model_path, config, calibration, external)
        weights = _check_zeros(work, staged.model_path)
        if not weights:
            raise UnsupportedModelError(
                "onnxruntime.quantization found no weight to quantize (it quantizes float32 "
                "initializers read by Conv, MatMul, Gemm, LSTM, Gather ..., not float16 weights behind a Cast); "
                "nothing was written"
            )
        _stamp(staged.model_path, config, weights)
        try:
            report = validate_model(staged.model_path, reference=source, input_shapes=input_shapes)
        except MissingKernelError as exc:
            kernel = exc.kernel
            if (
                config.mode == "dynamic"
                and isinstance(kernel, runtime.MissingKernel)
                and written_by_dynamic_quantization(kernel.op)
            ):
                raise MissingKernelError(
                    "onnxruntime cannot load the int8 model: "
                    + kernel.advice("quantize in static mode (QDQ), whose kernels every onnxruntime has")
                    + "; nothing was written",
                    kernel=kernel,
                ) from exc
            raise
        saved = staged.commit()
    after = saved.path.stat().st_size + (saved.data_path.stat().st_size if saved.data_path else 0)
    result = QuantizeResult(
        mode=config.mode,
        per_channel=config.per_channel,
        weights=tuple(weights),
        saved=saved,
        bytes_before=sum(f.stat().st_size for f in files),
        bytes_after=after,
        validation=report,
        preprocessed=preprocessed,
        constants_lifted=lifted,
    )
    log.info(
        "int8 (%s): %d weight tensors, all %d float zeros kept (%d int8 zeros)",
        config.mode,
        result.weights_quantized,
        result.zeros_before,
        result.zeros_after,
    )
    return result


def lift_constants(model: ModelProto) -> int:
    """Move float tensors of ``Constant`` nodes in the main graph to initializers (same
    name as the node's output); returns how many. Scalars stay: they are not weights."""
    keep = []
    lifted = 0
    for node in model.graph.node:
        value = constant_tensor(node)
        if value is not None and len(node.attribute) == 1 and tensors.is_float(value) and tensors.numel(value) > 1:
            tensor = TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            lifted += 1
        else:
            keep.append(node)
    if lifted:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        # an initializer carries its own type: a value_info for it made onnxruntime's
        # repeated shape inference fail ("inferred shape and existing shape differ")
        names = {t.name for t in model.graph.initializer}
        infos = [vi for vi in model.graph.value_info if vi.name not in names]
        del model.graph.value_info[:]
        model.graph.value_info.extend(infos)
        log.info("moved %d Constant-node weights to initializers for the quantizer", lifted)
    return lifted


def _save(model: ModelProto, path: Path, external: bool) -> None:
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


#: The deepest nesting of subgraphs (If/Loop/Scan in a branch of another) onnxruntime's
#: shape inference is asked to walk (see module docstring).
MAX_PREPROCESS_DEPTH = 6


def subgraph_depth(model: onnx.ModelProto) -> int:
    """How deep subgraphs nest in ``model`` (0: none; 1: an If in the main graph ...)."""
    return max(len(key) // 2 for key, _ in graphs_by_owner(model.graph))


@contextlib.contextmanager
def _working_folder(folder: Path) -> Iterator[None]:
    """Run the block with ``folder`` as the working folder (the CLI runs one thing at a time)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _preprocess(path: Path, external: bool, depth: int = 0) -> tuple[Path, bool]:
    """onnxruntime's shape inference (symbolic, then onnx), no optimization; the input on
    failure, or for subgraphs nested ``depth`` > :data:`MAX_PREPROCESS_DEPTH` deep."""
    from onnxruntime.quantization import quant_pre_process

    if depth > MAX_PREPROCESS_DEPTH:
        log.info(
            "subgraphs nest %d deep (over %d): onnxruntime's shape inference is skipped, the model is quantized as "
            "it is",
            depth,
            MAX_PREPROCESS_DEPTH,
        )
        return path, False

    path = path.resolve()  # before the working folder changes
    target = path.with_name(f"pre.{path.name}")
    try:
        # in the staging folder: onnxruntime's symbolic inference saves "sym_shape_infer_temp.onnx"
        # (and its data) into the working folder when it gives up, which must not be the user's
        with _ort_logs_demoted(), contextlib.redirect_stdout(None), _working_folder(path.parent):
            quant_pre_process(
                str(path),
                str(target),
                skip_optimization=True,
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                external_data_location=f"{target.name}.data",
            )
        onnx.load(str(target), load_external_data=False)  # it wrote something readable
    except Exception as exc:  # its failures are many (symbolic shapes of odd ops): quantize as is
        log.info("onnxruntime's quantization pre-processing failed (%s): quantizing the model as it is", _first(exc))
        return path, False
    return target, True


def _quantize(path: Path, target: Path, config: QuantizeConfig, calibration: Dataset | None, external: bool) -> None:
    """Run onnxruntime's quantizer (messages name no path: the input may be a staged file)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    extra = {"WeightSymmetric": True, "ActivationSymmetric": False, "MatMulConstBOnly": True}
    op_types = list(config.op_types) if config.op_types is not None else None
    try:
        if config.mode == "dynamic":
            quantize_dynamic(
                str(path),
                str(target),
                op_types_to_quantize=op_types,
                per_channel=config.per_channel,
                reduce_range=False,
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
                extra_options=extra,
            )
        else:
            quantize_static(
                str(path),
                str(target),
                DatasetReader(calibration),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=config.per_channel,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
            )
    except OnnxPruneError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        hint = f"; try {opt('quantize.mode', 'dynamic')}" if config.mode == "static" else ""
        raise UnsupportedModelError(
            f"onnxruntime.quantization cannot quantize the model ({config.mode}: {_first(exc)}){hint}; "
            "nothing was written"
        ) from exc
    if not target.is_file():
        raise UnsupportedModelError("onnxruntime.quantization wrote no model; nothing was written")


def _check_zeros(float_path: Path, int8_path: Path) -> list[QuantizedWeight]:
    """Each integer weight of the output against the float weight it came from, found by
    following the graph (:mod:`onnxprune.graph.quantized`), position by position in the
    integer tensor's layout; one that cannot be traced, or that lost a zero, is an error."""
    float_model, int8_model = load_model(float_path), load_model(int8_path)
    floats = float_weights(float_model)
    traced = trace_integer_weights(float_model, int8_model, floats)
    stored = {t.name: t for _, g in all_graphs(int8_model.graph) for t in g.initializer}
    weights = []
    for entry in traced:
        if entry.source is None or entry.axes is None:
            raise ValidationError(
                f"int8 weight '{entry.stored}' (read by {entry.reader}) cannot be traced to the float weight it "
                f"was made from ({entry.reason}), so its zeros cannot be checked; nothing was written"
            )
        w = np.transpose(floats[entry.source], entry.axes)
        q = tensors.read_array(stored[entry.stored])
        zeros_before = int(np.count_nonzero(w == 0))
        zeros_after = int(np.count_nonzero(q == 0))
        lost = int(np.count_nonzero((w == 0) & (q != 0)))
        if lost:
            raise ValidationError(
                f"int8 weight '{entry.source}' lost {lost} of its {zeros_before} zeros "
                "(the weight quantization is not symmetric); nothing was written"
            )
        layout = "" if entry.axes == tuple(range(len(entry.axes))) else "transposed"
        weights.append(
            QuantizedWeight(
                entry.source,
                tuple(int(d) for d in floats[entry.source].shape),
                zeros_before,
                zeros_after,
                stored=entry.stored,
                layout=layout,
                reader=entry.reader,
            )
        )
    return weights


def _stamp(path: Path, config: QuantizeConfig, weights: Sequence[QuantizedWeight]) -> None:
    """Record the quantization in the staged output's metadata (tensor data left where it is)."""
    from onnxprune import __version__

    model = onnx.load(str(path), load_external_data=False)
    record = {
        "version": __version__,
        "mode": config.mode,
        "weight_type": "int8",
        "symmetric": True,
        "per_channel": config.per_channel,
        "weights": len(weights),
        "zeros_before": sum(w.zeros_before for w in weights),
        "zeros_after": sum(w.zeros_after for w in weights),
    }
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = json.dumps(record, sort_keys=True)
            break
    else:
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(record, sort_keys=True))
    onnx.save_model(model, str(path))


@contextlib.contextmanager
def _ort_logs_demoted() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger ("consider pre-processing",
    per-channel axis notes): while it runs, those records go to this module's logger at
    DEBUG instead of the user's console."""
    marker = f"onnxruntime{os.sep}quantization"

    class _Demote(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if marker in record.pathname:
                log.debug("onnxruntime.quantization: %s", record.getMessage())
                return False
            return True

    root, ort_logger = logging.getLogger(), logging.getLogger("onnxruntime")
    demote, level = _Demote(), ort_logger.level
    root.addFilter(demote)
    ort_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(demote)
        ort_logger.setLevel(level)


def _first(exc: BaseException) -> str:
    """The first line of an exception's message, or its type."""
    return runtime.ort_message(exc) or type(exc).__name__


class QuantizePass(Pass):
    """Int8 quantization as the last step of a pipeline: :func:`quantize_file`, file to file.

    ``run_file`` quantizes a (staged) model file into ``output``, as ``prune_file`` does;
    ``run`` quantizes a model in memory through a temporary folder (onnxruntime's quantizer
    works on files) and replaces ``model``'s contents with the int8 model; the detail's
    ``saved`` then names a file of that folder, which is gone. Counts: weights quantized,
    their elements, float zeros before and int8 zeros after, bytes before and after,
    Constant-node weights lifted.
    """

    name = "quantize"
    contract = Contract(reads=("model", "calibration", "input_shapes"), needs=("model",), on_file=True)

    def __init__(self, config: QuantizeConfig) -> None:
        self.config = config

    def check(self, context: PassContext) -> None:
        self.config.check_data(context.calibration)

    def run_file(
        self, source: Path, output: str | os.PathLike[str], context: PassContext, *, force: bool = False
    ) -> PassResult:
        config = self.config
        result = quantize_file(
            source,
            output,
            mode=config.mode,
            calibration=context.calibration,
            per_channel=config.per_channel,
            op_types=config.op_types,
            preprocess=config.preprocess,
            input_shapes=context.input_shapes,
            force=force,
        )
        return self.result(result)

    def run(self, model: ModelProto, context: PassContext) -> PassResult:
        with tempfile.TemporaryDirectory(prefix="onnxprune-quantize-") as tmp:
            source, output = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            save_model(model, source)  # with external data, this moves the tensor bytes out of ``model``
            try:
                passed = self.run_file(source, output, context)
                quantized = load_model(output)
            except BaseException:
                model.CopyFrom(load_model(source))  # as it was
                raise
        model.CopyFrom(quantized)
        return passed

    def result(self, result: QuantizeResult) -> PassResult:
        counts = {
            "weights_quantized": result.weights_quantized,
            "elements": result.elements,
            "zeros_before": result.zeros_before,
            "zeros_after": result.zeros_after,
            "bytes_before": result.bytes_before,
            "bytes_after": result.bytes_after,
            "constants_lifted": result.constants_lifted,
        }
        skipped = ()
        if self.config.preprocess and not result.preprocessed:
            skipped = (
                ("preprocess", "onnxruntime's shape inference failed or was skipped: the model was quantized as it is"),
            )
        return PassResult(self.name, bool(result.weights), counts, result.weights, skipped, result)
