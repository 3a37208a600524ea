"""Balance under load: run the candidate pipeline with every stage busy, and cut again.

Stages balanced one at a time on an idle core are not balanced when they all run at once: they
share caches, memory bandwidth and the hand-off rings, and some suffer more than others (see
the note in issue 8: BERT's 16 stages ran 1.8x slower together, and unevenly). So each round
writes the cut as a real artifact, starts it with the deployment it will run in (replicas x
threads per stage), streams requests with one request per stage worker in flight, and reads
each stage's busy seconds per request from the workers' own counters. Each stage's busy time
is spread over its nodes in proportion to their current costs, the solver cuts again, and we
repeat for a bounded number of rounds (stopping early when a cut comes back), keeping the cut
with the highest measured throughput. `measure_under_load` is also what `corepipe tune` uses
to measure each candidate plan.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact.deployment import Deployment
from ...artifact.target import Target
from ...errors import CompileError, DeploymentError
from ...runtime import StageStats, load
from ...runtime.placement import resolve_cores
from ..model.graph import ModelGraph
from . import solver
from .partition import links_for

__all__ = ["LoadMeasurement", "measure_under_load", "balance_under_load", "LoadBalance", "CpuWatch"]


class CpuWatch:
    """How much of the machine's CPU time *other* processes took while something ran here.

    The machine's busy time (all CPUs) minus this process tree's (itself, its live descendants,
    and the children it has waited for) over the wall time x CPUs: a figure measured while
    others load the machine says so, instead of passing for this code's own speed.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        me = psutil.Process()
        c = me.cpu_times()
        ours = c.user + c.system + c.children_user + c.children_system
        for child in me.children(recursive=True):
            try:
                cc = child.cpu_times()
                ours += cc.user + cc.system
            except psutil.Error:  # gone meanwhile: its time shows in children_* once reaped
                pass
        return time.perf_counter(), busy, ours

    def foreign_share(self) -> float:
        """Share of all CPUs' time since construction used by other processes (0..1)."""
        import psutil

        t0, busy0, ours0 = self._start
        t1, busy1, ours1 = self._snapshot()
        span = max(t1 - t0, 1e-9) * (psutil.cpu_count() or 1)
        return max(0.0, min(1.0, ((busy1 - busy0) - (ours1 - ours0)) / span))


@dataclass(frozen=True)
class LoadMeasurement:
    """One pipeline measured under load.

    Attributes:
        throughput: completed requests per second over the timed window.
        latency_p50_s, latency_p99_s: submit-to-result latency of the timed requests.
        stage_busy_s: each stage's busy seconds per request during the window (the mean over
            replicas): what each stage costs when all run at once.
        requests: requests timed. window: requests kept in flight.
        chunk_throughputs: the window cut into consecutive chunks, each one's rate: the
            measurement's own spread, for how sure a figure is.
        foreign_cpu: share of the machine's CPU time other processes used meanwhile.
    """

    throughput: float
    latency_p50_s: float
    latency_p99_s: float
    stage_busy_s: list[float]
    requests: int
    window: int
    chunk_throughputs: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    foreign_cpu: float = 0.0

    @property
    def spread(self) -> float:
        """Relative spread of the chunk rates, (max - min) / mean; 0 with fewer than 2 chunks."""
        rates = self.chunk_throughputs
        if len(rates) < 2 or np.mean(rates) <= 0:
            return 0.0
        return float((max(rates) - min(rates)) / np.mean(rates))


