"""`corepipe serve` with variable shapes and batches (issue 17, section 4), driven by the real
clients: KServe metadata shows -1 for dims that vary; Triton's model configuration reports
max_batch_size and dims as Triton does, so perf_analyzer ``-b 4`` and ``--shape ids:1,17`` run
unmodified; TF-Serving's list of N instances is one batch-N request; a batch goes whole to a
model with a dynamic batch dim (merged with others by --max-batch) and as its items to a model
compiled at batch 1; out-of-range dims, oversized and ragged batches are 400s that take nothing
else down. Every answer is checked against one onnxruntime session on the whole model."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import skip_unless_ci
from serving import Server, get, perf_analyzer, post
from shapemodels import assert_same, embed_model, ids, reference

import corepipe

pytest.importorskip("uvicorn")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.slow

EXAMPLE = {"ids": np.zeros((1, 8), np.int64)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """``batched``: a dynamic batch dim 1..4 and sequence 1..24; ``seq``: batch 1, sequence
    1..24 (both 2 stages on onnxruntime, the embedding model of tests/shapemodels.py)."""
    root = tmp_path_factory.mktemp("serve_shapes")
    model = embed_model(root / "embed.onnx")
    repo = root / "repo"
    for name, dims in (("batched", {"batch": (1, 4), "sequence": (1, 24)}), ("seq", {"sequence": (1, 24)})):
        corepipe.compile(model, repo / name, example_inputs=EXAMPLE, num_cores=2, engine="onnxruntime",
                         dynamic_dims=dims, buckets=None)
    return model, repo


@pytest.fixture(scope="module")
def server(repo):
    srv = Server.start(repo[1], "--max-batch", "4", "--batch-delay", "20ms", "--max-in-flight", "4")
    yield srv
    code = srv.stop()
    assert code == 0, "\n".join(srv.lines)
    assert srv.shm() == set()


def _infer(client, module, name, feeds):
    inp = module.InferInput("ids", list(feeds["ids"].shape), "INT64")
    inp.set_data_from_numpy(feeds["ids"])
    return {"y": client.infer(name, [inp]).as_numpy("y")}


def test_metadata_shows_minus_one_and_config_reports_batches_as_triton_does(server):
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    meta = http.get_model_metadata("batched")
    assert meta["inputs"][0]["shape"] == [-1, -1] and meta["outputs"][0]["shape"] == [-1, -1, 8]
    assert http.get_model_metadata("seq")["inputs"][0]["shape"] == [1, -1]
    assert list(grpc.get_model_metadata("seq").outputs[0].shape) == [1, -1, 8]
    config = http.get_model_config("batched")
    assert config["max_batch_size"] == 4
    assert config["input"][0]["dims"] == [-1] and config["output"][0]["dims"] == [-1, 8]
    assert config["dynamic_batching"] == {"preferred_batch_size": [4], "max_queue_delay_microseconds": 20000}
    config = grpc.get_model_config("seq").config
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, -1]
    assert not config.HasField("dynamic_batching")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_any_shape_in_range_and_batches_are_served(server, repo, protocol):
    model = repo[0]
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    rng = np.random.default_rng(0)
    for name, shapes in (("batched", [(1, 1), (3, 11), (4, 24), (2, 5)]),
                         ("seq", [(1, 1), (1, 24), (3, 9), (6, 17)])):  # seq: 3 and 6 rows, as their items
        for batch, length in shapes:
            feeds = ids(rng, batch, length)
            assert_same(_infer(client, module, name, feeds), reference(model, feeds))


def test_bad_shapes_are_400s_that_take_nothing_else_down(server, repo):
    model = repo[0]
    rng = np.random.default_rng(1)

    def kserve(name, arr):
        body = json.dumps({"inputs": [{"name": "ids", "shape": list(arr.shape), "datatype": "INT64",
                                       "data": arr.ravel().tolist()}]})
        status, _, data = post(server, f"/v2/models/{name}/infer", body, token=False)
        return status, json.loads(data)

    status, body = kserve("batched", ids(rng, 1, 25)["ids"])
    assert status == 400 and "dim 'sequence' (axis 1) is 25, outside its range 1..24" in body["error"]
    status, body = kserve("batched", ids(rng, 6, 5)["ids"])
    assert status == 400 and "a batch of 6 rows is more than this model's max_batch_size 4" in body["error"]
    status, body = kserve("seq", ids(rng, 3, 0)["ids"])
    assert status == 400 and "outside its range 1..24" in body["error"]
    bad = ids(rng, 2, 4)["ids"]
    bad[1, 2] = 10**6
    status, body = kserve("seq", bad)
    assert status == 400 and "value 1000000 at [1, 2] is out of range" in body["error"]
    feeds = ids(rng, 2, 7)
    status, body = kserve("batched", feeds["ids"])
    assert status == 200
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(2, 7, 8),
                               reference(model, feeds)["y"], rtol=1e-4, atol=1e-4)


def test_tf_serving_instances_are_one_batch_and_ragged_ones_a_400(server, repo):
    model = repo[0]
    rng = np.random.default_rng(2)
    for name, rows in (("batched", 3), ("seq", 5)):
        feeds = ids(rng, rows, 9)
        body = json.dumps({"instances": feeds["ids"].tolist()})
        status, _, data = post(server, f"/v1/models/{name}:predict", body, token=False)
        assert status == 200, data
        got = np.array(json.loads(data)["predictions"], np.float32)
        np.testing.assert_allclose(got, reference(model, feeds)["y"], rtol=1e-4, atol=1e-4)
        body = json.dumps({"inputs": feeds["ids"].tolist()})  # columnar: the same batch
        status, _, data = post(server, f"/v1/models/{name}:predict", body, token=False)
        assert status == 200
        np.testing.assert_allclose(np.array(json.loads(data)["outputs"], np.float32), got, rtol=1e-6)
    body = json.dumps({"instances": [[1, 2, 3], [4, 5, 6], [7, 8]]})
    status, _, data = post(server, "/v1/models/batched:predict", body, token=False)
    assert status == 400
    assert "ragged instances: input 'ids' is [3] in instances[0] and [2] in instances[2]" in json.loads(data)["error"]
    status, _, data = post(server, "/v1/models/batched:predict", json.dumps({"instances": [[1, 2]] * 5}), token=False)
    assert status == 400 and "max_batch_size 4" in json.loads(data)["error"]


def test_perf_analyzer_batches_and_shapes(server):
    binary, env, why = perf_analyzer()
    if binary is None:
        skip_unless_ci(why)
    common = ["-u", server.grpc, "-i", "grpc", "--input-data", "zero", "--concurrency-range", "2",
              "--measurement-mode", "count_windows", "--measurement-request-count", "30",
              "--max-trials", "3", "--stability-percentage", "1000"]
    # -b 2 in system shared memory: perf_analyzer sizes its output regions for 2 rows, which the
    # server must check against 2 rows' bytes, not the batch dim's maximum of 4.
    for argv, rows in ((["-m", "batched", "-b", "4", "--shape", "ids:17"], 4), (["-m", "seq", "--shape", "ids:1,17"], 1),
                       (["-m", "batched", "-b", "2", "--shape", "ids:17", "--shared-memory", "system"], 2)):
        name = argv[1]
        before = _stats(server)[name]
        res = subprocess.run([binary, *argv, *common], env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Throughput:" in res.stdout and "error" not in res.stdout.lower(), res.stdout
        after = _stats(server)[name]
        requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
        items = int(after["inference_count"]) - int(before["inference_count"])
        runs = int(after["execution_count"]) - int(before["execution_count"])
        assert requests >= 30 and items == rows * requests, (argv, requests, items)  # every request as sent
        assert 0 < runs <= requests, (argv, runs, requests)  # merged two at a time or not at all
        assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
    assert json.loads(get(server, "/v2/systemsharedmemory/status", token=False)[1]) == []


def _stats(server):
    return {m["name"]: m for m in json.loads(get(server, "/v2/models/stats", token=False)[1])["model_stats"]}


def test_concurrent_requests_merged_by_dynamic_batching_each_get_their_own_answer(server, repo):
    from concurrent.futures import ThreadPoolExecutor

    model = repo[0]
    rng = np.random.default_rng(3)
    feeds = [ids(rng, 1 + i % 2, 9 if i % 3 else 14) for i in range(16)]  # two shapes: two kinds of batch

    def one(f):
        return _infer(httpclient.InferenceServerClient(server.http), httpclient, "batched", f)

    before = _stats(server)["batched"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, feeds))
    for f, out in zip(feeds, answers):
        assert_same(out, reference(model, f))
    # Merging shows as Triton shows it: fewer executions than rows, in batches of more than one.
    after = _stats(server)["batched"]
    runs = int(after["execution_count"]) - int(before["execution_count"])
    items = int(after["inference_count"]) - int(before["inference_count"])
    assert items == sum(f["ids"].shape[0] for f in feeds) and runs < 16, (runs, items)
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert max(sizes) > 2 and sum(sizes.values()) == int(after["execution_count"]), after["batch_stats"]
    grpc = grpcclient.InferenceServerClient(server.grpc).get_inference_statistics("batched").model_stats[0]
    assert {b.batch_size for b in grpc.batch_stats} >= set(sizes) and grpc.execution_count >= int(after["execution_count"])
