"""Where independent tasks run: one small seam, three implementations.

Sensitivity sweeps (:mod:`onnxprune.sensitivity`) and the calibrated pass's layer solves
(:mod:`onnxprune.passes.calibrated`) hand a picklable top-level function and its tasks to an
executor (:mod:`.base` states the contract: results in task order, a task's error as its own
type, progress as tasks finish):

- :class:`SerialExecutor` (:mod:`.base`): in this process;
- :class:`ProcessExecutor` (:mod:`.pool`): a local process pool of ``workers``;
- :class:`RayExecutor` (:mod:`.ray_cluster`): a Ray cluster at ``address``, or ``"local"``: a
  Ray of our own on 127.0.0.1 (:class:`LocalRay`), stopped with every process it started.
"""

from __future__ import annotations

from onnxprune.executors.base import ClosingExecutor, Executor, SerialExecutor, task_label
from onnxprune.executors.pool import ProcessExecutor
from onnxprune.executors.ray_cluster import RAY_MARKER, LocalRay, RayExecutor

__all__ = [
    "RAY_MARKER",
    "ClosingExecutor",
    "Executor",
    "LocalRay",
    "ProcessExecutor",
    "RayExecutor",
    "SerialExecutor",
    "executor_for",
    "task_label",
]


def executor_for(*, workers: int | None = None, ray: str | None = None) -> ClosingExecutor:
    """The executor the options ask for: Ray when ``ray`` is given, else a process pool of
    ``workers`` (None: the CPU count)."""
    if ray:
        return RayExecutor(ray)
    return ProcessExecutor(workers)
