"""The output policy: which paths onnxprune may write, and how every file is written.

Every file onnxprune writes (models and their external data, JSON, HTML reports, plans, the
sensitivity cache) goes through this module; nothing but the outputs a run declares is ever
created or replaced.

1. **What may be written** (:func:`check_outputs`, before any work). A path is written only
   if it is a regular file or absent, never a folder, a device, a named pipe or a socket
   (links are followed to decide). It is never the same file (same device and inode, however
   it is spelled, through symbolic or hard links) as an input of the run (:class:`Read`: the
   model and its external data, calibration or evaluation data, labels, a plan), nor as
   another output of the same run; only the input model may be replaced, when the caller
   says so (``force``). Its folder exists and takes new files.
2. **How it is written.** Into a hidden staging file or folder in the destination's folder
   (:func:`staging_file`, :func:`staging_dir`), named ``.NAME.onnxprune-PID-HOST-XXXXXXXX.tmp``;
   then :func:`publish` checks each destination again (it may have become a device or a link
   to an input since the check) and renames the staged file over it, so a reader sees the old
   file or the new one, never a part of one.
3. **What is left behind.** An error removes the staging, and so does SIGINT, SIGTERM or
   SIGHUP in the command line. A process that is killed (SIGKILL, a power cut) leaves it:
   the next write into that folder removes staging of ours (our uid, our name pattern) whose
   process is gone from this host, or that is older than :data:`STALE_AFTER`
   (:func:`sweep_stale`).

Messages name a file by what it is (``"the output"``, ``"the JSON"``) or by the option that
gave it (``opt("report")``, which the command line spells ``--report``), then its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from onnxprune.errors import OutputError, opt

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Staging of a process that may still run (another host, or a pid reused) is removed once
#: this old: a day, longer than any run spends between staging a file and renaming it.
STALE_AFTER = 24 * 3600

#: Our staging names: ``.NAME.onnxprune-PID-HOST-RANDOM.tmp`` (HOST: a hash of the host name).
STAGING_NAME = re.compile(r"^\..*\.onnxprune-(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-[a-z0-9_]+\.tmp$", re.DOTALL)

#: Bytes of the destination's name kept in a staging name (file names have 255 bytes).
_NAME_PART = 100

#: :func:`durable`: bytes a file may be written ahead of the disk before its write-back starts,
#: and how often (seconds) its size is looked at.
SYNC_EVERY = 32 << 20
SYNC_POLL = 0.05

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class Read:
    """A file the run reads; ``name`` says what it is in messages (``"the input model"``,
    ``f"the {opt('labels')} file"``)."""

    name: str
    path: PathLike | None


@dataclass(frozen=True)
class Write:
    """A file the run writes. ``name`` names it in messages (``"the output"``, ``opt("report")``);
    ``example`` is a file name to suggest when the path is a folder. ``replaceable`` is the one
    input file the caller's ``force`` lets this output replace (the input model): it does when
    ``force`` is True, and a message suggests ``force`` otherwise."""

    name: str
    path: PathLike | None
    example: str = ""
    replaceable: PathLike | None = None
    force: bool = False


def kind_of(path: PathLike) -> str | None:
    """What ``path`` is when it is not a regular file (``"a folder"``, ``"a named pipe (FIFO)"``
    ...), following links; None for a regular file or nothing (a dangling link included)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((what for test, what in _KINDS if test(mode)), None)


