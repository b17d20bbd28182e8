"""Which axis of each model input holds the batch, and moving samples in and out of it.

A *sample* (one item) of an input is what one batch entry holds: the input's shape with its
batch axis removed (``[64]`` of ``x [batch, 64]``, ``[2, 128]`` of ``state [2, batch, 128]``),
or the whole input for one without a batch axis (a scalar sample rate, a fixed ``[1]``
threshold): such an input holds one value per run, so a run carries one sample.

The batch axis of each input (:func:`batch_axes`), decided from the declared dims alone:

1. what the user states (``--batch-axis state:1``, ``sr:none``) wins;
2. a rank-0 input has none;
3. the *batch symbol*: of the symbolic dims (``dim_param``) the inputs declare, the one whose
   name says batch (``batch``, ``batch_size``, ``N``), else the one the most inputs share,
   else the one most often at axis 0 (ties: the first input's); an input that declares it
   has its batch there (``state [2, batch, 128]``: axis 1; a time-major ``X [seq, batch, 8]``:
   axis 1);
4. an input without the symbol whose axis 0 is dynamic has its batch on axis 0;
5. a model with a batch symbol whose input declares neither it nor a dynamic axis 0 takes one
   value per run for that input (no batch axis: ``sr [1]`` beside ``x [batch, 16000]``);
6. a model of fixed dims only: the batch size is the axis-0 size most inputs declare (the
   first input's on a tie); an input has its batch on axis 0 if it declares that size there,
   else on the one axis that does; with none or several it is :data:`UNDECIDED`, and data
   that needs it is refused with the ``--batch-axis`` to give.

Pure functions on dims; no onnxruntime, no data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from onnxprune.errors import OptionError, opt

Dims = Sequence[int | str | None]

#: The batch axis of an input that rule 6 cannot place (see module docstring).
UNDECIDED = -1
#: Names of a symbolic dim that say "batch" (compared lower-case).
BATCH_NAMES = frozenset({"batch", "batch_size", "batchsize", "n", "bs", "b"})


def _dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int) or dim <= 0


def parse_batch_axes(specs: Sequence[str]) -> dict[str, int | None]:
    """Parse ``name:K`` (an axis >= 0) and ``name:none`` (no batch axis) specs."""
    out: dict[str, int | None] = {}
    for spec in specs:
        name, sep, text = spec.rpartition(":")
        if not sep or not name:
            raise OptionError(f"{opt('batch_axes')} '{spec}' must look like NAME:AXIS (e.g. state:1) or NAME:none")
        text = text.strip().lower()
        if text == "none":
            out[name] = None
            continue
        try:
            axis = int(text)
        except ValueError:
            raise OptionError(f"{opt('batch_axes')} '{spec}': the axis must be an integer >= 0 or 'none'") from None
        if axis < 0:
            raise OptionError(f"{opt('batch_axes')} '{spec}': the axis must be >= 0 (or 'none')")
        out[name] = axis
    return out


def batch_symbol(declared: Mapping[str, Dims]) -> str | None:
    """The symbolic dim that names the batch (rules 3; None when no input declares a symbol)."""
    counts: Counter[str] = Counter()
    at_zero: Counter[str] = Counter()
    order: dict[str, int] = {}
    for dims in declared.values():
        seen = {d for d in dims if isinstance(d, str) and d}
        counts.update(seen)
        for symbol in seen:
            order.setdefault(symbol, len(order))
        if dims and isinstance(dims[0], str) and dims[0]:
            at_zero[dims[0]] += 1
    if not counts:
        return None

    def score(symbol: str) -> tuple[bool, int, int, int]:
        return symbol.lower() in BATCH_NAMES, counts[symbol], at_zero[symbol], -order[symbol]

    return max(counts, key=score)


def batch_axes(declared: Mapping[str, Dims], given: Mapping[str, int | None] | None = None) -> dict[str, int | None]:
    """The batch axis of every input (see module docstring): an axis, None (no batch axis)
    or :data:`UNDECIDED`. ``given`` (``--batch-axis``) is checked against the inputs."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise OptionError(
            f"{opt('batch_axes')} names unknown input(s) {', '.join(unknown)}; the model's inputs are: "
            f"{', '.join(declared)}"
        )
    for name, axis in given.items():
        rank = len(declared[name])
        if axis is not None and axis >= rank:
            raise OptionError(
                f"{opt('batch_axes')} {name}:{axis} is out of range: input '{name}' has rank {rank}"
                + (" (a scalar has no batch axis: say none)" if rank == 0 else f" (axes 0..{rank - 1})")
            )
    symbol = batch_symbol(declared)
    out: dict[str, int | None] = {}
    for name, dims in declared.items():
        if name in given:
            out[name] = given[name]
        elif not dims:
            out[name] = None
        elif symbol is not None and symbol in dims:
            out[name] = list(dims).index(symbol)
        elif _dynamic(dims[0]):
            out[name] = 0
        elif symbol is not None:
            out[name] = None
        else:
            out[name] = UNDECIDED  # placed below, once the fixed batch size is known
    if UNDECIDED in out.values():
        sizes = Counter(int(dims[0]) for name, dims in declared.items() if out[name] == UNDECIDED)
        size = max(sizes, key=lambda s: (sizes[s], -list(sizes).index(s)))
        for name, dims in declared.items():
            if out[name] != UNDECIDED:
                continue
            if dims[0] == size:
                out[name] = 0
                continue
            matches = [axis for axis, d in enumerate(dims) if d == size]
            out[name] = matches[0] if len(matches) == 1 else UNDECIDED
    return out


@dataclass(frozen=True)
class InputLayout:
    """One input's declared dims and batch axis (None: no batch axis; :data:`UNDECIDED`)."""

    name: str
    dims: tuple[int | str | None, ...]
    axis: int | None

    @property
    def item_dims(self) -> tuple[int | str | None, ...]:
        """The dims of one sample: the declared dims without the batch axis."""
        return self.item_of(self.dims)

    def item_of(self, shape: Sequence[Any]) -> tuple[Any, ...]:
        """``shape`` (this input's full shape or dims) without its batch axis, if it has one."""
        if self.axis is None or self.axis == UNDECIDED:
            return tuple(shape)
        return (*shape[: self.axis], *shape[self.axis + 1 :])

    @property
    def batched(self) -> bool:
        return self.axis is not None and self.axis != UNDECIDED

    def fixed_batch(self) -> int | None:
        """The batch size this input fixes (its batch dim is a number), else None."""
        if not self.batched:
            return None
        dim = self.dims[self.axis]  # type: ignore[index]
        return None if _dynamic(dim) else int(dim)  # type: ignore[arg-type]

    def undecided_error(self) -> OptionError:
        shown = ", ".join("?" if d is None else str(d) for d in self.dims)
        return OptionError(
            f"cannot tell which axis of input '{self.name}' [{shown}] holds the batch (its dims are fixed and none "
            f"or several match the other inputs' batch): give {opt('batch_axes')} {self.name}:K (the axis) or "
            f"{self.name}:none (one value per run)"
        )


def describe(layouts: Sequence[InputLayout]) -> str:
    """``x: axis 0, state: axis 1, sr: none`` (for logs and reports)."""
    return ", ".join(
        f"{lay.name}: " + ("none" if lay.axis is None else "?" if lay.axis == UNDECIDED else f"axis {lay.axis}")
        for lay in layouts
    )
