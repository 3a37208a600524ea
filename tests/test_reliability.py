"""Failures the local backend must survive: dead and stuck workers, failing requests, a client
that dies or is interrupted. Each test provokes the failure for real (signals, bad values)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import compiled_chain, shm_segments, wait_gone
from graphcases import case_index_from_request, run_reference

import corepipe

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A 3-stage model whose output depends on its input, with reference answers."""
    return compiled_chain(tmp_path_factory.mktemp("chain"), 1024 * 1024, requests=200, seed=2)


def _check(outs, refs):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def test_kill_9_mid_stream_replays_every_request_in_order(chain):
    path, feeds, refs = chain
    with corepipe.load(path) as pipe:
        killed = []

        def killer():
            for stage in (1, 2, 0):
                time.sleep(0.15)
                pid = pipe.worker_pids()[stage]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        t = threading.Thread(target=killer)
        t.start()
        outs = list(pipe.map(feeds))
        t.join()
        st = pipe.stats()
    _check(outs, refs)
    assert len(killed) == 3
    assert sum(s.restarts for s in st.stages) >= 1
    assert st.completed == len(feeds) and st.failed == 0


def test_stuck_worker_past_stage_timeout_is_replaced(chain):
    path, feeds, refs = chain
    with corepipe.load(path, stage_timeout=1.0) as pipe:
        futs = [pipe.submit(f) for f in feeds[:4]]
        for f in futs:
            f.result(timeout=60)
        stuck = pipe.worker_pids()[1]
        os.kill(stuck, signal.SIGSTOP)  # hangs: neither works nor dies
        outs = list(pipe.map(feeds[:30]))
        assert pipe.stats().stages[1].restarts == 1
        assert pipe.worker_pids()[1] != stuck  # replaced, not waited for
    assert wait_gone([stuck]) == [], "the stuck worker was not stopped"
    _check(outs, refs[:30])


def test_stage_that_keeps_dying_fails_its_requests_instead_of_looping(chain):
    path, feeds, _ = chain
    with corepipe.load(path, max_deaths=3, death_window=60) as pipe:
        stop = threading.Event()

        def serial_killer():
            seen = set()
            while not stop.is_set():
                pid = pipe.worker_pids()[1]
                if pid not in seen:
                    seen.add(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)

        t = threading.Thread(target=serial_killer, daemon=True)
        t.start()
        futs = [pipe.submit(f, timeout=30) for f in feeds[:6]]
        errors = [f.exception(timeout=60) for f in futs]
        stop.set()
        t.join()
        assert all(isinstance(e, corepipe.StageError) for e in errors), errors
        assert all(e.stage == 1 for e in errors)
        assert any("died 3 times" in str(e) for e in errors)
        with pytest.raises(corepipe.PipelineClosedError, match="died 3 times"):
            pipe.submit(feeds[0])


def test_one_failing_request_fails_alone_with_a_stage_tagged_error(tmp_path):
    case = case_index_from_request()  # an index computed from the request: only its stage can check it
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=2,
                          engine="onnxruntime")
    ids_name = next(n for n, v in case.feeds.items() if v.dtype == np.int64)
    bad = dict(case.feeds)
    bad[ids_name] = np.full_like(case.feeds[ids_name], 10**9)  # out of the table: Gather raises
    ref = run_reference(case.model, case.feeds)
    for backend in ("local", "inline"):
        with corepipe.load(cm.path, backend=backend) as pipe:
            futs = [pipe.submit(case.feeds), pipe.submit(bad), pipe.submit(case.feeds)]
            exc = futs[1].exception(timeout=60)
            assert isinstance(exc, corepipe.StageError), backend
            assert exc.stage == 0 and exc.request_id == 1, backend
            assert exc.node, backend
            assert f"stage {exc.stage}" in str(exc) and exc.node in str(exc)
            for f in (futs[0], futs[2]):
                out = f.result(timeout=60)
                for name in ref:
                    np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)
            assert pipe.run(case.feeds)  # and the pipeline goes on


