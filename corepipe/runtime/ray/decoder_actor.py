"""A decoder stage's Ray actor: `StageActor` (the same data paths, epochs, checks and control
calls) whose stage is a `corepipe.runtime.sequences.stage.DecoderStage`: it keeps its layers' KV
store in the actor, builds each step's mask and positions from the step header, and the last
stage samples, so a message is ``[step_header, input_ids | hidden state | tokens]`` and the KV
never leaves the actor. After a recovery the driver replays every live sequence's tokens as a
prefill, which rewrites the KV rows of a new actor (and of the surviving ones).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import CorepipeError
from ..sequences.rings import HEADER
from ..sequences.stage import DecoderStage
from .actor import StageActor

__all__ = ["DecoderActor", "StepRunner"]


class StepRunner:
    """A `DecoderStage` behind the runner interface the actor's compute loop calls: the
    message's header and boundary tensors in, the header and the next boundary's tensors out.

    The outputs are copied: the stage hands on views of its engine's memory (valid until its
    next step), and the stream's sender thread may still be sending them when that step runs."""

    def __init__(self, stage: DecoderStage) -> None:
        self.stage = stage

    def run(self, feeds: Mapping[str, np.ndarray], request_id: int | None = None) -> dict[str, np.ndarray]:
        head = feeds[HEADER]
        out = self.stage.step(head, feeds)
        return {HEADER: head, **{name: np.array(value, copy=True) for name, value in out.items()}}


def decoder_stage(artifact: Any, index: int, threads: int, last: bool) -> StepRunner:
    """Stage ``index`` of a decoder ``artifact`` on its planned engine, with an empty KV store."""
    from ...engines.runner import load_engine

    spec = artifact.plan.decoder
    if spec is None:
        raise CorepipeError(f"stage {index}: the artifact is not a decoder (its plan has no decoder record)")
    engine = load_engine(artifact, index, threads=threads, spin=False)
    return StepRunner(DecoderStage(engine, spec, spec.pairs_of(index), last=last))


class DecoderActor(StageActor):
    """Stage ``index`` of a decoder: see `StageActor`; `load` loads a `DecoderStage`."""

    def load(self, path: str | None, manifest: str, payload: dict[str, bytes] | None) -> float:
        """Load the stage once (as `StageActor.load`) with its empty KV store. Returns seconds."""
        from ...artifact.transfer import open_stage, receive_stage

        start = time.perf_counter()
        if payload is not None:
            with tempfile.TemporaryDirectory(prefix=f"corepipe-ray-stage{self.index}-") as tmp:
                artifact = receive_stage(payload, self.index, tmp, manifest)
                del payload
                self._runner = decoder_stage(artifact, self.index, self._threads, self.last)
        else:
            artifact = open_stage(str(path), self.index, manifest)
            self._runner = decoder_stage(artifact, self.index, self._threads, self.last)
        return time.perf_counter() - start
