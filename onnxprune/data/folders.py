"""Folders of model input samples: ONNX test-data sets and per-sample ``.npy``/``.npz`` files.

This module finds, reads and checks files, and hands back each sample as the arrays it
stores, keyed by model input name (:class:`FolderSample`); it never batches, reshapes or
casts: normalizing samples against the model's inputs and batching them is the caller's.
Reading is lazy: a folder's entries are listed when a reader is opened, each file is read
when its sample is asked for, so a folder of 100,000 files is never in memory at once.

**What a folder holds** (:func:`folder_kind`; hidden entries, names starting with ``.``,
are never looked at):

- ``"test-data"``: an ONNX test-data folder, as the ONNX model zoo and
  ``onnxruntime_perf_test`` use: subfolders ``test_data_set_<n>/`` of which one at least
  holds a ``.pb`` file, or a folder that is itself one set (``input_<k>.pb`` files in it);
- ``"samples"``: ``.npy`` / ``.npz`` sample files in the folder itself and no image anywhere
  under it (an image reader would read those, recursively);
- ``"images"``: anything else, left to :mod:`onnxprune.data.images` (which says when it
  finds no image);
- None: a folder with nothing in it.

**ONNX test-data sets** (:func:`read_test_data`): each set is one sample. Sets are read in
the order of their number (``test_data_set_2`` before ``test_data_set_10``); in a set,
``input_<k>.pb`` is a serialized ``onnx.TensorProto``; ``output_*.pb`` and any other file are
ignored (logged at debug level). A file feeds the model input its tensor ``name`` names, when
that is one of the model's inputs; else the input at its position ``k`` (the k-th model
input). Two files feeding one input, a file that feeds none (its name is no model input and
``k`` is past the last input), two files of one number (``input_1.pb``, ``input_01.pb``) and a
model input no file feeds are errors that name the set, the file and the model's inputs.
A tensor is refused before it is converted when its file does not parse, holds external
data (``data_location == EXTERNAL``: paths written in a data file are never followed), has
no numeric element type (STRING, COMPLEX64/128, UNDEFINED, a number ONNX does not define),
a name that is not UTF-8, or a payload other than its dims say
(:func:`onnxprune.graph.sanity.check_payload`). A file larger than
:data:`MAX_TENSOR_FILE_BYTES` (what protobuf can parse) is refused unread. Values come out
as ``onnx.numpy_helper.to_array`` gives them (bfloat16 and float8 as ``ml_dtypes`` types).

**Per-sample files** (:func:`read_sample_files`): every ``*.npy`` / ``*.npz`` file (suffix in
any case) in the folder itself (not in subfolders), in natural order of their names
(``sample_2`` before ``sample_10``, :func:`natural_key`), one sample each. An ``.npz`` holds
one array per model input, keyed by input name (a missing or unknown key is an error); an
``.npy`` holds the single array of a one-input model. One folder holds one of the two, never
both. Files are opened with :func:`onnxprune.data.numpy_files.load_numpy` (headers checked
before data is read, never a pickle). Arrays must hold booleans, integers or floats.
Not samples, and skipped (logged at debug level): any other file (``README.md``,
``.DS_Store``, images), subfolders, hidden files (``._sample_0.npz`` written by macOS) and
files whose name contains ``labels`` (``labels.npy``, ``val_labels.npz``: the class labels
kept next to the samples, read by :mod:`onnxprune.data.labels`).

**Files are the folder's own.** A file (or a set folder) may be a symbolic link only to
somewhere inside the folder read (compared after resolving both), as external data of a
model must stay in the model's folder; a link out of it, and anything that is no regular
file (a FIFO, a device), is refused. ``limit`` stops a reader after that many samples.

Every refusal is a one-line :class:`~onnxprune.errors.DataError` naming the file (as
``<folder name>/<set>/<file>``) and saying what to do; file and tensor names that are not
printable are shown quoted, so no file can forge a line or an option mark.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from onnxprune.data.checks import check_count
from onnxprune.data.images import is_image
from onnxprune.data.numpy_files import load_numpy
from onnxprune.errors import DataError, ModelLoadError
from onnxprune.graph.sanity import MALFORMED, check_payload

log = logging.getLogger(__name__)

FolderKind = Literal["test-data", "samples", "images", None]

#: The largest ``.pb`` file read: protobuf parses no message of 2 GiB or more.
MAX_TENSOR_FILE_BYTES = 2**31 - 1
#: Element types that hold no real numbers a model input could be fed from a test-data file.
REFUSED_TYPES = frozenset({TensorProto.UNDEFINED, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128})
#: Suffixes of per-sample files (compared in lower case).
SAMPLE_SUFFIXES = (".npy", ".npz")

_SET = re.compile(r"test_data_set_([0-9]+)")
_INPUT = re.compile(r"input_([0-9]+)\.pb")
_DIGITS = re.compile(r"(\d+)")
_WRITE_PB = "write it again with onnx.numpy_helper.from_array(array, name).SerializeToString()"


@dataclass(frozen=True)
class FolderSample:
    """One sample read from a data folder.

    source: where it came from, relative, for messages (``"heldout/test_data_set_3"``,
        ``"samples/sample_007.npz"``).
    arrays: model input name -> the array as stored (no batch axis added, no cast), in the
        model's input order.
    """

    source: str
    arrays: dict[str, np.ndarray]


def natural_key(name: str) -> tuple[tuple[object, ...], str]:
    """Sort key that orders the numbers in a name by value: ``sample_2`` before ``sample_10``.

    Text parts compare case-folded, number parts as integers; ties (``s_2``, ``s_02``) fall
    back to the name itself, so the order is total and the same on every file system.
    """
    parts = _DIGITS.split(name)
    return tuple(int(part) if index % 2 else part.casefold() for index, part in enumerate(parts)), name


def folder_kind(path: Path) -> FolderKind:
    """What a data folder holds: "test-data" (an ONNX test-data folder: subfolders test_data_set_*/ with input_*.pb,
    or itself one test_data_set with input_*.pb files), "samples" (*.npy / *.npz files, one per sample, no images),
    "images" (anything else: left to the image reader), or None for an empty folder.

    The exact rules are in the module docstring (hidden entries are not looked at; a set
    folder counts when it holds some ``.pb`` file; images are looked for recursively).
    Raises DataError when ``path`` is no readable folder.
    """
    path = Path(path)
    entries = _entries(path, _label(path))
    if not entries:
        return None
    if any(_INPUT.fullmatch(entry.name) and _is_file(entry) for entry in entries):
        return "test-data"
    for entry in entries:
        if _SET.fullmatch(entry.name) and _is_dir(entry) and _holds_pb(Path(entry.path)):
            return "test-data"
    if any(_is_sample_name(entry.name) and _is_file(entry) for entry in entries) and not _holds_image(path):
        return "samples"
    return "images"


def read_test_data(path: Path, input_names: Sequence[str], *, limit: int | None = None) -> Iterator[FolderSample]:
    """The samples of an ONNX test-data folder, one per ``test_data_set_<n>``, in set order.

    ``path`` holds ``test_data_set_<n>/`` folders, or is one set itself (its ``input_<k>.pb``
    files in it). Each sample maps every name of ``input_names`` (the model's inputs, in
    order) to its tensor's values; how files are matched to inputs and which are refused is
    in the module docstring. The folder is listed now (a folder holding no set, or both sets
    and ``input_*.pb`` files, is an error here); each set is read when its sample is asked for.

    Raises DataError (one line, naming the set and file), OptionError for a bad ``limit``.
    """
    path = Path(path)
    names = _checked_names(input_names)
    check_count(limit, "the number of samples")
    label = _label(path)
    entries = _entries(path, label)
    sets = sorted(
        ((int(match.group(1)), entry.name) for entry in entries if (match := _SET.fullmatch(entry.name))),
        key=lambda item: (item[0], natural_key(item[1])),
    )
    sets = [item for item in sets if _is_dir_path(path / item[1])]
    own_inputs = [entry.name for entry in entries if _INPUT.fullmatch(entry.name)]
    if sets and own_inputs:
        raise DataError(
            f"{label} holds both test_data_set_* folders and input_*.pb files ({_shown(own_inputs[0])}): keep one "
            "layout, a folder of test_data_set_<n>/ folders or a single set"
        )
    if not sets and not own_inputs:
        raise DataError(
            f"{label} holds no test_data_set_<n>/ folders and no input_<k>.pb files: an ONNX test-data folder holds "
            "test_data_set_0/input_0.pb, ... (serialized onnx.TensorProto)"
        )
    for entry in entries:
        if not (_SET.fullmatch(entry.name) or _INPUT.fullmatch(entry.name)):
            log.debug("%s: %s is no test-data set; ignored", label, _shown(entry.name))
    root = path.resolve()
    folders = [(path / name, f"{label}/{name}") for _, name in sets] if sets else [(path, label)]
    return _read_sets(folders, root, names, limit)


def read_sample_files(path: Path, input_names: Sequence[str], *, limit: int | None = None) -> Iterator[FolderSample]:
    """The samples of a folder of per-sample ``.npy`` / ``.npz`` files, one per file, in natural order.

    ``input_names`` are the model's inputs, in order. The folder is listed now: it is an
    error here when it holds no sample file, holds both ``.npy`` and ``.npz`` files, or
    ``.npy`` files for a model of several inputs; each file is read when its sample is asked
    for (the rules are in the module docstring). Each sample maps every input name to the
    array its file stores for it.

    Raises DataError (one line, naming the file), OptionError for a bad ``limit``.
    """
    path = Path(path)
    names = _checked_names(input_names)
    check_count(limit, "the number of samples")
    label = _label(path)
    files = []
    for entry in _entries(path, label):
        if not _is_sample_name(entry.name):
            log.debug("%s: %s is no .npy/.npz sample file; ignored", label, _shown(entry.name))
        elif not _is_file(entry):
            log.debug("%s: %s is no file (a folder or a broken link); ignored", label, _shown(entry.name))
        else:
            files.append(entry.name)
    if not files:
        raise DataError(
            f"{label} holds no .npy or .npz sample files: save one file per sample, np.savez(path, "
            f"{_keywords(names)}) or np.save for a one-input model"
        )
    files.sort(key=natural_key)
    by_suffix = {suffix: [name for name in files if name.lower().endswith(suffix)] for suffix in SAMPLE_SUFFIXES}
    if all(by_suffix.values()):
        raise DataError(
            f"{label} mixes .npy files ({_shown(by_suffix['.npy'][0])}) and .npz files ({_shown(by_suffix['.npz'][0])}): "
            "keep one kind of sample file in a folder"
        )
    if by_suffix[".npy"] and len(names) != 1:
        raise DataError(
            f"{label} holds .npy files ({_shown(files[0])}), one unnamed array each, but the model has {len(names)} "
            f"inputs ({', '.join(names)}): save each sample with np.savez(path, {_keywords(names)})"
        )
    return _read_files(path, files, label, names, limit)


# ---------------------------------------------------------------------------------------
# Test-data sets


def _read_sets(
    folders: list[tuple[Path, str]], root: Path, names: tuple[str, ...], limit: int | None
) -> Iterator[FolderSample]:
    for count, (folder, source) in enumerate(folders):
        if limit is not None and count >= limit:
            return
        yield FolderSample(source=source, arrays=_read_set(folder, source, root, names))


def _read_set(folder: Path, source: str, root: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One set's arrays, keyed and ordered by model input (see module docstring)."""
    by_number: dict[int, str] = {}
    for entry in _entries(folder, source):
        match = _INPUT.fullmatch(entry.name)
        if match is None:
            log.debug("%s: %s is no input_<k>.pb file; ignored", source, _shown(entry.name))
            continue
        number = int(match.group(1))
        if number in by_number:
            first, second = sorted((by_number[number], entry.name), key=natural_key)
            raise DataError(
                f"{source}: {first} and {second} are both input number {number}: keep one file per input position"
            )
        by_number[number] = entry.name
    if not by_number:
        raise DataError(
            f"{source} holds no input_<k>.pb files: a test-data set holds input_0.pb, input_1.pb ... "
            f"(one serialized onnx.TensorProto per model input: {', '.join(names)})"
        )
    files = [(number, by_number[number]) for number in sorted(by_number)]
    tensors = {name: _read_tensor(folder / name, f"{source}/{name}", root) for _, name in files}
    fed: dict[str, tuple[str, str]] = {}  # model input -> (file, how it was matched)
    inputs = ", ".join(names)
    for number, file in files:
        tensor_name = tensors[file].name
        if tensor_name in names:
            target, how = tensor_name, f"by its tensor name '{tensor_name}'"
            if number < len(names) and names[number] != tensor_name:
                log.debug("%s: %s is named '%s': fed by name, not as input %d", source, file, tensor_name, number)
        elif number < len(names):
            target, how = names[number], f"by its position {number}"
            if tensor_name:
                log.debug("%s: %s is named %s, no model input: fed by position", source, file, _quoted(tensor_name))
        else:
            named = f"its tensor name {_quoted(tensor_name)} is" if tensor_name else "it has no tensor name, which is"
            raise DataError(
                f"{source}: {file} feeds no model input: {named} no model input and position {number} is past "
                f"the model's {len(names)} input(s) ({inputs}); remove the file or name its tensor after an input"
            )
        if target in fed:
            other, other_how = fed[target]
            raise DataError(
                f"{source}: {other} ({other_how}) and {file} ({how}) both feed input '{target}'; the model's inputs "
                f"are: {inputs}: name each tensor after the input it feeds"
            )
        fed[target] = (file, how)
    missing = [name for name in names if name not in fed]
    if missing:
        raise DataError(
            f"{source}: no file feeds input(s) {', '.join(missing)} (files: {', '.join(f for _, f in files)}); "
            f"the model's inputs are: {inputs}: add input_<k>.pb for each, its tensor named after the input"
        )
    return {name: _to_array(tensors[fed[name][0]], f"{source}/{fed[name][0]}") for name in names}


