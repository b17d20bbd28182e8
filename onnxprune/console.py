"""Console helpers of the command line: one-line errors, interruptions, tables, sizes, progress bars.

Only the CLI modules (``cli.py``, ``cli_eval.py``) import this; the library never prints.

**Interruptions.** While a command runs, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`
(a ``KeyboardInterrupt``) in it, so every ``with`` block and ``finally`` clause on the way
out runs: an output being written is staged (:mod:`onnxprune.graph.outputs`) and its staging
is removed. The command then exits with one line and 128 + the signal's number (130, 143,
129). A second signal while that cleanup runs stops the process at once (what the signal
does by default); the next run into the folder removes what was left. A signal the command
was started with ignored (``nohup``, a background job) stays ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from types import FrameType
from typing import Any

import click

from onnxprune import runtime
from onnxprune.cli_flags import flag
from onnxprune.errors import OnnxPruneError
from onnxprune.passes.base import Progress

INTERNAL_ERROR = 70

#: The signals that stop a command cleanly (see the module docstring).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def fail(message: str, code: int) -> None:
    click.echo(f"onnxprune: error: {message}", err=True)
    sys.exit(code)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal (``signum``, SIGINT when None); ``done`` says what was
    written before it (for the one line printed)."""

    def __init__(self, signum: int | None = None, *, done: str = "nothing was written") -> None:
        self.signum = signal.SIGINT if signum is None else signal.Signals(signum)
        self.done = done
        super().__init__(self.signum.name)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def message(self) -> str:
        how = "interrupted" if self.signum == signal.SIGINT else f"stopped by {self.signum.name}"
        return f"{how}; {self.done}"


@contextlib.contextmanager
def interrupts_raised() -> Iterator[list[int]]:
    """Within the block, :data:`STOP_SIGNALS` raise :class:`Interrupted` in this process (see
    the module docstring); the handlers found are put back on the way out. Yields the signals
    received (a library on the way out may turn the exception into a plain
    ``KeyboardInterrupt``: the caller still knows which signal it was). Outside the main
    thread (where handlers cannot be set) the block runs as it is."""
    owner, fired = os.getpid(), []

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner or fired:  # a forked child, or a second signal: what the signal does
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler):  # never one ignored or someone else's
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield fired
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one line on stderr and an exit code (tracebacks with --debug); the
    options a message names are spelled as flags (:mod:`onnxprune.cli_flags`).

    Any other exception is a bug (exit 70, one line), except an onnxruntime error while an
    input model the command registered (:func:`onnxprune.runtime.reads_model`) is one that
    onnxruntime rejects by itself: then that model is at fault, and its one-line
    :class:`~onnxprune.errors.UnsupportedModelError` is what the command says."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.INFO if kwargs.get("verbose") else logging.WARNING,
            format="onnxprune: %(levelname)s: %(message)s",
            stream=sys.stderr,
        )
        fired: list[int] = []
        try:
            with interrupts_raised() as fired, runtime.input_scope() as inputs:
                try:
                    return command(*args, **kwargs)
                except OnnxPruneError:
                    raise
                except Exception as exc:
                    blamed = runtime.input_rejection(exc, inputs)  # checked only now: free on success
                    if blamed is None:
                        raise
                    raise blamed from exc
        except OnnxPruneError as exc:
            if debug:
                raise
            fail(exc.render(flag), exc.exit_code)
        except KeyboardInterrupt as exc:
            stop = exc if isinstance(exc, Interrupted) else Interrupted(fired[0] if fired else None)
            fail(stop.message, stop.exit_code)
        except MemoryError:
            fail("out of memory; try a machine with more memory", INTERNAL_ERROR)
        except BrokenPipeError:  # stdout closed early (| head): stop quietly, as cat does
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as exc:  # a bug: say so, in one line
            if debug:
                raise
            fail(
                f"internal error ({type(exc).__name__}: {_first_line(exc)}); rerun with --debug and report it",
                INTERNAL_ERROR,
            )

    return wrapper


def _first_line(exc: BaseException) -> str:
    """What an internal error says of ``exc``: one line (onnxruntime's logs only with --debug)."""
    if runtime.from_onnxruntime(exc):
        return runtime.ort_message(exc)
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else "no message"


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def count(n: int) -> str:
    return f"{n:,}"


def table(rows: Sequence[Sequence[str]], header: Sequence[str], right: set[int] = frozenset()) -> str:
    """A plain text table with aligned columns."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


@contextlib.contextmanager
def json_on_stdout(*paths: object) -> Iterator[Any]:
    """While a JSON document goes to standard output (one of ``paths`` is ``-``), everything
    else the command prints goes to standard error; yields the real standard output (None
    when no path is ``-``). Two documents cannot share it: a one-line error."""
    from onnxprune.envelope import is_stdout
    from onnxprune.errors import OptionError

    chosen = [p for p in paths if is_stdout(p)]  # type: ignore[arg-type]
    if not chosen:
        yield None
        return
    if len(chosen) > 1:
        raise OptionError("only one JSON document can go to standard output: give the other a file name")
    real = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def command_json_stdout(*paths: object) -> Any:
    """:func:`json_on_stdout` for the rest of the running click command (its context closes
    it): the real standard output when one of ``paths`` is ``-``, else None."""
    return click.get_current_context().with_resource(json_on_stdout(*paths))


class PlainProgress:
    """Progress without a terminal (a CI log, a pipe): one line per :data:`EVERY_S` seconds at
    most, ``label: 40% (12/30), 0:05 elapsed``, and one when the work is done; nothing when
    the work finishes within the first interval, and no last line when it fails or is stopped
    (the error's line says so; it said 100 % before)."""

    #: the fewest seconds between two lines
    EVERY_S = 5.0

    def __init__(self, label: str, total: int, *, stream: Any = None) -> None:
        self.label, self.total = label, max(total, 1)
        self.stream = stream
        self.start = self.last = time.monotonic()
        self.done = 0
        self.said = False

    def update(self, done: int) -> None:
        self.done = min(done, self.total)
        now = time.monotonic()
        if now - self.last >= self.EVERY_S:
            self._say(now)

    def _say(self, now: float) -> None:
        self.last, self.said = now, True
        seconds = int(now - self.start)
        click.echo(
            f"{self.label}: {self.done / self.total:.0%} ({self.done}/{self.total}), "
            f"{seconds // 60}:{seconds % 60:02d} elapsed",
            file=self.stream or sys.stderr,
        )

    def close(self, *, finished: bool = True) -> None:
        if self.said and finished:
            self.done = self.total
            self._say(time.monotonic())


def interactive() -> bool:
    """Standard error is a terminal (bars redraw in place), not a log or a pipe."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressBar:
    """A progress bar on stderr fed by the library's progress callback: a click bar on a
    terminal, :class:`PlainProgress` lines otherwise."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet, self.bar = label, quiet, None
        self.plain: PlainProgress | None = None
        self.done = 0

    def __enter__(self) -> Progress:
        return self.update

    def update(self, done: int, total: int, name: str) -> None:
        """``done`` of ``total`` steps are done (the library's progress callback)."""
        if self.quiet or total < 2:
            return
        step, self.done = max(done - self.done, 0), max(done, self.done)
        if not interactive():
            if self.plain is None:
                self.plain = PlainProgress(self.label, total)
            self.plain.update(self.done)
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(step)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        if self.plain is not None:
            self.plain.close(finished=kind is None)
