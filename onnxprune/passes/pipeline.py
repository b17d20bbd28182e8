"""One pipeline for the Python API and the CLI: the passes a configuration asks for, in order.

:func:`build_pipeline` turns ``(PruneConfig | None, StructureConfig | None, QuantizeConfig | None)``
into at most three passes:

1. weights: :class:`~onnxprune.passes.unstructured.WeightPass` (magnitude, N:M; streams) or
   :class:`~onnxprune.passes.calibrated.CalibratedPass` (``config.calibrated``);
2. channels: :class:`~onnxprune.passes.deadwatch.DeadChannelPass` when the structural config
   removes dead channels only without folding first (:func:`~onnxprune.passes.deadwatch.watchable`),
   else :class:`~onnxprune.passes.structural.StructuralPass`; none for an inactive config;
3. :class:`~onnxprune.quantize.QuantizePass`.

Both runners execute the same steps in the same order, so the same configuration gives
the same model: :func:`run_file` (what ``prune_file`` and the CLI do) and :func:`run_model`
(what ``prune`` does, in memory):

- the weight pass; then, if the channel pass is a dead-channel pass after a weight pass
  that streams, a :class:`~onnxprune.passes.deadwatch.DeadWatch` looks at the pruned
  tensors (in the file runner, at the bytes as the writer streams them) and the channel
  pass is *deferred*: it runs after the weights are stamped (in the file runner, on the
  written model) and only if the watch fires. Otherwise the channel pass runs right away,
  in memory. This is an optimization of the pipeline, not an option: the pass finding
  nothing would leave the model as it is;
- provenance (:mod:`onnxprune.provenance`) of what changed, and the recipe of the
  configurations (:mod:`onnxprune.recipe`), so any run can be printed and replayed;
- file runner: the streamed, staged write (deferred tensor writes applied while streaming,
  the parsed model freed before validation), then validation, then the quantizer on the
  staged file or the atomic rename; model runner: the quantizer through a temporary folder.

Nothing is written (and nothing quantized) when no pass changed the model. Every pass of
the pipeline has a :class:`~onnxprune.passes.base.PassResult` in :attr:`PruneRun.passes`,
a pass that did not run with the reason.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from onnx import ModelProto

from onnxprune.config import PruneConfig, StructureConfig
from onnxprune.errors import OptionError, opt
from onnxprune.graph.model_io import StagedOutput, load_model, load_model_lazily
from onnxprune.graph.sanity import refuse_nonfinite
from onnxprune.graph.writer import external_elsewhere
from onnxprune.passes.base import Pass, PassContext, PassResult, Progress, not_run
from onnxprune.passes.deadwatch import AfterWeights, DeadChannelPass, DeadWatch, not_dead, watchable
from onnxprune.passes.result import PruneResult
from onnxprune.passes.unstructured import WeightPass
from onnxprune.recipe import Recipe
from onnxprune.recipe import stamp as stamp_recipe
from onnxprune.reconstruct.methods import METHODS
from onnxprune.stats import FileStatsAhead, ParamStats, param_stats

if TYPE_CHECKING:
    from onnxprune.data import Dataset
    from onnxprune.graph.model_io import SavedModel
    from onnxprune.passes.structural import StructuralResult
    from onnxprune.quantize import QuantizeConfig, QuantizePass, QuantizeResult
    from onnxprune.validate import ValidationReport

log = logging.getLogger(__name__)


def after_weights(structure: StructureConfig) -> AfterWeights:
    """``structure`` as the channel pass that follows a weight pass: no constant folding
    before the analysis, so the graph is left as it is unless units go, and a dead-channel
    pass can be watched (:func:`~onnxprune.passes.deadwatch.watchable`). The pipeline's
    decision, carried by the type (:class:`~onnxprune.passes.deadwatch.AfterWeights`), not a
    user option."""
    return AfterWeights(**{f.name: getattr(structure, f.name) for f in fields(StructureConfig)})


#: The channel pass ``prune_file`` runs after a weight pass when none is given: dead channels
#: only, the graph left as it is unless some go.
DEAD_CHANNELS_AFTER_WEIGHTS = after_weights(StructureConfig())

NOTHING_CHANGED = "no pass changed the model: nothing was written"


@dataclass(frozen=True)
class PruneRun:
    """What a pipeline did: the weight result, where it wrote, parameters before/after, and
    a :class:`~onnxprune.passes.base.PassResult` per pass."""

    result: PruneResult
    saved: SavedModel | None  # None when nothing qualified for pruning (nothing written), or in memory
    input_files: tuple[Path, ...]  # the input model and its external-data files
    params_before: ParamStats
    params_after: ParamStats
    validation: ValidationReport | None
    structure: StructuralResult | None = None  # what the structural pass did, when it ran
    quantized: QuantizeResult | None = None  # the int8 step, when asked for (``saved`` is its output)
    passes: tuple[PassResult, ...] = ()  # one per pass of the pipeline, in order


@dataclass(frozen=True)
class Pipeline:
    """The passes of a run, in order (see module docstring), and the recipe they are
    (:meth:`onnxprune.recipe.Recipe.from_configs`; None when no pass can change the model)."""

    weights: Pass | None = None
    channels: Pass | None = None
    quantize: QuantizePass | None = None
    recipe: Recipe | None = None

    @property
    def passes(self) -> tuple[Pass, ...]:
        return tuple(p for p in (self.weights, self.channels, self.quantize) if p is not None)

    @property
    def watched(self) -> bool:
        """The channel pass is deferred behind a :class:`DeadWatch` (see module docstring)."""
        return isinstance(self.channels, DeadChannelPass) and self.weights is not None and self.weights.contract.streams

    def check(self, context: PassContext) -> None:
        """Raise :class:`OptionError` for the first pass missing what it needs (the quantizer
        first: its data is asked for whatever the weight method)."""
        for step in (self.quantize, self.weights, self.channels):
            if step is not None:
                step.check(context)


def build_pipeline(
    config: PruneConfig | None,
    structure: StructureConfig | None = None,
    quantize: QuantizeConfig | None = None,
) -> Pipeline:
    """The passes ``config`` (weights), ``structure`` (channels) and ``quantize`` ask for."""
    if config is None and structure is None:
        raise OptionError(
            f"nothing to do: give {opt('sparsity')}, {opt('pattern')}, {opt('plan')}, {opt('structure')} "
            f"or {opt('dead_channels', True)}"
        )
    weights: Pass | None = None
    if config is not None and config.calibrated:
        from onnxprune.passes.calibrated import CalibratedPass

        weights = CalibratedPass(config)
    elif config is not None:
        weights = WeightPass(config)
    channels: Pass | None = None
    if structure is not None and structure.active:
        if watchable(structure):
            channels = DeadChannelPass(structure)
        else:
            from onnxprune.passes.structural import StructuralPass

            channels = StructuralPass(structure)
    recipe = Recipe.from_configs(config, structure) if weights is not None or channels is not None else None
    if quantize is None:
        return Pipeline(weights, channels, None, recipe)
    from onnxprune.quantize import QuantizePass

    return Pipeline(weights, channels, QuantizePass(quantize), recipe)


def _reads_every_weight(pipeline: Pipeline) -> str | None:
    """What in ``pipeline`` reads every weight's values or the activations they make (ranks
    channels, calibrates, quantizes), so cannot leave a NaN or infinite weight as it is; None
    when every pass can (magnitude weight pruning, dead channels)."""
    weights = getattr(pipeline.weights, "config", None)
    if isinstance(weights, PruneConfig) and weights.calibrated:
        method = weights.method if METHODS[weights.method].needs_data else None
        what = opt("method", method) if method else opt("bias_correction", True)
        return f"{what} calibrates on the activations they make NaN"
    channels = getattr(pipeline.channels, "config", None)
    if isinstance(channels, StructureConfig) and channels.structured:
        return f"{opt('structure')} ranks channels by their weights and activations"
    if pipeline.quantize is not None:
        return f"{opt('quantize')} quantizes every weight"
    return None


def refuse_kept_nonfinite(pipeline: Pipeline, model: ModelProto) -> None:
    """For a run with ``allow_nonfinite``: refuse ``model`` anyway if a weight holds NaN or ±inf
    and a pass of ``pipeline`` would read it all the same (:class:`UnsupportedModelError`)."""
    reader = _reads_every_weight(pipeline)
    if reader is not None:
        refuse_nonfinite(
            model,
            advice=f"{opt('allow_nonfinite', True)} leaves such tensors as they are, but {reader}: fix the model "
            "or prune by magnitude alone",
        )


@dataclass
class _State:
    """What the first, in-memory part of a run leaves for the rest."""

    passes: list[PassResult]
    result: PruneResult
    before: ParamStats
    after: ParamStats
    watch: DeadWatch | None
    structural: StructuralResult | None

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.passes)


def _stats(counts: Mapping[str, int], key: str, fallback: Callable[[], ParamStats]) -> ParamStats:
    """The pass's own counts of ``key`` (before/after), else ``fallback()`` (a count reads every tensor)."""
    if f"params_{key}" in counts and f"nonzeros_{key}" in counts:
        return ParamStats(counts[f"params_{key}"], counts[f"nonzeros_{key}"])
    return fallback()


