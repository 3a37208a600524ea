"""Starting a decoder artifact on a backend (what `corepipe.load` does for a decoder plan)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

from ...artifact.manifest import Artifact
from ...errors import DeploymentError
from ..base import Pipeline
from ..placement import choose, place

__all__ = ["load_decoder"]


def load_decoder(artifact: Artifact, backend: str, replicas: int | None, threads_per_stage: int | None,
                 cores: int | Sequence[int] | None, max_batch: int | None, options: dict[str, Any]) -> Pipeline:
    """A decoder pipeline: ``inline``, ``local`` or ``ray``. ``replicas`` > 1: a
    `ReplicatedDecoder`, each sequence kept on one replica. Batching is the stages'
    own (continuous batching of decode steps), so ``max_batch`` does not apply."""
    if max_batch is not None and max_batch > 1:
        raise DeploymentError("max_batch does not apply to a decoder artifact: each stage batches the decode "
                              "steps waiting for it (continuous batching); leave max_batch out")
    plan = artifact.plan
    r = replicas or 1
    if backend == "ray":
        if cores is not None:
            raise DeploymentError(f"cores={cores!r} pins stages to this host's core ids, but the ray backend "
                                  "lets Ray place each stage: leave cores out, pass threads_per_stage=")
        from ..ray.cluster import import_ray

        import_ray()  # a clear error when Ray is missing
        from ..ray.decoder import RayDecoder

        if threads_per_stage is not None:
            options["threads_per_stage"] = threads_per_stage
        if r > 1:  # a private instance must offer every replica's CPUs (the first replica starts it)
            per = options.get("threads_per_stage", 1)
            cpus = r * (per * plan.num_cores if isinstance(per, int) else sum(per))
            options.setdefault("num_cpus", max(os.cpu_count() or 1, cpus))
        return _replicated(artifact, [functools.partial(RayDecoder, artifact, **options) for _ in range(r)])
    if backend == "inline":
        from .inline import InlineDecoder

        _, t, _ = choose(plan, 1, threads_per_stage)
        options.pop("max_in_flight", None)
        threads = t or options.pop("threads", None) or 1
        return _replicated(artifact, [lambda: InlineDecoder(artifact, threads=threads) for _ in range(r)])
    from .local import LocalDecoder

    placement = place(plan, replicas=r, threads_per_stage=threads_per_stage, cores=cores)
    return _replicated(artifact, [
        functools.partial(LocalDecoder, artifact, cores=list(group), threads_per_stage=placement.threads_per_stage,
                          **options) for group in placement.groups])


def _replicated(artifact: Artifact, starts: Sequence[Callable[[], Pipeline]]) -> Pipeline:
    """One pipeline, or a `ReplicatedDecoder` of several (started one after another)."""
    if len(starts) == 1:
        return starts[0]()
    from ..replicas import start_replicas
    from .replicas import ReplicatedDecoder

    return ReplicatedDecoder(artifact.root, artifact.plan, start_replicas(lambda i: starts[i](), len(starts)))