def _identity(path: PathLike) -> tuple[object, ...]:
    """The file ``path`` names: its device and inode when it exists, else its resolved spelling."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ("path", str(Path(path).resolve()))
    return ("inode", st.st_dev, st.st_ino)


def same_file(first: PathLike, second: PathLike) -> bool:
    """Whether two paths name one file (one inode, through any link; or one spelling once resolved)."""
    return _identity(first) == _identity(second)


def _folder_phrase(name: str) -> str:
    return f"{name} folder" if name.startswith("the ") else f"the {name} folder"


def check_target(write: Write) -> None:
    """Check one output on its own: a regular file or absent, in an existing folder that takes
    new files. Raises :class:`OutputError` naming it."""
    if write.path is None:
        return
    path = Path(write.path)
    if "\0" in str(path):
        raise OutputError(f"{write.name} {str(path)!r} holds a NUL character: give a file path without one")
    kind = kind_of(path)
    if kind == "a folder":
        hint = f": give a file name such as {write.example}" if write.example else ": give a file name"
        raise OutputError(f"{write.name} '{path}' is a folder{hint}")
    if kind is not None:
        raise OutputError(
            f"{write.name} '{path}' is {kind}, not a regular file: onnxprune only creates or replaces "
            "regular files; give the path of a file"
        )
    folder = path.absolute().parent
    if not os.path.isdir(folder):
        what = "a file has that name: give a path in a folder" if os.path.lexists(folder) else "create it first"
        raise OutputError(f"{_folder_phrase(write.name)} '{folder}' does not exist: {what}")
    longest = _name_max(folder)
    if len(os.fsencode(path.name)) > longest:
        raise OutputError(
            f"{write.name} '{path}' has a file name of {len(os.fsencode(path.name))} bytes; its folder takes at "
            f"most {longest}: give a shorter name"
        )
    try:
        handle, probe = staging_file(folder, path.name)
    except OutputError as exc:
        raise OutputError(f"cannot write to {_folder_phrase(write.name)} '{folder}' ({exc.args[0]})") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _same_as_input(write: Write, reads: Sequence[tuple[Read, tuple[object, ...]]]) -> None:
    if write.path is None:
        return
    target = _identity(write.path)
    replaceable = _identity(write.replaceable) if write.replaceable is not None else None
    for read, identity in reads:
        if identity != target:
            continue
        if identity == replaceable and write.force:
            continue  # the caller's force: this input may be replaced
        hint = f" (or pass {opt('force', True)} to replace the input)" if identity == replaceable else ""
        raise OutputError(
            f"{write.name} '{write.path}' is {read.name} ('{read.path}', the same file): choose another path{hint}"
        )


def _name_max(folder: PathLike) -> int:
    """The longest file name (bytes) ``folder`` takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _identities(reads: Iterable[Read]) -> list[tuple[Read, tuple[object, ...]]]:
    return [(read, _identity(read.path)) for read in reads if read.path is not None]


def check_outputs(writes: Iterable[Write], reads: Iterable[Read] = ()) -> None:
    """Check every output of a run before any work (see the module docstring): each one on its
    own (:func:`check_target`), none the same file as an input (``reads``) or as another output.
    Entries whose path is None are left out. Raises :class:`OutputError` naming the first one
    that cannot be written."""
    inputs = _identities(reads)
    seen: dict[tuple[object, ...], Write] = {}
    for write in writes:
        if write.path is None:
            continue
        check_target(write)
        _same_as_input(write, inputs)
        identity = _identity(write.path)
        first = seen.get(identity)
        if first is not None:
            raise OutputError(
                f"{first.name} '{first.path}' and {write.name} '{write.path}' are the same file: "
                "give each output its own path"
            )
        seen[identity] = write


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _prefix(name: str) -> str:
    return f".{os.fsdecode(os.fsencode(name)[:_NAME_PART])}.onnxprune-{os.getpid()}-{_host_tag()}-"


def staging_file(folder: PathLike, name: str) -> tuple[int, Path]:
    """A new staging file for the destination ``name`` in ``folder`` (stale staging there is
    removed first): an open descriptor and its path. Raises :class:`OutputError` with the reason
    when the folder takes no new files."""
    sweep_stale(folder)
    try:
        handle, path = tempfile.mkstemp(prefix=_prefix(name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc)) from None
    return handle, Path(path)


def staging_dir(folder: PathLike, name: str) -> Path:
    """A new staging folder for the destination ``name`` in ``folder`` (stale staging there is
    removed first). Raises :class:`OutputError` with the reason when the folder takes no new files."""
    sweep_stale(folder)
    try:
        return Path(tempfile.mkdtemp(prefix=_prefix(name), suffix=".tmp", dir=folder))
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc)) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def sweep_stale(folder: PathLike) -> list[Path]:
    """Remove our stale staging in ``folder`` (see the module docstring); returns what was removed.

    Staging is ours when its name matches :data:`STAGING_NAME` and our uid owns it; it is stale
    when its process is gone from this host, or when it is older than :data:`STALE_AFTER`.
    Links are never followed nor removed; errors are ignored (another run may sweep at once).
    """
    removed: list[Path] = []
    host, uid, now = _host_tag(), getattr(os, "getuid", lambda: None)(), time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = STAGING_NAME.match(entry.name)
        if match is None or entry.is_symlink():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if uid is not None and info.st_uid != uid:
            continue
        pid = int(match["pid"])
        here = match["host"] == host
        if here and pid == os.getpid():
            continue  # this process's own staging
        if (here and _alive(pid)) and now - info.st_mtime < STALE_AFTER:
            continue
        if not here and now - info.st_mtime < STALE_AFTER:
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        if not path.exists():
            log.info("removed stale staging %s (process %d)", path, pid)
            removed.append(path)
    return removed


