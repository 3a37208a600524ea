"""The pictures the commands draw (``--plot``, ``--timeline``): checked before any work starts,
so a missing matplotlib or a bad file name fails in a second, not after a long run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.text import Text

from ..errors import CorepipeError
from ..plots import plan_figure, require_matplotlib, save, timeline_figure
from ..plots._mpl import check_path
from ..runtime import Timeline
from ._app import err
from .report import plural

__all__ = ["check_plot", "draw_timeline", "plan_figure", "save_picture", "saved"]


def check_plot(path: Path, flag: str) -> None:
    """Refuse ``path`` now if it cannot be drawn later: unknown format, missing folder, or no
    matplotlib. Raises `CorepipeError` naming ``flag``."""
    try:
        check_path(path, flag)
        require_matplotlib()
    except CorepipeError as exc:
        message = str(exc)
        raise CorepipeError(message if message.startswith(flag) else f"{flag}: {message}") from None


def save_picture(figure: Any, path: Path) -> Path:
    return save(figure, path)


def saved(path: Path, what: str) -> None:
    """Say where a picture went (on stderr, so ``--json`` output stays clean)."""
    err.print(Text(f"wrote the {what} picture to {path}"))


def draw_timeline(timeline: Timeline, path: Path, title: str, cores: Sequence[str] = (),
                  backend: str = "local", shown: str | None = None) -> None:
    """Save the Gantt chart of ``timeline``; ``cores``: each stage's cores, for the lane labels;
    ``shown``: the requests it holds, in words (default: their count)."""
    if not timeline.requests:
        raise CorepipeError(f"--timeline: the {backend} backend recorded no request timings")
    labels = [f"stage {k}" + (f"\ncore {cores[k]}" if k < len(cores) else "") for k in range(timeline.stages)]
    if shown is None and not timeline.dropped:
        shown = plural(len(timeline.requests), "request")
    elif shown is None:
        shown = f"the last {len(timeline.requests):,} of {len(timeline.requests) + timeline.dropped:,} requests"
    figure = timeline_figure(
        timeline, f"{title}: {shown} through {plural(timeline.stages, 'stage')} ({backend} backend)",
        labels)
    saved(save(figure, path), "timeline")
