"""Console helpers of the command line: one-line errors, tables, sizes, progress bars.

Only the CLI modules (``cli.py``, ``cli_eval.py``) import this; the library never prints.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import click

from onnxprune.cli_flags import flag
from onnxprune.errors import OnnxPruneError
from onnxprune.passes.base import Progress

INTERNAL_ERROR = 70


def fail(message: str, code: int) -> None:
    click.echo(f"onnxprune: error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one line on stderr and an exit code (tracebacks with --debug); the
    options a message names are spelled as flags (:mod:`onnxprune.cli_flags`)."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.INFO if kwargs.get("verbose") else logging.WARNING,
            format="onnxprune: %(levelname)s: %(message)s",
            stream=sys.stderr,
        )
        try:
            return command(*args, **kwargs)
        except OnnxPruneError as exc:
            if debug:
                raise
            fail(exc.render(flag), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; nothing was written", 130)
        except MemoryError:
            fail("out of memory; try a machine with more memory", INTERNAL_ERROR)
        except Exception as exc:  # a bug: say so, briefly
            if debug:
                raise
            fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it", INTERNAL_ERROR)

    return wrapper


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


class ProgressBar:
    """A click progress bar on stderr fed by the library's progress callback."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet, self.bar = label, quiet, None

    def __enter__(self) -> Progress:
        return self.update

    def update(self, done: int, total: int, name: str) -> None:
        if self.quiet or total < 2:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(1)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