def publish(moves: Sequence[tuple[PathLike, Write]], reads: Iterable[Read] = ()) -> None:
    """Rename each staged file over its destination (``(staged, write)`` pairs, in order), after
    checking every destination again: it may have become a folder, a device, a pipe or a link to
    an input since :func:`check_outputs`. Nothing is renamed when one fails."""
    inputs = _identities(reads)
    for _, write in moves:
        kind = kind_of(write.path) if write.path is not None else None
        if kind is not None:
            raise OutputError(
                f"{write.name} '{write.path}' became {kind} while it was being written: nothing was replaced; "
                "give the path of a regular file"
            )
        _same_as_input(write, inputs)
    for staged, write in moves:
        try:
            os.replace(staged, write.path)  # type: ignore[arg-type]
        except OSError as exc:
            raise OutputError(f"cannot write {write.name} '{write.path}': {exc.strerror or exc}") from None


@contextlib.contextmanager
def durable(*handles: BinaryIO) -> Iterator[None]:
    """Files written inside the block are on disk when it ends: each handle is flushed and
    ``fsync``-ed (not when the block raises).

    Meanwhile a thread starts the disk's work early: every :data:`SYNC_POLL` seconds it looks at
    each file's size and, when :data:`SYNC_EVERY` bytes or more were written since, ``fdatasync``-s
    it. The bytes written so far go to disk while the writer computes and writes the next ones
    (the call waits on the disk with the GIL released), so the final ``fsync`` waits only for the
    last ones: one ``fsync`` of a 384 MiB model written at once was 0.46 s of a 4 s run. An
    error of the thread's calls is left to the final ``fsync``, which reports it.
    """
    numbers = [handle.fileno() for handle in handles]
    synced = [os.fstat(number).st_size for number in numbers]
    stop = threading.Event()
    datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync

    def write_back() -> None:
        while not stop.wait(SYNC_POLL):
            for index, number in enumerate(numbers):
                with contextlib.suppress(OSError):
                    size = os.fstat(number).st_size
                    if size - synced[index] >= SYNC_EVERY:
                        datasync(number)
                        synced[index] = size

    thread = threading.Thread(target=write_back, name="onnxprune-sync", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    for handle in handles:
        handle.flush()
        os.fsync(handle.fileno())


def write_file(data: str | bytes, path: PathLike, *, what: str = "file", example: str = "") -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, keeping an existing file's
    permissions; returns the path. The policy of the module docstring applies (a regular file
    or nothing, staged, checked again at the rename); errors are one-line
    :class:`OutputError` naming the file as ``the {what}`` (``"report"``), with ``example`` a
    file name to suggest for a folder."""
    target = Path(path)
    write = Write(f"the {what}", target, example=example)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    check_target(write)
    folder = target.absolute().parent
    mode = (os.stat(target).st_mode & 0o777) if os.path.exists(target) else 0o644
    try:
        handle, temp = staging_file(folder, target.name)
    except OutputError as exc:
        raise OutputError(f"cannot write the {what} into '{folder}': {exc.args[0]}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, mode)
        publish([(temp, write)])
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write the {what} '{target}': {exc.strerror or exc}") from None
        raise
    log.info("wrote %s %s (%d bytes)", what, target, len(payload))
    return target


def make_folder(path: PathLike, *, name: str) -> Path:
    """Create the folder ``path`` (and its parents) if missing; :class:`OutputError` naming it
    as ``name`` when it is something else or cannot be created."""
    folder = Path(path)
    kind = kind_of(folder)
    if folder.exists() and kind != "a folder":
        raise OutputError(f"{name} '{folder}' is {kind or 'a file'}, not a folder: give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {name} '{folder}': {exc.strerror or exc}") from None
    return folder


def check_folder(path: PathLike, *, name: str) -> None:
    """Check before any work that :func:`make_folder` can make ``path`` and files can be
    created in it (the nearest existing folder is tried when it is missing)."""
    folder = Path(path).absolute()
    kind = kind_of(folder)
    if folder.exists() and kind != "a folder":
        raise OutputError(f"{name} '{path}' is {kind or 'a file'}, not a folder: give a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if kind_of(existing) != "a folder":
        raise OutputError(f"{name} '{path}' cannot be created: '{existing}' is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create files in {name} '{path}' (permission denied on '{existing}')")
