"""Tasks in a local process pool (see :mod:`onnxprune.executors.base` for the contract).

Workers start from a fork server (or are spawned), never forked from this process, whose
onnxruntime and BLAS threads a forked child would inherit mid-lock (a deadlock risk that
Python 3.12 and later warn about). A task limits its own threads (numpy, onnxruntime) so that
several workers do not oversubscribe the cores. A worker sets the C allocator's thresholds
that this process runs with (:mod:`onnxprune.allocator`: the command line's), as it starts.

Used as a context manager, one pool serves every :meth:`ProcessExecutor.map` until the
executor closes (the calibrated pass maps each wave of layers: its workers start once, not once
per wave); otherwise each map starts and ends a pool of its own. A map of at most one task, or
with one worker, runs in this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from onnxprune import allocator
from onnxprune.errors import OnnxPruneError, OptionError, opt
from onnxprune.executors.base import SerialExecutor, task_label
from onnxprune.passes.base import Progress


class ProcessExecutor:
    """A pool of ``workers`` processes (default: the CPU count)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 1))
        if self.workers < 1:
            raise OptionError(f"{opt('workers')} must be >= 1, got {workers}")
        self._pool: ProcessPoolExecutor | None = None
        self._kept = False

    def __enter__(self) -> ProcessExecutor:
        self._kept = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the pool kept open since ``__enter__`` (its workers finish their current task)."""
        self._kept = False
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def _start(self, tasks: int) -> ProcessPoolExecutor:
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        size = self.workers if self._kept else min(self.workers, tasks)
        return ProcessPoolExecutor(
            max_workers=size, mp_context=context, initializer=_worker_start, initargs=(allocator.tuned(),)
        )

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            return SerialExecutor().map(fn, tasks, progress)
        if not self._kept:
            with self._start(len(tasks)) as pool:
                return _run(pool, fn, tasks, progress)
        if self._pool is None:
            self._pool = self._start(len(tasks))
        try:
            return _run(self._pool, fn, tasks, progress)
        except OnnxPruneError as exc:
            if isinstance(exc.__cause__, BrokenProcessPool):
                self._pool = None  # unusable now; a later map starts another
            raise


def _worker_start(thresholds: tuple[int, int] | None) -> None:
    """A worker's start: the allocator thresholds of the process that made the pool, if it set any."""
    if thresholds is not None:
        allocator.tune(*thresholds)


def _run(
    pool: ProcessPoolExecutor, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None
) -> list[Any]:
    results: list[Any] = [None] * len(tasks)
    futures: dict[Future[Any], int] = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool as exc:
                raise OnnxPruneError(
                    f"a worker process ended without a result (killed, or out of memory?) while running "
                    f"'{task_label(tasks[index])}'; run with fewer {opt('workers')}"
                ) from exc
            if progress is not None:
                progress(done, len(tasks), task_label(tasks[index]))
    except BaseException:
        for future in futures:  # what has not started yet; the running ones finish
            future.cancel()
        raise
    return results
