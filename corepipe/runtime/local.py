"""The ``local`` backend: one pinned worker process per stage, shared-memory hand-off.

The client keeps every request's inputs until its outputs arrive (in its first-ring slot), so
when a worker dies (or hangs past ``stage_timeout``) it can start a new one and replay what had
not completed. See the `Pipeline` docstring for the contract, `corepipe.runtime.client` for the
data path and `corepipe.runtime.worker` for the worker side.

No thread of the client's own stands between a caller and the rings: ``submit`` writes the first
ring from the caller's thread, and a caller waiting for a result reaps the last ring itself
(`corepipe.runtime.client`). One daemon *service* thread watches the workers (a pidfd each, so a
death wakes it at once), checks stage deadlines, runs recovery, and reaps the results nobody
waits for (callbacks, asyncio). `close` (or interpreter exit) stops it.

Before it makes its segments, a pipeline sweeps ``/dev/shm`` of those a killed client left
(`corepipe.runtime.segments.sweep_orphans`).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np
import psutil

from ..artifact.manifest import Artifact
from ..errors import CorepipeError
from .base import Pipeline, PipelineStats, StageStats
from .bell import Bell
from .client import FIRST_RING_BYTES
from .phases import phases_from_env
from .process import assign_cores
from .segments import sweep_orphans
from .shm import Control, Ring
from .stagebatch import stage_batch_rows
from .supervisor import Supervisor, Worker

__all__ = ["LocalPipeline"]

#: Hand-off ring slots for a plan over dynamic dims: requests of different sizes take different
#: times at every stage, and with double buffering a stage often idles while the one before
#: works on a long request (BERT-base at mixed lengths: stages 76 % busy with 2 slots, 90-97 %
#: with 8 and 16 in flight, +15 % throughput).
VARIABLE_SLOTS = 8

#: Set to microseconds a worker on cores of its own spins on its input ring before it sleeps on
#: its doorbell (default 0: sleep at once; see benchmarks/RESULTS.md, "The hot path").
SPIN_ENV = "COREPIPE_SPIN_US"

_LIVE: weakref.WeakSet[LocalPipeline] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pipe in list(_LIVE):
        try:
            pipe.close(timeout=0)
        except Exception:  # interpreter is going away; do what we can
            pass


class LocalPipeline(Supervisor, Pipeline):
    """One process per stage; see `Pipeline` for the contract.

    Args:
        artifact: a verified artifact (from `corepipe.load`).
        max_in_flight: requests admitted at once (default ``2 * stages + 2``; a plan over
            dynamic dims: ``slots * stages``).
        cores: core ids to pin to (default: this process's affinity). Stage ``k`` gets
            ``threads_per_stage`` consecutive cores; with more stages than cores, the plan's
            grouping of consecutive stages onto shared cores.
        threads_per_stage: onnxruntime intra-op threads per stage (default: cores / stages).
        stage_timeout: seconds one stage may spend on one request before its worker is
            treated as dead (killed, restarted, requests replayed).
        slots: slots per hand-off ring (2 = double buffering; a plan over dynamic dims:
            `VARIABLE_SLOTS`, so a short request queues behind a long one instead of leaving
            the next stage idle: benchmarks/RESULTS.md, "Mixed traffic"; with ``stage_batch``,
            at least twice its rows, so a stage can take a full batch).
        start_timeout: seconds to wait for workers to load their stages.
        max_deaths, death_window: what counts as a stage that keeps dying: its worker died
            ``max_deaths`` times within ``death_window`` seconds.
        restart: what happens to a stage that keeps dying. ``"give-up"`` (default): the pipeline
            breaks; its requests fail with `StageError`. ``"backoff"``: never give up; wait
            ``backoff_s``, doubling with each further death up to ``backoff_max_s``, before each
            restart, with the stage reported down meanwhile (`readiness`). Servers use it.
        stage_batch: each worker runs the requests queued in its incoming ring as one engine call
            of up to this many rows (``True``: the batch dim's max; `corepipe.runtime.stagebatch`).
    """

    backend = "local"

    def __init__(
        self,
        artifact: Artifact,
        *,
        max_in_flight: int | None = None,
        cores: Sequence[int] | None = None,
        threads_per_stage: int | None = None,
        stage_timeout: float = 60.0,
        slots: int | None = None,
        start_timeout: float = 120.0,
        max_deaths: int = 3,
        death_window: float = 60.0,
        restart: str = "give-up",
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stage_batch: int | bool | None = None,
    ) -> None:
        n = artifact.plan.num_cores
        variable = artifact.plan.shapes is not None
        rows = stage_batch_rows(artifact.plan, stage_batch)
        # A stage batches what is queued at it: room for two batches per ring (and as many
        # requests in flight) lets it take full ones (benchmarks/RESULTS.md, "stagebatch").
        slots = slots if slots is not None else max(VARIABLE_SLOTS, 2 * rows) if variable else 2
        super().__init__(artifact.root, artifact.plan, max_in_flight or (slots * n if variable else 2 * n + 2))
        for b, boundary in enumerate(artifact.plan.boundaries):
            odd = [t.name for t in boundary if np.dtype(t.dtype).hasobject]
            if odd:
                raise CorepipeError(
                    f"boundary {b} carries string tensors {odd}, which cannot cross processes "
                    "through shared memory; use backend='inline' or compile with cuts elsewhere"
                )
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if restart not in ("give-up", "backoff"):
            raise CorepipeError(f"restart policy {restart!r} is unknown: use 'give-up' or 'backoff'")
        if not 0 <= backoff_s <= backoff_max_s:
            raise CorepipeError(
                f"backoff_s ({backoff_s}) must be >= 0 and at most backoff_max_s ({backoff_max_s})")
        # The first ring: a slot per request in flight (so a slot keeps its request's inputs for
        # replay, and submit never waits for one), within FIRST_RING_BYTES.
        first = self._first_ring_slots(slots)
        need = sum(Ring.size_for(self._ring_specs(b), first if b == 0 else slots, n) for b in range(n + 1))
        have = psutil.virtual_memory().available
        if need > have:
            raise CorepipeError(
                f"the hand-off buffers need {need / 2**20:.0f} MiB of shared memory and only "
                f"{have / 2**20:.0f} MiB is available; use fewer slots or a smaller model"
            )
        self._artifact = artifact
        self._n = n
        self._slots = slots
        self._trace_slots = slots
        self._stage_timeout = stage_timeout
        self._stage_batch = rows
        self._alone = 0  # requests a restarted worker replays one at a time (supervisor.py)
        self._start_timeout = start_timeout
        self._init_intake(max_deaths=max_deaths, death_window=death_window, restart=restart,
                          backoff_s=backoff_s, backoff_max_s=backoff_max_s)
        self._cores = assign_cores(n, cores, threads_per_stage, [st.core for st in artifact.plan.stages])
        self._epoch = 0
        self._final_stats: PipelineStats | None = None
        self._rings: list[Ring] = []
        self._control: Control | None = None
        self._workers: list[Worker] = []
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self._ph = phases_from_env("client", ("submit", "feed", "collect"))  # None: off (phases.py)
        self._spin_s = float(os.environ.get(SPIN_ENV, "0") or 0) / 1e6
        self._init_client(first)
        _LIVE.add(self)
        try:
            sweep_orphans()
            self._control = Control.create(n)
            self._rings = [Ring.create(self._ring_specs(b), first if b == 0 else slots, n) for b in range(n + 1)]
            # Bells: _full[k] wakes stage k (its input landed), _free[k + 1] wakes stage k (its
            # output slot was taken), _wake[k] its recovery handshake; toward the client one
            # bell for its waiting callers and one for its service thread (bell.SwitchBell).
            self._full = [Bell() for _ in range(n + 1)]
            self._free = [Bell() for _ in range(n + 1)]
            self._wake = [Bell() for _ in range(n)]
            self._callers, self._service, self._kick = Bell(), Bell(), Bell()
            for k in range(n):
                self._workers.append(Worker(self._spawn(k)))
            for k in range(n):
                self._wait_ready(k, 0)
        except BaseException:
            self._shutdown()
            raise
        self._threads = [threading.Thread(target=self._service_loop, name="corepipe-service", daemon=True)]
        for t in self._threads:
            t.start()

    def _first_ring_slots(self, slots: int) -> int:
        """Slots of the first ring: one per request in flight, within `FIRST_RING_BYTES` (a
        decoder pipeline, whose scheduler keeps what it replays, overrides it)."""
        one = Ring.size_for(self._ring_specs(0), 1, self.plan.num_cores)
        return max(slots, min(self.max_in_flight, FIRST_RING_BYTES // max(one, 1)))

    # -- stats / close -----------------------------------------------------------------------
    def stats(self) -> PipelineStats:
        if self._final_stats is not None:  # closed: the figures as they stood at the end
            return self._final_stats
        elapsed = time.perf_counter() - self._started
        stages = []
        control = self._control
        for k in range(self._n):
            requests = int(control.get(k, Control.REQUESTS)) if control else 0
            busy = control.get(k, Control.BUSY_S) if control else 0.0
            pid = int(control.get(k, Control.PID)) if control else None
            depth = self._rings[k].full_slots() if self._rings and not self._closed else 0
            stages.append(StageStats.measured(
                k, pid, ",".join(str(c) for c in self._cores[k]), requests, busy, elapsed, depth,
                restarts=self._workers[k].restarts if k < len(self._workers) else 0,
                runs=int(control.get(k, Control.RUNS)) if control else 0,
            ))
        with self._cv:
            in_flight = len(self._inflight) + len(self._pending)
        return self._summary(elapsed, stages, in_flight)

    @property
    def replayed(self) -> int:
        """Requests sent through the pipeline again after a worker died."""
        return self._replayed

    def worker_pids(self) -> list[int]:
        """Process ids of the stage workers, in stage order."""
        return [w.process.pid for w in self._workers]

    def shm_names(self) -> list[str]:
        """Names of the shared-memory segments this pipeline owns (for leak checks)."""
        names = [r.shm.name for r in self._rings]
        if self._control is not None:
            names.append(self._control.shm.name)
        return names

    def close(self, *, timeout: float | None = 30.0) -> None:
        if threading.current_thread() in getattr(self, "_threads", ()) or threading.get_ident() == self._reaper:
            # Called from a done-callback while this thread reaps: draining needs it, so close
            # from a helper thread and return at once.
            threading.Thread(target=self.close, kwargs={"timeout": timeout},
                             name="corepipe-close", daemon=True).start()
            return
        if self._drain(timeout):
            self._shutdown()

    def _shutdown(self) -> None:
        # Two closes at once (a server's drain and a second signal) must not free anything twice.
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        if self._control is not None and self._control.words.size and self._final_stats is None:
            try:
                self._final_stats = self.stats()
            except Exception:  # never let bookkeeping stop a shutdown
                pass
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._control is not None:
            self._control.shutdown = True
        for b in getattr(self, "_wake", []) + [getattr(self, "_kick", None), getattr(self, "_callers", None)]:
            if b is not None:
                b.ring()
        for t in getattr(self, "_threads", []):
            if t is not threading.current_thread():
                t.join(timeout=2)
        procs = [w.process for w in self._workers]
        deadline = time.monotonic() + 2
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
            p.close()
        for ring in self._rings:
            ring.close(unlink=True)
        if self._control is not None:
            self._control.close(unlink=True)
        for b in getattr(self, "_full", []) + getattr(self, "_free", []) + getattr(self, "_wake", []) + [
                getattr(self, name, None) for name in ("_callers", "_service", "_kick")]:
            if b is not None:
                b.close()
        ph = getattr(self, "_ph", None)
        if ph is not None:
            ph.dump()
        _LIVE.discard(self)
