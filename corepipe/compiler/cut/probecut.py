"""The default compile's one correction by the engine probe.

With ``engine="auto"`` and ``balance="estimate"``, `check_engines` times every stage of the
estimated cut on both engines with one thread (cached per machine, `corepipe.engines.speeds`).
Those times say how far the analytic estimate was off, stage by stage: here they move the cut
once, as one round of ``balance="measure"`` would (each stage's time spread over its nodes in
proportion to their estimates, then the solver again), the new cut is probed the same way, and
the cut whose slowest stage is faster on one core is kept. Where nothing was timed (one engine,
``COREPIPE_ENGINE_PROBE=off``) or the cut was given, the estimated cut stands as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...artifact.target import Target
from ..model.graph import ModelGraph
from . import solver
from .assemble import check_engines
from .choose import Choice
from .partition import links_for

__all__ = ["ProbedCut", "probed_cut"]


@dataclass
class ProbedCut:
    """The cut kept, each stage's engine, the node costs corrected by the probe (None where
    nothing was timed) and the plan note saying what the probe moved (None where it moved nothing)."""

    bounds: list[int]
    choices: list[Choice]
    compute: list[float] | None = None
    note: str | None = None


def _slowest(choices: Sequence[Choice]) -> float | None:
    times = [c.seconds.get(c.engine) for c in choices]
    return None if any(t is None for t in times) else max(t for t in times if t is not None)


def probed_cut(
    graph: ModelGraph, problem: solver.Problem, tgt: Target, bounds: Sequence[int],
    example_inputs: Mapping[str, np.ndarray] | None, engine: str, precision: str,
    report: Callable[[str, int, int], None],
) -> ProbedCut:
    """Each stage's engine for the estimated cut ``bounds`` and, where the probe timed every
    stage, the cut moved once by those times (see the module)."""
    choices = check_engines(graph, bounds, example_inputs, engine, precision, report)
    k = len(bounds) - 1
    before = _slowest(choices)
    if before is None:
        return ProbedCut(list(bounds), choices)
    compute = list(problem.compute)
    for s, c in enumerate(choices):
        est = sum(compute[bounds[s]:bounds[s + 1]])
        scale = c.seconds[c.engine] / est if est > 0 else 1.0
        for i in range(bounds[s], bounds[s + 1]):
            compute[i] *= scale
    if k < 2:
        return ProbedCut(list(bounds), choices, compute)
    try:
        moved = solver.solve(dataclasses.replace(problem, compute=compute), k, links_for(tgt, k))
    except solver.Infeasible:
        return ProbedCut(list(bounds), choices, compute)
    if moved == list(bounds):
        return ProbedCut(list(bounds), choices, compute)
    again = check_engines(graph, moved, example_inputs, engine, precision, report)
    after = _slowest(again)
    if after is None or after >= before:
        return ProbedCut(list(bounds), choices, compute,
                         f"the engine probe's one-core times suggested the cut {moved[1:-1]}; its slowest stage "
                         f"measured {(after or 0) * 1e3:.3g} ms against {before * 1e3:.3g} ms, so the estimated cut "
                         f"{list(bounds[1:-1])} stays")
    return ProbedCut(moved, again, compute,
                     f"the engine probe's one-core times moved the cut from {list(bounds[1:-1])} to {moved[1:-1]}: "
                     f"slowest stage {before * 1e3:.3g} -> {after * 1e3:.3g} ms")
