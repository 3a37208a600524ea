"""The ``ray`` backend's direct data path: each boundary's requests flow over one TCP connection
from the stage (or client) that produces them to the one that consumes them, framed as the
shared-memory rings frame a slot; Ray keeps placement, lifecycle and failure detection.

A frame is a slot as `corepipe.runtime.shm.Ring` lays it out, sent as it is: the header's 64-bit
words (word 0, the ring's state word, carries the send time as float64 bits; then epoch, seq,
request id, status, error length, each tensor's ndim and dims, every stage's (enter, leave)
stamps), the error text, then each tensor's raw bytes in boundary order. Nothing is pickled. The
receiver checks the header against the boundary's compiled specs (epoch, order, status, ranks,
dims within the compiled shape) before it reads a byte of tensor data into a buffer of exactly
the announced size, so a peer can neither grow its memory nor hand it a wrong shape or dtype.

A connection opens with a hello: a magic, the pipeline's random token (which only the client and
its actors know), the epoch and the boundary index. The receiver drops a connection whose hello
is wrong or older than its epoch, and one whose frames break the order; a newer connection
replaces the older. Listeners bind the node's cluster address, never every interface.
"""

from __future__ import annotations

import collections
import contextlib
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...artifact.plan import TensorSpec
from ..shm import _FIXED_WORDS, ERR_BYTES, ERROR, OK, _align, _max_dims

__all__ = ["Framing", "Frame", "Inlet", "Outlet", "ProtocolError", "encode_failure", "decode_failure",
           "streamable"]

MAGIC = b"corepipe-stream1"
HELLO = struct.Struct("<16s16sQQ")  # magic, token, epoch, boundary
_POLL_S = 0.25  # how often a blocked send or receive looks whether it was superseded
_BUFFER = 4 * 2**20  # socket buffers: a few slots of a large boundary in flight per hop
#: A failure as it travels: (stage index, node name or "", message).
Failure = tuple[int, str, str]


class ProtocolError(Exception):
    """A peer sent what the protocol does not allow; its connection is dropped."""


