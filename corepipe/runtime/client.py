"""The ``local`` backend's client data path: no thread hop between a caller and the rings.

- **Submit writes the ring.** The submitting thread copies its request straight into a slot of
  the first ring and publishes it. The first ring has a slot per request in flight (up to a
  memory cap), and a slot is reused only once its request completed, so the slot itself keeps
  the request's inputs for replay: no second copy. Only when no slot is free (the cap, or a
  recovery under way) does a request wait in the queue, with a copy of its inputs; whoever
  next finds a slot free feeds it.
- **Whoever waits, reaps.** A thread blocked in ``result()`` (so in `Pipeline.run` and `map`)
  reads the last ring itself and completes every future that is due, in order, then returns.
  The last worker's doorbell wakes that thread directly (`SwitchBell`: the control block says
  whether a caller listens). With no caller waiting (futures used through callbacks, asyncio,
  ``concurrent.futures.wait``), the service thread reaps instead.
- Completing is serialised by one lock, taken without blocking: a thread that finds it held
  leaves the work to its holder, who looks again after releasing it, so nothing is missed.

The service thread (`corepipe.runtime.supervisor`) watches the workers by pidfd and the stage
deadlines, and reaps what no caller is waiting for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..errors import CorepipeError
from .bell import Bell, fence
from .intake import Intake, Request
from .phases import Phases
from .shm import EMPTY, ERROR, Control, Ring, decode_error, encode_error
from .timeline import RequestTrace, TraceLog

__all__ = ["RingClient", "RingFuture", "FIRST_RING_BYTES"]

#: Shared memory the first ring may take to hold a slot per request in flight (beyond it, fewer
#: slots, and requests past them wait in the queue with a copy of their inputs).
FIRST_RING_BYTES = 256 * 2**20

Result = dict[str, np.ndarray]


class RingFuture(Future[Result]):
    """A `Future` whose ``result()`` and ``exception()`` reap completions while they wait,
    instead of waiting for another thread to do it."""

    def __init__(self, client: RingClient) -> None:
        super().__init__()
        self._client = client

    def result(self, timeout: float | None = None) -> Result:
        if not self.done():
            timeout = self._client._await(self, timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            timeout = self._client._await(self, timeout)
        return super().exception(timeout)


class RingClient(Intake):
    """Mixin for `LocalPipeline`: submit into the first ring, reap from the last."""

    plan: Any
    _n: int
    _rings: list[Ring]
    _control: Control | None
    _full: list[Bell]
    _free: list[Bell]
    _callers: Bell
    _epoch: int
    _traces: TraceLog
    _ph: Phases | None
    _checked: Any  # Pipeline._checked

    def _init_client(self, first_slots: int) -> None:
        self._first_slots = first_slots
        self._slot_rid: list[int | None] = [None] * first_slots  # request whose inputs a slot holds
        self._feed_seq = 0
        self._collect_seq = 0
        self._feed_lock = threading.RLock()  # writing the first ring; recovery's reset
        self._reap_lock = threading.Lock()  # reading the last ring and completing, in order
        self._reaper: int | None = None  # thread id of the reap lock's holder
        self._listeners = 0  # threads waiting in RingFuture.result()
        self._late_reaps = 0  # completions the service thread found only at its tick (lost wake-ups)
        self._sleep_in0 = Control.GLOBAL + Control.SLEEP_IN  # control words: stage 0 sleeps for input,
        self._sleep_out_last = Control.GLOBAL + (self._n - 1) * Control.PER_STAGE + Control.SLEEP_OUT  # the last for room

    # -- submit ------------------------------------------------------------------------------
    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[Result]:
        ph = self._ph
        if ph is not None:
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        self._check_open()
        checked = self._checked(feeds)
        self._take_place(timeout)
        fut = RingFuture(self)
        # A submitting thread listens too: a result that lands meanwhile rings this thread's
        # doorbell, not the service thread's, and is reaped here as submit returns (a caller that
        # streams, submit then result, then reaps everything itself).
        self._listen(+1)
        try:
            with self._feed_lock:
                with self._cv:
                    self._refuse_if_closing()
                    req = Request(next(self._ids), {}, fut, time.monotonic())  # the workers' clock too
                    fut.request_id = req.rid  # type: ignore[attr-defined]
                    fut.set_running_or_notify_cancel()
                    direct = not self._pending and self._reserve(req)
                    if not direct:  # no free slot: wait in the queue with a copy (the caller may reuse its arrays)
                        req.feeds = {t.name: np.array(checked[t.name], copy=True) for t in self.plan.boundaries[0]}
                        self._pending.append(req)
                if direct:
                    self._write(req, checked)
            if not direct:
                self._feed_pending()
        finally:
            if self._listen(-1) == 0:
                self._stop_listening()
        if ph is not None:
            ph.add(0, time.perf_counter_ns() - t0, time.thread_time_ns() - c0)
        return fut

    def _listen(self, change: int) -> int:
        """Count a thread in (+1) or out (-1) of listening for completions; the control block
        tells the last stage which doorbell to ring (`SwitchBell`). Returns the listeners now."""
        with self._cv:
            self._listeners += change
            if self._control is not None:
                self._control.set_listening(self._listeners)
            return self._listeners

    def _stop_listening(self) -> None:
        """After the last listener left: reap what a worker published while it still saw one.
        The worker publishes, fences, then reads ``listening`` to choose a doorbell; this thread
        wrote ``listening = 0``, fences, then looks at the last ring. One of the two sees the
        other: the worker rings the service thread, or this thread sees the result and reaps it.
        (Draining the callers' doorbell alone missed a ring still on its way: the result waited
        for the service thread's tick, a second, for a caller that used callbacks.)"""
        fence()
        self._callers.drain()
        if self._due() or self._pending:  # stage 0 may have rung us for a free slot as well
            self._reap()

    def _reserve(self, req: Request) -> bool:
        """With ``_cv`` held: give ``req`` the next slot of the first ring if it is free (its last
        request completed), and count it in flight. False: none free, or a recovery is under way."""
        s = self._feed_seq % self._first_slots
        if self._paused or self._closed or self._slot_rid[s] is not None or self._rings[0].state(s) != EMPTY:
            return False
        req.slot, req.seq, req.epoch = s, self._feed_seq, self._epoch
        req.fed = req.fed or time.monotonic()  # a replay keeps its first entry
        self._slot_rid[s] = req.rid
        self._inflight[req.rid] = req
        self._feed_seq += 1
        return True

    def _write(self, req: Request, arrays: Mapping[str, np.ndarray]) -> None:
        """With ``_feed_lock`` held: copy ``arrays`` into ``req``'s slot and publish it. The slot
        keeps them for replay until ``req`` completes. A write that fails (it cannot, for a
        checked request) publishes an error slot, so the stages stay in step."""
        ph = self._ph
        if ph is not None:
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        ring, s = self._rings[0], req.slot
        assert s is not None, "a request is written to the slot it reserved"
        error = ""
        try:
            ring.write(s, arrays)  # type: ignore[arg-type]
        except Exception as exc:
            error = encode_error(CorepipeError(f"request {req.rid} could not enter the pipeline: {exc}"), 0)
        ring.publish(s, epoch=req.epoch, seq=req.seq, request_id=req.rid, status=ERROR if error else 0, error=error)
        fence()  # ring stage 0 only if it sleeps (Control.SLEEP_IN)
        control = self._control
        if control is None or control.view[self._sleep_in0]:
            self._full[0].ring()
        if ph is not None:
            ph.add(1, time.perf_counter_ns() - t0, time.thread_time_ns() - c0)

    def _feed_pending(self) -> None:
        """Move queued requests into free slots of the first ring, in order."""
        control = self._control
        with self._feed_lock:
            while True:
                with self._cv:
                    if not self._pending or self._paused or self._closed:
                        if control is not None:
                            control.set_feed_wait(False)
                        return
                    req = self._pending[0]
                    if not self._reserve(req):
                        if control is not None:  # ask stage 0 to ring when it frees a slot
                            control.set_feed_wait(True)
                            fence()
                        if not self._reserve(req):  # look again: it may have freed one meanwhile
                            return
                    self._pending.popleft()
                feeds, req.feeds = req.feeds, {}  # the slot holds them from now on
                self._write(req, feeds)

    def _keep_inputs(self) -> None:
        """With ``_feed_lock`` held, before a recovery resets the rings: copy the inputs of every
        request in flight out of its first-ring slot (replay sends them again)."""
        ring = self._rings[0]
        for req in self._inflight.values():
            if not req.feeds and req.slot is not None:
                req.feeds = {name: np.array(v, copy=True) for name, v in ring.read(req.slot).items()}
            req.slot = None
        self._slot_rid = [None] * self._first_slots

    def _reset_rings(self) -> None:
        """A recovery's reset of every ring, once no submitter is writing and the inputs of the
        requests in flight are kept (`_keep_inputs`)."""
        with self._feed_lock:
            with self._cv:
                self._keep_inputs()
            for ring in self._rings:
                ring.reset()

    # -- reap --------------------------------------------------------------------------------
    def _collect(self) -> int:
        """With ``_reap_lock`` held: complete every request the last ring holds, in order."""
        ring, slots, ph, done = self._rings[-1], self._rings[-1].slots, self._ph, 0
        while True:
            with self._cv:
                if self._paused or self._closed:
                    return done
                epoch, seq = self._epoch, self._collect_seq
            s = seq % slots
            if not ring.ready(s, epoch):
                return done
            if ph is not None:
                t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            rid = ring.request_id(s)
            result: Result | None = None
            error: BaseException | None = None
            stamps: list[tuple[float, float]] = []
            try:
                stamps = ring.stamps(s)
                if ring.status(s) == ERROR:
                    error = decode_error(ring.error(s), rid)
                else:
                    views = ring.read(s)
                    result = {t.name: np.array(views[t.name], copy=True) for t in self.plan.outputs}
            except Exception as exc:  # a torn read during recovery; the epoch check below drops it
                error = exc
            with self._cv:
                if self._paused or epoch != self._epoch:
                    return done
                ring.free(s)
                self._collect_seq += 1
                req = self._inflight.pop(rid, None)
                if req is not None and req.slot is not None:
                    self._slot_rid[req.slot] = None
                if self._closing and not self._inflight:
                    self._cv.notify_all()
            fence()  # ring the last stage only if it sleeps for a free slot (Control.SLEEP_OUT)
            control = self._control
            if control is None or control.view[self._sleep_out_last]:
                self._free[-1].ring()
            if req is not None:
                self._traces.add(RequestTrace(req.rid, req.submitted, req.fed, tuple(stamps), time.monotonic(),
                                              ok=error is None, replays=req.replays))
                self._finish(req, result, error)
                done += 1
            if ph is not None:
                ph.add(2, time.perf_counter_ns() - t0, time.thread_time_ns() - c0)

    def _due(self) -> bool:
        """Whether the last ring holds the next result (a hint; `_collect` decides)."""
        ring = self._rings[-1]
        return not self._paused and ring.ready(self._collect_seq % ring.slots, self._epoch)

    def _reap(self) -> int:
        """Complete what is due and feed what waits, unless another thread is completing (it
        looks again after it stops). Returns the requests completed here."""
        done = 0
        while self._reap_lock.acquire(blocking=False):
            try:
                self._reaper = threading.get_ident()
                done += self._collect()
            finally:
                self._reaper = None
                self._reap_lock.release()
            if not self._due():
                break
        if self._pending:
            self._feed_pending()
        return done

    def _await(self, fut: Future[Result], timeout: float | None) -> float | None:
        """Reap until ``fut`` is done or ``timeout`` passes, sleeping on the callers' doorbell
        between looks. Returns the time left of ``timeout`` (for the future's own wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._listen(+1)
        try:
            while not fut.done() and not self._closed and threading.get_ident() != self._reaper:
                if self._reap() and self._listeners > 1:
                    self._callers.ring()  # what it completed may be another listener's
                if fut.done():
                    break
                # A long sleep: the doorbell wakes it, and a ring that went to the service thread
                # instead (a race as it began listening) comes back from there (_service_reap).
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0:
                    break
                self._callers.wait(left)
        finally:
            if self._listen(-1) == 0:
                self._stop_listening()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _service_reap(self) -> int:
        """The service thread's share: reap what no caller took, and wake the callers if it
        completed something while they listened (their doorbell may have rung here instead).
        Returns the requests completed here."""
        done = self._reap()
        if done and self._listeners:
            self._callers.ring()
        return done
