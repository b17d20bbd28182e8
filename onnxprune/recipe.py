"""Recipes: pruning described as stages, each with its own tensors, amount, pattern and method.

A recipe (JSON, or YAML where PyYAML is installed) is::

    {"ignore": ["head.weight"],
     "stages": [
       {"name": "encoder", "targets": ["re:^layers\\\\."], "op_types": ["MatMul"],
        "pattern": "2:4", "method": "sparsegpt"},
       {"name": "rest", "sparsity": 0.3},
       {"name": "channels", "structured": true, "sparsity": 0.2}]}

**A stage's options are the typed configs' fields, by the same names.** A weight stage takes
every field of :class:`~onnxprune.config.PruneConfig` but ``workers`` and ``ray`` (where the
solves run, not what they compute): ``sparsity``, ``pattern`` ("2:4", or none), ``scope``,
``allocator``, ``plan``, ``max_layer_sparsity``, ``nm_fallback``, ``permute``, ``criterion``, ``seed``,
``min_size``, ``include``, ``exclude``, ``op_types``, ``method``, ``bias_correction``,
``sequential``, ``percdamp``, ``blocksize``, ``exact_refit``, ``capture_rows``, ``block_epochs``; and
``dead_channels`` and ``fold``: whether the exact dead-channel pass follows it, and whether that
pass folds the graph when channels go. A structural stage (``"structured": true``) takes every
field of :class:`~onnxprune.config.StructureConfig`, ``amount`` written ``sparsity`` (the fraction
of each channel group, or of the parameters when allocated by measured loss): ``sparsity`` or
``target_flops`` or ``plan`` (none of them: dead channels only), ``scope``, ``allocator``,
``importance``, ``refit``, ``round_to``, ``max_fraction``, ``fold``, ``damp``, ``dead_channels``;
it sees the whole model. An option of the other kind of stage is refused. The canonical JSON
writes every option of the stage's kind out, defaults included.

**Which tensors a weight stage prunes.** Every weight tensor ``onnxprune inspect`` lists as
prunable belongs to at most one stage: the first whose ``targets`` match it (no ``targets``:
every tensor), whose ``op_types`` (if given) include an op that reads it as a weight, whose
``include`` regexes (if given) and no ``exclude`` regex are found in its name or the name of a
node reading it (what ``prune --include/--exclude`` mean), and whose ``ignore`` does not match
it; a tensor the recipe's own ``ignore`` matches belongs to none. A pattern of ``targets`` and
``ignore`` matches a tensor when it equals its name, the name of a node that reads it or the
type of that node; with the prefix ``re:`` it is a regular expression searched in them
(``re:^layers\\.``). Each stage then prunes exactly its tensors with its own options
(calibrated methods read the run's calibration data), in order, on the model the stages
before it left; after the last, the dead-channel pass runs as the last stage says.

**The flags are a one-stage recipe.** ``prune``'s flags make a :class:`PruneConfig` (weights)
or a :class:`StructureConfig` (channels), and :meth:`Recipe.from_configs` writes them as one
stage, losslessly; :meth:`Recipe.single_pass` gives the configs back. A recipe that is one pass
(one stage, no ``targets`` and no ``ignore``) runs as the flags do, through
:func:`onnxprune.prune_file` (streamed where the model allows), whether it came from flags or from
a file; a recipe of several stages runs stage by stage in memory
(:func:`onnxprune.recipe_run.run_recipe`). Quantization is not part of a recipe.

**Provenance.** Every run writes its recipe into the model (``onnxprune.recipe``, canonical
JSON: sorted keys, defaults written out): a pass of :func:`onnxprune.prune_file` or
:func:`onnxprune.prune_model` the recipe of its configs (a run of both a weight and a
structural config, which only the Python API makes, as two stages), a run of stages the
recipe it ran. So ``onnxprune recipe MODEL`` prints it and ``--recipe MODEL`` replays it on
another model; replayed on the same input with the same data it gives the same bytes. A
model pruned before recipes were stamped gets its recipe from its options
(``onnxprune.options``, ``onnxprune.structure.options``; :func:`from_model`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnx import ModelProto

from onnxprune.config import PLACEMENT, PruneConfig, StructureConfig, parse_pattern
from onnxprune.errors import OptionError, opt
from onnxprune.graph.discovery import Inventory, Weight
from onnxprune.passes.deadwatch import AfterWeights
from onnxprune.row_sampling import ROWS_PER_COL

#: The metadata key every run writes (see the module docstring).
RECIPE_KEY = "onnxprune.recipe"
#: The version of the recipe format.
RECIPE_VERSION = 1
REGEX_PREFIX = "re:"

#: The stage options a weight stage passes to its :class:`PruneConfig`, by the same names.
WEIGHT_FIELDS = tuple(f.name for f in fields(PruneConfig) if f.name not in PLACEMENT)
#: :class:`StructureConfig` field -> the stage option that holds it.
STRUCTURE_FIELDS = {f.name: "sparsity" if f.name == "amount" else f.name for f in fields(StructureConfig)}
#: What a weight stage says of the dead-channel pass after it.
AFTER_WEIGHTS_FIELDS = ("dead_channels", "fold")


def _as_strings(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise OptionError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe: a weight stage, or a structural one (module docstring)."""

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
    # the rest of PruneConfig
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    nm_fallback: str = "unstructured"
    permute: bool = False
    plan: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    max_layer_sparsity: float = 0.98
    seed: int = 0
    allocator: str | None = None
    bias_correction: bool = False
    sequential: bool = True
    percdamp: float | None = None
    blocksize: int = 128
    exact_refit: bool = True
    capture_rows: int | None = ROWS_PER_COL
    block_epochs: int = 0
    # the rest of StructureConfig
    dead_channels: bool = True
    importance: str = "auto"
    refit: bool = True
    round_to: int = 8
    max_fraction: float = 0.9
    fold: bool = True
    damp: float = 0.01

    def __post_init__(self) -> None:
        where = f"recipe stage '{self.name}'"
        for name in ("targets", "ignore", "op_types", "include", "exclude"):
            value = _as_strings(getattr(self, name), f"{where}: {name}")
            object.__setattr__(self, name, value)
            if name in ("targets", "ignore"):
                for pattern in value:
                    _compiled(pattern, f"{where}, {name}")
        if not isinstance(self.plan, Mapping):
            raise OptionError(f"{where}: plan must be an object {{name: sparsity}}, got {self.plan!r}")
        object.__setattr__(self, "plan", MappingProxyType({str(k): v for k, v in self.plan.items()}))
        if self.pattern is not None and not isinstance(self.pattern, str):
            raise OptionError(f'{where}: pattern must be a string such as "2:4", got {self.pattern!r}')
        parsed = parse_pattern(self.pattern or "unstructured")
        object.__setattr__(self, "pattern", None if parsed is None else f"{parsed[0]}:{parsed[1]}")
        if self.structured:
            others = _set_options(self, (*WEIGHT_FIELDS, "targets", "ignore"), STRUCTURE_FIELDS.values())
            if others:
                raise OptionError(
                    f"{where} is structured: {', '.join(others)} {'is' if len(others) == 1 else 'are'} for a "
                    "weight stage (channels are removed where the groups allow, over the whole model)"
                )
            config = self.structure_config()
            if not (config.structured or config.dead_channels):
                raise OptionError(f"{where} is structured: give sparsity, target_flops or a plan")
        else:
            others = _set_options(self, STRUCTURE_FIELDS.values(), (*WEIGHT_FIELDS, *AFTER_WEIGHTS_FIELDS))
            if others:
                raise OptionError(
                    f"{where}: {', '.join(others)} {'is' if len(others) == 1 else 'are'} for a structured stage"
                )
            self.prune_config()  # the config's own checks, with one-line errors

    def prune_config(self) -> PruneConfig:
        """The weight pass of this stage as one pass: its own selection (``include``,
        ``exclude``, ``op_types``, ``min_size``), not its ``targets`` and ``ignore``."""
        values = {name: getattr(self, name) for name in WEIGHT_FIELDS}
        return PruneConfig(**{**values, "pattern": parse_pattern(self.pattern or "unstructured")})

    def weight_config(self, names: Sequence[str]) -> PruneConfig:
        """The weight pass of this stage in a run of stages, pruning exactly the tensors ``names``
        (:func:`assign` chose them)."""
        return dataclasses.replace(
            self.prune_config(), include=tuple(f"^{re.escape(n)}$" for n in names), exclude=(), op_types=()
        )

    def after_weights(self) -> AfterWeights:
        """The channel pass after this weight stage: dead channels (unless ``dead_channels`` is
        false), the graph left as it is unless some go."""
        return AfterWeights(dead_channels=self.dead_channels, fold=self.fold)

    def structure_config(self) -> StructureConfig:
        """The channel pass of a structural stage."""
        return StructureConfig(**{name: getattr(self, option) for name, option in STRUCTURE_FIELDS.items()})

    @property
    def calibrated(self) -> bool:
        """A weight stage whose method (or bias correction) needs calibration data."""
        return not self.structured and self.prune_config().calibrated

    @property
    def reads_data(self) -> bool:
        """The stage uses calibration data: it calibrates, or removes channels (ranked and
        refitted on the data when the run has some)."""
        return self.calibrated or (self.structured and self.structure_config().structured)

    def to_dict(self) -> dict[str, Any]:
        """Every option of this kind of stage (defaults included); the other kind's are left out."""
        kind = (
            STRUCTURE_FIELDS.values()
            if self.structured
            else (*WEIGHT_FIELDS, "targets", "ignore", *AFTER_WEIGHTS_FIELDS)
        )
        data = {name: getattr(self, name) for name in sorted({"name", "structured", *kind})}
        return {
            k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v for k, v in data.items()
        }


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _set_options(stage: Stage, names: Iterable[str], except_: Iterable[str]) -> list[str]:
    """The options among ``names`` (less ``except_``) that ``stage`` sets to other than their default."""
    defaults = {f.name: _default(f) for f in fields(Stage)}
    skip = set(except_)
    return [n for n in dict.fromkeys(names) if n not in skip and getattr(stage, n) != defaults[n]]


