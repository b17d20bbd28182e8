"""onnxprune: post-training pruning of ONNX models, without the framework that made them.

Python API (the CLI is a thin layer over it)::

    import onnxprune
    config = onnxprune.PruneConfig(sparsity=0.5, scope="global", criterion="lamp")
    model, result = onnxprune.prune("model.onnx", config)
    onnxprune.save(model, "model.pruned.onnx", reference="model.onnx")
    print(result.sparsity_after, [layer.reason for layer in result.skipped])

    # file to file, as the CLI does (streamed output, memory near the model's size)
    run = onnxprune.prune_file("model.onnx", "model.pruned.onnx", config)

    # layer-wise calibration: SparseGPT on 128 samples (or data_free=True)
    calib = onnxprune.calibration_data("model.onnx", "calib.npz", samples=128)
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt", bias_correction=True)
    run = onnxprune.prune_file("model.onnx", "model.sgpt.onnx", config, calibration=calib)

    # prune, then int8 (symmetric weights: pruned zeros stay zero); "static" needs calibration
    run = onnxprune.prune_file("model.onnx", "model.int8.onnx", config, quantize=onnxprune.QuantizeConfig())
    print(run.quantized.weights_quantized, run.quantized.zeros_after)
    q = onnxprune.quantize_file("model.pruned.onnx", "model.int8.onnx", mode="static", calibration=calib)

    # before and after: size, MACs, latency, accuracy (labels) and fidelity
    report = onnxprune.evaluate("model.onnx", ["model.pruned.onnx"], data="test.npz", labels="labels.npy")
    print(report.candidates[0].accuracy, report.candidates[0].latency.ratio)
"""

from __future__ import annotations

import copy
import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnx import ModelProto

from onnxprune.config import PruneConfig, StructureConfig, check_amount, load_plan, parse_pattern
from onnxprune.data import Dataset, ImageOptions, open_data
from onnxprune.errors import (
    DataError,
    MissingKernelError,
    ModelLoadError,
    OnnxPruneError,
    OptionError,
    OutputError,
    UnsafeModelError,
    UnsupportedModelError,
    ValidationError,
)
from onnxprune.evaluate import EvalOptions, EvalResult, ModelReport, evaluate
from onnxprune.graph.discovery import DiscoveryOptions, Inventory, Weight, discover
from onnxprune.graph.model_io import (
    SavedModel,
    StagedOutput,
    load_model,
    load_model_with_files,
    refuse_input_as_output,
    save_model,
)
from onnxprune.graph.tensors import FLOAT_TYPES
from onnxprune.latency import LatencySettings
from onnxprune.passes.result import LayerResult, PruneResult
from onnxprune.passes.unstructured import Progress, prune_weights
from onnxprune.provenance import stamp, stamp_structure
from onnxprune.quantize import QuantizeConfig, QuantizedWeight, QuantizeResult, quantize_file
from onnxprune.stats import ParamStats, param_stats
from onnxprune.validate import ValidationReport, validate_model

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "DiscoveryOptions",
    "EvalOptions",
    "EvalResult",
    "ImageOptions",
    "Inventory",
    "LatencySettings",
    "LayerResult",
    "MissingKernelError",
    "ModelLoadError",
    "ModelReport",
    "OnnxPruneError",
    "OptionError",
    "OutputError",
    "PruneConfig",
    "PruneResult",
    "PruneRun",
    "QuantizeConfig",
    "QuantizeResult",
    "QuantizedWeight",
    "SavedModel",
    "StructureConfig",
    "UnsafeModelError",
    "UnsupportedModelError",
    "ValidationError",
    "ValidationReport",
    "Weight",
    "__version__",
    "calibration_data",
    "check_amount",
    "evaluate",
    "inspect",
    "load",
    "load_plan",
    "parse_pattern",
    "prune",
    "prune_file",
    "quantize_file",
    "save",
]

if TYPE_CHECKING:
    from onnxprune.passes.structural import StructuralResult

ModelLike = ModelProto | str | os.PathLike[str]
FLOAT_NAMES = frozenset(FLOAT_TYPES.values())


def load(path: str | os.PathLike[str]) -> ModelProto:
    """Load a model with its external data (refusing locations outside its folder)."""
    return load_model(path)


def _model(model: ModelLike, inplace: bool) -> ModelProto:
    if isinstance(model, ModelProto):
        return model if inplace else copy.deepcopy(model)
    return load_model(model)