def _first(pipeline: Pipeline, model: ModelProto, context: PassContext) -> _State:
    """The weight pass, and the channel pass unless the watch defers it."""
    passes: list[PassResult] = []
    if pipeline.weights is None:
        before = after = param_stats(model)
        result = PruneResult((), {})
    else:
        done = pipeline.weights.run(model, context)
        context.progress = None  # one progress bar: the first pass's
        passes.append(done)
        assert isinstance(done.detail, PruneResult)
        result = done.detail
        before = _stats(done.counts, "before", lambda: param_stats(model))
        after = _stats(done.counts, "after", lambda: before)
    watch = structural = None
    if pipeline.watched:
        watch = DeadWatch(model)
        watch.look(model, result.layers, context.replacements, read=context.tensors)
        context.replacements = watch.wrap(context.replacements)
    elif pipeline.channels is not None:
        done = pipeline.channels.run(model, context)
        context.progress = None
        passes.append(done)
        structural = done.detail
        after = ParamStats(done.counts["params_after"], done.counts["nonzeros_after"])
    return _State(passes, result, before, after, watch, structural)  # type: ignore[arg-type]


def _stamp_first(pipeline: Pipeline, model: ModelProto, state: _State) -> None:
    from onnxprune import __version__
    from onnxprune.provenance import stamp, stamp_structure

    if state.result.pruned:
        stamp(model, state.result, __version__)
    if state.structural is not None and state.structural.changed:
        stamp_structure(model, state.structural, __version__)
    if pipeline.recipe is not None:
        stamp_recipe(model, pipeline.recipe)


