"""StructureConfig holds user options only; whether the channel pass folds constants before
its analysis is the pipeline's decision, carried by the type of the pass after weights
(:class:`~onnxprune.passes.deadwatch.AfterWeights`) and by the passes' ``fold_first``
parameter, never by a field of the user's config."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import onnx
import pytest

import onnxprune
from onnxprune.passes.deadwatch import AfterWeights, DeadChannelPass, watchable
from onnxprune.passes.pipeline import DEAD_CHANNELS_AFTER_WEIGHTS, after_weights, build_pipeline
from onnxprune.passes.structural import StructuralPass, remove_channels

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_the_user_config_has_no_pipeline_switch():
    config = onnxprune.StructureConfig()
    names = {f.name for f in dataclasses.fields(config)}
    assert not names & {"fold_first", "light"} and not hasattr(config, "light")
    assert "fold_first" not in config.as_dict()
    with pytest.raises(TypeError):
        onnxprune.StructureConfig(fold_first=False)  # type: ignore[call-arg]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxprune.StructureConfig(amount=0.3, fold=False)  # no warning for the options users set


def test_the_pipeline_decides_the_pass_after_weights():
    light = after_weights(onnxprune.StructureConfig(fold=False))
    assert isinstance(light, AfterWeights) and not light.fold and light.dead_channels
    assert light.as_dict() == onnxprune.StructureConfig(fold=False).as_dict()
    assert light != onnxprune.StructureConfig(fold=False)  # the type is the decision
    assert after_weights(onnxprune.StructureConfig()) == DEAD_CHANNELS_AFTER_WEIGHTS
    assert watchable(light) and not watchable(onnxprune.StructureConfig())
    assert not watchable(after_weights(onnxprune.StructureConfig(amount=0.3)))  # structured: not watched
    weights = onnxprune.PruneConfig(sparsity=0.5)
    watched = build_pipeline(weights, light)
    assert isinstance(watched.channels, DeadChannelPass) and watched.watched
    explicit = build_pipeline(weights, onnxprune.StructureConfig())  # asked for: the full pass, folding first
    assert isinstance(explicit.channels, StructuralPass) and not explicit.watched


@pytest.mark.parametrize("fold_first", [None, False, True])
def test_fold_first_is_a_parameter_of_the_pass(fold_first):
    """cnn_digits has Constant nodes that folding first turns into initializers: the pass
    after weights (fold_first None with an AfterWeights, or False) leaves them."""
    model = onnx.load(str(FIXTURES / "cnn_digits.onnx"))
    before = model.SerializeToString()
    result = remove_channels(model, after_weights(onnxprune.StructureConfig()), fold_first=fold_first)
    assert result.removed_units == 0
    assert (model.SerializeToString() == before) is (fold_first is not True)
