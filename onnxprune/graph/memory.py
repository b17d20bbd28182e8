"""How much memory a run may count on: what decides whether an output is run in onnxruntime.

A streamed output (:mod:`onnxprune.graph.lazy`) is validated by an onnxruntime run when its
weights fit in memory, else tensor by tensor (:mod:`onnxprune.graph.tensor_check`). The rule
is :func:`fits_in_memory`: the weights take at most :data:`RUN_MEMORY_FRACTION` of the memory
available now (``MemAvailable`` of ``/proc/meminfo``), since the session holds every weight
and buffers of its own besides.
"""

from __future__ import annotations

import os

#: An onnxruntime run is made when the model's tensor bytes are at most this fraction of the
#: memory available.
RUN_MEMORY_FRACTION = 0.5


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(tensor_bytes: int) -> bool:
    """True if a model of ``tensor_bytes`` of weights can be run by onnxruntime here: at most
    :data:`RUN_MEMORY_FRACTION` of the memory available (True when that is unknown)."""
    available = available_memory()
    return available is None or tensor_bytes <= RUN_MEMORY_FRACTION * available
