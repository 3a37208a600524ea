"""Replicas of a decoder: R pipelines of the same decoder artifact behind one `generate`.

A sequence's KV lives in the stages of the one replica that prefilled it, so a sequence never
moves: `generate` picks a replica for a new sequence (the one with the fewest sequences live or
waiting, round-robin among equals) and the whole sequence, every decode step and any replay after
a worker's death, runs there, through that replica's own scheduler and stores. The others go on
undisturbed when a worker of one dies.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact.plan import Plan
from ..replicas import ReplicatedPipeline
from .pipeline import DecoderPipeline
from .stream import TokenStream

__all__ = ["ReplicatedDecoder"]


class ReplicatedDecoder(ReplicatedPipeline):
    """R decoder pipelines (`DecoderPipeline`s of any backend) as one; see `ReplicatedPipeline`."""

    def __init__(self, path: Path, plan: Plan, replicas: Sequence[Any]) -> None:
        super().__init__(path, plan, replicas)
        assert plan.decoder is not None
        self.decoder = plan.decoder
        self._decoders: list[Any] = list(replicas)  # DecoderPipelines (`_replicas`, typed as such)
        self._home: weakref.WeakKeyDictionary[TokenStream, int] = weakref.WeakKeyDictionary()

    def generate(self, prompt_ids: Sequence[int] | np.ndarray, **kwargs: Any) -> TokenStream:
        """`DecoderPipeline.generate` on the replica with the fewest sequences live or waiting;
        the sequence stays on that replica to its end (`replica_of` says which)."""
        self._check_open()
        with self._lock:
            r = len(self._decoders)
            loads = [self._load(p) for p in self._decoders]
            home = min(range(r), key=lambda i: (loads[i], (i - self._next) % r))
            self._next = (home + 1) % r
            stream = self._decoders[home].generate(prompt_ids, **kwargs)  # returns at once
            self._home[stream] = home
        return stream

    def replica_of(self, stream: TokenStream) -> int:
        """The replica whose stages hold ``stream``'s sequence."""
        return self._home[stream]

    def sequences(self) -> dict[str, int]:
        """`DecoderPipeline.sequences`, summed over the replicas (each: ``replica(r).sequences()``)."""
        total: dict[str, int] = {}
        for p in self._decoders:
            for key, value in p.sequences().items():
                total[key] = total.get(key, 0) + value
        return total

    @staticmethod
    def _load(pipe: Any) -> int:
        counts = pipe.sequences()
        return int(counts["live"] + counts["waiting"])

    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[dict[str, np.ndarray]]:
        return DecoderPipeline._submit(self, feeds, timeout=timeout)  # type: ignore[arg-type]
