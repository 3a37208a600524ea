"""The ``ray`` backend's clock-offset correction, with two clocks: a host whose wall clock runs
5 s ahead of the driver's answers the client's clock probes over real TCP (`ClockProbe`, the
stream protocol's hello and 8-byte asks). The offset kept is the shortest round trip's, and it
takes the skew out of each boundary's hand-off time and of request timelines
(`corepipe.runtime.ray.stats`). No Ray needed."""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest

from corepipe.artifact.plan import TensorSpec
from corepipe.runtime.ray.stats import RayStats
from corepipe.runtime.ray.stream import CLOCK, HELLO, MAGIC, ClockProbe

TOKEN = b"k" * 16
AHEAD = 5.0  # the other host's clock, ahead of the driver's
NOW = struct.Struct("<d")


@pytest.fixture
def other_host():
    """A listener answering clock probes as an actor's inlet does, from a clock AHEAD s fast."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            with sock:
                hello = sock.recv(HELLO.size, socket.MSG_WAITALL)
                magic, token, _, boundary = HELLO.unpack(hello)
                assert (magic, token, boundary) == (MAGIC, TOKEN, CLOCK)
                while len(sock.recv(8, socket.MSG_WAITALL)) == 8:
                    sock.sendall(NOW.pack(time.time() + AHEAD))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield listener.getsockname()
    stop.set()
    t.join(5)
    listener.close()


class _Stats(RayStats):
    """RayStats' clock arithmetic over two stages: stage 0 on the driver's host, stage 1 on the
    other host."""

    def __init__(self) -> None:
        spec = [TensorSpec("x", "float32", (1, 4))]
        self.plan = SimpleNamespace(boundaries=[spec, spec, spec])
        self._n = 2
        self._driver_ip = "10.0.0.1"
        self._where = [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]
        self._clock = {}
        self._mono_minus_wall = time.monotonic() - time.time()
        self._out_handoffs = [0, 0.0]


def test_the_offset_of_a_clock_5s_ahead_is_measured_and_corrects_hand_offs_and_timelines(other_host):
    stats = _Stats()
    probe = ClockProbe(TOKEN)
    try:
        for _ in range(16):
            got = probe.sample(other_host, 2.0)
            assert got is not None
            stats._clock_sample(1, *got)
            stats._clock_sample(0, *got)  # the driver's own host: never sampled
    finally:
        probe.close()
    # A sample with a long round trip and a wrong offset loses to the short ones.
    t = time.time()
    stats._clock_sample(1, t, t + 2.0, t + 1.0 + AHEAD + 0.7)
    assert stats._offset(0) == 0.0 and "10.0.0.1" not in stats._clock
    assert stats._offset(1) == pytest.approx(AHEAD, abs=0.01)
    # Boundary 1 (stage 0 -> stage 1): the receiver's clock stamps arrival, 5 s ahead of the
    # sender's; the results' way back (stage 1 -> the driver): 5 s behind.
    pings = {0: {"handoffs": 10, "handoff_s": 10 * 0.001}, 1: {"handoffs": 10, "handoff_s": 10 * (AHEAD + 0.002)}}
    stats._out_handoffs = [10, 10 * (0.003 - AHEAD)]
    means = [b.mean_s for b in stats._boundary_stats(pings)]
    assert means == [pytest.approx(0.001), pytest.approx(0.002, abs=0.01), pytest.approx(0.003, abs=0.01)]
    # A request's stamps on each stage's clock land on the driver's monotonic clock in order.
    wall = time.time()
    (e0, l0), (e1, l1) = stats._to_monotonic([wall, wall + 0.01, wall + 0.02 + AHEAD, wall + 0.03 + AHEAD])
    assert l0 - e0 == pytest.approx(0.01) == l1 - e1 and e1 - l0 == pytest.approx(0.01, abs=0.01)
    assert e0 == pytest.approx(wall + stats._mono_minus_wall)


def test_without_samples_no_offset_is_made_up():
    stats = _Stats()
    assert stats._offset(1) == 0.0
    stats._clock = {"10.0.0.2": collections.deque([(0.001, 2.0)])}
    assert stats._offset(1) == 2.0
