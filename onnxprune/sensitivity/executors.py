"""Where sensitivity tasks run: the executors of :mod:`onnxprune.executors` (serial, a process
pool, a Ray cluster), which the calibrated pass shares.

A sensitivity task limits its own numpy and onnxruntime threads to 1, so several workers do not
oversubscribe the cores; its ``weight`` is the progress label. ``executor_for`` chooses as
``onnxprune analyze`` asks: Ray when an address is given, else a process pool (default: the CPU
count).
"""

from __future__ import annotations

from onnxprune.executors import (
    RAY_MARKER,
    Executor,
    LocalRay,
    ProcessExecutor,
    RayExecutor,
    SerialExecutor,
    executor_for,
)

__all__ = ["RAY_MARKER", "Executor", "LocalRay", "ProcessExecutor", "RayExecutor", "SerialExecutor", "executor_for"]
