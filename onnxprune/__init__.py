"""onnxprune: post-training pruning of ONNX models, without the framework that made them.

Python API (the CLI is a thin layer over it)::

    import onnxprune
    config = onnxprune.PruneConfig(sparsity=0.5, scope="global", criterion="lamp")
    model, result = onnxprune.prune("model.onnx", config)
    onnxprune.save(model, "model.pruned.onnx", reference="model.onnx")
    print(result.sparsity_after, [layer.reason for layer in result.skipped])

    # a config from its parts, one per concern (each validates its own fields)
    config = onnxprune.PruneConfig.of(selection=onnxprune.Selection(exclude=("head",)),
                                      allocation=onnxprune.Allocation(sparsity=0.5, scope="global"),
                                      ranking=onnxprune.Ranking(criterion="lamp"))
    print(config.allocation, config.selection)  # and back: .selection .allocation .ranking .reconstruction

    # file to file, as the CLI does (streamed output, memory near the model's size)
    run = onnxprune.prune_file("model.onnx", "model.pruned.onnx", config)

    # layer-wise calibration: SparseGPT on 128 samples (or data_free=True)
    calib = onnxprune.calibration_data("model.onnx", "calib.npz", samples=128)
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt", bias_correction=True)
    run = onnxprune.prune_file("model.onnx", "model.sgpt.onnx", config, calibration=calib)

    # prune, then int8 (symmetric weights: pruned zeros stay zero); "static" needs calibration
    run = onnxprune.prune_file("model.onnx", "model.int8.onnx", config, quantize=onnxprune.QuantizeConfig())
    print(run.quantized.weights_quantized, run.quantized.zeros_after)
    print([(p.name, p.changed, dict(p.counts), p.skipped) for p in run.passes])  # one PassResult per pass

    # the same pipeline in memory: a ModelProto in, a ModelProto out (int8 through a temporary folder)
    model, run = onnxprune.prune_model(proto, config, structure=onnxprune.StructureConfig(amount=0.3),
                                       quantize=onnxprune.QuantizeConfig())
    q = onnxprune.quantize_file("model.pruned.onnx", "model.int8.onnx", mode="static", calibration=calib)

    # before and after: size, MACs, latency, accuracy (labels) and fidelity
    report = onnxprune.evaluate("model.onnx", ["model.pruned.onnx"], data="test.npz", labels="labels.npy")
    print(report.candidates[0].accuracy, report.candidates[0].latency.ratio)
"""

from __future__ import annotations

# first, before onnx loads numpy: OpenBLAS reads its idle threads' spin time as it loads
from onnxprune import blas_spin  # noqa: F401

# isort: split
import copy
import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx import ModelProto

from onnxprune.config import (
    Allocation,
    PruneConfig,
    Ranking,
    Reconstruction,
    Selection,
    StructureConfig,
    check_amount,
    load_plan,
    parse_pattern,
)
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
    opt,
)
from onnxprune.graph.discovery import DiscoveryOptions, Inventory, Weight, discover
from onnxprune.graph.model_io import (
    SavedModel,
    load_model,
    load_model_with_files,
    refuse_input_as_output,
    save_model,
)
from onnxprune.graph.sanity import check_model
from onnxprune.latency import LatencySettings
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, Progress
from onnxprune.passes.pipeline import (
    DEAD_CHANNELS_AFTER_WEIGHTS,
    PruneRun,
    build_pipeline,
    refuse_kept_nonfinite,
    run_file,
    run_model,
)
from onnxprune.passes.result import LayerResult, PruneResult
from onnxprune.stats import FileStatsAhead

if TYPE_CHECKING:
    from onnxprune.data import Dataset, ImageOptions
    from onnxprune.evaluation import EvalOptions, EvalResult, ModelReport, evaluate
    from onnxprune.quantize import QuantizeConfig, QuantizedWeight, QuantizeResult, quantize_file
    from onnxprune.validate import ValidationReport

