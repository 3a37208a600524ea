"""`corepipe serve` driven by the real clients: tritonclient HTTP and gRPC (sync and async, binary
and JSON), plain HTTP JSON, TF-Serving predict, Prometheus, perf_analyzer. One server (a
repository of two models, with a token) serves the module; every answer is checked against one
onnxruntime session on the whole model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import skip_unless_ci
from serving import TOKEN, auth, check, get, inputs, json_request, metric, outputs, perf_analyzer, post

pytest.importorskip("uvicorn")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(serve_repo):
    return serve_repo


@pytest.fixture
def server(served):
    return served


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_sync(server, repo, binary):
    client = httpclient.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("chain", headers=auth())
    meta = client.get_model_metadata("chain", headers=auth())
    assert [i["name"] for i in meta["inputs"]] == list(repo.feeds[0])
    for feeds, ref in zip(repo.feeds[:4], repo.refs):
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ref]
        result = client.infer("chain", inputs(httpclient, feeds, binary), outputs=outs, headers=auth())
        check(outputs(result, ref), ref)


def test_tritonclient_http_async_binary_and_json(server, repo):
    async def main():
        client = http_aio.InferenceServerClient(server.http)
        try:
            calls = [client.infer("chain", inputs(http_aio, f, binary=i % 2 == 0), headers=auth(),
                                  outputs=[http_aio.InferRequestedOutput(n, binary_data=i % 2 == 0) for n in r])
                     for i, (f, r) in enumerate(zip(repo.feeds[:8], repo.refs))]
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    for result, ref in zip(asyncio.run(main()), repo.refs):
        check(outputs(result, ref), ref)


def test_tritonclient_grpc_sync_and_callbacks(server, repo):
    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_model_config("chain", headers=auth()).config.max_batch_size == 0
    result = client.infer("chain", inputs(grpcclient, repo.feeds[0]), headers=auth())
    check(outputs(result, repo.refs[0]), repo.refs[0])
    done, results = threading.Event(), {}

    def callback(i):
        def cb(result, error):
            results[i] = error or result
            if len(results) == 6:
                done.set()
        return cb

    for i in range(6):
        client.async_infer("chain", inputs(grpcclient, repo.feeds[i]), callback(i), headers=auth())
    assert done.wait(60)
    for i in range(6):
        check(outputs(results[i], repo.refs[i]), repo.refs[i])
    client.close()


def test_tritonclient_grpc_aio_concurrent(server, repo):
    async def main():
        client = grpc_aio.InferenceServerClient(server.grpc)
        try:
            return await asyncio.gather(*(client.infer("chain", inputs(grpc_aio, f), headers=auth())
                                          for f in repo.feeds[:8]))
        finally:
            await client.close()

    for result, ref in zip(asyncio.run(main()), repo.refs):
        check(outputs(result, ref), ref)


def test_plain_http_json_and_tfserving_predict(server, repo):
    status, _, data = post(server, "/v2/models/chain/versions/1/infer", json_request(repo.feeds[0]))
    assert status == 200, data
    body = json.loads(data)
    assert body["id"] == "r1" and body["model_name"] == "chain"
    out = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in body["outputs"]}
    check(out, repo.refs[0])
    # TF-Serving: a batch of 3 examples (row format) runs as 3 pipeline requests.
    (name, _), = repo.feeds[0].items()
    out_name = next(iter(repo.refs[0]))
    rows = [f[name][0].tolist() for f in repo.feeds[:3]]
    status, _, data = post(server, "/v1/models/chain:predict", json.dumps({"instances": rows}))
    assert status == 200, data
    preds = json.loads(data)["predictions"]
    for pred, ref in zip(preds, repo.refs[:3]):
        check({out_name: np.array([pred], np.float32)}, ref)
    cols = np.concatenate([f[name] for f in repo.feeds[:2]]).tolist()
    status, _, data = post(server, "/v1/models/chain:predict", json.dumps({"inputs": cols}))
    assert status == 200, data
    stacked = np.array(json.loads(data)["outputs"], np.float32)
    for i, ref in enumerate(repo.refs[:2]):
        check({out_name: stacked[i:i + 1]}, ref)
    status, data = get(server, "/v1/models/chain")
    assert json.loads(data)["model_version_status"][0]["state"] == "AVAILABLE"


def test_health_metadata_config_stats_and_metrics(server):
    assert get(server, "/v2/health/live", token=False)[0] == 200
    assert get(server, "/v2/health/ready", token=False)[0] == 200
    status, data = get(server, "/v2")
    assert status == 200 and json.loads(data)["name"] == "corepipe"
    config = json.loads(get(server, "/v2/models/chain/config")[1])
    assert config["max_batch_size"] == 0 and config["input"][0]["data_type"] == "TYPE_FP32"
    index = json.loads(post(server, "/v2/repository/index", "{}")[2])
    assert {m["name"]: m["state"] for m in index} == {"chain": "READY", "gather": "READY", "simple": "READY"}
    stats = json.loads(get(server, "/v2/models/chain/stats")[1])["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] > 0
    status, data = get(server, "/metrics")
    text = data.decode()
    for series in ('corepipe_requests_total{model="chain",protocol="http"}',
                   'corepipe_request_failures_total', 'corepipe_request_duration_seconds_bucket{le="0.005",model="chain"}',
                   'corepipe_request_queue_seconds_count{model="chain"}', 'corepipe_requests_in_flight{model="chain"}',
                   'corepipe_stage_busy_ratio{model="chain",replica="0",stage="2"}', 'corepipe_stage_queue_depth{model="gather",replica="0",stage="1"}',
                   'corepipe_stage_restarts_total{model="chain",replica="0",stage="0"}', 'corepipe_model_ready{model="chain"} 1.0'):
        assert series in text, series


def test_perf_analyzer_smoke(server):
    """The README says perf_analyzer works as it is: locally a missing binary skips, saying how
    to install it; with CI=true (.ci/run installs it) it fails the run."""
    binary, env, why = perf_analyzer()
    if binary is None:
        skip_unless_ci(why)
    # A smoke test, not a measurement: any spread between windows counts as stable (on a busy
    # machine, 3 windows of 40 requests can differ by more than 2x, and perf_analyzer then
    # reports no figure for that concurrency).
    for url, proto in ((server.grpc, "grpc"), (server.http, "http")):
        res = subprocess.run(
            [binary, "-m", "chain", "-u", url, "-i", proto, "-H", f"authorization: Bearer {TOKEN}",
             "--concurrency-range", "1:2", "--measurement-mode", "count_windows",
             "--measurement-request-count", "40", "--max-trials", "3", "--stability-percentage", "1000"],
            env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Throughput:" in res.stdout and "Concurrency: 2" in res.stdout, res.stdout
    # Tensors in system shared memory (perf_analyzer registers its regions, names them in every
    # request, and unregisters them at the end).
    for url, proto in ((server.grpc, "grpc"), (server.http, "http")):
        res = subprocess.run(
            [binary, "-m", "chain", "-u", url, "-i", proto, "-H", f"authorization: Bearer {TOKEN}",
             "--shared-memory", "system", "--concurrency-range", "1", "--measurement-mode", "count_windows",
             "--measurement-request-count", "40", "--max-trials", "3", "--stability-percentage", "1000"],
            env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "Throughput:" in res.stdout, res.stdout + res.stderr
        assert "error" not in res.stdout.lower(), res.stdout
    assert json.loads(get(server, "/v2/systemsharedmemory/status")[1]) == []


def test_kill_9_of_a_worker_under_concurrent_load_answers_every_request(server, repo):
    """8 clients (HTTP and gRPC) stream requests; a chain worker is SIGKILLed mid-load."""
    results, errors = [], []
    started = threading.Barrier(9)

    def client(k):
        c = grpcclient.InferenceServerClient(server.grpc) if k % 2 else httpclient.InferenceServerClient(server.http)
        module = grpcclient if k % 2 else httpclient
        started.wait()
        for j in range(40):
            i = (k * 40 + j) % len(repo.feeds)
            try:
                r = c.infer("chain", inputs(module, repo.feeds[i]), headers=auth())
                results.append((i, outputs(r, repo.refs[i])))
            except Exception as exc:  # any failure is a lost request
                errors.append(f"client {k} request {j}: {exc}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    started.wait()
    victim = server.worker_of("chain", 1)
    deadline = time.monotonic() + 60
    while len(results) < 60 and time.monotonic() < deadline:  # mid-load: a quarter answered
        time.sleep(0.002)
    victim.kill()
    in_flight_at_kill = 320 - len(results)
    for t in threads:
        t.join(120)
    assert in_flight_at_kill > 0
    assert errors == []
    assert len(results) == 320
    for i, out in results:
        check(out, repo.refs[i])
    assert metric(server, 'corepipe_stage_restarts_total{model="chain",replica="0",stage="1"}') >= 1
