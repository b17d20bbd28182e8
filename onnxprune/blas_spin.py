"""OpenBLAS's idle threads go to sleep at once instead of spinning, unless the user says otherwise.

After each multi-threaded call, OpenBLAS (numpy's BLAS in its wheels) keeps its worker threads
busy-waiting for the next call for ``2^n`` processor cycles, ``n = OPENBLAS_THREAD_TIMEOUT``
(28 when unset: about 0.1 s at 2.5 GHz), before they sleep. Calibration alternates numpy's
products (the captures' ``XᵀX``, the solves' ``W H``) with onnxruntime runs on the same cores,
and for those 0.1 s the spinning threads take the cores from onnxruntime's. On 2 cores, the
same SparseGPT prune of all-MiniLM-L6-v2 (50 %, 128 samples, ``tools/bench_calibrate.py``'s),
six runs of each interleaved: 59.4 s (57.5–63.5) with ``n = 28`` and 54.8 s (53.4–61.1) with
``n = 4``, medians; user CPU time 96 s against 83 s; the same output bytes (the waves' capture
17.1 → 14.2 s, the allocation's 5.4 → 4.8 s). A thread that sleeps costs its next call a
wake-up (tens of microseconds), nothing next to the products it serves. PP-OCRv4 det and rec
(two pairs each, ABBA) ran in the same wall time either way (det 71.8 and 85.2 s against 75.5 and
82.1 s, rec 76.8 and 82.0 s against 78.7 and 81.1 s) on 8–10 % less CPU, the same bytes.

OpenBLAS reads the variable once, as it starts its threads when it is loaded (``blas_thread_init``,
which clamps ``n`` to 4..30), so this must run before numpy is imported: ``onnxprune/__init__.py``
imports this module first, which sets :data:`VARIABLE` to :data:`TIMEOUT` unless it is set already
(the user's choice stands) or numpy is loaded already (too late; nothing is changed). Child
processes (``--workers``) inherit it. Other BLAS libraries (MKL, Accelerate) do not read it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

#: the environment variable OpenBLAS reads for its idle threads' spin time
VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
#: ``n`` in ``2^n`` cycles: OpenBLAS's smallest accepted value (it clamps to 4..30)
TIMEOUT = "4"


def settle(environ: MutableMapping[str, str] | None = None, loaded: bool | None = None) -> bool:
    """Set :data:`VARIABLE` to :data:`TIMEOUT` in ``environ`` (default ``os.environ``) unless it
    is set or numpy is ``loaded`` (default: whether ``sys.modules`` holds it); whether it was set."""
    environ = os.environ if environ is None else environ
    loaded = "numpy" in sys.modules if loaded is None else loaded
    if loaded or VARIABLE in environ:
        return False
    environ[VARIABLE] = TIMEOUT
    return True


settle()
