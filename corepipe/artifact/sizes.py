"""Sizes and counts for people: parse "64MiB"-style strings, print bytes, and "1 node" / "2 nodes"."""

from __future__ import annotations

import math
import re

__all__ = ["parse_size", "parse_duration", "format_bytes", "plural"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Return a byte count from an int or a string such as ``"64MiB"``, ``"1.5 GB"`` or ``"4096"``.

    Raises:
        ValueError: the value is negative or not a size; the message lists the accepted units.

    >>> parse_size("64MiB")
    67108864
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes, got {value!r}")
    if isinstance(value, (int, float)):
        if (isinstance(value, float) and not math.isfinite(value)) or int(value) <= 0:
            raise ValueError(f"a size must be a positive number of bytes, got {value!r}")
        return int(value)
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read {value!r} as a size: use a number with an optional unit "
            "(B, KB, KiB, MB, MiB, GB, GiB), e.g. '64MiB'"
        )
    number = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(number):  # "999...9" past float range
        raise ValueError(f"cannot read {value!r} as a size: it is too large")
    size = int(number)
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(us|µs|ms|s|)\s*$")
_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "": 1.0}


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number of seconds or a string such as ``"500us"``, ``"2ms"``, ``"0.1s"``.

    Raises:
        ValueError: negative, or not a duration; the message lists the accepted units.

    >>> parse_duration("500us")
    0.0005
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if match is None:
        raise ValueError(f"cannot read {value!r} as a duration: use a number with us, ms or s, e.g. '500us'")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def format_bytes(n: float) -> str:
    """Format a byte count with a binary unit: ``format_bytes(11.3 * 2**20) == '11.3 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, in the plural unless ``count`` is 1: ``plural(1, "node") == '1 node'``,
    ``plural(3, "core") == '3 cores'``, ``plural(2, "process", "processes")``."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"
