"""One BLAS thread for the solvers.

The solvers make many small LAPACK calls (a batched ``np.linalg.solve`` is one ``gesv`` per
row, the triangular inverse ends in 64×64 blocks) and column-by-column updates. A
multi-threaded OpenBLAS gains nothing on such calls and, when the cores are busy, its
spinning threads make them 10–25 times slower (measured on 2 cores: 512 solves of 192×192
took 1.9 s with two threads and 0.15 s with one). The solvers therefore run with one BLAS
thread, through ``threadpoolctl`` when it is installed; without it they run as they are.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext


def one_blas_thread() -> AbstractContextManager[object]:
    """A context in which BLAS/LAPACK use one thread (no-op without ``threadpoolctl``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
