"""Shared-memory hand-off: a ring of preallocated slots per boundary, and the control block.

A slot is a small header of 64-bit words followed by one fixed region per boundary tensor,
sized from the compiled static shapes. Producers copy raw tensor bytes in, then publish the
slot by writing its state word last; consumers read tensors as numpy views in place. Nothing
is pickled. Doorbells (`corepipe.runtime.bell`) only wake a waiting peer: the state words are the truth, so a
lost or extra wake-up costs at most one poll interval, never correctness.

Memory ordering: writers store data before the state word and readers load the state word
before data; x86-64 keeps stores in order, which is what this relies on (see note in README).

Timestamps: a ring made for an ``S``-stage pipeline ends each slot header with ``2 * S`` float64
words, the (enter, leave) times of the request on every stage so far (``time.monotonic()``,
one clock for every process on Linux). Worker ``k`` copies words ``[0, 2k)`` from its input
slot and writes its own pair (`Ring.stamp`), so the last ring brings the client the whole path
of each request at the cost of a few word copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from ..artifact.plan import TensorSpec
from ..errors import StageError
from .segments import attach_shm, create_shm, release_shm

__all__ = ["Ring", "Control", "attach_shm", "encode_error", "decode_error", "EMPTY", "FULL", "OK", "ERROR"]

EMPTY, FULL = 0, 1
OK, ERROR = 0, 1
MAX_DIMS = 8  # header room per tensor; more when a boundary holds higher-rank tensors
ERR_BYTES = 2048
_ALIGN = 64
# header words: state, epoch, seq, request_id, status, err_len, then per tensor: ndim + dims,
# then per stage: enter, leave (float64 bits)
_FIXED_WORDS = 6


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _max_dims(specs: Sequence[TensorSpec]) -> int:
    return max([MAX_DIMS] + [len(spec.shape) for spec in specs])


class Ring:
    """``slots`` slots for the tensors of one boundary, in one shared-memory segment.

    ``stages``: room in each header for the (enter, leave) timestamps of that many stages.
    """

    def __init__(self, specs: Sequence[TensorSpec], slots: int, shm: SharedMemory, stages: int = 0) -> None:
        self.specs = list(specs)
        self.slots = slots
        self.shm = shm
        m = len(self.specs)
        self.max_dims = _max_dims(self.specs)
        self.stages = stages
        self._stamp_base = _FIXED_WORDS + m * (1 + self.max_dims)
        self.header_words = self._stamp_base + 2 * stages
        self.err_offset = _align(self.header_words * 8)
        offsets, off = [], self.err_offset + ERR_BYTES
        for spec in self.specs:
            off = _align(off)
            offsets.append(off)
            off += max(spec.nbytes, 1)
        self.offsets = offsets
        self.slot_bytes = _align(off)
        buf = shm.buf
        self.headers = [
            np.ndarray((self.header_words,), dtype=np.uint64, buffer=buf, offset=s * self.slot_bytes)
            for s in range(slots)
        ]
        self.regions = [
            [
                np.ndarray((max(spec.nbytes, 1),), dtype=np.uint8, buffer=buf,
                           offset=s * self.slot_bytes + self.offsets[i])
                for i, spec in enumerate(self.specs)
            ]
            for s in range(slots)
        ]
        # float64 views of each header's timestamp words, made once: stamping is on the hot path
        self._stamps = [h[self._stamp_base :].view(np.float64) for h in self.headers]
        # The hot path reads and writes header words through memoryviews (a Python int in ~30 ns;
        # a numpy scalar costs ~150), and reuses a slot's tensor views while its shapes repeat.
        self._hv: list[Any] = [h.data for h in self.headers]
        self._shape_words: list[Any] = [h[_FIXED_WORDS : self._stamp_base].data for h in self.headers]
        self._read_cache: list[tuple[bytes, dict[str, np.ndarray]] | None] = [None] * slots
        # slot -> per tensor: (shape, dtype, destination view, header words) of its last write
        self._write_cache: list[list[tuple[Any, ...] | None]] = [[None] * m for _ in range(slots)]
        static = np.zeros(self._stamp_base - _FIXED_WORDS, dtype=np.uint64)
        for i, spec in enumerate(self.specs):
            at = i * (1 + self.max_dims)
            static[at] = len(spec.shape)
            static[at + 1 : at + 1 + len(spec.shape)] = spec.shape
        self._static_words = static.data

    @staticmethod
    def size_for(specs: Sequence[TensorSpec], slots: int, stages: int = 0) -> int:
        m = len(specs)
        off = _align((_FIXED_WORDS + m * (1 + _max_dims(specs)) + 2 * stages) * 8) + ERR_BYTES
        for spec in specs:
            off = _align(off) + max(spec.nbytes, 1)
        return _align(off) * slots

    @classmethod
    def create(cls, specs: Sequence[TensorSpec], slots: int, stages: int = 0) -> Ring:
        shm = create_shm(cls.size_for(specs, slots, stages))
        ring = cls(specs, slots, shm, stages)
        ring.reset()
        return ring

    @classmethod
    def attach(cls, name: str, specs: Sequence[TensorSpec], slots: int, stages: int = 0) -> Ring:
        return cls(specs, slots, attach_shm(name), stages)

    # -- slot access -------------------------------------------------------------------------
    def state(self, s: int) -> int:
        return self._hv[s][0]

    def epoch(self, s: int) -> int:
        return self._hv[s][1]

    def request_id(self, s: int) -> int:
        return self._hv[s][3]

    def status(self, s: int) -> int:
        return self._hv[s][4]

    def ready(self, s: int, epoch: int) -> bool:
        """Whether slot ``s`` is FULL with a request of ``epoch`` (one call on the hot path)."""
        h = self._hv[s]
        return h[0] == FULL and h[1] == epoch

    def stamps(self, s: int) -> list[tuple[float, float]]:
        """The (enter, leave) times slot ``s``'s request has collected, one pair per stage."""
        words = self._stamps[s].tolist()
        return list(zip(words[0::2], words[1::2]))

    def stamp(self, s: int, upstream: Ring, stage: int, enter: float, leave: float,
              upstream_slot: int | None = None) -> None:
        """Give slot ``s`` the timestamps its request collected upstream (``upstream``'s slot
        ``upstream_slot``, default ``s``; stages before ``stage``) and this stage's own
        (``enter``, ``leave``)."""
        if stage >= self.stages:
            return  # a ring made without room for timestamps
        mine = self._stamps[s]
        if stage and upstream.stages >= stage:
            mine[: 2 * stage] = upstream._stamps[s if upstream_slot is None else upstream_slot][: 2 * stage]
        mine[2 * stage : 2 * stage + 2] = (enter, leave)

    def reset(self) -> None:
        for h in self.headers:
            h[:] = 0

    def free(self, s: int) -> None:
        self._hv[s][0] = EMPTY

    def read(self, s: int) -> dict[str, np.ndarray]:
        """Views of slot ``s``'s tensors, shaped as written (valid until the slot is freed).

        The same dict comes back while the slot's shapes repeat (made once per slot and
        shape): callers read it and must not change it."""
        key = self._shape_words[s].tobytes()
        cached = self._read_cache[s]
        if cached is not None and cached[0] == key:
            return cached[1]
        h = self.headers[s]
        out = {}
        for i, spec in enumerate(self.specs):
            base = _FIXED_WORDS + i * (1 + self.max_dims)
            ndim = int(h[base])
            shape = tuple(int(d) for d in h[base + 1 : base + 1 + ndim])
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * np.dtype(spec.dtype).itemsize
            out[spec.name] = self.regions[s][i][:nbytes].view(spec.dtype).reshape(shape)
        self._read_cache[s] = (key, out)
        return out

    def error(self, s: int) -> str:
        n = int(self.headers[s][5])
        start = s * self.slot_bytes + self.err_offset
        buf = self.shm.buf
        assert buf is not None, "ring is closed"
        return bytes(buf[start : start + min(n, ERR_BYTES)]).decode("utf-8", "replace")

    def static_views(self, s: int) -> dict[str, np.ndarray]:
        """Writable views of slot ``s`` shaped as compiled (for writing outputs in place)."""
        return {
            spec.name: self.regions[s][i][: spec.nbytes].view(spec.dtype).reshape(spec.shape)
            for i, spec in enumerate(self.specs)
        }

    def _set_shape(self, s: int, i: int, shape: tuple[int, ...]) -> None:
        h, base = self.headers[s], _FIXED_WORDS + i * (1 + self.max_dims)
        h[base] = len(shape)
        h[base + 1 : base + 1 + len(shape)] = shape

    def mark_static(self, s: int) -> None:
        """Record the compiled shapes as slot ``s``'s shapes (after an in-place write): one copy
        of header words prepared once."""
        self._shape_words[s][:] = self._static_words

    # -- dynamic dims: tensors of the shapes a request has, in slots sized for the largest ----
    def views(self, s: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Writable views of slot ``s``'s tensors shaped ``shapes`` (each at most its compiled
        size), for writing outputs of a request over dynamic dims in place."""
        out = {}
        for i, spec in enumerate(self.specs):
            shape = shapes[spec.name]
            count = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            out[spec.name] = self.regions[s][i][:count].view(spec.dtype).reshape(shape)
        return out

    def mark(self, s: int, shapes: dict[str, tuple[int, ...]]) -> None:
        """Record ``shapes`` as slot ``s``'s shapes (after an in-place write of `views`)."""
        for i, spec in enumerate(self.specs):
            self._set_shape(s, i, shapes[spec.name])

    def write(self, s: int, tensors: dict[str, np.ndarray]) -> None:
        """Copy ``tensors`` into slot ``s``. Raises ValueError if one exceeds its compiled size.

        A tensor of the shape and dtype the slot took last goes through the destination view and
        header words kept from then (one copy and one word copy)."""
        cache = self._write_cache[s]
        for i, spec in enumerate(self.specs):
            value = tensors[spec.name]
            hit = cache[i]
            if hit is not None and hit[0] == value.shape and hit[1] == value.dtype:
                np.copyto(hit[2], value, casting="no")
                at = i * (1 + self.max_dims)
                self._shape_words[s][at : at + len(hit[3])] = hit[3]
                continue
            if value.ndim > self.max_dims:
                raise ValueError(
                    f"tensor {spec.name!r} came out with {value.ndim} dims; compiled as {spec.describe()}"
                )
            if str(value.dtype) != spec.dtype:
                value = value.astype(spec.dtype)
            if value.nbytes > max(spec.nbytes, 1) and value.nbytes > 0:
                raise ValueError(
                    f"tensor {spec.name!r} came out {value.dtype}{list(value.shape)}, larger than the "
                    f"compiled {spec.describe()}; compile with example inputs of the largest shape"
                )
            region = self.regions[s][i]
            dest = region[: value.nbytes].view(value.dtype).reshape(value.shape)
            if value.nbytes:
                dest[...] = value
            self._set_shape(s, i, value.shape)
            words = np.array([value.ndim, *value.shape], dtype=np.uint64)
            cache[i] = (value.shape, value.dtype, dest, words.data)

    def publish(self, s: int, *, epoch: int, seq: int, request_id: int, status: int = OK, error: str = "") -> None:
        """Fill the slot header and mark it FULL (the state word is written last)."""
        h = self._hv[s]
        h[1], h[2], h[3], h[4] = epoch, seq, request_id, status
        if error:
            data = error.encode("utf-8")[:ERR_BYTES]
            start = s * self.slot_bytes + self.err_offset
            buf = self.shm.buf
            assert buf is not None, "ring is closed"
            buf[start : start + len(data)] = data
            h[5] = len(data)
        else:
            h[5] = 0
        h[0] = FULL

    def full_slots(self) -> int:
        return sum(1 for s in range(self.slots) if self.state(s) == FULL)

    def close(self, unlink: bool = False) -> None:
        for views in (self._hv, self._shape_words):
            for v in views:
                v.release()
        self._hv, self._shape_words, self._read_cache, self._write_cache = [], [], [], []
        self.headers = []
        self.regions = []
        self._stamps = []
        release_shm(self.shm, unlink)


