"""The lazy matplotlib import, saving figures, and the unit scaling every picture shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CorepipeError

__all__ = ["require_matplotlib", "save", "check_path", "scale", "FORMATS", "TIME_UNITS", "BYTE_UNITS"]

#: Picture formats a file name may end with.
FORMATS = (".png", ".svg", ".pdf")


def require_matplotlib() -> Any:
    """``matplotlib.figure.Figure``, or a `CorepipeError` saying how to install matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CorepipeError(
            "pictures need matplotlib, which is not installed here: "
            "pip install 'corepipe[plot]' (or pip install matplotlib)"
        ) from None
    return Figure


def check_path(path: str | os.PathLike[str], flag: str = "the picture") -> Path:
    """``path`` as a `Path` once its suffix is a known format and its folder exists."""
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise CorepipeError(
            f"{flag} {str(out)!r}: unknown picture format {out.suffix or '(none)'!r}; "
            f"end the name with {', '.join(FORMATS)}"
        )
    if not out.parent.is_dir():
        raise CorepipeError(f"{flag} {str(out)!r}: folder {str(out.parent)!r} does not exist")
    return out


def save(figure: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write ``figure`` to ``path`` (.png, .svg or .pdf) and return the path.

    Raises:
        CorepipeError: unknown format or missing folder.
    """
    out = check_path(path)
    figure.savefig(out, dpi=dpi, facecolor="white")
    return out


def scale(values: Sequence[float], units: Sequence[tuple[str, float]]) -> tuple[float, str]:
    """The largest unit (name, size) in which the largest value is at least 1: ``(size, name)``.

    >>> scale([0.0004, 0.002], [("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)])
    (0.001, 'ms')
    """
    top = max((abs(v) for v in values), default=0.0)
    for name, size in units:
        if top >= size:
            return size, name
    return units[-1][1], units[-1][0]


TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6))
BYTE_UNITS = (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10), ("bytes", 1.0))
