"""Recipes: pruning described as stages, each with its own tensors, amount, pattern and method.

A recipe (JSON, or YAML where PyYAML is installed) is::

    {"ignore": ["head.weight"],
     "stages": [
       {"name": "encoder", "targets": ["re:^layers\\\\."], "op_types": ["MatMul"],
        "pattern": "2:4", "method": "sparsegpt"},
       {"name": "rest", "sparsity": 0.3},
       {"name": "channels", "structured": true, "sparsity": 0.2}]}

**Which tensors a weight stage prunes.** Every weight tensor ``onnxprune inspect`` lists as
prunable belongs to at most one stage: the first whose ``targets`` match it (no ``targets``:
every tensor), whose ``op_types`` (if given) include an op that reads it as a weight, and
whose ``ignore`` does not match it; a tensor the recipe's own ``ignore`` matches belongs to
none. A pattern matches a tensor when it equals its name, the name of a node that reads it
or the type of that node; with the prefix ``re:`` it is a regular expression searched in
them (``re:^layers\\.``). Each stage then prunes exactly its tensors with its own ``sparsity``
(or N:M ``pattern``), ``scope``, ``criterion`` and ``method`` (calibrated methods read the
run's calibration data), in order, on the model the stages before it left.

**A structural stage** (``"structured": true``) removes channels as ``prune --structured``
does, with ``sparsity`` (the fraction of each channel group, or of the parameters when
allocated by measured loss) or ``target_flops``; it sees the whole model.

**Provenance.** The run writes the recipe into the model (``onnxprune.recipe``, canonical
JSON: sorted keys, defaults written out), so ``onnxprune recipe MODEL`` prints it and
``--recipe MODEL`` replays it on another model; replayed on the same input with the same
data it gives the same bytes. A model pruned with flags has no recipe key: its one-stage
recipe is read back from its options (:func:`from_model`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx import ModelProto

from onnxprune.config import PruneConfig, StructureConfig, parse_pattern
from onnxprune.errors import OptionError, opt
from onnxprune.graph.discovery import Inventory, Weight

#: The metadata key a recipe run writes (see the module docstring).
RECIPE_KEY = "onnxprune.recipe"
#: The version of the recipe format.
RECIPE_VERSION = 1
REGEX_PREFIX = "re:"


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe (module docstring)."""

    name: str = ""
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    sparsity: float | None = None
    pattern: str | None = None
    scope: str = "local"
    criterion: str = "magnitude"
    method: str = "magnitude"
    min_size: int = 256
    structured: bool = False
    target_flops: float | None = None

    def __post_init__(self) -> None:
        for name in ("targets", "ignore", "op_types"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise OptionError(f"recipe stage '{self.name}': {name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
            for pattern in value:
                _compiled(pattern, f"recipe stage '{self.name}', {name}")
        if self.structured:
            if self.pattern is not None or self.method != "magnitude" or self.targets or self.op_types:
                raise OptionError(
                    f"recipe stage '{self.name}' is structured: it takes sparsity or target_flops only "
                    "(channels are removed where the groups allow, over the whole model)"
                )
            if self.sparsity is None and self.target_flops is None:
                raise OptionError(f"recipe stage '{self.name}' is structured: give sparsity or target_flops")
        else:
            if self.target_flops is not None:
                raise OptionError(f"recipe stage '{self.name}': target_flops is for a structured stage")
            self.weight_config(())  # the config's own checks, with one-line errors

    def weight_config(self, names: Sequence[str]) -> PruneConfig:
        """The weight pass of this stage, pruning exactly the tensors ``names``."""
        return PruneConfig(
            sparsity=self.sparsity,
            pattern=parse_pattern(self.pattern or "unstructured"),
            scope=self.scope,
            criterion=self.criterion,
            method=self.method,
            min_size=self.min_size,
            include=tuple(f"^{re.escape(n)}$" for n in names),
        )

    def structure_config(self) -> StructureConfig:
        """The channel pass of a structural stage."""
        return StructureConfig(amount=self.sparsity, target_flops=self.target_flops)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class Recipe:
    """Stages run in order, and tensors no stage may prune (module docstring)."""

    stages: tuple[Stage, ...]
    ignore: tuple[str, ...] = ()
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if not self.stages:
            raise OptionError("a recipe needs at least one stage")
        for pattern in self.ignore:
            _compiled(pattern, "recipe ignore")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise OptionError(f"recipe stage names must differ: {names}")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "ignore": list(self.ignore), "stages": [s.to_dict() for s in self.stages]}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, every default written out): what a run stamps."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Assignment:
    """Which tensors each weight stage prunes, and which no stage claims (with why)."""

    stages: tuple[tuple[Stage, tuple[str, ...]], ...]
    unclaimed: Mapping[str, str] = field(default_factory=dict)


