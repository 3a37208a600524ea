"""The ``ray`` backend's direct data path: each boundary's requests flow over one TCP connection
from the stage (or client) that produces them to the one that consumes them, as slot frames
(`corepipe.runtime.ray.framing`); Ray keeps placement, lifecycle and failure detection.

A connection opens with a hello: a magic, the pipeline's random token (which only the client and
its actors know), the epoch and the boundary index. The receiver drops a connection whose hello
is wrong or older than its epoch (quietly: a stranger or a superseded sender is no fault of the
epoch's own link), and one whose frames break the order (a *refusal*, which the driver recovers
from); a newer connection replaces the older. Senders never send a frame the receiver would
refuse: a request whose tensors do not fit the boundary leaves as that request's failure
(`Framing.parts`), so one bad request never breaks the link for the others. Listeners bind the node's cluster address, never every interface.

A hello for boundary `CLOCK` opens a clock probe instead: each 8 bytes the client sends are
answered with the actor's wall clock, so the client measures each host's clock offset over the
same network path as the data, to half a round trip of raw TCP (`ClockProbe`).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .framing import POLL_S, Closed, Conn, Frame, Framing, ProtocolError, tune

__all__ = ["Inlet", "Outlet", "ClockProbe", "HELLO", "MAGIC", "CLOCK"]

MAGIC = b"corepipe-stream1"
HELLO = struct.Struct("<16s16sQQ")  # magic, token, epoch, boundary
CLOCK = 2**64 - 1  # the boundary index of a clock probe's hello
_NOW = struct.Struct("<d")


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
        self._current: tuple[int, Conn] | None = None
        self._stopped = False
        self._server = socket.create_server((ip, 0), backlog=8)
        self._server.settimeout(POLL_S)
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
        tune(sock)
        conn = Conn(sock, lambda: self._stopped)
        try:
            hello = bytearray(HELLO.size)
            deadline = time.monotonic() + 5.0
            conn.stop = lambda: self._stopped or time.monotonic() > deadline
            conn.recv_into(memoryview(hello))
            magic, token, epoch, boundary = HELLO.unpack(bytes(hello))
            if magic == MAGIC and token == self.token and boundary == CLOCK:
                conn.stop = lambda: self._stopped
                self._answer_clock(conn)
                return
            with self._lock:
                if magic != MAGIC or token != self.token or boundary != self.framing.boundary or epoch < self.epoch:
                    # Not this epoch's sender: a stranger, or a sender a recovery superseded while
                    # it connected. Dropped, and no refusal: the current connection stands, and
                    # holding it against the epoch would start a recovery and count a death.
                    return
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
                if self._current is not None and self._current[1] is conn:  # not superseded meanwhile
                    self.refused = (self._current[0], f"boundary {self.framing.boundary}: {exc}")
        except Closed:
            pass
        finally:
            with self._lock:
                if self._current is not None and self._current[1] is conn:
                    self._current = None
            conn.close()

    @staticmethod
    def _answer_clock(conn: Conn) -> None:
        ask = bytearray(8)
        while True:
            conn.recv_into(memoryview(ask))
            conn.send([_NOW.pack(time.time())])

    def refusal(self, epoch: int | None = None) -> str:
        """Why ``epoch``'s connection (default: the current epoch's) was dropped for breaking the
        protocol ("" if it was not)."""
        with self._lock:
            epoch = self.epoch if epoch is None else epoch
            return self.refused[1] if self.refused[0] == epoch >= 0 else ""

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept: the port closes now
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
        self._conn: Conn | None = None
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
        except (OSError, Closed) as exc:
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

    def _open(self, epoch: int, address: tuple[str, int], timeout: float) -> Conn:
        self._opened_epoch = epoch
        sock = socket.create_connection(address, timeout=timeout)
        tune(sock)
        conn = Conn(sock, lambda: self._stopped or self._epoch != epoch)
        conn.send([HELLO.pack(MAGIC, self.token, epoch, self.boundary)])
        return conn

    def send(self, epoch: int, parts: list[Any]) -> None:
        with self._cv:
            if epoch == self._epoch and not self._stopped:
                self._queue.append((epoch, parts))
                self._cv.notify_all()

    def broken(self, epoch: int | None = None) -> str:
        """Why ``epoch``'s connection (default: the current epoch's) failed ("" while it stands):
        frames after a lost one cannot follow it, so the driver must start a new epoch and
        replay. Ask for the epoch you hold: a connection of an older one, closed by the very
        recovery that started yours, is no reason for another."""
        with self._cv:
            epoch = self._epoch if epoch is None else epoch
            return self.error if self._broken_epoch == epoch >= 0 else ""

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
                        raise Closed("no receiver")
                    if self._opened_epoch == epoch:
                        raise Closed("the connection was lost")
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
            except (Closed, OSError) as exc:
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


class ClockProbe:
    """The client's side of the clock probes: one connection per actor's inlet, kept open."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self._conns: dict[tuple[str, int], Conn] = {}

    def sample(self, address: tuple[str, int], timeout: float) -> tuple[float, float, float] | None:
        """One probe: (sent, received, the actor's clock), all wall-clock seconds; None when the
        actor cannot be reached within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            conn = self._conns.get(address)
            if conn is None:
                sock = socket.create_connection(address, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(sock, lambda: time.monotonic() > deadline)
                conn.send([HELLO.pack(MAGIC, self.token, 0, CLOCK)])
                self._conns[address] = conn
            conn.stop = lambda: time.monotonic() > deadline
            reply = bytearray(8)
            sent = time.time()
            conn.send([bytes(8)])
            conn.recv_into(memoryview(reply))
            received = time.time()
        except (OSError, Closed):
            self.forget(address)
            return None
        return sent, received, _NOW.unpack(bytes(reply))[0]

    def keep(self, addresses: set[tuple[str, int]]) -> None:
        """Close the probes of every address but ``addresses`` (actors that were replaced)."""
        for address in set(self._conns) - addresses:
            self.forget(address)

    def forget(self, address: tuple[str, int]) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for address in list(self._conns):
            self.forget(address)
