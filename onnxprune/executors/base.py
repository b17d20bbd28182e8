"""The seam every executor implements, and the one that runs in this process.

An executor maps a picklable top-level function over tasks and returns the results in task
order (never in the order they finish), calling ``progress(done, total, label)`` as each
finishes; a task's label is its ``weight`` attribute where it has one (the weight it is about),
else ``str(task)``. Every executor is also a context manager: what it holds open between maps
(a process pool, a Ray it started) is released on exit.

An error raised by a task comes back as the same exception type with its own message (an
:class:`~onnxprune.errors.OnnxPruneError` stays a one-line error for the CLI); the tasks not yet
started are cancelled. A worker that dies (killed, out of memory) is an
:class:`~onnxprune.errors.OnnxPruneError` naming what was lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from onnxprune.passes.base import Progress


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]: ...


class ClosingExecutor(Executor, Protocol):
    """An executor that releases what it holds (a pool, a Ray it started) on close or exit."""

    def close(self) -> None: ...

    def __enter__(self) -> ClosingExecutor: ...

    def __exit__(self, *exc: object) -> None: ...


def task_label(task: Any) -> str:
    """What the progress display shows for ``task``: its ``weight``, else the task as text."""
    return str(getattr(task, "weight", task))


class SerialExecutor:
    """The tasks one after another, in this process."""

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        results = []
        for i, task in enumerate(tasks):
            results.append(fn(task))
            if progress is not None:
                progress(i + 1, len(tasks), task_label(task))
        return results

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
