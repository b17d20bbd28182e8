"""The error contract of the command line, as the tests check it: one place for all of them.

A run that fails exits with the error's code and prints exactly one line on stderr, starting
with :data:`PREFIX`, holding no traceback and no staging path (``.tmp``), and no "internal
error" unless the code is :data:`INTERNAL`; :func:`fails_cleanly` also checks that nothing
under a folder was written, removed or changed (:func:`snapshot`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from click.testing import CliRunner, Result

from onnxprune.cli import main

PREFIX = "onnxprune: error: "
INTERNAL = 70


def cli(*args: str | Path) -> Result:
    """One in-process run of ``onnxprune`` with ``args``."""
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a link's target (not followed), folders."""
    entries: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            entries[key] = "<dir>"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def error_line(result: Result, code: int, *fragments: str) -> str:
    """Assert the error contract of one run (see module docstring); returns the message
    without :data:`PREFIX`."""
    stderr = result.stderr
    assert "Traceback" not in stderr and "Traceback" not in result.stdout, stderr
    assert isinstance(result.exception, SystemExit), f"{result.exception!r} escaped: {stderr}"
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}: {stderr}"
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr}"
    assert lines[0].startswith(PREFIX), lines[0]
    message = lines[0][len(PREFIX) :]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert ".tmp" not in message, f"a temporary path leaked into the message: {message}"
    if code != INTERNAL:
        assert "internal error" not in message, message
    return message


def fails_cleanly(root: Path, code: int, *args: str | Path, fragments: tuple[str, ...] = ()) -> str:
    """Run the CLI, assert the error contract and that nothing under ``root`` changed."""
    before = snapshot(root)
    message = error_line(cli(*args), code, *fragments)
    assert snapshot(root) == before, "the run wrote, removed or changed files"
    return message
