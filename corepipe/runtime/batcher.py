"""Dynamic batching: merge waiting requests into one batch along the model's batch dim, run it
as one pipeline request, and split the answers back (Triton's dynamic batcher, OpenVINO Model
Server's batching). `corepipe.load(art, max_batch=8, batch_delay="500us")` wraps any backend.

The *merger* thread takes the oldest waiting request and, for at most ``batch_delay`` after it
arrived, adds the requests queued behind it while they are *compatible*: the same shape except
along the batch dim (or, with buckets, the same bucket), up to ``max_batch`` rows in all. A
request never overtakes one queued before it, so batches form in submission order and, since
the pipeline answers in order, so do the requests' futures.

Every request is checked (its signature and its values, `Pipeline._checked`) when it is
submitted, before it can be merged: a bad one raises `InputError` from `submit` alone. A merged batch that fails inside a stage (a fault
no check can see) is sent again one request at a time, so only the request that causes it
fails. The pipeline underneath replays a batch as one request when a worker dies.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..artifact.padding import bucket_of, pad_feeds, trim_outputs
from ..artifact.plan import Plan
from ..artifact.signature import feed_dims
from ..artifact.sizes import parse_duration
from ..errors import DeploymentError, PipelineClosedError, StageError
from .base import Pipeline, PipelineStats
from .timeline import Timeline

__all__ = ["BatchingPipeline", "batched"]

Result = dict[str, np.ndarray]


def batched(start: Callable[[], Pipeline], plan: Plan, max_batch: int, batch_delay: float | str) -> Pipeline:
    """`BatchingPipeline` over the pipeline ``start()`` starts, checked before it starts it.

    Raises:
        DeploymentError: see `BatchingPipeline`; or a ``batch_delay`` that is not a duration.
    """
    try:
        delay = parse_duration(batch_delay)
    except ValueError as exc:
        raise DeploymentError(f"batch_delay: {exc}") from None
    _check(plan, max_batch, delay)
    inner = start()
    try:
        return BatchingPipeline(inner, max_batch=max_batch, batch_delay=delay)
    except BaseException:
        inner.close(timeout=0)
        raise


def _check(plan: Plan, max_batch: int, batch_delay: float) -> None:
    shapes = plan.shapes
    if shapes is None or shapes.batch is None:
        raise DeploymentError(
            f"max_batch={max_batch} merges requests along a dynamic batch dim, and this artifact has none "
            "(it takes the batch it was compiled for); compile with dynamic_dims={'batch': (1, "
            f"{max_batch})}} naming the model's batch dim, or use submit(..., split_batch=True)")
    top = shapes.dims[shapes.batch][1]
    if type(max_batch) is not int or not 1 <= max_batch <= top or batch_delay < 0:
        raise DeploymentError(f"max_batch={max_batch!r} must be an int within 1..{top} (the batch dim "
                              f"{shapes.batch!r} was compiled for up to {top}) and batch_delay >= 0")


@dataclass
class _Waiting:
    """One request from `submit` until its future completes."""

    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple[tuple[str, tuple[int, ...]], ...]  # each input's shape (padded) past the batch axis
    values: dict[str, int]  # its own dims (to trim its answers)
    future: Future[Result]
    submitted: float
    alone: bool = False  # sent again without merging (its batch failed)
    outcome: tuple[Result | None, BaseException | None] | None = None


@dataclass
class _Batch:
    members: list[_Waiting]
    offsets: list[int] = field(default_factory=list)
    sent_ns: int = 0  # when it went to the pipeline underneath (perf_counter_ns)


class BatchingPipeline(Pipeline):
    """Dynamic batching over ``inner`` (any backend); see the module docstring and `Pipeline`.

    Args:
        inner: a started pipeline whose plan has a dynamic batch dim (this object owns it).
        max_batch: rows one merged request may hold (at most the batch dim's max).
        batch_delay: seconds the oldest waiting request may wait for others to join it.
        max_in_flight: requests admitted at once (default: ``inner``'s times ``max_batch``).

    Raises:
        DeploymentError: the plan has no dynamic batch dim, or ``max_batch`` exceeds its max.
    """

    def __init__(self, inner: Pipeline, *, max_batch: int, batch_delay: float = 0.0,
                 max_in_flight: int | None = None) -> None:
        plan = inner.plan
        _check(plan, max_batch, batch_delay)
        shapes = plan.shapes
        assert shapes is not None and shapes.batch is not None
        super().__init__(inner.path, plan, max_in_flight or inner.max_in_flight * max_batch)
        self._pads = None  # the merger pads each batch itself, to the bucket its members share
        self.backend = inner.backend
        self.replicas = inner.replicas
        self.max_batch = max_batch
        self.batch_delay = batch_delay
        self._inner = inner
        self._batch_dim = shapes.batch
        self._shapes = shapes
        self._cv = threading.Condition()
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._order: collections.deque[_Waiting] = collections.deque()  # answered in this order
        self._admit = threading.BoundedSemaphore(self.max_in_flight)
        self._ids = itertools.count()
        self._closing = False
        self._closed = False
        self._completed = 0
        self._failed = 0
        self._batches = 0
        self._merged = 0
        self._runs: dict[int, list[int]] = {}  # rows of a batch answered -> [batches, ns]
        self._merger = threading.Thread(target=self._merge_loop, name="corepipe-batcher", daemon=True)
        self._merger.start()

    # -- client API --------------------------------------------------------------------------
    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[Result]:
        if self._closing:
            raise PipelineClosedError("the pipeline is closed; load the artifact again to run more requests")
        checked = self._checked(feeds)  # a bad request (shape or values) fails here, alone
        values = feed_dims(self.plan.inputs, checked)
        target = {**values, **bucket_of(self._shapes, values)}
        key = tuple((t.name, tuple(target.get(d, n) if d else n for d, n in zip(t.dims, checked[t.name].shape))[1:])
                    if not t.is_static else (t.name, t.shape[1:]) for t in self.plan.inputs)
        if not self._admit.acquire(timeout=None if timeout is None else max(0.0, timeout)):
            raise TimeoutError(f"pipeline full: {self.max_in_flight} requests stayed in flight for {timeout} s; "
                               "raise max_in_flight or the timeout, or consume results faster")
        fut: Future[Result] = Future()
        fut.set_running_or_notify_cancel()
        with self._cv:
            if self._closing:
                self._admit.release()
                raise PipelineClosedError("the pipeline is closing")
            fut.request_id = next(self._ids)  # type: ignore[attr-defined]
            w = _Waiting(checked, int(values[self._batch_dim]), key, values, fut, time.monotonic())
            self._queue.append(w)
            self._order.append(w)
            self._cv.notify_all()
        return fut

    @property
    def mean_batch(self) -> float:
        """Requests per merged pipeline request so far."""
        return self._merged / self._batches if self._batches else 0.0

    def executions(self) -> dict[int, tuple[int, int]]:
        """The batches answered so far, by their rows (the members' rows, before any padding):
        ``{rows: (batches, nanoseconds from sending to answer, summed)}`` (Triton's
        ``batch_stats``; their count is its ``execution_count``)."""
        with self._cv:
            return {rows: (n, ns) for rows, (n, ns) in self._runs.items()}

    # -- the merger --------------------------------------------------------------------------
    def _take(self) -> list[_Waiting] | None:
        """The next batch: the oldest request and the compatible ones behind it (see module)."""
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait(0.2)
            head = self._queue.popleft()
            group, rows = [head], head.rows
            deadline = head.submitted + self.batch_delay
            while rows < self.max_batch and not head.alone:
                if self._queue:
                    nxt = self._queue[0]
                    if nxt.alone or nxt.key != head.key or rows + nxt.rows > self.max_batch:
                        break
                    group.append(self._queue.popleft())
                    rows += nxt.rows
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    break
                self._cv.wait(left)
            return group

    def _merge_loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            batch = _Batch(group)
            try:
                merged = self._merge(batch)
                batch.sent_ns = time.perf_counter_ns()
                inner = self._inner._submit(merged, timeout=None)
            except BaseException as exc:  # the pipeline closed or broke under us
                self._settle(batch, None, exc)
                continue
            self._batches += 1
            self._merged += len(group)
            inner.add_done_callback(lambda f, batch=batch: self._done(batch, f))  # type: ignore[misc]

    def _merge(self, batch: _Batch) -> dict[str, np.ndarray]:
        """The members padded to their shared bucket and stacked along the batch axis."""
        if len(batch.members) == 1 and not self._shapes.buckets:
            batch.offsets = [0]
            return batch.members[0].feeds
        first = batch.members[0]
        target = {d: v for d, v in {**first.values, **bucket_of(self._shapes, first.values)}.items()
                  if d != self._batch_dim}
        parts, off = [], 0
        for m in batch.members:
            batch.offsets.append(off)
            off += m.rows
            parts.append(pad_feeds(self.plan.inputs, m.feeds, self._shapes, to=target)[0])
        merged = {t.name: np.concatenate([p[t.name] for p in parts], axis=0) for t in self.plan.inputs}
        if self._batch_dim in self._shapes.buckets:  # rows padded up to a batch bucket too
            merged = pad_feeds(self.plan.inputs, merged, self._shapes)[0]
        return merged

    def _done(self, batch: _Batch, inner: Future[Result]) -> None:
        """A batch answered (on the thread that reaps the inner pipeline): split it, or send its
        members again one by one if it failed with more than one in it."""
        error = inner.exception()
        if error is not None and len(batch.members) > 1 and isinstance(error, StageError):
            with self._cv:
                for m in batch.members:
                    m.alone = True
                self._queue.extendleft(reversed(batch.members))
                self._cv.notify_all()
            return
        if error is None:
            took = time.perf_counter_ns() - batch.sent_ns
            with self._cv:
                run = self._runs.setdefault(sum(m.rows for m in batch.members), [0, 0])
                run[0] += 1
                run[1] += took
        self._settle(batch, None if error is not None else inner.result(), error)

    def _settle(self, batch: _Batch, result: Result | None, error: BaseException | None) -> None:
        """Record each member's answer, then complete every future that is next in line."""
        padded = list(self._shapes.buckets)
        for m, off in zip(batch.members, batch.offsets or [0] * len(batch.members)):
            if error is not None or result is None:
                m.outcome = (None, error)
                continue
            rows = {name: value[off:off + m.rows] for name, value in result.items()}
            m.outcome = (trim_outputs(self.plan.outputs, rows, m.values, padded), None)
        ready = []
        with self._cv:
            while self._order and self._order[0].outcome is not None:
                ready.append(self._order.popleft())
            self._cv.notify_all()
        for m in ready:
            self._admit.release()
            value, exc = m.outcome  # type: ignore[misc]
            if exc is None:
                self._completed += 1
                self._latencies.add(time.monotonic() - m.submitted)
                m.future.set_result({k: np.ascontiguousarray(v) for k, v in value.items()})  # type: ignore[union-attr]
            else:
                self._failed += 1
                m.future.set_exception(exc)

    # -- the rest of the contract ------------------------------------------------------------
    def readiness(self) -> tuple[bool, str, float]:
        if self._closing:
            return False, "the pipeline is closed", 0.0
        return self._inner.readiness()

    def worker_pids(self) -> list[int]:
        """The processes of the pipeline underneath (its workers, or its actors on this host)."""
        inner: Any = self._inner
        if hasattr(inner, "worker_pids"):
            return list(inner.worker_pids())
        return [int(w["pid"]) for w in inner.placement()]

    def stats(self) -> PipelineStats:
        """The inner pipeline's figures, with requests counted as submitted (not as merged)."""
        inner = self._inner.stats()
        p50, p90, p99 = self._latencies.percentiles()
        with self._cv:
            waiting = len(self._order)
        return replace(inner, completed=self._completed, failed=self._failed, in_flight=waiting,
                       throughput=self._completed / inner.elapsed_s if inner.elapsed_s else 0.0,
                       latency_p50_s=p50, latency_p90_s=p90, latency_p99_s=p99)

    def timeline(self, last: int | None = None) -> Timeline:
        """The inner pipeline's timeline: one entry per merged request."""
        return self._inner.timeline(last)

    def close(self, *, timeout: float | None = 30.0) -> None:
        """Take no more requests, send those waiting (without waiting for company), let them
        finish up to ``timeout``, then close the pipeline underneath."""
        with self._cv:
            if self._closed:
                return
            self._closing = True
            self._cv.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._order:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(0.05 if left is None else min(0.05, left))
            self._closed = True
            self._cv.notify_all()
        self._inner.close(timeout=0)
        self._merger.join(timeout=5)
        with self._cv:
            doomed = list(self._order) + [w for w in self._queue if w not in self._order]
            self._order.clear()
            self._queue.clear()
        for m in doomed:
            if not m.future.done():
                self._failed += 1
                m.future.set_exception(PipelineClosedError("the request was still waiting when the pipeline closed"))
