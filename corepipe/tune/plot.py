"""The tune picture: throughput against p50 latency for every measured candidate, the chosen
plan, the peers, and the Pareto front. matplotlib is imported only here, only when drawing."""

from __future__ import annotations

import io
from collections.abc import Sequence

from ..errors import CorepipeError
from .choose import Point, pareto_front

__all__ = ["render_png"]


def render_png(points: Sequence[Point], chosen: Point, *, title: str) -> bytes:
    """The picture as PNG bytes (the caller writes them, so a failure here writes nothing).

    Raises:
        CorepipeError: matplotlib is not installed (``pip install 'corepipe[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # files only: never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise CorepipeError(
            "the tune picture needs matplotlib: pip install 'corepipe[plot]' (or matplotlib)"
        ) from None
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        front = pareto_front(points)
        ax.step([p.p50_s * 1e3 for p in front], [p.req_per_s for p in front], where="post",
                color="0.55", linestyle="--", linewidth=1.2, label="Pareto front", zorder=1)
        cands = [p for p in points if p.kind == "candidate"]
        peers = [p for p in points if p.kind == "peer"]
        ax.scatter([p.p50_s * 1e3 for p in cands], [p.req_per_s for p in cands],
                   marker="o", s=46, color="tab:blue", label="corepipe candidates", zorder=3)
        ax.scatter([p.p50_s * 1e3 for p in peers], [p.req_per_s for p in peers],
                   marker="s", s=46, color="tab:orange", label="peers", zorder=3)
        ax.scatter([chosen.p50_s * 1e3], [chosen.req_per_s], marker="*", s=320,
                   color="tab:red", edgecolor="black", linewidth=0.6, label=f"chosen: {chosen.name}", zorder=4)
        for p in points:
            ax.annotate(p.name, (p.p50_s * 1e3, p.req_per_s), textcoords="offset points",
                        xytext=(6, 4), fontsize=7.5, color="0.2")
        ax.set_xlabel("p50 latency per request under load (ms)")
        ax.set_ylabel("throughput (requests/s)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0, right=max(p.p50_s for p in points) * 1e3 * 1.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