def _deferred(pipeline: Pipeline, model: ModelProto, context: PassContext, state: _State) -> bool:
    """The watched channel pass, if its watch fired; True if it changed ``model``."""
    if state.watch is None:
        return False
    if not state.watch.fired:
        state.passes.append(not_dead())
        return False
    from onnxprune import __version__
    from onnxprune.provenance import stamp_structure

    assert pipeline.channels is not None
    done = pipeline.channels.run(model, context)
    state.passes.append(done)
    state.structural = done.detail  # type: ignore[assignment]
    if not done.changed:
        return False
    stamp_structure(model, done.detail, __version__)  # type: ignore[arg-type]
    state.after = ParamStats(done.counts["params_after"], done.counts["nonzeros_after"])
    return True


def _unchanged(pipeline: Pipeline, state: _State, files: tuple[Path, ...]) -> PruneRun:
    if state.watch is not None and pipeline.channels is not None:
        state.passes.append(not_run(pipeline.channels.name, NOTHING_CHANGED) if state.watch.fired else not_dead())
    if pipeline.quantize is not None:
        state.passes.append(not_run(pipeline.quantize.name, NOTHING_CHANGED))
    return PruneRun(
        state.result, None, files, state.before, state.after, None, state.structural, None, tuple(state.passes)
    )


#: Samples of real data the output is validated on (one run).
VALIDATION_SAMPLES = 8


def shapes_of_data(
    calibration: Dataset | None, input_shapes: Mapping[str, tuple[int, ...]] | None
) -> Mapping[str, tuple[int, ...]] | None:
    """The input shapes the passes use: the user's, else those of a run of one sample of the
    calibration data (so real data needs no ``--input-shape``), else None (guessed)."""
    if input_shapes or calibration is None:
        return input_shapes
    one = next(calibration.batches(1), None)
    return None if one is None else {name: tuple(int(d) for d in np.shape(a)) for name, a in one.items()}


