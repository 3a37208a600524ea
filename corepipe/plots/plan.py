"""A plan as a picture: one bar per stage for its time, its resident weights and its hand-off."""

from __future__ import annotations

import textwrap
from typing import Any

from ..artifact.plan import Plan
from ..artifact.sizes import format_bytes
from ._mpl import BYTE_UNITS, TIME_UNITS, require_matplotlib, scale

__all__ = ["plan_figure"]

_CORE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def _label_bars(ax: Any, bars: Any, texts: list[str], line: float | None = None, band: float = 0.0) -> None:
    """Each bar's value above it; inside its top where a horizontal line at ``line`` runs just
    above the bar (within ``band``), so the label does not sit on the line."""
    for bar, text in zip(bars, texts):
        top = bar.get_height()
        inside = line is not None and 0 <= line - top <= band and top > 2 * band
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, top), xytext=(0, -2 if inside else 2),
                    textcoords="offset points", ha="center", va="top" if inside else "bottom", fontsize=8,
                    color="white" if inside else "black")


def _dims_line(plan: Plan) -> str:
    """The plan's dynamic dims, and buckets, in words ("" for a static plan)."""
    shapes = plan.shapes
    if shapes is None:
        return ""
    dims = ", ".join(f"{name} {lo}..{hi}" for name, (lo, hi) in shapes.dims.items())
    buckets = "; ".join(f"{d} {', '.join(map(str, v))}" for d, v in shapes.buckets.items())
    return f"over dynamic dims {dims}" + (f" (buckets {buckets})" if buckets else "")


_RANGE_WORDS = "; whiskers: from the smallest shapes to the largest (as estimated)"


def _shape_ranges(plan: Plan, seconds: list[float]) -> tuple[list[float], list[float]] | None:
    """Over dynamic dims, each stage's time at the smallest and the largest shapes: its time
    scaled by the estimate's ratios (min / typical, max / typical); None for a static plan."""
    if plan.shapes is None:
        return None
    low, high = [], []
    for st, t in zip(plan.stages, seconds):
        c = st.shape_costs or {}
        typical = c.get("typical_s") or 0.0
        if not typical or "min_s" not in c or "max_s" not in c:
            return None
        low.append(t * min(c["min_s"] / typical, 1.0))
        high.append(t * max(c["max_s"] / typical, 1.0))
    return low, high


