"""`corepipe serve` splitting a request larger than the batch dim's max (`serve.batching.parts_of`):
a model compiled with batch 1..4 served with ``--max-batch 8`` reports ``max_batch_size`` 8 and
runs a 7-row request as chunks of 4 and 3 rows, the answers joined in order; a bad value in a
later chunk is a 400 naming its place in the whole request, and nothing of it runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving import Server, get, post
from shapemodels import VOCAB, assert_same, embed_model, ids, reference

import corepipe

pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_split")
    model = embed_model(root / "embed.onnx")
    corepipe.compile(model, root / "repo" / "b4", example_inputs={"ids": np.zeros((1, 8), np.int64)}, num_cores=2,
                     engine="onnxruntime", dynamic_dims={"batch": (1, 4), "sequence": (1, 24)}, buckets=None)
    srv = Server.start(root / "repo", "--max-batch", "8", "--batch-delay", "1ms")
    yield model, srv
    code = srv.stop()
    assert code == 0, "\n".join(srv.lines)
    assert srv.shm() == set()


def _stats(server) -> dict:
    return json.loads(get(server, "/v2/models/b4/stats", token=False)[1])["model_stats"][0]


def test_a_request_past_the_batch_dims_max_runs_in_chunks(served):
    model, server = served
    client = httpclient.InferenceServerClient(server.http)
    assert client.get_model_config("b4")["max_batch_size"] == 8  # more than the compiled 4
    feeds = ids(np.random.default_rng(0), 7, 9)
    before = _stats(server)
    inp = httpclient.InferInput("ids", [7, 9], "INT64")
    inp.set_data_from_numpy(feeds["ids"])
    out = {"y": client.infer("b4", [inp]).as_numpy("y")}
    assert_same(out, reference(model, feeds))  # rows 0..3 and 4..6, joined in order
    after = _stats(server)
    assert int(after["inference_count"]) - int(before["inference_count"]) == 7
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1


def test_a_bad_value_in_a_later_chunk_is_named_at_its_place_and_nothing_runs(served):
    model, server = served
    bad = ids(np.random.default_rng(1), 6, 5)["ids"]
    bad[5, 3] = VOCAB + 100  # in the second chunk (rows 4..5)
    before = _stats(server)
    body = json.dumps({"inputs": [{"name": "ids", "shape": [6, 5], "datatype": "INT64", "data": bad.ravel().tolist()}]})
    status, _, data = post(server, "/v2/models/b4/infer", body, token=False)
    assert status == 400 and f"value {VOCAB + 100} at [5, 3] is out of range" in json.loads(data)["error"], data
    after = _stats(server)
    assert after["inference_count"] == before["inference_count"]  # neither chunk ran
    status, _, data = post(server, "/v2/models/b4/infer", json.dumps(
        {"inputs": [{"name": "ids", "shape": [9, 5], "datatype": "INT64", "data": [1] * 45}]}), token=False)
    assert status == 400 and "max_batch_size 8" in json.loads(data)["error"]
    good = ids(np.random.default_rng(2), 5, 5)  # and the next one is answered
    body = json.dumps({"inputs": [{"name": "ids", "shape": [5, 5], "datatype": "INT64",
                                   "data": good["ids"].ravel().tolist()}]})
    status, _, data = post(server, "/v2/models/b4/infer", body, token=False)
    assert status == 200
    got = np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(5, 5, 8)
    np.testing.assert_allclose(got, reference(model, good)["y"], rtol=1e-4, atol=1e-4)
