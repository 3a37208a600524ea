"""The server's life: a stage that keeps dying (not ready, fail fast, back), SIGTERM in the middle
of a load (accepted requests answered, exit 0, nothing left), a model that cannot start, and
start-up errors. Each test starts its own `corepipe serve` process."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time

import onnx
import pytest
from conftest import wait_gone
from serving import Server, auth, check, get, inputs, json_request, metric, outputs, post

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

from corepipe.runtime.process import module_command

pytestmark = pytest.mark.slow


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_stage_down_then_back_then_sigterm_mid_load_answers_accepted_requests(serve_repo):
    server = Server.start(serve_repo.path / "chain", "--max-deaths", "1", "--backoff", "3", "--verbose")
    pids = [w.pid for w in server.workers()]
    try:
        client = httpclient.InferenceServerClient(server.http)
        gclient = grpcclient.InferenceServerClient(server.grpc)
        # A stage that keeps dying (here: every death, --max-deaths 1) is down for the backoff.
        victim = server.worker_of("chain", 0)
        victim.kill()
        _wait(lambda: get(server, "/v2/health/ready")[0] == 503)
        assert get(server, "/v2/models/chain/ready") == (503, b"")  # the status alone; the index says why
        (row,) = json.loads(post(server, "/v2/repository/index", "{}")[2])
        assert row["state"] == "UNAVAILABLE" and "stage 0 is down" in row["reason"]
        assert not client.is_model_ready("chain") and not gclient.is_server_ready()
        # Requests fail fast rather than wait for the restart: refused at the door with 503 /
        # UNAVAILABLE, the reason and when to retry (a request that waited would be answered).
        status, hdrs, data = post(server, "/v2/models/chain/infer", json_request(serve_repo.feeds[0]))
        error = json.loads(data)["error"]
        assert status == 503 and "is not ready" in error and "stage 0 is down" in error, error
        assert int(hdrs["retry-after"]) >= 1
        with pytest.raises(InferenceServerException, match="UNAVAILABLE") as refused_grpc:
            gclient.infer("chain", inputs(grpcclient, serve_repo.feeds[0]))
        assert "is not ready" in str(refused_grpc.value) and "stage 0 is down" in str(refused_grpc.value)
        _wait(lambda: get(server, "/v2/health/ready")[0] == 200)
        check(outputs(client.infer("chain", inputs(httpclient, serve_repo.feeds[1])), serve_repo.refs[1]),
              serve_repo.refs[1])
        pids += [w.pid for w in server.workers()]

        # SIGTERM in the middle of a load: every request the server accepted is answered.
        answered, refused, wrong = [], [], []
        go = threading.Barrier(7)

        def load(k):
            c = grpcclient.InferenceServerClient(server.grpc) if k % 2 else httpclient.InferenceServerClient(server.http)
            module = grpcclient if k % 2 else httpclient
            go.wait()
            for j in range(200):
                i = (k + j) % len(serve_repo.feeds)
                try:
                    r = c.infer("chain", inputs(module, serve_repo.feeds[i]))
                except Exception as exc:  # after the listener closed: refused, never half-answered
                    refused.append(str(exc))
                    return
                try:
                    check(outputs(r, serve_repo.refs[i]), serve_repo.refs[i])
                    answered.append(time.monotonic())
                except AssertionError as exc:
                    wrong.append(str(exc))

        threads = [threading.Thread(target=load, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        go.wait()
        _wait(lambda: len(answered) >= 30)
        # Hold requests in flight for certain: the last stage's worker stops (far below the stage
        # timeout, so it is held, not replaced) until the server has begun to drain; each of the
        # 6 clients then has one request in the pipeline that cannot complete before SIGTERM.
        held = server.worker_of("chain", 2)
        held.suspend()
        try:
            _wait(lambda: metric(server, 'corepipe_requests_in_flight{model="chain"}') >= 6)
            sent_at = time.monotonic()
            server.proc.send_signal(15)
            _wait(lambda: any("draining" in line for line in server.lines))
        finally:
            held.resume()
        code = server.proc.wait(timeout=60)
        for t in threads:
            t.join(60)
    finally:
        server.kill()
    assert code == 0, "\n".join(server.lines)
    assert wrong == []
    assert all("500" not in r and "INTERNAL" not in r for r in refused), refused
    assert sum(t >= sent_at for t in answered) >= 6, "the 6 requests held in flight were not all answered"
    assert wait_gone(pids) == [], "workers outlived the server"
    assert server.shm() == set()


def _unloadable(src, dst):
    """A copy of an artifact whose stage 1 verifies but cannot load: an op onnxruntime lacks."""
    shutil.copytree(src, dst)
    stage = dst / "stage_001.onnx"
    model = onnx.load(str(stage), load_external_data=False)
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save_model(model, str(stage))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["plan"]["stages"][1]["sha256"] = hashlib.sha256(stage.read_bytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest))


def test_a_model_that_cannot_start_is_unavailable_with_the_reason(serve_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo.path / "gather", repo / "gather")
    _unloadable(serve_repo.path / "chain", repo / "broken")
    server = Server.start(repo)
    try:
        index = {m["name"]: m for m in json.loads(post(server, "/v2/repository/index", "{}")[2])}
        assert index["gather"]["state"] == "READY" and index["broken"]["state"] == "UNAVAILABLE"
        assert "could not start" in index["broken"]["reason"] and "NoSuchOp" in index["broken"]["reason"]
        assert get(server, "/v2/health/ready")[0] == 503  # not every model serves
        status, _, data = post(server, "/v2/models/broken/infer", json_request(serve_repo.feeds[0]))
        assert status == 503 and "NoSuchOp" in json.loads(data)["error"]
        client = httpclient.InferenceServerClient(server.http)
        good = client.infer("gather", inputs(httpclient, serve_repo.gather_feeds))
        check(outputs(good, serve_repo.gather_ref), serve_repo.gather_ref)
        assert server.stop() == 0
    finally:
        server.kill()
    assert server.shm() == set()


def test_start_up_errors_exit_2_with_one_line(serve_repo, tmp_path):
    (tmp_path / "empty").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {  # args -> what the one error line says; run side by side (each imports corepipe)
            (str(tmp_path / "missing"),): "is not a directory",
            (str(tmp_path / "empty"),): "holds no artifact",
            (str(serve_repo.path), "--http-port", str(port)): f"cannot listen for HTTP on 127.0.0.1:{port}",
            (str(serve_repo.path), "--model-cores", "nope=0", "--http-port", "0"): "names models ['nope']",
        }
        procs = {}
        for args, _ in cases.items():
            argv, env = module_command("corepipe", "serve", *args, "--grpc-port", "0")
            procs[args] = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
        results = {args: (p.wait(timeout=120), p.communicate()[1]) for args, p in procs.items()}
    for args, message in cases.items():
        code, stderr = results[args]
        assert code == 2 and message in stderr and stderr.startswith("error:"), (args, stderr)


def test_grpc_stream_infer(served, serve_repo):
    """ModelStreamInfer: answers in request order, errors in-band, the stream goes on."""
    client = grpcclient.InferenceServerClient(served.grpc)
    got = []
    client.start_stream(callback=lambda result, error: got.append(error or result), headers=auth())
    for i in range(5):
        feeds = serve_repo.gather_bad if i == 2 else serve_repo.feeds[i]
        client.async_stream_infer("gather" if i == 2 else "chain", inputs(grpcclient, feeds), request_id=str(i))
    _wait(lambda: len(got) == 5)
    client.stop_stream()
    for i, item in enumerate(got):
        if i == 2:
            assert isinstance(item, InferenceServerException) and "stage 0" in str(item)
        else:
            assert item.get_response().id == str(i)
            check(outputs(item, serve_repo.refs[i]), serve_repo.refs[i])


def test_a_server_started_by_a_killed_test_run_goes_with_it(serve_repo, tmp_path):
    """tests/serving.py's servers get SIGTERM when the process that started them dies, so a test
    run killed before its teardown (a CI timeout, SIGKILL) leaves no server, worker or segment."""
    import os
    import signal
    import sys
    from pathlib import Path

    import psutil

    tests = Path(__file__).resolve().parent
    script = tmp_path / "starter.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(tests)!r})\n"
        "from serving import Server\n"
        f"server = Server.start({str(serve_repo.path / 'simple')!r})\n"
        "print(server.proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        server_pid = int(starter.stdout.readline())
        family = [server_pid] + [c.pid for c in psutil.Process(server_pid).children(recursive=True)]
        os.kill(starter.pid, signal.SIGKILL)  # no teardown runs in the starter
        starter.wait()
        assert wait_gone(family, timeout=60.0) == [], "the server outlived the run that started it"
        assert not list(Path("/dev/shm").glob(f"corepipe_{server_pid}_*")), "its segments stayed"
    finally:
        if starter.poll() is None:
            starter.kill()
