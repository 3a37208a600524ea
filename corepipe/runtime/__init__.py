"""Runtime: run a compiled artifact as a pipeline. Backends: ``local`` (default), ``inline``,
``ray``; replicas of any of them behind one client (`corepipe.runtime.replicas`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..artifact.manifest import Artifact, open_artifact
from ..errors import CorepipeError, DeploymentError
from .base import BoundaryStats, Pipeline, PipelineStats, StageStats
from .placement import Placement, choose, place
from .timeline import Recovery, RequestTrace, Timeline, Wait

__all__ = [
    "load", "Pipeline", "PipelineStats", "StageStats", "BoundaryStats", "Timeline", "RequestTrace",
    "Recovery", "Wait", "BACKENDS", "Placement", "place",
]

BACKENDS = ("local", "inline", "ray")


def load(
    path: str | os.PathLike[str],
    *,
    backend: str = "local",
    replicas: int | None = None,
    threads_per_stage: int | None = None,
    cores: int | Sequence[int] | None = None,
    max_batch: int | None = None,
    batch_delay: float | str = 0.0,
    **options: Any,
) -> Pipeline:
    """Verify the artifact at ``path`` and start a pipeline on it.

    The deployment is R replicas x S stages x T threads per stage, R x S x T <= the cores given.
    What is not given comes from the artifact's deployment (written by `corepipe tune`), else
    one replica whose stages share the cores evenly.

    Args:
        path: artifact directory written by `corepipe.compile` or `corepipe tune`.
        backend: ``"local"`` (one pinned worker process per stage, shared-memory hand-off),
            ``"inline"`` (all stages in this process, one after another; tests and debugging) or
            ``"ray"`` (one Ray actor per stage and replica, on one machine or a cluster).
        replicas: R, copies of the pipeline, each on its own S x T cores; requests go to the
            least busy replica and results still come back in submission order.
        threads_per_stage: T, cores (and inference threads) per stage; on ``ray`` the CPUs each
            stage's bundle reserves (default 1).
        max_batch: dynamic batching (`corepipe.runtime.batcher`): merge up to this many rows of
            waiting requests that agree in shape (or bucket) into one request along the model's
            dynamic batch dim, and split the answers back. ``None`` or 1: no merging.
        batch_delay: how long the oldest waiting request may wait for others to join it:
            seconds, or a string such as ``"500us"`` or ``"2ms"`` (default 0: merge only what
            is already waiting).
        cores: the cores to use: a count K (the first K this process may run on) or a list of
            core ids (default: all this process may run on). ``inline`` pins nothing: there
            ``cores`` only bounds R x S x T when given. ``ray`` refuses it: Ray places each
            stage on a node's CPUs (declare them with ``ray start --num-cpus``).
        **options: backend options. ``local``: ``max_in_flight``, ``stage_timeout``, ``slots``,
            ``start_timeout``, ``max_deaths``, ``death_window``, ``restart`` (``"give-up"`` or
            ``"backoff"``), ``backoff_s``, ``backoff_max_s``. ``inline``: ``max_in_flight``.
            ``ray``: ``address`` (``None`` starts a private local instance, ``"auto"``,
            ``"ray://host:port"``), ``placement_strategy`` (PACK, SPREAD, STRICT_SPREAD,
            STRICT_PACK), ``stage_resources``, ``stage_source``, and the ``local`` ones that apply
            (see `corepipe.runtime.ray.RayPipeline`). With replicas, ``max_in_flight`` counts
            across all of them. ``stage_batch`` (``local`` only): each stage's worker runs the
            requests queued in its incoming ring as one engine call of up to this many rows
            (``True``: the batch dim's max), for a plan with a dynamic batch dim
            (`corepipe.runtime.stagebatch`); off by default.

    A decoder artifact (a plan with ``decoder``: state pairs kept in their stages) starts a
    decoder pipeline on ``local`` or ``inline``, one replica: run it with
    ``pipe.generate(prompt_ids, max_new_tokens=...)`` (`corepipe.runtime.sequences`).

    Raises:
        ArtifactError: the artifact is missing, malformed or fails verification; nothing ran.
        DeploymentError: R x S x T exceeds the cores given (the message lists what fits),
            ``cores`` given to the ``ray`` backend, or ``max_batch`` > 1 (or ``stage_batch``) for
            an artifact without a dynamic batch dim (or past its max); ``stage_batch`` on a
            backend other than ``local``.

    Example:
        >>> with corepipe.load("bert_compiled/", replicas=2, threads_per_stage=2) as pipe:  # doctest: +SKIP
        ...     out = pipe.run({"input_ids": ids, "attention_mask": mask})
    """
    if backend not in BACKENDS:
        raise CorepipeError(f"unknown backend {backend!r}: use one of {list(BACKENDS)}")
    artifact = open_artifact(path)
    rows = _stage_batch(artifact, backend, options.pop("stage_batch", None))
    if rows:
        options["stage_batch"] = rows  # the local backend's workers take it
    if artifact.plan.decoder is not None:
        from .sequences.load import load_decoder

        return load_decoder(artifact, backend, replicas, threads_per_stage, cores, max_batch, options)
    if max_batch is not None and max_batch > 1:
        from .batcher import batched

        return batched(lambda: load(path, backend=backend, replicas=replicas, threads_per_stage=threads_per_stage,
                                    cores=cores, **options), artifact.plan, max_batch, batch_delay)
    plan = artifact.plan
    if backend == "inline":
        from .inline import InlinePipeline

        if cores is not None:  # inline pins nothing; given cores still bound R x S x T
            placement = place(plan, replicas=replicas, threads_per_stage=threads_per_stage, cores=cores)
            r, t = placement.replicas, placement.threads_per_stage
        else:
            r, t, _ = choose(plan, replicas, threads_per_stage)
        legacy = options.pop("threads", None)  # the inline backend's older name for T
        t = t or legacy or 1
        in_flight = options.pop("max_in_flight", None)
        if r == 1:
            return InlinePipeline(artifact, threads=t, max_in_flight=in_flight or 1, **options)

        def start_inline(index: int) -> Pipeline:
            return InlinePipeline(artifact, threads=t, **options)

        return _replicated(artifact, start_inline, r, in_flight)
    if backend == "ray":
        return _load_ray(artifact, replicas, threads_per_stage, cores, options)
    from .local import LocalPipeline

    placement = place(plan, replicas=replicas, threads_per_stage=threads_per_stage, cores=cores)
    in_flight = options.pop("max_in_flight", None) or placement.max_in_flight
    if placement.replicas == 1:
        return LocalPipeline(artifact, cores=list(placement.groups[0]),
                             threads_per_stage=placement.threads_per_stage, max_in_flight=in_flight, **options)

    def start_local(index: int) -> Pipeline:
        return LocalPipeline(artifact, cores=list(placement.groups[index]),
                             threads_per_stage=placement.threads_per_stage, **options)

    return _replicated(artifact, start_local, placement.replicas, in_flight)


def _stage_batch(artifact: Artifact, backend: str, stage_batch: Any) -> int:
    """Rows per stage batch (0: off), refused where it cannot run: see
    `corepipe.runtime.stagebatch.stage_batch_rows`."""
    from .stagebatch import stage_batch_rows

    rows = stage_batch_rows(artifact.plan, stage_batch)
    if rows and backend != "local":
        raise DeploymentError(
            f"stage_batch={stage_batch!r} batches inside the local backend's stage workers; the {backend} "
            "backend runs one request per stage call: use backend='local', or max_batch= (dynamic batching "
            "before the pipeline, on every backend)")
    return rows


def _replicated(artifact: Artifact, start: Callable[[int], Pipeline], count: int,
                max_in_flight: int | None) -> Pipeline:
    from .replicas import ReplicatedPipeline, start_replicas

    return ReplicatedPipeline(artifact.root, artifact.plan, start_replicas(start, count),
                              max_in_flight=max_in_flight)


def _load_ray(artifact: Artifact, replicas: int | None, threads_per_stage: int | Sequence[int] | None,
              cores: int | Sequence[int] | None, options: dict[str, Any]) -> Pipeline:
    """R replicas of S Ray actors (one placement group each), sharing one Ray connection."""
    from .ray import RayPipeline

    if cores is not None:
        raise DeploymentError(
            f"cores={cores!r} pins stages to this host's core ids, but the ray backend lets Ray place "
            "each stage on a node's CPUs: leave cores out, pass threads_per_stage= (CPUs per stage) "
            "and replicas=, and declare each node's CPUs with `ray start --num-cpus`"
        )
    if isinstance(threads_per_stage, (list, tuple)):  # one per stage: the ray backend checks it
        r, t, source = choose(artifact.plan, replicas, None)
        t, options["threads_per_stage"] = None, list(threads_per_stage)
    else:
        r, t, source = choose(artifact.plan, replicas, threads_per_stage)  # type: ignore[arg-type]
    dep = artifact.plan.deployment
    in_flight = options.pop("max_in_flight", None)
    if in_flight is None and dep is not None and source == "artifact":
        in_flight = dep.max_in_flight
    if t is not None:
        options["threads_per_stage"] = t
    if r == 1:
        return RayPipeline(artifact, max_in_flight=in_flight, **options)
    # A private instance must offer every replica's CPUs (the first replica starts it).
    per = options.get("threads_per_stage", 1)
    per_replica = per * artifact.plan.num_cores if isinstance(per, int) else sum(per)
    options.setdefault("num_cpus", max(os.cpu_count() or 1, r * per_replica))

    def start_ray(index: int) -> Pipeline:
        return RayPipeline(artifact, **options)

    return _replicated(artifact, start_ray, r, in_flight)
