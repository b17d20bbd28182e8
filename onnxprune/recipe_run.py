"""Running a recipe (:mod:`onnxprune.recipe`): as one pass, or stage by stage.

A recipe that is one pass (:meth:`~onnxprune.recipe.Recipe.single_pass`: what the flags of
``prune`` make, or a file of one stage without ``targets`` or ``ignore``) runs through
:func:`onnxprune.prune_file`, the file-to-file pipeline that streams a model with external
data, validates the output on real samples and may quantize it; the pipeline stamps the
recipe. A recipe of several stages runs in memory: each weight stage prunes the tensors
:func:`~onnxprune.recipe.assign` gave it, each structural stage removes channels over the
whole model, in order; then the dead-channel pass the last stage asks for; then the recipe
is stamped (the stages' own options and summaries dropped: each would overwrite the one
before) and the model is saved (validated, atomically).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxprune.errors import OptionError, opt
from onnxprune.passes.deadwatch import AfterWeights
from onnxprune.recipe import Recipe, Stage, assign, stamp

if TYPE_CHECKING:
    from onnxprune.config import PruneConfig
    from onnxprune.data import Dataset
    from onnxprune.graph.model_io import SavedModel
    from onnxprune.passes.base import Progress
    from onnxprune.passes.pipeline import PruneRun
    from onnxprune.quantize import QuantizeConfig
    from onnxprune.stats import FileStatsAhead, ParamStats


@dataclass(frozen=True)
class StageResult:
    """What one stage did: its tensors and their zeros, or the structural pass's result."""

    stage: Stage
    tensors: tuple[str, ...]
    numel: int = 0
    zeros_before: int = 0
    zeros_after: int = 0
    structure: Any = None  # a StructuralResult for a structural stage
    note: str | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.stage.name,
            "tensors": list(self.tensors),
            "numel": self.numel,
            "zeros_before": self.zeros_before,
            "zeros_after": self.zeros_after,
            "sparsity": self.sparsity,
            "structure": self.structure.to_dict() if self.structure is not None else None,
            "note": self.note,
        }


@dataclass
class RecipeRun:
    """A recipe run: each stage's result, the tensors no stage claimed, the written model
    (``saved`` None when a single pass changed nothing, so wrote nothing), and for a recipe
    run as one pass, the pipeline's own :class:`~onnxprune.passes.pipeline.PruneRun` (``run``)."""

    recipe: Recipe
    stages: list[StageResult]
    unclaimed: Mapping[str, str]
    saved: SavedModel | None
    params_before: ParamStats
    params_after: ParamStats
    input_files: tuple[Path, ...] = ()
    run: PruneRun | None = None


#: Metadata a single weight pass writes that a run of stages replaces by the recipe (each stage
#: would overwrite the one before; the recipe says what every stage did).
STAGE_KEYS = ("onnxprune.options", "onnxprune.summary")


def run_recipe(
    source: str | Path,
    output: str | Path,
    recipe: Recipe,
    *,
    calibration: Dataset | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
    external_data: bool | None = None,
    validate: bool = True,
    allow_nonfinite: bool = False,
    workers: int = 1,
    ray: str | None = None,
    progress: Progress | None = None,
    quantize: QuantizeConfig | None = None,
    validation: Dataset | None = None,
    file_sizes: FileStatsAhead | None = None,
) -> RecipeRun:
    """Run ``recipe`` on the model file ``source`` and write ``output`` (module docstring).

    ``calibration`` (a Dataset) is read by calibrated stages and by structural stages that rank
    channels on data; ``workers`` and ``ray`` say where the layer solves of a calibrated stage
    run (the same bits anywhere). ``input_shapes``, ``force``, ``external_data``, ``validate``
    and ``allow_nonfinite`` mean what they mean to :func:`onnxprune.prune_file`; ``progress``,
    ``quantize``, ``validation`` and ``file_sizes`` are for a recipe that is one pass (a run of
    stages shows no progress, validates on a synthetic input, cannot be quantized in the same
    run, and leaves ``file_sizes`` alone).
    """
    passes = recipe.single_pass()
    if passes is not None:
        from onnxprune import prune_file

        config, structure = passes
        run = prune_file(
            source,
            output,
            _placed(config, workers, ray),
            structure=structure,
            calibration=calibration,
            input_shapes=input_shapes,
            external_data=external_data,
            force=force,
            progress=progress,
            quantize=quantize,
            allow_nonfinite=allow_nonfinite,
            validation=validation,
            validate=validate,
            file_sizes=file_sizes,
        )
        return _one_pass(recipe, run)
    if quantize is not None:
        raise OptionError(
            f"{opt('quantize')} follows one pass: a recipe of {len(recipe.stages)} stages is quantized by "
            "quantize_file afterwards"
        )
    return _stages(
        source,
        output,
        recipe,
        calibration=calibration,
        input_shapes=input_shapes,
        force=force,
        external_data=external_data,
        validate=validate,
        allow_nonfinite=allow_nonfinite,
        workers=workers,
        ray=ray,
    )


