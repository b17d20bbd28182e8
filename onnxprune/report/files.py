"""Writing a report page: atomically (a temporary file in the same folder, renamed into
place), keeping an existing file's permissions, one-line errors for a bad path."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from onnxprune.errors import OutputError

log = logging.getLogger(__name__)


def write_page(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path written."""
    target = Path(path)
    page = text.encode("utf-8")
    folder = target.parent
    if target.is_dir():
        raise OutputError(f"the report path '{target}' is a folder: give a file name such as report.html")
    if not folder.is_dir():
        raise OutputError(f"the report folder '{folder}' does not exist: create it first")
    mode = (target.stat().st_mode & 0o777) if target.exists() else 0o644
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write the report into '{folder}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(page)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write the report '{target}': {exc.strerror or exc}") from None
        raise
    log.info("wrote report %s (%d bytes)", target, len(page))
    return target
