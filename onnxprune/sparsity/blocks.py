"""A tensor's new values computed a block of elements at a time, in order.

A pruned tensor of a streamed model goes from the input file to the output file; computing it
whole first means a new array the size of the tensor, whose pages the kernel clears on first
touch (on the VMs measured here about 1 s a GB, more than the pruning itself, README stop 47).
A :class:`BlockFill` instead computes any run of consecutive elements into a buffer the caller
gives, so the writer fills one small buffer again and again and writes each block as it comes.

Contract: :meth:`BlockFill.fill` is called for consecutive runs ``[start, start + out.size)``
covering ``[0, size)`` in order, once each, each a whole number of :attr:`BlockFill.granule`
elements (N:M's whole rows of groups) (a fill may keep state from one call to the next,
e.g. how many ties at a cut are still to be zeroed); :meth:`BlockFill.whole` is the whole
tensor as one new flat array (one call covering every element), for the consumers that need it.
:meth:`BlockFill.finish` is called after the last block, and raises if what the blocks found
contradicts what the fill was told (see :class:`~onnxprune.sparsity.select.ZeroSmallest`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np


class BlockFill(ABC):
    """New values of a tensor of ``size`` elements of ``dtype`` (an unsigned-integer view of
    the stored type, flat, C order), a block at a time (see the module docstring)."""

    def __init__(self, size: int, dtype: np.dtype, stored: np.ndarray | None = None) -> None:
        self.size = int(size)
        self.dtype = np.dtype(dtype)
        #: the tensor's stored values (flat, of :attr:`dtype`) when the fill reads them: a writer
        #: compares the new values with these rather than reading the tensor a second time
        self.stored = stored
        #: every block but the last starts and ends at a multiple of this many elements
        self.granule = 1

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @abstractmethod
    def fill(self, start: int, out: np.ndarray) -> None:
        """Write the new values of elements ``[start, start + out.size)`` into ``out`` (1-D, of
        :attr:`dtype`); calls come in order, consecutive, from 0."""

    def finish(self) -> None:
        """Called once every element is filled: raise if the blocks contradict the fill's data."""
        return None

    def whole(self) -> np.ndarray:
        """Every new value as one new flat array (one :meth:`fill`, then :meth:`finish`)."""
        out = np.empty(self.size, dtype=self.dtype)
        self.fill(0, out)
        self.finish()
        return out


class WatchedFill(BlockFill):
    """``inner``'s values, each block shown to ``look(start, block)`` once filled, and ``done()``
    called after the last (a watch that needs every value, :mod:`onnxprune.passes.deadwatch`)."""

    def __init__(self, inner: BlockFill, look: Callable[[int, np.ndarray], None], done: Callable[[], None]) -> None:
        super().__init__(inner.size, inner.dtype, inner.stored)
        self.granule = inner.granule
        self.inner = inner
        self._look = look
        self._done = done

    def fill(self, start: int, out: np.ndarray) -> None:
        self.inner.fill(start, out)
        self._look(start, out)

    def finish(self) -> None:
        self.inner.finish()
        self._done()
