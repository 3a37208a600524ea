"""The `Pipeline` contract shared by every backend, and its statistics."""

from __future__ import annotations

import collections
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.plan import Plan
from ..artifact.signature import check_feeds
from ..artifact.valuechecks import ValueChecker
from .batches import submit_padded, submit_split
from .timeline import Timeline, TraceLog

__all__ = ["Pipeline", "StageStats", "BoundaryStats", "PipelineStats"]


@dataclass(frozen=True)
class StageStats:
    """One stage's figures. ``core``: the core ids it is pinned to (``"0,1"``); ``replica``: which
    copy of the pipeline it belongs to (0 without replicas); ``runs``: the engine calls it made
    (fewer than ``requests`` where it ran queued requests as one batch: ``load(stage_batch=)``)."""

    index: int
    pid: int | None
    core: str
    requests: int
    busy_s: float
    busy_pct: float
    mean_service_s: float
    queue_depth: int
    restarts: int = 0
    replica: int = 0
    runs: int = 0

    @classmethod
    def measured(cls, index: int, pid: int | None, core: str, requests: int, busy_s: float, elapsed_s: float,
                 queue_depth: int = 0, restarts: int = 0, runs: int | None = None) -> StageStats:
        """A stage's figures from what it counted: its busy share of ``elapsed_s`` and its mean
        service time are derived here, once for every backend."""
        return cls(index=index, pid=pid, core=core, requests=requests, busy_s=busy_s,
                   busy_pct=100.0 * busy_s / elapsed_s if elapsed_s else 0.0,
                   mean_service_s=busy_s / requests if requests else 0.0, queue_depth=queue_depth,
                   restarts=restarts, runs=requests if runs is None else runs)


@dataclass(frozen=True)
class BoundaryStats:
    """The hand-off of boundary ``index`` (0: client to stage 0; N: last stage to the client):
    the tensors' bytes per request, hand-offs timed, and their mean time from send to arrival;
    ``replica``: which copy of the pipeline it belongs to (0 without replicas)."""

    index: int
    nbytes: int
    handoffs: int
    mean_s: float
    replica: int = 0


