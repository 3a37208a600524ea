"""The Ray side of the ``ray`` backend that is not the data path: connecting to a cluster (or
starting a private one on the loopback), one placement-group bundle per stage, and checking up
front that the bundles can be placed at all.

Connections this module opens are counted: the last pipeline to close disconnects (and, for a
private instance, stops it). A connection the user opened with ``ray.init`` stays theirs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import CorepipeError

__all__ = ["STRATEGIES", "import_ray", "connect", "disconnect", "private_node_lost", "kill_local_actors", "bundles_for", "check_feasible",
           "create_placement", "corepipe_root", "placement_shortfall", "relaxed", "describe_nodes"]

STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")

_lock = threading.Lock()
_opened = {"count": 0, "owned": False}


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise CorepipeError(
            "the 'ray' backend needs Ray: pip install 'corepipe[ray]' (on every node of the cluster)"
        ) from None
    return ray


def corepipe_root() -> str:
    """The directory holding the ``corepipe`` package this process imports."""
    return str(Path(__file__).resolve().parents[3])


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a private instance starts: Ray's "no cluster" mode, in which it binds and announces
    127.0.0.1 only (its servers otherwise listen on every interface). Ray reads the switch from
    the environment when imported, so the processes it starts inherit the variable, and this
    process's copy of the constant is set for the duration."""
    name = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env = os.environ.get(name)
    os.environ[name] = "0"
    constants: Any = None
    try:
        from ray._private import ray_constants as constants
    except ImportError:  # a Ray without it: the environment variable alone must do
        pass
    old_const = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None and old_const is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if constants is not None and old_const is not None:
            constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env


