"""Measured balance: time candidate stages on one core and move boundaries until they balance.

Needs one machine and one core, not N devices: each candidate stage is built in memory, run with
one onnxruntime thread on real boundary tensors (from the example inputs), and its time is
spread over its nodes in proportion to their estimates. The solver then re-cuts with the
corrected costs; we stop when the cut no longer changes, and keep the best cut measured.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..artifact.target import Target
from ..engines.ort import make_session
from . import solver
from .graph import ModelGraph
from .partition import build_stage_model, links_for

__all__ = ["measured_balance", "time_stages", "example_feeds"]


def example_feeds(graph: ModelGraph, example_inputs: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """One request for ``graph``: the example inputs where given, zeros elsewhere."""
    out = {}
    for spec in graph.inputs:
        if example_inputs is not None and spec.name in example_inputs:
            out[spec.name] = np.asarray(example_inputs[spec.name])
        else:
            out[spec.name] = np.zeros(spec.shape, dtype=spec.dtype)
    return out


def time_stages(
    graph: ModelGraph,
    bounds: Sequence[int],
    example_inputs: Mapping[str, np.ndarray] | None,
    *,
    repeats: int = 5,
) -> list[float]:
    """Seconds of each stage of ``bounds`` on one core (one onnxruntime thread): the fastest of
    ``repeats`` runs, since interference from a busy machine only ever adds time."""
    k = len(bounds) - 1
    boundary = {name: value for name, value in example_feeds(graph, example_inputs).items()}
    times = []
    for s in range(k):
        model = build_stage_model(graph, bounds[s], bounds[s + 1], s == k - 1)
        session = make_session(model.SerializeToString(), 1)
        del model
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: boundary[i.name] for i in session.get_inputs()}
        values = session.run(names, feeds)  # warm-up, and the next stage's inputs
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(names, feeds)
            samples.append(time.perf_counter() - t0)
        times.append(float(np.min(samples)))
        boundary.update(zip(names, values))
        del session
    return times


def measured_balance(
    graph: ModelGraph,
    problem: solver.Problem,
    target: Target,
    bounds: list[int],
    example_inputs: Mapping[str, np.ndarray] | None,
    report: Callable[[str, int, int], None],
    *,
    rounds: int = 6,
) -> tuple[list[int], list[float], list[float]]:
    """Refine ``bounds`` by measurement. Returns (bounds, per-node seconds, per-stage seconds).

    Each round times the current cut, spreads each stage's time over its nodes in proportion to
    their estimates, and re-solves. It stops when a cut comes back. The two best cuts are then
    timed again and each stage keeps its fastest time, so one noisy round cannot pick the cut.
    """
    k = len(bounds) - 1
    links = links_for(target, k)
    compute = list(problem.compute)
    seen: dict[tuple[int, ...], list[float]] = {}

    def measure(cut: tuple[int, ...]) -> list[float]:
        times = time_stages(graph, list(cut), example_inputs)
        if cut in seen:
            times = [min(a, b) for a, b in zip(seen[cut], times)]
        seen[cut] = times
        return times

    for r in range(rounds):
        report("measure stages", r, rounds + 2)
        measured = measure(tuple(bounds))
        for s in range(k):
            est = sum(compute[bounds[s]:bounds[s + 1]])
            scale = measured[s] / est if est > 0 else 1.0
            for i in range(bounds[s], bounds[s + 1]):
                compute[i] *= scale
        corrected = dataclasses.replace(problem, compute=compute)
        bounds = solver.solve(corrected, k, links)
        if tuple(bounds) in seen:
            break
    finalists = sorted(seen, key=lambda cut: max(seen[cut]))[:2]
    for i, cut in enumerate(finalists):
        report("measure stages", rounds + i, rounds + 2)
        measure(cut)
    report("measure stages", rounds + 2, rounds + 2)
    best = min(seen, key=lambda cut: max(seen[cut]))
    # The latest corrected costs are the closest to the truth we have.
    return list(best), compute, seen[best]
