"""What every tune search keeps and leaves behind, one-shot models and decoders alike: the
`Board` of points measured so far (with the progress told as they come) and `write_tuned`, the
chosen artifact written with its deployment, ``tune.png`` and ``tune.json`` in one step."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ..artifact.deployment import Deployment
from ..artifact.manifest import open_artifact
from ..artifact.writer import republish_artifact
from .choose import Point
from .plot import render_png
from .result import TuneResult

__all__ = ["Board", "TuneProgress", "write_tuned"]

#: ``progress(message, done, total)``: the search so far, as `corepipe.compile`'s progress.
TuneProgress = Callable[[str, int, int], None]


class Board:
    """The points measured so far (each the best of its repeats: interference only slows), the
    plans that failed to compile, and the progress told as they come."""

    def __init__(self, progress: TuneProgress | None, on_point: Callable[[Point], None] | None) -> None:
        self.progress, self.on_point = progress, on_point
        self.best: dict[str, Point] = {}
        self.failed: list[tuple[str, str]] = []
        self.done, self.total = 0, 4

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, self.done, self.total)

    def add(self, point: Point) -> None:
        self.done += 1
        old = self.best.get(point.name)
        if old is not None:
            keep = point if point.req_per_s > old.req_per_s else old
            point = dataclasses.replace(keep, runs=old.runs + 1)
        self.best[point.name] = point
        if self.on_point is not None:
            self.on_point(point)
        self.say(f"measured {point.name}")


def write_tuned(result: TuneResult, source: Path, notes: tuple[str, ...] = ()) -> None:
    """The chosen artifact (compiled at ``source``) with its deployment, the picture and the
    figures, written to ``result.path`` in one step; ``notes`` join the plan's."""
    chosen, c = result.chosen, result.chosen.candidate
    assert c is not None
    art = open_artifact(source)
    deployment = Deployment(
        replicas=c.replicas, threads_per_stage=c.threads, cores=result.cores,
        objective=result.objective, throughput=chosen.req_per_s, latency_p50_s=chosen.p50_s,
        latency_p99_s=chosen.p99_s, unit=None if result.unit == "req" else result.unit,
    )
    notes = (f"tuned for {result.objective} on {result.cores} cores", *notes)
    if c.max_batch > 1:
        notes += (f"tuned with dynamic batching: load or serve it with max_batch={c.max_batch}",)
    plan = dataclasses.replace(art.plan, deployment=deployment, notes=art.plan.notes + notes)
    title = (f"{result.model}: {result.cores} cores, objective {result.objective} "
             f"(chosen {chosen.name}: {chosen.req_per_s:,.4g} {result.unit}/s, p50 {chosen.p50_s * 1e3:.4g} ms)")
    png = render_png(result.points, chosen, title=title, unit=result.unit)
    data = (json.dumps(result.to_dict(), indent=1, default=float) + "\n").encode()
    republish_artifact(art, result.path, plan, extras={"tune.png": png, "tune.json": data})
