"""The ``ray`` backend for decoder artifacts: `RayPipeline` (one actor per stage, the stream data
path or the object store, the monitor, recovery and the restart policy) carrying step messages.

Each stage's actor is a `DecoderActor`: it keeps its layers' KV store, builds each step's mask
and positions from the step header, and the last one samples. A message is one step of the
shared `Scheduler` (`corepipe.runtime.sequences.scheduler`): the header words and ``input_ids``
into stage 0, the header and the hidden state between stages (raw frames, nothing pickled), the
header and one token id per row back to the driver. The *feeder* thread hands the scheduler's
next message to stage 0; results go back to the scheduler from the stream's reader (or the
collector). When an actor or its node dies, recovery runs as for any plan (new epoch, new actor,
new connections); then, instead of resending the steps in flight, every live sequence's next step
becomes a prefill of all its tokens so far (`Scheduler.replay`), which rebuilds each stage's KV.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from ...artifact.manifest import Artifact
from ...artifact.plan import TensorSpec
from ..sequences.header import TOKENS
from ..sequences.pipeline import SupervisedDecoder
from ..sequences.rings import HEADER, frame_specs
from .decoder_actor import DecoderActor
from .pipeline import RayPipeline, _Request

__all__ = ["RayDecoder"]


class RayDecoder(SupervisedDecoder, RayPipeline):
    """A decoder artifact on one Ray actor per stage (see `DecoderPipeline.generate`; the options
    are `RayPipeline`'s; ``max_in_flight`` reports ``max_sequences``, the sequences generating at
    once; the step messages in flight are one per stage)."""

    def __init__(self, artifact: Artifact, **options: Any) -> None:
        self._init_sequences(artifact.plan)
        self._frames = frame_specs(artifact.plan)
        options.pop("max_in_flight", None)
        super().__init__(artifact, max_in_flight=self.decoder.max_sequences, **options)
        # One step message in flight per stage, as the scheduler's groups (a step takes at most
        # live / stages sequences) assume, not one per sequence: unbounded, every token's sequence
        # went out at once as its own one-row step and the stages never batched (1.1 rows a step
        # at 8 sequences against local's 2.6, half its tokens/s); bounded, the sequences that become
        # ready meanwhile go out together (2.6 rows a step; 5.2 at 16, local's 5.1).
        self._admit = threading.BoundedSemaphore(min(self.max_in_flight, artifact.plan.num_cores))
        feeder = threading.Thread(target=self._feed_loop, name="corepipe-ray-feeder", daemon=True)
        self._threads.append(feeder)
        feeder.start()

    def _boundary(self, b: int) -> Sequence[TensorSpec]:
        return self._frames[b]

    def _actor_type(self) -> type:
        return DecoderActor

    def _check_generating(self) -> None:
        self._check_open()

    # -- feeder / results ----------------------------------------------------------------------
    def _feed_loop(self) -> None:
        while not self._closed:
            msg = self._scheduler.take(0.1)
            if msg is None:
                continue
            head, ids, generation = msg
            while not self._admit.acquire(timeout=0.1):
                if self._closed:
                    return
            with self._cv:
                while self._paused and not self._closed and self._broken is None:
                    self._cv.wait(0.1)
                if self._closed or self._broken is not None or generation != self._scheduler.generation:
                    self._admit.release()  # a replay queued these sequences again (or we end)
                    continue
                fut: Future[dict[str, np.ndarray]] = Future()
                fut.set_running_or_notify_cancel()
                fut.add_done_callback(functools.partial(self._stepped, head))
                self._send(_Request(next(self._ids), {}, fut, time.monotonic(), inputs=[head, ids]))

    def _result(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {HEADER: np.array(arrays[0], copy=True), TOKENS: np.array(arrays[-1], copy=True)}

    def _stepped(self, head: np.ndarray, fut: Future[dict[str, np.ndarray]]) -> None:
        error = fut.exception()
        if error is None:
            out = fut.result()
            self._scheduler.deliver(out[HEADER], out[TOKENS])
        else:
            self._scheduler.fail(head, error)

    # -- recovery and end ----------------------------------------------------------------------
    def _requeue_inflight(self) -> None:
        """(Recovery's last step, with ``_cv`` held.) The steps in flight were lost with the old
        epoch: their places are freed and each live sequence prefills all its tokens again."""
        self._down = None
        for _ in self._inflight:
            self._admit.release()
        self._inflight.clear()
        self._replayed += self._scheduler.replay()
