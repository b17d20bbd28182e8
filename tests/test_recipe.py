"""Recipes: stages with their own tensors, amount, pattern and method; printed back from the
model they made, and replayed to the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxprune
from onnxprune.cli import RECIPE_PARAMETERS, main
from onnxprune.config import PLACEMENT, PruneConfig, StructureConfig
from onnxprune.envelope import schema
from onnxprune.errors import OptionError
from onnxprune.graph.discovery import discover
from onnxprune.passes.pipeline import DEAD_CHANNELS_AFTER_WEIGHTS, after_weights
from onnxprune.provenance import read_recipe
from onnxprune.recipe import RECIPE_KEY, RECIPE_OPTIONS, Recipe, Stage, assign, from_dict, from_model, load, matches

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "transformer_mnist1d.onnx"
CALIB = FIXTURES / "transformer_mnist1d.calib.npz"
THREE_STAGES = {
    "ignore": ["head.weight"],
    "stages": [
        {
            "name": "encoder",
            "targets": ["re:^layers\\."],
            "op_types": ["MatMul"],
            "pattern": "2:4",
            "method": "sparsegpt",
        },
        {"name": "rest", "sparsity": 0.3},
        {"name": "channels", "structured": True, "sparsity": 0.25},
    ],
}


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_three_stages_give_each_its_sparsity_and_replay_to_the_same_bytes(tmp_path):
    recipe = dict(THREE_STAGES, stages=THREE_STAGES["stages"][:2])  # the three: 2:4, 30 %, ignore
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "out.onnx"
    result = _run(
        "prune", MODEL, out, "--recipe", path, "--calibration", CALIB, "--samples", "64", "--json", tmp_path / "r.json"
    )
    weights, dense = _weights(out), _weights(MODEL)
    encoder = [n for n in weights if n.startswith("layers.") and n.endswith("weight_t")]
    assert len(encoder) == 12
    for name in encoder:  # 2:4 along the reduction axis (rows of a MatMul weight), SparseGPT
        groups = (weights[name] != 0).reshape(-1, 4, weights[name].shape[1])  # 4 consecutive inputs
        assert (groups.sum(axis=1) <= 2).all() and (weights[name] == 0).mean() == 0.5
        assert not np.array_equal(weights[name][weights[name] != 0], dense[name][weights[name] != 0])  # refitted
    embed = weights["embed.weight_t"]
    assert (embed == 0).sum() == int(0.3 * embed.size)  # 30 % magnitude, exactly
    assert np.array_equal(weights["head.weight"], dense["head.weight"])  # ignored
    document = json.loads((tmp_path / "r.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schema()).validate(document)
    stages = {s["name"]: s for s in document["stages"]}
    assert stages["encoder"]["sparsity"] == 0.5 and len(stages["encoder"]["tensors"]) == 12
    assert stages["rest"]["tensors"] == ["embed.weight_t"]
    assert "encoder" in result.output
    # the recipe printed back from the model reproduces it byte for byte, from a file or from the model
    printed = tmp_path / "printed.json"
    printed.write_text(_run("recipe", out).output)
    assert from_dict(json.loads(printed.read_text())) == load(path)
    for source in (printed, out):
        again = tmp_path / f"again_{source.stem}.onnx"
        _run("prune", MODEL, again, "--recipe", source, "--calibration", CALIB, "--samples", "64", "-q")
        assert _digest(again) == _digest(out)


def test_a_structural_stage_removes_channels_after_the_weight_stages(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(THREE_STAGES))
    out = tmp_path / "out.onnx"
    _run("prune", MODEL, out, "--recipe", path, "--calibration", CALIB, "--samples", "32", "-q")
    assert onnx.load(out).graph.initializer  # written, validated
    before = sum(t.size for t in _weights(MODEL).values())
    assert sum(t.size for t in _weights(out).values()) < before  # channels went


def test_matching_exact_regex_node_and_op_type_first_stage_wins():
    assert matches("MatMul", ("w", "node", "MatMul")) and not matches("Mat", ("w", "MatMul"))
    assert matches("re:^layers\\.1\\.", ("layers.1.ff1.weight_t",)) and not matches("re:^ff", ("layers.1.ff1",))
    inventory = discover(onnx.load(MODEL))
    recipe = Recipe(
        (
            Stage(name="ff", targets=("re:\\.ff[12]\\.",), sparsity=0.5),
            Stage(name="again", targets=("re:\\.ff1\\.",), sparsity=0.9),  # ff1 already claimed
            Stage(name="gemm", op_types=("Gemm",), sparsity=0.2),
        ),
        ignore=("re:^layers\\.1\\.",),
    )
    got = {stage.name: names for stage, names in assign(recipe, inventory).stages}
    assert got == {"ff": ("layers.0.ff1.weight_t", "layers.0.ff2.weight_t"), "again": (), "gemm": ("head.weight",)}
    unclaimed = assign(recipe, inventory).unclaimed
    assert unclaimed["layers.1.ff1.weight_t"] == "ignored by the recipe"
    assert unclaimed["embed.weight_t"] == "no stage targets it"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stages": []}, "at least one stage"),
        ({"stage": []}, '"stages" list'),
        ({"stages": [{"sparsity": 0.5, "amount": 1}]}, "unknown key(s) amount"),
        ({"stages": [{"targets": ["re:("]}]}, "is not a regular expression"),
        ({"stages": [{"structured": True, "pattern": "2:4"}]}, "is structured"),
        ({"stages": [{"sparsity": 0.5, "pattern": "2:4"}]}, "both given"),
        ({"stages": [{"name": "a", "sparsity": 0.1}, {"name": "a", "sparsity": 0.2}]}, "names must differ"),
        ({"stages": [{"targets": "layers"}]}, "must be a list of strings"),
        ({"version": 9, "stages": [{"sparsity": 0.5}]}, "reads version 1"),
    ],
)
def test_bad_recipes_are_one_line_errors(data, message):
    with pytest.raises(OptionError, match=message.replace("(", "\\(").replace(")", "\\)")):
        from_dict(data)


def test_the_cli_refuses_flags_a_recipe_sets_and_reads_yaml(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"stages": [{"sparsity": 0.5}]}))
    result = CliRunner().invoke(
        main, ["prune", str(MODEL), str(tmp_path / "o.onnx"), "--recipe", str(path), "--method", "wanda"]
    )
    assert result.exit_code == 2 and "drop --method" in result.output and not (tmp_path / "o.onnx").exists()
    needs = CliRunner().invoke(
        main, ["prune", str(MODEL), str(tmp_path / "o.onnx"), "--recipe", str(tmp_path / "nope.json")]
    )
    assert needs.exit_code == 2 and "does not exist" in needs.output
    yaml = pytest.importorskip("yaml")
    text = tmp_path / "r.yaml"
    text.write_text(yaml.safe_dump({"ignore": ["head.weight"], "stages": [{"name": "all", "sparsity": 0.5}]}))
    _run("prune", MODEL, tmp_path / "y.onnx", "--recipe", text, "-q")
    assert (_weights(tmp_path / "y.onnx")["embed.weight_t"] == 0).mean() == 0.5


def test_a_model_pruned_with_flags_gives_its_one_stage_recipe(tmp_path):
    out = tmp_path / "flags.onnx"
    _run(
        "prune", MODEL, out, "--sparsity", "0.4", "--scope", "global", "--criterion", "lamp", "--exclude", "head", "-q"
    )
    model = onnx.load(out)
    recipe = from_model(model)
    (stage,) = recipe.stages
    assert (stage.sparsity, stage.scope, stage.criterion, stage.exclude) == (0.4, "global", "lamp", ("head",))
    assert stage.ignore == () and stage.targets == ()  # --exclude is a regex on names, not a recipe pattern
    # a model pruned before recipes were stamped: the same recipe, from its options
    legacy = [e for e in model.metadata_props if e.key != RECIPE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(legacy)
    assert from_model(model) == recipe
    unpruned = CliRunner().invoke(main, ["recipe", str(MODEL)])
    assert unpruned.exit_code == 2 and "carries no recipe" in unpruned.output


# --------------------------------------------------------------------------- the flags are a one-stage recipe

#: A value other than the default for every field of PruneConfig, and the fields it needs beside it.
WEIGHT_VALUES = {
    "sparsity": (0.4, {}),
    "scope": ("global", {}),
    "criterion": ("lamp", {}),
    "pattern": ((2, 4), {"sparsity": None}),
    "nm_fallback": ("skip", {"sparsity": None, "pattern": (4, 8)}),
    "permute": (True, {"sparsity": None, "pattern": (2, 4)}),
    "plan": ({"fc1.weight": 0.3}, {}),
    "max_layer_sparsity": (0.9, {"scope": "global"}),
    "seed": (7, {"criterion": "random"}),
    "min_size": (16, {}),
    "include": (("^fc", "conv"), {}),
    "exclude": (("fc3$",), {}),
    "op_types": (("Gemm", "MatMul"), {}),
    "method": ("sparsegpt", {}),
    "bias_correction": (True, {}),
    "sequential": (False, {"method": "wanda"}),
    "percdamp": (0.05, {"method": "sparsegpt"}),
    "blocksize": (64, {"method": "sparsegpt"}),
    "exact_refit": (False, {"method": "sparsegpt"}),
    "allocator": ("uniform", {"method": "refit"}),
    "capture_rows": (None, {"method": "wanda"}),
    "block_epochs": (3, {"method": "sparsegpt"}),
}
#: The same for StructureConfig (a structural pass: ``amount`` unless the field is the amount).
STRUCTURE_VALUES = {
    "dead_channels": (False, {}),
    "amount": (0.25, {}),
    "target_flops": (0.6, {"amount": None}),
    "scope": ("global", {}),
    "importance": ("l2", {}),
    "refit": (False, {}),
    "round_to": (4, {}),
    "max_fraction": (0.5, {}),
    "fold": (False, {}),
    "damp": (0.1, {}),
    "plan": ({"/conv1/Conv": 0.5}, {"amount": None}),
    "allocator": ("curves", {}),
}


def _round_trip(config, structure):
    """``(config, structure)`` through a recipe, its canonical JSON and back."""
    recipe = Recipe.from_configs(config, structure)
    again = from_dict(json.loads(recipe.to_json()))
    assert again == recipe and again.to_json() == recipe.to_json()
    return recipe, again.single_pass()


def _fields(value):
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(PruneConfig) if f.name not in PLACEMENT])
def test_every_weight_option_round_trips_through_a_one_stage_recipe(name):
    assert set(WEIGHT_VALUES) == {f.name for f in dataclasses.fields(PruneConfig)} - set(PLACEMENT)  # a new field
    value, needs = WEIGHT_VALUES[name]
    config = PruneConfig(**{"sparsity": 0.5, **needs, name: value})
    assert getattr(config, name) != getattr(PruneConfig(sparsity=0.5), name)  # not the default
    for after in (DEAD_CHANNELS_AFTER_WEIGHTS, after_weights(StructureConfig(dead_channels=False, fold=False))):
        recipe, (again, structure) = _round_trip(config, after)
        (stage,) = recipe.stages
        assert (
            stage.name == "weights"
            and not stage.structured
            and (stage.dead_channels, stage.fold)
            == (
                after.dead_channels,
                after.fold,
            )
        )
        assert _fields(again) == _fields(config)
        assert type(structure) is type(after) and _fields(structure) == _fields(after)
    _, (again, structure) = _round_trip(config, None)  # no channel pass (prune_model's default)
    assert _fields(again) == _fields(config) and not structure.active
    placed = dataclasses.replace(config, workers=3) if config.calibrated else config
    assert Recipe.from_configs(placed, None) == Recipe.from_configs(config, None)  # where it runs: not a recipe's


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(StructureConfig)])
def test_every_structure_option_round_trips_through_a_one_stage_recipe(name):
    assert set(STRUCTURE_VALUES) == {f.name for f in dataclasses.fields(StructureConfig)}  # a new field
    value, needs = STRUCTURE_VALUES[name]
    structure = StructureConfig(**{"amount": 0.3, **needs, name: value})
    assert getattr(structure, name) != getattr(StructureConfig(), name)
    recipe, (config, again) = _round_trip(None, structure)
    (stage,) = recipe.stages
    assert stage.name == "channels" and stage.structured and config is None
    assert type(again) is StructureConfig and _fields(again) == _fields(structure)


def test_a_run_of_both_configs_is_two_stages_and_dead_channels_alone_is_one():
    both = Recipe.from_configs(PruneConfig(sparsity=0.5), StructureConfig(amount=0.2))
    assert [(s.name, s.structured, s.dead_channels) for s in both.stages] == [
        ("weights", False, False),
        ("channels", True, True),
    ]
    assert both.single_pass() is None
    dead = Recipe.from_configs(None, StructureConfig())
    (stage,) = dead.stages
    assert stage.structured and stage.sparsity is None and dead.single_pass() == (None, StructureConfig())
    with pytest.raises(OptionError, match="nothing to do"):
        Recipe.from_configs(None, StructureConfig(dead_channels=False))


def test_targets_ignore_or_several_stages_are_not_one_pass():
    assert Recipe((Stage(name="a", sparsity=0.5),)).single_pass() is not None
    assert Recipe((Stage(name="a", sparsity=0.5),), ignore=("head.weight",)).single_pass() is None
    assert Recipe((Stage(name="a", sparsity=0.5, targets=("re:^layers",)),)).single_pass() is None
    assert Recipe((Stage(name="a", sparsity=0.5, ignore=("head.weight",)),)).single_pass() is None
    assert Recipe((Stage(name="a", sparsity=0.5), Stage(name="b", pattern="2:4"))).single_pass() is None


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"structured": True, "sparsity": 0.3, "method": "wanda"}, "method is for a weight stage"),
        ({"structured": True, "sparsity": 0.3, "include": ["fc"], "min_size": 4}, "min_size, include are for"),
        ({"structured": True, "dead_channels": False}, "give sparsity, target_flops or a plan"),
        ({"sparsity": 0.3, "round_to": 4}, "round_to is for a structured stage"),
        ({"sparsity": 0.3, "plan": [1]}, "plan must be an object"),
        ({"sparsity": 0.3, "include": ["("]}, "not a valid regular expression"),
        ({"pattern": "2:4", "nm_fallback": "drop"}, "nm_fallback"),
    ],
)
def test_a_stage_refuses_the_options_of_the_other_kind(stage, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        from_dict({"stages": [stage]})


def test_a_stage_selects_as_the_flags_do_in_a_run_of_stages():
    """``include``/``exclude`` are the flags' regexes (searched in the tensor's and its readers'
    names), apart from ``targets``/``ignore`` (exact or ``re:``, also the op type)."""
    inventory = discover(onnx.load(MODEL))
    recipe = Recipe(
        (
            Stage(name="ff1", include=("ff1",), exclude=("^layers\\.1",), sparsity=0.5),
            Stage(name="op", include=("^MatMul$",), sparsity=0.3),  # no tensor or node is named MatMul
            Stage(name="rest", exclude=("MatMul$",), sparsity=0.2),  # the nodes reading all but head do end so
        )
    )
    assignment = assign(recipe, inventory)
    got = {stage.name: names for stage, names in assignment.stages}
    assert got == {"ff1": ("layers.0.ff1.weight_t",), "op": (), "rest": ("head.weight",)}
    assert assignment.unclaimed["layers.1.ff1.weight_t"] == "no stage targets it"
    by_type = Recipe((Stage(name="op", targets=("MatMul",), sparsity=0.3),))  # a target: the op type too
    ((_, names),) = assign(by_type, inventory).stages
    assert len(names) == 13 and "head.weight" not in names


#: flag runs of the issue, each replayed from its printed recipe and from the model (the data given
#: to the replay is the run's own: a fixture's calibration where the flags had one).
FLAG_RUNS = {
    "sparsegpt": (
        "transformer_mnist1d",
        ["--sparsity", "0.5", "--method", "sparsegpt", "--allocation", "uniform", "--percdamp", "0.05",
         "--capture-rows", "all", "--parallel", "--calibration"],
    ),
    "2:4": ("cnn_digits", ["--pattern", "2:4", "--nm-fallback", "skip", "--no-dead-channels"]),
    "global-lamp": (
        "mlp_digits",
        ["--sparsity", "0.6", "--scope", "global", "--criterion", "lamp", "--include", "^fc", "--exclude", "fc3",
         "--max-layer-sparsity", "0.9", "--min-size", "100"],
    ),
    "structured": (
        "cnn_digits",
        ["--structured", "--sparsity", "0.3", "--round-to", "4", "--max-group-sparsity", "0.5", "--importance",
         "l2", "--no-refit", "--calibration"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("run", list(FLAG_RUNS))
def test_a_flag_run_is_its_one_stage_recipe_and_replays_to_the_same_bytes(tmp_path, run):
    fixture, flags = FLAG_RUNS[run]
    model = FIXTURES / f"{fixture}.onnx"
    data = ["--calibration", FIXTURES / f"{fixture}.calib.npz", "--samples", "32"] if "--calibration" in flags else []
    flags = [f for f in flags if f != "--calibration"]
    out = tmp_path / "flags.onnx"
    _run("prune", model, out, *flags, *data, "-q")
    meta = {e.key: e.value for e in onnx.load(out).metadata_props}
    stamped = from_dict(json.loads(meta[RECIPE_KEY]))
    assert len(stamped.stages) == 1 and stamped.single_pass() is not None
    assert ("onnxprune.options" in meta) != stamped.stages[0].structured  # a weight pass keeps its options too
    printed = tmp_path / "printed.json"
    printed.write_text(_run("recipe", out).output)
    assert from_dict(json.loads(printed.read_text())) == stamped
    for source in (printed, out):
        again = tmp_path / f"again_{source.stem}.onnx"
        _run("prune", model, again, "--recipe", source, *data, "-q")
        assert _digest(again) == _digest(out)


def test_every_run_stamps_its_recipe_the_python_api_too(tmp_path):
    cnn = FIXTURES / "cnn_digits.onnx"
    out = tmp_path / "api.onnx"
    onnxprune.prune_file(cnn, out, PruneConfig(sparsity=0.5, scope="global"))
    (stage,) = from_model(onnx.load(out)).stages
    assert (stage.sparsity, stage.scope, stage.dead_channels) == (0.5, "global", True)
    model, _ = onnxprune.prune(cnn, PruneConfig(pattern=(2, 4)))  # in memory: no channel pass unless asked
    (stage,) = from_model(model).stages
    assert stage.pattern == "2:4" and not stage.dead_channels
    model, _ = onnxprune.prune_model(cnn, PruneConfig(sparsity=0.3), structure=StructureConfig(amount=0.25))
    assert [s.name for s in from_model(model).stages] == ["weights", "channels"]
    # the CLI's table of recipe options names every stage option
    options = {f.name for f in dataclasses.fields(Stage)} - {"name", "targets", "ignore", "structured"}
    assert options <= set(RECIPE_OPTIONS) and set(RECIPE_PARAMETERS.values()) <= set(RECIPE_OPTIONS)


def test_the_cli_refuses_every_flag_a_recipe_sets(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"stages": [{"sparsity": 0.5}]}))
    for flags, named in (
        (["--percdamp", "0.1", "--parallel"], "drop --parallel, --percdamp"),
        (["--no-dead-channels", "--round-to", "4"], "drop --no-dead-channels, --round-to"),
        (["--scope", "local"], "drop --scope"),  # given, even at its default
    ):
        result = CliRunner().invoke(
            main, ["prune", str(MODEL), str(tmp_path / "o.onnx"), "--recipe", str(path), *flags]
        )
        assert result.exit_code == 2 and named in result.output, result.output


def test_a_one_pass_recipe_reports_as_flags_do_with_its_stage_in_the_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"stages": [{"name": "all", "sparsity": 0.5, "exclude": ["head"]}]}))
    out, report = tmp_path / "o.onnx", tmp_path / "r.json.out"
    result = _run("prune", MODEL, out, "--recipe", path, "--json", report)
    assert "pruned 13 weight tensors" in result.output  # the flags' summary
    document = json.loads(report.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schema()).validate(document)
    (stage,) = document["stages"]
    assert stage["name"] == "all" and len(stage["tensors"]) == 13 == document["totals"]["pruned_tensors"]
    assert document["unclaimed"]["head.weight"] == "matched by exclude"
    (stamped,) = from_model(onnx.load(out)).stages  # the one pass's recipe: its stage is named for the pass
    assert stamped == dataclasses.replace(load(path).stages[0], name="weights")


def test_a_recipe_made_model_says_its_recipe_in_the_report(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps({"stages": [{"name": "ff", "targets": ["re:\\.ff[12]\\."], "sparsity": 0.5}, {"pattern": "2:4"}]})
    )
    out = tmp_path / "o.onnx"
    _run("prune", MODEL, out, "--recipe", path, "-q")
    made = read_recipe(onnx.load(out))
    assert [s["text"] for s in made["stages"]] == ["magnitude, 50 %", "magnitude, 2:4 pattern"]
    line = "ff: magnitude, 50 % → stage2: magnitude, 2:4 pattern"
    assert made["text"] == line
    html = tmp_path / "report.html"
    _run("eval", MODEL, out, "--report", html, "--no-latency", "-q")
    assert f"made with {line}" in html.read_text(encoding="utf-8")
    structural = tmp_path / "s.onnx"
    onnxprune.prune_file(FIXTURES / "cnn_digits.onnx", structural, None, structure=StructureConfig(amount=0.3))
    assert read_recipe(onnx.load(structural))["text"] == "channels, 30 %"
    broken = onnx.load(structural)
    next(e for e in broken.metadata_props if e.key == RECIPE_KEY).value = '{"stages": [{"sparsity": "x"}]}'
    assert read_recipe(broken) is None  # never raises
