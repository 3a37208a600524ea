"""The local backend: transparency through worker processes, ordering, back-pressure, close."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import compiled_chain
from graphcases import all_cases, run_reference

import corepipe
from corepipe import zoo

pytestmark = pytest.mark.usefixtures("no_leaks")


def _assert_same(out, ref, rtol=1e-5, atol=1e-5):
    assert list(out) == list(ref)
    for name, value in ref.items():
        assert out[name].dtype == value.dtype, name
        assert out[name].shape == value.shape, name
        np.testing.assert_allclose(out[name], value, rtol=rtol, atol=atol, err_msg=name)


CASES = {c.name: c for c in all_cases()}


@pytest.mark.parametrize("name", ["skip_far", "if_outer_scope", "loop_outer_scope", "shared_weight_far",
                                  "shape_arith_int64", "input_is_output", "initializer_is_output",
                                  "float16", "bool_and_int_tensors", "scalar_and_empty", "multi_io"])
def test_graph_cases_through_worker_processes(tmp_path, name):
    case = CASES[name]
    ref = run_reference(case.model, case.feeds)
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=3)
    with corepipe.load(cm.path) as pipe:
        outs = [f.result(timeout=60) for f in [pipe.submit(case.feeds) for _ in range(5)]]
    for out in outs:
        _assert_same(out, ref, case.rtol, case.atol)


@pytest.mark.parametrize("name,kwargs,cores", [
    ("resnet50", {"image_size": 64}, 4),
    ("densenet121", {"image_size": 64}, 3),
    ("bert", {"num_layers": 2, "hidden": 64, "heads": 2, "intermediate": 128, "vocab": 500, "seq": 16}, 2),
])
def test_real_architectures_through_worker_processes(tmp_path, name, kwargs, cores):
    model, feeds = zoo.get(name, **kwargs)
    ref = run_reference(model, feeds)
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=cores)
    with corepipe.load(cm.path) as pipe:
        for out in pipe.map([feeds] * 6):
            _assert_same(out, ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A 3-stage model whose output depends on its input, with reference answers."""
    return compiled_chain(tmp_path_factory.mktemp("chain"), 256 * 1024, requests=40, seed=1)