def from_dict(data: Any) -> Recipe:
    """A :class:`Recipe` from its JSON form; one-line :class:`OptionError` on a bad one."""
    if not isinstance(data, Mapping) or not isinstance(data.get("stages"), list):
        raise OptionError('a recipe is an object with a "stages" list (and optionally "ignore")')
    known = {f.name for f in dataclasses.fields(Stage)}
    stages = []
    for index, raw in enumerate(data["stages"]):
        if not isinstance(raw, Mapping):
            raise OptionError(f"recipe stage {index + 1} must be an object, got {raw!r}")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise OptionError(f"recipe stage {index + 1}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
        entry = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        entry.setdefault("name", f"stage{index + 1}")
        try:
            stages.append(Stage(**entry))
        except TypeError as exc:
            raise OptionError(f"recipe stage {index + 1}: {exc}") from None
    extra = sorted(set(data) - {"stages", "ignore", "version"})
    if extra:
        raise OptionError(f"a recipe has stages, ignore and version; unknown key(s): {', '.join(extra)}")
    version = data.get("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise OptionError(f"recipe version {version!r}: this onnxprune reads version {RECIPE_VERSION}")
    return Recipe(tuple(stages), tuple(data.get("ignore") or ()))


def from_model(model: ModelProto) -> Recipe | None:
    """The recipe ``model`` was made with: its ``onnxprune.recipe``, else a one-stage recipe
    from the options a flag run wrote (``onnxprune.options``, ``onnxprune.structure.options``);
    None when onnxprune did not make it."""
    meta = {entry.key: entry.value for entry in model.metadata_props}
    if RECIPE_KEY in meta:
        return from_dict(_json(meta[RECIPE_KEY], "its onnxprune.recipe metadata"))
    stages = []
    if "onnxprune.options" in meta:
        options = _json(meta["onnxprune.options"], "its onnxprune.options metadata")
        pattern = options.get("pattern")
        stages.append(
            Stage(
                name="weights",
                targets=tuple(f"{REGEX_PREFIX}{p}" for p in options.get("include") or ()),
                ignore=tuple(f"{REGEX_PREFIX}{p}" for p in options.get("exclude") or ()),
                op_types=tuple(options.get("op_types") or ()),
                sparsity=options.get("sparsity"),
                pattern=pattern if pattern and pattern != "unstructured" else None,
                scope=options.get("scope", "local"),
                criterion=options.get("criterion", "magnitude"),
                method=options.get("method", "magnitude"),
                min_size=options.get("min_size", 256),
            )
        )
    if "onnxprune.structure.options" in meta:
        options = _json(meta["onnxprune.structure.options"], "its onnxprune.structure.options metadata")
        if options.get("amount") is not None or options.get("target_flops") is not None:
            stages.append(
                Stage(
                    name="channels",
                    structured=True,
                    sparsity=options.get("amount"),
                    target_flops=options.get("target_flops"),
                )
            )
    return Recipe(tuple(stages)) if stages else None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OptionError(f"the model's recipe cannot be read: {what} is not JSON ({exc})") from None


def load(path: str | Path) -> Recipe:
    """A recipe from a JSON or YAML file, or the one an ONNX model was made with."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"recipe file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        from onnxprune.graph.model_io import load_model

        recipe = from_model(load_model(path))
        if recipe is None:
            raise OptionError(f"{path} carries no recipe: onnxprune did not prune it")
        return recipe
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise OptionError(
                f"reading the YAML recipe {path} needs PyYAML: pip install pyyaml, or write it as JSON"
            ) from None
        try:
            return from_dict(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise OptionError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return from_dict(json.loads(text))
    except ValueError as exc:
        raise OptionError(f"recipe {path} is not valid JSON: {exc}") from None


def _compiled(pattern: str, where: str) -> re.Pattern[str] | None:
    if not pattern.startswith(REGEX_PREFIX):
        return None
    try:
        return re.compile(pattern[len(REGEX_PREFIX) :])
    except re.error as exc:
        raise OptionError(f"{where}: '{pattern}' is not a regular expression ({exc})") from None


def matches(pattern: str, names: Iterable[str]) -> bool:
    """``pattern`` (exact, or ``re:`` searched) matches one of ``names``."""
    compiled = _compiled(pattern, "recipe")
    if compiled is None:
        return pattern in names
    return any(compiled.search(n) for n in names)


def _names(weight: Weight) -> tuple[str, ...]:
    return (weight.name, weight.key, *weight.nodes, *weight.ops)


def assign(recipe: Recipe, inventory: Inventory) -> Assignment:
    """The tensors of each weight stage (module docstring); structural stages get none."""
    claimed: dict[int, list[str]] = {i: [] for i, s in enumerate(recipe.stages) if not s.structured}
    unclaimed: dict[str, str] = {}
    for weight in inventory.prunable:
        names = _names(weight)
        if any(matches(p, names) for p in recipe.ignore):
            unclaimed[weight.key] = "ignored by the recipe"
            continue
        for index, stage in enumerate(recipe.stages):
            if stage.structured:
                continue
            if stage.targets and not any(matches(p, names) for p in stage.targets):
                continue
            if stage.op_types and not set(stage.op_types) & set(weight.ops):
                continue
            if any(matches(p, names) for p in stage.ignore):
                continue
            claimed[index].append(weight.name)
            break
        else:
            unclaimed[weight.key] = "no stage targets it"
    return Assignment(
        tuple((stage, tuple(claimed.get(i, ()))) for i, stage in enumerate(recipe.stages)),
        unclaimed,
    )


def stamp(model: ModelProto, recipe: Recipe) -> None:
    """Write ``recipe`` into ``model``'s metadata (canonical JSON)."""
    for entry in model.metadata_props:
        if entry.key == RECIPE_KEY:
            entry.value = recipe.to_json()
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = RECIPE_KEY, recipe.to_json()


#: The options a recipe's stages set, as messages name them.
STAGE_OPTIONS = {
    "sparsity": opt("sparsity"),
    "pattern": opt("pattern"),
    "plan": opt("plan"),
    "structured": opt("structure"),
    "method": opt("method"),
    "scope": opt("scope"),
    "criterion": opt("criterion"),
    "allocator": opt("allocator"),
    "include": opt("include"),
    "quantize": opt("quantize"),
    "dry_run": opt("dry_run"),
}


def check_flags(given: Mapping[str, object]) -> None:
    """A recipe describes the whole run: ``given`` (a name of :data:`STAGE_OPTIONS` -> whether
    it was set) must hold none of the options a stage sets."""
    clash = [STAGE_OPTIONS[name] for name, set_ in given.items() if set_]
    if clash:
        raise OptionError(
            f"{opt('recipe')} sets the amount, pattern and method of every stage: drop {', '.join(clash)}"
        )


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
    """A recipe run: each stage's result, the tensors no stage claimed, the written model."""

    recipe: Recipe
    stages: list[StageResult]
    unclaimed: Mapping[str, str]
    saved: Any
    params_before: Any
    params_after: Any
    input_files: tuple[Path, ...] = ()


#: Metadata a single weight pass writes that a recipe run replaces by the recipe (each stage
#: would overwrite the one before; the recipe says what every stage did).
STAGE_KEYS = ("onnxprune.options", "onnxprune.summary")


def run_recipe(
    source: str | Path,
    output: str | Path,
    recipe: Recipe,
    *,
    calibration: Any = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
    dead_channels: bool = True,
) -> RecipeRun:
    """Run ``recipe`` on the model file ``source`` and write ``output`` (validated, atomically):
    the stages in order in memory, then the dead-channel pass (``dead_channels``), then the
    recipe stamped into the model (module docstring). ``calibration`` (a Dataset) is read by
    calibrated stages and by structural stages that rank channels on data."""
    from onnxprune import prune_model, save
    from onnxprune.graph.discovery import DiscoveryOptions, discover
    from onnxprune.graph.model_io import load_model_with_files
    from onnxprune.passes.pipeline import DEAD_CHANNELS_AFTER_WEIGHTS
    from onnxprune.stats import param_stats

    model, files = load_model_with_files(source, finite=True)
    before = param_stats(model)
    weight_stages = [s for s in recipe.stages if not s.structured]
    floor = min((s.min_size for s in weight_stages), default=256)
    inventory = discover(model, DiscoveryOptions(min_size=floor))
    assignment = assign(recipe, inventory)
    numel = {w.name: w.numel for w in inventory.prunable}
    results: list[StageResult] = []
    for stage, names in assignment.stages:
        if stage.structured:
            _, run = prune_model(
                model,
                None,
                inplace=True,
                structure=stage.structure_config(),
                calibration=calibration,
                input_shapes=input_shapes,
            )
            results.append(StageResult(stage, (), structure=run.structure))
            continue
        if not names:
            results.append(StageResult(stage, (), note="no tensor left for this stage"))
            continue
        config = stage.weight_config(names)
        _, run = prune_model(
            model,
            config,
            inplace=True,
            calibration=calibration if config.calibrated else None,
            input_shapes=input_shapes,
        )
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
    if dead_channels:
        prune_model(model, None, inplace=True, structure=DEAD_CHANNELS_AFTER_WEIGHTS, input_shapes=input_shapes)
    kept = [entry for entry in model.metadata_props if entry.key not in STAGE_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    stamp(model, recipe)
    after = param_stats(model)
    saved = save(model, output, reference=source, input_shapes=input_shapes, force=force)
    return RecipeRun(recipe, results, assignment.unclaimed, saved, before, after, tuple(files))
