"""Over dynamic dims, how each stage runs its shapes: one bounded dynamic graph, or static
buckets that requests are padded up to. Measured, per stage, on the stage's own engine.

`choose_shapes` is the compiler's step between choosing engines and writing the plan:

- ``buckets=None``: every stage runs each request's own shape (bounded dynamic graphs).
- ``buckets={"sequence": [16, 32, 64, 128]}``: requests are padded to those buckets; each
  OpenVINO stage holds one static graph per bucket (where their copies fit the core's memory),
  each onnxruntime stage one session fed the bucket shapes.
- ``buckets="auto"``: both measured on one core for every stage, at the candidate sizes of the
  dim that varies most (`corepipe.compiler.shaping.buckets.candidate_sizes`); the bucket sizes are
  chosen for the shape profile and buckets are kept only where the slowest stage gets faster.

Before any padding ships, the whole model is run on onnxruntime at a few sizes, padded and not,
and the trimmed answers must match: padding that changes an answer (a model without an
attention mask, a pad value that is a real token) is a `CompileError` for explicit buckets and
keeps ``"auto"`` on dynamic graphs. The output axes to trim are those whose dim symbolic shape
inference derived (`corepipe.compiler.shaping.dynamic`); an output that varies along an axis with no
derived dim cannot be trimmed, and buckets are refused for it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact.dims import ShapeProfile, Shapes, dim_parts
from ...artifact.padding import pad_feeds, trim_outputs
from ...artifact.sizes import format_bytes
from ...artifact.writer import save_stage_model
from ...engines import engine_class, make_session
from ...errors import CompileError
from ..cut.choose import Choice, differs, engine_precision, io_names
from ..cut.partition import build_stage_model, stage_variants
from ..model.graph import ModelGraph
from .buckets import ModeTimes, buckets_win, candidate_sizes, decide, implied_dims
from .dynamic import DynamicGraph, batch_dim, main_dim

__all__ = ["ShapeOptions", "ShapeChoice", "choose_shapes", "check_bounds"]

#: Buckets ``"auto"`` chooses at most (each is a compiled graph, and a copy of the weights on OpenVINO).
MAX_BUCKETS = 8


@dataclass(frozen=True)
class ShapeChoice:
    """What `choose_shapes` decided: the plan's `Shapes`, each stage's mode and figures, and notes."""

    shapes: Shapes
    modes: list[str]
    costs: list[dict[str, float]]
    notes: list[str]

    def plan_fields(self) -> dict[str, Any]:
        """`corepipe.compiler.cut.assemble.make_plan`'s keyword arguments for these shapes."""
        return {"shapes": self.shapes, "modes": self.modes, "shape_costs": self.costs}


@dataclass(frozen=True)
class ShapeOptions:
    """`compile`'s shape options, checked: ``dims`` (None: static shapes), ``buckets``,
    ``pad_values`` and the shape ``profile``."""

    dims: Mapping[str, Any] | None
    buckets: str | Mapping[str, Sequence[int]] | None
    pad_values: Mapping[str, float] | None
    profile: ShapeProfile | None
    notes: tuple[str, ...] = ()  # dims that buckets implied, for the plan's notes

    @classmethod
    def make(cls, dims: Mapping[str, Any] | None, buckets: str | Mapping[str, Sequence[int]] | None,
             pad_values: Mapping[str, float] | None, profile: ShapeProfile | str | None) -> ShapeOptions:
        """A bucket list implies its dim: ``buckets={"sequence": [16, 32, 64]}`` alone makes
        ``sequence`` dynamic over 1..64 (`implied_dims`).

        Raises:
            CompileError: shape options without dynamic dims, a malformed bucket list or profile.
        """
        dims, notes = implied_dims(dims, buckets)
        if not dims:
            given = [name for name, value in (("buckets", buckets not in ("auto", None)), ("pad_values", pad_values),
                                              ("shape_profile", profile)) if value]
            if given:
                raise CompileError(f"{', '.join(given)} apply to dynamic dims: pass dynamic_dims= as well "
                                   "(e.g. dynamic_dims={'sequence': (1, 128)})")
            return cls(None, None, None, None)
        if isinstance(buckets, str) and buckets != "auto":
            raise CompileError(f"buckets must be 'auto', None, or a dict of dim -> sizes, got {buckets!r}")
        if isinstance(profile, str):
            try:
                profile = ShapeProfile.parse(profile)
            except ValueError as exc:
                raise CompileError(str(exc)) from None
        return cls(dict(dims), buckets, pad_values, profile, tuple(notes))

    def choose(self, graph: ModelGraph, bounds: list[int], choices: Sequence[Choice], dyn: DynamicGraph,
               precision: str, tgt: Any, problem: Any, report: Callable[[str, int, int], None]) -> ShapeChoice:
        """`choose_shapes` for the cut ``bounds`` of ``problem`` on target ``tgt``."""
        from ..cut.solver import stage_memory

        held = [stage_memory(problem, bounds[s], bounds[s + 1]) for s in range(len(bounds) - 1)]
        chosen = choose_shapes(graph, bounds, choices, dyn, buckets=self.buckets, pad_values=self.pad_values,
                               profile=self.profile, precision=precision, capacity=int(tgt.core_memory),
                               stage_bytes=held, report=report)
        return replace(chosen, notes=[*self.notes, *chosen.notes]) if self.notes else chosen


