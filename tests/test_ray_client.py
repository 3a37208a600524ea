"""A Ray Client driver (``ray.init("ray://...")``): the ``ray`` backend takes the object store
(the stream needs the driver on a node of the cluster) and answers right; ``data_path="stream"``
is refused saying why. The driver runs in its own process against a loopback cluster with a
Ray Client server. (Until issue 28 the backend could not even be imported under a Ray Client:
the client's ``ray.method`` refused ``enable_task_events``.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import sys, numpy as np, ray
ray.init(sys.argv[1], runtime_env={"env_vars": {"PYTHONPATH": sys.argv[2]}})
import corepipe
from graphcases import big_weight_model, run_reference
case = big_weight_model([16 * 1024] * 4)
corepipe.compile(case.model, sys.argv[3], example_inputs=case.inputs(), num_cores=2)
rng = np.random.default_rng(0)
feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(6)]
with corepipe.load(sys.argv[3], backend="ray") as pipe:
    print("data_path", pipe.data_path)
    for f, out in zip(feeds, pipe.map(feeds)):
        ref = run_reference(case.model, f)
        assert all(np.allclose(out[k], ref[k], rtol=1e-5, atol=1e-5) for k in ref)
    print("answers", len(feeds), pipe.stats().completed)
try:
    corepipe.load(sys.argv[3], backend="ray", data_path="stream")
except corepipe.CorepipeError as exc:
    print("refused:", exc)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_ray_client_driver_takes_the_object_store(tmp_path):
    port = _free_port()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False, "ray_client_server_port": port})
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        for attempt in range(2):
            run = subprocess.run([sys.executable, "-c", DRIVER, f"ray://127.0.0.1:{port}", str(ROOT),
                                  str(tmp_path / f"a{attempt}")], env=env, capture_output=True, text=True, timeout=300)
            # Ray's client proxy once aborted starting the per-client server (gRPC's epoll "Check
            # failed: next_worker->state == KICKED", in Ray's own process): that is Ray's, so once
            # more; any other failure fails the test at once.
            if "Starting Ray client server failed" not in run.stderr:
                break
    finally:
        c.shutdown()
    out = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, out
    assert "data_path object-store" in run.stdout and "answers 6 6" in run.stdout, out
    assert "refused: data_path='stream' needs the driver on a node of the cluster; a Ray Client" in run.stdout, out
