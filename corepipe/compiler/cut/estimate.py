"""What the analytic cost model says about a model before anything runs: its signature, its
weights, the stage counts it can be cut into, and how even the cut is at each count. `tune` uses
it to predict candidate plans (`corepipe.tune.space.CostModel`) before measuring them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from ...artifact.plan import TensorSpec
from ...artifact.target import resolve_target
from ..model.graph import analyze
from . import solver
from .cost import estimate_node_seconds
from .partition import links_for, make_problem

__all__ = ["ModelEstimate", "estimate_model"]


@dataclass(frozen=True)
class ModelEstimate:
    """Attributes:
        inputs: the model's input signature (static shapes).
        weight_bytes: all weights, once.
        one_core_s: the estimated time of one request on one core.
        min_stages: the fewest stages whose weights each fit a core's memory.
        max_stages: the most stages the graph can be cut into.
        stage_seconds: ``{S: estimated time of each stage}`` for each count asked for.
    """

    inputs: tuple[TensorSpec, ...]
    weight_bytes: int
    one_core_s: float
    min_stages: int
    max_stages: int
    stage_seconds: dict[int, list[float]]


def estimate_model(
    model: str | os.PathLike[str] | onnx.ModelProto,
    counts: Iterable[int],
    *,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    core_memory: int | str | None = None,
) -> ModelEstimate:
    """Analyse ``model`` and cut it (on the analytic estimate) at every stage count in ``counts``
    that it allows; counts outside ``min_stages..max_stages`` are left out.

    Raises:
        CompileError: the model cannot be analysed (see `corepipe.compile`).
    """
    target = resolve_target("cpu", core_memory)
    graph = analyze(model, example_inputs)
    problem = make_problem(graph, estimate_node_seconds(graph, target), target.core_memory)
    try:
        least = solver.min_stages(problem)
    except solver.Infeasible:
        least = graph.n + 1  # nothing fits; every count is left out
    most = int(sum(problem.allowed()[1:-1])) + 1
    cuts = {}
    for k in sorted(set(counts)):
        if least <= k <= most:
            bounds = solver.solve(problem, k, links_for(target, k))
            cuts[k] = solver.stage_costs(problem, bounds, links_for(target, k))
    return ModelEstimate(
        inputs=tuple(graph.inputs), weight_bytes=int(sum(graph.weight_bytes.values())),
        one_core_s=float(sum(problem.compute)), min_stages=least, max_stages=most, stage_seconds=cuts,
    )
