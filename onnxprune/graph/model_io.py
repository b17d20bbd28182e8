"""Loading models safely and saving them atomically.

Loading refuses external-data locations that escape the model's folder (absolute paths,
``..`` components, symbolic links pointing out): ONNX loaders that follow them read any
file on the machine. Saving writes into a temporary folder next to the destination,
validates there, then renames into place, so a reader never sees a half-written model and
an interrupted run leaves the destination as it was. Every other file onnxprune writes (HTML
reports, JSON results, plans, the sensitivity cache) goes through :func:`write_file`, the same
policy for one file: a temporary file in the destination's folder, renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import ModelProto, TensorProto

from onnxprune.errors import ModelLoadError, OutputError, UnsafeModelError, opt
from onnxprune.graph import tensors
from onnxprune.graph.skeleton import skeleton
from onnxprune.graph.walk import all_tensors
from onnxprune.graph.writer import Replacement, apply_replacements, write_model

log = logging.getLogger(__name__)

#: Above this many bytes of tensor data a model is saved with external data: protobuf
#: cannot serialize messages of 2 GiB or more, and the graph itself needs room too.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _external_location(tensor: TensorProto) -> tuple[str, int, int | None]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        offset = length = -1
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(
            f"external data of tensor '{tensor.name}' has an invalid offset or length "
            f"({info.get('offset')!r}, {info.get('length')!r}): the model is malformed; export it again"
        )
    return location, offset, length


def check_external_data(model: ModelProto, base_dir: Path) -> list[Path]:
    """Check every external-data reference of ``model`` against ``base_dir``.

    Returns the distinct files referenced. Raises :class:`UnsafeModelError` for a location
    outside ``base_dir`` (or a hard-linked file, which may be any file) and
    :class:`ModelLoadError` for a missing, symbolically linked or too short file (onnx
    refuses links as external data).
    """
    root = base_dir.resolve()
    files: dict[Path, None] = {}
    for tensor in all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location, offset, length = _external_location(tensor)
        where = f"external data of tensor '{tensor.name}'"
        if not location:
            raise ModelLoadError(f"{where} has no location: the model is malformed; export it again")
        pure = Path(location)
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
        if length is not None and offset + length > target.stat().st_size:
            raise ModelLoadError(
                f"{where} is truncated: '{location}' has {target.stat().st_size} bytes, the "
                f"tensor needs bytes {offset}..{offset + length}"
            )
        files[target] = None
    return list(files)


def load_model(path: str | os.PathLike[str]) -> ModelProto:
    """Load an ONNX model with its external data, refusing anything unsafe or malformed."""
    return load_model_with_files(path)[0]


def load_model_with_files(path: str | os.PathLike[str]) -> tuple[ModelProto, list[Path]]:
    """:func:`load_model`, and the files it was read from (the model, then its external data)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"'{path}' does not exist: check the path of the input model")
    if not path.is_file():
        raise ModelLoadError(f"'{path}' is not a file: give the path of an .onnx model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"'{path}' is empty: not an ONNX model; export or copy it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
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
    data_files = check_external_data(model, path.parent)
    if data_files:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                f"cannot read the external data of '{path}' ({detail}); save the model again with its "
                "external data as plain files in its folder"
            ) from exc
    return model, [path, *data_files]


def tensor_bytes(model: ModelProto) -> int:
    """Bytes of tensor data held in the model (not external), from dims and dtypes."""
    return sum(tensors.data_bytes(t) for t in all_tensors(model) if t.data_location != TensorProto.EXTERNAL)


@dataclass(frozen=True)
class SavedModel:
    """What :func:`save_model` wrote."""

    path: Path
    data_path: Path | None


def write_file(data: str | bytes, path: str | os.PathLike[str], *, what: str = "file", example: str = "") -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, keeping an existing file's
    permissions; returns the path. Errors are one-line :class:`OutputError` naming the file as
    ``what`` (``"report"``), with ``example`` a file name to suggest for a folder."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    folder = target.parent
    if target.is_dir():
        hint = f": give a file name such as {example}" if example else ": give a file name"
        raise OutputError(f"the {what} path '{target}' is a folder{hint}")
    if not folder.is_dir():
        raise OutputError(f"the {what} folder '{folder}' does not exist: create it first")
    mode = (target.stat().st_mode & 0o777) if target.exists() else 0o644
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write the {what} into '{folder}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write the {what} '{target}': {exc.strerror or exc}") from None
        raise
    log.info("wrote %s %s (%d bytes)", what, target, len(payload))
    return target


def refuse_input_as_output(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputError` if ``output_path`` is the input file (any spelling or link)."""
    out, source = Path(output_path).absolute(), Path(input_path).absolute()
    if out.resolve() == source.resolve() or (out.exists() and source.exists() and os.path.samefile(out, source)):
        raise OutputError(
            f"the output '{output_path}' is the input model: choose another output path "
            f"(or pass {opt('force', True)} to replace the input)"
        )


class StagedOutput:
    """An output being written: a temporary folder next to the destination, renamed into
    place by :meth:`commit`; anything else (an error, a failed validation) removes it.

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
        if input_path is not None and not force:
            refuse_input_as_output(input_path, path)
        self.folder = self.out.parent
        if not self.folder.is_dir():
            raise OutputError(f"the output folder '{self.folder}' does not exist: create it first")
        if self.out.is_dir():
            raise OutputError(f"the output '{path}' is a folder: give a file name such as model.onnx")
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to the output folder '{self.folder}' (permission denied)")
        self.data_name = f"{self.out.name}.data"
        self.tmp_dir: Path | None = None
        self._skeleton: Path | None = None

    def __enter__(self) -> StagedOutput:
        try:
            self.tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.folder))
        except OSError as exc:
            raise OutputError(f"cannot write to the output folder '{self.folder}': {exc.strerror}") from exc
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
    ) -> None:
        """Write ``model`` into the staging folder.

        ``replacements`` (tensor name -> new bytes) are applied while streaming (see
        :mod:`onnxprune.graph.writer`); with external data they are applied to ``model``
        first, and the tensor bytes are moved out of ``model``.
        ``external_data``: True always, False never, None above :data:`EXTERNAL_DATA_THRESHOLD`.
        """
        replacements = replacements or {}
        self._skeleton = None  # a second write replaces the first one entirely
        if external_data is None:
            external_data = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
            if external_data:
                log.info("model tensors exceed %d bytes: saving with external data", EXTERNAL_DATA_THRESHOLD)
        try:
            if external_data:
                apply_replacements(model, replacements)
                onnx.save_model(
                    model,
                    str(self.model_path),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=self.data_name,
                    size_threshold=1024,
                )
            else:
                with open(self.model_path, "wb") as handle:
                    layout = write_model(model, handle, replacements, layout=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                if layout:
                    self._skeleton = self.model_path.with_name(f".{self.out.name}.skeleton")
                    with open(self._skeleton, "wb") as handle:
                        handle.write(skeleton(model, layout, self.model_path.name).SerializeToString())
        except OSError as exc:
            raise OutputError(f"cannot write '{self.out}': {exc.strerror}") from exc

    def commit(self) -> SavedModel:
        """Move the staged files into place: the data file first, then the model."""
        data_path = None
        staged_data = self.model_path.parent / self.data_name
        if staged_data.exists():
            data_path = self.folder / self.data_name
            os.replace(staged_data, data_path)
        os.replace(self.model_path, self.out)
        return SavedModel(path=self.out, data_path=data_path)


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
