"""Reading an evaluation result safely and formatting its numbers for people.

Reading: every accessor returns ``None`` (or an empty container) for a missing key, a null,
a value of the wrong type or a non-finite number, so a report never fails on a partial
result; the page shows "not measured" instead.

Formatting:

- sizes use binary prefixes: 1 KiB = 1024 bytes, 1 MiB = 1024² bytes;
- counts use decimal SI prefixes: 1 k = 10³, 1 M = 10⁶, 1 G = 10⁹;
- a fraction f is shown as the percentage 100·f;
- a scaled value v keeps three significant figures: two decimals below 10, one below 100,
  none above.

The exact value goes into a ``title`` tooltip (see :func:`exact`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

MISSING = "—"

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DECIMAL = ("", "k", "M", "G", "T", "P", "E")


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]…``, or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def number(value: Any) -> float | None:
    """A finite int or float as a float; None for anything else (bools, strings, NaN, ∞)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Any]:
    """``value`` as a list if it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def text(value: Any) -> str | None:
    """A non-empty string, a number as text, or None."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    out = str(value)
    return out if out else None


def _scaled(value: float) -> str:
    magnitude = abs(value)
    if magnitude < 10:
        return f"{value:.2f}"
    if magnitude < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _prefixed(value: float | None, base: float, units: Sequence[str], sep: str = " ") -> str:
    if value is None:
        return MISSING
    index = 0
    while abs(value) >= base * 0.9995 and index < len(units) - 1:
        value /= base
        index += 1
    if index == 0 and float(value).is_integer():
        return f"{value:.0f}{sep}{units[0]}".rstrip()
    return f"{_scaled(value)}{sep}{units[index]}".rstrip()


def fmt_bytes(value: Any) -> str:
    """123456 → "121 KiB"."""
    return _prefixed(number(value), 1024.0, _BINARY)


def byte_unit(value: Any) -> float:
    """The binary unit (1, 1024, 1024², …) in which ``value`` bytes read as 1 to 1023."""
    x = abs(number(value) or 0.0)
    unit = 1.0
    while x >= unit * 1024 * 0.9995 and unit < 1024.0**5:
        unit *= 1024
    return unit


def fmt_tick(value: float, unit: float = 1.0, suffix: str = "") -> str:
    """An axis tick: ``value / unit`` with up to three significant figures, then ``suffix``."""
    return "0" if value == 0 else f"{value / unit:.3g}{suffix}"


def byte_ticks(largest: Any) -> tuple[float, Callable[[float], str]]:
    """(unit, tick formatter) of a byte axis whose largest value is ``largest``: 51200 → "50 KiB"."""
    unit = byte_unit(largest)
    name = _BINARY[round(math.log(unit, 1024))]
    return unit, lambda v: fmt_tick(v, unit, f" {name}")


def count_ticks(largest: Any) -> tuple[float, Callable[[float], str]]:
    """(unit, tick formatter) of a count axis whose largest value is ``largest``: 2e6 → "2 M"."""
    x = abs(number(largest) or 0.0)
    index = 0
    while x >= 1000.0 ** (index + 1) * 0.9995 and index < len(_DECIMAL) - 1:
        index += 1
    unit = 1000.0**index
    suffix = f" {_DECIMAL[index]}" if index else ""
    return unit, lambda v: fmt_tick(v, unit, suffix)


def fmt_count(value: Any) -> str:
    """1234567 → "1.23 M"; 512 → "512"."""
    return _prefixed(number(value), 1000.0, _DECIMAL)


def fmt_percent(value: Any) -> str:
    """A fraction as a percentage: 0.982 → "98.2 %", 0.0003 → "0.03 %".

    One decimal, or two where one would hide the difference from 0 % or 100 %.
    """
    fraction = number(value)
    if fraction is None:
        return MISSING
    percent = 100.0 * fraction
    shown = f"{percent:.1f}"
    if (0 < abs(percent) < 1) or (percent != 100 and shown == "100.0"):
        shown = f"{percent:.2f}"
    return f"{shown} %"


def fmt_ms(value: Any) -> str:
    """Milliseconds with three significant figures: 0.41 → "0.410 ms"."""
    ms = number(value)
    if ms is None:
        return MISSING
    if abs(ms) < 1:
        return f"{ms:.3f} ms"
    return f"{_scaled(ms)} ms"


def fmt_ratio(value: Any) -> str:
    """0.98 → "0.98×"."""
    ratio = number(value)
    return MISSING if ratio is None else f"{ratio:.2f}×"


def fmt_decimal(value: Any, digits: int = 4) -> str:
    """A plain number with ``digits`` decimals (cosine similarity, relative errors)."""
    x = number(value)
    return MISSING if x is None else f"{x:.{digits}f}"


def fmt_general(value: Any) -> str:
    """A short, readable rendering of any JSON value (settings, environment)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {fmt_general(v)}" for k, v in value.items()) or MISSING
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "×".join(str(v) for v in value)
        return ", ".join(fmt_general(v) for v in value) or MISSING
    return str(value)


def fmt_shape(value: Any) -> str:
    """[16, 1, 3, 3] → "16×1×3×3"; symbolic dimensions are kept by name."""
    dims = items(value)
    if not dims:
        return "scalar" if isinstance(value, (list, tuple)) else MISSING
    return "×".join("?" if d is None else str(d) for d in dims)


def exact(value: Any, unit: str = "") -> str:
    """The exact value for a tooltip: 123456 → "123,456 bytes"; None → "not measured"."""
    x = number(value)
    if x is None:
        return "not measured"
    shown = f"{int(x):,}" if x.is_integer() and abs(x) < 1e18 else repr(value)
    return f"{shown} {unit}".rstrip()


def fmt_created(value: Any) -> str | None:
    """An ISO 8601 timestamp as "2026-11-21 10:00 UTC" (the text itself if it does not parse)."""
    raw = text(value)
    if raw is None:
        return None
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return raw
    if stamp.tzinfo is None:
        return stamp.strftime("%Y-%m-%d %H:%M")
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
