"""Loading models safely and saving them atomically.

Loading refuses external-data locations that escape the model's folder (absolute paths,
``..`` components, symbolic links pointing out): ONNX loaders that follow them read any
file on the machine. Saving follows the output policy of :mod:`onnxprune.graph.outputs`
(a regular file or nothing, never an input of the run): :class:`StagedOutput` writes into a
staging folder next to the destination, validates there, then renames into place, so a
reader never sees a half-written model and an interrupted run leaves the destination as it
was. :func:`model_reads` and :func:`model_writes` say which files a model is on each side.

A model with external data may also be loaded *lazily* (:func:`load_model_lazily`): the same
checks, the skeleton parsed, and a :class:`~onnxprune.graph.lazy.TensorSource` that maps
each external tensor only when it is read; :meth:`StagedOutput.write` then streams it into
the output tensor by tensor, with or without external data, the same bytes as the loaded
model would give (see :mod:`onnxprune.graph.writer`).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import ModelProto, TensorProto
from onnx.external_data_helper import set_external_data

from onnxprune.errors import ModelLoadError, OnnxPruneError, OutputError, UnsafeModelError
from onnxprune.graph import tensors, wire
from onnxprune.graph.direct_io import DirectAppender
from onnxprune.graph.lazy import TensorSource, external_entries
from onnxprune.graph.memory import fits_in_memory, stream_can_run
from onnxprune.graph.outputs import Read, Write, check_outputs, durable, publish, same_file, staging_dir
from onnxprune.graph.sanity import MALFORMED, check_model, check_text, checked_numel, refuse_nonfinite
from onnxprune.graph.skeleton import skeleton
from onnxprune.graph.walk import all_graphs, all_tensors
from onnxprune.graph.writer import ReadBack, Records, Replacement, apply_replacements, write_external, write_model

log = logging.getLogger(__name__)

#: Above this many bytes of tensor data a model is saved with external data: protobuf
#: cannot serialize messages of 2 GiB or more, and the graph itself needs room too.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: a model file of this many bytes or more whose weights are inside it is read as a skeleton
#: when it will be streamed (:func:`load_model_lazily` with ``inline``)
INLINE_STREAM_BYTES = 16 << 20
#: ``raw_data`` of this many bytes or more is left in the file by such a skeleton
INLINE_TENSOR_BYTES = 64 << 10


def _check_range(tensor: TensorProto, where: str, location: str, offset: int, length: int | None, size: int) -> None:
    """The bytes ``offset``.. (``length`` of them, else up to the end of the file, as onnx reads
    them) of a file of ``size`` bytes must be the tensor's values as its dims say."""
    expected = tensors.payload_bytes(tensor.data_type, checked_numel(where, tensor))
    if length is not None and expected is not None and length != expected:
        raise ModelLoadError(
            f"{where} has length {length} but its dims {list(tensor.dims)} take {expected} bytes: {MALFORMED}"
        )
    needed = length if length is not None else expected
    if needed is not None and offset + needed > size:
        raise ModelLoadError(
            f"{where} is truncated: '{location}' has {size} bytes, the tensor needs bytes {offset}..{offset + needed}"
        )
    if length is None and offset > size:
        raise ModelLoadError(f"{where} starts at byte {offset}, past the end of '{location}' ({size} bytes)")
    if length is None and expected is not None and offset + expected < size:
        raise ModelLoadError(
            f"{where} gives no length, so onnx reads bytes {offset}..{size} of '{location}' ({size - offset} "
            f"bytes), but its dims {list(tensor.dims)} take {expected} bytes: {MALFORMED}"
        )


def check_external_data(model: ModelProto, base_dir: Path) -> list[Path]:
    """Check every external-data reference of ``model`` against ``base_dir``.

    Returns the distinct files referenced. Raises :class:`UnsafeModelError` for a location
    outside ``base_dir`` (or a hard-linked file, which may be any file) and
    :class:`ModelLoadError` for a location that names a folder, a missing, symbolically linked
    or too short file (onnx refuses links as external data), and a byte range that does not
    hold what the tensor's dims say (a ``length`` other than their size; without ``length``,
    onnx reads up to the end of the file, which must then be exactly their size).
    """
    root = base_dir.resolve()
    files: dict[Path, None] = {}
    for tensor in all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        where = f"external data of tensor '{tensor.name}'"
        try:
            files[_checked_file(tensor, where, base_dir, root)] = None
        except (OSError, ValueError) as exc:  # a name the file system refuses: too long, a NUL byte
            location = external_entries(tensor)[0]
            raise ModelLoadError(
                f"{where} names a file that cannot be opened ({getattr(exc, 'strerror', None) or exc}; a location "
                f"of {len(location)} characters): {MALFORMED}"
            ) from None
    return list(files)