@dataclass(frozen=True)
class Recipe:
    """Stages run in order, and tensors no stage may prune (module docstring)."""

    stages: tuple[Stage, ...]
    ignore: tuple[str, ...] = ()
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if not self.stages:
            raise OptionError("a recipe needs at least one stage")
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "ignore", _as_strings(self.ignore, "recipe ignore"))
        for pattern in self.ignore:
            _compiled(pattern, "recipe ignore")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise OptionError(f"recipe stage names must differ: {names}")

    @classmethod
    def from_configs(cls, config: PruneConfig | None, structure: StructureConfig | None) -> Recipe:
        """The recipe of the pipeline :func:`onnxprune.passes.pipeline.build_pipeline` builds
        from ``config`` (the weight pass) and ``structure`` (the channel pass; None: none).

        A weight pass is one stage named "weights", every field of ``config`` but where its
        solves run; its ``dead_channels`` and ``fold`` are those of ``structure`` when that is
        the pass after weights (an :class:`~onnxprune.passes.deadwatch.AfterWeights`, whose
        other fields choose nothing), ``dead_channels`` false when there is no channel pass. A
        channel pass alone (an ``AfterWeights`` too) is one structural stage named "channels".
        Both (a structural config
        after a weight pass, which only the Python API makes) are two stages. What the flags
        make is always one stage, and :meth:`single_pass` gives the configs back."""
        stages = []
        channels = structure is not None and structure.active
        channels = channels and (config is None or not isinstance(structure, AfterWeights))
        if config is not None:
            after = structure if isinstance(structure, AfterWeights) else AfterWeights(dead_channels=False)
            values = {name: getattr(config, name) for name in WEIGHT_FIELDS}
            values["pattern"] = None if config.pattern is None else f"{config.pattern[0]}:{config.pattern[1]}"
            stages.append(Stage(name="weights", **values, **{k: getattr(after, k) for k in AFTER_WEIGHTS_FIELDS}))
        if channels:
            assert structure is not None
            values = {option: getattr(structure, name) for name, option in STRUCTURE_FIELDS.items()}
            stages.append(Stage(name="channels", structured=True, **values))
        if not stages:
            raise OptionError(
                f"nothing to do: give {opt('sparsity')}, {opt('pattern')}, {opt('plan')}, {opt('structure')} "
                f"or {opt('dead_channels', True)}"
            )
        return cls(tuple(stages))

    def single_pass(self) -> tuple[PruneConfig | None, StructureConfig] | None:
        """The configs of the one pass this recipe is (the inverse of :meth:`from_configs`):
        ``(weights, the channel pass after them)`` or ``(None, channels)``; None for a recipe of
        several stages, or whose ``targets`` or ``ignore`` (its own or its stage's) choose
        tensors, which a pass's options do not express."""
        if len(self.stages) != 1 or self.ignore:
            return None
        (stage,) = self.stages
        if stage.targets or stage.ignore:
            return None
        if stage.structured:
            return None, stage.structure_config()
        return stage.prune_config(), stage.after_weights()

    @property
    def calibrated(self) -> bool:
        """A stage needs calibration data (a calibrated method or bias correction)."""
        return any(stage.calibrated for stage in self.stages)

    @property
    def reads_data(self) -> bool:
        """A stage uses calibration data when the run has some (see :attr:`Stage.reads_data`)."""
        return any(stage.reads_data for stage in self.stages)

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
    known = {f.name for f in fields(Stage)}
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
    ignore = data.get("ignore") or ()
    return Recipe(tuple(stages), tuple(ignore) if isinstance(ignore, list) else ignore)


