"""One BLAS thread for the solvers.

The solvers make many small LAPACK calls (a batched ``np.linalg.solve`` is one ``gesv`` per
row, the triangular inverse ends in 64×64 blocks) and column-by-column updates. A
multi-threaded OpenBLAS gains nothing on such calls and, when the cores are busy, its
spinning threads make them 10–25 times slower (measured on 2 cores: 512 solves of 192×192
took 1.9 s with two threads and 0.15 s with one). The solvers therefore run with one BLAS
thread, through ``threadpoolctl`` when it is installed; without it they run as they are.

Independent solves (the refit's batches of rows) run side by side in :func:`solver_threads`
Python threads instead: numpy's LAPACK loops release the GIL, so each core runs one
single-threaded LAPACK call. A helper thread that solves while its caller does other work (the
error curves' solves beside the probe's onnxruntime runs) runs under
:func:`under_callers_blas_limit`: the caller holds the limit for both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the most threads the solvers use side by side
MAX_SOLVER_THREADS = 8


def solver_threads() -> int:
    """The threads for independent solves: the cores this process may run on, at most
    :data:`MAX_SOLVER_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_SOLVER_THREADS))


_STATE = threading.local()
_CONTROLLER: list[object] = []  # the ThreadpoolController, made once (None without threadpoolctl)


def _controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS/OpenMP libraries, found once: finding them
    scans the process's libraries (about 0.7 ms), and a solve of a depthwise Conv asks once per
    channel (PP-OCRv4 rec: 16 000 times, 13 s)."""
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """A context in which BLAS/LAPACK use one thread (no-op without ``threadpoolctl``, and inside
    another such context of the same thread)."""
    controller = _controller()
    if controller is None or getattr(_STATE, "inside", False):
        yield
        return
    _STATE.inside = True
    try:
        with controller.limit(limits=1, user_api="blas"):
            yield
    finally:
        _STATE.inside = False


@contextmanager
def under_callers_blas_limit() -> Iterator[None]:
    """A context for a helper thread whose caller holds :func:`one_blas_thread` until the helper's
    work is done: the limit is process-wide, so :func:`one_blas_thread` is a no-op here, as in the
    caller's own thread (entered again, it would save and restore the caller's limit of one, not
    the BLAS's own count, and race the caller's exit)."""
    before = getattr(_STATE, "inside", False)
    _STATE.inside = True
    try:
        yield
    finally:
        _STATE.inside = before
