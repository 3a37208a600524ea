"""Starting the ``ray`` backend's stage actors: one in its placement-group bundle, checked to
import this corepipe, its stage loaded once (from the shared artifact directory, or from bytes the
driver puts into the object store once and the actor verifies on arrival), and told where its
results go; for the stream data path, the client's own ends. Also killing the actors, and waiting
until Ray reports them dead; and, at close, releasing them and their placement group even when a
private instance's daemons died first (a SIGTERM to the whole process group).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..._version import __version__ as _driver_version
from ...artifact.manifest import Artifact
from ...artifact.plan import Plan, TensorSpec
from ...artifact.transfer import stage_payload
from ...errors import CorepipeError, PipelineClosedError, StageError
from .actor import GROUPS, StageActor
from .cluster import kill_local_actors, private_node_lost
from .framing import Framing
from .stream import ClockProbe, Inlet, Outlet

__all__ = ["StageActors", "Unplaceable"]


class Unplaceable(StageError):
    """A stage's bundle has no node to go to: waiting longer will not help."""


class StageActors:
    """Mixin for `RayPipeline`: creating, loading, wiring and killing the stage actors."""

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
    _closed: bool
    _stage_timeout: float
    _start_timeout: float
    _actor_class: Any
    _where: list[dict[str, Any]]
    _shipped: dict[int, Any]
    _token: bytes | None
    _data_path: str
    _inlet: Inlet | None
    _outlet: Outlet | None
    _clock_probe: ClockProbe | None
    _driver_ip: str

    def _take_results(self, frame: Any) -> None:
        raise NotImplementedError

    def _placement_problem(self) -> str | None:
        """Why no node reachable now can hold the plan (`corepipe.runtime.ray.recovery`)."""
        return None

    def _boundary(self, b: int) -> Sequence[TensorSpec]:
        """What boundary ``b`` carries per message (a decoder's steps carry other tensors)."""
        return self.plan.boundaries[b]

    def _actor_type(self) -> type:
        """The class of the stage actors (a decoder's keep its KV)."""
        return StageActor

    def _open_stream(self, data_path: str, unframable: bool) -> None:
        """Choose the data path; for the stream, the client's two ends: the outlet to stage 0 and
        the inlet the last stage sends results to."""
        client = False
        try:
            client = bool(self._ray.util.client.ray.is_connected())
        except Exception:  # a Ray without the client: not one
            pass
        if data_path == "stream" and client:
            raise CorepipeError("data_path='stream' needs the driver on a node of the cluster; a Ray "
                                "Client (ray://) driver is not: use data_path='object-store' or 'auto'")
        stream = not (data_path == "object-store" or unframable or client)
        self._data_path = "stream" if stream else "object-store"
        self._token = secrets.token_bytes(16) if stream else None
        if self._token is not None:
            n = self._n
            self._inlet = Inlet(self._driver_ip, self._token, Framing(self._boundary(n), n, n),
                                self._take_results, "corepipe-ray-client")
            self._outlet = Outlet(self._token, 0, "corepipe-ray-client")
            self._clock_probe = ClockProbe(self._token)

    def _close_stream(self) -> None:
        self._data_path = "object-store"
        for end in (self._inlet, self._outlet, self._clock_probe):
            if end is not None:
                end.close()

    def _new_actor(self, k: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self._actor_class is None:
            self._actor_class = self._ray.remote(concurrency_groups=GROUPS)(self._actor_type())
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
        return self._actor_class.options(**options).remote(
            k, self._n, [t.to_dict() for t in self._boundary(k)],
            [t.to_dict() for t in self._boundary(k + 1)], self._threads_per[k], self._token,
        )

    def _load_stages(self, stages: list[int]) -> None:
        """Wait for the actors of ``stages`` to start, check they run this corepipe, load each
        stage once (shipping its bytes where the directory cannot be seen).

        Raises:
            StageError: an actor did not start or could not load its stage (``Unplaceable``
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
            self._where[k] = {key: info[key] for key in ("node_id", "ip", "pid", "module", "inlet")}
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
        looked = time.monotonic()
        while True:
            if self._closed:
                raise PipelineClosedError("the pipeline closed while a stage actor was starting")
            left = deadline - time.monotonic()
            ready, _ = ray.wait([ref], timeout=max(0.0, min(0.5, left)))
            if ready:
                break
            if what == "start" and time.monotonic() - looked > 2.0:  # a node lost while it waits
                looked = time.monotonic()
                if (why := self._placement_problem()) is not None:
                    raise Unplaceable(f"stage {k}'s actor cannot be placed: {why}", stage=k)
            if left <= 0:
                state = self._placement_state()
                if state not in ("CREATED", "unknown"):
                    raise Unplaceable(
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

    def _wire(self, epoch: int) -> list[tuple[int, str]]:
        """Start ``epoch`` on every actor, each told where its results go. On the stream, each
        connects to its downstream end now; returns the boundaries that could not be reached,
        as ``(boundary, why)`` (the boundary into stage ``b``; ``n``: the results' way back)."""
        stream = self._data_path == "stream"
        if stream and self._inlet is not None:
            self._inlet.reset(epoch)
            ends = [self._where[k + 1].get("inlet") for k in range(self._n - 1)] + [list(self._inlet.address)]
        else:
            ends = [self._actors[k + 1] if k + 1 < self._n else None for k in range(self._n)]
        refs = [a.reset.remote(epoch, ends[k], stream) for k, a in enumerate(self._actors)]
        deadline = time.monotonic() + max(self._stage_timeout, 5.0)
        lost = []
        for k, ref in enumerate(refs):
            why = self._get(k, ref, deadline, "start its epoch")
            if why:
                lost.append((k + 1, f"stage {k} cannot reach its downstream end: {why}"))
        if stream and self._outlet is not None:
            self._outlet.reset(epoch, tuple(self._where[0]["inlet"]))
            if why := self._outlet.connect(5.0):
                lost.insert(0, (0, f"the client cannot reach stage 0: {why}"))
        return lost

    def _release(self) -> None:
        """(At close.) Kill the actors and remove the placement group. Where this process's
        private instance loses its raylet meanwhile (a SIGTERM to the whole process group reaches
        Ray's daemons: `private_node_lost`), those Ray calls would wait for it until Ray ends this
        process (~60 s, exit status 1): the actors, this host's processes, are killed by pid and
        the calls left behind on their thread."""
        done = threading.Event()

        def release() -> None:
            try:
                self._kill_actors(self._actors)
                if self._pg is not None:
                    from ray.util.placement_group import remove_placement_group

                    try:
                        remove_placement_group(self._pg)
                    except Exception:  # the cluster is gone already
                        pass
            finally:
                done.set()

        threading.Thread(target=release, name="corepipe-ray-release", daemon=True).start()
        while not done.wait(0.1):
            if private_node_lost():
                kill_local_actors([w.get("pid") for w in self._where])
                return

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
