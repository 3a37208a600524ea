"""Measured balance: time candidate stages on one core and move boundaries until they balance.

Needs one machine and one core, not N devices: each candidate stage is built in memory, run with
one thread on real boundary tensors (from the example inputs) on every candidate engine, and its
time (the faster engine's, with ``engine="auto"``) is spread over its nodes in proportion to
their estimates. The solver then re-cuts with the corrected costs; we stop when the cut no
longer changes, and keep the best cut measured, with each stage's engine.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...artifact.target import Target
from ...artifact.writer import save_stage_model
from ...engines import LoadFailure, engine_class, missing_engine
from ...engines.base import Ranges
from ...engines.speeds import PROBE_ENV, SpeedCache
from ..checks.unchecked import onnxruntime_stages
from ..model.graph import ModelGraph
from . import solver
from .choose import Choice, data_choice, differs, engine_precision, failure_error, fallback_note, io_names
from .partition import build_stage_model, links_for, stage_variants

__all__ = ["StageTime", "measured_balance", "time_stages", "time_stages_on", "example_feeds"]


@dataclass
class StageTime:
    """One stage tried on each engine: those that ran it correctly (``passed``, in trial order),
    their one-core seconds when timed, and why the others could not."""

    passed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    dynamic: str | None = None  # why OpenVINO's reader finds the stage not static, if it does
    snippets: bool = False  # OpenVINO passed with its snippets on
    snippets_off: str | None = None  # why they are off: what they computed wrong
    source: str | None = None  # where ``seconds`` come from ("measured", "probe timed now", ...)

    def choice(self, order: Sequence[str], precision: str, stage: int, engine: str,
               unchecked: str | None = None) -> Choice:
        """The engine to use: the fastest one timed (else the first in ``order`` that passed) at
        the precision asked for; one that runs another precision (onnxruntime when bf16 was
        asked for) only where none at that precision passed. ``unchecked``: why the stage must
        run on onnxruntime (request data reaches an operand openvino does not check)."""
        ok = [e for e in order if e in self.passed]
        if not ok:
            raise failure_error(stage, next(iter(self.failures.values())), engine)
        if unchecked is not None:
            return data_choice(stage, unchecked, engine, "onnxruntime" in self.passed, self.seconds,
                               fallback_note([f for e, f in self.failures.items() if e in order]))
        same = [e for e in ok if engine_precision(e, precision) == precision] or ok
        timed = [e for e in same if e in self.seconds]
        best = min(timed, key=lambda e: self.seconds[e]) if timed else same[0]
        failed = [f for e, f in self.failures.items() if e in order]
        note = fallback_note(failed)
        if note and self.dynamic:  # the likely cause of the fallback first
            note = f"the stage is not static ({self.dynamic}); {note}"
        ov = best == "openvino"
        return Choice(best, engine_precision(best, precision), note, dict(self.seconds), self.dynamic,
                      snippets=ov and self.snippets, snippets_off=self.snippets_off if ov else None,
                      why=self._why(best, ok, same, order, precision, engine, note))

    def _why(self, best: str, ok: Sequence[str], same: Sequence[str], order: Sequence[str], precision: str,
             engine: str, note: str | None) -> str:
        """Why ``best`` runs the stage, in words the plan keeps: what was asked, what could not
        run it, or each engine's one-core time and where it comes from."""
        times = ", ".join(f"{e} {engine_precision(e, precision)} {self.seconds[e] * 1e3:.3g} ms"
                          for e in sorted(self.seconds, key=lambda e: self.seconds[e]))
        timed = f" ({times} on one core, {self.source})" if times and self.source else ""
        if engine != "auto":
            return f"engine={engine!r} was asked for"
        if len(order) == 1:
            return f"{best} is the only engine installed"
        if len(ok) == 1:
            return f"the only engine that runs it: {note}{timed}"
        if len(same) == 1 and len(ok) > 1:
            return f"the only engine that runs precision {precision!r}{timed}"
        if times and len(self.seconds) > 1:
            return f"fastest on one core ({self.source}): {times}"
        return f"{best} first: the engines were not timed ({PROBE_ENV}=off)"

    @property
    def best(self) -> float:
        return min(self.seconds.values())


