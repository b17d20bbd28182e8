"""Where sensitivity tasks run: one small seam, three implementations.

An executor maps a picklable top-level function over tasks and yields the results in
task order, calling ``progress(done, total, label)`` as each finishes:

- :class:`SerialExecutor`: in this process;
- :class:`ProcessExecutor`: a process pool of ``workers`` (each task limits its own
  numpy and onnxruntime threads to 1, so several workers do not oversubscribe the cores);
  workers start from a fork server (or are spawned), never forked from this process, whose
  onnxruntime and BLAS threads a forked child would inherit mid-lock (a deadlock risk that
  Python 3.12 and later warn about);
- :class:`RayExecutor`: a Ray cluster at ``address`` (``ray`` is an optional extra), for
  sweeps too big for one machine; the same function runs as a Ray task.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from onnxprune.errors import OptionError, opt
from onnxprune.passes.base import Progress

log = logging.getLogger(__name__)


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]: ...


def _label(task: Any) -> str:
    return str(getattr(task, "weight", task))


class SerialExecutor:
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        results = []
        for i, task in enumerate(tasks):
            results.append(fn(task))
            if progress is not None:
                progress(i + 1, len(tasks), _label(task))
        return results


class ProcessExecutor:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 1))
        if self.workers < 1:
            raise OptionError(f"{opt('workers')} must be >= 1, got {workers}")

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            return SerialExecutor().map(fn, tasks, progress)
        results: list[Any] = [None] * len(tasks)
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=context) as pool:
            futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
            for done, future in enumerate(as_completed(futures), start=1):
                index = futures[future]
                results[index] = future.result()
                if progress is not None:
                    progress(done, len(tasks), _label(tasks[index]))
        return results


class RayExecutor:
    """Tasks as Ray remote functions on the cluster at ``address`` ("local" starts one here)."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise OptionError(f"{opt('ray')} needs the ray package: pip install 'onnxprune[ray]'") from None
        self.ray = ray
        self.address = address
        _reachable(address)
        if not ray.is_initialized():
            try:
                if address == "local":
                    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count() or 1)
                else:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # ray raises ConnectionError, RuntimeError ... with long texts
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise OptionError(f"cannot connect to the Ray cluster at '{address}': {first}") from exc

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        remote = self.ray.remote(fn)
        refs = [remote.remote(task) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(tasks)
        pending, done = list(refs), 0
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                results[index[ref]] = self.ray.get(ref)
                done += 1
                if progress is not None:
                    progress(done, len(tasks), _label(tasks[index[ref]]))
        return results


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a ``host:port`` nobody answers (ray.init would retry for minutes)."""
    import socket

    target = address.split("://", 1)[-1]
    if target in ("local", "auto") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise OptionError(f"cannot connect to the Ray cluster at '{address}': {reason}") from None


def executor_for(*, workers: int | None = None, ray: str | None = None) -> Executor:
    """The executor the options ask for: Ray when ``ray`` is given, else a process pool."""
    if ray:
        return RayExecutor(ray)
    return ProcessExecutor(workers)
