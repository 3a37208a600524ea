"""Supervision of the ``local`` backend's workers: start them, notice a dead or stuck one, restart it,
replay what had not completed, and deal with a stage that keeps dying (give up, or back off).

Recovery, step by step: pause intake and collection; bump the *epoch* in the control block so
every worker drops what it holds and acknowledges; kill the stuck, reap the dead; reset every
ring; fail a request that has now killed its worker twice; start new workers and wait for them
to load; queue every request still in flight again, in order, ahead of the waiting ones; go.
Requests already answered are not replayed, and the stale epoch keeps old slots from counting.

A stage that keeps dying (``max_deaths`` deaths within ``death_window`` seconds) is handled by
the restart policy. ``"give-up"`` (the library's default) breaks the pipeline: its requests fail
with `StageError` and it takes no more. ``"backoff"`` (what a long-lived server wants) never gives
up: it waits ``backoff_s * 2**(deaths - max_deaths)`` seconds (at most ``backoff_max_s``) before
each further restart. Meanwhile the stage is *down*: `readiness` says so and when to try again,
requests already admitted wait and are replayed, and a caller such as the server fails new ones
fast. A worker that cannot load its stage at all counts as a death too, and the reason is kept.
"""

from __future__ import annotations

import collections
import os
import select
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact.manifest import Artifact
from ..artifact.plan import Plan, TensorSpec
from ..errors import PipelineClosedError, StageError
from .bell import Bell
from .client import RingClient
from .intake import Request
from .process import WorkerProcess
from .shm import Control, Ring
from .timeline import TraceLog

__all__ = ["Request", "Worker", "Supervisor"]


@dataclass
class Worker:
    """A stage's current worker process and its history of deaths (for the give-up rule)."""

    process: WorkerProcess
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    restarts: int = 0
    hold_s: float = 0.0  # backoff to wait before the next start (restart policy "backoff")


