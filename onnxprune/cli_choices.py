"""Command-line choices read from the strategy registries when used, not when the command is built.

A criterion, calibrated method or channel importance registered after ``onnxprune.cli``
was imported is still offered by ``--criterion``, ``--method`` or ``--importance``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from onnxprune.reconstruct.methods import METHODS
from onnxprune.sparsity.criteria import CRITERIA
from onnxprune.sparsity.importance import importance_choices


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` whose ``choices`` are ``names()`` at the time they are read."""

    def __init__(self, names: Callable[[], Sequence[str]], case_sensitive: bool = True) -> None:
        self._names = names
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._names())

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        raise AttributeError("the choices of a RegistryChoice come from its registry")


def criteria() -> RegistryChoice:
    """``--criterion``: every registered pruning criterion."""
    return RegistryChoice(CRITERIA.names)


def methods() -> RegistryChoice:
    """``prune --method``: every registered calibrated method."""
    return RegistryChoice(METHODS.names)


def analyze_methods() -> RegistryChoice:
    """``analyze --method``: the methods offered for per-layer curves."""
    return RegistryChoice(lambda: [m.name for m in METHODS if m.in_analyze])


def importances() -> RegistryChoice:
    """``--importance``: ``auto`` and every registered channel importance."""
    return RegistryChoice(importance_choices)
