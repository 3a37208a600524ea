"""The frames of the ``ray`` backend's direct data path (`corepipe.runtime.ray.stream`): one
request's message on one boundary, framed as the shared-memory rings frame a slot, and the
socket that carries them.

A frame is a slot as `corepipe.runtime.shm.Ring` lays it out, sent as it is: the header's 64-bit
words (word 0, the ring's state word, carries the send time as float64 bits; then epoch, seq,
request id, status, error length, each tensor's ndim and dims, every stage's (enter, leave)
stamps), the error text, then each tensor's raw bytes in boundary order. Nothing is pickled. The
receiver checks the header against the boundary's compiled specs (epoch, order, status, ranks,
dims within the compiled shape) before it reads a byte of tensor data into a buffer of exactly
the announced size, so a peer can neither grow its memory nor hand it a wrong shape or dtype.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...artifact.plan import TensorSpec
from ...artifact.signature import Dim, expected_dims
from ..shm import _FIXED_WORDS, ERR_BYTES, ERROR, OK, _align, _max_dims

__all__ = ["Framing", "Frame", "Conn", "Closed", "ProtocolError", "encode_failure", "decode_failure",
           "streamable", "tune"]

POLL_S = 0.25  # how often a blocked send or receive looks whether it was superseded
_ALIGN_TO = 64
_BUFFER = 4 * 2**20  # socket buffers: a few slots of a large boundary in flight per hop
#: A failure as it travels: (stage index, node name or "", message).
Failure = tuple[int, str, str]


def _fits(shape: tuple[int, ...], dims: Sequence[Dim]) -> bool:
    """Each dim of ``shape`` exact or within its range (`corepipe.artifact.signature.expected_dims`)."""
    return all(d == w if isinstance(w, int) else w[0] <= d and (w[1] is None or d <= w[1])
               for d, w in zip(shape, dims))


class ProtocolError(Exception):
    """A peer sent what the protocol does not allow; its connection is dropped."""


class Closed(Exception):
    """The connection ended, or this end was told to stop."""


def streamable(specs: Sequence[TensorSpec]) -> bool:
    """Whether a boundary's tensors have fixed-size dtypes (strings and objects do not)."""
    try:
        return all(np.dtype(s.dtype).kind in "biufc" for s in specs)
    except TypeError:
        return False


def encode_failure(error: Failure) -> str:
    stage, node, message = error
    return f"{int(stage)}\x00{node}\x00{message}"


def decode_failure(text: str, stage: int) -> Failure:
    parts = text.split("\x00", 2)
    if len(parts) == 3 and parts[0].lstrip("-").isdigit():
        return int(parts[0]), parts[1], parts[2]
    return stage, "", text


@dataclass
class Frame:
    """One request's message on a boundary, as read and checked."""

    sent_at: float
    epoch: int
    seq: int
    rid: int
    status: int
    error: Failure | None
    arrays: list[np.ndarray]
    stamps: list[float]
    arrived: float = field(default=0.0)


