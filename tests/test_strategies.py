"""Strategies are objects in registries: pruning criteria, calibrated methods, channel importances.

- The built-in registries hold what the configuration, the passes and the CLI offer.
- A toy criterion in one file (``tests/toy_criterion.py``): once registered,
  ``PruneConfig(criterion="toy")`` prunes a fixture with exactly the expected zeros, and
  ``--criterion toy`` is accepted by the CLI built before it was registered.
- An unknown name is a one-line OptionError naming the registered ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import toy_criterion
from click.testing import CliRunner
from onnx import numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import OptionError
from onnxprune.reconstruct.methods import METHODS, LayerProblem
from onnxprune.sparsity.criteria import CRITERIA
from onnxprune.sparsity.importance import IMPORTANCES, importance_choices, resolve_importance
from onnxprune.sparsity.registry import Registry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp_digits.onnx"


@pytest.fixture
def toy():
    toy_criterion.install()
    yield toy_criterion.TOY
    toy_criterion.uninstall()


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _input(model: onnx.ModelProto) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    features = dims[-1].dim_value
    return np.random.default_rng(0).standard_normal((4, features)).astype(np.float32)


# --------------------------------------------------------------------------- the built-in registries


def test_the_registries_hold_the_built_in_strategies():
    assert CRITERIA.names() == ("magnitude", "lamp", "random")
    assert METHODS.names() == ("magnitude", "wanda", "sparsegpt", "admm", "refit")
    assert IMPORTANCES.names() == ("l2", "error")
    assert importance_choices() == ("auto", "l2", "error")
    assert [c.supports_global for c in CRITERIA] == [True, True, False]
    assert CRITERIA["random"].seeded and not CRITERIA["magnitude"].seeded
    assert [m.name for m in METHODS if m.chooses_mask] == ["wanda", "sparsegpt", "admm"]
    assert [m.name for m in METHODS if not m.needs_data] == ["magnitude"]
    assert resolve_importance("auto", with_data=True).name == "error"
    assert resolve_importance("auto", with_data=False).name == "l2"
    assert all(s.help and "\n" not in s.help for r in (CRITERIA, METHODS, IMPORTANCES) for s in r)


def test_a_registry_refuses_a_second_strategy_of_the_same_name():
    registry: Registry = Registry("thing")
    registry.register(toy_criterion.TOY)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(toy_criterion.TOY)
    registry.register(toy_criterion.TOY, replace=True)
    with pytest.raises(KeyError, match="registered: toy"):
        registry["nope"]
    registry.unregister("toy")
    registry.unregister("toy")  # a second time: nothing happens
    assert len(registry) == 0


def test_cli_choices_come_from_the_registries():
    params = {p.name: p for p in main.get_command(None, "prune").params}
    assert tuple(params["criterion"].type.choices) == CRITERIA.names()
    assert tuple(params["method"].type.choices) == METHODS.names()
    assert tuple(params["importance"].type.choices) == importance_choices()
    analyze = {p.name: p for p in main.get_command(None, "analyze").params}
    assert tuple(analyze["method"].type.choices) == tuple(m.name for m in METHODS if m.in_analyze)


def test_methods_solve_one_layer_problem():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8))
    x = rng.standard_normal((32, 8))
    h = x.T @ x
    mask = np.abs(w) <= np.sort(np.abs(w), axis=1)[:, [3]]
    problem = LayerProblem(
        w=w, goal=w, H=h, sqnorm=np.diagonal(h).copy(), mask=mask, amount=0.5, nm=None,
        percdamp=0.01, blocksize=128, row_wise=True,
    )  # fmt: skip
    for method in METHODS:
        new = method.solve(problem)
        assert new.shape == w.shape and np.count_nonzero(new == 0) == 16, method.name
        if not method.chooses_mask:  # the criterion's mask, as given
            assert np.array_equal(new == 0, mask), method.name
    assert np.array_equal(METHODS["magnitude"].solve(problem), np.where(mask, 0.0, w))


# --------------------------------------------------------------------------- a toy criterion in one file


def test_the_toy_criterion_prunes_every_other_weight(toy):
    model = onnx.load(MLP)
    before = _arrays(model)
    pruned, result = onnxprune.prune(model, onnxprune.PruneConfig(sparsity=0.5, criterion="toy"))
    after = _arrays(pruned)
    onnx.checker.check_model(pruned, full_check=True)
    # what changed: exactly the even-indexed half of every pruned weight
    assert [layer.name for layer in result.pruned] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert result.newly_zeroed == sum(before[layer.name].size // 2 for layer in result.pruned)
    for layer in result.pruned:
        old, new = before[layer.name].reshape(-1), after[layer.name].reshape(-1)
        assert layer.zeros_after == old.size // 2
        assert not np.any(new[0::2]) and np.array_equal(new[1::2], old[1::2]), layer.name
    for name in set(before) - {layer.name for layer in result.pruned}:
        assert np.array_equal(before[name], after[name]), name  # biases untouched
    # numerically: the model with those weights zeroed by hand
    expected = onnx.load(MLP)
    for t in expected.graph.initializer:
        if t.name in {layer.name for layer in result.pruned}:
            values = numpy_helper.to_array(t).copy()
            values.reshape(-1)[0::2] = 0
            t.CopyFrom(numpy_helper.from_array(values, t.name))
    x = _input(model)
    np.testing.assert_array_equal(_run(pruned, x), _run(expected, x))


def test_the_toy_criterion_with_global_scope_allocates_like_local(toy):
    local = onnxprune.prune(MLP, onnxprune.PruneConfig(sparsity=0.5, criterion="toy"))[0]
    glob = onnxprune.prune(MLP, onnxprune.PruneConfig(sparsity=0.5, criterion="toy", scope="global"))[0]
    for name, values in _arrays(local).items():
        assert np.array_equal(values, _arrays(glob)[name]), name


def test_the_toy_criterion_at_zero_sparsity_changes_nothing(toy):
    model = onnx.load(MLP)
    pruned, result = onnxprune.prune(model, onnxprune.PruneConfig(sparsity=0.0, criterion="toy"))
    assert result.newly_zeroed == 0
    assert [t.raw_data for t in pruned.graph.initializer] == [t.raw_data for t in model.graph.initializer]


def test_a_mask_choosing_method_refuses_the_toy_criterion(toy):
    with pytest.raises(OptionError, match="criterion='toy' cannot choose the weights of method='wanda'"):
        onnxprune.PruneConfig(sparsity=0.5, criterion="toy", method="wanda")
    onnxprune.PruneConfig(sparsity=0.5, criterion="toy", method="refit")  # refit uses the criterion's mask


def test_the_cli_accepts_a_criterion_registered_after_it_was_built(toy, tmp_path):
    out = tmp_path / "toy.onnx"
    run = CliRunner().invoke(
        main, ["prune", str(MLP), str(out), "--sparsity", "0.5", "--criterion", "toy"], catch_exceptions=False
    )
    assert run.exit_code == 0, run.output
    weights = _arrays(onnx.load(out))
    assert not np.any(weights["fc2.weight"].reshape(-1)[0::2]) and np.all(weights["fc2.weight"].reshape(-1)[1::2])
    help_text = CliRunner().invoke(main, ["prune", "--help"]).output
    assert "magnitude|lamp|random|toy" in help_text


def test_after_unregistering_the_toy_criterion_is_unknown_again(tmp_path):
    toy_criterion.install()
    toy_criterion.uninstall()
    assert "toy" not in CRITERIA
    run = CliRunner().invoke(
        main, ["prune", str(MLP), str(tmp_path / "o.onnx"), "--sparsity", "0.5", "--criterion", "toy"]
    )
    assert run.exit_code == 2 and "'toy' is not one of 'magnitude', 'lamp', 'random'" in run.output


# --------------------------------------------------------------------------- unknown names


def test_an_unknown_criterion_is_a_one_line_option_error_naming_the_registered_ones(toy):
    with pytest.raises(OptionError) as caught:
        onnxprune.PruneConfig(sparsity=0.5, criterion="nope")
    message = str(caught.value)
    assert "\n" not in message
    assert message == "criterion must be one of magnitude, lamp, random, toy, got 'nope'"


def test_unknown_method_and_importance_name_the_registered_ones():
    with pytest.raises(OptionError, match=r"^method must be one of magnitude, wanda, sparsegpt, admm, refit, got 'x'$"):
        onnxprune.PruneConfig(sparsity=0.5, method="x")
    with pytest.raises(OptionError, match=r"^importance must be one of auto, l2, error, got 'x'$"):
        onnxprune.StructureConfig(amount=0.3, importance="x")