def _placed(config: PruneConfig | None, workers: int, ray: str | None) -> PruneConfig | None:
    """``config`` with its solves placed on ``workers`` or ``ray`` (a calibrated one only)."""
    if config is None or not config.calibrated or (workers == 1 and ray is None):
        return config
    return dataclasses.replace(config, workers=workers, ray=ray)


def _one_pass(recipe: Recipe, run: PruneRun) -> RecipeRun:
    """The :class:`RecipeRun` of a recipe that ran as one pass: the weight stage's tensors are
    those it pruned, and the weights it left alone are unclaimed, with why."""
    (stage,) = recipe.stages
    if stage.structured:
        result, unclaimed = StageResult(stage, (), structure=run.structure), {}
    else:
        pruned = run.result.pruned
        result = StageResult(
            stage,
            tuple(layer.key for layer in pruned),
            sum(layer.numel for layer in pruned),
            sum(layer.zeros_before for layer in pruned),
            sum(layer.zeros_after for layer in pruned),
        )
        unclaimed = {layer.key: layer.reason or "" for layer in run.result.skipped if layer.role == "weight"}
    return RecipeRun(recipe, [result], unclaimed, run.saved, run.params_before, run.params_after, run.input_files, run)


def _stages(
    source: str | Path,
    output: str | Path,
    recipe: Recipe,
    *,
    calibration: Dataset | None,
    input_shapes: Mapping[str, tuple[int, ...]] | None,
    force: bool,
    external_data: bool | None,
    validate: bool,
    allow_nonfinite: bool,
    workers: int,
    ray: str | None,
) -> RecipeRun:
    """A recipe of several stages, in memory (module docstring)."""
    from onnxprune import prune_model, save
    from onnxprune.graph.discovery import DiscoveryOptions, discover
    from onnxprune.graph.model_io import load_model_with_files
    from onnxprune.stats import param_stats

    model, files = load_model_with_files(source, finite=not allow_nonfinite)
    before = param_stats(model)
    weight_stages = [s for s in recipe.stages if not s.structured]
    floor = min((s.min_size for s in weight_stages), default=256)
    inventory = discover(model, DiscoveryOptions(min_size=floor))
    assignment = assign(recipe, inventory)
    numel = {w.name: w.numel for w in inventory.prunable}
    common = {"inplace": True, "input_shapes": input_shapes, "allow_nonfinite": allow_nonfinite}
    results: list[StageResult] = []
    for stage, names in assignment.stages:
        if stage.structured:
            _, run = prune_model(model, None, structure=stage.structure_config(), calibration=calibration, **common)
            results.append(StageResult(stage, (), structure=run.structure))
            continue
        if not names:
            results.append(StageResult(stage, (), note="no tensor left for this stage"))
            continue
        config = _placed(stage.weight_config(names), workers, ray)
        assert config is not None
        _, run = prune_model(model, config, calibration=calibration if config.calibrated else None, **common)
        mine = [layer for layer in run.result.layers if layer.name in set(names) and not layer.scope]
        results.append(
            StageResult(
                stage,
                tuple(names),
                sum(numel.get(layer.name, 0) for layer in mine),
                sum(layer.zeros_before for layer in mine),
                sum(layer.zeros_after for layer in mine),
            )
        )
    last = recipe.stages[-1]
    if last.dead_channels:
        prune_model(model, None, structure=AfterWeights(fold=last.fold), **common)
    kept = [entry for entry in model.metadata_props if entry.key not in STAGE_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    stamp(model, recipe)
    after = param_stats(model)
    saved = save(
        model,
        output,
        reference=source,
        input_shapes=input_shapes,
        external_data=external_data,
        validate=validate,
        force=force,
    )
    return RecipeRun(recipe, results, assignment.unclaimed, saved, before, after, tuple(files))
