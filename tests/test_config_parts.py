"""PruneConfig by concern: Selection, Allocation, Ranking and Reconstruction.

Each part validates its own fields with the messages the flat config gives; the flat
constructor and ``PruneConfig.of`` build the same config; the lower layers run on the part
they need; ``dataclasses.replace`` re-validates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune import (
    Allocation,
    DiscoveryOptions,
    OptionError,
    PruneConfig,
    Ranking,
    Reconstruction,
    Selection,
)
from onnxprune.config import PLACEMENT
from onnxprune.errors import fields
from onnxprune.graph import tensors
from onnxprune.graph.discovery import discover
from onnxprune.passes.calibrated import PERCDAMP_DATA, PERCDAMP_DATA_FREE, solver_percdamp
from onnxprune.passes.unstructured import plan_targets, target_mask

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# (part, its keywords, the fields the message names): one bad value each
BAD = [
    (Selection, {"min_size": -1}, ["min_size"]),
    (Selection, {"include": ("[",)}, ["include"]),
    (Selection, {"exclude": ("(x",)}, ["exclude"]),
    (Allocation, {"sparsity": 1.5}, ["sparsity"]),
    (Allocation, {"sparsity": "half"}, ["sparsity"]),
    (Allocation, {"scope": "everywhere"}, ["scope"]),
    (Allocation, {"nm_fallback": "dense"}, ["nm_fallback"]),
    (Allocation, {"pattern": (4, 2)}, ["pattern"]),
    (Allocation, {"sparsity": 0.5, "pattern": (2, 4)}, ["sparsity", "pattern", "sparsity"]),
    (Allocation, {"pattern": (2, 4), "plan": {"w": 0.5}}, ["plan", "pattern"]),
    (Allocation, {"max_layer_sparsity": 0.0}, ["max_layer_sparsity"]),
    (Ranking, {"criterion": "nope"}, ["criterion"]),
    (Reconstruction, {"method": "nope"}, ["method"]),
    (Reconstruction, {"percdamp": 101.0}, ["percdamp"]),
    (Reconstruction, {"blocksize": 0}, ["blocksize"]),
]


@pytest.mark.parametrize(("part", "kwargs", "named"), BAD, ids=lambda v: getattr(v, "__name__", None))
def test_each_part_validates_its_own_fields_with_the_flat_configs_message(part, kwargs, named):
    with pytest.raises(OptionError) as alone:
        part(**kwargs)
    assert fields(alone.value.args[0]) == named
    assert "\n" not in str(alone.value)
    flat = kwargs if "sparsity" in kwargs or "pattern" in kwargs else {"sparsity": 0.5, **kwargs}
    with pytest.raises(OptionError) as whole:
        PruneConfig(**flat)
    assert str(whole.value) == str(alone.value)


def test_a_plan_entry_is_checked_by_the_allocation():
    with pytest.raises(OptionError, match=r"^plan entry 'fc1.weight' must be a fraction of weights in \[0, 1\)"):
        Allocation(plan={"fc1.weight": 2.0})


def test_each_part_is_valid_alone_with_its_defaults_and_only_the_config_checks_across_parts():
    assert not Allocation().prunes  # nothing to do is the config's concern
    assert Allocation(plan={"w": 0.5}).prunes and Allocation(pattern=(2, 4)).prunes
    with pytest.raises(OptionError, match=r"^nothing to do: give sparsity"):
        PruneConfig.of(allocation=Allocation())
    wanda, random = Reconstruction(method="wanda"), Ranking(criterion="random")  # each fine alone
    with pytest.raises(OptionError) as caught:
        PruneConfig.of(allocation=Allocation(sparsity=0.5), ranking=random, reconstruction=wanda)
    assert str(caught.value) == "criterion='random' cannot choose the weights of method='wanda'; drop one"
    assert str(caught.value) == _message(lambda: PruneConfig(sparsity=0.5, criterion="random", method="wanda"))
    assert Reconstruction(method="sparsegpt").calibrated and Reconstruction(bias_correction=True).calibrated
    assert not Reconstruction().calibrated
    assert Allocation(pattern=(2, 4)).pattern_name == "2:4" and Allocation().pattern_name == "unstructured"


def _message(make) -> str:
    with pytest.raises(OptionError) as caught:
        make()
    return str(caught.value)


CONFIGS = [
    (
        {"sparsity": 0.5},
        {"allocation": Allocation(sparsity=0.5)},
    ),
    (
        {"sparsity": 0, "scope": "global", "criterion": "lamp", "max_layer_sparsity": 0.9, "min_size": 0},
        {
            "allocation": Allocation(sparsity=0, scope="global", max_layer_sparsity=0.9),
            "ranking": Ranking(criterion="lamp"),
            "selection": Selection(min_size=0),
        },
    ),
    (
        {"pattern": (2, 4), "nm_fallback": "skip", "include": ("fc",), "exclude": ("fc3",), "op_types": ("Gemm",)},
        {
            "allocation": Allocation(pattern=(2, 4), nm_fallback="skip"),
            "selection": Selection(include=("fc",), exclude=("fc3",), op_types=("Gemm",)),
        },
    ),
    (
        {"plan": {"fc1.weight": 0.25}, "criterion": "random", "seed": 7, "method": "refit", "bias_correction": True},
        {
            "allocation": Allocation(plan={"fc1.weight": 0.25}),
            "ranking": Ranking(criterion="random", seed=7),
            "reconstruction": Reconstruction(method="refit", bias_correction=True),
        },
    ),
    (
        {"sparsity": 0.6, "method": "sparsegpt", "sequential": False, "percdamp": 0.5, "blocksize": 32},
        {
            "allocation": Allocation(sparsity=0.6),
            "reconstruction": Reconstruction(method="sparsegpt", sequential=False, percdamp=0.5, blocksize=32),
        },
    ),
]


@pytest.mark.parametrize(("flat", "parts"), CONFIGS)
def test_the_flat_constructor_and_of_give_equal_configs(flat, parts):
    config, composed = PruneConfig(**flat), PruneConfig.of(**parts)
    assert config == composed
    assert config.as_dict() == composed.as_dict()
    assert json.dumps(config.as_dict()) == json.dumps(composed.as_dict())  # same keys, same order
    assert list(config.as_dict()) == [f.name for f in dataclasses.fields(PruneConfig) if f.name not in PLACEMENT]
    for name, part in parts.items():
        assert getattr(config, name) == part
    # and back: the parts of a config make it again
    again = PruneConfig.of(
        selection=config.selection,
        allocation=config.allocation,
        ranking=config.ranking,
        reconstruction=config.reconstruction,
    )
    assert again == config


def test_the_parts_hold_the_normalized_values_and_cover_every_field():
    config = PruneConfig(sparsity=0, plan={"w": 0})
    assert isinstance(config.sparsity, float) and config.allocation.sparsity == 0.0
    assert isinstance(config.plan, MappingProxyType) and config.plan is config.allocation.plan
    assert isinstance(config.selection, DiscoveryOptions)  # discovery takes it as it is
    assert type(config.selection) is Selection
    part_fields = [
        f.name for part in (Selection, Allocation, Ranking, Reconstruction) for f in dataclasses.fields(part)
    ]
    assert sorted(part_fields) == sorted(f.name for f in dataclasses.fields(PruneConfig))  # each field in one part
    assert config.calibrated is config.reconstruction.calibrated
    assert config.pattern_name == config.allocation.pattern_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sparsity = 0.3
    with pytest.raises(AttributeError):
        config.selection = Selection()


def test_replace_revalidates_and_rebuilds_the_parts():
    config = PruneConfig(sparsity=0.5, criterion="random", seed=1)
    changed = dataclasses.replace(config, sparsity=0.25, seed=2)
    assert changed.allocation == Allocation(sparsity=0.25)
    assert changed.ranking == Ranking(criterion="random", seed=2)
    assert changed.as_dict() == {**config.as_dict(), "sparsity": 0.25, "seed": 2}
    with pytest.raises(OptionError, match=r"^sparsity must be a fraction"):
        dataclasses.replace(config, sparsity=1.5)
    with pytest.raises(OptionError, match=r"^min_size must be >= 0"):
        dataclasses.replace(config, min_size=-1)
    with pytest.raises(OptionError, match="cannot choose the weights of method='sparsegpt'"):
        dataclasses.replace(config, method="sparsegpt")
    with pytest.raises(OptionError, match=r"^nothing to do"):
        dataclasses.replace(config, sparsity=None)
    with pytest.raises(OptionError, match=r"^scope must be one of local, global"):
        dataclasses.replace(config.allocation, scope="nope")  # a part re-validates too


# ---------------------------------------------------------------------------------------
# The lower layers, driven by their part alone


def _mlp() -> onnx.ModelProto:
    return onnx.load(str(FIXTURES / "mlp_digits.onnx"))


def test_discovery_takes_a_selection():
    model = _mlp()
    selection = Selection(min_size=0, exclude=("fc2",))
    inventory = discover(model, selection)
    assert inventory.weights == discover(model, DiscoveryOptions(min_size=0, exclude=("fc2",))).weights
    prunable = {w.key: w.prunable for w in inventory.weights if w.role == "weight"}
    assert prunable == {"fc1.weight": True, "fc2.weight": False, "fc3.weight": True}
    assert onnxprune.inspect(model, selection).weights == inventory.weights


@pytest.mark.parametrize(
    ("allocation", "ranking"),
    [
        (Allocation(sparsity=0.5), Ranking()),
        (Allocation(sparsity=0.7, scope="global", max_layer_sparsity=0.8), Ranking(criterion="lamp")),
        (Allocation(pattern=(2, 4)), Ranking()),
        (Allocation(plan={"fc1.weight": 0.3}), Ranking(criterion="random", seed=3)),
    ],
)
def test_the_allocation_and_ranking_alone_decide_and_mask_as_the_whole_config_prunes(allocation, ranking):
    model = _mlp()
    inventory = discover(model, Selection())
    targets = plan_targets(allocation, ranking, inventory)
    assert set(targets) == {w.key for w in inventory.prunable}
    expected = {}
    for index, weight in enumerate(inventory.weights):
        target = targets.get(weight.key)
        values = tensors.read_array(inventory.proto(weight))
        if target is not None and target.acts:
            values = np.where(target_mask(values, target, weight, ranking, index), values.dtype.type(0), values)
        expected[weight.key] = values
    pruned, result = onnxprune.prune(model, PruneConfig.of(allocation=allocation, ranking=ranking))
    after = {init.name: onnx.numpy_helper.to_array(init) for init in pruned.graph.initializer}
    for key, values in expected.items():
        np.testing.assert_array_equal(after[key], values)
    assert any(layer.zeros_after > layer.zeros_before for layer in result.pruned)


def test_the_random_ranking_seed_changes_the_mask_and_nothing_else_does():
    model = _mlp()
    inventory = discover(model, Selection())
    weight = inventory.prunable[0]
    index = inventory.weights.index(weight)
    values = tensors.read_array(inventory.proto(weight))
    target = plan_targets(Allocation(plan={weight.key: 0.5}), Ranking(), inventory)[weight.key]
    masks = {
        seed: target_mask(values, target, weight, Ranking(criterion="random", seed=seed), index) for seed in (0, 1)
    }
    assert masks[0].sum() == masks[1].sum() == target.count
    assert not np.array_equal(masks[0], masks[1])
    plain = [target_mask(values, target, weight, Ranking(seed=seed), index) for seed in (0, 1)]
    np.testing.assert_array_equal(*plain)  # magnitude is not seeded


def test_the_solver_damping_comes_from_the_reconstruction_and_the_data():
    real, synthetic = SimpleNamespace(synthetic=False), SimpleNamespace(synthetic=True)
    assert solver_percdamp(Reconstruction(), real) == PERCDAMP_DATA
    assert solver_percdamp(Reconstruction(), synthetic) == PERCDAMP_DATA_FREE
    assert solver_percdamp(Reconstruction(percdamp=0.5), synthetic) == 0.5
    assert solver_percdamp(PruneConfig(sparsity=0.5, percdamp=0.0).reconstruction, real) == 0.0
