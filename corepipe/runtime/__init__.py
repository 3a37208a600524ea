"""Runtime: run a compiled artifact as a pipeline. Backends: ``local`` (default), ``inline``."""

from __future__ import annotations

import os
from typing import Any

from ..artifact.manifest import open_artifact
from ..errors import CorepipeError
from .base import Pipeline, PipelineStats, StageStats
from .timeline import Recovery, RequestTrace, Timeline, Wait

__all__ = [
    "load", "Pipeline", "PipelineStats", "StageStats", "Timeline", "RequestTrace", "Recovery", "Wait",
    "BACKENDS",
]

BACKENDS = ("local", "inline")


def load(path: str | os.PathLike[str], *, backend: str = "local", **options: Any) -> Pipeline:
    """Verify the artifact at ``path`` and start a pipeline on it.

    Args:
        path: artifact directory written by `corepipe.compile`.
        backend: ``"local"`` (one pinned worker process per stage, shared-memory hand-off) or
            ``"inline"`` (all stages in this process, one after another; tests and debugging).
        **options: backend options. ``local``: ``max_in_flight``, ``cores`` (list of core ids to
            pin to, default: this process's affinity), ``threads_per_stage``, ``stage_timeout``,
            ``slots``, ``start_timeout``, ``max_deaths``, ``death_window``, ``restart``
            (``"give-up"`` or ``"backoff"``), ``backoff_s``, ``backoff_max_s``.
            ``inline``: ``threads``.

    Raises:
        ArtifactError: the artifact is missing, malformed or fails verification; nothing ran.

    Example:
        >>> with corepipe.load("bert_compiled/") as pipe:   # doctest: +SKIP
        ...     out = pipe.run({"input_ids": ids, "attention_mask": mask})
    """
    artifact = open_artifact(path)
    if backend == "inline":
        from .inline import InlinePipeline

        return InlinePipeline(artifact, **options)
    if backend == "local":
        from .local import LocalPipeline

        return LocalPipeline(artifact, **options)
    raise CorepipeError(f"unknown backend {backend!r}: use one of {list(BACKENDS)}")
