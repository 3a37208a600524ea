"""A stage's Ray actor: loads its stage once (verified) and keeps the weights resident, runs the
requests it receives in order, and pushes each result straight to the next stage's actor.

Two data paths. ``stream`` (the default where it can run): each boundary is one TCP connection
from producer to consumer carrying slot frames (`corepipe.runtime.ray.stream`), so no Ray call
and nothing is pickled on a request's way. ``object-store``: messages are Ray calls of plain data, ints,
floats, short strings and lists of numpy arrays (Ray carries the arrays through its object store;
the receiver reads them in place). Either way each stage's (enter, leave) wall-clock stamps ride
along for the driver's timelines, a failure travels as ``(stage, node, message)`` and never as an
exception object, and every array is checked against the boundary's compiled dtype and shape on
arrival, before the stage sees it.

Threads inside the actor: the stream's reader (or Ray's ``data`` group running `StageActor.push`)
only files each message by sequence number; the ``control`` group runs the driver's `reset`,
`ping` and `take` calls; the actor's own *compute* thread runs the stage on message ``seq`` = 0,
1, 2... of the current epoch, whatever order they arrived in, and hands the result on (to the
stream's sender thread, or as a Ray call). A `reset` to a new epoch (the driver is recovering from
a dead actor) drops every message and result of the old one.
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from ...artifact.plan import TensorSpec
from ...artifact.signature import tensor_problem
from ...errors import CorepipeError, StageError
from .framing import Frame, Framing
from .stream import Inlet, Outlet

__all__ = ["StageActor", "OK", "ERROR", "GROUPS"]

OK, ERROR = 0, 1
#: Ray concurrency groups: one thread files data messages, a few answer the driver at once.
GROUPS = {"data": 1, "control": 4}
#: A failure as it travels: (stage index, node name or "", message).
Failure = tuple[int, str, str]


def _method(**options: Any) -> Any:
    """`ray.method` with ``options``. A Ray Client driver's `ray.method` knows fewer options
    (not ``enable_task_events``) and refuses the rest, which made this module fail to import
    there: it drops what it does not know. The actor's own process, never a client, keeps all."""
    try:
        return ray.method(**options)
    except AssertionError:
        options.pop("enable_task_events", None)
        return ray.method(**options)


@dataclass
class _Message:
    seq: int
    rid: int
    sent_at: float
    arrived: float
    status: int
    error: Failure | None
    arrays: list[np.ndarray]
    stamps: list[float]


def _stamps(value: Any, count: int) -> list[float]:
    """The (enter, leave) stamps of the ``count`` stages before, as floats (zeros if malformed)."""
    if isinstance(value, list) and len(value) == count and all(isinstance(x, float) for x in value):
        return value
    return [0.0] * count


def check_arrays(specs: list[TensorSpec], arrays: Any, where: str) -> list[np.ndarray]:
    """The arrays of a message, checked against the boundary's specs (count, type, dtype, shape).

    Raises:
        CorepipeError: anything but a list of numpy arrays of the compiled dtypes and shapes.
    """
    if not isinstance(arrays, (list, tuple)) or len(arrays) != len(specs):
        raise CorepipeError(f"{where}: expected {len(specs)} arrays, got {type(arrays).__name__}")
    for spec, arr in zip(specs, arrays):
        if type(arr) is not np.ndarray or str(arr.dtype) != spec.dtype:
            got = f"{arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise CorepipeError(f"{where}: {spec.name!r} should be {spec.describe()}, got {got}")
        if tensor_problem(spec, arr) is not None:  # the rule every stage's outputs are held to
            raise CorepipeError(
                f"{where}: {spec.name!r} should be {spec.describe()}, got shape {list(arr.shape)}"
            )
    return list(arrays)


def _failure(exc: BaseException, stage: int, rid: int) -> Failure:
    if isinstance(exc, StageError):
        return (exc.stage, exc.node or "", str(exc))
    return (stage, "", f"stage {stage} failed on request {rid}: {type(exc).__name__}: {exc}")