def inspect(model: ModelLike, options: DiscoveryOptions | None = None) -> Inventory:
    """Every tensor read as a weight, bias, norm parameter or embedding, prunable or not."""
    return discover(_model(model, inplace=True), options)


def prune(
    model: ModelLike,
    config: PruneConfig,
    *,
    inplace: bool = False,
    progress: Progress | None = None,
    calibration: Dataset | None = None,
) -> tuple[ModelProto, PruneResult]:
    """Prune a model (a ModelProto, copied unless ``inplace``, or a path) per ``config``.

    Returns the pruned model, with provenance in its metadata and doc strings, and a
    result listing every discovered tensor: pruned ones with their counts, skipped ones
    with the reason.
    """
    proto = _model(model, inplace)
    if config.calibrated:
        from onnxprune.passes.calibrated import prune_calibrated

        if calibration is None:
            raise OptionError(f"--method {config.method} needs calibration data: see onnxprune.calibration_data")
        result = prune_calibrated(proto, config, calibration, progress=progress)
    else:
        result, _ = prune_weights(proto, config, progress=progress)
    stamp(proto, result, __version__)
    return proto, result


def save(
    model: ModelProto,
    path: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    external_data: bool | None = None,
    validate: bool = True,
    force: bool = False,
) -> SavedModel:
    """Validate and write ``model`` atomically (see :class:`onnxprune.graph.model_io.StagedOutput`).

    ``reference`` is the model file it came from: it is never overwritten (unless
    ``force``) and it is used to tell a bad synthetic input from a broken output.
    """

    def _validate(tmp: Path, checker_path: Path) -> None:
        validate_model(tmp, reference=reference, input_shapes=input_shapes, checker_path=checker_path)

    return save_model(
        model,
        path,
        external_data=external_data,
        validate=_validate if validate else None,
        input_path=reference,
        force=force,
    )


@dataclass(frozen=True)
class PruneRun:
    """What :func:`prune_file` did: the result, where it wrote, parameters before/after."""

    result: PruneResult
    saved: SavedModel | None  # None when nothing qualified for pruning (nothing written)
    input_files: tuple[Path, ...]  # the input model and its external-data files
    params_before: ParamStats
    params_after: ParamStats
    validation: ValidationReport | None
    structure: StructuralResult | None = None  # what the structural pass did, when it ran
    quantized: QuantizeResult | None = None  # the int8 step, when asked for (``saved`` is its output)


