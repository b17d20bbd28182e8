"""How much memory a run may count on: what decides whether an output is run in onnxruntime.

A streamed output (:mod:`onnxprune.graph.lazy`) is validated by an onnxruntime run when its
weights fit in the stream's own memory, else tensor by tensor (:mod:`onnxprune.graph.tensor_check`).
The rule is :func:`stream_can_run`. A streamed run reads and writes the weights one tensor at a
time, so it holds a few tensors at once, whatever the model's size: its peak is about
``4 · largest + 1 GB`` (``largest``: the bytes of the largest tensor; ``tools/bench_large.py``
measures it against that bound). An onnxruntime session holds every weight, plus buffers of its
own (about 0.6 GB on a 2 GB model). So the run is made only when the weights are at most
:data:`STREAM_RUN_TENSORS` times the largest tensor, and at most :data:`RUN_MEMORY_FRACTION` of
the memory available now (``MemAvailable`` of ``/proc/meminfo``, :func:`fits_in_memory`). A
streamed output changes only weight values, never the graph: the per-tensor check proves that
every byte is the input's except the zeros the masks put, which an onnxruntime run could not
tell apart anyway.
"""

from __future__ import annotations

import os

#: An onnxruntime run is made when the model's tensor bytes are at most this fraction of the
#: memory available.
RUN_MEMORY_FRACTION = 0.5
#: A streamed output is run in onnxruntime when its tensor bytes are at most this many times its
#: largest tensor's (12 GB of 0.5 GB tensors on a 25 GB machine: the run peaked at 12.6 GB, the
#: per-tensor check at 1.4 to 2 GB; 2 GB of them: 2.6 GB with the run)
STREAM_RUN_TENSORS = 4


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


def stream_can_run(tensor_bytes: int, largest: int) -> bool:
    """True if a streamed output of ``tensor_bytes`` of weights, the largest tensor ``largest``
    bytes, is validated by an onnxruntime run: ``tensor_bytes <= STREAM_RUN_TENSORS · largest``
    (the run then stays within the stream's own memory) and :func:`fits_in_memory`."""
    return tensor_bytes <= STREAM_RUN_TENSORS * largest and fits_in_memory(tensor_bytes)
