"""The request book the ``local`` and ``ray`` backends share: a request kept for replay, the
bounded window that admits it, finishing and failing requests, readiness, and the restart
policy's arithmetic (deaths within a window, backoff).

Both backends stream requests through processes they supervise (worker processes, Ray actors);
what differs is how a request travels and how a dead stage is noticed, not how a request is
admitted, answered or failed. That part lives here, once.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..errors import CorepipeError, PipelineClosedError, StageError
from .base import _Latencies

__all__ = ["Intake", "Request"]


@dataclass
class Request:
    """One admitted request: its inputs are kept until it completes, for replay."""

    rid: int
    feeds: dict[str, np.ndarray]
    future: Future[dict[str, np.ndarray]]
    submitted: float
    deaths: int = 0
    replays: int = 0
    fed: float = 0.0  # time.monotonic() when it first entered the first stage (for timelines)
    slot: int | None = None  # ``local``: the first ring's slot holding its inputs, while in flight
    seq: int = 0  # ``local``: its place in the first ring's sequence, and the epoch it went in
    epoch: int = 0


class Intake:
    """Mixin: admission, answers, failures, readiness and the restart policy's arithmetic.

    The backend sets these in its ``__init__``; every method here takes ``_cv`` where it reads
    or changes what the backend's threads share.
    """

    max_in_flight: int
    _cv: threading.Condition
    _admit: threading.BoundedSemaphore
    _pending: collections.deque[Request]
    _inflight: dict[int, Request]
    _completed: int
    _failed: int
    _latencies: _Latencies
    _ids: itertools.count[int]
    _paused: bool
    _replayed: int
    _closing: bool
    _closed: bool
    _broken: CorepipeError | None
    _down: tuple[str, float] | None
    _max_deaths: int
    _death_window: float
    _restart: str
    _backoff: tuple[float, float]

    def _init_intake(self, *, max_deaths: int, death_window: float, restart: str, backoff_s: float,
                     backoff_max_s: float) -> None:
        """Set the state this mixin keeps; the backend calls it from ``__init__`` (after
        ``max_in_flight``)."""
        self._max_deaths = max_deaths
        self._death_window = death_window
        self._restart = restart
        self._backoff = (backoff_s, backoff_max_s)
        self._down = None
        self._cv = threading.Condition()
        self._pending = collections.deque()
        self._inflight = {}
        self._admit = threading.BoundedSemaphore(self.max_in_flight)
        self._ids = itertools.count()
        self._paused = False
        self._closing = False
        self._closed = False
        self._broken = None
        self._completed = 0
        self._failed = 0
        self._replayed = 0

    def readiness(self) -> tuple[bool, str, float]:
        with self._cv:
            down = self._down
        if self._broken is not None:
            return False, f"the pipeline broke: {self._broken}", 0.0
        if self._closing or self._closed:
            return False, "the pipeline is closed", 0.0
        if down is not None:
            return False, down[0], max(0.0, down[1] - time.monotonic())
        return True, "", 0.0

    def _check_open(self) -> None:
        if self._broken is not None:
            raise PipelineClosedError(f"the pipeline broke and takes no more requests: {self._broken}")
        if self._closing or self._closed:
            raise PipelineClosedError("the pipeline is closed; load the artifact again to run more requests")

    def _take_place(self, timeout: float | None) -> None:
        """Take a place in the in-flight window, waiting up to ``timeout`` (None: for ever)."""
        if not self._admit.acquire(timeout=timeout if timeout is None or timeout >= 0 else 0):
            raise TimeoutError(
                f"pipeline full: {self.max_in_flight} requests stayed in flight for {timeout} s; "
                "raise max_in_flight or the timeout, or consume results faster"
            )

    def _refuse_if_closing(self) -> None:
        """With ``_cv`` held, after `_take_place`: give the place back and refuse if the pipeline
        began closing (or broke) meanwhile."""
        if self._closing or self._broken is not None:
            self._admit.release()
            self._check_open()
            raise PipelineClosedError("the pipeline is closing")

    def _finish(self, req: Request, result: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
        # Free the request's place first: done-callbacks run right here (on the thread that
        # reaps), and one that submits again must find room rather than wait on itself.
        self._admit.release()
        if error is None:
            self._completed += 1
            self._latencies.add(time.monotonic() - req.submitted)
            if not req.future.done():
                req.future.set_result(result)  # type: ignore[arg-type]
        else:
            self._failed += 1
            if not req.future.done():
                req.future.set_exception(error)

    def _take_all(self) -> list[Request]:
        """With ``_cv`` held: every request in flight (by id) then every waiting one, removed."""
        doomed = sorted(self._inflight.values(), key=lambda r: r.rid) + list(self._pending)
        self._inflight.clear()
        self._pending.clear()
        return doomed

    def _break(self, error: CorepipeError) -> None:
        """Fail every request in flight or waiting with ``error``; take no more."""
        with self._cv:
            self._broken = error
            doomed = self._take_all()
            self._cv.notify_all()
        for req in doomed:
            self._finish(req, None, error)

    def _requeue_inflight(self) -> None:
        """With ``_cv`` held, at the end of a recovery: the stage is up again, and every request
        still in flight goes back to the front of the queue, in order, to be sent again."""
        self._down = None
        replay = sorted(self._inflight.values(), key=lambda r: r.rid)
        self._replayed += len(replay)
        for req in replay:
            req.replays += 1
        self._inflight.clear()
        self._pending.extendleft(reversed(replay))

    def _drain(self, timeout: float | None) -> bool:
        """Begin closing: refuse new requests, wait up to ``timeout`` seconds (None: for ever) for
        those admitted to complete, then fail the rest with `PipelineClosedError`. False when the
        pipeline was closed already (nothing to do)."""
        with self._cv:
            if self._closed:
                return False
            self._closing = True
            deadline = None if timeout is None else time.monotonic() + timeout
            while (self._pending or self._inflight) and self._broken is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(0.05 if left is None else min(0.05, left))
            doomed = self._take_all()
        for req in doomed:
            self._finish(req, None, PipelineClosedError(
                f"request {req.rid} was still in flight when the pipeline closed"))
        return True

    def _fail_poisoned(self, suspects: dict[int, int], what: str) -> None:
        """Count a death against the request each dead stage held (``suspects``: stage -> request
        id); one that has now killed its stage's ``what`` (worker, actor) twice is failed alone,
        so the others can go on."""
        poisoned = []
        with self._cv:
            for k, rid in suspects.items():
                req = self._inflight.get(rid)
                if req is None:
                    continue
                req.deaths += 1
                if req.deaths >= 2:
                    del self._inflight[rid]
                    poisoned.append((k, req))
        for k, req in poisoned:
            self._finish(req, None, StageError(
                f"stage {k} {what} died twice while running request {req.rid}; "
                "the request is dropped so the others can go on", stage=k, request_id=req.rid,
            ))

    # -- the restart policy ------------------------------------------------------------------
    def _deaths_in_window(self, deaths: collections.deque[float]) -> int:
        """Record a death now in ``deaths`` and return how many fall within ``death_window``."""
        now = time.monotonic()
        deaths.append(now)
        while deaths and deaths[0] < now - self._death_window:
            deaths.popleft()
        return len(deaths)

    def _backoff_s(self, deaths: int) -> float:
        """Policy ``backoff``: ``backoff_s * 2**(deaths - max_deaths)``, at most ``backoff_max_s``."""
        base, cap = self._backoff
        return float(min(cap, base * 2 ** (deaths - self._max_deaths)))

    def _set_down(self, reason: str, for_s: float) -> None:
        with self._cv:
            self._down = (reason, time.monotonic() + for_s)

    def _wait_out(self, seconds: float) -> None:
        """Sleep ``seconds`` of backoff before a stage starts again; a close ends the wait."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if self._closed:
                raise PipelineClosedError("the pipeline closed while a stage was backing off")
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))