class Control:
    """Small shared block: epoch handshakes, shutdown, and per-stage counters.

    Layout (float64 words): [epoch, go_epoch, shutdown, listening, feed_wait, 3 reserved] then per
    stage [ack_epoch, ready, pid, requests, busy_s, busy_since, current_request, heartbeat,
    sleep_in, sleep_out, runs]. ``runs``: the engine calls the stage made (fewer than ``requests``
    where it ran queued requests as one batch, `corepipe.runtime.stagebatch`). ``sleep_in`` / ``sleep_out``: the worker is about to sleep on its input
    bell (no full slot) / its output bell (no free slot); a peer rings that bell only then, so a
    busy worker costs its peers no syscall (an eventcount: each side stores its word, fences,
    then loads the other's; `corepipe.runtime.bell.fence`).
    ``listening``: threads of the client waiting in ``result()`` (the last worker's completion
    bell wakes them instead of the client's service thread); ``feed_wait``: the client has
    requests waiting for a free slot in the first ring (stage 0 rings its free bell only then).
    """

    GLOBAL = 8
    PER_STAGE = 11
    ACK, READY, PID, REQUESTS, BUSY_S, BUSY_SINCE, CURRENT, HEARTBEAT, SLEEP_IN, SLEEP_OUT, RUNS = range(11)

    def __init__(self, stages: int, shm: SharedMemory) -> None:
        self.stages = stages
        self.shm = shm
        self.words = np.ndarray((self.GLOBAL + stages * self.PER_STAGE,), dtype=np.float64, buffer=shm.buf)
        self._w: Any = self.words.data  # scalar access without numpy's per-item cost

    @classmethod
    def create(cls, stages: int) -> Control:
        shm = create_shm((cls.GLOBAL + stages * cls.PER_STAGE) * 8)
        c = cls(stages, shm)
        c.words[:] = 0
        return c

    @classmethod
    def attach(cls, name: str, stages: int) -> Control:
        return cls(stages, attach_shm(name))

    def get(self, stage: int, field: int) -> float:
        return self._w[self.GLOBAL + stage * self.PER_STAGE + field]

    def set(self, stage: int, field: int, value: float) -> None:
        self._w[self.GLOBAL + stage * self.PER_STAGE + field] = float(value)

    def base(self, stage: int) -> int:
        """Index of stage ``stage``'s first word in `words`/`view` (a worker's loop adds fields)."""
        return self.GLOBAL + stage * self.PER_STAGE

    @property
    def view(self) -> Any:
        """The words as a float64 memoryview (the hot path's reads and writes)."""
        return self._w

    @property
    def epoch(self) -> int:
        return int(self._w[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._w[0] = float(value)

    @property
    def go_epoch(self) -> int:
        return int(self._w[1])

    @go_epoch.setter
    def go_epoch(self, value: int) -> None:
        self._w[1] = float(value)

    @property
    def shutdown(self) -> bool:
        return bool(self._w[2])

    @shutdown.setter
    def shutdown(self, value: bool) -> None:
        self._w[2] = 1.0 if value else 0.0

    def listening(self) -> bool:
        """Whether a client thread waits in ``result()`` for a completion (see the layout)."""
        return self._w[3] > 0

    def set_listening(self, threads: int) -> None:
        self._w[3] = float(threads)

    def feed_wait(self) -> bool:
        """Whether the client has requests waiting for a free slot in the first ring."""
        return self._w[4] > 0

    def set_feed_wait(self, waiting: bool) -> None:
        self._w[4] = 1.0 if waiting else 0.0

    def close(self, unlink: bool = False) -> None:
        self._w.release()
        self._w = np.zeros(0).data
        self.words = np.zeros(0)
        release_shm(self.shm, unlink)


def encode_error(exc: BaseException, stage: int) -> str:
    """A failure as it travels down the rings to the client: type, stage, node, message."""
    node = getattr(exc, "node", "") or ""
    return f"{type(exc).__name__}\x00{stage}\x00{node}\x00{exc}"


def decode_error(text: str, request_id: int) -> StageError:
    """The `StageError` for an error slot written by `encode_error`."""
    kind, stage, node, message = (text.split("\x00", 3) + ["", "", "", ""])[:4]
    try:
        k = int(stage)
    except ValueError:
        k = -1
    if kind == "StageError":
        return StageError(message, stage=k, request_id=request_id, node=node or None)
    return StageError(f"stage {k} failed on request {request_id}: {kind}: {message}",
                      stage=k, request_id=request_id, node=node or None)
