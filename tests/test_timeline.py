"""Request timelines: workers stamp enter/leave into the slot header, the client keeps the last N,
and `Timeline` reads phases, blocked time and stalls out of them (no timing thresholds: the
checks are orderings and counts, and a hand-made trace with known answers)."""

from __future__ import annotations

import itertools
import os
import signal
import time

import numpy as np
import pytest

import corepipe
from corepipe import TensorSpec, zoo
from corepipe.runtime.shm import Ring
from corepipe.runtime.timeline import RequestTrace, Timeline, TraceLog


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory: pytest.TempPathFactory):
    model, feeds = zoo.get("tiny_cnn")
    cm = corepipe.compile(model, tmp_path_factory.mktemp("tl") / "a", example_inputs=feeds, num_cores=3)
    return cm.path, feeds


def test_ring_carries_every_stage_stamp_to_the_next_ring() -> None:
    spec = [TensorSpec("x", "float32", (4,))]
    rings = [Ring.create(spec, 2, stages=3) for _ in range(4)]
    try:
        for k in range(3):  # what workers 0, 1, 2 do for one request in slot 1
            rings[k + 1].stamp(1, rings[k], k, 10.0 * k + 1, 10.0 * k + 2)
        assert rings[3].stamps(1) == [(1.0, 2.0), (11.0, 12.0), (21.0, 22.0)]
        assert rings[3].stamps(0) == [(0.0, 0.0)] * 3  # the other slot is untouched
        rings[3].write(1, {"x": np.ones(4, np.float32)})  # data and shapes leave stamps alone
        assert rings[3].stamps(1)[2] == (21.0, 22.0)
        plain = Ring.create(spec, 2)  # a ring without room for stamps ignores them
        plain.stamp(0, rings[0], 0, 1.0, 2.0)
        assert plain.stamps(0) == []
        plain.close(unlink=True)
    finally:
        for r in rings:
            r.close(unlink=True)


def _trace(rid: int, fed: float, stages: list[tuple[float, float]], done: float, replays: int = 0) -> RequestTrace:
    return RequestTrace(rid, fed, fed, tuple(stages), done, replays=replays)


def test_phases_blocked_and_stalls_of_a_known_trace() -> None:
    # Two stages, one slot per ring, every run 1 s: stage 0 must wait for stage 1 to free the
    # slot it writes into (blocked), and once it idles 0.5 s with everything ready (a stall).
    reqs = (
        _trace(0, 0.0, [(0.0, 1.0), (1.0, 3.0)], 3.0),
        _trace(1, 0.0, [(3.0, 4.0), (4.0, 6.0)], 6.0),  # blocked 1..3: request 0 held the slot
        _trace(2, 0.0, [(6.5, 7.5), (7.5, 9.5)], 9.5),  # blocked 4..6, then stalled 6..6.5
    )
    tl = Timeline(stages=2, slots=1, requests=reqs)
    assert tl.phases() == (0.0, 1.0, 7.5, 9.5)
    waits = sorted((w.stage, w.kind, w.start, w.end) for w in tl.waits())
    assert waits == [(0, "blocked", 1.0, 3.0), (0, "blocked", 4.0, 6.0), (0, "stall", 6.0, 6.5)]
    replayed = Timeline(stages=2, slots=1, requests=reqs[:2] + (_trace(2, 0.0, [(6.5, 7.5), (7.5, 9.5)], 9.5, 1),))
    assert [w.kind for w in replayed.waits()] == ["blocked"]  # no slot arithmetic across a replay


def test_trace_log_is_bounded() -> None:
    log = TraceLog(keep=5)
    for i in range(12):
        log.add(_trace(i, i, [(i, i + 1)], i + 1))
    tl = log.timeline(stages=1, slots=2)
    assert [r.request_id for r in tl.requests] == [7, 8, 9, 10, 11] and tl.dropped == 7
    assert [r.request_id for r in log.timeline(1, 2, last=2).requests] == [10, 11]


@pytest.mark.parametrize("backend", ["local", "inline"])
@pytest.mark.usefixtures("no_leaks")
def test_every_request_has_an_ordered_path(tiny3, backend: str) -> None:
    path, feeds = tiny3
    with corepipe.load(path, backend=backend) as pipe:
        for _ in pipe.map([feeds] * 25):
            pass
        tl = pipe.timeline()
    assert tl.stages == 3 and len(tl.requests) == 25 and tl.dropped == 0
    assert [r.request_id for r in tl.requests] == list(range(25))
    for r in tl.requests:
        times = [r.submitted, r.fed] + [t for pair in r.stages for t in pair] + [r.completed]
        assert times == sorted(times), r  # one clock across the worker processes
        assert r.ok and r.replays == 0
    for k in range(3):  # a stage runs one request at a time, in order
        runs = [r.stages[k] for r in tl.requests]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs))


@pytest.mark.usefixtures("no_leaks")
def test_a_worker_death_shows_as_a_recovery_and_replayed_requests(tiny3) -> None:
    path, feeds = tiny3
    with corepipe.load(path, max_in_flight=6) as pipe:
        pipe.run(feeds)
        last = pipe.worker_pids()[2]
        os.kill(last, signal.SIGSTOP)  # requests pile up in front of the last stage...
        futures = [pipe.submit(feeds) for _ in range(5)]
        deadline = time.monotonic() + 30
        while pipe.stats().stages[1].requests < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(last, signal.SIGKILL)  # ...and are replayed after it dies
        for f in futures:
            f.result(timeout=60)
        tl = pipe.timeline()
    assert len(tl.requests) == 6
    assert [rec.stages for rec in tl.recoveries] == [(2,)]
    assert sum(1 for r in tl.requests if r.replays) >= 3
    assert all(r.replays == 0 for r in tl.requests[:1])