def measure_under_load(
    path: str | Path,
    feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    *,
    replicas: int = 1,
    threads_per_stage: int = 1,
    cores: int | Sequence[int] | None = None,
    window: int | None = None,
    seconds: float = 3.0,
    min_requests: int = 8,
    max_requests: int = 20_000,
    warmup: int | None = None,
    max_batch: int | None = None,
    batch_delay: float | str = 0.0,
) -> LoadMeasurement:
    """Start the artifact at ``path`` as R replicas x T threads per stage and time it full.

    A closed loop keeps ``window`` requests in flight (default R x S: one per stage worker, so
    every stage is busy and none queues behind another), sends ``warmup`` requests (default
    2 x window) before the clock starts, then times at least ``min_requests`` and stops after
    ``seconds`` or ``max_requests``. ``feeds``: one request, or several (mixed traffic) sent in
    turn. ``max_batch``, ``batch_delay``: dynamic batching, as `corepipe.load`'s.

    Raises:
        DeploymentError: R x S x T exceeds ``cores``.
    """
    reqs = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    batching: dict[str, Any] = {"max_batch": max_batch, "batch_delay": batch_delay} if max_batch else {}
    with load(path, replicas=replicas, threads_per_stage=threads_per_stage, cores=cores,
              max_in_flight=window or None, **batching) as pipe:
        stages = pipe.plan.num_cores
        window = window or replicas * stages
        warm = warmup if warmup is not None else 2 * window
        # Futures complete in submission order and we always wait on the oldest, so the moment
        # its result() returns is its completion time (to within our own loop's few microseconds).
        pending: collections.deque[tuple[int, Future[dict[str, np.ndarray]]]] = collections.deque()
        submitted: list[float] = []
        done: dict[int, float] = {}
        before = pipe.stats() if warm == 0 else None
        t0 = time.perf_counter()
        watch = [CpuWatch()]

        def collect() -> None:
            nonlocal before, t0
            j, fut = pending.popleft()
            fut.result()
            done[j] = time.perf_counter()
            if j == warm - 1:  # the pipeline is full: start the clock and the busy counters
                before, t0, watch[0] = pipe.stats(), done[j], CpuWatch()

        while True:
            timed = len(submitted) - warm
            if before is not None and timed >= min_requests and (
                    time.perf_counter() - t0 >= seconds or timed >= max_requests):
                break
            while len(pending) >= window:
                collect()
            submitted.append(time.perf_counter())
            pending.append((len(submitted) - 1, pipe.submit(reqs[(len(submitted) - 1) % len(reqs)])))
        while pending:
            collect()
        after = pipe.stats()
        foreign = watch[0].foreign_share()
    assert before is not None
    timed_ids = range(warm, len(submitted))
    ends = [done[j] for j in timed_ids]
    elapsed = max(ends[-1] - t0, 1e-9)
    lat = [done[j] - submitted[j] for j in timed_ids]
    return LoadMeasurement(
        throughput=len(ends) / elapsed,
        latency_p50_s=float(np.percentile(lat, 50)),
        latency_p99_s=float(np.percentile(lat, 99)),
        stage_busy_s=_busy_per_request(before.stages, after.stages, stages),
        requests=len(ends), window=window, chunk_throughputs=_chunk_rates(t0, ends), latencies_s=lat,
        foreign_cpu=foreign,
    )


def _busy_per_request(before: Sequence[StageStats], after: Sequence[StageStats], stages: int) -> list[float]:
    """Busy seconds per request of each stage index over the window, averaged over replicas."""
    busy = [0.0] * stages
    count = [0] * stages
    for a, b in zip(before, after):
        n = b.requests - a.requests
        if n > 0:
            busy[b.index] += (b.busy_s - a.busy_s) / n
            count[b.index] += 1
    return [busy[k] / count[k] if count[k] else 0.0 for k in range(stages)]