def first_run(calibration: Dataset | None) -> dict[str, np.ndarray] | None:
    """One run of real samples to validate the output on (None without calibration data)."""
    if calibration is None:
        return None
    batch = next(calibration.batches(VALIDATION_SAMPLES), None)
    return None if batch is None else {name: np.array(a) for name, a in batch.items()}


def _weights_alone(pipeline: Pipeline, context: PassContext) -> bool:
    """True when the magnitude/N:M weight pass runs alone (a dead-channel watch at most; no
    channel reorder, ``permute``), with no calibration data and no quantizer."""
    weights = pipeline.weights.config if isinstance(pipeline.weights, WeightPass) else None
    return (
        weights is not None
        and not (weights.pattern is not None and weights.permute)  # the reorder edits the model whole
        and context.stream
        and context.calibration is None
        and pipeline.quantize is None
    )


def _load(
    pipeline: Pipeline, source: str | os.PathLike[str], context: PassContext, *, finite: bool
) -> tuple[ModelProto, list[Path]]:
    """The model at ``source`` and its files. Streamed (``context.tensors`` set: the skeleton,
    its external tensors read one at a time by the weight pass and the writer, see
    :mod:`onnxprune.graph.lazy`) when the model has external data, or a model file of
    :data:`~onnxprune.graph.model_io.INLINE_STREAM_BYTES` or more holds its weights (read as a
    skeleton whose large initializers stay in that file, :mod:`onnxprune.graph.wire`), and the
    pipeline allows it:
    the magnitude/N:M weight pass alone (a dead-channel watch at most; no channel reorder,
    ``permute``), no calibration data, no quantizer. Otherwise loaded whole. Non-finite weights
    are refused with ``finite``: those in the model file by the loader as it checks them, the
    external ones by the loader, or, streamed, by :func:`run_file` from discovery's counts (each
    tensor read once)."""
    alone = _weights_alone(pipeline, context)
    lazy = load_model_lazily(source, finite=finite, inline=alone)
    streamed = lazy.external and alone and external_elsewhere(lazy.model) is None
    if not streamed:
        return lazy.materialize(finite=finite), list(lazy.files)
    where = "its own file" if lazy.inline and len(lazy.files) == 1 else "external data"
    log.info("streaming %s: %d bytes of %s read tensor by tensor", lazy.path.name, lazy.external_bytes(), where)
    context.tensors = lazy.tensors
    return lazy.model, list(lazy.files)