def test_concurrent_submit_keeps_order_and_answers(chain):
    path, feeds, refs = chain
    done_order: list[int] = []
    lock = threading.Lock()
    results: dict[int, tuple[int, object]] = {}

    with corepipe.load(path, max_in_flight=4) as pipe:
        def client(offset: int) -> None:
            for i in range(offset, len(feeds), 4):
                fut = pipe.submit(feeds[i])
                fut.add_done_callback(lambda f: (lock.acquire(), done_order.append(f.request_id), lock.release()))
                results[fut.request_id] = (i, fut)

        threads = [threading.Thread(target=client, args=(o,)) for o in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, fut in results.values():
            _assert_same(fut.result(timeout=60), refs[i])
    assert len(done_order) == len(feeds)
    assert done_order == sorted(done_order), "futures must complete in submission order"


def test_back_pressure_bounds_in_flight(chain):
    path, feeds, _ = chain
    with corepipe.load(path, max_in_flight=2) as pipe:
        futs = [pipe.submit(feeds[0]), pipe.submit(feeds[1])]
        assert pipe.stats().in_flight <= 2
        # Full: a third submit waits, then times out rather than growing the queue.
        timed_out = 0
        for _ in range(20):
            try:
                futs.append(pipe.submit(feeds[2], timeout=0))
            except TimeoutError as exc:
                timed_out += 1
                assert "in flight" in str(exc)
            assert pipe.stats().in_flight <= 2
        assert timed_out > 0
        for f in futs:
            f.result(timeout=60)


def test_map_pulls_a_generator_lazily(chain):
    path, feeds, refs = chain
    pulled = []

    def gen():
        for i, f in enumerate(feeds):
            pulled.append(i)
            yield f

    with corepipe.load(path, max_in_flight=3) as pipe:
        for i, out in enumerate(pipe.map(gen())):
            assert len(pulled) <= i + 1 + pipe.max_in_flight
            _assert_same(out, refs[i])
    assert len(pulled) == len(feeds)


def test_close_drains_then_refuses(chain):
    path, feeds, refs = chain
    pipe = corepipe.load(path)
    futs = [pipe.submit(f) for f in feeds[:8]]
    pipe.close()
    for fut, ref in zip(futs, refs):
        _assert_same(fut.result(timeout=0), ref)
    with pytest.raises(corepipe.PipelineClosedError):
        pipe.submit(feeds[0])
    pipe.close()  # idempotent


def test_close_with_zero_timeout_fails_the_rest_cleanly(chain):
    path, feeds, _ = chain
    pipe = corepipe.load(path, max_in_flight=16)
    futs = [pipe.submit(f) for f in feeds[:16]]
    pipe.close(timeout=0)
    outcomes = []
    for fut in futs:
        exc = fut.exception(timeout=10)
        outcomes.append(type(exc).__name__ if exc else "ok")
    assert set(outcomes) <= {"ok", "PipelineClosedError"}


def test_stats_add_up(chain):
    path, feeds, _ = chain
    with corepipe.load(path) as pipe:
        list(pipe.map(feeds[:20]))
        st = pipe.stats()
    assert st.completed == 20 and st.failed == 0 and st.in_flight == 0
    assert [s.requests for s in st.stages] == [20, 20, 20]
    for s in st.stages:
        assert s.pid and s.busy_s > 0 and 0 < s.busy_pct <= 100
        assert s.mean_service_s == pytest.approx(s.busy_s / s.requests)
    assert 0 < st.latency_p50_s <= st.latency_p90_s <= st.latency_p99_s
    assert len({s.pid for s in st.stages}) == 3


def test_exception_inside_with_block_cleans_up(chain):
    path, feeds, _ = chain
    with pytest.raises(RuntimeError, match="boom"), corepipe.load(path) as pipe:
        pipe.submit(feeds[0])
        raise RuntimeError("boom")


def test_workers_are_pinned(chain):
    path, _, _ = chain
    import psutil

    with corepipe.load(path, cores=[0]) as pipe:
        for pid in pipe.worker_pids():
            assert psutil.Process(pid).cpu_affinity() == [0]
        assert all(s.core == "0" for s in pipe.stats().stages)


def test_timeout_on_run(chain):
    """``run(timeout=)`` gives up with TimeoutError instead of waiting for the answer: the last
    stage's worker is stopped, so no answer can come in time (certain, not a race), and the
    pipeline answers again, rightly, once the worker goes on."""
    path, feeds, refs = chain
    with corepipe.load(path) as pipe:
        assert pipe.run(feeds[0], timeout=60)
        last = pipe.worker_pids()[-1]
        os.kill(last, signal.SIGSTOP)  # far below stage_timeout (60 s): held, not replaced
        try:
            with pytest.raises(TimeoutError, match=r"did not complete within 0\.2 s"):
                pipe.run(feeds[1], timeout=0.2)
        finally:
            os.kill(last, signal.SIGCONT)
        out = pipe.run(feeds[2], timeout=60)
        assert pipe.worker_pids()[-1] == last and pipe.stats().stages[-1].restarts == 0
    for name in refs[2]:
        np.testing.assert_allclose(out[name], refs[2][name], rtol=1e-5, atol=1e-5)


def test_done_callback_may_submit_again_when_full(chain):
    """Callbacks run on the collector thread; one that submits must not deadlock the pipeline."""
    path, feeds, refs = chain
    follow_ups = []
    with corepipe.load(path, max_in_flight=1) as pipe:
        def again(fut):
            if len(follow_ups) < 3:
                follow_ups.append(pipe.submit(feeds[len(follow_ups) + 1], timeout=10))
                follow_ups[-1].add_done_callback(again)

        first = pipe.submit(feeds[0])
        first.add_done_callback(again)
        _assert_same(first.result(timeout=30), refs[0])
        deadline = time.monotonic() + 30
        while (len(follow_ups) < 3 or not all(f.done() for f in follow_ups)) and time.monotonic() < deadline:
            time.sleep(0.01)
        for i, fut in enumerate(follow_ups):
            _assert_same(fut.result(timeout=1), refs[i + 1])


def test_pipeline_started_in_a_short_lived_thread_outlives_it(chain):
    """Linux kills a child when the *thread* that forked it exits (PR_SET_PDEATHSIG): a pipeline
    loaded inside a worker thread (an executor, asyncio.to_thread) must keep its workers."""
    path, feeds, refs = chain
    box = {}
    starter = threading.Thread(target=lambda: box.setdefault("pipe", corepipe.load(path)))
    starter.start()
    starter.join()
    pipe = box["pipe"]
    try:
        pids = pipe.worker_pids()
        time.sleep(0.5)
        outs = list(pipe.map(feeds[:10]))
        for out, ref in zip(outs, refs[:10]):
            _assert_same(out, ref)
        st = pipe.stats()
        assert [s.restarts for s in st.stages] == [0, 0, 0]
        assert pipe.worker_pids() == pids
    finally:
        pipe.close()


def test_no_completion_waits_for_the_service_tick(chain):
    """Callbacks only, submitters coming and going: every completion is reaped on a doorbell (by
    a listener, or the service thread woken for it), none found later by the service thread's
    one-second tick. A listener that stopped listening as a worker rang its doorbell used to
    leave the result to the tick (a p99 of 1 s in `tune --rate`)."""
    path, feeds, _refs = chain
    done = threading.Semaphore(0)
    total = 0
    with corepipe.load(path, max_in_flight=4) as pipe:
        for _ in range(6):
            def client(offset: int) -> None:
                for i in range(offset, len(feeds), 3):
                    pipe.submit(feeds[i]).add_done_callback(lambda f: done.release())

            threads = [threading.Thread(target=client, args=(o,)) for o in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            total += len(feeds)
        for _ in range(total):
            assert done.acquire(timeout=60)
        assert pipe._late_reaps == 0, f"{pipe._late_reaps} completions waited for the service tick"