def _chunk_rates(t0: float, ends: list[float], chunks: int = 5) -> list[float]:
    """Rates of ``chunks`` consecutive runs of completions (each from the previous end)."""
    if len(ends) < 2 * chunks:
        chunks = max(1, len(ends) // 2)
    size = len(ends) // chunks
    rates, start = [], t0
    for c in range(chunks):
        part = ends[c * size:(c + 1) * size]
        if not part:
            break
        span = part[-1] - start
        if span > 0:
            rates.append(len(part) / span)
        start = part[-1]
    return rates


@dataclass(frozen=True)
class LoadBalance:
    """What `balance_under_load` found: the best cut, its per-node costs, and its measurement."""

    bounds: list[int]
    compute: list[float]
    measurement: LoadMeasurement
    rounds: int
    tried: dict[tuple[int, ...], float]  # cut -> best throughput measured


def balance_under_load(
    graph: ModelGraph,
    problem: solver.Problem,
    target: Target,
    bounds: list[int],
    feeds: Mapping[str, np.ndarray],
    write: Callable[[list[int], list[float], Path], Path],
    report: Callable[[str, int, int], None],
    *,
    deployment: Deployment | None = None,
    rounds: int = 4,
    seconds: float = 3.0,
) -> LoadBalance:
    """Refine ``bounds`` by running each candidate cut under load; see the module docstring.

    Args:
        write: ``write(bounds, compute, directory)`` writes an artifact of that cut and returns
            its path (the driver's own writer, so what is measured is what ships).
        deployment: replicas and threads per stage to measure with (default 1 x 1), on its
            ``cores``.
        rounds: at most this many cuts are measured before the two best are measured again.

    Raises:
        CompileError: the deployment needs more cores than this process may use.
    """
    k = len(bounds) - 1
    dep = deployment or Deployment(cores=k)
    try:
        use = resolve_cores(dep.cores)
    except DeploymentError as exc:
        raise CompileError(f"balance='load' runs every stage on its own cores: {exc}") from None
    if dep.cores_needed(k) > len(use):
        raise CompileError(
            f"balance='load' runs every stage on its own cores: {dep.describe(k)} needed, but this "
            f"process may use {len(use)}; use balance='measure' (one core at a time), or fewer stages"
        )
    links = links_for(target, k)
    compute = list(problem.compute)
    seen: dict[tuple[int, ...], LoadMeasurement] = {}
    costs: dict[tuple[int, ...], list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="corepipe-balance-"))
    total = rounds + 2
    step = "balance under load"

    def run(cut: tuple[int, ...], done: int) -> LoadMeasurement:
        report(f"{step}: cut {list(cut[1:-1])}, starting", done, total)
        path = write(list(cut), costs[cut], work / f"cut{done}")
        m = measure_under_load(path, feeds, replicas=dep.replicas, threads_per_stage=dep.threads_per_stage,
                               cores=use[:dep.cores_needed(k)], seconds=seconds)
        shutil.rmtree(path, ignore_errors=True)
        busy = " / ".join(f"{b * 1e3:.3g}" for b in m.stage_busy_s)
        report(f"{step}: cut {list(cut[1:-1])}: {m.throughput:,.4g} req/s, stages {busy} ms busy per request",
               done + 1, total)
        if cut in seen and seen[cut].throughput >= m.throughput:
            m = seen[cut]  # interference only ever slows a run: keep the better one
        seen[cut] = m
        return m

    try:
        for r in range(rounds):
            cut = tuple(bounds)
            costs[cut] = list(compute)
            measured = run(cut, r)
            for s in range(k):  # spread each stage's busy time over its nodes, as costs say
                est = sum(compute[bounds[s]:bounds[s + 1]])
                scale = measured.stage_busy_s[s] / est if est > 0 and measured.stage_busy_s[s] > 0 else 1.0
                for i in range(bounds[s], bounds[s + 1]):
                    compute[i] *= scale
            bounds = solver.solve(dataclasses.replace(problem, compute=compute), k, links)
            if tuple(bounds) in seen:
                break
        done = len(seen)
        finalists = sorted(seen, key=lambda c: -seen[c].throughput)[:2] if len(seen) > 1 else []
        for i, cut in enumerate(finalists):
            run(cut, min(done + i, total - 1))
        report(step, total, total)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(seen, key=lambda c: seen[c].throughput)
    return LoadBalance(
        bounds=list(best), compute=compute, measurement=seen[best], rounds=len(seen),
        tried={c: m.throughput for c, m in seen.items()},
    )
