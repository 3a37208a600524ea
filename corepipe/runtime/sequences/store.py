"""The KV store a decoder stage keeps: one preallocated, bounded array per state pair, a row per
sequence, and the client's book of which rows are taken.

A stage's store has, for each of its state pairs, an array shaped like the pair's tensor with the
batch axis sized ``max_sequences`` (one row per live sequence) and the length axis sized
``max_length``. The arrays are allocated once, zero-filled lazily by the OS (pages a sequence never
reaches are never touched), and never grow.

Batched steps read the past right-padded (the contract in ``DECODER_CONTRACT.md``): row ``i`` of a
step's past holds its sequence's first ``P_i`` positions and whatever lies beyond (masked out by
the attention mask), and its new tokens' keys and values, at ``[Pmax, Pmax + n)`` of the present
the graph writes, go back to the store at ``[P_i, P_i + n)``.

Which row a sequence has is decided by the client (`RowBook`) and carried in each step's header,
so every stage keeps a sequence's state in the same row and a freed row needs no message: a row
is free when the client says so, and the next sequence that takes it overwrites it from position 0.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["KVStore", "RowBook"]


class KVStore:
    """The state of one stage's pairs for ``max_sequences`` sequences of up to ``max_length``.

    ``pairs``: the stage's `StatePair` records (past/present names, batch and length axes, dtype,
    per-token shape).
    """

    def __init__(self, pairs: Sequence[Any], max_sequences: int, max_length: int) -> None:
        self.pairs = tuple(pairs)
        self.max_sequences = int(max_sequences)
        self.max_length = int(max_length)
        self.arrays: dict[str, np.ndarray] = {}
        for pair in self.pairs:
            self.arrays[pair.past] = np.zeros(self._shape(pair), dtype=np.dtype(pair.dtype))

    def _shape(self, pair: Any) -> tuple[int, ...]:
        dims = list(pair.token_shape)
        # token_shape is the pair's shape without its batch and length axes: put them back in order
        for axis, size in sorted([(pair.batch_axis, self.max_sequences), (pair.length_axis, self.max_length)]):
            dims.insert(axis, size)
        return tuple(dims)

    @property
    def nbytes(self) -> int:
        """Bytes the store may occupy when full."""
        return sum(a.nbytes for a in self.arrays.values())

    def gather(self, pair: Any, rows: np.ndarray, past: np.ndarray, pmax: int) -> np.ndarray:
        """The past of ``pair`` for a step of ``rows`` with past lengths ``past``: a new C-contiguous
        array with the batch axis ``len(rows)`` and the length axis ``pmax`` (right-padded: row i's
        positions beyond ``past[i]`` hold stale values the mask hides)."""
        store = self.arrays[pair.past]
        index: list[Any] = [slice(None)] * store.ndim
        index[pair.length_axis] = slice(0, pmax)
        if len(rows) == 1:  # one sequence: a basic slice, copied once
            r = int(rows[0])
            index[pair.batch_axis] = slice(r, r + 1)
            return np.ascontiguousarray(store[tuple(index)])
        index[pair.batch_axis] = rows
        return np.ascontiguousarray(store[tuple(index)])

    def scatter(self, pair: Any, rows: np.ndarray, past: np.ndarray, present: np.ndarray, pmax: int, n: int) -> None:
        """Write the new positions of ``present`` (``[pmax, pmax + n)`` on its length axis) to each
        row's ``[past[i], past[i] + n)``."""
        store = self.arrays[pair.past]
        b, ax = pair.batch_axis, pair.length_axis
        for i, (r, p) in enumerate(zip(rows.tolist(), past.tolist())):
            dst: list[Any] = [slice(None)] * store.ndim
            src: list[Any] = [slice(None)] * store.ndim
            dst[b], src[b] = r, i
            dst[ax], src[ax] = slice(p, p + n), slice(pmax, pmax + n)
            store[tuple(dst)] = present[tuple(src)]


class RowBook:
    """The client's record of which store rows are taken: `take` blocks while all are (admission),
    `give` frees one. Thread-safe."""

    def __init__(self, rows: int) -> None:
        self._free = list(range(rows - 1, -1, -1))  # pop() hands out the lowest row first
        self._cv = threading.Condition()
        self.rows = rows

    def try_take(self) -> int | None:
        """A free row, or None when every row is taken."""
        with self._cv:
            return self._free.pop() if self._free else None

    def give(self, row: int) -> None:
        with self._cv:
            if row in self._free:
                raise RuntimeError(f"KV row {row} freed twice")
            self._free.append(row)
            self._free.sort(reverse=True)
            self._cv.notify_all()

    @property
    def in_use(self) -> int:
        with self._cv:
            return self.rows - len(self._free)
