"""The ``ray`` backend's stream data path on real sockets, without Ray: slot frames as they travel,
what a receiver refuses before it reads a byte of tensor data, and the connection rules (the
pipeline's token, epochs, one connection per epoch, a lost connection reported as broken)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from corepipe.artifact.plan import TensorSpec
from corepipe.runtime.ray.framing import Conn, Frame, Framing, ProtocolError, streamable
from corepipe.runtime.ray.stream import HELLO, MAGIC, ClockProbe, Inlet, Outlet
from corepipe.runtime.shm import ERROR, OK

SPECS = [TensorSpec("x", "float32", (1, 4, 3)), TensorSpec("n", "int64", ()),
         TensorSpec("ids", "int32", (1, 8), dynamic=True)]
TOKEN = b"t" * 16


def _pair() -> tuple[Conn, Conn]:
    a, b = socket.socketpair()
    return Conn(a, lambda: False), Conn(b, lambda: False)


def _arrays(k: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(k)
    return [rng.standard_normal((1, 4, 3)).astype(np.float32), np.array(7 + k, np.int64),
            np.arange(5, dtype=np.int32).reshape(1, 5)]


def test_a_frame_arrives_as_sent_header_stamps_and_raw_tensors():
    framing = Framing(SPECS, stages=3, boundary=1)
    a, b = _pair()
    arrays = _arrays()
    parts = framing.parts(epoch=4, seq=0, rid=17, status=OK, error=None, arrays=arrays, stamps=[1.5, 2.5])
    parts[0][0] = np.array([123.25]).view(np.uint64)[0]  # word 0: the send time, set by the sender
    a.send(parts)
    got = framing.read(b, epoch=4, seq=0)
    assert (got.epoch, got.seq, got.rid, got.status, got.error, got.sent_at) == (4, 0, 17, OK, None, 123.25)
    assert got.stamps[:2] == [1.5, 2.5] and len(got.stamps) == 6
    for sent, came in zip(arrays, got.arrays):
        assert came.dtype == sent.dtype and came.shape == sent.shape  # 0-d stays 0-d, dynamic keeps 5
        np.testing.assert_array_equal(came, sent)
        assert came.ctypes.data % 64 == 0  # aligned, as in a ring slot
    # The header is the ring's slot header, word for word (word 0 aside).
    assert framing.words == 6 + len(SPECS) * 9 + 2 * 3


def test_a_failure_travels_as_text_without_tensors():
    framing = Framing(SPECS, stages=2, boundary=1)
    a, b = _pair()
    a.send(framing.parts(epoch=0, seq=0, rid=3, status=ERROR, error=(0, "node-a", "Gather: index 9 out of range"),
                         arrays=[], stamps=[]))
    a.send(framing.parts(epoch=0, seq=1, rid=4, status=OK, error=None, arrays=_arrays(1), stamps=[]))
    first, second = framing.read(b, 0, 0), framing.read(b, 0, 1)
    assert first.status == ERROR and first.arrays == [] and first.error == (0, "node-a", "Gather: index 9 out of range")
    assert second.rid == 4 and int(second.arrays[1]) == 8


@pytest.mark.parametrize("mutate,match", [
    (lambda h, f: h.__setitem__(1, 5), "expected message 0 of epoch 0, got 0 of 5"),
    (lambda h, f: h.__setitem__(2, 3), "expected message 0 of epoch 0, got 3 of 0"),
    (lambda h, f: h.__setitem__(4, 9), "bad status 9"),
    (lambda h, f: h.__setitem__(6, 2), r"'x' should be float32\[1,4,3\], got shape \[1, 4\]"),
    (lambda h, f: h.__setitem__(8, 400_000_000), r"'x' should be float32\[1,4,3\], got shape \[1, 400000000, 3\]"),
    (lambda h, f: h.__setitem__(6 + 2 * 9 + 2, 9), r"'ids' should be int32\[1,8\], got shape \[1, 9\]"),
    (lambda h, f: h.__setitem__(f.stamp_base, np.array([np.nan]).view(np.uint64)[0]), "not finite"),
])
def test_a_header_the_boundary_does_not_allow_is_refused_before_any_data(mutate, match):
    framing = Framing(SPECS, stages=2, boundary=1)
    a, b = _pair()
    parts = framing.parts(epoch=0, seq=0, rid=1, status=OK, error=None, arrays=_arrays(), stamps=[])
    mutate(parts[0], framing)
    a.send(parts)
    with pytest.raises(ProtocolError, match=match):
        framing.read(b, 0, 0)
    b.sock.settimeout(1)  # the tensor bytes are still unread: nothing was allocated for them
    assert len(b.sock.recv(1 << 16)) == sum(np.asarray(x).nbytes for x in _arrays())


def test_streamable_needs_fixed_size_dtypes():
    assert streamable(SPECS)
    assert not streamable([TensorSpec("s", "object", (1,))])


class _Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.cv = threading.Condition()

    def __call__(self, frame: Frame) -> None:
        with self.cv:
            self.frames.append(frame)
            self.cv.notify_all()

    def wait(self, n: int, timeout: float = 10) -> list[Frame]:
        with self.cv:
            self.cv.wait_for(lambda: len(self.frames) >= n, timeout)
            return list(self.frames)


@pytest.fixture
def ends():
    framing = Framing(SPECS, stages=2, boundary=1)
    sink = _Sink()
    inlet = Inlet("127.0.0.1", TOKEN, framing, sink, "test")
    outlet = Outlet(TOKEN, 1, "test")
    yield framing, sink, inlet, outlet
    outlet.close()
    inlet.close()


def _send(outlet: Outlet, framing: Framing, epoch: int, seq: int) -> None:
    outlet.send(epoch, framing.parts(epoch=epoch, seq=seq, rid=100 * epoch + seq, status=OK, error=None,
                                     arrays=_arrays(seq), stamps=[]))


def test_frames_flow_in_order_over_one_connection_per_epoch(ends):
    framing, sink, inlet, outlet = ends
    inlet.reset(0)
    outlet.reset(0, inlet.address)
    assert outlet.connect(5) == ""
    for seq in range(5):
        _send(outlet, framing, 0, seq)
    got = sink.wait(5)
    assert [f.rid for f in got] == [0, 1, 2, 3, 4]
    assert all(f.arrived >= f.sent_at > 0 for f in got)
    # A new epoch: a new connection, numbered from 0 again; the old epoch's frames are dropped.
    inlet.reset(1)
    outlet.reset(1, inlet.address)
    _send(outlet, framing, 0, 5)  # an old epoch's frame: not sent
    _send(outlet, framing, 1, 0)
    assert [f.rid for f in sink.wait(6)][5:] == [100]
    assert outlet.broken() == "" and inlet.refusal() == ""


@pytest.mark.parametrize("hello", [
    HELLO.pack(MAGIC, b"x" * 16, 0, 1),  # another token
    HELLO.pack(MAGIC, TOKEN, 0, 2),  # another boundary
    HELLO.pack(b"GET / HTTP/1.1\r\n", TOKEN, 0, 1),
])
def test_a_connection_without_the_pipelines_hello_is_dropped(ends, hello):
    _, sink, inlet, _ = ends
    inlet.reset(0)
    with socket.create_connection(inlet.address, timeout=5) as s:
        s.sendall(hello + bytes(4096))
        assert s.recv(10) == b""  # closed by the inlet
    assert sink.frames == []
    assert inlet.refusal() == ""  # a stranger is no reason to break the epoch's own connection


def test_an_older_epochs_connection_is_dropped_unheld_and_a_newer_one_supersedes(ends):
    framing, sink, inlet, outlet = ends
    inlet.reset(3)
    with socket.create_connection(inlet.address, timeout=5) as s:
        s.sendall(HELLO.pack(MAGIC, TOKEN, 2, 1))
        assert s.recv(10) == b""
    # A sender a recovery superseded while it connected: dropped, and no refusal held against
    # epoch 3 (that would start another recovery and count a death for nothing).
    assert inlet.refusal() == ""
    old = socket.create_connection(inlet.address, timeout=5)
    old.sendall(HELLO.pack(MAGIC, TOKEN, 3, 1))
    time.sleep(0.3)
    inlet.reset(4)  # the connection of epoch 3 is closed
    old.settimeout(5)
    assert old.recv(10) == b""
    old.close()
    outlet.reset(4, inlet.address)
    _send(outlet, framing, 4, 0)
    assert [f.rid for f in sink.wait(1)] == [400]


def test_a_frame_breaking_the_order_drops_the_connection_and_says_why(ends):
    framing, sink, inlet, outlet = ends
    inlet.reset(0)
    outlet.reset(0, inlet.address)
    _send(outlet, framing, 0, 1)  # message 1 where 0 is due
    deadline = time.monotonic() + 10
    while not (inlet.refusal() and outlet.broken()) and time.monotonic() < deadline:
        _send(outlet, framing, 0, 2)
        time.sleep(0.05)
    assert "expected message 0 of epoch 0, got 1 of 0" in inlet.refusal()
    assert "boundary 1" in outlet.broken() and sink.frames == []


def test_a_lost_receiver_leaves_the_outlet_broken_until_the_next_epoch(ends):
    framing, sink, inlet, outlet = ends
    inlet.reset(0)
    outlet.reset(0, inlet.address)
    _send(outlet, framing, 0, 0)
    sink.wait(1)
    inlet.close()  # the receiving stage is gone
    deadline = time.monotonic() + 10
    seq = 1
    while not outlet.broken() and time.monotonic() < deadline:
        _send(outlet, framing, 0, seq)
        seq += 1
        time.sleep(0.05)
    assert outlet.broken()
    outlet.reset(1, None)
    assert outlet.broken() == ""
    probe = Outlet(TOKEN, 1, "probe")  # connecting at once (a reset's probe) says why it cannot
    try:
        probe.reset(0, inlet.address)
        assert "refused" in probe.connect(2).lower() and probe.broken()
    finally:
        probe.close()


def test_clock_probes_measure_the_offset_over_the_data_path(ends):
    _, sink, inlet, _ = ends
    probe = ClockProbe(TOKEN)
    try:
        samples = [probe.sample(inlet.address, 1.0) for _ in range(20)]
        assert all(s is not None for s in samples)
        sent, received, remote = min(samples, key=lambda s: s[1] - s[0])
        assert sent <= remote <= received  # one clock here: the actor's stamp lies within the trip
        assert ClockProbe(b"x" * 16).sample(inlet.address, 1.0) is None  # another pipeline's token
    finally:
        probe.close()
    assert sink.frames == []


def test_an_output_the_receiver_would_refuse_fails_its_request_alone_and_the_link_stands(ends):
    """A stage output over the boundary's compiled size (say, a Tile of a request's repeats that
    no output check caught) leaves as that request's failure: were it sent, the receiver would
    refuse the frame and drop the connection, and the replay would break it again."""
    framing, sink, inlet, outlet = ends
    inlet.reset(0)
    outlet.reset(0, inlet.address)
    assert outlet.connect(5) == ""
    over = _arrays(1)
    over[2] = np.arange(9, dtype=np.int32).reshape(1, 9)  # 'ids' has room for 8
    outlet.send(0, framing.parts(epoch=0, seq=0, rid=7, status=OK, error=None, arrays=over, stamps=[]))
    _send(outlet, framing, 0, 1)
    first, second = sink.wait(2)
    assert (first.rid, first.status, first.arrays) == (7, ERROR, [])
    assert first.error is not None and first.error[0] == 0
    assert "request 7 cannot cross boundary 1: 'ids' should be" in first.error[2]
    assert "got shape [1, 9]" in first.error[2]
    assert second.status == OK and second.rid == 1
    np.testing.assert_array_equal(second.arrays[2], _arrays(1)[2])
    assert outlet.broken() == "" and inlet.refusal() == ""


def test_a_link_closed_by_a_recovery_is_no_break_of_the_next_epoch(ends):
    """An actor answers a ping while a reset is half done: its epoch already new, its outlet
    still on the old one, whose connection the recovery closed. Asked for the new epoch, the
    outlet reports nothing, so that recovery does not start another and count a death."""
    framing, sink, inlet, outlet = ends
    inlet.reset(0)
    outlet.reset(0, inlet.address)
    _send(outlet, framing, 0, 0)
    sink.wait(1)
    inlet.reset(1)  # the receiver is reset first: the epoch-0 connection is closed
    seq, deadline = 1, time.monotonic() + 30
    while not outlet.broken(0) and time.monotonic() < deadline:  # bounded: a sender that never
        _send(outlet, framing, 0, seq)                           # sees the close fails below
        seq += 1
        time.sleep(0.01)
    assert "boundary 1" in outlet.broken(0), "the outlet never reported its closed connection"
    assert outlet.broken(1) == "" and inlet.refusal(1) == ""
    outlet.reset(1, inlet.address)
    _send(outlet, framing, 1, 0)
    assert [f.rid for f in sink.wait(2)][1:] == [100]
    assert outlet.broken() == "" and inlet.refusal() == ""


def test_one_broken_link_is_one_death_of_the_stage_it_feeds():
    """The sender's 'broken' and the receiver's 'refused' are the same break: counted once,
    against the stage the link feeds (the results' way back: the last stage)."""
    from corepipe.runtime.ray.recovery import link_losses

    both = [(2, "boundary 2: refused"), (2, "boundary 2 to x: Broken pipe")]
    assert list(link_losses(both, set(), 3)) == [2]
    assert link_losses([(3, "back")], set(), 3) == {2: "back"}
    assert link_losses([(1, "a"), (2, "b")], {2}, 3) == {1: "a"}


# -- frames over dim ranges (ec61ef7) ---------------------------------------------------------------
RANGED = [TensorSpec("h", "float32", (4, 24, 8), dims=("batch", "sequence", None), min_shape=(1, 1, 8)),
          TensorSpec("ids", "int64", (4, 24), dims=("batch", "sequence"), min_shape=(1, 1))]


@pytest.mark.parametrize("batch,length", [(1, 1), (4, 24), (2, 9), (3, 24), (4, 1)])
def test_frames_carry_any_shape_within_the_dims_ranges(batch, length):
    """A boundary over dynamic dims: every shape within the ranges travels, the smallest, the
    largest and between (the framing once read only static shapes)."""
    framing = Framing(RANGED, stages=2, boundary=1)
    a, b = _pair()
    rng = np.random.default_rng(batch * 100 + length)
    arrays = [rng.standard_normal((batch, length, 8)).astype(np.float32),
              rng.integers(0, 50, (batch, length)).astype(np.int64)]
    a.send(framing.parts(epoch=0, seq=0, rid=1, status=OK, error=None, arrays=arrays, stamps=[]))
    got = framing.read(b, epoch=0, seq=0)
    for sent, came in zip(arrays, got.arrays):
        assert came.shape == sent.shape
        np.testing.assert_array_equal(came, sent)


@pytest.mark.parametrize("shape,match", [
    ((5, 3, 8), r"'h' should be float32\[batch=1..4,sequence=1..24,8\], got shape \[5, 3, 8\]"),
    ((2, 25, 8), r"got shape \[2, 25, 8\]"),
    ((2, 0, 8), r"got shape \[2, 0, 8\]"),
    ((2, 3, 9), r"got shape \[2, 3, 9\]"),
])
def test_a_shape_outside_the_dims_ranges_is_refused_before_any_data(shape, match):
    framing = Framing(RANGED, stages=2, boundary=1)
    a, b = _pair()
    good = [np.zeros((2, 3, 8), np.float32), np.zeros((2, 3), np.int64)]
    parts = framing.parts(epoch=0, seq=0, rid=1, status=OK, error=None, arrays=good, stamps=[])
    header = parts[0]
    base = 6  # _FIXED_WORDS: the first tensor's ndim, then its dims
    header[base + 1: base + 1 + 3] = shape
    a.send(parts)
    with pytest.raises(ProtocolError, match=match):
        framing.read(b, epoch=0, seq=0)


def test_strings_never_cross_a_boundary_so_the_stream_never_meets_one(tmp_path):
    """The ray backend falls back to the object store for a boundary carrying strings
    (`streamable`); compile never writes one: a cut where a string tensor would cross is
    refused, naming it."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh

    import corepipe

    nodes = [oh.make_node("Cast", ["x"], ["t"], to=TensorProto.STRING, name="tostr"),
             oh.make_node("Cast", ["t"], ["y"], to=TensorProto.INT64, name="toint")]
    graph = oh.make_graph(nodes, "strings", [oh.make_tensor_value_info("x", TensorProto.INT64, [3])],
                          [oh.make_tensor_value_info("y", TensorProto.INT64, [3])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(corepipe.CompileError, match="'t' is a object tensor, and only numpy tensors of standard"):
        corepipe.compile(model, tmp_path / "a", example_inputs={"x": np.arange(3)}, cuts=[1], engine="onnxruntime")