_CLIENT = textwrap.dedent("""
    import json, signal, sys, numpy as np, corepipe
    # Ctrl-C as a user's Python gets it, even where the test runner was started with SIGINT ignored
    # (a background job of a shell script): Python keeps an inherited SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path, mode = sys.argv[1], sys.argv[2]
    pipe = corepipe.load(path)
    print(json.dumps({"pids": pipe.worker_pids(), "shm": pipe.shm_names()}), flush=True)
    feeds = {s.name: np.zeros(s.shape, s.dtype) for s in pipe.plan.inputs}
    if mode == "with":
        with pipe:
            while True:
                list(pipe.map([feeds] * 8))
    while True:
        list(pipe.map([feeds] * 8))
""")


@pytest.mark.parametrize("sig,mode", [(signal.SIGKILL, "bare"), (signal.SIGINT, "with"),
                                      (signal.SIGINT, "bare"), (signal.SIGTERM, "bare")])
def test_client_death_or_ctrl_c_leaves_nothing_behind(chain, tmp_path, sig, mode):
    path, _, _ = chain
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    # This checkout's corepipe, not whichever one is pip-installed (they differ in a worktree).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(corepipe.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        info = json.loads(proc.stdout.readline())
        time.sleep(0.5)  # mid-stream
        assert all(f in shm_segments() for f in info["shm"])
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:  # a client that outlives a failed test would fail every later test's leak check
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone(info["pids"], timeout=10) == [], "workers outlived their client"
    deadline = time.monotonic() + 10
    while set(info["shm"]) & shm_segments() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(info["shm"]) & shm_segments() == set(), "shared memory outlived its client"


def _slow_on_demand_model():
    """x -> Relu -> Loop(n times: y = 0.5 * y + 1) -> Tanh. The trip count comes from the
    request, so one request can keep its stage busy for as long as a test needs."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Mul", ["y_in", "half"], ["y_half"]),
            helper.make_node("Add", ["y_half", "one"], ["y_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_out", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Neg", ["r"], ["r2"]),
            helper.make_node("Loop", ["n", "", "r2"], ["looped"], body=body),
            helper.make_node("Tanh", ["looped"], ["t"]),
            helper.make_node("Neg", ["t"], ["y"]),
        ],
        "slow_on_demand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("restart", ["give-up", "backoff"])
def test_request_that_kills_its_worker_twice_fails_alone(tmp_path, restart):
    from corepipe.runtime.shm import Control

    model = _slow_on_demand_model()
    rng = np.random.default_rng(3)
    poison, stage = 5, 1
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32),
              "n": np.array(2_000_000 if i == poison else 3, dtype=np.int64)} for i in range(10)]
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds[0], cuts=[2, 3])
    assert cm.stages[stage].first_op == "Loop"
    # "backoff" with max_deaths=1: every death of the stage is past the limit, so each restart
    # waits; the poison request is still the only one that fails.
    options = {"max_deaths": 1, "backoff_s": 0.2} if restart == "backoff" else {}
    with corepipe.load(cm.path, max_in_flight=10, stage_timeout=120, restart=restart, **options) as pipe:
        control = pipe._control
        kills = []

        def assassin():
            deadline = time.monotonic() + 60
            while len(kills) < 2 and time.monotonic() < deadline:
                busy = control.get(stage, Control.BUSY_SINCE) > 0
                if busy and int(control.get(stage, Control.CURRENT)) == poison:
                    pid = pipe.worker_pids()[stage]
                    if pid not in kills:
                        os.kill(pid, signal.SIGKILL)
                        kills.append(pid)
                time.sleep(0.005)

        t = threading.Thread(target=assassin)
        t.start()
        futs = [pipe.submit(f) for f in feeds]
        outcomes = [f.exception(timeout=120) for f in futs]
        t.join()
    assert len(kills) == 2
    assert isinstance(outcomes[poison], corepipe.StageError)
    assert outcomes[poison].request_id == poison and "died twice" in str(outcomes[poison])
    for i, (fut, exc) in enumerate(zip(futs, outcomes)):
        if i != poison:
            assert exc is None, (i, exc)
            _check([fut.result()], [run_reference(model, feeds[i])])