def connect(address: str | None, *, num_cpus: int, runtime_env: Mapping[str, Any] | None) -> None:
    """Make sure this process is connected to Ray.

    ``None`` starts a private single-node instance bound to 127.0.0.1 whose workers import this
    very corepipe (its root goes first on their ``PYTHONPATH``); ``"auto"`` or ``"ray://host:port"``
    (or ``host:port``) joins a running cluster, whose nodes must have corepipe installed (or get it
    through ``runtime_env``). Already connected (the user called ``ray.init``): that connection
    is used as it is.

    Raises:
        CorepipeError: Ray is missing, or the cluster cannot be reached.
    """
    ray = import_ray()
    with _lock:
        if _opened["count"] == 0 and ray.is_initialized():
            return  # the user's own connection: never ours to close
        if _opened["count"] > 0:
            _opened["count"] += 1
            return
        env = dict(runtime_env or {})
        # Ray's own notices (start-up, token set-up) stay in its logs; errors reach the user.
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                                  "namespace": "corepipe"}
        if address is None:
            env_vars = dict(env.get("env_vars", {}))
            old = env_vars.get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")
            env_vars["PYTHONPATH"] = corepipe_root() + (os.pathsep + old if old else "")
            env["env_vars"] = env_vars
            kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False,
                          _node_ip_address="127.0.0.1")
        else:
            kwargs["address"] = address
        try:
            with _loopback_only() if address is None else contextlib.nullcontext():
                ray.init(runtime_env=env or None, **kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError from ray.init
            where = "start a local Ray instance" if address is None else f"connect to Ray at {address!r}"
            raise CorepipeError(
                f"could not {where}: {type(exc).__name__}: {exc}"
                + ("" if address is None else "; is the cluster up (`ray start --head`)?")
            ) from None
        _opened["count"] = 1
        _opened["owned"] = True


def disconnect() -> None:
    """Release one connection opened by `connect`; the last one disconnects from Ray."""
    with _lock:
        if _opened["count"] == 0:
            return
        _opened["count"] -= 1
        if _opened["count"] == 0 and _opened["owned"]:
            _opened["owned"] = False
            import ray

            ray.shutdown()


def private_node_lost() -> bool:
    """Whether the private instance this process started has lost its GCS or raylet.

    A SIGTERM sent to this process's whole process group (``timeout``, ``kill -- -PGID``, a
    service manager stopping its unit) reaches Ray's daemons too: they block SIGINT, not SIGTERM.
    Every Ray call then waits for the GCS until Ray ends this process (about 60 s, exit status 1).
    """
    with _lock:
        if not _opened["owned"]:
            return False
    try:
        from ray._private import worker

        node = worker._global_node
        return node is not None and any(kind in ("gcs_server", "raylet") for kind, _ in node.dead_processes())
    except Exception:  # a Ray without these internals: assume the node lives (the old behaviour)
        return False


def kill_local_actors(pids: Sequence[int | None]) -> None:
    """SIGKILL the actor processes ``pids`` on this host that are still Ray workers (their title
    starts ``ray::``; a pid reused by another process is left alone): a private instance's actors
    once its raylet, which would have ended them, is gone."""
    import psutil

    for pid in pids:
        if not pid:
            continue
        try:
            proc = psutil.Process(pid)
            if " ".join(proc.cmdline()).startswith("ray::"):
                proc.kill()
        except psutil.Error:
            pass


def bundles_for(threads: Sequence[int], memory: Sequence[int],
                extra: Sequence[Mapping[str, float]] | None) -> list[dict[str, float]]:
    """One bundle per stage: its threads as CPUs, its resident bytes as Ray ``memory`` (0: none),
    plus the caller's custom resources for that stage."""
    if extra is not None and len(extra) != len(threads):
        raise CorepipeError(
            f"stage_resources has {len(extra)} entries for {len(threads)} stages: give one dict per stage"
        )
    out = []
    for k, (cpus, mem) in enumerate(zip(threads, memory)):
        bundle: dict[str, float] = {"CPU": float(cpus)}
        if mem > 0:
            bundle["memory"] = float(mem)
        for name, amount in (extra[k] if extra is not None else {}).items():
            if not isinstance(name, str) or not isinstance(amount, (int, float)) or amount <= 0:
                raise CorepipeError(f"stage_resources[{k}]: {name!r}: {amount!r} is not a positive amount")
            bundle[name] = float(amount)
        out.append(bundle)
    return out


def _fits(bundle: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(name, 0.0) + 1e-9 >= amount for name, amount in bundle.items())


def _describe(bundle: Mapping[str, float]) -> str:
    return "{" + ", ".join(
        f"{k}: {v / 2**20:.1f} MiB" if k == "memory" else f"{k}: {v:g}" for k, v in bundle.items()
    ) + "}"


def check_feasible(bundles: Sequence[Mapping[str, float]], strategy: str,
                   nodes: Sequence[Mapping[str, float]]) -> None:
    """Refuse at once a placement no cluster state could satisfy (by the nodes' total resources).

    Raises:
        CorepipeError: naming the bundle that fits no node, or the nodes a strict strategy lacks.
    """
    if strategy not in STRATEGIES:
        raise CorepipeError(f"placement_strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    for k, bundle in enumerate(bundles):
        if not any(_fits(bundle, node) for node in nodes):
            raise CorepipeError(
                f"stage {k} needs {_describe(bundle)} and no node of the cluster's {len(nodes)} has "
                "that much; lower threads_per_stage, compile into more stages (core_memory), or "
                "add larger nodes"
            )
    usable = [node for node in nodes if any(_fits(bundle, node) for bundle in bundles)]
    if strategy == "STRICT_SPREAD" and len(bundles) > len(usable):
        raise CorepipeError(
            f"STRICT_SPREAD puts each of the {len(bundles)} stages on its own node and the "
            f"cluster has {len(usable)} nodes that can hold a stage; add nodes or use SPREAD or PACK"
        )
    if strategy == "STRICT_PACK":
        total: dict[str, float] = {}
        for bundle in bundles:
            for name, amount in bundle.items():
                total[name] = total.get(name, 0.0) + amount
        if not any(_fits(total, node) for node in nodes):
            raise CorepipeError(
                f"STRICT_PACK puts all {len(bundles)} stages on one node, which would need "
                f"{_describe(total)}; no node has that much: use PACK or SPREAD"
            )


def _assignable(bundles: Sequence[Mapping[str, float]], strategy: str,
                nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether every bundle can be given a node at once, each node's resources holding all the
    bundles it gets (STRICT_SPREAD: one bundle per node): an exact search, largest bundles first,
    small enough for a pipeline's stages and a cluster's nodes."""
    order = sorted(range(len(bundles)), key=lambda k: -bundles[k].get("CPU", 0.0))
    free = [dict(node) for node in nodes]
    used = [False] * len(free)
    budget = [100_000]  # steps: past it, say it fits (the placement group's own wait decides)

    def place(i: int) -> bool:
        budget[0] -= 1
        if i == len(order) or budget[0] < 0:
            return True
        bundle = bundles[order[i]]
        for j, have in enumerate(free):
            if (strategy == "STRICT_SPREAD" and used[j]) or not _fits(bundle, have):
                continue
            for name, amount in bundle.items():
                have[name] = have.get(name, 0.0) - amount
            was, used[j] = used[j], True
            ok = place(i + 1)
            for name, amount in bundle.items():
                have[name] += amount
            used[j] = was
            if ok:
                return True
        return False

    return place(0)


def placement_shortfall(bundles: Sequence[Mapping[str, float]], strategy: str,
                        nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why no placement of ``bundles`` with ``strategy`` fits ``nodes`` (their total resources:
    the nodes reachable now), or None when one does."""
    try:
        check_feasible(bundles, strategy, nodes)
    except CorepipeError as exc:
        return str(exc)
    if not _assignable(bundles, strategy, nodes):
        return (f"{strategy} cannot place the {len(bundles)} stages ({', '.join(_describe(b) for b in bundles)}) "
                f"on the {len(nodes)} nodes at once: together they need more than those nodes hold")
    return None


def relaxed(strategy: str) -> str:
    """The strategy a strict one relaxes to (STRICT_SPREAD: SPREAD, STRICT_PACK: PACK)."""
    return {"STRICT_SPREAD": "SPREAD", "STRICT_PACK": "PACK"}.get(strategy, strategy)


def describe_nodes(nodes: Sequence[Mapping[str, Any]]) -> str:
    """Ray's node records (``ray.nodes()``) as ``ip (CPU n)``, for messages."""
    return ", ".join(f"{n.get('NodeManagerAddress', '?')} (CPU {n.get('Resources', {}).get('CPU', 0):g})"
                     for n in nodes) or "none"


def create_placement(bundles: list[dict[str, float]], strategy: str, timeout: float) -> Any:
    """A ready placement group for ``bundles``; removed again if it cannot be placed in time.

    Raises:
        CorepipeError: infeasible by the nodes' totals (at once), or not placed within ``timeout``.
    """
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    check_feasible(bundles, strategy, nodes)
    pg = placement_group(bundles, strategy=strategy)
    if not pg.wait(timeout_seconds=max(1, int(timeout))):
        remove_placement_group(pg)
        raise CorepipeError(
            f"could not place {len(bundles)} stages ({strategy}) within {timeout:.0f} s: the "
            f"cluster's free resources do not hold {[_describe(b) for b in bundles]} right now "
            "(other work holds them?); free them, add nodes, or raise start_timeout"
        )
    return pg