@dataclass(frozen=True)
class PipelineStats:
    backend: str
    completed: int
    failed: int
    in_flight: int
    elapsed_s: float
    throughput: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    stages: list[StageStats] = field(default_factory=list)
    boundaries: list[BoundaryStats] = field(default_factory=list)  # backends that time hand-offs
    replicas: int = 1
    #: What keeps the pipeline from serving now (a stage down, no placement for it), or None.
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        """What ``corepipe run`` prints: requests, throughput and latency, the hand-offs, and one
        line per stage (``print(pipe.stats())``); `repr` keeps every field."""
        lines = [
            f"{self.completed:,} requests done ({self.failed:,} failed, {self.in_flight:,} in flight) in the "
            f"{self.elapsed_s:.2f} s since the pipeline started ({self.throughput:,.1f} req/s over that time; "
            f"{self.backend} backend" + (f", {self.replicas} replicas" if self.replicas > 1 else "") + ")",
            f"latency p50 {self.latency_p50_s * 1e3:.2f} ms, p90 {self.latency_p90_s * 1e3:.2f} ms, "
            f"p99 {self.latency_p99_s * 1e3:.2f} ms",
        ]
        if self.problem:
            lines.append(f"problem: {self.problem}")
        if self.boundaries:
            last = max(b.index for b in self.boundaries)
            lines.append("hand-off per boundary (send to arrival, mean): " + ", ".join(
                f"{'in' if b.index == 0 else 'out' if b.index == last else b.index} {b.mean_s * 1e3:.2f} ms"
                for b in self.boundaries if b.replica == 0))
        head = (["replica"] if self.replicas > 1 else []) + ["stage", "pid", "core", "requests", "busy %",
                                                             "service ms", "queue", "restarts"]
        rows = [([str(s.replica)] if self.replicas > 1 else []) + [
            str(s.index), "-" if s.pid is None else str(s.pid), s.core, f"{s.requests:,}", f"{s.busy_pct:.1f}",
            f"{s.mean_service_s * 1e3:.3f}", str(s.queue_depth), str(s.restarts)] for s in self.stages]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            lines.append("  ".join(c.ljust(w) if head[i] == "core" else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        return "\n".join(lines)


class _Latencies:
    """The latest request latencies (bounded), for percentiles."""

    def __init__(self, keep: int = 10_000) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def percentiles(self) -> tuple[float, float, float]:
        with self._lock:
            if not self._values:
                return (0.0, 0.0, 0.0)
            arr = np.fromiter(self._values, dtype=np.float64)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return float(p50), float(p90), float(p99)


class Pipeline(ABC):
    """A compiled model running as a pipeline of stages. Get one from `corepipe.load`.

    Contract (every backend keeps it):

    - **Requests** are dicts ``name -> numpy array`` matching the compiled signature exactly
      (names, dtypes, static shapes, or any shape within the ranges of dynamic dims), whose
      index and size inputs hold values the model allows (a token id within the vocabulary;
      `Plan.input_checks`). They are checked before they enter the pipeline; a bad one raises
      `InputError` from `submit`/`run` and nothing is queued. Requests of different shapes
      stream through together, in order. With ``split_batch=True`` a batch along axis 0 runs as
      requests of the model's batch (`corepipe.runtime.batches`); with buckets, a request is
      padded in and trimmed out.
    - **Ownership.** `submit` copies the request's arrays into pipeline-owned buffers (shared
      memory for ``local``) before it returns, so the caller may reuse its arrays at once. Result
      arrays belong to the caller; they are never views of pipeline buffers.
    - **Thread safety.** `submit`, `run`, `map` and `stats` may be called from any number of
      threads at once. `close` may be called from any thread, once or many times.
    - **Ordering.** Requests flow through the stages in submission order; futures complete in
      that order (the order in which `submit` calls returned, across threads). With replicas,
      each request goes to the least busy replica and futures still complete in that order.
    - **Back-pressure.** At most ``max_in_flight`` requests are in the pipeline. `submit` blocks
      while it is full, up to ``timeout`` seconds (``None``: wait forever), then raises
      ``TimeoutError``. Memory never grows with the number of waiting callers' requests.
    - **Callbacks.** Futures' done-callbacks run on the thread that completes the future: for
      ``local``, a thread waiting in ``result()`` (so `run` and `map`), which reaps finished
      requests itself, or the pipeline's service thread when none waits; for ``inline``, the
      submitting thread. Keep them short; they may call `submit`.
    - **What blocks.** ``local``: `submit` writes the request into the first stage's ring from
      the calling thread (a copy of the inputs, no thread hop) and blocks only for a place in
      the window; ``result()`` sleeps on a doorbell between looks at the last ring and
      completes, in order, every request that is done.
    - **Failures.** A request that fails inside a stage fails only its own future, with a
      `StageError` naming the stage, node and request; the pipeline goes on. So does one for
      which a stage wrote a tensor that does not fit the compiled signature (an empty or
      wrong-shaped tensor from an engine that does not check data): never a quiet wrong answer.
    - **End of stream.** `close` stops intake, lets requests already submitted finish (up to its
      ``timeout``; the rest fail with `PipelineClosedError`), then stops every worker and frees
      every buffer. Using a pipeline after `close` raises `PipelineClosedError`. ``with`` closes.
    """

    backend: str = "abstract"
    #: Copies of the pipeline behind this client (see `corepipe.runtime.replicas`).
    replicas: int = 1

    def __init__(self, path: Path, plan: Plan, max_in_flight: int) -> None:
        self.path = path
        self.plan = plan
        self.max_in_flight = max_in_flight
        self._latencies = _Latencies()
        self._started = time.perf_counter()
        self._traces = TraceLog()
        self._trace_slots = 0  # hand-off slots per ring, for `Timeline.waits` (0: no rings)
        # A plan with buckets pads each request at `submit` (corepipe.runtime.batches).
        self._pads = plan.shapes if plan.shapes is not None and plan.shapes.buckets else None
        self._value_checks = ValueChecker(plan.input_checks)

    def _checked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` checked against the signature and the plan's value checks, as C-contiguous
        arrays: what every backend's `submit` admits. Raises `InputError`."""
        checked = check_feeds(self.plan.inputs, feeds)
        self._value_checks(checked)
        return checked

    def _summary(self, elapsed_s: float, stages: list[StageStats], in_flight: int,
                 boundaries: list[BoundaryStats] | None = None, replicas: int = 1) -> PipelineStats:
        """The whole pipeline's figures around its stages' (every backend's `stats` ends here)."""
        completed, failed = self._completed, self._failed  # type: ignore[attr-defined]
        p50, p90, p99 = self._latencies.percentiles()
        return PipelineStats(
            backend=self.backend, completed=completed, failed=failed, in_flight=in_flight,
            elapsed_s=elapsed_s, throughput=completed / elapsed_s if elapsed_s else 0.0,
            latency_p50_s=p50, latency_p90_s=p90, latency_p99_s=p99, stages=stages,
            boundaries=boundaries or [], replicas=replicas,
        )

    def submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None,
               split_batch: bool = False) -> Future[dict[str, np.ndarray]]:
        """Queue one request; return a future of its outputs (``name -> array``).

        Args:
            feeds: input name -> array.
            timeout: seconds to wait for room in the pipeline (``None``: for ever).
            split_batch: ``feeds`` is a batch along axis 0 (every input the same number of
                rows N): run it as requests of the model's batch (N requests for a model
                compiled at batch 1; chunks of the max for a dynamic batch dim), streamed one
                after another, and concatenate the answers along axis 0.

        Raises:
            InputError: the request does not match the signature (a dim outside its range
                names the input, the dim, its range and the value); with ``split_batch``, a
                ragged batch or a model without a batch axis.
            TimeoutError: the pipeline stayed full for ``timeout`` seconds.
            PipelineClosedError: the pipeline is closed.
        """
        if split_batch:
            return submit_split(self, feeds, timeout)
        if self._pads is not None:
            return submit_padded(self, feeds, timeout, self._pads)
        return self._submit(feeds, timeout=timeout)

    @abstractmethod
    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[dict[str, np.ndarray]]:
        """The backend's `submit` of one pipeline request (checked here, as `submit` says)."""

    def run(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None,
            split_batch: bool = False) -> dict[str, np.ndarray]:
        """Run one request and wait for its outputs (at most ``timeout`` seconds in all);
        ``split_batch`` as in `submit`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fut = self.submit(feeds, timeout=timeout, split_batch=split_batch)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return fut.result(timeout=remaining)
        except TimeoutError:
            fut.cancel()
            raise TimeoutError(f"request did not complete within {timeout} s") from None

    def map(self, feeds_iter: Iterable[Mapping[str, np.ndarray]], *, timeout: float | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Stream requests through the pipeline; yield outputs in order.

        Keeps at most ``max_in_flight`` requests outstanding, pulling from ``feeds_iter`` lazily,
        so a generator of any length works in bounded memory. A failed request raises its error
        when its turn comes.
        """
        pending: collections.deque[Future[dict[str, np.ndarray]]] = collections.deque()
        for feeds in feeds_iter:
            if len(pending) >= self.max_in_flight:
                yield pending.popleft().result(timeout=timeout)
            pending.append(self.submit(feeds, timeout=timeout))
        while pending:
            yield pending.popleft().result(timeout=timeout)

    def readiness(self) -> tuple[bool, str, float]:
        """Whether the pipeline serves requests now: ``(ready, why not, seconds until it may)``.

        Not ready when closed or broken, or while a stage is down (the ``local`` backend's
        ``restart="backoff"`` waiting before restarting a stage that keeps dying). Requests
        submitted meanwhile are kept and run once the stage is back; a server fails them fast
        instead, and tells its clients to retry after the seconds given.
        """
        return True, "", 0.0

    @abstractmethod
    def stats(self) -> PipelineStats:
        """Per stage: pid, core, requests, busy seconds and %, mean service time, queue depth;
        and latency p50/p90/p99 over the latest requests."""

    def timeline(self, last: int | None = None) -> Timeline:
        """When each of the latest requests (at most 10,000 are kept; ``last``: fewer) entered
        and left each stage, with recoveries from worker deaths: the data of a Gantt chart
        (`corepipe.plots.timeline_figure`). Backends that record nothing return no requests."""
        return self._traces.timeline(self.plan.num_cores, self._trace_slots, last)

    @abstractmethod
    def close(self, *, timeout: float | None = 30.0) -> None:
        """Drain, stop the workers, free the buffers. Idempotent."""

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Ctrl-C means "stop now": fail what is in flight instead of draining it.
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close(timeout=0 if interrupted else 30.0)

    def __repr__(self) -> str:
        copies = f"{self.replicas} replicas x " if self.replicas > 1 else ""
        return f"<corepipe.Pipeline {self.backend} {copies}{self.plan.num_cores} stages at {str(self.path)!r}>"