def from_model(model: ModelProto) -> Recipe | None:
    """The recipe ``model`` was made with: its ``onnxprune.recipe``, else (a model pruned before
    recipes were stamped) the recipe of the configs in the options its passes wrote
    (``onnxprune.options``, ``onnxprune.structure.options``); None when onnxprune did not make it."""
    meta = {entry.key: entry.value for entry in model.metadata_props}
    if RECIPE_KEY in meta:
        return from_dict(_json(meta[RECIPE_KEY], "its onnxprune.recipe metadata"))
    config = structure = None
    if "onnxprune.options" in meta:
        options = _object(meta["onnxprune.options"], "its onnxprune.options metadata")
        values = {k: options[k] for k in WEIGHT_FIELDS if k in options}
        values["pattern"] = parse_pattern(values.get("pattern") or "unstructured")
        values.update({k: tuple(values[k]) for k in ("include", "exclude", "op_types") if k in values})
        config = _config(PruneConfig, {**values, "allocator": None})
        if values.get("allocator") not in (None, config.resolved_allocator):  # the options hold it resolved
            config = _config(PruneConfig, values)
    if "onnxprune.structure.options" in meta:
        options = _object(meta["onnxprune.structure.options"], "its onnxprune.structure.options metadata")
        values = {k: options[k] for k in STRUCTURE_FIELDS if k in options}
        structure = _config(StructureConfig, values)
        if config is not None and not structure.structured:  # the pass after the weights
            structure = AfterWeights(**{f.name: getattr(structure, f.name) for f in fields(StructureConfig)})
    elif config is not None:  # the pass after the weights found nothing to remove
        structure = AfterWeights()
    if config is None and (structure is None or not structure.active):
        return None
    return Recipe.from_configs(config, structure)


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OptionError(f"the model's recipe cannot be read: {what} is not JSON ({exc})") from None


