"""The tune picture: throughput against p50 latency for every measured candidate, the chosen
plan, the peers, and the Pareto front. matplotlib is imported only here, only when drawing."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from ..errors import CorepipeError
from .choose import Point, pareto_front

__all__ = ["render_png", "tune_figure"]


def render_png(points: Sequence[Point], chosen: Point, *, title: str, unit: str = "req") -> bytes:
    """The picture as PNG bytes (the caller writes them, so a failure here writes nothing).

    Raises:
        CorepipeError: matplotlib is not installed (``pip install 'corepipe[plot]'``).
    """
    buf = io.BytesIO()
    tune_figure(points, chosen, title=title, unit=unit).savefig(buf, format="png")
    return buf.getvalue()


def tune_figure(points: Sequence[Point], chosen: Point, *, title: str, unit: str = "req") -> Any:
    """Throughput against p50 latency: candidates, peers, the chosen plan, the Pareto front
    (rings, and a line where it has several points), every point named where its label
    overlaps nothing else. A matplotlib ``Figure`` (no pyplot state). ``unit="token"``: a
    decoder's tokens/s against the p50 time between tokens.

    Raises:
        CorepipeError: matplotlib is not installed (``pip install 'corepipe[plot]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CorepipeError(
            "the tune picture needs matplotlib: pip install 'corepipe[plot]' (or matplotlib)"
        ) from None
    fig = Figure(figsize=(9, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([p.p50_s * 1e3 for p in front], [p.req_per_s for p in front], where="post",
                color="0.55", linestyle="--", linewidth=1.2, zorder=1)
    # a ring around each point of the front: visible (and in the legend) even for one point
    ax.scatter([p.p50_s * 1e3 for p in front], [p.req_per_s for p in front], s=190, facecolors="none",
               edgecolors="0.45", linewidths=1.2, linestyle="--", zorder=2,
               label=f"Pareto front ({len(front)} point{'s' if len(front) != 1 else ''})")
    cands = [p for p in points if p.kind == "candidate"]
    peers = [p for p in points if p.kind == "peer"]
    ax.scatter([p.p50_s * 1e3 for p in cands], [p.req_per_s for p in cands],
               marker="o", s=46, color="tab:blue", label="corepipe candidates", zorder=3)
    ax.scatter([p.p50_s * 1e3 for p in peers], [p.req_per_s for p in peers],
               marker="s", s=46, color="tab:orange", label="peers", zorder=3)
    ax.scatter([chosen.p50_s * 1e3], [chosen.req_per_s], marker="*", s=320,
               color="tab:red", edgecolor="black", linewidth=0.6, label=f"chosen: {chosen.name}", zorder=4)
    if unit == "token":
        ax.set_xlabel("p50 time between tokens under the workload (ms)")
        ax.set_ylabel("throughput (tokens/s)")
    else:
        ax.set_xlabel("p50 latency per request under load (ms)")
        ax.set_ylabel("throughput (requests/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0, top=max(p.req_per_s for p in points) * 1.12)
    ax.set_xlim(left=0, right=max(p.p50_s for p in points) * 1e3 * 1.35)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    _label(fig, ax, points, chosen)
    return fig


#: Where a label may go, in points from its marker, tried in turn: right, below, above, left...
#: then farther out (crowded points: a label there gets a line to its marker, see `_LEADER`).
_OFFSETS = ((7, 4), (7, -11), (7, 13), (-7, 4), (-7, -11), (-7, 13), (7, -22), (7, 24), (-7, -22), (-7, 24),
            (7, -33), (7, 35), (14, 4), (14, -11), (-14, 4), (-14, -11)) + tuple(
    (dx, dy) for d in (46, 58, 70, 82, 94, 106, 118) for dx, dy in ((12, d), (12, -d), (-12, d), (-12, -d))) + tuple(
    (dx, dy) for dx in (48, -48, 96) for dy in range(-96, 97, 12))
#: A label placed farther than this (points, either way) from its marker is tied to it by a thin line.
_LEADER = 30


def _label(fig: Any, ax: Any, points: Sequence[Point], chosen: Point) -> None:
    """Name every point where its label overlaps no other label, no marker and the legend:
    the first free place of `_OFFSETS`, else the one that overlaps least."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    taken = [legend.get_window_extent(renderer)] if legend is not None else []
    front = {id(p) for p in pareto_front(points)}
    for p in points:  # the markers themselves (the chosen star and the front's rings are bigger)
        x, y = ax.transData.transform((p.p50_s * 1e3, p.req_per_s))
        r = 15 if p is chosen else 12 if id(p) in front else 6
        taken.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    frame = ax.get_window_extent(renderer)
    for p in sorted(points, key=lambda q: (q.kind != "candidate", -q.req_per_s)):
        best: tuple[float, Any] | None = None
        for dx, dy in _OFFSETS:
            far = abs(dx) > _LEADER or abs(dy) > _LEADER
            text = ax.annotate(p.name, (p.p50_s * 1e3, p.req_per_s), textcoords="offset points", xytext=(dx, dy),
                               fontsize=7.5, color="0.15", ha="left" if dx > 0 else "right", va="center",
                               zorder=5, gid="leader" if far else None,
                               arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6, "shrinkA": 1, "shrinkB": 4,
                                           "relpos": (0.0 if dx > 0 else 1.0, 0.5)} if far else None)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).expanded(1.04, 1.15)  # the words, not the line
            outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
            overlap = sum(_area(box, t) for t in taken) + (1e6 if outside else 0.0)
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, text)
            else:
                text.remove()
            if overlap == 0:
                break
        assert best is not None
        taken.append(Text.get_window_extent(best[1], renderer))


def _area(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0
