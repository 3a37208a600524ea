"""Whether a model fits: the checks of the user's core count and cuts, and the error that says
which stage is over a core's memory and the smallest core count that fits."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ...artifact.sizes import format_bytes, plural
from ...artifact.target import Target
from ...errors import CompileError, DoesNotFitError
from ..model.graph import ModelGraph
from . import solver
from .partition import links_for


def resolve_cores(num_cores: int | str, n_nodes: int, target: Target) -> int | None:
    if num_cores == "auto":
        return None
    if isinstance(num_cores, str) and num_cores.isdigit():
        num_cores = int(num_cores)
    if not isinstance(num_cores, int) or isinstance(num_cores, bool) or num_cores < 1:
        raise CompileError(f"num_cores must be a positive int or 'auto', got {num_cores!r}")
    if num_cores > n_nodes:
        raise CompileError(
            f"more cores than the graph can use: {plural(num_cores, 'core')} for "
            f"{plural(n_nodes, 'node')} (a stage holds at least one node); use num_cores <= {n_nodes}"
        )
    if target.name != "cpu" and num_cores > target.total_cores:
        raise CompileError(
            f"target {target.name!r} has {plural(target.total_cores, 'core')} "
            f"({plural(target.devices, 'device')} x {target.cores_per_device}); asked for {num_cores}; "
            f"use num_cores <= {target.total_cores}"
        )
    return num_cores


def not_fit(
    graph: ModelGraph, problem: solver.Problem, k: int | None, target: Target,
    bounds: list[int] | None = None,
) -> DoesNotFitError:
    """The error for a plan over capacity; ``bounds``: the user's own cuts, named as such."""
    cap = target.core_memory
    try:
        need = solver.min_stages(problem)
    except solver.Infeasible as exc:
        if exc.span is not None:
            a, b = exc.span
            return DoesNotFitError(
                f"no core count fits: nodes {a}..{b - 1} ({graph.nodes[a].name!r} to "
                f"{graph.nodes[b - 1].name!r}) cannot be cut apart ({graph.why_uncut(a, b)}) and "
                f"hold {format_bytes(exc.needed)} of weights, over the core memory of {format_bytes(cap)}",
                min_cores=None, capacity=cap, needed=exc.needed,
            )
        node = graph.nodes[exc.node or 0]
        return DoesNotFitError(
            f"no core count fits: node {node.name!r} ({node.op_type}) alone holds "
            f"{format_bytes(exc.needed)} of weights, over the core memory of {format_bytes(cap)}; "
            f"raise core_memory to at least {format_bytes(exc.needed)} or split that weight",
            min_cores=None, capacity=cap, needed=exc.needed,
        )
    if bounds is None:
        # Name the heaviest stage of a memory-blind cut into k stages.
        relaxed = dataclasses.replace(problem, capacity=float("inf"))
        bounds = solver.solve(relaxed, k or 1, links_for(target, k or 1))
        where = f"model does not fit in {plural(k or 1, 'core')} of {format_bytes(cap)}"
    else:
        where = f"cuts {bounds[1:-1]} do not fit cores of {format_bytes(cap)}"
    sizes = [solver.stage_memory(problem, bounds[s], bounds[s + 1]) for s in range(len(bounds) - 1)]
    worst = int(np.argmax(sizes))
    heavy = max(range(bounds[worst], bounds[worst + 1]),
                key=lambda i: sum(graph.weight_bytes[w] for w in graph.nodes[i].weights))
    heavy_bytes = sum(graph.weight_bytes[w] for w in graph.nodes[heavy].weights)
    return DoesNotFitError(
        f"{where}: stage {worst} needs "
        f"{format_bytes(sizes[worst])} (node {graph.nodes[heavy].name!r} alone holds "
        f"{format_bytes(heavy_bytes)}); the smallest core count that fits is {need}",
        min_cores=need, capacity=cap, needed=sizes[worst],
    )


def check_cuts(cuts: Sequence[int], n: int) -> list[int]:
    if any(type(c) is not int and not isinstance(c, np.integer) for c in cuts):
        raise CompileError(f"cuts must be node indices (ints), got {list(cuts)!r}")
    bounds = [int(c) for c in cuts]
    if not bounds or bounds[0] != 0:
        bounds = [0] + bounds
    bounds.append(n)
    if any(b >= a for a, b in zip(bounds[1:], bounds)) or bounds[-2] >= n:
        raise CompileError(
            f"cuts {list(cuts)} must be strictly increasing node indices inside 1..{n - 1}; they "
            "index the nodes left once the model's constants are taken out "
            "(corepipe.compiler.graph.analyze(model).nodes)"
        )
    return bounds
