"""Starting and supervising the ``ray`` backend's stage actors: create one in its bundle, load its
stage (from the shared directory or shipped bytes), notice a dead, stuck or vanished actor, start a
new one (Ray re-places a bundle whose node died on a live node), replay what had not completed,
and give up on a stage that keeps dying.

Recovery, step by step (as in `corepipe.runtime.supervisor` for the ``local`` backend): pause
intake; bump the *epoch*, so every message and result of the old one is dropped wherever it is;
reset the live actors (one that does not answer is replaced too); fail a request that has now
killed its actor twice; start and load new actors; tell every actor its downstream actor; send
every request still in flight again, in order, ahead of the waiting ones; go.

The monitor's pings also measure each node's clock offset from the driver's (the sample with the
shortest round trip of the latest 64), which corrects the hand-off times of hosts whose clocks
differ; actors on the driver's host share its clock and need no correction.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..._version import __version__ as _driver_version
from ...artifact.manifest import Artifact
from ...artifact.plan import Plan
from ...artifact.transfer import stage_payload
from ...errors import CorepipeError, PipelineClosedError, StageError
from ..supervisor import Request
from .actor import GROUPS, StageActor

__all__ = ["Recovery"]

_PING_S = 0.2


class _Unplaceable(StageError):
    """A stage's bundle has no node to go to: waiting longer will not help."""