def prune_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: PruneConfig | None,
    *,
    structure: StructureConfig | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    external_data: bool | None = None,
    force: bool = False,
    progress: Progress | None = None,
    calibration: Dataset | None = None,
    quantize: QuantizeConfig | None = None,
) -> PruneRun:
    """Prune the model file ``source`` into ``output``: what ``onnxprune prune`` does.

    ``config`` is the unstructured (or calibrated) pass, None for none. ``structure`` is
    the structural pass; by default, after an unstructured pass, only its exact part runs
    (dead channels; the graph is left as it is when there are none): pass
    ``StructureConfig(dead_channels=False)`` to skip it.

    ``calibration`` (see :func:`calibration_data`) is needed by the calibrated methods
    (``config.method`` other than magnitude, or ``config.bias_correction``) and lets the
    structured pass rank channels by output error and refit the consumers.

    ``quantize`` quantizes the pruned model to int8 before it is moved to ``output`` (see
    :mod:`onnxprune.quantize`; static mode reads ``calibration``): ``output`` is then the
    pruned+int8 model, and ``PruneRun.quantized`` says what the quantizer did.

    Without a structural change, memory stays near the size of the parsed model: pruned
    tensors are computed while the output is streamed to a staging file (the parsed model
    is never copied), the model is freed, and only then is the staged file validated and
    renamed into place.
    """
    if not force:
        refuse_input_as_output(source, output)
    if config is None and structure is None:
        raise OptionError("nothing to do: give --sparsity, --pattern, --plan, --structured or --dead-channels")
    if structure is None:
        structure = StructureConfig(fold_first=False)
    if quantize is not None:
        quantize.check_data(calibration)
    if config is not None and config.calibrated and calibration is None:
        raise OptionError(
            f"--method {config.method}{' with --bias-correction' if config.bias_correction else ''} needs "
            "calibration data: give --calibration calib.npz (or a folder of images), or --data-free"
        )
    model, files = load_model_with_files(source)
    replacements: dict = {}
    watch = None
    if config is None:
        before = param_stats(model)
        result = PruneResult((), {})
    elif config.calibrated:
        from onnxprune.passes.calibrated import prune_calibrated

        before = param_stats(model)
        result = prune_calibrated(model, config, calibration, progress=progress)
    else:
        streaming = structure.light or not structure.active
        result, replacements = prune_weights(model, config, progress=progress, defer=streaming)
        counted = {
            layer.key: (layer.numel, layer.zeros_before) for layer in result.layers if layer.dtype in FLOAT_NAMES
        }
        before = param_stats(model, known=counted)  # reads only the tensors discovery did not count
        if streaming and structure.active:  # the light dead-channel pass: run it only if it can find something
            from onnxprune.passes.deadwatch import DeadWatch

            watch = DeadWatch()
            watch.look(model, result.layers, replacements)
            replacements = watch.wrap(replacements)
    structural = None
    if structure.active and watch is None:
        structural = _structural(model, structure, calibration, input_shapes, progress if config is None else None)
    after = ParamStats(before.parameters, before.nonzeros - result.newly_zeroed) if replacements else param_stats(model)
    changed = bool(result.pruned) or (structural is not None and structural.changed)
    if not changed:
        return PruneRun(result, None, tuple(files), before, after, None, structural)
    if result.pruned:
        stamp(model, result, __version__)
    if structural is not None and structural.changed:
        stamp_structure(model, structural, __version__)
    with StagedOutput(output, input_path=source, force=force) as staged:
        staged.write(model, external_data=external_data, replacements=replacements or None)
        del model, replacements
        gc.collect()  # discovery's scope index holds cycles into the model: free it now
        if watch is not None and watch.fired:  # something may be dead: the pass runs on the written model
            pruned = load_model(staged.model_path)
            structural = _structural(pruned, structure, calibration, input_shapes)
            if structural.changed:
                stamp_structure(pruned, structural, __version__)
                staged.write(pruned, external_data=external_data)
                after = param_stats(pruned)
            del pruned
            gc.collect()
        report = validate_model(
            staged.model_path, reference=source, input_shapes=input_shapes, checker_path=staged.checker_path
        )
        quantized = None
        if quantize is None:
            saved = staged.commit()
        else:  # the validated pruned model, still staged, is the quantizer's input
            quantized = quantize_file(
                staged.model_path,
                output,
                mode=quantize.mode,
                calibration=calibration,
                per_channel=quantize.per_channel,
                op_types=quantize.op_types,
                preprocess=quantize.preprocess,
                input_shapes=input_shapes,
                force=force,
            )
            saved = quantized.saved
    return PruneRun(result, saved, tuple(files), before, after, report, structural, quantized)


def _structural(
    model: ModelProto,
    structure: StructureConfig,
    calibration: Dataset | None,
    input_shapes: Mapping[str, tuple[int, ...]] | None,
    progress: Progress | None = None,
) -> StructuralResult:
    from onnxprune.passes.structural import remove_channels

    return remove_channels(model, structure, calibration=calibration, input_shapes=input_shapes, progress=progress)


def calibration_data(
    source: str | os.PathLike[str],
    data: object = None,
    *,
    samples: int = 128,
    data_free: bool = False,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    image_options: ImageOptions | None = None,
    seed: int = 0,
) -> Dataset:
    """Calibration samples for the model at ``source``: ``data`` is a ``.npz`` keyed by input
    name, a folder of images, a CalibrationDataReader or an iterable of feed dicts (the first
    ``samples`` are used); with ``data_free`` synthetic inputs shaped like real ones
    (procedural images, token ids within the vocabulary) are generated instead."""
    from onnxprune import runtime

    if data is not None and data_free:
        raise OptionError("give calibration data or --data-free, not both")
    if data is None and not data_free:
        raise OptionError(
            "calibrated pruning needs data: give --calibration calib.npz (or a folder of images), or --data-free"
        )
    try:
        specs = runtime.input_specs(runtime.session(Path(source)))
    except OnnxPruneError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(f"onnxruntime cannot load '{source}' ({runtime.ort_message(exc)})") from exc
    shapes = {name: tuple(shape) for name, shape in (input_shapes or {}).items()}
    if data_free:
        from onnxprune.data.natural import data_free as make_data_free

        return make_data_free(load_model(source), specs, samples=samples, seed=seed, shapes=shapes or None)
    return open_data(data, specs=specs, image_options=image_options, samples=samples, seed=seed)