def _object(text: str, what: str) -> dict[str, Any]:
    value = _json(text, what)
    if not isinstance(value, dict):
        raise OptionError(f"the model's recipe cannot be read: {what} is not a JSON object")
    return value


def _config(kind: type, values: dict[str, Any]) -> Any:
    try:
        return kind(**values)
    except TypeError as exc:
        raise OptionError(f"the model's recipe cannot be read from its options: {exc}") from None


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


def _selected(stage: Stage, weight: Weight) -> bool:
    """``stage``'s own selection takes ``weight``: its ``op_types``, and its ``include`` and
    ``exclude`` regexes searched in the tensor's name and its readers' (as discovery does)."""
    if stage.op_types and not set(stage.op_types) & set(weight.ops):
        return False
    names = (weight.name, *(reader.node for reader in weight.readers))
    found = [any(re.search(p, n) for n in names) for p in (*stage.include, *stage.exclude)]
    return (not stage.include or any(found[: len(stage.include)])) and not any(found[len(stage.include) :])


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
            if not _selected(stage, weight):
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


#: The options a recipe describes (each stage option, by API field; ``structure`` for a
#: structural stage) and the steps a recipe run does not take, as a message names each when it
#: is given (a boolean by the value it is given, which is not its default but for
#: ``dead_channels``): with a recipe, they are refused.
RECIPE_OPTIONS: dict[str, str | dict[bool, str]] = {
    "sparsity": opt("sparsity"),
    "scope": opt("scope"),
    "criterion": opt("criterion"),
    "pattern": opt("pattern"),
    "nm_fallback": opt("nm_fallback"),
    "permute": opt("permute", True),
    "plan": opt("plan"),
    "max_layer_sparsity": opt("max_layer_sparsity"),
    "seed": opt("seed"),
    "min_size": opt("min_size"),
    "include": opt("include"),
    "exclude": opt("exclude"),
    "op_types": opt("op_types"),
    "method": opt("method"),
    "bias_correction": opt("bias_correction", True),
    "sequential": opt("sequential", False),
    "percdamp": opt("percdamp"),
    "blocksize": opt("blocksize"),
    "exact_refit": opt("exact_refit", False),
    "allocator": opt("allocator"),
    "capture_rows": opt("capture_rows"),
    "block_epochs": opt("block_epochs"),
    "structure": opt("structure"),
    "target_flops": opt("target_flops"),
    "dead_channels": {True: opt("dead_channels", True), False: opt("dead_channels", False)},
    "importance": opt("importance"),
    "refit": opt("refit", False),
    "round_to": opt("round_to"),
    "max_fraction": opt("max_fraction"),
    "fold": opt("fold", False),
    "damp": opt("damp"),
    "quantize": opt("quantize"),
    "dry_run": opt("dry_run"),
}


def check_flags(given: Mapping[str, object]) -> None:
    """A recipe describes the whole run: ``given`` (each option of :data:`RECIPE_OPTIONS` that
    was set -> its value) must be empty."""
    unknown = sorted(set(given) - set(RECIPE_OPTIONS))
    if unknown:
        raise ValueError(f"not options a recipe describes: {unknown}")
    clash = []
    for name, value in given.items():
        text = RECIPE_OPTIONS[name]
        clash.append(text[bool(value)] if isinstance(text, dict) else text)
    if clash:
        raise OptionError(
            f"{opt('recipe')} describes the whole run (the tensors, amount, pattern, method and channel options "
            f"of every stage): drop {', '.join(clash)}"
        )
