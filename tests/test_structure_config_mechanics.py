"""StructureConfig holds user options; when the channel pass skips constant folding is the
pipeline's decision (``after_weights``), and ``fold_first=False`` is a deprecated keyword."""

from __future__ import annotations

import warnings

import pytest

import onnxprune
from onnxprune.passes.deadwatch import DeadChannelPass
from onnxprune.passes.pipeline import DEAD_CHANNELS_AFTER_WEIGHTS, after_weights, build_pipeline
from onnxprune.passes.structural import StructuralPass


def test_the_user_config_has_no_pipeline_switch():
    config = onnxprune.StructureConfig()
    assert not hasattr(config, "light")
    assert "fold_first" not in config.as_dict() and "fold_first" not in repr(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxprune.StructureConfig(amount=0.3, fold=False)  # no warning for the options users set


def test_fold_first_false_still_works_with_a_deprecation_warning():
    with pytest.deprecated_call(match="after_weights"):
        old = onnxprune.StructureConfig(fold_first=False)
    assert old == DEAD_CHANNELS_AFTER_WEIGHTS


def test_the_pipeline_decides_the_pass_after_weights():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        light = after_weights(onnxprune.StructureConfig(fold=False))
    assert not light.fold_first and not light.fold and light.dead_channels
    weights = onnxprune.PruneConfig(sparsity=0.5)
    watched = build_pipeline(weights, light)
    assert isinstance(watched.channels, DeadChannelPass) and watched.watched
    explicit = build_pipeline(weights, onnxprune.StructureConfig())  # asked for: the full pass, folding first
    assert isinstance(explicit.channels, StructuralPass) and not explicit.watched