def _read_tensor(path: Path, source: str, root: Path) -> TensorProto:
    """The checked TensorProto of one ``.pb`` file (see module docstring); its values not yet read."""
    target = _own_file(path, source, root)
    try:
        size = target.stat().st_size
        if size > MAX_TENSOR_FILE_BYTES:
            raise DataError(
                f"{source} is {size:,} bytes, more than the {MAX_TENSOR_FILE_BYTES:,} a protobuf message can hold: "
                "it is no single tensor; give a smaller sample, or per-sample .npy/.npz files"
            )
        data = target.read_bytes()
    except OSError as exc:
        raise DataError(f"{source} cannot be read: {exc.strerror or exc}") from None
    tensor = TensorProto()
    try:
        tensor.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{source} is no serialized onnx.TensorProto ({_oneline(exc)}): {_WRITE_PB}") from None
    if not isinstance(tensor.name, str):  # protobuf hands back bytes for a name that is not UTF-8
        raise DataError(f"{source} holds a tensor whose name is not UTF-8 text: the file is corrupt; {_WRITE_PB}")
    if tensor.data_location == TensorProto.EXTERNAL:
        raise DataError(
            f"{source} keeps its values in external data, which onnxprune does not follow from a data file: "
            "store them in the file itself (onnx.numpy_helper.from_array, no external data)"
        )
    if tensor.data_type in REFUSED_TYPES or tensor.data_type not in TensorProto.DataType.values():
        raise DataError(
            f"{source} holds a tensor of element type {_type_name(tensor.data_type)}, which no model input is fed "
            f"with here: give booleans, integers or floats; {_WRITE_PB}"
        )
    try:
        check_payload(source, tensor)
    except ModelLoadError as exc:
        reason = str(exc).removesuffix(f": {MALFORMED}")
        raise DataError(f"{reason}: the file is corrupt or was written by hand; {_WRITE_PB}") from None
    return tensor


