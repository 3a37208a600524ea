"""One stage of a decoder: a step's header and boundary tensors in, the next boundary's out.

The stage builds its engine's feeds from the header alone: the attention mask (right-padded past,
then the new tokens) and position ids, and the past of each of its state pairs gathered from its
`KVStore`. After the engine runs it writes the new positions of each present back to the store and
passes the hidden state on; the last stage samples a token per row instead (`sampling.sample`).
A step of several rows is one engine call (continuous batching), whatever each row's past length.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...engines.base import Engine
from .header import NEW, PAST, ROW, TOKENS, sampling_of
from .sampling import sample
from .store import KVStore

__all__ = ["DecoderStage", "StageCounters"]


class StageCounters:
    """What a stage counted: engine calls, rows run, busy seconds, and the seconds spent copying
    the past out of the store and the new positions back (`gather_s`, `scatter_s`)."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0
        self.busy_s = 0.0
        self.gather_s = 0.0
        self.scatter_s = 0.0
        #: steps whose past was the previous step's presents (no gather)
        self.kept = 0


class _Kept:
    """A step's padded batch kept for the next: its rows, their past lengths after it, its mask
    and its presents. The next step of the same rows, each one step on, feeds the presents as its
    past and the mask extended by its new tokens, instead of gathering from the store: a row's new
    positions then sit after the longest past, and the mask's zeros hide the gap before them
    (attention reads a key by the mask, not by where it lies; positions come from ``position_ids``)."""

    def __init__(self, rows: np.ndarray, past: np.ndarray, mask: np.ndarray, presents: dict[str, np.ndarray]) -> None:
        self.rows, self.past, self.mask, self.presents = rows, past, mask, presents
        self.rowset = set(rows.tolist())

    def follows(self, rows: np.ndarray, past: np.ndarray) -> bool:
        return bool(np.array_equal(rows, self.rows) and np.array_equal(past, self.past))


class DecoderStage:
    """Stage ``index`` of a decoder plan on ``engine``.

    Args:
        engine: the stage graph loaded (`corepipe.engines`), its inputs and outputs named.
        spec: the plan's `DecoderSpec` (names of input_ids, logits, mask, positions; sizes).
        pairs: the state pairs this stage owns (``spec.pairs_of(index)``).
        last: whether this stage writes the logits (and so samples).
    """

    def __init__(self, engine: Engine, spec: Any, pairs: Sequence[Any], *, last: bool) -> None:
        self.engine = engine
        self.spec = spec
        self.pairs = tuple(pairs)
        self.last = last
        self.store = KVStore(self.pairs, spec.max_sequences, spec.max_length)
        self.counters = StageCounters()
        self._by_past = {p.past: p for p in self.pairs}
        self._by_present = {p.present: p for p in self.pairs}
        special = {spec.input_ids, spec.attention_mask, spec.position_ids, spec.logits} - {None}
        #: boundary tensors this stage reads (input_ids for stage 0, else the hidden state)
        self.reads = [n for n in engine.inputs if n not in self._by_past and n not in special - {spec.input_ids}]
        #: boundary tensors this stage writes (the hidden state; ``tokens`` for the last stage)
        self.writes = [TOKENS] if last else [n for n in engine.outputs if n not in self._by_present and n != spec.logits]
        self._logits = engine.outputs.index(spec.logits) if last else -1
        #: per set of rows (in order), its last step's padded batch: with S stages, S groups of
        #: sequences take turns, so a stage sees each group every S-th step
        self._kept: dict[bytes, _Kept] = {}
        #: whether the engine's outputs stay ours after its next run (else the kept presents are copied)
        self._owned = engine.name == "onnxruntime"

    def step(self, head: np.ndarray, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one step of ``len(head)`` rows (all with the same n). Returns the next boundary's
        tensors for those rows."""
        start = time.perf_counter()
        rows, past = head[:, ROW], head[:, PAST]
        n = int(head[0, NEW])
        pmax = int(past.max())
        b = len(head)
        spec = self.spec
        feeds: dict[str, np.ndarray] = {name: tensors[name] for name in self.reads}
        t0 = time.perf_counter()
        key = rows.tobytes()
        kept = self._kept.pop(key, None)
        if kept is not None and kept.follows(rows, past):  # same rows, each one step on: no gather
            mask = np.concatenate([kept.mask, np.ones((b, n), dtype=np.int64)], axis=1)
            feeds.update(kept.presents)
            self.counters.kept += 1
        else:
            mask = np.zeros((b, pmax + n), dtype=np.int64)
            mask[:, pmax:] = 1
            mask[:, :pmax] = np.arange(pmax)[None, :] < past[:, None]
            for pair in self.pairs:
                feeds[pair.past] = self.store.gather(pair, rows, past, pmax)
        plen = mask.shape[1] - n  # the past's length as fed (new tokens at [plen, plen + n))
        if spec.attention_mask is not None and spec.attention_mask in self.engine.inputs:
            feeds[spec.attention_mask] = mask
        if spec.position_ids is not None and spec.position_ids in self.engine.inputs:
            feeds[spec.position_ids] = past[:, None] + np.arange(n, dtype=np.int64)[None, :]
        t1 = time.perf_counter()
        values = self.engine.run_shared(feeds)  # views until this engine's next step: read below, now
        t2 = time.perf_counter()
        out: dict[str, np.ndarray] = {}
        presents: dict[str, np.ndarray] = {}
        for name, value in zip(self.engine.outputs, values):
            pair = self._by_present.get(name)
            if pair is not None:
                self.store.scatter(pair, rows, past, value, plen, n)
                presents[pair.past] = value if self._owned else np.array(value)
            elif name in self.writes:
                out[name] = value
        # Whatever was kept for any of these rows is stale now (they moved on): dropped, so the
        # kept batches hold at most one padded past per row.
        mine = set(rows.tolist())
        for other in [k for k, v in self._kept.items() if v.rowset & mine]:
            del self._kept[other]
        if self.pairs and plen + n < self.spec.max_length:
            self._kept[key] = _Kept(rows.copy(), past + n, mask, presents)
        t3 = time.perf_counter()
        if self.last:
            logits = values[self._logits]
            last_pos = logits[:, -1, :] if logits.ndim == 3 else logits
            positions = (past + n).tolist()
            out[TOKENS] = np.array([sample(last_pos[i], sampling_of(head[i]), positions[i]) for i in range(b)],
                                   dtype=np.int64)
        c = self.counters
        c.calls += 1
        c.rows += b
        c.gather_s += t1 - t0
        c.scatter_s += t3 - t2
        c.busy_s += time.perf_counter() - start
        return out
