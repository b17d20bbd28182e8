"""Tensors read and computed side by side on threads.

numpy releases the GIL in its loops, and a page fault on a memory-mapped tensor is served
without it, so two threads read and compute two tensors at once on two cores (two 32 M-element
tensors binned for LAMP: 0.41 s one after the other, 0.24 s side by side). Two helpers, both
giving results in order and an error as its own type:

- :func:`map_in_threads`: ``[function(x) for x in items]``, :data:`WORKERS` at a time;
- :func:`computed_ahead`: results computed one ahead of the caller, who uses each while the
  next is computed (the streamed writer writes one tensor while the next is pruned).

One large tensor's own chunked passes (its magnitude cut, its N:M groups, the writer's record
of what changed) are split the same way from :data:`SPLIT_FROM` elements on, the chunks cut
into :data:`WORKERS` runs of consecutive ones (:func:`in_runs`).

Layer solves and sensitivity sweeps, which hold the GIL in Python for long stretches, run in
processes instead (:mod:`onnxprune.executors`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Threads of :func:`map_in_threads` (the machines this runs on have two cores or more).
WORKERS = 2
#: Elements from which one tensor's chunked pass is split into :data:`WORKERS` runs of
#: consecutive chunks, side by side on threads (:func:`in_runs`): the bracket pass of a
#: 125 M-element float32 tensor took 0.25 s on one thread, 0.13 s on two.
SPLIT_FROM = 1 << 22


def map_in_threads(function: Callable[[T], R], items: Sequence[T], *, workers: int = WORKERS) -> list[R]:
    """``[function(x) for x in items]``, ``workers`` at a time on threads (in order)."""
    if len(items) <= 1 or workers <= 1:
        return [function(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="onnxprune") as pool:
        return list(pool.map(function, items))


def in_runs(items: Sequence[T], runs: int) -> list[Sequence[T]]:
    """``items`` cut into at most ``runs`` runs of consecutive items, as even as can be, none empty."""
    cuts = [len(items) * i // runs for i in range(runs + 1)]
    return [items[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def computed_ahead(calls: Sequence[Callable[[], T]], pool: Executor) -> Iterator[T]:
    """The results of ``calls``, in order, each one computed on ``pool`` while the caller uses the
    one before: with a pool of one thread, the calls run one at a time, in order, and at most two
    results are alive (the caller's and the next). A call's exception is raised where its result
    would have been; the call after it is cancelled if it has not started."""
    pending: Future[T] | None = None
    try:
        for call in calls:
            previous, pending = pending, pool.submit(call)
            if previous is not None:
                result = previous.result()
                previous = None  # the future holds the result too: it must not outlive the caller's use
                yield result
                del result
        if pending is not None:
            result, pending = pending.result(), None
            yield result
    finally:
        if pending is not None:
            pending.cancel()