def _checked_file(tensor: TensorProto, where: str, base_dir: Path, root: Path) -> Path:
    """The file holding ``tensor``'s external data, checked (see :func:`check_external_data`)."""
    location, offset, length = external_entries(tensor)
    if not location:
        raise ModelLoadError(f"{where} has no location: the model is malformed; export it again")
    pure = Path(location)
    if not pure.parts:
        raise ModelLoadError(f"{where} names the model's folder ('{location}'), not a data file: {MALFORMED}")
    if pure.is_absolute() or location.startswith(("/", "\\")) or ":" in pure.parts[0]:
        raise UnsafeModelError(
            f"{where} uses the absolute path '{location}'; external data must lie in the "
            "model's folder: refusing to read it"
        )
    if ".." in pure.parts:
        raise UnsafeModelError(f"{where} points outside the model's folder ('{location}'): refusing to read it")
    target = (base_dir / pure).resolve()
    if root != target and root not in target.parents:
        raise UnsafeModelError(
            f"{where} ('{location}') resolves through a symbolic link to '{target}', "
            "outside the model's folder: refusing to read it"
        )
    if target.is_dir():
        raise ModelLoadError(f"{where} names the folder '{location}', not a data file: {MALFORMED}")
    if not target.is_file():
        raise ModelLoadError(
            f"{where} is missing: '{base_dir / pure}' does not exist or is not a file; keep the "
            "data file next to the model (same relative path as when it was saved)"
        )
    # onnx itself refuses to read these (its external-data loader forbids links).
    if (base_dir / pure).is_symlink():
        raise ModelLoadError(
            f"{where} ('{location}') is a symbolic link, which onnx refuses to read: replace "
            "the link with a copy of the file it points to"
        )
    links = target.stat().st_nlink
    if links > 1:
        raise UnsafeModelError(
            f"{where} ('{location}') has {links} hard links, so it may be a file from outside the "
            "model's folder (onnx refuses it too): replace it with a plain copy of the file"
        )
    _check_range(tensor, where, location, offset, length, target.stat().st_size)
    return target


def load_model(path: str | os.PathLike[str], *, finite: bool = False) -> ModelProto:
    """Load an ONNX model with its external data, refusing anything unsafe or malformed (see
    :func:`onnxprune.graph.sanity.check_model`); with ``finite`` also weights that hold NaN or
    ±inf (what pruning asks for, unless the user allows them)."""
    return load_model_with_files(path, finite=finite)[0]


def load_model_with_files(path: str | os.PathLike[str], *, finite: bool = False) -> tuple[ModelProto, list[Path]]:
    """:func:`load_model`, and the files it was read from (the model, then its external data)."""
    path = Path(path)
    model, data_files = _parse_checked(path, finite=finite)
    if data_files:
        load_external(model, path, finite=finite)
    return model, [path, *data_files]


@dataclass(frozen=True)
class LazyModel:
    """A model loaded without its external data (:func:`load_model_lazily`): its skeleton, the
    files it comes from (the model, then its external data) and the source of its tensors."""

    model: ModelProto
    files: tuple[Path, ...]
    tensors: TensorSource
    #: main-graph initializers stored in the model file that the skeleton reads like external
    #: data, from the model file itself (:mod:`onnxprune.graph.wire`)
    inline: frozenset[str] = frozenset()

    @property
    def path(self) -> Path:
        return self.files[0]

    @property
    def external(self) -> bool:
        """True if some tensor is read from a file as its skeleton is (external, or inline)."""
        return len(self.files) > 1 or bool(self.inline)

    def external_bytes(self) -> int:
        """Bytes of the tensors stored in external files (from their dims and dtypes)."""
        return sum(tensors.data_bytes(t) for t in all_tensors(self.model) if t.data_location == TensorProto.EXTERNAL)

    def materialize(self, *, finite: bool = False) -> ModelProto:
        """Read the external data into the skeleton (what :func:`load_model` returns), and with
        ``finite`` refuse weights holding NaN or ±inf (those in the model file were checked by
        :func:`load_model_lazily` with ``finite``). The skeleton is the model returned."""
        if self.external:
            load_external(self.model, self.path, finite=finite)
            for tensor in self.model.graph.initializer:
                if tensor.name in self.inline:  # as the file stores it: no data_location
                    tensor.ClearField("data_location")
        return self.model