def plan_figure(plan: Plan, title: str | None = None) -> Any:
    """Three bar charts sharing the stage axis: time per stage (the plan's best figure: under
    load, measured alone on one core, or estimated), resident weights against the core's memory, and
    the bytes each stage hands to the next one (the last one's: the outputs to the client).
    Bars are coloured by the core (``device:core``) that runs the stage.

    Each bar chart's bars carry ``gid`` ``"time"``, ``"memory"`` or ``"handoff"``.

    Returns:
        a ``matplotlib.figure.Figure``.

    Raises:
        CorepipeError: matplotlib is not installed.
    """
    figure_cls = require_matplotlib()
    from matplotlib.patches import Patch

    n = plan.num_cores
    stages = plan.stages
    source = plan.stage_seconds_kind()
    measured = [source == "under load" or s.measured_s is not None for s in stages]
    seconds = plan.stage_seconds()
    per_core = plan.core_seconds()
    cores = sorted(per_core)
    colour = {c: _CORE_COLOURS[i % len(_CORE_COLOURS)] for i, c in enumerate(cores)}
    colours = [colour[(s.device, s.core)] for s in stages]
    xs = list(range(n))
    shared = len(cores) < n
    busiest = max(cores, key=lambda c: (per_core[c], -c[0], -c[1]))
    if shared:
        slow = [k for k, s in enumerate(stages) if (s.device, s.core) == busiest]
    else:
        slow = [max(range(n), key=lambda k: (seconds[k], -k))]
    total = sum(seconds)
    predicted = total / per_core[busiest] if per_core[busiest] > 0 else 1.0

    fig = figure_cls(figsize=(min(max(7.5, 0.9 * n + 3.5), 20.0), 8.0), layout="constrained")
    ax_t, ax_m, ax_b = fig.subplots(3, 1, sharex=True)
    kind = source if all(measured) else "estimated" if not any(measured) else "measured / estimated"
    wrap = int(fig.get_figwidth() * 13)  # characters of a 9-point title across the figure
    lines = [
        f"{title + ': ' if title else ''}{n} stage{'s' if n != 1 else ''} on target {plan.target.name} "
        f"({plan.target.devices} x {plan.target.cores_per_device} cores of "
        f"{format_bytes(plan.target.core_memory)}), balanced by {plan.balance}",
        f"speed-up these stage times allow over one core: {predicted:.2f}x "
        f"(sum of stage times / {'busiest core' if shared else 'slowest stage'}; times {kind})",
    ] + ([_dims_line(plan)] if plan.shapes is not None else [])
    # 10-point lines, each wrapped to the figure's width (a line wider than it is cut at both edges)
    fig.suptitle("\n".join(textwrap.fill(line, int(wrap * 0.9)) for line in lines), fontsize=10)

    size, unit = scale(seconds, TIME_UNITS)
    bars = ax_t.bar(xs, [s / size for s in seconds], color=colours, edgecolor="black", linewidth=0.5,
                    gid="time")
    for bar, is_measured in zip(bars, measured):
        if not is_measured and any(measured):
            bar.set_hatch("//")
    even_line = None if shared else total / n / size
    _label_bars(ax_t, bars, [f"{s / size:.3g}" for s in seconds], even_line, 0.12 * max(seconds) / size)
    for k in slow:
        bars[k].set_edgecolor("#C00000")
        bars[k].set_linewidth(2.0)
    ax_t.set_ylabel(f"{kind} time\nper request ({unit})")
    ranges = _shape_ranges(plan, seconds)
    if ranges is not None:  # over dynamic dims: how far each stage's time moves across the shapes
        low, high = ranges
        ax_t.errorbar(xs, [s / size for s in seconds], yerr=[[(s - lo) / size for s, lo in zip(seconds, low)],
                                                              [(hi - s) / size for s, hi in zip(seconds, high)]],
                      fmt="none", ecolor="#333333", elinewidth=1, capsize=4, gid="range")
    if shared:
        ax_t.set_title(textwrap.fill(
            f"Time per stage. Stages {', '.join(map(str, slow))} share core {busiest[0]}:{busiest[1]}, "
            f"{per_core[busiest] / size:.3g} {unit} per request in all (red edges): the busiest core, "
            "which sets the throughput" + (_RANGE_WORDS if ranges is not None else ""), wrap), fontsize=9, loc="left")
    else:
        even = total / n / size
        ax_t.axhline(even, color="black", linestyle="--", linewidth=1)
        ax_t.set_title(textwrap.fill(
            f"Time per stage: the slowest (red edge) sets the throughput; dashed: an even split "
            f"({even:.3g} {unit})" + (_RANGE_WORDS if ranges is not None else ""), wrap), fontsize=9, loc="left")

    resident = [s.resident_bytes for s in stages]
    cap = plan.target.core_memory
    on_scale = cap <= 4 * max(max(resident), 1)
    size, unit = scale(resident + ([cap] if on_scale else []), BYTE_UNITS)
    bars = ax_m.bar(xs, [r / size for r in resident], color=colours, edgecolor="black",
                    linewidth=0.5, gid="memory")
    _label_bars(ax_m, bars, [f"{r / size:.3g}" for r in resident])
    if on_scale:
        ax_m.axhline(cap / size, color="#C00000", linestyle="--", linewidth=1)
        ax_m.annotate(f"core memory {format_bytes(cap)}", (1.0, cap / size),
                      xycoords=("axes fraction", "data"), xytext=(-4, 3),
                      textcoords="offset points", ha="right", va="bottom", fontsize=8, color="#C00000")
    ax_m.set_ylabel(f"resident weights\n({unit})")
    ax_m.set_title("Weights each stage keeps resident on its core"
                   + ("" if on_scale else f" (core memory {format_bytes(cap)}, off this scale)"),
                   fontsize=9, loc="left")

    handoff = [sum(t.nbytes for t in plan.boundaries[k + 1]) for k in range(n)]
    size, unit = scale(handoff, BYTE_UNITS)
    bars = ax_b.bar(xs, [h / size for h in handoff], color=colours, edgecolor="black",
                    linewidth=0.5, gid="handoff")
    _label_bars(ax_b, bars, [f"{h / size:.3g}" for h in handoff])
    ax_b.set_ylabel(f"hand-off out\nper request ({unit})")
    ax_b.set_title("Bytes each stage hands on (the last stage: the outputs to the client)",
                   fontsize=9, loc="left")

    modes = [f"\n{s.shape_mode}" if plan.shapes is not None else "" for s in stages]
    ax_b.set_xticks(xs, [f"stage {k}\ncore {s.device}:{s.core}{m}" for (k, s), m in zip(enumerate(stages), modes)],
                    fontsize=8 if n <= 16 else 6, rotation=0 if n <= 16 else 90)
    ax_b.set_xlabel("stage, and the core (device:core) it runs on" + (", and its shape mode" if plan.shapes else ""))
    for ax in (ax_t, ax_m, ax_b):
        ax.margins(y=0.18)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(facecolor=colour[c], edgecolor="black", label=f"core {c[0]}:{c[1]}") for c in cores]
    if any(measured) and not all(measured):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="estimated"))
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=min(len(handles), 8),
               frameon=False)
    return fig
