"""The C allocator's thresholds for the ``onnxprune`` process (glibc only), set by the CLI.

glibc's ``malloc`` serves a request of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at first,
raised as such blocks are freed, up to 32 MiB) with a fresh ``mmap`` and unmaps it when it is
freed, and it gives the top of its heap back to the system once more than ``M_TRIM_THRESHOLD``
bytes are free there. A run allocates and frees buffers of a tensor's size over and over: the
bytes of each tensor read out of the parsed model, the pruned copy, the chunks of the captures'
sums. Each such buffer then arrives as fresh pages, every page a fault in the kernel (a run of
``tools/bench_prune.py`` on its 100 M-parameter model: 60 s of system time against 76 s of user
time over all its processes). :func:`tune` fixes the thresholds at 32 MiB and 128 MiB, so that
freed buffers are reused from the heap.

Measured on this 2-core machine, interleaved, the same output bytes: the 100 M-parameter model's
``prune --sparsity 0.5`` 6.75 → 5.65 s (medians of 3, the same 842 MiB peak; thresholds of
64/256 MiB and 256 MiB/1 GiB did alike); all-MiniLM-L6-v2 (86 MiB) unchanged, 3.43 against
3.48 s (medians of 5, 248 MiB peak both); PP-OCRv4 det, SparseGPT 50 % on 32 pages of 640×640,
131.6 and 140.0 s against 116.4 and 134.8 s, its peak 1.22–1.35 GB against 1.39–1.43 GB (freed
buffers are kept for reuse). The library leaves the process's allocator alone: only the command
line, which owns its process, calls :func:`tune`; ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment (glibc's own settings) win over it.

The workers of ``--workers`` (:class:`onnxprune.executors.ProcessExecutor`) start from a fork
server, a fresh interpreter that inherits none of this: each runs :func:`tune` with
:func:`tuned`'s thresholds as it starts, when the process that made the pool had set them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the thresholds :func:`tune` sets (module docstring)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20
#: glibc's environment settings of the same thresholds (a user's choice, left as it is)
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
#: the thresholds :func:`tune` last set in this process, None until it did
_TUNED: tuple[int, int] | None = None


def tuned() -> tuple[int, int] | None:
    """``(mmap_threshold, trim_threshold)`` as :func:`tune` last set them in this process, or None."""
    return _TUNED


def tune(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` for this process (module
    docstring). Returns True if both were set; False elsewhere than Linux, without a ``mallopt``
    (another C library), when it refuses a value, or when the environment sets either."""
    global _TUNED
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    log.debug(
        "malloc thresholds %s: mmap %d, trim %d bytes", "set" if done else "not set", mmap_threshold, trim_threshold
    )
    if done:
        _TUNED = (mmap_threshold, trim_threshold)
    return done