def run_file(
    pipeline: Pipeline,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    calibration: Dataset | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    external_data: bool | None = None,
    force: bool = False,
    progress: Progress | None = None,
    allow_nonfinite: bool = False,
    validation: Dataset | None = None,
    validate: bool = True,
    file_sizes: FileStatsAhead | None = None,
) -> PruneRun:
    """Run ``pipeline`` on the model file ``source`` into ``output`` (see module docstring).

    ``file_sizes`` is given the input's files once they are read and the output's once they are
    written (its figures are then computed while the run goes on, the output's while it is
    validated); the output's only when it is the written model (no quantizer).

    The output is validated on a run of real samples: of ``validation`` (the evaluation
    data), else of ``calibration``; on a synthetic input without either. ``validate=False``
    skips that (the checker, the onnxruntime session and run, the numeric check): unsafe,
    for pipelines that validate the output themselves; the run's ``validation`` is None.

    The model is refused if a weight holds NaN or ±inf, unless ``allow_nonfinite`` (such
    tensors are then left as they are, see :mod:`onnxprune.graph.sanity`) and no pass reads
    them anyway (:func:`refuse_kept_nonfinite`).

    Without an in-memory pass after the weight pass, memory stays near the size of the
    parsed model: pruned tensors are computed while the output is streamed to a staging
    file (the parsed model is never copied), the model is freed, and only then is the
    staged file validated and renamed into place (or quantized into place).
    """
    input_shapes = shapes_of_data(calibration, input_shapes)
    context = PassContext(calibration, input_shapes, progress, stream=pipeline.channels is None or pipeline.watched)
    pipeline.check(context)
    model, files = _load(pipeline, source, context, finite=not allow_nonfinite)
    if file_sizes is not None:
        file_sizes.before(files)
    if allow_nonfinite:
        refuse_kept_nonfinite(pipeline, model)
    state = _first(pipeline, model, context)
    if context.tensors is not None and not allow_nonfinite:
        # streamed: discovery counted NaN and ±inf in the external tensors as it read them, so
        # only those it found are read again (to name their counts)
        refuse_nonfinite(model, read=context.tensors, external_only=True, counted=context.nonfinite)
    if not state.changed:
        return _unchanged(pipeline, state, tuple(files))
    _stamp_first(pipeline, model, state)
    with StagedOutput(output, input_path=source, force=force) as staged:
        replacements = context.replacements
        context.replacements = {}
        staged.write(model, external_data=external_data, replacements=replacements or None, source=context.tensors)
        del model, replacements
        gc.collect()  # discovery's scope index holds cycles into the model: free it now
        if state.watch is not None and state.watch.fired:  # something may be dead: the pass reads the written model
            written = load_model(staged.model_path)
            if _deferred(pipeline, written, context, state):
                staged.write(written, external_data=external_data)
            del written
            gc.collect()
        elif state.watch is not None:
            state.passes.append(not_dead())
        if file_sizes is not None and pipeline.quantize is None:
            file_sizes.after(staged.files)  # the staged files are the output's bytes
        report = None
        if validate:
            from onnxprune.validate import validate_model

            report = validate_model(
                staged.model_path,
                reference=source,
                input_shapes=input_shapes,
                checker_path=staged.checker_path,
                written=staged.records,
                verified=staged.verified,
                feeds=first_run(validation if validation is not None and not validation.synthetic else calibration),
            )
        else:
            log.warning("%s: written without validation (no checker, no onnxruntime run)", Path(output).name)
        quantized = None
        if pipeline.quantize is None:
            if file_sizes is not None:
                file_sizes.result()  # computed before the staged files move (an error is raised here)
            saved = staged.commit()
        else:  # the validated pruned model, still staged, is the quantizer's input
            done = pipeline.quantize.run_file(staged.model_path, output, context, force=force)
            state.passes.append(done)
            quantized = done.detail
            saved = quantized.saved  # type: ignore[union-attr]
    return PruneRun(
        state.result,
        saved,
        tuple(files),
        state.before,
        state.after,
        report,
        state.structural,
        quantized,  # type: ignore[arg-type]
        tuple(state.passes),
    )


def run_model(
    pipeline: Pipeline,
    model: ModelProto,
    *,
    calibration: Dataset | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    progress: Progress | None = None,
    files: tuple[Path, ...] = (),
    stamp_always: bool = False,
) -> PruneRun:
    """Run ``pipeline`` on ``model`` in place, the steps of :func:`run_file` without the file.

    ``files`` are the files ``model`` was read from (for :attr:`PruneRun.input_files`).
    ``stamp_always`` writes the weight pass's provenance even when it pruned nothing (what
    :func:`onnxprune.prune` has always done). Nothing is validated (see :func:`onnxprune.save`),
    except the int8 model by the quantizer.
    """
    context = PassContext(calibration, shapes_of_data(calibration, input_shapes), progress, stream=False)
    pipeline.check(context)
    state = _first(pipeline, model, context)
    if stamp_always and pipeline.weights is not None and not state.result.pruned:
        from onnxprune import __version__
        from onnxprune.provenance import stamp

        stamp(model, state.result, __version__)
        if pipeline.recipe is not None:
            stamp_recipe(model, pipeline.recipe)
    if not state.changed:
        return _unchanged(pipeline, state, files)
    _stamp_first(pipeline, model, state)
    if state.watch is not None:
        _deferred(pipeline, model, context, state)
    quantized = None
    if pipeline.quantize is not None:
        done = pipeline.quantize.run(model, context)
        state.passes.append(done)
        quantized = done.detail
    return PruneRun(
        state.result,
        None,
        files,
        state.before,
        state.after,
        None,
        state.structural,
        quantized,  # type: ignore[arg-type]
        tuple(state.passes),
    )
