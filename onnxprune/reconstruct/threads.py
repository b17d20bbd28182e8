"""One BLAS thread for the solvers.

The solvers make many small LAPACK calls (a batched ``np.linalg.solve`` is one ``gesv`` per
row, the triangular inverse ends in 64×64 blocks) and column-by-column updates. A
multi-threaded OpenBLAS gains nothing on such calls and, when the cores are busy, its
spinning threads make them 10–25 times slower (measured on 2 cores: 512 solves of 192×192
took 1.9 s with two threads and 0.15 s with one). The solvers therefore run with one BLAS
thread, through ``threadpoolctl`` when it is installed; without it they run as they are.

Independent solves (the refit's batches of rows) run side by side in :func:`solver_threads`
Python threads instead: numpy's LAPACK loops release the GIL, so each core runs one
single-threaded LAPACK call.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

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


def one_blas_thread() -> AbstractContextManager[object]:
    """A context in which BLAS/LAPACK use one thread (no-op without ``threadpoolctl``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
