"""The corepipe pipeline as one bench row: throughput while full, latency with one request alone,
what the hand-offs cost, and the resident memory of its workers."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ..runtime import PipelineStats, Timeline, load
from .reqfile import requests_digest
from .result import BenchRow
from .traffic import Traffic

__all__ = ["measure_pipeline", "path_service_s", "boundary_means", "stage_precision", "stage_engine"]

#: Requests timed one at a time for the pipeline's latency (at most; fewer when fewer are sent).
SOLO = 50


def stage_precision(stages: Sequence[Mapping[str, Any]]) -> str:
    """The precision the stages computed at: ``"bf16"``, or ``"bf16+fp32"`` when they differ."""
    return "+".join(sorted({str(s.get("precision", "fp32")) for s in stages})) or "fp32"


def stage_engine(stages: Sequence[Mapping[str, Any]]) -> str:
    """The engine of the stages: ``"openvino"``, or ``"onnxruntime+openvino"`` when they differ."""
    return "+".join(sorted({str(s.get("engine", "onnxruntime")) for s in stages})) or "onnxruntime"


def _stage_pids(pipe: Any) -> list[int]:
    if hasattr(pipe, "worker_pids"):
        return list(pipe.worker_pids())
    return [int(w["pid"]) for w in pipe.placement()]  # ray: actors on this host in a bench


def _added_per_index(before: Sequence[Any], after: Sequence[Any], amount: Callable[[Any], float],
                     count: Callable[[Any], int]) -> dict[int, float]:
    """Per index (stage or boundary), over all replicas: what ``amount`` added between two stats
    snapshots over what ``count`` added (0 where nothing was counted)."""
    def totals(items: Sequence[Any]) -> dict[int, tuple[float, int]]:
        out: dict[int, tuple[float, int]] = {}
        for x in items:
            t, n = out.get(x.index, (0.0, 0))
            out[x.index] = (t + amount(x), n + count(x))
        return out

    earlier, out = totals(before), {}
    for i, (t, n) in sorted(totals(after).items()):
        t0, n0 = earlier.get(i, (0.0, 0))
        out[i] = (t - t0) / (n - n0) if n > n0 else 0.0
    return out


def path_service_s(before: PipelineStats, after: PipelineStats) -> float:
    """Mean run time of one request's stages between two stats snapshots: a request crosses one
    copy of each stage, whichever replica served it, so per stage index it is busy seconds over
    requests (both summed over replicas), added along the path."""
    return sum(_added_per_index(before.stages, after.stages, lambda s: s.busy_s, lambda s: s.requests).values())


def boundary_means(before: PipelineStats, after: PipelineStats) -> list[float]:
    """Mean hand-off per boundary index between two stats snapshots (backends that time
    them), over all replicas."""
    return list(_added_per_index(before.boundaries, after.boundaries, lambda x: x.mean_s * x.handoffs,
                                 lambda x: x.handoffs).values())


def _closed_loop(pipe: Any, reqs: Sequence[Mapping[str, np.ndarray]], fill: int, count: int, clients: int
                 ) -> tuple[float, list[float]]:
    """``clients`` requests kept in flight (each client sends its next request when its answer
    is back): ``(requests per second of the ``count`` after the first ``fill``, their
    latencies)``. Futures complete in submission order and the oldest is always the one waited
    on, so the moment its result() returns is its completion time. Requests keep coming until
    the last timed one is back, so the loop is full throughout."""
    pending: collections.deque[tuple[float, Any]] = collections.deque()
    latencies: list[float] = []
    sent = completed = 0
    start = now = time.perf_counter()
    while completed < fill + count:
        while sent < fill + count + clients and len(pending) < clients:
            pending.append((time.perf_counter(), pipe.submit(reqs[sent % len(reqs)])))
            sent += 1
        t0, fut = pending.popleft()
        fut.result()
        now = time.perf_counter()
        completed += 1
        if completed == fill:
            start = now
        elif completed > fill:
            latencies.append(now - t0)
    for _, fut in pending:
        fut.result()
    return count / max(now - start, 1e-9), latencies


def measure_pipeline(path: Path, feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                     traffic: Traffic, backend: str, options: Mapping[str, Any], *,
                     stages: Sequence[Mapping[str, Any]], setup: str = "corepipe",
                     ) -> tuple[BenchRow, Timeline, list[str]]:
    """Load the artifact at ``path`` on ``backend`` (``options``: `corepipe.load`'s, e.g.
    ``max_batch``) and measure it: ``(row, the timeline of the throughput run, the cores each
    stage ran on)``. ``feeds``: one request, or the requests of mixed traffic, sent in turn.

    Throughput: ``traffic.requests`` streamed right behind the warm-up, so the pipeline is full
    when the clock starts (its fill is a one-off, like a session's first run, and the peers
    have none to pay). Latency: up to `SOLO` requests one at a time; the stages' run times
    during them give the hand-off cost. With ``traffic.concurrency`` C, a closed loop of C
    clients instead, and the latency is each request's under that load (C in flight).
    """
    reqs = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    with load(path, backend=backend, **options) as pipe:
        fill = max(traffic.warmup, 2 * pipe.plan.num_cores, traffic.concurrency or 0)
        requests = traffic.requests
        loaded: list[float] = []
        if traffic.concurrency:
            rate, loaded = _closed_loop(pipe, reqs, fill, requests, traffic.concurrency)
        else:
            start = time.perf_counter()
            stream = (reqs[i % len(reqs)] for i in range(fill + requests))
            for i, out in enumerate(pipe.map(stream)):
                del out
                if i == fill - 1:
                    start = time.perf_counter()
            rate = requests / (time.perf_counter() - start)
        merged: float | None = getattr(pipe, "mean_batch", None)  # before the requests sent alone below
        timeline = pipe.timeline()
        window = traffic.concurrency or pipe.max_in_flight
        lat = []
        before = pipe.stats()
        for i in range(min(requests, SOLO)):
            t0 = time.perf_counter()
            pipe.run(reqs[i % len(reqs)])
            lat.append(time.perf_counter() - t0)
        after = pipe.stats()
        rss, uss = [], []
        for pid in _stage_pids(pipe):
            info = psutil.Process(pid).memory_full_info()
            rss.append(int(info.rss))
            uss.append(int(getattr(info, "uss", info.rss)))
    shown = loaded or lat
    row = BenchRow(setup, "corepipe", stage_engine(stages), stage_precision(stages), rate,
                   float(np.percentile(shown, 50)), float(np.percentile(shown, 99)), traffic.concurrency or 1,
                   tuple(rss), tuple(uss), handoff_s=float(np.mean(lat)) - path_service_s(before, after),
                   boundary_s=tuple(boundary_means(before, after)), mean_batch=merged,
                   requests_digest=requests_digest([dict(r) for r in reqs]),
                   rate_in_flight=None if window == (traffic.concurrency or 1) else window)
    return row, timeline, [s.core for s in after.stages]
