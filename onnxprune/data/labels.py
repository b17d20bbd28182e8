"""Class labels for evaluation: one int64 class index per sample, in sample order.

Formats: ``.npy``; ``.npz`` (its only array, or the one named ``labels``, ``label`` or
``y``); ``.txt`` / ``.csv`` (one label per line, or all on one line separated by
whitespace or commas; a ``.csv`` may start with a header line). Labels are integers >= 0
(floats that are whole numbers are accepted); class *names* only when ``class_names`` is
given, each mapping to its index in that list.

A 2-D ``(n, k)`` table is one row per sample: k = 1 is a column of indices; for k > 1 every
row must be one-hot or a probability distribution (values in [0, 1] summing to 1), and the
label is the row's argmax. Any other table is refused (it may be ``index, label`` pairs).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxprune.data.numpy_files import load_numpy
from onnxprune.errors import DataError

NPZ_KEYS = ("labels", "label", "y")
TEXT_SUFFIXES = (".txt", ".csv")


def load_labels(path: str | Path, *, num_samples: int | None, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Read labels (see module docstring) and check there is one per sample.

    Raises DataError for a missing or unreadable file, values that are not class indices,
    or a count other than ``num_samples`` (when given).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        raw = _read_text(path, class_names)
    elif suffix in (".npy", ".npz"):
        raw = _read_numpy(path)
    else:
        raise DataError(f"labels file {path} must be .npy, .npz, .txt or .csv, not '{path.suffix}'")
    labels = _to_indices(raw, path, class_names)
    if num_samples is not None and len(labels) != num_samples:
        raise DataError(
            f"{path} has {len(labels)} labels but the data has {num_samples} samples: give one label per sample"
        )
    return labels


def _read_numpy(path: Path) -> np.ndarray:
    try:
        loaded = load_numpy(path, "labels file")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"labels file {path} is not a readable {path.suffix} file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = loaded.files
        key = keys[0] if len(keys) == 1 else next((k for k in NPZ_KEYS if k in keys), None)
        if key is None:
            raise DataError(
                f"labels file {path} holds arrays {', '.join(keys) or '(none)'}; name the labels "
                f"{' or '.join(NPZ_KEYS)}, or save them alone"
            )
        try:
            return loaded[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"labels file {path}: cannot read array '{key}': {exc}") from None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_text(path: Path, class_names: Sequence[str] | None) -> np.ndarray:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"labels file {path} cannot be read as text: {exc}") from None
    rows = [
        (number, [t for t in re.split(r"[\s,]+", line.strip()) if t])
        for number, line in enumerate(text.splitlines(), 1)
    ]
    rows = [(number, tokens) for number, tokens in rows if tokens]
    known = set(class_names or ())
    if path.suffix.lower() == ".csv" and rows and not all(_is_number(t) or t in known for t in rows[0][1]):
        rows = rows[1:]  # a header line
    if not rows:
        raise DataError(f"labels file {path} holds no labels")
    widths = {len(tokens) for _, tokens in rows}
    if len(rows) == 1 or widths == {1}:
        tokens = [(number, t) for number, row in rows for t in row]
        if all(_is_number(t) for _, t in tokens):
            return np.asarray([float(t) for _, t in tokens])
        for number, token in tokens:
            if not _is_number(token) and token not in known:
                hint = "it is not a known class name" if class_names is not None else "give class indices"
                raise DataError(f"labels file {path} line {number}: '{token}' is not a class index ({hint})")
        return np.asarray([t for _, t in tokens])
    if len(widths) > 1:
        raise DataError(f"labels file {path} has rows of different lengths {sorted(widths)}; give one label per line")
    for number, tokens in rows:
        bad = next((t for t in tokens if not _is_number(t)), None)
        if bad is not None:
            raise DataError(f"labels file {path} line {number}: '{bad}' is not a number")
    return np.asarray([[float(t) for t in tokens] for _, tokens in rows])


def _to_indices(raw: np.ndarray, path: Path, class_names: Sequence[str] | None) -> np.ndarray:
    """Class indices from a 1-D array of numbers or names, or a one-hot / probability table."""
    if raw.dtype.kind in "US":
        if class_names is None:
            raise DataError(f"labels file {path} holds class names; give class indices, or the list of class names")
        index = {name: i for i, name in enumerate(class_names)}
        flat = [str(v) for v in np.ravel(raw)]
        unknown = sorted({name for name in flat if name not in index})
        if unknown:
            raise DataError(
                f"labels file {path} names unknown class(es) {', '.join(unknown[:5])}; the classes are: "
                f"{', '.join(class_names)}"
            )
        raw = np.asarray([index[name] for name in flat], dtype=np.int64).reshape(raw.shape)
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise DataError(f"labels file {path} holds {raw.dtype} values; give integer class indices")
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim == 2:
        table = raw.astype(np.float64)
        if not (np.all(table >= 0) and np.all(table <= 1) and np.allclose(table.sum(axis=1), 1.0, atol=1e-3)):
            raise DataError(
                f"labels file {path} is a {raw.shape[0]}x{raw.shape[1]} table whose rows are not one-hot "
                "(or probabilities summing to 1); give one class index per sample"
            )
        return np.argmax(table, axis=1).astype(np.int64)
    if raw.ndim != 1:
        raise DataError(f"labels file {path} has shape {raw.shape}; give one class index per sample (1-D)")
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise DataError(f"labels file {path} holds non-integer values; give integer class indices")
    if raw.size and raw.min() < 0:
        raise DataError(f"labels file {path} holds negative values (e.g. {raw.min()}); class indices are >= 0")
    return raw.astype(np.int64)