def load_model_lazily(path: str | os.PathLike[str], *, finite: bool = False, inline: bool = False) -> LazyModel:
    """Load the model at ``path`` without its external data: the checks of :func:`load_model`
    (every external-data reference checked, see :func:`check_external_data`), then a
    :class:`~onnxprune.graph.lazy.TensorSource` that maps each external tensor when read.

    With ``inline``, a model file of :data:`INLINE_STREAM_BYTES` or more whose weights are
    stored inside it is read as a skeleton (:func:`~onnxprune.graph.wire.inline_skeleton`): its
    main-graph initializers of :data:`INLINE_TENSOR_BYTES` or more are left in the file and read
    from it like external data, so that neither the file's bytes nor the parsed weights are held
    (all-MiniLM-L6-v2: ``onnx.load`` peaks at 210 MiB, the skeleton at 41). Listed in
    :attr:`LazyModel.inline`; a file the walk does not expect, or one the skeleton's checks
    refuse, is parsed whole instead (which says what is wrong with it).

    ``finite`` refuses NaN and ±inf weights stored in the model file, as :func:`load_model`
    does (counted as the payload checks read them). The values of external tensors are not
    looked at: a caller that needs finite weights counts them as it reads (discovery does, and
    :func:`~onnxprune.graph.sanity.refuse_nonfinite` with the source and ``external_only``
    refuses them) or calls :meth:`LazyModel.materialize`.
    """
    path = Path(path)
    if inline:
        found = _inline_lazily(path, finite=finite)
        if found is not None:
            return found
    model, data_files = _parse_checked(path, finite=finite)
    return LazyModel(model, (path, *data_files), TensorSource(path.parent, data_files))


def _inline_lazily(path: Path, *, finite: bool) -> LazyModel | None:
    """:func:`load_model_lazily`'s skeleton of a model whose weights are in its file, or None."""
    try:
        if not path.is_file() or path.stat().st_size < INLINE_STREAM_BYTES:
            return None
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as view,
        ):
            found = wire.inline_skeleton(view, path.name, threshold=INLINE_TENSOR_BYTES)
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    skeleton_bytes, moved = found
    try:
        model, data_files = _parse_checked(path, finite=finite, skeleton=skeleton_bytes)
    except OnnxPruneError:
        return None
    names = frozenset(model.graph.initializer[i].name for i in moved)
    own = path.resolve()
    others = [f for f in data_files if f.resolve() != own]
    source = TensorSource(path.parent, data_files, inline=names)
    return LazyModel(model, (path, *others), source, inline=names)


def load_external(model: ModelProto, path: Path, *, finite: bool = False) -> None:
    """Read the (checked) external data of the model at ``path`` into ``model``."""
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"cannot read the external data of '{path}' ({detail}); save the model again with its "
            "external data as plain files in its folder"
        ) from exc
    if finite:
        refuse_nonfinite(model)


