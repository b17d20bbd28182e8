"""Command-line choices read from the strategy registries when used, not when the command is built.

A criterion, calibrated method or channel importance registered after ``onnxprune.cli``
was imported is still offered by ``--criterion``, ``--method`` or ``--importance``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


class OutputFile(click.Path):
    """A path the command writes a file to: a :class:`pathlib.Path`, refused (usage error, exit 2)
    when spelled with a trailing separator, which names a folder (``pathlib`` would drop it and
    write a file of that name, beside undeclared siblings such as its external data)."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else value
        if isinstance(text, str) and text.rstrip("/" + (os.altsep or "")) and text.endswith(("/", os.sep)):
            bare = text.rstrip("/" + os.sep)
            self.fail(f"'{text}' ends with '/', so it names a folder: give a file path such as '{bare}'", param, ctx)
        return super().convert(value, param, ctx)


class Repeats(click.ParamType):
    """``--repeats``: a count >= 1, or ``auto`` (repeat until the latency ratios are precise)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            self.fail(f"{value!r} is neither a number of repeats nor 'auto'", param, ctx)
