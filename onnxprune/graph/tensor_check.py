"""The per-tensor check of a streamed output: the written bytes against the input and the masks.

A model too large to run in onnxruntime on this machine is still checked, tensor by tensor,
both files read lazily (:func:`~onnxprune.graph.model_io.load_model_lazily`: the loader's
checks of every external-data reference hold for the output too, and each tensor is
memory-mapped, one pair at a time). For every tensor of the output's main graph
(initializers and Constant-node values):

- the input has a tensor of that name, with the same dims and element type, and the output
  holds exactly as many bytes for it;
- a tensor the writer did not replace is bit for bit the input's;
- a replaced tensor differs from the input only in elements that are now ``+0`` (all bits
  clear: what :func:`onnxprune.sparsity.apply_mask_bits` writes), and the set of changed
  elements is the one the writer streamed (same count, same BLAKE2b digest of the packed bit
  set, :class:`~onnxprune.graph.writer.WrittenTensor`): the zeros are where the mask put
  them, and every kept value is the input's;
- every replaced tensor is in the output.

A tensor the writer read back as it wrote it
(:meth:`~onnxprune.graph.direct_io.DirectAppender.verified`: the file held exactly the bytes it
wrote, read back from the device where the data file is written past the page cache) is not read
again: its reference in the output must name the region read back, and its record must show only
``+0`` written (its changes against the input were counted when it was written).

Subgraphs are not compared (a streamed model keeps its external tensors in the main graph;
``onnx.checker`` on the skeleton checks the structure). :func:`~onnxprune.graph.memory.stream_can_run`
says when an onnxruntime run is made instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from onnx import ModelProto, TensorProto

from onnxprune.errors import ValidationError
from onnxprune.graph.model_io import load_model_lazily
from onnxprune.graph.tensors import data_bytes
from onnxprune.graph.writer import ReadBack, WrittenTensor, compare_elements
from onnxprune.ops import constant_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorCheck:
    """What :func:`check_written` compared: tensors, bytes, replaced tensors, changed elements,
    and the tensors whose bytes the writer read back (not read again)."""

    tensors: int
    bytes: int
    replaced: int
    changed: int
    read_back: int = 0

    def describe(self) -> str:
        back = f" ({self.read_back} of them read back as they were written)" if self.read_back else ""
        return (
            f"per-tensor check of the written bytes: {self.tensors} tensors ({self.bytes} bytes) against the "
            f"input{back}, {self.replaced} replaced with {self.changed} elements set to +0 where the masks put them, "
            "every other value bit-equal to the input's"
        )


def _main_tensors(model: ModelProto) -> Iterator[tuple[str, TensorProto]]:
    for tensor in model.graph.initializer:
        yield tensor.name, tensor
    for node in model.graph.node:
        value = constant_tensor(node)
        if value is not None:
            yield node.output[0], value


def _reference(tensor: TensorProto) -> tuple[str, int, int] | None:
    """``(location, offset, length)`` of an external tensor's reference, None if it has none."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    entries = {entry.key: entry.value for entry in tensor.external_data}
    try:
        return entries["location"], int(entries.get("offset", "0")), int(entries["length"])
    except (KeyError, ValueError):
        return None


def check_written(
    output: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    records: Mapping[str, WrittenTensor],
    *,
    verified: ReadBack | None = None,
) -> TensorCheck:
    """Check the model written at ``output`` (the staged model, or its skeleton) against the
    input at ``reference`` and what the writer recorded (see the module docstring); raise
    :class:`~onnxprune.errors.ValidationError` naming the first tensor that differs.
    ``verified``: the tensors read back as written, whose bytes are not read again."""
    verified = verified or {}
    written = load_model_lazily(Path(output))
    source = load_model_lazily(Path(reference))
    inputs = dict(_main_tensors(source.model))
    seen: set[str] = set()
    count = total = changed = back = 0
    for name, tensor in _main_tensors(written.model):
        original = inputs.get(name)
        if original is None:
            raise ValidationError(f"the output holds tensor '{name}', which the input does not; nothing was written")
        if list(tensor.dims) != list(original.dims) or tensor.data_type != original.data_type:
            raise ValidationError(
                f"tensor '{name}' was written with dims {list(tensor.dims)} and type {tensor.data_type}, the input "
                f"has {list(original.dims)} and {original.data_type}; nothing was written"
            )
        expected = records.get(name)
        if name in verified and _reference(tensor) == verified[name] and verified[name][2] == data_bytes(original):
            found = expected or WrittenTensor(0, "")
            not_zero = found.not_zero
            back += 1
        else:
            new, old = written.tensors.raw(tensor), source.tensors.raw(original)
            if new.size != old.size:
                raise ValidationError(
                    f"tensor '{name}' has {new.size} bytes in the output, {old.size} in the input; nothing was written"
                )
            found, not_zero = compare_elements(original, old, new)
            del new, old
        if expected is None and found.changed:
            raise ValidationError(
                f"tensor '{name}' was not pruned but {found.changed} of its elements differ from the input: the "
                "written bytes are corrupt; nothing was written"
            )
        if not_zero:
            raise ValidationError(
                f"tensor '{name}' differs from the input in {not_zero} elements that are not zero: the written "
                "bytes are corrupt; nothing was written"
            )
        if expected is not None and found != expected:
            raise ValidationError(
                f"tensor '{name}' has {found.changed} elements zeroed in the output where the mask zeroes "
                f"{expected.changed} (or other ones): the written bytes are corrupt; nothing was written"
            )
        seen.add(name)
        count += 1
        total += data_bytes(original)
        changed += found.changed
    missing = sorted(set(records) - seen)
    if missing:
        raise ValidationError(f"tensor '{missing[0]}' was written but is not in the output; nothing was written")
    check = TensorCheck(count, total, len(records), changed, back)
    log.info("%s", check.describe())
    return check
