"""Replicas: R copies of one pipeline behind one client, results in submission order.

A `ReplicatedPipeline` wraps R pipelines of any backend (each on its own group of cores, as
Neuron's NeuronCore Groups) and keeps the `Pipeline` contract: it sends each request to the
replica with the fewest requests outstanding, and a *completer* thread hands results back in
the order `submit` returned, whichever replica finished first. Each replica keeps its own
supervision, so a worker that dies in one replica is restarted and its requests replayed there
while the others go on. Backends only need to start one replica on a group of cores: see
`start_replicas`.
"""

from __future__ import annotations

import collections
import functools
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..artifact.plan import Plan
from ..errors import PipelineClosedError
from .base import BoundaryStats, Pipeline, PipelineStats, StageStats
from .timeline import Timeline

__all__ = ["ReplicatedPipeline", "start_replicas"]


def start_replicas(start: Callable[[int], Pipeline], count: int) -> list[Pipeline]:
    """Start ``count`` replicas (``start(r)`` starts replica ``r``); if one fails, close those
    that started and raise its error.

    One after another: a failure stops the rest early. (Worker processes are forked by
    ``process.spawn``'s process-lifetime thread, so any thread may start replicas.)
    """
    started: list[Pipeline] = []
    try:
        for r in range(count):
            started.append(start(r))
    except BaseException:
        for pipe in started:
            pipe.close(timeout=0)
        raise
    return started


@dataclass
class _Entry:
    """One request, from `submit` until its outer future completes."""

    seq: int
    future: Future[dict[str, np.ndarray]]
    submitted: float
    replica: int
    inner: Future[dict[str, np.ndarray]] | None = None
    abandoned: bool = False  # the replica refused it; `submit` raised instead


