"""Recipes: stages with their own tensors, amount, pattern and method; printed back from the
model they made, and replayed to the same bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxprune.cli import main
from onnxprune.envelope import schema
from onnxprune.errors import OptionError
from onnxprune.graph.discovery import discover
from onnxprune.recipe import Recipe, Stage, assign, from_dict, from_model, load, matches

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
    recipe = from_model(onnx.load(out))
    (stage,) = recipe.stages
    assert (stage.sparsity, stage.scope, stage.criterion, stage.ignore) == (0.4, "global", "lamp", ("re:head",))
    unpruned = CliRunner().invoke(main, ["recipe", str(MODEL)])
    assert unpruned.exit_code == 2 and "carries no recipe" in unpruned.output