class StageActor:
    """Stage ``index`` of ``num_stages``; ``specs_in``/``specs_out``: its boundaries as plain dicts;
    ``token``: the pipeline's stream token (None: the object-store path only)."""

    def __init__(self, index: int, num_stages: int, specs_in: list[dict[str, Any]],
                 specs_out: list[dict[str, Any]], threads: int, token: bytes | None = None) -> None:
        self.index = index
        self.last = index == num_stages - 1
        self._specs_in = [TensorSpec.from_dict(d) for d in specs_in]
        self._names_in = [s.name for s in self._specs_in]
        self._names_out = [TensorSpec.from_dict(d).name for d in specs_out]
        self._threads = max(1, int(threads))
        self._runner: Any = None
        self._cv = threading.Condition()
        self._epoch = -1  # nothing flows until the driver's first reset
        self._next_seq = 0
        self._inbox: dict[int, _Message] = {}
        self._results: collections.deque[tuple[Any, ...]] = collections.deque()
        self._downstream: Any = None
        self._streaming = False
        self._busy_since = 0.0
        self._current = -1
        self._requests = 0
        self._busy_s = 0.0
        self._handoffs = 0
        self._handoff_s = 0.0
        self._stopped = False
        self._inlet: Inlet | None = None
        self._outlet: Outlet | None = None
        self._framing_out: Framing | None = None
        if token is not None:
            specs_out_t = [TensorSpec.from_dict(d) for d in specs_out]
            self._framing_out = Framing(specs_out_t, num_stages, index + 1)
            self._inlet = Inlet(ray.util.get_node_ip_address(), token,
                                Framing(self._specs_in, num_stages, index), self._take_frame,
                                f"corepipe-stage{index}")
            self._outlet = Outlet(token, index + 1, f"corepipe-stage{index}")
        self._thread = threading.Thread(target=self._compute_loop, name="corepipe-stage", daemon=True)
        self._thread.start()

    # -- set-up (default group) --------------------------------------------------------------
    def describe(self, path: str | None = None, manifest: str = "") -> dict[str, Any]:
        """Where this actor runs, which corepipe it imports, and whether it sees the artifact at
        ``path`` (the very manifest the driver verified)."""
        import corepipe

        from ...artifact.transfer import manifest_sha256

        sees = False
        if path:
            try:
                sees = manifest_sha256(path) == manifest
            except Exception:  # not there, not readable, not an artifact: ship it instead
                sees = False
        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(), "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
            "version": corepipe.__version__, "module": os.path.dirname(corepipe.__file__),
            "sees_artifact": sees, "now": time.time(),
            "inlet": list(self._inlet.address) if self._inlet is not None else None,
        }

    def load(self, path: str | None, manifest: str, payload: dict[str, bytes] | None) -> float:
        """Load the stage once: from the shared ``path``, or from ``payload`` (bytes the driver
        shipped; every hash checked here). Returns the seconds it took.

        Raises:
            ArtifactError: the artifact or payload fails verification.
        """
        from ...artifact.transfer import open_stage, receive_stage
        from ...engines import StageRunner

        start = time.perf_counter()
        if payload is not None:
            with tempfile.TemporaryDirectory(prefix=f"corepipe-ray-stage{self.index}-") as tmp:
                artifact = receive_stage(payload, self.index, tmp, manifest)
                del payload
                self._runner = StageRunner(artifact, self.index, threads=self._threads, spin=False)
        else:
            artifact = open_stage(str(path), self.index, manifest)
            self._runner = StageRunner(artifact, self.index, threads=self._threads, spin=False)
        return time.perf_counter() - start

    # -- data path ---------------------------------------------------------------------------
    # Fire and forget, and no task events: per request, the data path costs one RPC per hop.
    @_method(concurrency_group="data", num_returns=0, enable_task_events=False)
    def push(self, epoch: int, seq: int, rid: int, sent_at: float, status: int,
             error: Failure | None, arrays: list[np.ndarray], stamps: list[float]) -> None:
        """File message ``seq`` of ``epoch`` (request ``rid``) for the compute thread. Messages of
        another epoch are dropped: they belong to requests the driver replays."""
        arrived = time.time()
        if status == OK:
            try:
                arrays = check_arrays(self._specs_in, arrays, f"stage {self.index} input of request {rid}")
            except CorepipeError as exc:
                status, error, arrays = ERROR, (self.index, "", str(exc)), []
        elif not (isinstance(error, tuple) and len(error) == 3):
            status, error, arrays = ERROR, (self.index, "", f"request {rid} failed upstream"), []
        else:
            error = (int(error[0]), str(error[1]), str(error[2]))
            arrays = []
        self._file(_Message(seq, rid, float(sent_at), arrived, status, error, arrays,
                            _stamps(stamps, 2 * self.index)), epoch)

    def _take_frame(self, frame: Frame) -> None:
        """The stream's reader: a frame, read and checked against the boundary (`Framing.read`)."""
        self._file(_Message(frame.seq, frame.rid, frame.sent_at, frame.arrived, frame.status,
                            frame.error, frame.arrays, frame.stamps[: 2 * self.index]), frame.epoch)

    def _file(self, msg: _Message, epoch: int) -> None:
        with self._cv:
            if epoch != self._epoch or msg.seq < self._next_seq:
                return
            self._inbox[msg.seq] = msg
            self._cv.notify_all()

    def _compute_loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and self._next_seq not in self._inbox:
                    self._cv.wait()
                if self._stopped:
                    return
                msg = self._inbox.pop(self._next_seq)
                self._next_seq += 1
                epoch = self._epoch
                self._busy_since, self._current = time.time(), msg.rid
                self._handoffs += 1
                self._handoff_s += msg.arrived - msg.sent_at  # raw: the driver corrects clock offsets
            start, entered = time.perf_counter(), time.time()
            status, error, out = msg.status, msg.error, []
            if status == OK:
                try:
                    result = self._runner.run(dict(zip(self._names_in, msg.arrays)), request_id=msg.rid)
                    out = [result[name] for name in self._names_out]
                except Exception as exc:  # StageError, or anything the engine raised
                    status, error = ERROR, _failure(exc, self.index, msg.rid)
            del msg.arrays  # let the object store release the input now
            stamps = [*msg.stamps, entered, time.time()]
            with self._cv:
                self._busy_since, self._current = 0.0, -1
                self._requests += 1
                self._busy_s += time.perf_counter() - start
                if epoch != self._epoch:
                    continue  # a reset came while we ran: this result belongs to a dead epoch
                downstream = self._downstream
                if self._outlet is not None and self._framing_out is not None and self._streaming:
                    self._outlet.send(epoch, self._framing_out.parts(
                        epoch=epoch, seq=msg.seq, rid=msg.rid, status=status, error=error, arrays=out,
                        stamps=stamps))
                    continue
                if self.last:
                    self._results.append((msg.seq, msg.rid, time.time(), status, error, out, stamps))
                    self._cv.notify_all()
                    continue
            downstream.push.remote(epoch, msg.seq, msg.rid, time.time(), status, error, out, stamps)

    # -- control (driver) --------------------------------------------------------------------
    @_method(concurrency_group="control")
    def reset(self, epoch: int, downstream: Any, stream: bool = False) -> str:
        """Start ``epoch``: drop what the old one left, expect message 0 next, and send results
        to ``downstream``: on the object-store path the next stage's actor (``None`` for the last
        stage); on the stream (``stream``), the ``[ip, port]`` of the next stage's or the
        client's inlet, connected to now. Returns "" or why that connection failed."""
        with self._cv:
            self._epoch = epoch
            self._next_seq = 0
            self._inbox.clear()
            self._results.clear()
            self._streaming = stream
            self._downstream = None if stream else downstream
            self._cv.notify_all()
        if self._inlet is None or self._outlet is None:
            return "" if not stream else f"stage {self.index} was started without a stream"
        self._inlet.reset(epoch)
        address = (str(downstream[0]), int(downstream[1])) if stream and downstream else None
        self._outlet.reset(epoch, address)
        return self._outlet.connect(5.0) if address is not None else ""

    @_method(concurrency_group="control", enable_task_events=False)
    def take(self, epoch: int, wait_s: float) -> tuple[int, list[tuple[Any, ...]]]:
        """Last stage: the finished results of ``epoch`` in order, waiting up to ``wait_s`` for the
        first. Each is ``(seq, rid, ready_at, status, error, arrays, stamps)``."""
        deadline = time.monotonic() + wait_s
        with self._cv:
            while not self._results and not self._stopped and epoch == self._epoch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            if epoch != self._epoch:
                return self._epoch, []
            out = list(self._results)
            self._results.clear()
        return epoch, out

    @_method(concurrency_group="control", enable_task_events=False)
    def ping(self) -> dict[str, Any]:
        """Liveness and counters: the actor's clock, what it runs since when, totals."""
        with self._cv:
            epoch = self._epoch
        # A reset may be half done as this answers (the actor's epoch new, its ends still on the
        # old one): report only what broke in the epoch reported, never the old epoch's links.
        broken = self._outlet.broken(epoch) if self._outlet is not None and self._streaming else ""
        refused = self._inlet.refusal(epoch) if self._inlet is not None and self._streaming else ""
        with self._cv:
            return {
                "now": time.time(), "epoch": epoch, "busy_since": self._busy_since,
                "current": self._current, "requests": self._requests, "busy_s": self._busy_s,
                "queued": len(self._inbox), "handoffs": self._handoffs, "handoff_s": self._handoff_s,
                "broken": broken, "refused": refused,
            }

    @_method(concurrency_group="control")
    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for end in (self._inlet, self._outlet):
            if end is not None:
                end.close()
