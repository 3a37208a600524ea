"""Supervision of the ``local`` backend's workers: notice a dead or stuck worker, restart it,
replay what had not completed, and give up on a stage that keeps dying.

Recovery, step by step: pause intake and collection; bump the *epoch* in the control block so
every worker drops what it holds and acknowledges; kill the stuck, reap the dead; reset every
ring; fail a request that has now killed its worker twice; start new workers and wait for them
to load; queue every request still in flight again, in order, ahead of the waiting ones; go.
Requests already answered are not replayed, and the stale epoch keeps old slots from counting.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..errors import CorepipeError, PipelineClosedError, StageError
from .process import WorkerProcess
from .shm import Bell, Control, Ring

__all__ = ["Request", "Worker", "Supervisor"]


@dataclass
class Request:
    """One admitted request: its inputs are kept until it completes, for replay."""

    rid: int
    feeds: dict[str, np.ndarray]
    future: Future[dict[str, np.ndarray]]
    submitted: float
    deaths: int = 0


@dataclass
class Worker:
    """A stage's current worker process and its history of deaths (for the give-up rule)."""

    process: WorkerProcess
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    restarts: int = 0


class Supervisor:
    """Mixin for `LocalPipeline`: the monitor thread's loop and the recovery it runs."""

    _n: int
    _control: Control | None
    _workers: list[Worker]
    _rings: list[Ring]
    _wake: list[Bell]
    _cv: threading.Condition
    _pending: collections.deque[Request]
    _inflight: dict[int, Request]
    _epoch: int
    _paused: bool
    _closed: bool
    _broken: CorepipeError | None
    _feed_seq: int
    _collect_seq: int
    _replayed: int
    _stage_timeout: float
    _max_deaths: int
    _death_window: float

    def _spawn(self, k: int) -> WorkerProcess:
        raise NotImplementedError

    def _wait_ready(self, k: int, epoch: int) -> None:
        raise NotImplementedError

    def _finish(self, req: Request, result: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
        raise NotImplementedError

    def _monitor_loop(self) -> None:
        assert self._control is not None
        while not self._closed:
            time.sleep(0.05)
            if self._closed:
                return
            procs = [w.process for w in self._workers]
            dead = [k for k, p in enumerate(procs) if not p.is_alive()]
            now = time.time()
            hung = [k for k in range(self._n) if k not in dead and self._stuck(k, now)]
            if (dead or hung) and not self._closed and self._broken is None:
                try:
                    self._recover(dead, hung)
                except PipelineClosedError:
                    return
                except Exception as exc:  # recovery itself failed: give up cleanly
                    self._break(StageError(f"recovery failed: {exc}", stage=(dead + hung)[0]))

    def _stuck(self, k: int, now: float) -> bool:
        """Busy on one request past the stage deadline, or silent (not even polling) as long."""
        assert self._control is not None
        busy_since = self._control.get(k, Control.BUSY_SINCE)
        if busy_since > 0:
            return busy_since < now - self._stage_timeout
        beat = self._control.get(k, Control.HEARTBEAT)
        return 0 < beat < now - max(self._stage_timeout, 1.0)

    def _recover(self, dead: list[int], hung: list[int]) -> None:
        control = self._control
        assert control is not None
        with self._cv:
            self._paused = True
            self._epoch += 1
            epoch = self._epoch
            control.epoch = epoch
        suspects = {}
        for k in dead + hung:
            if control.get(k, Control.BUSY_SINCE) > 0:
                suspects[k] = int(control.get(k, Control.CURRENT))
        for k in hung:
            self._workers[k].process.kill()
        for b in self._wake:
            b.ring()
        restart = set(dead) | set(hung)
        deadline = time.monotonic() + max(self._stage_timeout, 1.0)
        for k in range(self._n):
            if k in restart:
                continue
            while control.get(k, Control.ACK) < epoch:
                if not self._workers[k].process.is_alive() or time.monotonic() > deadline:
                    self._workers[k].process.kill()
                    restart.add(k)
                    break
                time.sleep(0.005)
        for k in sorted(restart):
            self._workers[k].process.join(timeout=5)
            if self._record_death(k):
                return
        for ring in self._rings:
            ring.reset()
        poisoned = []
        with self._cv:
            for k, rid in suspects.items():
                req = self._inflight.get(rid)
                if req is None:
                    continue
                req.deaths += 1
                if req.deaths >= 2:  # the request itself kills the worker: fail it, keep the rest
                    del self._inflight[rid]
                    poisoned.append((k, req))
        for k, req in poisoned:
            self._finish(req, None, StageError(
                f"stage {k} worker died twice while running request {req.rid}; "
                "the request is dropped so the others can go on",
                stage=k, request_id=req.rid,
            ))
        for k in sorted(restart):
            while True:
                w = self._workers[k]
                w.process.close()
                w.process = self._spawn(k)
                w.restarts += 1
                try:
                    self._wait_ready(k, epoch)
                    break
                except StageError:
                    w.process.kill()
                    w.process.join(timeout=5)
                    if self._record_death(k):
                        return
        with self._cv:
            replay = sorted(self._inflight.values(), key=lambda r: r.rid)
            self._replayed += len(replay)
            self._inflight.clear()
            self._pending.extendleft(reversed(replay))
            self._feed_seq = self._collect_seq = 0
            control.go_epoch = epoch
            self._paused = False
            self._cv.notify_all()
        for b in self._wake:
            b.ring()

    def _record_death(self, k: int) -> bool:
        """Count a death of stage ``k``'s worker; past the limit, break the pipeline (True)."""
        w = self._workers[k]
        now = time.monotonic()
        w.deaths.append(now)
        while w.deaths and w.deaths[0] < now - self._death_window:
            w.deaths.popleft()
        if len(w.deaths) < self._max_deaths:
            return False
        self._break(StageError(
            f"stage {k} worker died {len(w.deaths)} times within {self._death_window:.0f} s "
            f"(last exit code {w.process.exitcode}); giving up on the pipeline's requests",
            stage=k,
        ))
        return True

    def _break(self, error: CorepipeError) -> None:
        with self._cv:
            self._broken = error
            doomed = sorted(self._inflight.values(), key=lambda r: r.rid) + list(self._pending)
            self._inflight.clear()
            self._pending.clear()
            self._cv.notify_all()
        for req in doomed:
            self._finish(req, None, error)