#: Names this package exports from modules it imports on first use (PEP 562): the data
#: readers, the evaluator, int8 quantization and validation bring onnxruntime and most of the
#: package with them, which a magnitude prune from the CLI never needs.
_DEFERRED = {
    "Dataset": "onnxprune.data",
    "ImageOptions": "onnxprune.data",
    "open_data": "onnxprune.data",
    "EvalOptions": "onnxprune.evaluation",
    "EvalResult": "onnxprune.evaluation",
    "ModelReport": "onnxprune.evaluation",
    "evaluate": "onnxprune.evaluation",
    "QuantizeConfig": "onnxprune.quantize",
    "QuantizedWeight": "onnxprune.quantize",
    "QuantizeResult": "onnxprune.quantize",
    "quantize_file": "onnxprune.quantize",
    "ValidationReport": "onnxprune.validate",
    "validate_model": "onnxprune.validate",
}


def __getattr__(name: str) -> Any:
    """A deferred export (:data:`_DEFERRED`), imported when first asked for and kept."""
    module = _DEFERRED.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_DEFERRED})


__version__ = "0.1.0"

__all__ = [
    "Allocation",
    "Contract",
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
    "Pass",
    "PassContext",
    "PassResult",
    "PruneConfig",
    "PruneResult",
    "PruneRun",
    "QuantizeConfig",
    "QuantizeResult",
    "QuantizedWeight",
    "Ranking",
    "Reconstruction",
    "SavedModel",
    "Selection",
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
    "prune_model",
    "quantize_file",
    "save",
]

ModelLike = ModelProto | str | os.PathLike[str]


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
    config: PruneConfig | None = None,
    *,
    inplace: bool = False,
    progress: Progress | None = None,
    calibration: Dataset | None = None,
    structure: StructureConfig | None = None,
    quantize: QuantizeConfig | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    allow_nonfinite: bool = False,
) -> tuple[ModelProto, PruneResult]:
    """Prune a model (a ModelProto, copied unless ``inplace``, or a path) per ``config``.

    Returns the pruned model, with provenance in its metadata and doc strings, and a
    result listing every discovered tensor: pruned ones with their counts, skipped ones
    with the reason. ``structure`` and ``quantize`` add the structural pass and int8, as
    in :func:`prune_file` (the same pipeline, in memory); :func:`prune_model` returns what
    every pass did.
    """
    proto, run = prune_model(
        model,
        config,
        inplace=inplace,
        progress=progress,
        calibration=calibration,
        structure=structure,
        quantize=quantize,
        input_shapes=input_shapes,
        allow_nonfinite=allow_nonfinite,
    )
    return proto, run.result