def example_feeds(graph: ModelGraph, example_inputs: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """One request for ``graph`` (what balancing runs through candidate stages)."""
    return _feeds(graph, example_inputs)


def _feeds(graph: ModelGraph, example_inputs: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The example inputs; where one is missing, seeded normal floats (zeros for other dtypes)."""
    rng = np.random.default_rng(0)
    out = {}
    for spec in graph.inputs:
        if example_inputs is not None and spec.name in example_inputs:
            out[spec.name] = np.asarray(example_inputs[spec.name])
        elif np.dtype(spec.dtype).kind == "f":
            out[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        else:
            out[spec.name] = np.zeros(spec.shape, dtype=spec.dtype)
    return out


def _try(name: str, raw: str, inputs: list[str], outputs: list[str], precision: str,
         feeds: Mapping[str, np.ndarray], repeats: int, variants: Sequence[Ranges] | None = None,
         snippets: bool = False) -> tuple[list[np.ndarray], float | None]:
    """Load the stage on engine ``name`` with one thread, run it (and time ``repeats`` runs);
    ``snippets``: OpenVINO's snippets on."""
    options = {"snippets": snippets} if name == "openvino" else {}
    engine = engine_class(name)(raw, inputs=inputs, outputs=outputs, threads=1,
                                precision=engine_precision(name, precision), variants=variants, **options)
    try:
        values = engine.run(feeds)  # warm-up, and the next stage's inputs
    except Exception as exc:  # it compiled but cannot run these inputs
        raise LoadFailure(name, f"running it on the example inputs failed: {exc}") from None
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.run(feeds)
        samples.append(time.perf_counter() - t0)
    return values, (float(np.min(samples)) if samples else None)


def _try_stage(
    path: str, inputs: list[str], outputs: list[str], boundary: Mapping[str, np.ndarray],
    order: Sequence[str], engines: Sequence[str], precision: str, repeats: int,
    variants: Sequence[Ranges] | None = None,
) -> tuple[StageTime, dict[str, list[np.ndarray]]]:
    """One stage on each engine of ``order``; each candidate checked against onnxruntime."""
    feeds = {name: boundary[name] for name in inputs}
    trial = StageTime()
    if "openvino" in order:  # read as OpenVINO reads it: every op's output static?
        from ...engines.ov import dynamic_outputs

        # Over dynamic dims, static at their bounds: each input at the largest shape it takes.
        bounds = {n: [hi for _, hi in axes] for n, axes in zip(inputs, variants[-1])} if variants else None
        try:
            found = dynamic_outputs(path, shapes=bounds)
        except LoadFailure:
            found = []  # the engine's own load below says why
        if found:
            trial.dynamic = "OpenVINO reads " + "; ".join(found)
    produced: dict[str, list[np.ndarray]] = {}
    for name in order:
        # OpenVINO first with its snippets on, then, where they fail or compute the stage wrong
        # (some bf16 graphs in 2026.4), without them: the check decides per stage.
        for snippets in ((True, False) if name == "openvino" else (False,)):
            trial.failures.pop(name, None)
            try:
                values, sec = _try(name, path, inputs, outputs, precision, feeds,
                                   repeats if name in engines else 0, variants, snippets)
            except LoadFailure as exc:
                trial.failures[name] = exc
                if snippets:
                    trial.snippets_off = f"with them it fails: {exc.reason}"
                continue
            want = produced.get("onnxruntime")
            problem = None
            if want is not None and name != "onnxruntime":
                problem = next(((out_name, p) for out_name, got, ref in zip(outputs, values, want)
                                if (p := differs(got, ref, engine_precision(name, precision))) is not None), None)
            if problem is not None:
                trial.failures[name] = LoadFailure(name, f"output {problem[0]!r} {problem[1]}")
                if snippets:
                    trial.snippets_off = f"with them output {problem[0]!r} {problem[1]}"
                continue
            produced[name] = values
            if name == "openvino":
                trial.snippets = snippets
                if snippets:
                    trial.snippets_off = None
            break
        if name in engines and name not in trial.failures:
            trial.passed.append(name)
            if sec is not None:
                trial.seconds[name] = sec
    return trial, produced


def time_stages_on(
    graph: ModelGraph,
    bounds: Sequence[int],
    example_inputs: Mapping[str, np.ndarray] | None,
    engines: Sequence[str] = ("onnxruntime",),
    precision: str = "fp32",
    *,
    repeats: int = 5,
    variants: Sequence[Sequence[Ranges] | None] | None = None,
    speeds: SpeedCache | None = None,
    reuse: bool = False,
    source: str = "measured",
) -> list[StageTime]:
    """Each stage of ``bounds`` run on one core (one thread) on each of ``engines`` and, with
    ``repeats`` > 0, timed: the fastest of ``repeats`` runs, since interference from a busy
    machine only ever adds time. onnxruntime runs every stage as the reference (its outputs feed
    the next stage); another engine whose outputs differ from it (`differs`) fails that stage.
    ``variants``: per stage, the input shapes each engine compiles it for (over dynamic dims).
    ``speeds``: the machine's cache of stage times, where each stage's times are kept; with
    ``reuse``, a stage whose times it holds for every engine of ``engines`` is only checked, not
    timed again. ``source``: how `StageTime.source` names freshly timed figures.

    Raises:
        CompileError: a stage that none of ``engines`` can run.
    """
    k = len(bounds) - 1
    if variants is None:  # over dynamic dims: each stage's bounded dynamic graph
        variants = stage_variants(graph, list(bounds))
    boundary = dict(_feeds(graph, example_inputs))
    reference = missing_engine("onnxruntime") is None
    order = (["onnxruntime"] if reference else []) + [e for e in engines if e != "onnxruntime"]
    out = []
    for s in range(k):
        model = build_stage_model(graph, bounds[s], bounds[s + 1], s == k - 1)
        inputs, outputs = io_names(model)
        with tempfile.TemporaryDirectory(prefix="corepipe-try-") as tmp:
            # Written as the artifact will hold it, so each engine reads what a worker reads.
            raw = str(save_stage_model(model, Path(tmp), "stage.onnx", "stage.weights"))
            del model
            key = stage_key(graph, bounds, s, inputs, boundary, variants[s] if variants is not None else None)
            cached = speeds.get(key) if speeds is not None and reuse else None
            hit = cached is not None and all(e in cached for e in engines)
            trial, produced = _try_stage(raw, inputs, outputs, boundary, order, engines, precision,
                                         0 if hit else repeats, variants[s] if variants is not None else None)
        if hit and cached is not None:
            trial.seconds = {e: cached[e] for e in trial.passed}
            trial.source = "probe cached for this machine"
        elif trial.seconds:
            trial.source = source
            if speeds is not None:
                speeds.put(key, trial.seconds)
        if not trial.passed:
            failed = [trial.failures[e] for e in engines if e in trial.failures]
            raise failure_error(s, failed[0], "auto" if len(engines) > 1 else engines[0])
        ref = produced.get("onnxruntime") or next(iter(produced.values()))
        boundary.update(zip(outputs, ref))
        out.append(trial)
    return out


def stage_key(graph: ModelGraph, bounds: Sequence[int], s: int, inputs: Sequence[str],
              boundary: Mapping[str, np.ndarray], variants: Sequence[Ranges] | None) -> str:
    """What names stage ``s`` in the engine-speed cache: the source model, the node range,
    whether it is the last stage, its input shapes and dtypes, and its dynamic ranges."""
    last = "last" if s == len(bounds) - 2 else "mid"
    shapes = ";".join(f"{n}:{boundary[n].dtype}{list(boundary[n].shape)}" for n in inputs)
    ranges = "" if not variants else f"|{[list(v) for v in variants]}"
    return f"{graph.source_sha256}:{bounds[s]}-{bounds[s + 1]}:{last}:{shapes}{ranges}"


def time_stages(
    graph: ModelGraph,
    bounds: Sequence[int],
    example_inputs: Mapping[str, np.ndarray] | None,
    *,
    repeats: int = 5,
    engines: Sequence[str] = ("onnxruntime",),
    precision: str = "fp32",
) -> list[float]:
    """Seconds of each stage of ``bounds`` on one core: the fastest engine's (see `time_stages_on`)."""
    return [t.best for t in time_stages_on(graph, bounds, example_inputs, engines, precision, repeats=repeats)]


def measured_balance(
    graph: ModelGraph,
    problem: solver.Problem,
    target: Target,
    bounds: list[int],
    example_inputs: Mapping[str, np.ndarray] | None,
    report: Callable[[str, int, int], None],
    *,
    engines: Sequence[str] = ("onnxruntime",),
    precision: str = "fp32",
    engine: str = "onnxruntime",
    rounds: int = 6,
) -> tuple[list[int], list[float], list[Choice]]:
    """Refine ``bounds`` by measurement. Returns (bounds, per-node seconds, per-stage choices
    with their measured seconds).

    Each round times the current cut, spreads each stage's time (its chosen engine's) over its
    nodes in proportion to their estimates, and re-solves. It stops when a cut comes back. The
    two best cuts are then timed again and each stage keeps its fastest time per engine, so one
    noisy round cannot pick the cut.

    Raises:
        CompileError: a stage that none of ``engines`` can run.
    """
    k = len(bounds) - 1
    links = links_for(target, k)
    compute = list(problem.compute)
    seen: dict[tuple[int, ...], list[Choice]] = {}
    timed: dict[tuple[int, ...], list[StageTime]] = {}

    speeds = SpeedCache.open(precision) if len(engines) > 1 else None

    def measure(cut: tuple[int, ...]) -> list[Choice]:
        timings = time_stages_on(graph, list(cut), example_inputs, engines, precision, speeds=speeds)
        if speeds is not None:
            speeds.save()
        for new, old in zip(timings, timed.get(cut, [])):  # each engine's fastest time of both
            for e, sec in old.seconds.items():
                new.seconds[e] = min(sec, new.seconds.get(e, sec))
        timed[cut] = timings
        unchecked = onnxruntime_stages(graph, cut)
        seen[cut] = [t.choice(engines, precision, s, engine, unchecked.get(s)) for s, t in enumerate(timings)]
        return seen[cut]

    def slowest(choices: list[Choice]) -> float:
        return max(c.seconds[c.engine] for c in choices)

    for r in range(rounds):
        report("measure stages", r, rounds + 2)
        chosen = measure(tuple(bounds))
        for s in range(k):
            est = sum(compute[bounds[s]:bounds[s + 1]])
            scale = chosen[s].seconds[chosen[s].engine] / est if est > 0 else 1.0
            for i in range(bounds[s], bounds[s + 1]):
                compute[i] *= scale
        corrected = dataclasses.replace(problem, compute=compute)
        bounds = solver.solve(corrected, k, links)
        if tuple(bounds) in seen:
            break
    finalists = sorted(seen, key=lambda cut: slowest(seen[cut]))[:2]
    for i, cut in enumerate(finalists):
        report("measure stages", rounds + i, rounds + 2)
        measure(cut)
    report("measure stages", rounds + 2, rounds + 2)
    best = min(seen, key=lambda cut: slowest(seen[cut]))
    # The latest corrected costs are the closest to the truth we have.
    return list(best), compute, seen[best]
