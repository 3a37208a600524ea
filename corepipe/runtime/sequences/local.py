"""The ``local`` decoder backend: one pinned worker process per stage, each keeping its layers'
KV, steps handed over through shared-memory rings.

It is `LocalPipeline` (workers, rings, doorbells, supervision and recovery) with step messages in
the rings (`rings.ring_specs`): the *feeder* writes the scheduler's next message into the first
ring, the *collector* reads tokens from the last and hands them to the scheduler. These two
threads are the decoder's own (a step's next message depends on the last one's tokens, so no
caller's thread waits on a ring); `LocalPipeline`'s service thread still watches the workers,
but reaps nothing here. When a worker
dies, the supervisor's recovery runs as for any plan (new epoch, rings reset, the stage started
again); then, instead of replaying requests, every live sequence's next step becomes a prefill of
all its tokens so far (`Scheduler.replay`), which rebuilds every stage's KV; generation goes on.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ...artifact.manifest import Artifact
from ...artifact.plan import TensorSpec
from ..bell import wait_any
from ..local import LocalPipeline
from ..shm import EMPTY, ERROR, decode_error
from .header import TOKENS
from .pipeline import SupervisedDecoder
from .rings import HEADER, ring_specs

__all__ = ["LocalDecoder"]


class LocalDecoder(SupervisedDecoder, LocalPipeline):
    """A decoder artifact on one process per stage (see `DecoderPipeline.generate`; the options
    are `LocalPipeline`'s; ``slots`` defaults to ``2 * stages + 2``)."""

    def __init__(self, artifact: Artifact, **options: Any) -> None:
        self._init_sequences(artifact.plan)
        self._specs = ring_specs(artifact.plan)
        options.setdefault("slots", 2 * artifact.plan.num_cores + 2)
        options.pop("max_in_flight", None)
        super().__init__(artifact, max_in_flight=self.decoder.max_sequences, **options)
        mine = [threading.Thread(target=self._feed_loop, name="corepipe-feeder", daemon=True),
                threading.Thread(target=self._collect_loop, name="corepipe-collector", daemon=True)]
        self._threads += mine
        for t in mine:
            t.start()

    def _first_ring_slots(self, slots: int) -> int:
        return slots  # the scheduler keeps what a recovery replays, not the first ring

    def _service_reap(self) -> int:
        return 0  # the collector thread reads the last ring (its messages are steps, not results)

    def _ring_specs(self, b: int) -> tuple[TensorSpec, ...]:
        return self._specs[b]

    def _worker_extra(self, k: int) -> dict[str, Any]:
        return {"decoder": True}

    def _check_generating(self) -> None:
        self._check_open()

    # -- feeder / collector ------------------------------------------------------------------
    def _unpaused(self) -> bool:
        """Wait while a recovery holds the rings; False once the pipeline is closed."""
        with self._cv:
            while self._paused and not self._closed:
                self._cv.wait(0.2)
            return not self._closed

    def _feed_loop(self) -> None:
        ring, free = self._rings[0], self._free[0]
        while self._unpaused():
            msg = self._scheduler.take(0.1)
            if msg is None:
                continue
            head, ids, generation = msg
            while True:  # a free slot (or a recovery, whose replay queued these sequences again)
                with self._cv:
                    if self._closed or self._paused or generation != self._scheduler.generation:
                        break
                    epoch = self._epoch
                    s = self._feed_seq % ring.slots
                    if ring.state(s) == EMPTY:
                        ring.write(s, {HEADER: head, self.decoder.input_ids: ids})
                        ring.publish(s, epoch=epoch, seq=self._feed_seq, request_id=int(head[0, 0]))
                        self._feed_seq += 1
                        self._full[0].ring()
                        break
                wait_any([free], 0.05)

    def _collect_loop(self) -> None:
        ring, full = self._rings[-1], self._full[-1]
        while self._unpaused():
            with self._cv:
                epoch, seq = self._epoch, self._collect_seq
            s = seq % ring.slots
            if not ring.ready(s, epoch):
                wait_any([full], 0.05)
                continue
            views = ring.read(s)
            head = np.array(views[HEADER], copy=True)
            tokens = np.array(views[TOKENS], copy=True)
            error = decode_error(ring.error(s), int(head[0, 0])) if ring.status(s) == ERROR else None
            with self._cv:
                if self._paused or epoch != self._epoch:
                    continue  # a recovery began: its replay rebuilds these sequences
                ring.free(s)
                self._collect_seq += 1
            self._free[-1].ring()
            if error is not None:
                self._failed += 1
                self._scheduler.fail(head, error)
            else:
                self._completed += 1
                self._scheduler.deliver(head, tokens)

    # -- recovery and end --------------------------------------------------------------------
    def _requeue_inflight(self) -> None:
        """(The supervisor's last step of a recovery, with ``_cv`` held.) Every step in flight
        was lost with the rings: each live sequence prefills all its tokens again."""
        self._down = None
        self._replayed += self._scheduler.replay()
