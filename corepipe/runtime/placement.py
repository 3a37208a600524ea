"""Where a pipeline runs: R replicas x S stages x T threads per stage on the cores given.

`place` turns `load`'s arguments and the artifact's deployment into core groups, one per
replica, and refuses a deployment the cores cannot hold with an error that lists what fits.
Explicit arguments win over the artifact's deployment; with neither, one replica whose stages
share the cores evenly (the behaviour before deployments existed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..artifact.plan import Plan
from ..errors import DeploymentError

__all__ = ["Placement", "place", "choose", "resolve_cores", "possible_deployments"]


@dataclass(frozen=True)
class Placement:
    """The resolved deployment: ``groups[r]`` are replica ``r``'s cores (S x T of them, or all
    cores given when ``threads_per_stage`` is ``None``: stages share them evenly)."""

    replicas: int
    threads_per_stage: int | None
    groups: tuple[tuple[int, ...], ...]
    source: str  # "arguments", "artifact" or "default"
    max_in_flight: int | None = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def resolve_cores(cores: int | Sequence[int] | None) -> list[int]:
    """Core ids from ``cores``: ``None`` (every core this process may run on), a count K (the
    first K of those), or a list of core ids (each among those).

    Raises:
        DeploymentError: more cores than this process may use, or a core id outside them.
    """
    try:
        avail = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, number the cores
        avail = list(range(os.cpu_count() or 1))
    if cores is None:
        return avail
    if isinstance(cores, bool):
        raise DeploymentError(f"cores must be a count or a list of core ids, got {cores!r}")
    if isinstance(cores, int):
        if cores < 1 or cores > len(avail):
            raise DeploymentError(
                f"cores={cores} asks for {_plural(cores, 'core')} but this process may run on "
                f"{len(avail)}: {avail}; pass a count from 1 to {len(avail)}, or a list of core ids"
            )
        return avail[:cores]
    ids = list(cores)
    if not ids or any(isinstance(c, bool) or not isinstance(c, int) for c in ids) or len(set(ids)) != len(ids):
        raise DeploymentError(f"cores must be distinct core ids (ints), got {ids!r}")
    outside = [c for c in ids if c not in avail]
    if outside:
        raise DeploymentError(
            f"cores {outside} are not among the cores this process may run on ({avail}); "
            "choose from those"
        )
    return ids


def possible_deployments(stages: int, cores: int) -> list[tuple[int, int]]:
    """Every ``(replicas, largest threads_per_stage)`` with R x S x T <= cores, fewest replicas first."""
    out = []
    for r in range(1, cores // stages + 1):
        out.append((r, cores // (stages * r)))
    return out


def _what_fits(stages: int, cores: int) -> str:
    if stages > cores:
        return (
            f"the plan's {_plural(stages, 'stage')} alone need {_plural(stages, 'core')}: load it "
            "with replicas=1 and no threads_per_stage (its stages then share the cores), or "
            f"compile it for at most {_plural(cores, 'stage')}"
        )
    pairs = possible_deployments(stages, cores)
    listed = "; ".join(
        f"replicas={r}, threads_per_stage={'1' if t == 1 else f'1..{t}'}" for r, t in pairs
    )
    return f"on {_plural(cores, 'core')} with {_plural(stages, 'stage')}, these fit: {listed}"


def choose(plan: Plan, replicas: int | None, threads_per_stage: int | None) -> tuple[int, int | None, str]:
    """(R, T, where they came from): the arguments given, else the artifact's deployment, else
    one replica and ``None`` threads (an even share). Raises `DeploymentError` on a bad value."""
    for name, value in (("replicas", replicas), ("threads_per_stage", threads_per_stage)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DeploymentError(f"{name} must be a positive integer, got {value!r}")
    dep = plan.deployment
    source = "arguments" if replicas is not None or threads_per_stage is not None else "default"
    r = replicas if replicas is not None else (dep.replicas if dep else 1)
    t = threads_per_stage if threads_per_stage is not None else (dep.threads_per_stage if dep else None)
    if dep is not None and (replicas is None or threads_per_stage is None):
        source = "artifact" if source == "default" else "arguments and artifact"
    return r, t, source


def place(
    plan: Plan,
    *,
    replicas: int | None = None,
    threads_per_stage: int | None = None,
    cores: int | Sequence[int] | None = None,
) -> Placement:
    """Resolve and check a deployment of ``plan`` on ``cores``.

    Args:
        plan: the artifact's plan (its ``deployment``, if any, fills in what is not given).
        replicas: R, copies of the pipeline (default: the artifact's, else 1).
        threads_per_stage: T, cores per stage (default: the artifact's, else an even share).
        cores: core count or ids (default: every core this process may run on).

    Returns:
        A `Placement`: R groups of S x T consecutive cores.

    Raises:
        DeploymentError: R x S x T exceeds the cores given, or R / T is not a positive int. The
            message lists the (replicas, threads_per_stage) pairs that fit.
    """
    r, t, source = choose(plan, replicas, threads_per_stage)
    avail = resolve_cores(cores)
    dep = plan.deployment
    s, k = plan.num_cores, len(avail)
    in_flight = dep.max_in_flight if dep is not None and source == "artifact" else None
    if r == 1 and t is None:
        return Placement(1, None, (tuple(avail),), source, in_flight)
    if t is None:
        t = max(1, k // (r * s))
    need = r * s * t
    if need > k:
        origin = ""
        if source != "arguments" and dep is not None:
            # name exactly what came from the artifact: a user who gave replicas= did not give T
            taken = [f"{n}={v}" for n, v, given in (("replicas", r, replicas), ("threads_per_stage", t, threads_per_stage))
                     if given is None]
            what = "the artifact's deployment" if len(taken) == 2 else f"{taken[0]} from the artifact's deployment"
            origin = (f" ({what}, chosen{' for ' + dep.objective if dep.objective else ''} "
                      f"on {_plural(dep.cores, 'core')}; pass {' and '.join(x.split('=')[0] + '=' for x in taken)} "
                      "to override it)")
        fits = _what_fits(s, k)
        raise DeploymentError(
            f"{_plural(r, 'replica')} x {_plural(s, 'stage')} x {_plural(t, 'thread')} per stage "
            f"need {_plural(need, 'core')}, but {_plural(k, 'core')} {'is' if k == 1 else 'are'} "
            f"given ({avail}){origin}; {fits}",
            possible=fits,
        )
    per = s * t
    groups = tuple(tuple(avail[i * per:(i + 1) * per]) for i in range(r))
    return Placement(r, t, groups, source, in_flight)