class Supervisor(RingClient):
    """Mixin for `LocalPipeline`: starting workers, the service thread's loop, and recovery."""

    path: Path
    plan: Plan
    _artifact: Artifact
    _cores: list[list[int]]
    _slots: int
    _start_timeout: float
    _full: list[Bell]
    _free: list[Bell]
    _n: int
    _control: Control | None
    _workers: list[Worker]
    _rings: list[Ring]
    _wake: list[Bell]
    _epoch: int
    _feed_seq: int
    _collect_seq: int
    _stage_timeout: float
    _traces: TraceLog
    _service: Bell
    _kick: Bell
    _spin_s: float
    _stage_batch: int
    _alone: int

    def _spawn(self, k: int) -> WorkerProcess:
        assert self._control is not None
        for field_ in (Control.READY, Control.BUSY_SINCE, Control.HEARTBEAT):
            self._control.set(k, field_, 0)
        cfg = {
            "artifact": str(self._artifact.root.resolve()),  # workers start in "/"
            "stage": k,
            "num_stages": self._n,
            "cores": self._cores[k],
            "threads": len(self._cores[k]),
            "spin": len(self._cores[k]) > 1 and self._owns_cores(k),
            "slots_in": self._rings[k].slots,
            "slots_out": self._rings[k + 1].slots,
            "spin_s": self._spin_s if self._owns_cores(k) else 0.0,
            "control": self._control.shm.name,
            "ring_in": self._rings[k].shm.name,
            "ring_out": self._rings[k + 1].shm.name,
            "specs_in": [t.to_dict() for t in self._ring_specs(k)],
            "specs_out": [t.to_dict() for t in self._ring_specs(k + 1)],
            "parent_pid": os.getpid(),
            "stamps": self._n,
            "stage_batch": self._stage_batch,
            "alone": self._alone,
            **self._worker_extra(k),
        }
        report_r, report_w = os.pipe()
        os.set_blocking(report_r, False)
        fds = {
            "in_full": self._full[k].fileno(), "in_free": self._free[k].fileno(),
            "out_full": self._full[k + 1].fileno(), "out_free": self._free[k + 1].fileno(),
            "wake": self._wake[k].fileno(), "callers": self._callers.fileno(),
            "service": self._service.fileno(), "report": report_w,
        }
        cfg["fds"] = fds
        try:
            return WorkerProcess(cfg, [fd for fd in fds.values() if fd is not None], report_r)
        finally:
            os.close(report_w)

    def _ring_specs(self, b: int) -> tuple[TensorSpec, ...]:
        """The tensors ring ``b`` holds (a decoder pipeline's rings hold step messages instead)."""
        return self.plan.boundaries[b]

    def _worker_extra(self, k: int) -> dict[str, Any]:
        """More of stage ``k``'s worker config (a decoder pipeline names its worker loop)."""
        return {}

    def _owns_cores(self, k: int) -> bool:
        """Whether no other stage of this pipeline runs on stage ``k``'s cores."""
        mine = set(self._cores[k])
        return not any(mine & set(c) for j, c in enumerate(self._cores) if j != k)

    def _wait_ready(self, k: int, epoch: int) -> None:
        assert self._control is not None
        deadline = time.monotonic() + self._start_timeout
        proc = self._workers[k].process if k < len(self._workers) else None
        while True:
            ready = self._control.get(k, Control.READY)
            if ready == 1 and self._control.get(k, Control.ACK) >= epoch:
                return
            if self._closed:
                raise PipelineClosedError("the pipeline closed while a worker was starting")
            proc = self._workers[k].process if k < len(self._workers) else proc
            dead = ready == -1 or (proc is not None and not proc.is_alive())
            if dead or time.monotonic() > deadline:
                detail = proc.report() if proc is not None else ""
                why = "exited" if dead else f"did not load within {self._start_timeout} s"
                raise StageError(
                    f"stage {k} worker {why} while loading its stage from {str(self.path)!r}"
                    + (f": {detail}" if detail else ""), stage=k,
                )
            time.sleep(0.01)

    def _service_loop(self) -> None:
        """The service thread: sleep until a worker dies (its pidfd turns readable), a result
        lands that no caller waits for (the service doorbell), or the next deadline check; then
        recover, and reap what no caller took."""
        assert self._control is not None
        ph = self._ph
        watched: dict[int, int] = {}  # pid -> pidfd
        # Deaths wake it by pidfd and results by doorbell; the tick is only for stage deadlines
        # (a hung worker is noticed within stage_timeout + stage_timeout / 8) and lost wake-ups.
        tick = min(1.0, max(0.02, self._stage_timeout / 8))
        try:
            while not self._closed:
                watched = self._pidfds(watched)
                fds = [self._service.fileno(), self._kick.fileno(), *watched.values()]
                try:
                    ready, _, _ = select.select(fds, [], [], tick)
                except (OSError, ValueError):  # a descriptor closed under us: look again
                    ready = []
                    time.sleep(0.005)
                if self._closed:
                    return
                if self._service.fileno() in ready:
                    self._service.drain()
                if self._kick.fileno() in ready:
                    self._kick.drain()
                procs = [w.process for w in self._workers]
                dead = [k for k, p in enumerate(procs) if not p.is_alive()]
                now = time.monotonic()
                hung = [k for k in range(self._n) if k not in dead and self._stuck(k, now)]
                if (dead or hung) and not self._closed and self._broken is None:
                    try:
                        self._recover(dead, hung)
                    except PipelineClosedError:
                        return
                    except Exception as exc:  # recovery itself failed: give up cleanly
                        self._break(StageError(f"recovery failed: {exc}", stage=(dead + hung)[0]))
                    continue
                if self._service_reap() and not ready:
                    self._late_reaps += 1  # found by the tick: a wake-up was lost (tests watch this)
        finally:
            for fd in watched.values():
                os.close(fd)
            if ph is not None:
                ph.thread_done("service")

    def _pidfds(self, watched: dict[int, int]) -> dict[int, int]:
        """A pidfd per current worker (made once per process; those of replaced ones closed):
        a worker's death wakes the service thread at once, with no polling tick."""
        pids = {w.process.pid for w in self._workers}
        for pid in [p for p in watched if p not in pids]:
            os.close(watched.pop(pid))
        for pid in pids - watched.keys():
            try:
                watched[pid] = os.pidfd_open(pid)
            except OSError:  # already reaped, or no pidfd (old kernel): the tick notices
                pass
        return watched

    def _stuck(self, k: int, now: float) -> bool:
        """Busy on one request past the stage deadline, or silent (not even polling) as long."""
        assert self._control is not None
        busy_since = self._control.get(k, Control.BUSY_SINCE)
        if busy_since > 0:
            return bool(busy_since < now - self._stage_timeout)
        beat = self._control.get(k, Control.HEARTBEAT)
        return bool(0 < beat < now - max(self._stage_timeout, 1.0))

    def _recover(self, dead: list[int], hung: list[int]) -> None:
        control = self._control
        assert control is not None
        began = time.monotonic()
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
        self._reset_rings()
        self._fail_poisoned(suspects, "worker")
        # The replays come first in the new epoch: a restarted worker runs them one at a time
        # (stage batching off for them), so a request that kills it is found alone.
        with self._cv:
            self._alone = len(self._inflight)
        for k in sorted(restart):
            while True:
                w = self._workers[k]
                self._hold(k, w)
                w.process.close()
                w.process = self._spawn(k)
                w.restarts += 1
                try:
                    self._wait_ready(k, epoch)
                    break
                except StageError as exc:
                    w.process.kill()
                    w.process.join(timeout=5)
                    if self._record_death(k, str(exc)):
                        return
        with self._cv:
            self._traces.recovered(began, time.monotonic(), tuple(sorted(restart)))
            self._requeue_inflight()
            self._feed_seq = self._collect_seq = 0
            control.go_epoch = epoch
            self._paused = False
            self._cv.notify_all()
        for b in self._wake:
            b.ring()
        self._feed_pending()  # the replays, then whatever waited

    def _record_death(self, k: int, why: str = "") -> bool:
        """Count a death of stage ``k``'s worker. Past the limit, break the pipeline (True) under
        the ``give-up`` policy, or set the backoff before its next start under ``backoff``."""
        w = self._workers[k]
        if self._deaths_in_window(w.deaths) < self._max_deaths:
            return False
        if self._restart == "backoff":
            w.hold_s = self._backoff_s(len(w.deaths))
            reason = why or f"its worker died (exit code {w.process.exitcode})"
            self._set_down(
                f"stage {k} is down: {reason}; {len(w.deaths)} deaths within "
                f"{self._death_window:.0f} s, restarting in {w.hold_s:.1f} s", w.hold_s)
            return False
        self._break(StageError(
            f"stage {k} worker died {len(w.deaths)} times within {self._death_window:.0f} s "
            f"(last exit code {w.process.exitcode}); giving up on the pipeline's requests",
            stage=k,
        ))
        return True

    def _hold(self, k: int, w: Worker) -> None:
        """Wait out stage ``k``'s backoff (if any) before starting it again; a close ends it."""
        hold, w.hold_s = w.hold_s, 0.0
        self._wait_out(hold)