class _Chain:
    """The stages of one cut on onnxruntime (one thread each): boundary tensors at any shape."""

    def __init__(self, graph: ModelGraph, bounds: Sequence[int], tmp: Path) -> None:
        k = len(bounds) - 1
        self.files, self.io, self.sessions = [], [], []
        for s in range(k):
            model = build_stage_model(graph, bounds[s], bounds[s + 1], s == k - 1)
            self.io.append(io_names(model))
            (tmp / str(s)).mkdir()
            self.files.append(str(save_stage_model(model, tmp / str(s), "stage.onnx", "stage.weights")))
            del model
            self.sessions.append(make_session(self.files[s], 1))
        self.carried = [list(graph.live[b]) for b in bounds]

    def inputs(self, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Each stage's input tensors for the request ``feeds``; the last entry: the outputs."""
        live: dict[str, np.ndarray] = dict(feeds)
        out = []
        for s, sess in enumerate(self.sessions):
            ins, outs = self.io[s]
            out.append({n: live[n] for n in ins})
            live.update(zip(outs, sess.run(outs, out[-1])))
        out.append(live)
        return out


def _seconds(engine: Any, feeds: Mapping[str, np.ndarray], repeats: int) -> float:
    """The fastest of ``repeats`` timed runs after a warm-up (interference only adds time)."""
    engine.run(feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.run(feeds)
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(chain: _Chain, graph: ModelGraph, bounds: list[int], choices: Sequence[Choice], dyn: DynamicGraph,
             dim: str, sizes: list[int], precision: str, free_bytes: Sequence[int], weights: Sequence[int],
             repeats: int, report: Callable[[str, int, int], None]) -> list[ModeTimes]:
    """Each stage's one-core seconds at every size of ``dim``: its bounded dynamic graph, and a
    static graph for that size (OpenVINO only; onnxruntime's one session is both)."""
    boundary = {v: chain.inputs(dyn.feeds.at({dim: v})) for v in sizes}
    dynamic = stage_variants(graph, bounds)
    assert dynamic is not None
    fixed = {v: stage_variants(graph, bounds, at={dim: v}) for v in sizes}
    out = []
    for s, choice in enumerate(choices):
        report("measure shapes", s, len(choices))
        ins, outs = chain.io[s]
        cls = engine_class(choice.engine)
        prec = engine_precision(choice.engine, precision)
        engine = cls(chain.files[s], inputs=ins, outputs=outs, threads=1, precision=prec, variants=dynamic[s])
        dyn_s = {v: _seconds(engine, boundary[v][s], repeats) for v in sizes}
        del engine
        if choice.engine == "onnxruntime":  # no shape specialisation: static == dynamic, one copy
            out.append(ModeTimes(dyn_s, dyn_s))
            continue
        static_s = {}
        for v in sizes:
            variants = fixed[v]
            assert variants is not None
            engine = cls(chain.files[s], inputs=ins, outputs=outs, threads=1, precision=prec, variants=variants[s])
            # A static graph that gets this size wrong is never chosen for it.
            wrong = _wrong(engine, boundary[v], s, outs, prec)
            static_s[v] = float("inf") if wrong else _seconds(engine, boundary[v][s], repeats)
            del engine
        fits = free_bytes[s] // weights[s] if weights[s] else None
        out.append(ModeTimes(dyn_s, static_s, extra_bytes=weights[s], fits=int(fits) if fits is not None else None))
    report("measure shapes", len(choices), len(choices))
    return out


def _wrong(engine: Any, boundary: list[dict[str, np.ndarray]], s: int, outs: list[str], precision: str) -> str | None:
    """How stage ``s`` on ``engine`` differs from onnxruntime on one request (``boundary``:
    the chain's tensors, stage ``s + 1``'s inputs or the outputs after it), or None."""
    after = boundary[s + 1]
    for name, got in zip(outs, engine.run(boundary[s])):
        problem = differs(got, after[name], precision)
        if problem is not None:
            return f"output {name!r} {problem}"
    return None


def _static_problems(chain: _Chain, graph: ModelGraph, bounds: list[int], choices: Sequence[Choice], dyn: DynamicGraph,
                     sizes: Mapping[str, Sequence[int]], precision: str) -> dict[int, str]:
    """Stage -> why its static bucket graphs get a bucket wrong (checked at every bucket against
    onnxruntime), for the OpenVINO stages."""
    combos: list[dict[str, int]] = [{}]
    for dim, values in sizes.items():
        combos = [{**c, dim: v} for c in combos for v in values]
    out: dict[int, str] = {}
    for combo in combos:
        boundary = chain.inputs(dyn.feeds.at(combo))
        fixed = stage_variants(graph, bounds, at=combo)
        assert fixed is not None
        for s, choice in enumerate(choices):
            if choice.engine == "onnxruntime" or s in out:
                continue
            ins, outs = chain.io[s]
            engine = engine_class(choice.engine)(chain.files[s], inputs=ins, outputs=outs, threads=1,
                                                 precision=engine_precision(choice.engine, precision), variants=fixed[s])
            wrong = _wrong(engine, boundary, s, outs, engine_precision(choice.engine, precision))
            if wrong:
                out[s] = f"its static graph for {combo} gets {wrong}"
    return out


def _padding_problem(chain: _Chain, dyn: DynamicGraph, shapes: Shapes, outputs: Sequence[Any]) -> str | None:
    """Why padding to ``shapes.buckets`` would change an answer (run on onnxruntime, padded and
    not, at each dim's smallest size, its typical one, and one past a bucket), or None."""
    specs = dyn.graph.inputs
    padded_dims = list(shapes.buckets)
    lost = [t.name for t in outputs if not t.is_static and any(
        lo != hi and d is None for d, (lo, hi) in zip(t.dims, t.ranges()))]
    if lost:
        return (f"output {lost[0]!r} varies along an axis whose dim could not be derived from the graph's "
                "symbolic shapes, so its padding cannot be trimmed")
    checks: list[dict[str, int]] = []
    for dim, sizes in shapes.buckets.items():
        lo, _ = dyn.feeds.dims[dim]
        picks = {lo, dyn.feeds.typical[dim]} | {s + 1 for s in sizes[:1] if s + 1 <= sizes[-1]}
        checks += [{dim: v} for v in sorted(picks)]
    for values in checks:
        feeds = dyn.feeds.at(values)
        want = chain.inputs(feeds)[-1]
        padded, own = pad_feeds(specs, feeds, shapes)
        if all(padded[n] is feeds[n] for n in feeds):
            continue
        got = trim_outputs(outputs, {t.name: chain.inputs(padded)[-1][t.name] for t in outputs}, own, padded_dims)
        for t in outputs:
            problem = differs(got[t.name], want[t.name], "fp32")
            if problem is not None:
                where = ", ".join(f"{d}={v}" for d, v in values.items())
                return (f"padded to its bucket, a request with {where} gets an output {t.name!r} that "
                        f"{problem.replace('from onnxruntime ', 'from the unpadded one ')}")
    return None


def choose_shapes(
    graph: ModelGraph, bounds: list[int], choices: Sequence[Choice], dyn: DynamicGraph, *,
    buckets: str | Mapping[str, Sequence[int]] | None, pad_values: Mapping[str, float] | None,
    profile: ShapeProfile | None, precision: str, capacity: int, stage_bytes: Sequence[int],
    report: Callable[[str, int, int], None], repeats: int = 3,
) -> ShapeChoice:
    """Each stage's shape mode and the plan's `Shapes` (see the module docstring).

    Raises:
        CompileError: malformed buckets or pad values; explicit buckets whose padding changes an
            answer or cannot be trimmed.
    """
    feeds = dyn.feeds
    pads = _check_pads(pad_values, graph)
    k = len(bounds) - 1
    costs = [{f"{key}_s": float(sum(c[bounds[s]:bounds[s + 1]])) for key, c in dyn.costs.items()} for s in range(k)]
    base = Shapes(dims=feeds.dims, pad_values=pads, batch=batch_dim(graph.inputs, graph.outputs), profile=profile)
    dynamic = ShapeChoice(base, ["dynamic"] * k, costs, [])
    if buckets is None:
        return ShapeChoice(base, dynamic.modes, costs, ["buckets=None: every stage runs each request's own shape"])
    related = {p for d in feeds.sums() for p in (d, *dim_parts(d))}
    if isinstance(buckets, str) and related:  # padding one of them would change the other
        return ShapeChoice(base, dynamic.modes, costs, [
            f"buckets 'auto': every stage dynamic, no buckets: dims {sorted(related)} are related by a sum "
            f"({', '.join(feeds.sums())}), and padding one would change the other"])
    if not isinstance(buckets, str) and related & set(buckets):
        raise CompileError(f"buckets name {sorted(related & set(buckets))}, which a sum dim relates "
                           f"({', '.join(feeds.sums())}): padding one would change the other; bucket other dims "
                           "or pass buckets=None")
    weights = [_stage_weights(graph, bounds, s) for s in range(k)]
    free = [max(0, capacity - b) for b in stage_bytes]
    with tempfile.TemporaryDirectory(prefix="corepipe-shapes-") as tmp:
        chain = _Chain(graph, bounds, Path(tmp))
        if isinstance(buckets, str):  # "auto"
            return _auto(chain, graph, bounds, choices, dyn, base, costs, profile, precision, free, weights,
                         repeats, report)
        sizes = _check_buckets(buckets, feeds.dims)
        shapes = replace(base, buckets=sizes)
        problem = _padding_problem(chain, dyn, shapes, graph.outputs)
        if problem is not None:
            raise CompileError(f"buckets {dict(sizes)}: {problem}; pass pad_values= (e.g. the model's pad "
                               "token, 0 for attention masks) or compile with buckets=None")
        wrong = _static_problems(chain, graph, bounds, choices, dyn, sizes, precision)
    variants = int(np.prod([len(v) for v in sizes.values()]))
    modes = ["buckets" if s not in wrong and (choice.engine == "onnxruntime" or variants <= (
        free[s] // weights[s] if weights[s] else variants)) else "dynamic" for s, choice in enumerate(choices)]
    notes = [f"buckets {dict(sizes)} as asked"] + [
        f"stage {s} runs the buckets on a bounded dynamic graph: " + (wrong[s] if s in wrong else (
            f"{variants} static copies of its {format_bytes(weights[s])} of weights would not fit the core memory"))
        for s, m in enumerate(modes) if m == "dynamic"]
    if "buckets" not in modes:
        raise CompileError(f"buckets {dict(sizes)}: no stage can run them as static graphs ({'; '.join(notes[1:])}); "
                           "use fewer buckets, buckets=None, or more core_memory")
    return ShapeChoice(shapes, modes, costs, notes)


def _auto(chain: _Chain, graph: ModelGraph, bounds: list[int], choices: Sequence[Choice], dyn: DynamicGraph,
          base: Shapes, costs: list[dict[str, float]], profile: ShapeProfile | None, precision: str,
          free: list[int], weights: list[int], repeats: int, report: Callable[[str, int, int], None]) -> ShapeChoice:
    """``buckets="auto"``: measure both modes on every stage and keep the faster pipeline."""
    feeds = dyn.feeds
    dim = main_dim(feeds, profile)
    lo, hi = feeds.dims[dim]
    if hi - lo < 2:
        return ShapeChoice(base, ["dynamic"] * len(choices), costs,
                           [f"buckets 'auto': dim {dim!r} spans {lo}..{hi}, too little to bucket"])
    sizes = candidate_sizes(lo, hi)
    times = _measure(chain, graph, bounds, choices, dyn, dim, sizes, precision, free, weights, repeats, report)
    # Without a profile, buckets are chosen for every size in range equally often.
    prof = profile or ShapeProfile.uniform(dim, lo, hi)
    weights_by_value: dict[int, float] = {}
    for dims, w in prof.weighted():
        v = dims.get(dim, feeds.typical[dim])
        weights_by_value[v] = weights_by_value.get(v, 0.0) + w
    decision = decide(times, weights_by_value, max_buckets=MAX_BUCKETS)
    for s, c in enumerate(costs):
        c.update(dynamic_s=decision.dynamic_s[s], buckets_s=decision.buckets_s[s])
    ratio = max(decision.buckets_s) / max(decision.dynamic_s) if decision.sizes else 1.0
    traffic = "the shape profile" if profile is not None else f"{dim} uniform over {lo}..{hi} (pass shape_profile= for yours)"
    figures = (f"for {traffic}, slowest stage {max(decision.dynamic_s) * 1e3:.3g} ms dynamic, "
               f"{max(decision.buckets_s) * 1e3:.3g} ms padded to buckets {list(decision.sizes)} ({ratio:.3f}x)")
    if not buckets_win(decision) or "buckets" not in decision.modes:
        return ShapeChoice(base, ["dynamic"] * len(choices), costs, [f"buckets 'auto' chose dynamic graphs: {figures}"])
    shapes = replace(base, buckets={dim: decision.sizes})
    problem = _padding_problem(chain, dyn, shapes, graph.outputs)
    if problem is not None:
        return ShapeChoice(base, ["dynamic"] * len(choices), costs,
                           [f"buckets 'auto' chose dynamic graphs: buckets would be faster ({figures}), but {problem}"])
    return ShapeChoice(shapes, list(decision.modes), costs, [f"buckets 'auto' chose buckets: {figures}"])


def _stage_weights(graph: ModelGraph, bounds: list[int], s: int) -> int:
    names = {w for node in graph.nodes[bounds[s]:bounds[s + 1]] for w in node.weights}
    return int(sum(graph.weight_bytes[w] for w in names))


def _check_buckets(buckets: Mapping[str, Sequence[int]], dims: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    if not isinstance(buckets, Mapping) or not buckets:
        raise CompileError(f"buckets must be 'auto', None, or a dict of dim -> sizes, got {buckets!r}")
    out = {}
    for dim, sizes in buckets.items():
        if dim not in dims:
            raise CompileError(f"buckets name {dim!r}, which is not in dynamic_dims {sorted(dims)}")
        lo, hi = dims[dim]
        values = sorted({int(v) for v in sizes})
        if not values or values[0] < lo or values[-1] > hi:
            raise CompileError(f"buckets of {dim!r} must lie within its range {lo}..{hi}, got {list(sizes)}")
        if values[-1] != hi:
            values.append(hi)  # every request in range needs a bucket
        out[dim] = tuple(values)
    return out


def _check_pads(pad_values: Mapping[str, float] | None, graph: ModelGraph) -> dict[str, float]:
    names = [t.name for t in graph.inputs]
    out = {}
    for name, value in (pad_values or {}).items():
        if name not in names:
            raise CompileError(f"pad_values names {name!r}, which is not a model input; the inputs are {names}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise CompileError(f"pad value of {name!r} must be a number, got {value!r}")
        out[name] = value.item() if isinstance(value, np.generic) else value
    return out


def check_bounds(graph: ModelGraph, bounds: list[int], dyn: DynamicGraph, choices: Sequence[Choice],
                 engines: Sequence[str], precision: str) -> list[Choice]:
    """The engines chosen at the typical shapes, checked against onnxruntime again at the
    smallest and largest: a stage whose engine gets those wrong runs on onnxruntime instead
    (with ``engine="auto"``; asked for by name, it is a `CompileError`)."""
    from ..cut.measure import time_stages_on

    out = list(choices)
    for label, feeds in (("smallest", dyn.feeds.low), ("largest", dyn.feeds.high)):
        trials = time_stages_on(graph, bounds, feeds, engines, precision, repeats=0)
        for s, trial in enumerate(trials):
            c = out[s]
            if c.engine != "onnxruntime" and c.engine not in trial.passed:
                why = trial.failures.get(c.engine)
                note = f"{c.engine} at the {label} shapes: {why}"
                out[s] = Choice("onnxruntime", "fp32", note, c.seconds, why=f"the only engine that runs it: {note}")
    return out
