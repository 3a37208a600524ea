"""Runtime: run a compiled artifact as a pipeline. Backends: ``local`` (default), ``inline``;
replicas of either behind one client (`corepipe.runtime.replicas`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..artifact.manifest import Artifact, open_artifact
from ..errors import CorepipeError
from .base import Pipeline, PipelineStats, StageStats
from .placement import Placement, choose, place
from .timeline import Recovery, RequestTrace, Timeline, Wait

__all__ = [
    "load", "Pipeline", "PipelineStats", "StageStats", "Timeline", "RequestTrace", "Recovery", "Wait",
    "BACKENDS", "Placement", "place",
]

BACKENDS = ("local", "inline")


def load(
    path: str | os.PathLike[str],
    *,
    backend: str = "local",
    replicas: int | None = None,
    threads_per_stage: int | None = None,
    cores: int | Sequence[int] | None = None,
    **options: Any,
) -> Pipeline:
    """Verify the artifact at ``path`` and start a pipeline on it.

    The deployment is R replicas x S stages x T threads per stage, R x S x T <= the cores given.
    What is not given comes from the artifact's deployment (written by `corepipe tune`), else
    one replica whose stages share the cores evenly.

    Args:
        path: artifact directory written by `corepipe.compile` or `corepipe tune`.
        backend: ``"local"`` (one pinned worker process per stage, shared-memory hand-off) or
            ``"inline"`` (all stages in this process, one after another; tests and debugging).
        replicas: R, copies of the pipeline, each on its own S x T cores; requests go to the
            least busy replica and results still come back in submission order.
        threads_per_stage: T, cores (and inference threads) per stage.
        cores: the cores to use: a count K (the first K this process may run on) or a list of
            core ids (default: all this process may run on). ``inline`` pins nothing: there
            ``cores`` only bounds R x S x T when given.
        **options: backend options. ``local``: ``max_in_flight``, ``stage_timeout``, ``slots``,
            ``start_timeout``, ``max_deaths``, ``death_window``, ``restart`` (``"give-up"`` or
            ``"backoff"``), ``backoff_s``, ``backoff_max_s``. ``inline``: ``max_in_flight``.
            With replicas, ``max_in_flight`` counts across all of them.

    Raises:
        ArtifactError: the artifact is missing, malformed or fails verification; nothing ran.
        DeploymentError: R x S x T exceeds the cores given; the message lists what fits.

    Example:
        >>> with corepipe.load("bert_compiled/", replicas=2, threads_per_stage=2) as pipe:  # doctest: +SKIP
        ...     out = pipe.run({"input_ids": ids, "attention_mask": mask})
    """
    if backend not in BACKENDS:
        raise CorepipeError(f"unknown backend {backend!r}: use one of {list(BACKENDS)}")
    artifact = open_artifact(path)
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


def _replicated(artifact: Artifact, start: Callable[[int], Pipeline], count: int,
                max_in_flight: int | None) -> Pipeline:
    from .replicas import ReplicatedPipeline, start_replicas

    return ReplicatedPipeline(artifact.root, artifact.plan, start_replicas(start, count),
                              max_in_flight=max_in_flight)
