"""The ``ray`` backend's client: one Ray actor per stage, placed through one placement group, with
requests flowing stage to stage directly: over one TCP stream per boundary (``data_path="stream"``,
see `corepipe.runtime.ray.stream`), or as Ray calls through the object store (``"object-store"``:
each actor holds the next one's handle).

The client keeps every request's inputs until its outputs arrive, so when an actor or its node
dies it starts a new actor (Ray re-places the bundle on a live node) and replays what had not
completed; see `corepipe.runtime.ray.recovery`. The contract is `Pipeline`'s.

Threads in the client: `submit` hands a request to stage 0 (the stream's sender thread sends it;
on the object-store path, `submit` calls stage 0 itself); results arrive on the stream's reader
thread (or the *collector* long-polls the last stage) and complete futures in order; the
*monitor* pings every actor, notices dead, stuck or vanished ones and broken streams, and runs
recovery. All are daemons; `close` stops them.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...artifact.manifest import Artifact
from ...artifact.transfer import manifest_sha256
from ...errors import CorepipeError, StageError
from ..base import Pipeline, PipelineStats
from ..intake import Request
from ..timeline import RequestTrace
from .actor import OK
from .cluster import (
    STRATEGIES,
    bundles_for,
    connect,
    create_placement,
    disconnect,
    import_ray,
)
from .framing import Frame, Framing, streamable
from .recovery import Recovery
from .stream import ClockProbe, Inlet, Outlet

__all__ = ["RayPipeline"]

_LIVE: weakref.WeakSet[RayPipeline] = weakref.WeakSet()


@dataclass
class _Request(Request):
    inputs: Any = None  # the input arrays (or their ObjectRef in the object store), kept for replay

_SOURCES = ("auto", "path", "ship")
DATA_PATHS = ("auto", "stream", "object-store")


@atexit.register
def _close_all() -> None:
    for pipe in list(_LIVE):
        try:
            pipe.close(timeout=0)
        except Exception:  # interpreter is going away; do what we can
            pass


def _per_stage(value: int | Sequence[int], n: int, what: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n or any(type(v) is not int or v < 1 for v in values):
        raise CorepipeError(f"{what} must be a positive int or one per stage ({n}), got {value!r}")
    return values


class RayPipeline(Recovery, Pipeline):
    """One Ray actor per stage; see `Pipeline` for the contract.

    Args:
        artifact: a verified artifact (from `corepipe.load`).
        address: ``None`` starts a private Ray instance on 127.0.0.1; ``"auto"`` joins the
            cluster this machine belongs to (``ray start``); ``"ray://host:port"`` a remote one.
            Ignored when this process is already connected (``ray.init``).
        placement_strategy: ``PACK`` (default: as few nodes as the resources allow), ``SPREAD``,
            ``STRICT_SPREAD`` (each stage on its own node) or ``STRICT_PACK``.
        threads_per_stage: onnxruntime threads of each stage, and the CPUs its bundle reserves
            (an int for all, or one per stage; default 1).
        stage_resources: extra Ray resources per stage (one dict per stage), e.g. custom node
            resources that pin stages to nodes.
        reserve_memory: reserve each stage's resident weight bytes as Ray ``memory`` in its
            bundle, so no node gets more stages than its declared memory holds (default True).
        stage_source: ``"auto"`` (each actor reads the artifact directory when its node sees the
            very same one, else the driver ships the stage's bytes once), ``"path"``, ``"ship"``.
        data_path: how requests travel. ``"stream"``: one TCP connection per boundary between
            neighbouring actors (and the client), slot frames of raw tensor bytes checked on
            arrival; ``"object-store"``: Ray calls through the object store. ``"auto"`` (default):
            the stream, unless a boundary carries strings, the driver is a Ray Client
            (``ray://``), or a stage cannot reach its neighbour at start (then the object store).
        runtime_env: Ray runtime environment when this call connects to a cluster.
        num_cpus: the CPUs a private instance (``address=None``) offers (default: this host's
            cores, or what the stages reserve if that is more); ignored when joining a cluster.
        max_in_flight: requests admitted at once (default ``2 * stages + 2``).
        stage_timeout: seconds one stage may spend on one request (or stay silent) before its
            actor is treated as dead (killed, restarted, requests replayed).
        start_timeout: seconds to place the stages and load them.
        max_deaths, death_window: what counts as a stage that keeps dying: its actor died
            ``max_deaths`` times within ``death_window`` seconds.
        restart: what happens to a stage that keeps dying, as for ``local``: ``"give-up"``
            (default) breaks the pipeline, its requests fail with `StageError`; ``"backoff"``
            waits ``backoff_s`` (doubling per further death, at most ``backoff_max_s``) before
            each restart and reports the stage down meanwhile (`readiness`).
        relax_placement: when a stage must restart and no node reachable now can hold the plan
            with ``placement_strategy`` (STRICT_SPREAD after a partition left fewer nodes than
            stages), move every stage to the relaxed strategy (SPREAD, or PACK for STRICT_PACK)
            on the nodes at hand, if they hold it. Default False: waiting requests fail at once
            with a `StageError` naming the constraint and the nodes reachable (module
            `corepipe.runtime.ray.recovery`). Either way a warning is logged and ``stats().problem``
            says why.

    Raises:
        CorepipeError: Ray missing or unreachable, a bad option, or a placement no node can hold.
        StageError: an actor failed to start or to load its stage.
    """

    backend = "ray"

    def __init__(
        self,
        artifact: Artifact,
        *,
        address: str | None = None,
        placement_strategy: str = "PACK",
        threads_per_stage: int | Sequence[int] = 1,
        stage_resources: Sequence[Mapping[str, float]] | None = None,
        reserve_memory: bool = True,
        stage_source: str = "auto",
        data_path: str = "auto",
        runtime_env: Mapping[str, Any] | None = None,
        num_cpus: int | None = None,
        max_in_flight: int | None = None,
        stage_timeout: float = 60.0,
        start_timeout: float = 120.0,
        max_deaths: int = 3,
        death_window: float = 60.0,
        restart: str = "give-up",
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        relax_placement: bool = False,
    ) -> None:
        n = artifact.plan.num_cores
        super().__init__(artifact.root, artifact.plan, max_in_flight or 2 * n + 2)
        strategy = str(placement_strategy).upper()
        if strategy not in STRATEGIES:
            raise CorepipeError(f"placement_strategy must be one of {list(STRATEGIES)}, got {placement_strategy!r}")
        if stage_source not in _SOURCES:
            raise CorepipeError(f"stage_source must be one of {list(_SOURCES)}, got {stage_source!r}")
        if data_path not in DATA_PATHS:
            raise CorepipeError(f"data_path must be one of {list(DATA_PATHS)}, got {data_path!r}")
        unframable = [b for b, specs in enumerate(artifact.plan.boundaries) if not streamable(specs)]
        if data_path == "stream" and unframable:
            raise CorepipeError(
                f"data_path='stream' frames raw tensor bytes, and boundary {unframable[0]} carries "
                "strings or objects; use data_path='object-store' (or 'auto')")
        if self.max_in_flight < 1:
            raise CorepipeError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        if restart not in ("give-up", "backoff"):
            raise CorepipeError(f"restart policy {restart!r} is unknown: use 'give-up' or 'backoff'")
        if not 0 <= backoff_s <= backoff_max_s:
            raise CorepipeError(
                f"backoff_s ({backoff_s}) must be >= 0 and at most backoff_max_s ({backoff_max_s})")
        self._threads_per = _per_stage(threads_per_stage, n, "threads_per_stage")
        memory = [st.resident_bytes if reserve_memory else 0 for st in artifact.plan.stages]
        self._bundles = bundles_for(self._threads_per, memory, stage_resources)
        self._ray = import_ray()
        self._artifact = artifact
        self._manifest = manifest_sha256(artifact.root)
        self._n = n
        self._strategy = strategy
        self._relax = bool(relax_placement)
        self._stage_source = stage_source
        self._stage_timeout = stage_timeout
        self._start_timeout = start_timeout
        self._init_intake(max_deaths=max_deaths, death_window=death_window, restart=restart,
                          backoff_s=backoff_s, backoff_max_s=backoff_max_s)
        # Actors stamp with their wall clocks; timelines are in this process's monotonic clock.
        self._mono_minus_wall = time.monotonic() - time.time()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self._names = [[t.name for t in self._boundary(b)] for b in range(n + 1)]
        self._epoch = 0
        self._seq = 0
        self._final_stats: PipelineStats | None = None
        self._out_handoffs = [0, 0.0]  # last stage -> client: count, raw seconds
        self._actors: list[Any] = []
        self._connected = False
        self._pg: Any = None
        self._threads: list[threading.Thread] = []
        self._inlet: Inlet | None = None
        self._outlet: Outlet | None = None
        self._token: bytes | None = None
        self._clock_probe: ClockProbe | None = None
        self._data_path = "object-store"
        self._framing = Framing(self._boundary(0), n, 0)
        self._init_recovery()
        _LIVE.add(self)
        try:
            connect(address, num_cpus=num_cpus or max(os.cpu_count() or 1, sum(self._threads_per)),
                    runtime_env=runtime_env)
            self._connected = True
            self._driver_ip = self._ray.util.get_node_ip_address()
            self._open_stream(data_path, bool(unframable))
            self._pg = create_placement(self._bundles, strategy, start_timeout)
            self._actors = [self._new_actor(k) for k in range(n)]
            self._load_stages(list(range(n)))
            lost = self._wire(0)
            if lost and data_path == "stream":
                raise CorepipeError(f"data_path='stream': {lost[0][1]}; open the port range between "
                                    "the nodes, or use data_path='object-store'")
            if lost:  # auto: a stage cannot reach its neighbour directly; Ray's path still works
                self._close_stream()
                self._wire(0)
            for _ in range(8):  # clock offsets from the start, not only after the monitor's rounds
                self._probe_clocks()
            self._answered = [time.monotonic()] * n
        except BaseException:
            self._shutdown()
            raise
        self._threads = [threading.Thread(target=self._monitor_loop, name="corepipe-ray-monitor", daemon=True)]
        if self._data_path != "stream":
            self._threads.append(
                threading.Thread(target=self._collect_loop, name="corepipe-ray-collector", daemon=True))
        for t in self._threads:
            t.start()

    @property
    def data_path(self) -> str:
        """How requests travel: ``"stream"`` or ``"object-store"`` (see the class docstring)."""
        return self._data_path

    # -- client API --------------------------------------------------------------------------
    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[dict[str, np.ndarray]]:
        self._check_open()
        checked = self._checked(feeds)
        # Copy now: the caller may reuse its arrays, and replay needs the inputs until completion.
        # One copy: kept here for the stream, or put into the object store (stage 0 reads it in
        # place there, and a replay sends it again).
        if self._data_path == "stream":
            kept: Any = [np.array(checked[name], copy=True) for name in self._names[0]]
        else:
            kept = self._ray.put([checked[name] for name in self._names[0]])  # C-contiguous already
        self._take_place(timeout)
        fut: Future[dict[str, np.ndarray]] = Future()
        with self._cv:
            self._refuse_if_closing()
            req = _Request(next(self._ids), {}, fut, time.monotonic(), inputs=kept)
            fut.request_id = req.rid  # type: ignore[attr-defined]
            fut.set_running_or_notify_cancel()
            if self._paused or self._pending:
                self._pending.append(req)
            else:
                self._send(req)
        return fut

    def _send(self, req: _Request) -> None:  # type: ignore[override]
        """Hand ``req`` to stage 0 (called with ``_cv`` held, so sequence numbers follow rids)."""
        seq, self._seq = self._seq, self._seq + 1
        self._inflight[req.rid] = req
        req.fed = req.fed or time.monotonic()  # a replay keeps its first entry
        if self._outlet is not None and self._data_path == "stream":
            self._outlet.send(self._epoch, self._framing.parts(
                epoch=self._epoch, seq=seq, rid=req.rid, status=OK, error=None, arrays=req.inputs, stamps=[]))
        else:
            self._actors[0].push.remote(self._epoch, seq, req.rid, time.time(), OK, None, req.inputs, [])

    def _take_results(self, frame: Frame) -> None:
        """The stream's reader thread: a result frame from the last stage, read and checked."""
        self._deliver(frame.epoch, [(frame.seq, frame.rid, frame.sent_at, frame.status, frame.error,
                                     frame.arrays, frame.stamps)], frame.arrived)

    # -- collector ---------------------------------------------------------------------------
    def _collect_loop(self) -> None:
        ray = self._ray
        while True:
            with self._cv:
                while self._paused and not self._closed:
                    self._cv.wait(0.2)
                if self._closed:
                    return
                epoch, last = self._epoch, self._actors[-1]
            ref = last.take.remote(epoch, 0.5)
            ready: list[Any] = []
            while not ready and not self._closed and epoch == self._epoch:
                ready, _ = ray.wait([ref], timeout=0.1)
            if not ready:
                continue
            try:
                got_epoch, results = ray.get(ref)
            except Exception:  # the last actor died: the monitor recovers, then we go on
                time.sleep(0.05)
                continue
            self._deliver(got_epoch, results)

    def _deliver(self, epoch: int, results: list[tuple[Any, ...]], received: float | None = None) -> None:
        received, now = received or time.time(), time.monotonic()
        done = []
        with self._cv:
            if epoch != self._epoch or self._paused:
                return  # a recovery began: these requests are replayed
            for _seq, rid, ready_at, status, error, arrays, stamps in results:
                req = self._inflight.pop(rid, None)
                if req is None:
                    continue
                self._out_handoffs[0] += 1
                self._out_handoffs[1] += received - ready_at
                done.append((req, status, error, arrays))
                self._traces.add(RequestTrace(
                    req.rid, req.submitted, req.fed, self._to_monotonic(stamps), now,
                    ok=status == OK, replays=req.replays,
                ))
        for req, status, error, arrays in done:
            if status == OK:
                self._finish(req, self._result(arrays), None)
            else:
                stage, node, message = error
                self._finish(req, None, StageError(message, stage=int(stage), request_id=req.rid,
                                                   node=node or None))

    def _result(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """A request's outputs from the last boundary's arrays, copied out of the frame."""
        values = dict(zip(self._names[-1], arrays))
        return {t.name: np.array(values[t.name], copy=True) for t in self.plan.outputs}

    # -- stats / close -----------------------------------------------------------------------
    @property
    def replayed(self) -> int:
        """Requests sent through the pipeline again after an actor or node died."""
        return self._replayed

    def actors(self) -> list[Any]:
        """The stage actors' handles, in stage order (for ``ray.kill`` in tests and tools)."""
        return list(self._actors)

    def placement(self) -> list[dict[str, Any]]:
        """Per stage: its actor's node id, IP address and pid, the corepipe it imports
        (``module``), and whether it read the stage from the shared directory or shipped bytes
        (``source``: ``"path"`` or ``"ship"``)."""
        return [dict(w) for w in self._where]

    @property
    def placement_group(self) -> Any:
        return self._pg

    def close(self, *, timeout: float | None = 30.0) -> None:
        if threading.current_thread() in self._threads + (self._inlet.threads if self._inlet else []):
            # From a done-callback on our collector: draining needs that very thread.
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
        if self._actors and self._final_stats is None and self._connected:
            try:
                self._final_stats = self.stats()
            except Exception:  # never let bookkeeping stop a shutdown
                pass
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        self._close_stream()
        if self._connected:
            self._release()
            self._connected = False
            disconnect()
        _LIVE.discard(self)