def prune_model(
    model: ModelLike,
    config: PruneConfig | None = None,
    *,
    inplace: bool = False,
    progress: Progress | None = None,
    calibration: Dataset | None = None,
    structure: StructureConfig | None = None,
    quantize: QuantizeConfig | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    allow_nonfinite: bool = False,
) -> tuple[ModelProto, PruneRun]:
    """:func:`prune`, returning the whole :class:`PruneRun` (``saved`` None, one
    :class:`PassResult` per pass in ``passes``).

    The pipeline is the one :func:`prune_file` builds from the same configs (see
    :mod:`onnxprune.passes.pipeline`), run in memory; ``structure=None`` means no channel
    pass here (``prune_file`` then watches for dead channels after a weight pass: pass
    ``structure=onnxprune.passes.pipeline.DEAD_CHANNELS_AFTER_WEIGHTS`` for the same).
    ``quantize`` goes through a temporary folder (onnxruntime's quantizer reads files).
    The model is checked as a loaded one is (:func:`onnxprune.graph.sanity.check_model`): a
    weight holding NaN or ±inf is refused unless ``allow_nonfinite`` (then left as it is).
    """
    pipeline = build_pipeline(config, structure, quantize)
    files: tuple[Path, ...] = ()
    if isinstance(model, ModelProto):
        check_model(model, finite=not allow_nonfinite)
        proto = model if inplace else copy.deepcopy(model)
    else:
        proto, found = load_model_with_files(model, finite=not allow_nonfinite)
        files = tuple(found)
    if allow_nonfinite:
        refuse_kept_nonfinite(pipeline, proto)
    run = run_model(
        pipeline,
        proto,
        calibration=calibration,
        input_shapes=input_shapes,
        progress=progress,
        files=files,
        stamp_always=True,
    )
    return proto, run


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
        from onnxprune.validate import validate_model

        validate_model(tmp, reference=reference, input_shapes=input_shapes, checker_path=checker_path)

    return save_model(
        model,
        path,
        external_data=external_data,
        validate=_validate if validate else None,
        input_path=reference,
        force=force,
    )


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
    allow_nonfinite: bool = False,
    validation: Dataset | None = None,
    validate: bool = True,
    file_sizes: FileStatsAhead | None = None,
) -> PruneRun:
    """Prune the model file ``source`` into ``output``: what ``onnxprune prune`` does.

    The output is validated on a run of real samples where there are any: ``validation``
    (e.g. the evaluation data), else ``calibration``; else on a synthetic input.
    ``validate=False`` skips the validation (unsafe: a broken output is written as it is).
    ``file_sizes`` (:class:`onnxprune.stats.FileStatsAhead`) computes the file sizes of the
    input and the output while the run goes on (the output's while it is validated).

    ``config`` is the unstructured (or calibrated) pass, None for none. ``structure`` is
    the structural pass; by default, after an unstructured pass, only its exact part runs
    (dead channels; the graph is left as it is when there are none): pass
    ``StructureConfig(dead_channels=False)`` to skip it.

    ``calibration`` (see :func:`calibration_data`) is needed by the calibrated methods
    (``config.method`` other than magnitude, or ``config.bias_correction``) and lets the
    structured pass rank channels by output error and refit the consumers.

    The output carries the recipe of ``config`` and ``structure`` (``onnxprune.recipe``, see
    :mod:`onnxprune.recipe`): ``onnxprune recipe`` prints it, ``prune --recipe`` replays it.

    ``quantize`` quantizes the pruned model to int8 before it is moved to ``output`` (see
    :mod:`onnxprune.quantize`; static mode reads ``calibration``): ``output`` is then the
    pruned+int8 model, and ``PruneRun.quantized`` says what the quantizer did.

    Without a structural change, memory stays near the size of the parsed model: pruned
    tensors are computed while the output is streamed to a staging file (the parsed model
    is never copied), the model is freed, and only then is the staged file validated and
    renamed into place.

    A model whose weights hold NaN or ±inf is refused (:class:`UnsupportedModelError`) unless
    ``allow_nonfinite``: those tensors are then left as they are, skipped with the reason.
    """
    if not force:
        refuse_input_as_output(source, output)
    if structure is None and config is not None:
        structure = DEAD_CHANNELS_AFTER_WEIGHTS
    pipeline = build_pipeline(config, structure, quantize)
    return run_file(
        pipeline,
        source,
        output,
        calibration=calibration,
        input_shapes=input_shapes,
        external_data=external_data,
        force=force,
        progress=progress,
        allow_nonfinite=allow_nonfinite,
        validation=validation,
        validate=validate,
        file_sizes=file_sizes,
    )


def calibration_data(
    source: str | os.PathLike[str],
    data: object = None,
    *,
    samples: int = 128,
    data_free: bool = False,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    image_options: ImageOptions | None = None,
    seed: int = 0,
    allow_nonfinite: bool = False,
    batch_axes: Mapping[str, int | None] | None = None,
) -> Dataset:
    """Calibration samples for the model at ``source``: ``data`` is a ``.npz`` keyed by input
    name, a folder of images, a CalibrationDataReader or an iterable of feed dicts (the first
    ``samples`` are used); with ``data_free`` synthetic inputs shaped like real ones
    (procedural images, token ids within the vocabulary) are generated instead; they read the
    model, which is then refused for NaN or ±inf weights unless ``allow_nonfinite``."""
    from onnxprune import runtime

    if data is not None and data_free:
        raise OptionError(f"give calibration data or {opt('data_free', True)}, not both")
    if data is None and not data_free:
        raise OptionError(
            f"calibrated pruning needs data: give {opt('calibration')} calib.npz (or a folder of images), "
            f"or {opt('data_free', True)}"
        )
    try:
        specs = runtime.input_specs(runtime.session(Path(source), prepack=False))  # never run
    except OnnxPruneError:
        raise
    except Exception as exc:
        raise runtime.input_load_error(source, exc) from exc
    shapes = {name: tuple(shape) for name, shape in (input_shapes or {}).items()}
    if data_free:
        from onnxprune.data.natural import data_free as make_data_free

        model = load_model(source, finite=not allow_nonfinite)
        return make_data_free(model, specs, samples=samples, seed=seed, shapes=shapes or None, batch_axes=batch_axes)
    from onnxprune.data import open_data

    return open_data(data, specs=specs, image_options=image_options, samples=samples, seed=seed, batch_axes=batch_axes)
