"""`corepipe tune`: measure candidate (replicas, stages, threads) plans under real load against the
peers, choose one by objective, and write it as an artifact with its deployment.

Steps: analyse the model (cost model per stage count); measure the peers with bench's own
harness (same inputs, same run); predict every candidate with R x S x T = K and prune; compile
each kept candidate (balanced under load in its own deployment when it has stages to balance)
and measure it with one request per stage worker in flight; choose; answer the capacity
question when asked; then write the chosen artifact, `tune.png` and `tune.json` into the output
directory in one atomic step, so a failure or Ctrl-C anywhere before leaves it untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ..artifact.deployment import OBJECTIVES, Deployment
from ..artifact.manifest import open_artifact
from ..artifact.writer import check_output_dir, republish_artifact
from ..compiler.choose import check_request, resolve_precision
from ..compiler.driver import compile as compile_model
from ..compiler.estimate import estimate_model
from ..compiler.loadbalance import CpuWatch, measure_under_load
from ..errors import CorepipeError, DeploymentError
from ..runtime.placement import resolve_cores
from ..tune import (
    Candidate,
    CapacityAnswer,
    CostModel,
    Point,
    answer,
    candidates,
    choose,
    dominated_by,
    pareto_front,
    select,
    slowest_shares,
)
from ..tune.plot import render_png
from .bench import _parallel, _serial, example_feeds, resolve_model, strong_peers
from .benchresult import parallel_row, threads_row

__all__ = ["TuneResult", "run_tune"]

#: ``progress(message, done, total)``: the search so far, for a live display.
TuneProgress = Callable[[str, int, int], None]


@dataclass
class TuneResult:
    """Everything one tune run measured and decided (``tune.json`` is its `to_dict`)."""

    model: str
    cores: int
    objective: str
    latency_budget_s: float | None
    points: list[Point]
    pruned: list[tuple[Candidate, tuple[float, float]]]
    chosen: Point
    output: Path
    host: str
    seconds: float
    capacity: CapacityAnswer | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    repeats: int = 1
    tie: float = 0.03

    @property
    def peers(self) -> list[Point]:
        return [p for p in self.points if p.kind == "peer"]

    @property
    def front(self) -> list[Point]:
        return pareto_front(self.points)

    def best_peer(self, by: str = "throughput") -> Point | None:
        peers = self.peers
        if not peers:
            return None
        if by == "latency":
            return min(peers, key=lambda p: p.latency_p50_s)
        return max(peers, key=lambda p: p.throughput)

    def choice_for(self, objective: str) -> Point | None:
        """The plan the other objective would have chosen from the same measurements (within
        the same latency budget), or ``None`` when none meets it."""
        try:
            return choose(self.points, objective, self.latency_budget_s, tie=self.tie)
        except DeploymentError:
            return None

    def dominating_peers(self) -> list[Point]:
        """Peers both faster and lower-latency than the chosen plan (the target: none)."""
        return dominated_by(self.chosen, self.peers)

    def to_dict(self) -> dict[str, Any]:
        best = self.best_peer()
        return {
            "model": self.model, "cores": self.cores, "objective": self.objective,
            "latency_budget_s": self.latency_budget_s, "host": self.host, "seconds": self.seconds,
            "repeats": self.repeats, "tie": self.tie,
            "points": [p.to_dict() for p in self.points],
            "pruned": [{"candidate": dataclasses.asdict(c), "predicted": list(pred)} for c, pred in self.pruned],
            "failed": [{"name": n, "error": e} for n, e in self.failed],
            "chosen": self.chosen.name,
            "choice_by_objective": {o: getattr(self.choice_for(o), "name", None) for o in OBJECTIVES},
            "pareto_front": [p.name for p in self.front],
            "dominating_peers": [p.name for p in self.dominating_peers()],
            "vs_best_peer_throughput": None if best is None else self.chosen.throughput / best.throughput,
            "capacity": None if self.capacity is None else dataclasses.asdict(self.capacity),
        }


def _peer_requests(seconds: float, per_request_s: float, least: int = 8) -> int:
    return int(min(5000, max(least, seconds / max(per_request_s, 1e-6))))


class _Peers:
    """The peers, measured through bench's harness on the same inputs (each call one run):
    onnxruntime 1 thread (the reference), K threads and K sessions side by side, and bench's
    `strong_peers` (one session shared by K threads, OpenVINO THROUGHPUT and LATENCY at the
    precision being tuned)."""

    def __init__(self, path: Path, feeds: Mapping[str, np.ndarray], use: list[int], seconds: float,
                 precision: str, work: Path) -> None:
        self.path, self.use, self.seconds, self.precision = path, use, seconds, precision
        self.inputs = work / "inputs.npz"
        np.savez(self.inputs, **dict(feeds))  # type: ignore[arg-type]
        self.one_s: float | None = None  # seconds per request, 1 thread (sizes the other runs)
        self.k_threads_s: float | None = None

    def measurers(self) -> list[tuple[str, Callable[[], Point]]]:
        k = len(self.use)
        out = [("onnxruntime, 1 thread", self.one_thread)]
        if k > 1:
            out += [(f"onnxruntime, {k} threads", self.k_threads),
                    (f"{k} onnxruntime sessions in parallel", self.k_sessions)]
        for mode, name, what in strong_peers(k, self.precision):
            out.append((what, functools.partial(self.strong, mode, name)))
        return out

    def calibrated(self, measured: Mapping[str, Point]) -> tuple[float | None, float | None]:
        """(1-thread, K-thread) seconds per request for the cost model. They come from
        onnxruntime in fp32; OpenVINO LATENCY (K threads, one in flight, at the precision
        tuned) rescales both to the engine and precision the candidates run at."""
        ov = next((p for name, p in measured.items() if name.startswith("openvino LATENCY")), None)
        if ov is None or self.k_threads_s is None or self.one_s is None:
            return self.one_s, self.k_threads_s
        scale = (1 / ov.throughput) / self.k_threads_s
        return self.one_s * scale, self.k_threads_s * scale

    def _requests(self, speedup: float, least: int = 8) -> int:
        return _peer_requests(self.seconds, (self.one_s or 1.0) / speedup, least)

    def one_thread(self) -> Point:
        if self.one_s is None:  # a short probe sizes the real run
            r = _serial(self.path, self.inputs, 1, 4, 1, self.use[:1])
            self.one_s = r["elapsed_s"] / r["requests"]
        r = _serial(self.path, self.inputs, 1, self._requests(1.0), 2, self.use[:1])
        self.one_s = min(self.one_s, r["elapsed_s"] / r["requests"])
        return Point("ort 1 thread", "peer", r["requests"] / r["elapsed_s"], r["latency_p50_s"],
                     note="1 core: reference")

    def k_threads(self) -> Point:
        k = len(self.use)
        r = _serial(self.path, self.inputs, k, self._requests(k ** 0.8), 2, self.use)
        per = r["elapsed_s"] / r["requests"]
        self.k_threads_s = per if self.k_threads_s is None else min(self.k_threads_s, per)
        return Point(threads_row(k), "peer", 1 / per, r["latency_p50_s"])

    def k_sessions(self) -> Point:
        k = len(self.use)
        rate, results = _parallel(self.path, self.inputs, self._requests(k, 2 * k), 2, self.use)
        return Point(parallel_row(k), "peer", rate, float(np.median([x["latency_p50_s"] for x in results])))

    def strong(self, mode: str, name: str) -> Point:
        k = len(self.use)
        speedup = 2.0 * k if mode == "ov_throughput" else k  # OpenVINO may run bf16: ~2x onnxruntime
        r = _serial(self.path, self.inputs, k, self._requests(speedup, 2 * k), 2, self.use, mode=mode,
                    precision=self.precision)
        return Point(name, "peer", r["requests"] / r["elapsed_s"], r["latency_p50_s"])


def run_tune(
    model: str,
    output: str | os.PathLike[str],
    *,
    cores: int | None = None,
    objective: str = "throughput",
    latency_budget_s: float | None = None,
    rate: float | None = None,
    p99_s: float | None = None,
    max_cores: int = 1024,
    max_candidates: int = 6,
    balance: str = "load",
    rounds: int = 3,
    seconds: float = 3.0,
    repeats: int = 1,
    tie: float = 0.03,
    precision: str | None = None,
    engine: str = "auto",
    peers: bool = True,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    progress: TuneProgress | None = None,
    on_point: Callable[[Point], None] | None = None,
) -> TuneResult:
    """Tune ``model`` for ``cores`` cores and write the chosen artifact to ``output``.

    Args:
        model: ``.onnx`` path or ``zoo:NAME``.
        cores: K (default: every core this process may run on).
        objective: ``"throughput"`` (most req/s) or ``"latency"`` (least p50 under load).
        latency_budget_s: only plans whose measured p99 is within it are chosen.
        rate, p99_s: the capacity question: cores and replicas that hold ``rate`` req/s within
            a p99 of ``p99_s``, at most ``max_cores``.
        max_candidates: candidates measured (the rest are pruned by the cost model).
        balance: how candidates with several stages are cut: ``"load"``, ``"measure"`` or
            ``"estimate"``. rounds: cuts ``"load"`` measures per candidate.
        seconds: how long each measurement streams requests.
        repeats: measure every point this many times, in turn, keeping each one's best run
            (interference from other work on the machine only ever slows a run).
        tie: figures within this fraction of the best on the objective count as equal; the
            better one on the other axis is chosen among them (`corepipe.tune.choose`).
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"``: every candidate
            is compiled at it and the OpenVINO peers run at it (see `corepipe.compile`).
        engine: the candidates' compile engine (``"auto"``: per stage).
        peers: measure the peers in the same run: onnxruntime 1 and K threads, K sessions, one
            session shared by K threads, OpenVINO THROUGHPUT and LATENCY.
        progress, on_point: called as the search advances and as each point is measured.

    Returns:
        A `TuneResult`; the artifact, ``tune.png`` and ``tune.json`` are in ``output``.

    Raises:
        DeploymentError: K over the cores available, no plan within the latency budget, or a
            rate no core count up to ``max_cores`` holds. Nothing is written then.
        CompileError, ArtifactError: as `corepipe.compile`; ``output`` holds foreign files.
    """
    started = time.perf_counter()
    if objective not in OBJECTIVES:
        raise DeploymentError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if (rate is None) != (p99_s is None):
        raise DeploymentError("the capacity question needs both a rate (--rate) and a p99 budget (--p99)")
    use = resolve_cores(cores)
    k = len(use)
    prec = resolve_precision(precision)
    check_request(engine, prec)
    check_output_dir(output)  # before minutes of measuring, not after
    if importlib.util.find_spec("matplotlib") is None:  # tune.png is part of the artifact it writes
        raise CorepipeError("corepipe tune draws tune.png with matplotlib: pip install 'corepipe[plot]'")
    best: dict[str, Point] = {}  # name -> the best of its repeats (interference only slows)
    failed: list[tuple[str, str]] = []
    state = {"done": 0, "total": 4}

    def say(message: str) -> None:
        if progress is not None:
            progress(message, state["done"], state["total"])

    def add(point: Point) -> None:
        state["done"] += 1
        old = best.get(point.name)
        if old is not None:
            keep = point if point.throughput > old.throughput else old
            point = dataclasses.replace(keep, runs=old.runs + 1)
        best[point.name] = point
        if on_point is not None:
            on_point(point)
        say(f"measured {point.name}")

    with tempfile.TemporaryDirectory(prefix="corepipe-tune-") as tmp:
        work = Path(tmp)
        say("analyse the model")
        path, zoo_feeds = resolve_model(model, work)
        inputs = example_inputs or zoo_feeds
        pool = candidates(k)
        est = estimate_model(path, {c.stages for c in pool}, example_inputs=inputs)
        feeds = dict(inputs or example_feeds(list(est.inputs)))
        pool = [c for c in pool if est.min_stages <= c.stages <= est.max_stages]
        if not pool:
            raise DeploymentError(
                f"no plan of R x S x T = {k} cores exists for this model: it needs at least "
                f"{est.min_stages} stages and can be cut into at most {est.max_stages}")
        harness = _Peers(path, feeds, use, seconds, prec, work)
        peer_runs = harness.measurers() if peers else []
        state["total"] = repeats * (len(peer_runs) + min(max_candidates, len(pool)))
        for what, measure in peer_runs:
            say(f"peer: {what}")
            add(_watched(measure))
        one_s, kthreads_s = harness.calibrated(best)
        model_ = CostModel(one_core_s=one_s or est.one_core_s, cores=k, k_thread_s=kthreads_s,
                           slowest_share=slowest_shares(est.stage_seconds), weight_bytes=est.weight_bytes,
                           memory_bytes=int(psutil.virtual_memory().available * 0.8))
        chosen_c, pruned_c = select(pool, model_, objective=objective, keep=max_candidates)
        state["total"] = repeats * (len(peer_runs) + len(chosen_c))
        artifacts: dict[str, tuple[Candidate, Path]] = {}
        for i, c in enumerate(chosen_c):
            how = balance if c.stages > 1 else "estimate"
            say(f"{c.label}: compile ({how} balance)")

            def sub(step: str, done: int, total: int, label: str = c.label) -> None:
                say(f"{label}: {step}" + (f" {done}/{total}" if total > 1 and ": " not in step else ""))

            try:
                cm = compile_model(
                    path, work / f"cand{i}", num_cores=c.stages, example_inputs=inputs, balance=how,
                    engine=engine, precision=prec,
                    deployment=Deployment(replicas=c.replicas, threads_per_stage=c.threads, cores=k),
                    load_rounds=rounds, load_seconds=seconds, progress=sub)
            except CorepipeError as exc:  # e.g. a cut the graph does not allow: the others go on
                failed.append((c.label, str(exc)))
                state["total"] -= repeats
                continue
            artifacts[c.label] = (c, cm.path)
            add(_measure_candidate(c, cm.path, feeds, use, seconds, model_, how, say))
        for _ in range(repeats - 1):  # again, in the same order: a noisy moment hits one run, not all
            for what, measure in peer_runs:
                say(f"peer: {what} (again)")
                add(_watched(measure))
            for c, art in artifacts.values():
                add(_measure_candidate(c, art, feeds, use, seconds, model_, balance if c.stages > 1 else "estimate",
                                       say))
        points = list(best.values())
        artifact_of = {label: art for label, (_, art) in artifacts.items()}
        chosen = choose(points, objective, latency_budget_s, tie=tie)
        capacity = None
        if rate is not None and p99_s is not None:
            capacity = answer(points, rate, p99_s, measured_cores=k, max_cores=max_cores)
        result = TuneResult(
            model=model, cores=k, objective=objective, latency_budget_s=latency_budget_s, points=points,
            pruned=[(c, model_.predict(c)) for c in pruned_c if model_.fits(c)], chosen=chosen,
            output=Path(output), host=f"{os.uname().machine}, {len(os.sched_getaffinity(0))} cores",
            seconds=0.0, capacity=capacity, failed=failed, repeats=repeats, tie=tie,
        )
        say("write the artifact")
        _write(result, artifact_of[chosen.name], seconds=time.perf_counter() - started)
    return result


def _watched(measure: Callable[[], Point]) -> Point:
    watch = CpuWatch()
    point = measure()
    return dataclasses.replace(point, foreign_cpu=watch.foreign_share())


def _measure_candidate(c: Candidate, art: Path, feeds: Mapping[str, np.ndarray], use: list[int], seconds: float,
                       model: CostModel, how: str, say: Callable[[str], None]) -> Point:
    say(f"{c.label}: measure under load ({c.window} in flight)")
    m = measure_under_load(art, feeds, replicas=c.replicas, threads_per_stage=c.threads, cores=use, seconds=seconds)
    return Point(c.label, "candidate", m.throughput, m.latency_p50_s, m.latency_p99_s, candidate=c,
                 predicted=model.predict(c), chunk_throughputs=m.chunk_throughputs,
                 note=f"{how} balance" if c.stages > 1 else "", foreign_cpu=m.foreign_cpu)


def _write(result: TuneResult, source: Path, *, seconds: float) -> None:
    """The chosen artifact with its deployment, the picture and the figures, in one step."""
    result.seconds = seconds
    chosen, c = result.chosen, result.chosen.candidate
    assert c is not None
    art = open_artifact(source)
    deployment = Deployment(
        replicas=c.replicas, threads_per_stage=c.threads, cores=result.cores,
        objective=result.objective, throughput=chosen.throughput, latency_p50_s=chosen.latency_p50_s,
        latency_p99_s=chosen.latency_p99_s,
    )
    plan = dataclasses.replace(art.plan, deployment=deployment,
                               notes=art.plan.notes + (f"tuned for {result.objective} on {result.cores} cores",))
    title = (f"{result.model}: {result.cores} cores, objective {result.objective} "
             f"(chosen {chosen.name}: {chosen.throughput:.4g} req/s, p50 {chosen.latency_p50_s * 1e3:.4g} ms)")
    png = render_png(result.points, chosen, title=title)
    data = (json.dumps(result.to_dict(), indent=1, default=float) + "\n").encode()
    republish_artifact(art, result.output, plan, extras={"tune.png": png, "tune.json": data})