def _to_array(tensor: TensorProto, source: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises whatever its converters meet (ValueError, TypeError, KeyError ...)
        raise DataError(f"{source}: its tensor cannot be read ({_oneline(exc)}); {_WRITE_PB}") from None


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"{data_type} (no type ONNX defines)"


# ---------------------------------------------------------------------------------------
# Per-sample files


def _read_files(
    folder: Path, files: list[str], label: str, names: tuple[str, ...], limit: int | None
) -> Iterator[FolderSample]:
    root = folder.resolve()
    for count, name in enumerate(files):
        if limit is not None and count >= limit:
            return
        source = f"{label}/{name}"
        yield FolderSample(source=source, arrays=_read_file(folder / name, source, root, names))


def _read_file(path: Path, source: str, root: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    _own_file(path, source, root)  # the file is opened by the name given, for messages
    npz = path.name.lower().endswith(".npz")
    save = f"np.savez(path, {_keywords(names)})" if npz else "np.save(path, array)"
    try:
        loaded = load_numpy(path, "sample file")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, zlib.error) as exc:
        raise DataError(f"{source} is no readable {'.npz' if npz else '.npy'} file ({_oneline(exc)}): {save}") from None
    if isinstance(loaded, np.ndarray):
        if npz:
            raise DataError(f"{source} holds a single .npy array, not an .npz archive keyed by input name: {save}")
        arrays = {names[0]: loaded}
    else:
        with loaded:
            if not npz:
                raise DataError(f"{source} is an .npz archive named .npy: rename it to .npz (keyed by input name)")
            keys = list(loaded.files)
            missing = [name for name in names if name not in keys]
            unknown = [key for key in keys if key not in names]
            if missing or unknown:
                parts = [f"missing input(s) {', '.join(missing)}"] if missing else []
                parts += [f"unknown key(s) {', '.join(_shown(key) for key in unknown)}"] if unknown else []
                raise DataError(
                    f"{source}: {'; '.join(parts)}; the model's inputs are: {', '.join(names)}: key each array by "
                    f"the input it feeds, {save}"
                )
            arrays = {}
            for name in names:
                try:
                    arrays[name] = loaded[name]
                except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                    raise DataError(f"{source}: its array '{name}' cannot be read ({_oneline(exc)}): {save}") from None
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            what = f"its array '{name}'" if npz else "its array"
            raise DataError(
                f"{source}: {what} holds {array.dtype} values; give booleans, integers or floats of the "
                "model input's type"
            )
    return arrays


def _is_sample_name(name: str) -> bool:
    lower = name.lower()
    return not name.startswith(".") and lower.endswith(SAMPLE_SUFFIXES) and "labels" not in lower


# ---------------------------------------------------------------------------------------
# Folders and files


def _label(path: Path) -> str:
    """The folder's name as messages show it (``heldout``; ``.`` spelled as the folder's name)."""
    return _shown(Path(os.path.abspath(path)).name or str(path))


def _entries(path: Path, label: str) -> list[os.DirEntry[str]]:
    """The folder's entries, hidden ones left out; DataError when it is no readable folder."""
    try:
        with os.scandir(path) as found:
            return [entry for entry in found if not entry.name.startswith(".")]
    except FileNotFoundError:
        raise DataError(f"data folder {label} does not exist ({_shown(str(path))})") from None
    except NotADirectoryError:
        raise DataError(f"{label} is no folder ({_shown(str(path))}): give a folder of samples") from None
    except OSError as exc:
        raise DataError(f"data folder {label} cannot be read ({_shown(str(path))}): {exc.strerror or exc}") from None


def _own_file(path: Path, source: str, root: Path) -> Path:
    """``path`` resolved, once it is a regular file inside ``root`` (see module docstring)."""
    try:
        target = path.resolve()
        regular = target.is_file()
    except (OSError, RuntimeError) as exc:  # a loop of links, a name the system refuses
        raise DataError(f"{source} cannot be opened: {_oneline(exc)}") from None
    if target != root and root not in target.parents:
        raise DataError(
            f"{source} is a symbolic link to {_shown(str(target))}, outside the data folder: refusing to read it; "
            "copy the file into the folder"
        )
    if not regular:
        raise DataError(f"{source} is no regular file (a folder, a pipe or a device): remove it from the folder")
    return target


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_dir_path(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _holds_pb(folder: Path) -> bool:
    try:
        with os.scandir(folder) as found:
            return any(entry.name.endswith(".pb") and not entry.name.startswith(".") for entry in found)
    except OSError:
        return False


def _holds_image(folder: Path) -> bool:
    """Whether some image lies under ``folder``, hidden files and folders skipped (stops at the first)."""
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image(name) for name in files):
            return True
    return False


# ---------------------------------------------------------------------------------------
# Arguments and text


def _checked_names(input_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(input_names)
    if not names:
        raise DataError("the model has no inputs, so there is no data to feed it")
    return names


def _keywords(names: Sequence[str]) -> str:
    return ", ".join(f"{name}=..." if name.isidentifier() else f"**{{{name!r}: ...}}" for name in names)


def _shown(text: str) -> str:
    """``text`` as is when printable, else quoted with escapes (one line, no control characters)."""
    return text if text.isprintable() else repr(text)


def _quoted(text: str) -> str:
    return repr(text) if not text.isprintable() else f"'{text}'"


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
