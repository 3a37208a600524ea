"""The ``backoff`` restart policy of the local backend: a stage that keeps dying is restarted after
a growing wait instead of breaking the pipeline, is reported down meanwhile, and loses no request."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import compiled_chain

import corepipe

pytestmark = pytest.mark.usefixtures("no_leaks")


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_backoff_reports_the_stage_down_then_serves_every_request(tmp_path):
    path, feeds, refs = compiled_chain(tmp_path, 256 * 1024, requests=40, seed=5)
    with corepipe.load(path, restart="backoff", max_deaths=1, backoff_s=1.0, backoff_max_s=8.0) as pipe:
        assert pipe.readiness() == (True, "", 0.0)
        outs = [pipe.submit(f) for f in feeds[:10]]
        os.kill(pipe.worker_pids()[1], signal.SIGKILL)
        _wait_for(lambda: not pipe.readiness()[0])
        _, why, retry = pipe.readiness()
        assert "stage 1 is down" in why and "restarting in 1.0 s" in why, why
        assert 0 < retry <= 1.0
        # Requests submitted while the stage is down wait and run once it is back.
        outs += [pipe.submit(f) for f in feeds[10:]]
        _wait_for(lambda: pipe.readiness()[0])
        results = [f.result(timeout=60) for f in outs]
        # A second death within the window doubles the wait.
        os.kill(pipe.worker_pids()[1], signal.SIGKILL)
        _wait_for(lambda: not pipe.readiness()[0])
        assert "restarting in 2.0 s" in pipe.readiness()[1]
        _wait_for(lambda: pipe.readiness()[0])
        again = pipe.run(feeds[0], timeout=60)
        st = pipe.stats()
    assert st.stages[1].restarts == 2 and st.failed == 0
    for out, ref in zip(results + [again], refs + [refs[0]]):
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)
    assert pipe.readiness()[0] is False  # closed


def test_restart_policy_is_checked(tmp_path):
    path, _, _ = compiled_chain(tmp_path, 1024, requests=1, seed=1)
    with pytest.raises(corepipe.CorepipeError, match="restart policy 'forever' is unknown"):
        corepipe.load(path, restart="forever")
    with pytest.raises(corepipe.CorepipeError, match="backoff_s"):
        corepipe.load(path, restart="backoff", backoff_s=5, backoff_max_s=1)
