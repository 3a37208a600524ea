"""The ``inline`` decoder backend: every stage in this process, driven by one thread.

Same stages, store, batching, sampling and API as ``local``, without processes: for tests and
for following a step in a debugger. The driver thread takes the scheduler's next message, runs it
through the stages one after another, and hands the tokens back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from ...artifact.manifest import Artifact
from ...engines.runner import load_engine
from ...errors import PipelineClosedError, StageError
from ..base import Pipeline, PipelineStats, StageStats
from .header import TOKENS
from .pipeline import DecoderPipeline
from .stage import DecoderStage

__all__ = ["InlineDecoder", "load_stages"]


def load_stages(artifact: Artifact, threads: int = 1, indices: Sequence[int] | None = None) -> list[DecoderStage]:
    """The decoder stages of ``artifact``, each on its planned engine."""
    plan = artifact.plan
    spec = plan.decoder
    assert spec is not None
    n = plan.num_cores
    return [DecoderStage(load_engine(artifact, k, threads=threads), spec, spec.pairs_of(k), last=k == n - 1)
            for k in (range(n) if indices is None else indices)]


class InlineDecoder(DecoderPipeline, Pipeline):
    """A decoder artifact's stages in this process (see `DecoderPipeline.generate`)."""

    backend = "inline"

    def __init__(self, artifact: Artifact, *, threads: int = 1) -> None:
        Pipeline.__init__(self, artifact.root, artifact.plan, artifact.plan.decoder.max_sequences)  # type: ignore[union-attr]
        self._init_sequences(artifact.plan)
        self._stages = load_stages(artifact, threads)
        self._completed = self._failed = 0
        self._closed = False
        self._thread = threading.Thread(target=self._drive, name="corepipe-decoder", daemon=True)
        self._thread.start()

    def _drive(self) -> None:
        while not self._closed:
            msg = self._scheduler.take(0.1)
            if msg is None:
                continue
            head, ids, _ = msg
            tensors = {self.decoder.input_ids: ids}
            t0 = time.monotonic()
            try:
                for k, stage in enumerate(self._stages):
                    try:
                        tensors = stage.step(head, tensors)
                    except Exception as exc:
                        raise StageError(f"stage {k} failed on a step of sequences {head[:, 0].tolist()}: "
                                         f"{type(exc).__name__}: {exc}", stage=k) from None
            except StageError as exc:
                self._failed += 1
                self._scheduler.fail(head, exc)
                continue
            self._completed += 1
            self._latencies.add(time.monotonic() - t0)
            self._scheduler.deliver(head, tensors[TOKENS])

    def _check_generating(self) -> None:
        if self._closed:
            raise PipelineClosedError("the pipeline is closed; load the artifact again to generate more")

    def stats(self) -> PipelineStats:
        elapsed = time.perf_counter() - self._started
        stages = [StageStats.measured(k, os.getpid(), "caller", s.counters.calls, s.counters.busy_s, elapsed)
                  for k, s in enumerate(self._stages)]
        return self._summary(elapsed, stages, in_flight=self._scheduler.counts()["live"])

    def close(self, *, timeout: float | None = 30.0) -> None:
        """Let live sequences finish (up to ``timeout`` s), end the rest, stop the driver."""
        if self._closed:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._scheduler.busy() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        self._closed = True
        self._scheduler.close(PipelineClosedError("the pipeline closed before this sequence finished"))
        self._thread.join(timeout=5)
        self._stages = []