class Framing:
    """The wire form of one boundary's frames (``specs``) in an ``stages``-stage pipeline."""

    def __init__(self, specs: Sequence[TensorSpec], stages: int, boundary: int) -> None:
        self.specs = list(specs)
        self.boundary = boundary
        self.max_dims = _max_dims(self.specs)
        self.stamp_base = _FIXED_WORDS + len(self.specs) * (1 + self.max_dims)
        self.words = self.stamp_base + 2 * stages
        self.itemsizes = [np.dtype(s.dtype).itemsize for s in self.specs]

    def parts(self, *, epoch: int, seq: int, rid: int, status: int, error: Failure | None,
              arrays: Sequence[np.ndarray], stamps: Sequence[float]) -> list[Any]:
        """The frame's buffers: a header (word 0 set at sending) and the data, not copied.

        An OK message whose arrays the receiver would refuse (`problem`) leaves as a failure of
        that request alone: a refused frame would drop the connection, and the replay would send
        it again, so one bad request would break the boundary for every request behind it."""
        if status == OK:
            try:
                arrays = [np.asarray(a, dtype=s.dtype, order="C")  # not ascontiguousarray: 0-d stays 0-d
                          for s, a in zip(self.specs, arrays)] if len(arrays) == len(self.specs) else list(arrays)
                why = self.problem(arrays)
            except (TypeError, ValueError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                status, error, arrays = ERROR, (max(self.boundary - 1, 0), "",
                                                f"request {rid} cannot cross boundary {self.boundary}: {why}"), []
        h = np.zeros(self.words, np.uint64)
        text = encode_failure(error).encode("utf-8")[:ERR_BYTES] if status != OK and error else b""
        if status != OK and not text:
            text = encode_failure((max(self.boundary - 1, 0), "", f"request {rid} failed")).encode("utf-8")
        h[1:6] = (epoch, seq, rid, status, len(text))
        data: list[Any] = [text] if text else []
        if status == OK:
            for i, arr in enumerate(arrays):
                base = _FIXED_WORDS + i * (1 + self.max_dims)
                h[base] = arr.ndim
                h[base + 1 : base + 1 + arr.ndim] = arr.shape
                if arr.nbytes:
                    data.append(arr.reshape(-1).view(np.uint8))
        n = min(len(stamps), self.words - self.stamp_base)
        h[self.stamp_base : self.stamp_base + n] = np.asarray(stamps[:n], np.float64).view(np.uint64)
        return [h, *data]

    def problem(self, arrays: Sequence[np.ndarray]) -> str | None:
        """Why ``arrays`` (of the boundary's dtypes) cannot travel as one frame, in the very
        terms `read` checks on arrival (count, rank, dims within range, bytes within the
        compiled size); None when they can."""
        if len(arrays) != len(self.specs):
            return f"expected {len(self.specs)} tensors, got {len(arrays)}"
        for i, (spec, arr) in enumerate(zip(self.specs, arrays)):
            if not self._fits(i, arr.ndim, tuple(arr.shape)):
                return f"{spec.name!r} should be {spec.describe()}, got shape {list(arr.shape)}"
        return None

    def _fits(self, i: int, ndim: int, shape: tuple[int, ...]) -> bool:
        spec = self.specs[i]
        return ndim == len(spec.shape) and len(shape) == ndim and _fits(shape, expected_dims(spec)) and \
            int(np.prod(shape, dtype=np.int64)) * self.itemsizes[i] <= spec.nbytes

    def read(self, conn: Conn, epoch: int, seq: int) -> Frame:
        """The next frame from ``conn``, which must be message ``seq`` of ``epoch``.

        Raises:
            ProtocolError: a header the boundary's specs do not allow (nothing more is read).
            Closed: the connection ended or was superseded.
        """
        h = np.empty(self.words, np.uint64)
        conn.recv_into(h.data.cast("B"))
        got_epoch, got_seq, rid, status, err_len = (int(x) for x in h[1:6])
        where = f"boundary {self.boundary}, request {rid}"
        if got_epoch != epoch or got_seq != seq:
            raise ProtocolError(f"{where}: expected message {seq} of epoch {epoch}, got {got_seq} of {got_epoch}")
        if status not in (OK, ERROR) or err_len > ERR_BYTES or (status == OK) != (err_len == 0):
            raise ProtocolError(f"{where}: bad status {status} with {err_len} bytes of error text")
        sent_at = float(h[0:1].view(np.float64)[0])
        stamps = h[self.stamp_base :].view(np.float64).tolist()
        if not math.isfinite(sent_at) or not all(math.isfinite(s) for s in stamps):
            raise ProtocolError(f"{where}: timestamps are not finite numbers")
        if status != OK:
            text = bytearray(err_len)
            conn.recv_into(memoryview(text))
            return Frame(sent_at, epoch, seq, rid, status,
                         decode_failure(text.decode("utf-8", "replace"), self.boundary), [], stamps)
        shapes, offsets, total = [], [], 0
        for i, spec in enumerate(self.specs):
            base = _FIXED_WORDS + i * (1 + self.max_dims)
            ndim = int(h[base])
            shape = tuple(int(d) for d in h[base + 1 : base + 1 + min(ndim, self.max_dims)])
            if not self._fits(i, ndim, shape):
                raise ProtocolError(f"{where}: {spec.name!r} should be {spec.describe()}, got shape {list(shape)}")
            total = _align(total)
            offsets.append(total)
            shapes.append(shape)
            total += int(np.prod(shape, dtype=np.int64)) * self.itemsizes[i]
        raw = np.empty(total + _ALIGN_TO, np.uint8)
        buf = raw[(-raw.ctypes.data) % _ALIGN_TO :]  # each tensor 64-byte aligned, as in a ring slot
        arrays = []
        for i, spec in enumerate(self.specs):
            nbytes = int(np.prod(shapes[i], dtype=np.int64)) * self.itemsizes[i]
            region = buf[offsets[i] : offsets[i] + nbytes]
            if nbytes:
                conn.recv_into(region.data)
            arrays.append(region.view(spec.dtype).reshape(shapes[i]))
        return Frame(sent_at, epoch, seq, rid, status, None, arrays, stamps)


class Conn:
    """A connected socket whose blocking calls give up once ``stop()`` turns true."""

    def __init__(self, sock: socket.socket, stop: Callable[[], bool]) -> None:
        self.sock = sock
        self.stop = stop
        sock.settimeout(POLL_S)

    def recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:])
            except (TimeoutError, InterruptedError):
                n = -1
            except OSError as exc:
                raise Closed(str(exc)) from None
            if n == 0:
                raise Closed("the peer closed the connection")
            if n > 0:
                got += n
            elif self.stop():
                raise Closed("superseded")

    def send(self, parts: Sequence[Any]) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        views = [v for v in views if len(v)]
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except (TimeoutError, InterruptedError):
                if self.stop():
                    raise Closed("superseded") from None
                continue
            except OSError as exc:
                raise Closed(str(exc)) from None
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)