class Recovery:
    """Mixin for `RayPipeline`: actor start-up, the monitor thread's loop, and recovery."""

    path: Path
    plan: Plan
    _ray: Any
    _artifact: Artifact
    _manifest: str
    _n: int
    _threads_per: list[int]
    _bundles: list[dict[str, float]]
    _stage_source: str
    _pg: Any
    _actors: list[Any]
    _cv: threading.Condition
    _pending: collections.deque[Request]
    _inflight: dict[int, Request]
    _epoch: int
    _seq: int
    _paused: bool
    _closed: bool
    _broken: CorepipeError | None
    _replayed: int
    _stage_timeout: float
    _start_timeout: float
    _max_deaths: int
    _death_window: float
    _driver_ip: str

    def _init_recovery(self) -> None:
        self._actor_class: Any = None
        self._where: list[dict[str, Any]] = [{} for _ in range(self._n)]
        self._restarts = [0] * self._n
        self._deaths: list[collections.deque[float]] = [collections.deque() for _ in range(self._n)]
        self._shipped: dict[int, Any] = {}  # stage -> ObjectRef of its bytes, put once
        self._last_ping: dict[int, dict[str, Any]] = {}
        self._answered = [time.monotonic()] * self._n
        self._outstanding: dict[int, tuple[Any, float]] = {}
        self._clock: dict[str, collections.deque[tuple[float, float]]] = {}

    def _send(self, req: Request) -> None:
        raise NotImplementedError

    def _finish(self, req: Request, result: Any, error: BaseException | None) -> None:
        raise NotImplementedError

    # -- start-up ----------------------------------------------------------------------------
    def _new_actor(self, k: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self._actor_class is None:
            self._actor_class = self._ray.remote(concurrency_groups=GROUPS)(StageActor)
        bundle = self._bundles[k]
        custom = {name: v for name, v in bundle.items() if name not in ("CPU", "memory")}
        options: dict[str, Any] = {
            "num_cpus": bundle["CPU"], "max_restarts": 0, "max_task_retries": 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self._pg, placement_group_bundle_index=k),
        }
        if "memory" in bundle:
            options["memory"] = bundle["memory"]
        if custom:
            options["resources"] = custom
        plan = self.plan
        return self._actor_class.options(**options).remote(
            k, self._n, [t.to_dict() for t in plan.boundaries[k]],
            [t.to_dict() for t in plan.boundaries[k + 1]], self._threads_per[k],
        )

    def _load_stages(self, stages: list[int]) -> None:
        """Wait for the actors of ``stages`` to start, check they run this corepipe, load each
        stage once (shipping its bytes where the directory cannot be seen).

        Raises:
            StageError: an actor did not start or could not load its stage (``_Unplaceable``
                when its bundle has no node to go to).
        """
        ray = self._ray
        deadline = time.monotonic() + self._start_timeout
        refs = {k: self._actors[k].describe.remote(str(self.path.resolve()), self._manifest) for k in stages}
        infos = {k: self._get(k, ref, deadline, "start") for k, ref in refs.items()}
        loads = {}
        for k, info in infos.items():
            if info["version"] != _driver_version:
                raise CorepipeError(
                    f"stage {k}'s actor on {info['ip']} imports corepipe {info['version']} from "
                    f"{info['module']!r}, the driver corepipe {_driver_version}: install the same "
                    "corepipe on every node (or pass it in runtime_env)"
                )
            self._where[k] = {key: info[key] for key in ("node_id", "ip", "pid", "module")}
            ship = self._stage_source == "ship" or (self._stage_source == "auto" and not info["sees_artifact"])
            if self._stage_source == "path" and not info["sees_artifact"]:
                raise StageError(
                    f"stage {k}'s actor on {info['ip']} cannot see the artifact at {str(self.path)!r}: "
                    "share the directory with every node, or use stage_source='auto' or 'ship'", stage=k,
                )
            self._where[k]["source"] = "ship" if ship else "path"
            if ship and k not in self._shipped:
                self._shipped[k] = ray.put(stage_payload(self._artifact, k))
            loads[k] = self._actors[k].load.remote(
                None if ship else str(self.path.resolve()), self._manifest, self._shipped[k] if ship else None)
        for k, ref in loads.items():
            self._get(k, ref, deadline, "load its stage")

    def _get(self, k: int, ref: Any, deadline: float, what: str) -> Any:
        ray = self._ray
        while True:
            if self._closed:
                raise PipelineClosedError("the pipeline closed while a stage actor was starting")
            left = deadline - time.monotonic()
            ready, _ = ray.wait([ref], timeout=max(0.0, min(0.5, left)))
            if ready:
                break
            if left <= 0:
                state = self._placement_state()
                if state not in ("CREATED", "unknown"):
                    raise _Unplaceable(
                        f"stage {k}'s actor could not be placed within {self._start_timeout:.0f} s: "
                        f"its placement group is {state} (a node died and no live node has "
                        f"{self._bundles[k]}); add a node or resources", stage=k,
                    )
                raise StageError(f"stage {k}'s actor did not {what} within {self._start_timeout:.0f} s",
                                 stage=k)
        try:
            return ray.get(ref)
        except Exception as exc:  # the actor died starting, or load raised
            cause = getattr(exc, "cause", None) or exc
            text = " ".join(str(cause).split())[:2000]
            raise StageError(f"stage {k}'s actor failed to {what}: {type(cause).__name__}: {text}",
                             stage=k) from None

    def _placement_state(self) -> str:
        from ray.util import placement_group_table

        try:
            return str(placement_group_table(self._pg).get("state", "unknown"))
        except Exception:
            return "unknown"

    def _wire(self, epoch: int) -> None:
        """Start ``epoch`` on every actor, each told where its results go."""
        refs = [a.reset.remote(epoch, self._actors[k + 1] if k + 1 < self._n else None)
                for k, a in enumerate(self._actors)]
        deadline = time.monotonic() + max(self._stage_timeout, 5.0)
        for k, ref in enumerate(refs):
            self._get(k, ref, deadline, "start its epoch")

    def _kill_actors(self, actors: list[Any]) -> None:
        """Kill ``actors`` and wait (a few seconds at most) until Ray reports each one dead."""
        ray = self._ray
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already dead, or the cluster is gone
                pass
        deadline = time.monotonic() + 5
        for a in actors:
            while time.monotonic() < deadline:
                try:
                    ray.get(a.ping.remote(), timeout=max(0.01, deadline - time.monotonic()))
                except Exception as exc:  # ActorDiedError: gone, as wanted
                    if not isinstance(exc, ray.exceptions.GetTimeoutError):
                        break
                time.sleep(0.02)

    # -- monitoring --------------------------------------------------------------------------
    def _monitor_loop(self) -> None:
        while not self._closed:
            started = time.monotonic()
            try:
                dead, hung = self._health()
            except Exception:  # the cluster connection is gone; close() will say so
                time.sleep(_PING_S)
                continue
            if (dead or hung) and not self._closed and self._broken is None:
                try:
                    self._recover(dead, hung)
                except PipelineClosedError:
                    return
                except Exception as exc:  # recovery itself failed: give up cleanly
                    self._break(StageError(f"recovery failed: {exc}", stage=(dead + hung)[0]))
            # One round of pings per period: the actors answer in a millisecond, and polling
            # faster would only take CPU from the stages.
            time.sleep(max(0.0, _PING_S - (time.monotonic() - started)))

    def _health(self) -> tuple[list[int], list[int]]:
        """Ping every actor (one ping outstanding each); return the dead ones and the stuck ones."""
        ray = self._ray
        actors = list(self._actors)
        now = time.monotonic()
        for k, a in enumerate(actors):
            if k not in self._outstanding:
                self._outstanding[k] = (a.ping.remote(), time.time())
        refs = {ref: k for k, (ref, _) in self._outstanding.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_PING_S)
        dead, hung = [], []
        for ref in ready:
            k = refs[ref]
            _, sent = self._outstanding.pop(k)
            try:
                info = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                continue  # unreachable for now: counts as silence until it answers
            except Exception:  # ActorDiedError: the actor or its node is gone
                dead.append(k)
                continue
            self._answered[k] = now
            self._last_ping[k] = info
            self._clock_sample(k, sent, time.time(), info["now"])
            if info["busy_since"] > 0 and info["now"] - info["busy_since"] > self._stage_timeout:
                hung.append(k)
        for k in range(len(actors)):
            if k not in dead and k not in hung and now - self._answered[k] > max(self._stage_timeout, 1.0):
                hung.append(k)
        return dead, hung

    def _fresh_pings(self) -> dict[int, Mapping[str, Any]]:
        """Every actor's counters now (the monitor's latest for one that does not answer)."""
        ray = self._ray
        out: dict[int, Mapping[str, Any]] = dict(self._last_ping)
        refs = {a.ping.remote(): k for k, a in enumerate(self._actors)}
        try:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=2.0)
            for ref in ready:
                try:
                    out[refs[ref]] = ray.get(ref)
                except Exception:  # dead: keep what it last said
                    pass
        except Exception:
            pass
        return out

    def _clock_sample(self, k: int, sent: float, received: float, remote: float) -> None:
        ip = self._where[k].get("ip")
        if not ip or ip == self._driver_ip:
            return
        window = self._clock.setdefault(ip, collections.deque(maxlen=64))
        window.append((received - sent, remote - (sent + received) / 2))

    def _offset(self, k: int) -> float:
        """Seconds stage ``k``'s clock runs ahead of the driver's (0 on the driver's host)."""
        if k < 0:
            return 0.0
        window = self._clock.get(self._where[k].get("ip", ""))
        return min(window)[1] if window else 0.0

    # -- recovery ----------------------------------------------------------------------------
    def _recover(self, dead: list[int], hung: list[int]) -> None:
        ray = self._ray
        with self._cv:
            self._paused = True
            self._epoch += 1
            epoch = self._epoch
        suspects = {k: int(p["current"]) for k in dead + hung
                    if (p := self._last_ping.get(k)) and p["busy_since"] > 0}
        restart = set(dead) | set(hung)
        resets = {k: a.reset.remote(epoch, None) for k, a in enumerate(self._actors) if k not in restart}
        deadline = time.monotonic() + max(self._stage_timeout, 1.0)
        for k, ref in resets.items():
            try:
                ray.get(ref, timeout=max(0.01, deadline - time.monotonic()))
            except Exception:  # dead too, or stuck: replace it as well
                restart.add(k)
        self._kill_actors([self._actors[k] for k in sorted(restart)])
        for k in sorted(restart):
            if self._record_death(k, "died"):
                return
        poisoned = []
        with self._cv:
            for k, rid in suspects.items():
                req = self._inflight.get(rid)
                if req is None:
                    continue
                req.deaths += 1
                if req.deaths >= 2:  # the request itself kills the actor: fail it, keep the rest
                    del self._inflight[rid]
                    poisoned.append((k, req))
        for k, req in poisoned:
            self._finish(req, None, StageError(
                f"stage {k} actor died twice while running request {req.rid}; "
                "the request is dropped so the others can go on", stage=k, request_id=req.rid,
            ))
        for k in sorted(restart):
            self._outstanding.pop(k, None)
            self._last_ping.pop(k, None)
            while True:
                self._actors[k] = self._new_actor(k)
                self._restarts[k] += 1
                try:
                    self._load_stages([k])
                    break
                except _Unplaceable as exc:
                    self._kill_actors([self._actors[k]])
                    self._break(exc)
                    return
                except StageError as exc:
                    self._kill_actors([self._actors[k]])
                    if self._record_death(k, f"failed to restart ({exc})"):
                        return
            self._answered[k] = time.monotonic()
        self._wire(epoch)
        with self._cv:
            replay = sorted(self._inflight.values(), key=lambda r: r.rid)
            self._replayed += len(replay)
            self._inflight.clear()
            self._pending.extendleft(reversed(replay))
            self._seq = 0
            self._paused = False
            while self._pending and not self._paused:
                self._send(self._pending.popleft())
            self._cv.notify_all()

    def _record_death(self, k: int, what: str) -> bool:
        """Count a death of stage ``k``'s actor; past the limit, break the pipeline (True)."""
        deaths = self._deaths[k]
        now = time.monotonic()
        deaths.append(now)
        while deaths and deaths[0] < now - self._death_window:
            deaths.popleft()
        if len(deaths) < self._max_deaths:
            return False
        self._break(StageError(
            f"stage {k} actor {what}: {len(deaths)} deaths within {self._death_window:.0f} s; "
            "giving up on the pipeline's requests", stage=k,
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
