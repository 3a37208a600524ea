"""The ``inline`` backend: every stage in the calling process, one after another.

For tests and debugging: same artifact, same checks and errors as ``local``, no processes.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future

import numpy as np

from ..artifact.manifest import Artifact
from ..engines import StageRunner
from ..errors import PipelineClosedError, StageError
from .base import Pipeline, PipelineStats, StageStats
from .timeline import RequestTrace

__all__ = ["InlinePipeline"]


class InlinePipeline(Pipeline):
    """Runs stages sequentially in the caller's thread; `submit` returns a finished future."""

    backend = "inline"

    def __init__(self, artifact: Artifact, *, threads: int = 1, max_in_flight: int = 1) -> None:
        super().__init__(artifact.root, artifact.plan, max_in_flight)
        self._runners = [StageRunner(artifact, k, threads=threads) for k in range(artifact.plan.num_cores)]
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._busy = [0.0] * len(self._runners)
        self._count = [0] * len(self._runners)
        self._completed = 0
        self._failed = 0

    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[dict[str, np.ndarray]]:
        if self._closed:
            raise PipelineClosedError("the pipeline is closed; load the artifact again to run more requests")
        checked = self._checked(feeds)
        fut: Future[dict[str, np.ndarray]] = Future()
        fut.set_running_or_notify_cancel()
        submitted = time.monotonic()
        with self._lock:
            rid = next(self._ids)
            t0 = time.monotonic()
            boundary: dict[str, np.ndarray] = {t.name: checked[t.name] for t in self.plan.boundaries[0]}
            stamps: list[tuple[float, float]] = []
            try:
                for k, runner in enumerate(self._runners):
                    s0 = time.monotonic()
                    try:
                        boundary = runner.run(boundary, request_id=rid)
                    finally:
                        stamps.append((s0, time.monotonic()))
                        self._busy[k] += stamps[-1][1] - s0
                        self._count[k] += 1
            except StageError as exc:
                self._failed += 1
                end = stamps[-1][1]
                stamps += [(end, end)] * (len(self._runners) - len(stamps))  # stages it never reached
                self._traces.add(RequestTrace(rid, submitted, t0, tuple(stamps), end, ok=False))
                fut.set_exception(exc)
                return fut
            self._completed += 1
            done = time.monotonic()
            self._latencies.add(done - t0)
            self._traces.add(RequestTrace(rid, submitted, t0, tuple(stamps), done))
        fut.set_result({t.name: np.array(boundary[t.name], copy=True) for t in self.plan.outputs})
        return fut

    def readiness(self) -> tuple[bool, str, float]:
        if self._closed:
            return False, "the pipeline is closed", 0.0
        return True, "", 0.0

    def stats(self) -> PipelineStats:
        elapsed = time.perf_counter() - self._started
        stages = [StageStats.measured(k, os.getpid(), "caller", self._count[k], self._busy[k], elapsed)
                  for k in range(len(self._runners))]
        return self._summary(elapsed, stages, in_flight=0)

    def close(self, *, timeout: float | None = 30.0) -> None:
        with self._lock:
            self._closed = True
            self._runners = []