def _parse_checked(path: Path, *, finite: bool, skeleton: bytes | None = None) -> tuple[ModelProto, list[Path]]:
    """The model at ``path`` parsed without its external data and checked (see :func:`load_model`),
    with the external-data files it references (checked, not read); with ``skeleton``, those
    bytes parsed instead of the file's (:func:`_inline_lazily`)."""
    if not path.exists():
        raise ModelLoadError(f"'{path}' does not exist: check the path of the input model")
    if not path.is_file():
        raise ModelLoadError(f"'{path}' is not a file: give the path of an .onnx model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"'{path}' is empty: not an ONNX model; export or copy it again")
    try:
        if skeleton is None:
            model = onnx.load(str(path), load_external_data=False)
        else:
            model = ModelProto()
            model.ParseFromString(skeleton)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError ... depending on build
        raise ModelLoadError(
            f"'{path}' is not a readable ONNX model (the file is truncated or not an .onnx "
            f"protobuf: {type(exc).__name__}); export or copy it again"
        ) from exc
    if not model.HasField("graph") or model.ir_version <= 0 or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(
            f"'{path}' parsed as protobuf but holds no ONNX graph (no ir_version, nodes or "
            "outputs): it is not an ONNX model or it is truncated; export or copy it again"
        )
    if not model.opset_import and model.ir_version >= 3:
        # A file cut just before its trailing opset_import field still parses (IR >= 3 requires one).
        raise ModelLoadError(
            f"'{path}' declares no opset (opset_import is empty): the file is truncated or "
            "malformed; export or copy it again"
        )
    check_text(model)  # before any name is read: external-data entries are names too
    data_files = check_external_data(model, path.parent)
    # the tensors in the file: each read once (NaN and ±inf counted as it is read, with finite);
    # the external ones' byte ranges were checked above: they are read only to look for NaN,
    # by whoever reads them (load_external, or discovery and refuse_nonfinite when streamed)
    check_model(model, finite=finite, text=False)
    return model, data_files


def tensor_bytes(model: ModelProto, *, external: bool = False) -> int:
    """Bytes of tensor data held in the model (with ``external`` also of its external tensors),
    from dims and dtypes."""
    return sum(tensors.data_bytes(t) for t in all_tensors(model) if external or t.data_location != TensorProto.EXTERNAL)


def streamed_run_fits(model: ModelProto) -> bool:
    """True if the streamed model ``model`` (a skeleton: its external tensors' dims and types)
    is validated by an onnxruntime run rather than tensor by tensor
    (:func:`~onnxprune.graph.memory.stream_can_run`)."""
    sizes = [tensors.data_bytes(t) for t in all_tensors(model)]
    return stream_can_run(sum(sizes), max(sizes, default=0))


@dataclass(frozen=True)
class SavedModel:
    """What :func:`save_model` wrote."""

    path: Path
    data_path: Path | None


def data_path_of(output: str | os.PathLike[str]) -> Path:
    """Where the external data of the model saved at ``output`` goes: ``<output name>.data`` next to it."""
    output = Path(output)
    return output.with_name(f"{output.name}.data")


def model_reads(name: str, path: str | os.PathLike[str] | None, *, writes: Sequence[Write] = ()) -> list[Read]:
    """The files of the model at ``path`` as inputs of a run (:class:`Read`, named ``name``):
    the model, and its external-data files when one of ``writes`` could be one of them.

    Listing the external data parses the model (a read of the whole file when it has none), so
    it is done only when a write names an existing file, other than the model, in the model's
    folder tree (where :func:`check_external_data` keeps every external-data file). A model
    that cannot be read lists only itself: loading it fails later with the reason.
    """
    if path is None:
        return []
    path = Path(path)
    reads = [Read(name, path)]
    if not path.is_file():
        return reads
    root = path.parent.resolve()  # what check_external_data reads from (a link to a model is read here)
    near = [
        Path(w.path)
        for w in writes
        if w.path is not None and os.path.isfile(w.path) and root in Path(w.path).resolve().parents
    ]
    if not any(not os.path.samefile(target, path) for target in near):
        return reads
    try:
        files = check_external_data(onnx.load(str(path), load_external_data=False), path.parent)
    except Exception:  # best effort: loading the model reports what is wrong
        return reads
    return reads + [Read(f"the external data of {name} '{path}'", data) for data in files]


def model_writes(
    output: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    external_data: bool | None = None,
    force: bool = False,
) -> list[Write]:
    """The files that saving a model at ``output`` may write (:class:`Write`): the model, and
    its external data (:func:`data_path_of`) when ``external_data`` is True, or None and that
    file exists (whether a model goes over :data:`EXTERNAL_DATA_THRESHOLD` is known only once
    it is loaded; a file that is not there has nothing to protect). With ``force`` the model
    may replace the model at ``source`` and, when it does, its data may replace the data file
    of the same name; never another input file (the input's external data as ``output``)."""
    writes = [Write("the output", output, example="model.onnx", replaceable=source, force=force)]
    if not Path(output).name:  # '' or '.': a folder, which the check of the model refuses
        return writes
    data = data_path_of(output)
    if external_data or (external_data is None and os.path.lexists(data)):
        in_place = source is not None and same_file(output, source)  # then the data may replace the input's
        replaceable = data_path_of(source) if in_place else None  # type: ignore[arg-type]
        writes.append(Write("the external data of the output", data, replaceable=replaceable, force=force))
    return writes


def refuse_input_as_output(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputError` unless the model at ``input_path`` may be saved to ``output_path``
    (:func:`onnxprune.graph.outputs.check_outputs`): a regular file or nothing, in a folder that
    takes files, never the input model or its external data (any spelling or link)."""
    writes = model_writes(output_path, source=input_path)[:1]
    check_outputs(writes, model_reads("the input model", input_path, writes=writes))


def save_external_data(model: ModelProto, path: Path, location: str, *, threshold: int = 1024) -> None:
    """Save ``model`` to ``path`` with every initializer of ``threshold`` bytes or more in one file,
    ``location`` (relative to ``path``'s folder); a file already there is replaced. The tensor
    bytes are moved out of ``model``.

    ``onnx.save_model(save_as_external_data=True, location=...)`` refuses a ``location`` that
    exists relative to the *current* folder, not to the model's: a second run from the output's
    folder failed. This marks the tensors itself (what that call does) and lets
    ``onnx.save_model`` write them next to ``path``.
    """
    data = path.parent / location
    with contextlib.suppress(FileNotFoundError):
        data.unlink()  # onnx appends to an existing file: a second write starts over
    for _, graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= threshold:
                set_external_data(tensor, location)
    onnx.save_model(model, str(path))


class StagedOutput:
    """An output being written: a staging folder next to the destination
    (:func:`onnxprune.graph.outputs.staging_dir`), renamed into place by :meth:`commit`
    (:func:`~onnxprune.graph.outputs.publish`, which checks the destination again); anything
    else (an error, a failed validation, an interruption) removes it.

    The output policy (:mod:`onnxprune.graph.outputs`) is checked when it is made: the output
    is a regular file or nothing, never the input model (unless ``force``) nor its external data.

    Use as a context manager::

        with StagedOutput(path, input_path=src) as staged:
            staged.write(model)
            del model                      # free memory before validating
            validate(staged.model_path)
            saved = staged.commit()
    """

    def __init__(
        self, path: str | os.PathLike[str], *, input_path: str | os.PathLike[str] | None = None, force: bool = False
    ) -> None:
        self.out = Path(path).absolute()
        # the model and its external data; only the model is checked now: the data is written
        # only when the model is large, and checked when it is moved into place
        self.writes = model_writes(path, source=input_path, external_data=True, force=force)
        self.reads = model_reads("the input model", input_path, writes=self.writes)
        check_outputs(self.writes[:1], self.reads)
        self.folder = self.out.parent
        self.data_name = data_path_of(self.out).name
        self.tmp_dir: Path | None = None
        self._skeleton: Path | None = None
        #: what a write from a lazy source recorded of each replaced tensor (None otherwise)
        self.records: Records | None = None
        #: with records and external data: the tensors read back as written (see
        #: :meth:`~onnxprune.graph.direct_io.DirectAppender.verified`), which the check of the file need not read
        self.verified: ReadBack | None = None

    def __enter__(self) -> StagedOutput:
        try:
            self.tmp_dir = staging_dir(self.folder, self.out.name)
        except OutputError as exc:
            raise OutputError(f"cannot write to the output folder '{self.folder}': {exc.args[0]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None

    @property
    def model_path(self) -> Path:
        if self.tmp_dir is None:
            raise RuntimeError("StagedOutput used outside its 'with' block")
        return self.tmp_dir / self.out.name

    @property
    def files(self) -> list[Path]:
        """The staged files: the model, and its external data when it has some."""
        data = self.model_path.parent / self.data_name
        return [self.model_path, *([data] if data.is_file() else [])]

    @property
    def checker_path(self) -> Path:
        """What ``onnx.checker`` should read: the staged model, or its skeleton (the same
        model with its large tensors as external references into the staged file, see
        :mod:`onnxprune.graph.skeleton`) when the streaming writer made one."""
        return self._skeleton or self.model_path

    def write(
        self,
        model: ModelProto,
        *,
        external_data: bool | None = None,
        replacements: Mapping[str, Replacement] | None = None,
        source: TensorSource | None = None,
        record: bool | None = None,
    ) -> None:
        """Write ``model`` into the staging folder.

        ``replacements`` (tensor name -> new bytes) are applied while streaming (see
        :mod:`onnxprune.graph.writer`); with external data they are applied to ``model``
        first, and the tensor bytes are moved out of ``model``.
        ``external_data``: True always, False never, None above :data:`EXTERNAL_DATA_THRESHOLD`.

        With ``source``, ``model`` is a skeleton (:func:`load_model_lazily`) whose external
        tensors are read from ``source`` one at a time as they are written, with or without
        external data (:func:`~onnxprune.graph.writer.write_model`,
        :func:`~onnxprune.graph.writer.write_external`: the same bytes as the loaded model
        written by this method); ``model`` is left as it is and :attr:`records` says what was
        written for each replaced tensor, when ``record`` says so (None: when the output is not
        run in onnxruntime, :func:`streamed_run_fits`, so that it is checked tensor by tensor
        instead).
        """
        replacements = replacements or {}
        self._skeleton = None  # a second write replaces the first one entirely
        if record is None:
            record = source is not None and not streamed_run_fits(model)
            if record and source.inline and len(source.files) == 1:
                # weights stored in the model file (:mod:`onnxprune.graph.wire`): a model that
                # was always run in onnxruntime when loaded whole still is, where memory allows
                record = not fits_in_memory(tensor_bytes(model, external=True))
        self.records = {} if source is not None and record else None
        staged_data = self.model_path.parent / self.data_name
        if external_data is None:
            external_data = tensor_bytes(model, external=source is not None) > EXTERNAL_DATA_THRESHOLD
            if external_data:
                log.info("model tensors exceed %d bytes: saving with external data", EXTERNAL_DATA_THRESHOLD)
        self.verified = {} if self.records is not None and external_data else None
        try:
            if external_data and source is not None:
                with (
                    open(self.model_path, "wb") as handle,
                    DirectAppender(staged_data, verify=self.verified is not None) as data,
                    durable(handle, data),
                ):
                    write_external(
                        model,
                        handle,
                        data,
                        self.data_name,
                        replacements,
                        source=source,
                        records=self.records,
                        verified=self.verified,
                    )
                os.chmod(staged_data, self.model_path.stat().st_mode & 0o777)
            elif external_data:
                apply_replacements(model, replacements)
                save_external_data(model, self.model_path, self.data_name)
                os.chmod(staged_data, self.model_path.stat().st_mode & 0o777)  # onnx makes it 0600
            else:
                with contextlib.suppress(FileNotFoundError):
                    staged_data.unlink()  # an earlier write's data
                with open(self.model_path, "wb") as handle, durable(handle):
                    layout = write_model(model, handle, replacements, layout=True, source=source, records=self.records)
                if layout:
                    self._skeleton = self.model_path.with_name(f".{self.out.name}.skeleton")
                    with open(self._skeleton, "wb") as handle:
                        handle.write(skeleton(model, layout, self.model_path.name).SerializeToString())
        except OSError as exc:
            raise OutputError(f"cannot write '{self.out}': {exc.strerror or exc}") from exc

    def commit(self) -> SavedModel:
        """Move the staged files into place, the data file first, then the model; each
        destination is checked again first (:func:`~onnxprune.graph.outputs.publish`)."""
        model, data = self.writes
        staged_data = self.model_path.parent / self.data_name
        moves: list[tuple[Path, Write]] = [(self.model_path, model)]
        if staged_data.exists():
            moves.insert(0, (staged_data, data))
        publish(moves, self.reads)
        return SavedModel(path=self.out, data_path=self.folder / self.data_name if len(moves) > 1 else None)


def save_model(
    model: ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    validate: Callable[[Path, Path], None] | None = None,
    input_path: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> SavedModel:
    """Write ``model`` atomically to ``path``; call ``validate(tmp_path, checker_path)``
    before moving it (see :attr:`StagedOutput.checker_path`).

    ``external_data``: ``True`` always, ``False`` never, ``None`` when the tensors exceed
    :data:`EXTERNAL_DATA_THRESHOLD`. The data file is ``<output name>.data`` next to the
    output, referenced by that relative name. Saving with external data moves the tensor
    bytes out of ``model`` (it is left without them).

    Refuses to write over ``input_path`` unless ``force``; even then the input is replaced
    only by a rename after validation, so a failure leaves it intact.
    """
    with StagedOutput(path, input_path=input_path, force=force) as staged:
        staged.write(model, external_data=external_data)
        if validate is not None:
            validate(staged.model_path, staged.checker_path)
        return staged.commit()