class _Closed(Exception):
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
        """The frame's buffers: a header (word 0 set at sending) and the data, not copied."""
        h = np.zeros(self.words, np.uint64)
        text = encode_failure(error).encode("utf-8")[:ERR_BYTES] if status != OK and error else b""
        h[1:6] = (epoch, seq, rid, status, len(text))
        data: list[Any] = [text] if text else []
        if status == OK:
            for i, (spec, arr) in enumerate(zip(self.specs, arrays)):
                arr = np.asarray(arr, dtype=spec.dtype, order="C")  # not ascontiguousarray: 0-d stays 0-d
                base = _FIXED_WORDS + i * (1 + self.max_dims)
                h[base] = arr.ndim
                h[base + 1 : base + 1 + arr.ndim] = arr.shape
                if arr.nbytes:
                    data.append(arr.reshape(-1).view(np.uint8))
        n = min(len(stamps), self.words - self.stamp_base)
        h[self.stamp_base : self.stamp_base + n] = np.asarray(stamps[:n], np.float64).view(np.uint64)
        return [h, *data]

    def read(self, conn: _Conn, epoch: int, seq: int) -> Frame:
        """The next frame from ``conn``, which must be message ``seq`` of ``epoch``.

        Raises:
            ProtocolError: a header the boundary's specs do not allow (nothing more is read).
            _Closed: the connection ended or was superseded.
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
            fits = ndim == len(spec.shape) and (
                all(a <= b for a, b in zip(shape, spec.shape)) if spec.dynamic else shape == spec.shape)
            if not fits:
                raise ProtocolError(f"{where}: {spec.name!r} should be {spec.describe()}, got shape {list(shape)}")
            total = _align(total)
            offsets.append(total)
            shapes.append(shape)
            total += int(np.prod(shape, dtype=np.int64)) * self.itemsizes[i]
        buf = np.empty(max(total, 1), np.uint8)
        arrays = []
        for i, spec in enumerate(self.specs):
            nbytes = int(np.prod(shapes[i], dtype=np.int64)) * self.itemsizes[i]
            region = buf[offsets[i] : offsets[i] + nbytes]
            if nbytes:
                conn.recv_into(region.data)
            arrays.append(region.view(spec.dtype).reshape(shapes[i]))
        return Frame(sent_at, epoch, seq, rid, status, None, arrays, stamps)


class _Conn:
    """A connected socket whose blocking calls give up once ``stop()`` turns true."""

    def __init__(self, sock: socket.socket, stop: Callable[[], bool]) -> None:
        self.sock = sock
        self.stop = stop
        sock.settimeout(_POLL_S)

    def recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:])
            except (TimeoutError, InterruptedError):
                n = -1
            except OSError as exc:
                raise _Closed(str(exc)) from None
            if n == 0:
                raise _Closed("the peer closed the connection")
            if n > 0:
                got += n
            elif self.stop():
                raise _Closed("superseded")

    def send(self, parts: Sequence[Any]) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        views = [v for v in views if len(v)]
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except (TimeoutError, InterruptedError):
                if self.stop():
                    raise _Closed("superseded") from None
                continue
            except OSError as exc:
                raise _Closed(str(exc)) from None
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


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)


class Inlet:
    """Where boundary ``boundary``'s frames arrive: a listener on ``ip`` and one upstream
    connection at a time; every frame read and checked is handed to ``deliver`` (on the
    connection's reader thread), in order."""

    def __init__(self, ip: str, token: bytes, framing: Framing, deliver: Callable[[Frame], None],
                 name: str) -> None:
        self.token = token
        self.framing = framing
        self.deliver = deliver
        self.name = name
        self.epoch = -1
        self.refused: tuple[int, str] = (-1, "")  # (epoch, why) of the last connection dropped
        self._lock = threading.Lock()
        self._current: tuple[int, _Conn] | None = None
        self._stopped = False
        self._server = socket.create_server((ip, 0), backlog=8)
        self._server.settimeout(_POLL_S)
        self.address = (ip, self._server.getsockname()[1])
        self.threads: list[threading.Thread] = []
        self._start(self._accept_loop, f"{name}-accept")

    def _start(self, target: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads = [x for x in self.threads if x.is_alive()] + [t]
        t.start()

    def reset(self, epoch: int) -> None:
        """Take frames of ``epoch`` from now on: a connection of an older one is dropped."""
        with self._lock:
            self.epoch = epoch
            if self._current is not None and self._current[0] < epoch:
                self._current[1].close()
                self._current = None

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._server.accept()
            except (TimeoutError, InterruptedError):
                continue
            except OSError:
                return
            self._start(self._serve, f"{self.name}-reader", sock)

    def _serve(self, sock: socket.socket) -> None:
        _tune(sock)
        conn = _Conn(sock, lambda: self._stopped)
        try:
            hello = bytearray(HELLO.size)
            deadline = time.monotonic() + 5.0
            conn.stop = lambda: self._stopped or time.monotonic() > deadline
            conn.recv_into(memoryview(hello))
            magic, token, epoch, boundary = HELLO.unpack(bytes(hello))
            with self._lock:
                if magic != MAGIC or token != self.token or boundary != self.framing.boundary or epoch < self.epoch:
                    raise ProtocolError("a connection without this pipeline's hello")
                if self._current is not None:
                    self._current[1].close()
                self._current = (epoch, conn)
            conn.stop = lambda: self._stopped or self._current is None or self._current[1] is not conn
            seq = 0
            while True:
                frame = self.framing.read(conn, epoch, seq)
                frame.arrived = time.time()
                seq += 1
                self.deliver(frame)
        except (ProtocolError, struct.error) as exc:
            with self._lock:
                self.refused = (self.epoch, f"boundary {self.framing.boundary}: {exc}")
        except _Closed:
            pass
        finally:
            with self._lock:
                if self._current is not None and self._current[1] is conn:
                    self._current = None
            conn.close()

    def refusal(self) -> str:
        """Why this epoch's connection was dropped for breaking the protocol ("" if it was not)."""
        with self._lock:
            return self.refused[1] if self.refused[0] == self.epoch >= 0 else ""

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            if self._current is not None:
                self._current[1].close()
                self._current = None


class Outlet:
    """Where boundary ``boundary``'s frames leave: a queue and a sender thread, connected to the
    current epoch's receiver (`reset`); a send never blocks its caller."""

    def __init__(self, token: bytes, boundary: int, name: str) -> None:
        self.token = token
        self.boundary = boundary
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self._epoch = -1
        self._address: tuple[str, int] | None = None
        self._conn: _Conn | None = None
        self._conn_epoch = -1
        self._stopped = False
        self._opened_epoch = -1  # one connection per epoch: its frames are numbered from 0
        self._broken_epoch = -1
        self.error = ""
        self.thread = threading.Thread(target=self._loop, name=f"{name}-sender", daemon=True)
        self.thread.start()

    def reset(self, epoch: int, address: tuple[str, int] | None) -> None:
        """Send frames of ``epoch`` to ``address`` from now on; older queued frames are dropped."""
        with self._cv:
            self._epoch, self._address = epoch, address
            self._queue = collections.deque(q for q in self._queue if q[0] == epoch)
            if self._conn is not None and self._conn_epoch != epoch:
                self._conn.close()
                self._conn = None
            self._cv.notify_all()

    def connect(self, timeout: float) -> str:
        """Connect to the current receiver now (a probe); returns "" or why it failed."""
        with self._cv:
            epoch, address = self._epoch, self._address
        if address is None:
            return "no receiver"
        try:
            conn = self._open(epoch, address, timeout)
        except (OSError, _Closed) as exc:
            with self._cv:
                self._broken_epoch = epoch
                self.error = f"boundary {self.boundary} to {address[0]}:{address[1]}: {exc}"
                return self.error
        with self._cv:
            if self._epoch == epoch and self._conn is None:
                self._conn, self._conn_epoch = conn, epoch
                return ""
        conn.close()
        return ""

    def _open(self, epoch: int, address: tuple[str, int], timeout: float) -> _Conn:
        self._opened_epoch = epoch
        sock = socket.create_connection(address, timeout=timeout)
        _tune(sock)
        conn = _Conn(sock, lambda: self._stopped or self._epoch != epoch)
        conn.send([HELLO.pack(MAGIC, self.token, epoch, self.boundary)])
        return conn

    def send(self, epoch: int, parts: list[Any]) -> None:
        with self._cv:
            if epoch == self._epoch and not self._stopped:
                self._queue.append((epoch, parts))
                self._cv.notify_all()

    def broken(self) -> str:
        """Why the current epoch's connection failed ("" while it stands): frames after a lost
        one cannot follow it, so the driver must start a new epoch and replay."""
        with self._cv:
            return self.error if self._broken_epoch == self._epoch >= 0 else ""

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._queue or self._broken_epoch == self._epoch):
                    self._cv.wait()
                if self._stopped:
                    return
                epoch, parts = self._queue[0]
                conn, address = self._conn, self._address
            try:
                if conn is None:
                    if address is None:
                        raise _Closed("no receiver")
                    if self._opened_epoch == epoch:
                        raise _Closed("the connection was lost")
                    conn = self._open(epoch, address, 5.0)
                    with self._cv:
                        if self._epoch != epoch:
                            conn.close()
                            continue
                        self._conn, self._conn_epoch = conn, epoch
                parts[0][0] = np.array([time.time()], np.float64).view(np.uint64)[0]
                conn.send(parts)
                with self._cv:
                    if self._queue and self._queue[0][1] is parts:
                        self._queue.popleft()
            except (_Closed, OSError) as exc:
                with self._cv:
                    if self._conn is conn and conn is not None:
                        conn.close()
                        self._conn = None
                    if self._epoch == epoch:  # not superseded: lost; wait for the driver's reset
                        self.error = f"boundary {self.boundary} to {address}: {exc}"
                        self._broken_epoch = epoch

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._queue.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._cv.notify_all()