class ReplicatedPipeline(Pipeline):
    """R replicas of one pipeline; see `Pipeline` for the contract.

    Args:
        path, plan: the artifact's directory and plan (every replica runs the same one).
        replicas: started pipelines, one per replica (this object owns and closes them).
        max_in_flight: requests admitted at once across replicas (default: the sum of theirs).

    Done-callbacks run on the *completer* thread, in submission order.
    """

    def __init__(self, path: Path, plan: Plan, replicas: Sequence[Pipeline], *,
                 max_in_flight: int | None = None) -> None:
        if not replicas:
            raise ValueError("a replicated pipeline needs at least one replica")
        total = sum(p.max_in_flight for p in replicas)
        limit = min(max_in_flight or total, total)  # more would block inside a replica
        super().__init__(path, plan, limit)
        self.backend = replicas[0].backend
        self._replicas = list(replicas)
        self.replicas = len(replicas)
        self._outstanding = [0] * len(replicas)
        self._next = 0  # round-robin start among equally loaded replicas
        self._admit = threading.BoundedSemaphore(limit)
        self._lock = threading.Condition()
        self._order: collections.deque[_Entry] = collections.deque()
        self._ids = itertools.count()
        self._closing = False
        self._closed = False
        self._completed = 0
        self._failed = 0
        self._final: PipelineStats | None = None
        self._completer = threading.Thread(target=self._complete_loop, name="corepipe-completer", daemon=True)
        self._completer.start()

    def replica(self, index: int) -> Pipeline:
        """Replica ``index``'s own pipeline (for its stats, worker pids, or tests)."""
        return self._replicas[index]

    # -- client API --------------------------------------------------------------------------
    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[dict[str, np.ndarray]]:
        self._check_open()
        checked = self._checked(feeds)  # InputError before anything is queued
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not self._admit.acquire(timeout=None if timeout is None else max(0.0, timeout)):
            raise TimeoutError(
                f"pipeline full: {self.max_in_flight} requests stayed in flight for {timeout} s; "
                "raise max_in_flight or the timeout, or consume results faster"
            )
        fut: Future[dict[str, np.ndarray]] = Future()
        with self._lock:
            if self._closing:
                self._admit.release()
                self._check_open()
            n = len(self._replicas)
            # The least busy replica that serves now: one whose stage is down (restarting with
            # backoff) would hold the request until it is back, while the others could run it.
            up = [i for i in range(n) if self._replicas[i].readiness()[0]] or list(range(n))
            r = min(up, key=lambda i: (self._outstanding[i], (i - self._next) % n))
            self._next = (r + 1) % n
            self._outstanding[r] += 1
            entry = _Entry(next(self._ids), fut, time.perf_counter(), r)
            fut.request_id = entry.seq  # type: ignore[attr-defined]
            fut.set_running_or_notify_cancel()
            self._order.append(entry)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            inner = self._replicas[r]._submit(checked, timeout=left)  # padded here already
        except BaseException:
            with self._lock:
                entry.abandoned = True
                self._outstanding[r] -= 1
                self._lock.notify_all()
            self._admit.release()
            raise
        inner.add_done_callback(functools.partial(self._inner_done, entry))
        return fut

    def readiness(self) -> tuple[bool, str, float]:
        """Ready while any replica is; not ready says why each replica is not."""
        if self._closing or self._closed:
            return False, "the pipeline is closed", 0.0
        states = [p.readiness() for p in self._replicas]
        if any(ok for ok, _, _ in states):
            return True, "", 0.0
        why = "; ".join(f"replica {r}: {w}" for r, (_, w, _) in enumerate(states))
        return False, why, min(wait for _, _, wait in states)

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise PipelineClosedError("the pipeline is closed; load the artifact again to run more requests")

    def _inner_done(self, entry: _Entry, inner: Future[dict[str, np.ndarray]]) -> None:
        with self._lock:
            entry.inner = inner
            self._outstanding[entry.replica] -= 1
            self._lock.notify_all()

    def _complete_loop(self) -> None:
        """Hand results back in submission order (the head of the queue goes first)."""
        while True:
            with self._lock:
                while not (self._order and (self._order[0].inner is not None or self._order[0].abandoned)):
                    if self._closed and not self._order:
                        return
                    self._lock.wait(0.2)
                entry = self._order.popleft()
            if entry.abandoned:
                continue
            assert entry.inner is not None
            self._admit.release()  # before completing: a done-callback may submit again
            exc = entry.inner.exception() if not entry.inner.cancelled() else PipelineClosedError(
                f"request {entry.seq} was cancelled inside replica {entry.replica}")
            if exc is None:
                self._completed += 1
                self._latencies.add(time.perf_counter() - entry.submitted)
                entry.future.set_result(entry.inner.result())
            else:
                self._failed += 1
                entry.future.set_exception(exc)

    # -- stats / close -----------------------------------------------------------------------
    def stats(self) -> PipelineStats:
        """Every replica's stages (and timed boundaries), each tagged with its replica."""
        if self._final is not None:
            return self._final
        stages: list[StageStats] = []
        boundaries: list[BoundaryStats] = []
        for r, pipe in enumerate(self._replicas):
            inner = pipe.stats()
            stages.extend(replace(s, replica=r) for s in inner.stages)
            boundaries.extend(replace(b, replica=r) for b in inner.boundaries)
        with self._lock:
            in_flight = sum(1 for e in self._order if not e.abandoned)
        return self._summary(time.perf_counter() - self._started, stages, in_flight, boundaries,
                             replicas=len(self._replicas))

    def timeline(self, last: int | None = None, *, replica: int = 0) -> Timeline:
        """Replica ``replica``'s request timeline (each replica keeps its own; their request
        ids are the replica's, not this client's)."""
        return self._replicas[replica].timeline(last)

    @property
    def replayed(self) -> int:
        """Requests sent through a replica again after one of its workers died."""
        return sum(int(getattr(p, "replayed", 0)) for p in self._replicas)

    def worker_pids(self, replica: int | None = None) -> list[int]:
        """Worker process ids in (replica, stage) order, or those of one replica."""
        pipes = self._replicas if replica is None else [self._replicas[replica]]
        return [pid for p in pipes for pid in p.worker_pids()]  # type: ignore[attr-defined]

    def shm_names(self) -> list[str]:
        """Names of the shared-memory segments every replica owns (for leak checks)."""
        return [n for p in self._replicas for n in getattr(p, "shm_names", list)()]

    def close(self, *, timeout: float | None = 30.0) -> None:
        if threading.current_thread() is self._completer:
            # From a done-callback: the completer must keep running for the close to drain.
            threading.Thread(target=self.close, kwargs={"timeout": timeout},
                             name="corepipe-close", daemon=True).start()
            return
        with self._lock:
            if self._closed:
                return
            self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        # Close the replicas side by side: each drains its own requests within the deadline.
        with ThreadPoolExecutor(max_workers=len(self._replicas), thread_name_prefix="corepipe-close") as pool:
            for pipe in self._replicas:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                pool.submit(pipe.close, timeout=left)
        with self._lock:
            while any(not e.abandoned for e in self._order) and self._completer.is_alive():
                self._lock.wait(0.05)  # every inner future is done now; the completer empties the queue
        try:
            self._final = self.stats()
        except Exception:  # never let bookkeeping stop a close
            pass
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._completer.join(timeout=2)
