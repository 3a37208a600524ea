"""A pipeline's requests as a Gantt chart: one lane per stage, one bar per request and stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..runtime.timeline import STALL_MIN_S, STALL_SHARE, Timeline
from ._mpl import TIME_UNITS, require_matplotlib, scale

__all__ = ["request_colour", "timeline_figure", "steady_throughput"]

_BLOCKED = "#A0A0A0"
_STALL = "#111111"
_RESTART = "#D62728"


def steady_throughput(timeline: Timeline) -> float | None:
    """Requests completed per second during the steady state (``None`` when there is none)."""
    _, fill_end, drain_start, _ = timeline.phases()
    done = [r.completed for r in timeline.requests if fill_end <= r.completed <= drain_start]
    if len(done) < 2 or drain_start <= fill_end:
        return None
    return (len(done) - 1) / (max(done) - min(done)) if max(done) > min(done) else None


def request_colour(request_id: int) -> tuple[float, float, float]:
    """A colour per request that neighbours never share and that does not repeat for hundreds
    of requests: the hue steps by the golden ratio (so consecutive requests sit far apart on the
    colour wheel), brightness cycles through three levels (so ids 5 or 8 apart, whose hues the
    golden ratio brings close, still differ) and saturation alternates every 7 requests."""
    import colorsys

    hue = (request_id * 0.6180339887) % 1.0
    saturation = (0.85, 0.5)[(request_id // 7) % 2]
    value = (0.95, 0.72, 0.55)[request_id % 3]
    return colorsys.hsv_to_rgb(hue, saturation, value)


#: How strongly the fill and drain phases are shaded (behind the bars, so they stay readable).
_FILL, _DRAIN, _PHASE_ALPHA = "#4c78a8", "#8c8c8c", 0.22


def timeline_figure(timeline: Timeline, title: str | None = None,
                    stage_labels: Sequence[str] | None = None) -> Any:
    """A Gantt chart of ``timeline``: per stage, when each request ran there (one colour per
    request, so a request can be followed down the stages), where the stage was blocked or
    stalled (`Timeline.waits`), the fill / steady state / drain phases, replayed requests
    (hatched) and worker restarts (red lines); above it, the requests in flight over time.

    The bars of stage ``k`` are in collections with ``gid`` ``"run-k"`` (and ``"replay-k"``
    for replayed requests): their paths count the requests drawn.

    Returns:
        a ``matplotlib.figure.Figure``.

    Raises:
        CorepipeError: matplotlib is not installed.
    """
    figure_cls = require_matplotlib()
    from matplotlib.patches import Patch

    n, reqs = timeline.stages, timeline.requests
    t0 = timeline.start
    span = max(timeline.end - t0, 1e-6)
    size, unit = scale([span], TIME_UNITS)

    def x(t: float) -> float:
        return (t - t0) / size

    lane = 0.75 if n <= 16 else max(0.2, 12.0 / n)  # inches per stage: tall enough, never huge
    fig = figure_cls(figsize=(12.0, 2.6 + lane * n + 1.4), layout="constrained")
    ax_q, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1.4, max(1.6, lane * n)])
    labels = list(stage_labels) if stage_labels else [f"stage {k}" for k in range(n)]
    for k in range(n):
        for replayed, gid in ((False, f"run-{k}"), (True, f"replay-{k}")):
            chosen = [r for r in reqs if bool(r.replays) == replayed]
            if not chosen:
                continue
            spans = [(x(r.stages[k][0]), max((r.stages[k][1] - r.stages[k][0]) / size, 0.0))
                     for r in chosen]
            faces = [request_colour(r.request_id) if r.ok else "white" for r in chosen]
            edges = ["black" if replayed or not r.ok else "none" for r in chosen]
            ax.broken_barh(spans, (k - 0.38, 0.76), facecolors=faces, gid=gid, edgecolors=edges,
                           hatch="///" if replayed else None, linewidth=0.6)
        if len(reqs) <= 30:
            for r in reqs:
                enter, leave = r.stages[k]
                if (leave - enter) / span > 0.012:
                    ax.text(x((enter + leave) / 2), k, str(r.request_id), ha="center", va="center",
                            fontsize=7)
    waits = timeline.waits()
    for kind, colour, (y, h) in (("blocked", _BLOCKED, (0.39, 0.09)), ("stall", _STALL, (0.39, 0.09))):
        for k in range(n):
            spans = [(x(w.start), (w.end - w.start) / size) for w in waits if w.stage == k and w.kind == kind]
            if spans:
                ax.broken_barh(spans, (k + y, h), facecolors=colour, gid=f"{kind}-{k}")

    start, fill_end, drain_start, end = timeline.phases()
    for ax_ in (ax, ax_q):
        ax_.axvspan(x(start), x(fill_end), color=_FILL, alpha=_PHASE_ALPHA, linewidth=0, zorder=0)
        ax_.axvline(x(fill_end), color=_FILL, linewidth=1.0, linestyle=":", zorder=0)
        if drain_start < end:
            ax_.axvspan(x(drain_start), x(end), color=_DRAIN, alpha=_PHASE_ALPHA, linewidth=0, zorder=0)
            ax_.axvline(x(drain_start), color=_DRAIN, linewidth=1.0, linestyle=":", zorder=0)
    for name, a, b in (("fill", start, fill_end), ("steady state", fill_end, drain_start),
                       ("drain", drain_start, end)):
        if b > a and (b - a) / span > 0.04:
            ax_q.annotate(name, (x((a + b) / 2), 1.0), xycoords=("data", "axes fraction"),
                          xytext=(0, -2), textcoords="offset points", ha="center", va="top",
                          fontsize=8, color="#333333")
    for rec in timeline.recoveries:
        if rec.end < start or rec.start > end:
            continue
        for ax_ in (ax, ax_q):
            ax_.axvspan(x(rec.start), x(rec.end), color=_RESTART, alpha=0.12, linewidth=0)
            ax_.axvline(x(rec.start), color=_RESTART, linestyle="--", linewidth=1.2)
        stages = ", ".join(map(str, rec.stages))
        ax_q.annotate(f"worker of stage {stages} died: restarted in {rec.end - rec.start:.2f} s",
                      (x(rec.start), 0.84), xycoords=("data", "axes fraction"), xytext=(3, 0),
                      textcoords="offset points", fontsize=8, color=_RESTART, va="top")

    events = sorted([(r.fed, 1) for r in reqs] + [(r.completed, -1) for r in reqs])
    times = [x(t) for t, _ in events]
    counts = np.cumsum([d for _, d in events]) if events else np.array([])
    ax_q.step([x(start)] + times, [0] + list(counts), where="post", color="black", linewidth=1)
    ax_q.set_ylabel("requests\nin flight")
    ax_q.set_ylim(0, max(1, int(counts.max()) if len(counts) else 1) * 1.35)
    ax_q.grid(axis="y", alpha=0.3)

    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(x(start) - 0.01 * span / size, x(end) + 0.01 * span / size)
    ax.set_xlabel(f"time since the first request entered the pipeline ({unit})")
    ax.grid(axis="x", alpha=0.3)

    rate = steady_throughput(timeline)
    replays = sum(1 for r in reqs if r.replays)
    stalls = sum(1 for w in waits if w.kind == "stall")
    shown = f"{len(reqs)} request{'s' if len(reqs) != 1 else ''}"
    if timeline.dropped:
        shown = f"the last {len(reqs):,} of {len(reqs) + timeline.dropped:,} requests"
    facts = [f"steady state {rate:,.1f} req/s" if rate else "no steady state (never every stage busy)",
             f"{stalls} stall{'s' if stalls != 1 else ''}",
             f"{replays} replayed" + (f" after {len(timeline.recoveries)} restart"
                                      f"{'s' if len(timeline.recoveries) != 1 else ''}" if replays else "")]
    fig.suptitle((title or f"Request timeline: {shown} through {n} stage{'s' if n != 1 else ''}")
                 + "\n" + "; ".join(facts), fontsize=11)
    handles = [
        Patch(facecolor=request_colour(0), label="running (one colour per request)"),
        Patch(facecolor=_BLOCKED, label="blocked: its output slot still held downstream"),
        Patch(facecolor=_STALL, label=f"stall: input and output ready, idle > max({STALL_MIN_S * 1e3:g} ms, "
                                      f"{STALL_SHARE:.0%} of its median run)"),
        Patch(facecolor=_FILL, alpha=_PHASE_ALPHA, label="fill (the pipeline filling up)"),
        Patch(facecolor=_DRAIN, alpha=_PHASE_ALPHA, label="drain (emptying)"),
    ]
    if replays:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///",
                             label="replayed after a worker died (its completed pass)"))
    if timeline.recoveries:
        handles.append(Patch(facecolor=_RESTART, alpha=0.25, label="restarting a dead worker"))
    if any(not r.ok for r in reqs):
        handles.append(Patch(facecolor="white", edgecolor="black", label="failed request"))
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    return fig
