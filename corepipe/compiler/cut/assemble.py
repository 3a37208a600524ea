"""From a cut to an artifact: check each stage's engine, describe the stages as a `Plan`, and
write the stage files. `compile` uses it once; ``balance="load"`` once per cut it measures, so
what it measures is exactly what ships."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ...artifact.deployment import Deployment
from ...artifact.dims import Shapes
from ...artifact.plan import Plan
from ...artifact.target import Target
from ...artifact.writer import write_artifact
from ..checks.unchecked import check_notes, find_unchecked, onnxruntime_stages
from ..model.graph import ModelGraph
from . import solver
from .choose import Choice, candidates
from .partition import build_stage_model, links_for, place_stages, stage_plans

__all__ = ["check_engines", "make_plan", "write_stages", "engine_notes", "NOT_STATIC"]

#: How a plan note says that a stage graph is not static (``NOT_STATIC.format(stage)`` + why).
NOT_STATIC = "stage {} is not static: "
#: One-thread runs per stage and engine when a compile probes which engine is faster here.
PROBE_REPEATS = 3


def check_engines(
    graph: ModelGraph, bounds: Sequence[int], example_inputs: Mapping[str, np.ndarray] | None,
    engine: str, precision: str, report: Callable[[str, int, int], None], *, reuse: bool = True,
) -> list[Choice]:
    """Each stage's engine: onnxruntime when that is all there is to choose, else each stage run
    on each candidate engine and checked against onnxruntime, and with ``engine="auto"`` timed
    with one thread (`PROBE_REPEATS` runs) so that the faster engine on this machine runs it.
    The times are kept in the machine's cache (`corepipe.engines.speeds`); with ``reuse`` a
    stage it holds is only checked, not timed again."""
    if candidates(engine) == ["onnxruntime"]:  # nothing to choose or check
        return [Choice("onnxruntime", "fp32", why=_only_ort(engine)) for _ in range(len(bounds) - 1)]
    from ...engines.speeds import SpeedCache
    from .measure import time_stages_on

    order = candidates(engine)
    speeds = SpeedCache.open(precision) if len(order) > 1 else None
    probing = speeds is not None and speeds.enabled
    step = "check engines and time each on one core" if probing else "check engines"
    report(step, 0, 1)
    trials = time_stages_on(graph, list(bounds), example_inputs, order, precision,
                            repeats=PROBE_REPEATS if probing else 0, speeds=speeds if probing else None,
                            reuse=reuse, source="probe timed now")
    if speeds is not None:
        speeds.save()
    report(step, 1, 1)
    unchecked = onnxruntime_stages(graph, bounds)
    return [t.choice(order, precision, s, engine, unchecked.get(s)) for s, t in enumerate(trials)]


def _only_ort(engine: str) -> str:
    return ("engine='onnxruntime' was asked for" if engine == "onnxruntime"
            else "onnxruntime is the only engine installed")


def make_plan(
    graph: ModelGraph, problem: solver.Problem, tgt: Target, bounds: Sequence[int], balance: str,
    choices: Sequence[Choice], *, measured: Sequence[float] | None = None,
    loaded: Sequence[float] | None = None, deployment: Deployment | None = None,
    notes: Sequence[str] = (), shapes: Shapes | None = None, modes: Sequence[str] | None = None,
    shape_costs: Sequence[Mapping[str, float]] | None = None,
) -> Plan:
    """The plan of the cut ``bounds``: stages with their costs, engines, and times measured alone
    (``measured``) or under load (``loaded``), the deployment to record, and the checks the
    intake makes on request values (`corepipe.compiler.checks.unchecked`). Over dynamic dims:
    ``shapes``, each stage's shape mode (default ``"dynamic"``) and its costs at the bounds; an
    OpenVINO stage holding static buckets counts one copy of its weights per bucket graph."""
    checks = find_unchecked(graph).checks
    k = len(bounds) - 1
    seconds = solver.stage_costs(problem, bounds, links_for(tgt, k))
    sizes = [solver.stage_memory(problem, bounds[s], bounds[s + 1]) for s in range(k)]
    stages = [
        dataclasses.replace(st, engine=c.engine, precision=c.precision, fallback=c.fallback, snippets=c.snippets,
                            loaded_s=None if loaded is None else float(loaded[s]), engine_why=c.why,
                            engine_s=dict(c.seconds) or None)
        for s, (st, c) in enumerate(zip(stage_plans(graph, bounds, tgt, seconds, sizes, measured,
                                                    place_stages(tgt, seconds)), choices))
    ]
    if shapes is not None:
        graphs = int(np.prod([len(v) for v in shapes.buckets.values()])) if shapes.buckets else 1
        modes = list(modes or ["dynamic"] * k)
        stages = [dataclasses.replace(
            st, shape_mode=modes[s], shape_costs=dict(shape_costs[s]) if shape_costs else None,
            resident_bytes=st.resident_bytes * (graphs if modes[s] == "buckets" and st.engine == "openvino" else 1),
        ) for s, st in enumerate(stages)]
    return Plan(
        target=tgt,
        inputs=tuple(graph.inputs),
        outputs=tuple(graph.outputs),
        boundaries=tuple(tuple(graph.boundary(b)) for b in bounds[:-1]) + (tuple(graph.outputs),),
        stages=tuple(stages),
        num_nodes=graph.n,
        balance=balance,
        notes=tuple(notes) + tuple(check_notes(checks)),
        deployment=deployment,
        shapes=shapes,
        input_checks=tuple(checks),
    )


def write_stages(graph: ModelGraph, plan: Plan, bounds: Sequence[int], out: Path,
                 on_stage: Callable[[int], None] | None = None) -> Plan:
    """Write ``plan``'s stage graphs and manifest to ``out`` (atomically); the plan with hashes."""
    k = len(bounds) - 1
    models = (build_stage_model(graph, bounds[s], bounds[s + 1], s == k - 1) for s in range(k))
    return write_artifact(out, plan, models, source_sha256=graph.source_sha256, on_stage=on_stage)


def engine_notes(engine: str, precision: str, choices: Sequence[Choice]) -> list[str]:
    """What the plan says about its engines: what was asked, what each stage measured, and why
    any stage runs elsewhere."""
    notes = [f"engine {engine!r}, precision {precision!r}: stages run on "
             + ", ".join(f"{s}: {c.engine} {c.precision}" for s, c in enumerate(choices))]
    if engine == "auto" and candidates("auto") == ["onnxruntime"]:
        notes.append("openvino is not installed, so every stage runs on onnxruntime (pip install openvino)")
    for s, c in enumerate(choices):
        if len(c.seconds) > 1:
            notes.append(f"stage {s} on one core: " + ", ".join(
                f"{e} {sec * 1e3:.2f} ms" for e, sec in sorted(c.seconds.items(), key=lambda kv: kv[1])))
        if c.fallback:
            notes.append(f"stage {s} runs on {c.engine} ({c.precision}): {c.fallback}")
        elif c.dynamic:
            notes.append(f"{NOT_STATIC.format(s)}{c.dynamic}")
        if c.engine == "openvino" and c.snippets_off:
            notes.append(f"stage {s} runs without OpenVINO's snippets: {c.snippets_off}")
    return notes
