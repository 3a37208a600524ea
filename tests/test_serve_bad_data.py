"""Bad data through `corepipe serve`, with the default engine: a value the intake refuses is a 400
(gRPC INVALID_ARGUMENT) with its message, a request that fails in a stage a 500 (INTERNAL) with
its; the server stays up and answers the next request right."""

from __future__ import annotations

import json

import numpy as np
import pytest
from graphcases import run_reference
from graphcases.baddata import bad_requests, case_request_operands, good
from serving import TOKEN, Server, auth, check, inputs, post

import corepipe

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
pytest.importorskip("uvicorn")
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

STATUS = {"InputError": ("400", "INVALID_ARGUMENT"), "StageError": ("500", "INTERNAL")}


@pytest.fixture(scope="module")
def served_operands(tmp_path_factory):
    """`case_request_operands` compiled with the default engine into a repository, served."""
    case = case_request_operands()
    repo = tmp_path_factory.mktemp("bad-data") / "repo"
    corepipe.compile(case.model, repo / "operands", example_inputs=case.feeds, num_cores=3)
    server = Server.start(repo, "--token", TOKEN)
    yield server, case
    assert server.stop() == 0, "\n".join(server.lines)
    assert server.shm() == set()


def _json(feeds):
    return json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": "FP32" if a.dtype == np.float32
                                   else "INT64", "data": a.ravel().tolist()} for n, a in feeds.items()]})


def _next_is_right(client, module, model, seed):
    feeds = good(seed)
    result = client.infer("operands", inputs(module, feeds), headers=auth())
    ref = run_reference(model, feeds)
    check({name: result.as_numpy(name) for name in ref}, ref)


def test_each_bad_request_gets_its_status_and_message_and_the_next_is_right(served_operands):
    server, case = served_operands
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    for i, bad in enumerate(bad_requests()):
        status, code = STATUS[bad.error]
        with pytest.raises(InferenceServerException) as info:
            http.infer("operands", inputs(httpclient, bad.feeds), headers=auth())
        assert info.value.status() == status, (bad.words, info.value)
        assert all(w in str(info.value) for w in bad.words), (str(info.value), bad.words)
        _next_is_right(http, httpclient, case.model, 10 + i)
        with pytest.raises(InferenceServerException) as info:
            grpc.infer("operands", inputs(grpcclient, bad.feeds), headers=auth())
        assert code in str(info.value) and all(w in str(info.value) for w in bad.words), str(info.value)
        _next_is_right(grpc, grpcclient, case.model, 20 + i)
    assert http.is_server_live() and http.is_model_ready("operands", headers=auth())


def test_a_json_request_with_a_bad_token_id_is_a_400_naming_it(served_operands):
    """The KServe JSON route, without tritonclient: the body names the input, value and range."""
    server, _ = served_operands
    feeds = good(3)
    feeds["ids"] = np.array([0, 1, 10], np.int64)
    status, _, data = post(server, "/v2/models/operands/infer", _json(feeds))
    assert status == 400
    assert "input 'ids': value 10 at [2] is out of range" in json.loads(data)["error"]
    status, _, data = post(server, "/v2/models/operands/infer", _json(good(4)))
    assert status == 200, data
