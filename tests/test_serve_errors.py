"""Every error row of the serving issue, provoked for real over HTTP and gRPC against the shared
server: each gets its status / code and a message saying what was wrong, and the server goes on."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import numpy as np
import pytest
from serving import auth, check, inputs, json_request, outputs, post

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
import grpc
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from corepipe.serve.proto import grpc_service_pb2 as pb

pytestmark = pytest.mark.slow


def _raw_grpc(served, request, token=True):
    """Send a ModelInferRequest with grpcio directly (to build requests tritonclient would not)."""
    with grpc.insecure_channel(served.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        return call(request, metadata=tuple(auth().items()) if token else (), timeout=60)


def _grpc_request(feeds, model="chain", **changes):
    req = pb.ModelInferRequest(model_name=model)
    for name, arr in feeds.items():
        req.inputs.add(name=changes.get("name", name), datatype=changes.get("datatype", "FP32"),
                       shape=changes.get("shape", list(arr.shape)))
        req.raw_input_contents.append(changes.get("raw", arr.tobytes()))
    return req


def _grpc_error(served, request, token=True):
    with pytest.raises(grpc.RpcError) as info:
        _raw_grpc(served, request, token)
    return info.value.code(), info.value.details()


def _http_error(served, body, headers=None, token=True, model="chain"):
    status, hdrs, data = post(served, f"/v2/models/{model}/infer", body, headers, token)
    return status, json.loads(data)["error"], hdrs


BAD_INPUTS = {
    "wrong name": ({"name": "nope"}, "unknown ['nope']"),
    "wrong dtype": ({"datatype": "FP64", "raw": None}, "expected float32[1,64], got float64[1,64]"),
    "wrong shape": ({"shape": [1, 32], "raw": None}, "expected float32[1,64], got float32[1,32]"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_400_and_invalid_argument(served, serve_repo, case):
    change, message = BAD_INPUTS[case]
    feeds = serve_repo.feeds[0]
    (name, arr), = feeds.items()
    shape = change.get("shape", list(arr.shape))
    datatype = change.get("datatype", "FP32")
    data = np.zeros(shape, np.float64 if datatype == "FP64" else np.float32)
    body = json.dumps({"inputs": [{"name": change.get("name", name), "shape": shape, "datatype": datatype,
                                   "data": data.ravel().tolist()}]})
    status, error, _ = _http_error(served, body)
    assert status == 400 and message in error, error
    raw = {**change, "raw": data.tobytes()}
    code, details = _grpc_error(served, _grpc_request(feeds, **raw))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


def test_malformed_json_and_binary_header_are_400(served, serve_repo):
    status, error, _ = _http_error(served, '{"inputs": [')
    assert status == 400 and "not valid JSON" in error
    feeds = serve_repo.feeds[0]
    (name, arr), = feeds.items()
    head = json.dumps({"inputs": [{"name": name, "shape": list(arr.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": arr.nbytes}}]}).encode()
    body = head + arr.tobytes()[:-8]  # binary part 8 bytes short
    status, error, _ = _http_error(served, body, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "runs past" in error, error
    status, error, _ = _http_error(served, head + arr.tobytes(), {"Inference-Header-Content-Length": "99999999"})
    assert status == 400 and "Inference-Header-Content-Length is 99999999" in error
    # gRPC: raw contents of the wrong size.
    code, details = _grpc_error(served, _grpc_request(feeds, raw=b"\0" * 12))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 256 bytes" in details, details


def test_unknown_model_is_404_and_not_found(served, serve_repo):
    status, error, _ = _http_error(served, json_request(serve_repo.feeds[0]), model="nope")
    assert status == 404 and "Request for unknown model: 'nope' is not found" in error and "chain" in error
    code, details = _grpc_error(served, _grpc_request(serve_repo.feeds[0], model="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "Request for unknown model: 'nope'" in details
    client = httpclient.InferenceServerClient(served.http)
    with pytest.raises(InferenceServerException, match="404"):
        client.get_model_metadata("nope", headers=auth())


def test_body_over_the_limit_is_413(served, serve_repo):
    limit = 2**20 + 24 * 64  # the default from the signature: one float32[1,64] input
    body = b'{"inputs": [' + b" " * (limit + 1) + b"]}"
    status, error, _ = _http_error(served, body)
    assert status == 413 and f"limit of {limit} bytes" in error, error


def test_missing_or_wrong_token_is_401_and_unauthenticated(served, serve_repo):
    status, error, _ = _http_error(served, json_request(serve_repo.feeds[0]), token=False)
    assert status == 401 and "Authorization: Bearer" in error
    status, error, _ = _http_error(served, json_request(serve_repo.feeds[0]), {"Authorization": "Bearer wrong"},
                                   token=False)
    assert status == 401 and "does not match" in error
    code, details = _grpc_error(served, _grpc_request(serve_repo.feeds[0]), token=False)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Authorization: Bearer" in details
    client = grpcclient.InferenceServerClient(served.grpc)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.get_model_metadata("chain")
    assert client.is_server_live()  # health probes need no token


def test_stage_error_fails_that_request_alone_500_and_internal(served, serve_repo):
    client = httpclient.InferenceServerClient(served.http)
    with pytest.raises(InferenceServerException) as info:
        client.infer("gather", inputs(httpclient, serve_repo.gather_bad), headers=auth())
    assert info.value.status() == "500" and "stage 0" in str(info.value)
    good = client.infer("gather", inputs(httpclient, serve_repo.gather_feeds), headers=auth())
    check(outputs(good, serve_repo.gather_ref), serve_repo.gather_ref)
    gclient = grpcclient.InferenceServerClient(served.grpc)
    with pytest.raises(InferenceServerException, match=r"INTERNAL.*stage 0"):
        gclient.infer("gather", inputs(grpcclient, serve_repo.gather_bad), headers=auth())
    good = gclient.infer("gather", inputs(grpcclient, serve_repo.gather_feeds), headers=auth())
    check(outputs(good, serve_repo.gather_ref), serve_repo.gather_ref)


def test_full_window_and_queue_is_503_with_retry_after_then_everything_completes(served, serve_repo):
    """A stopped stage fills the window (4) and the queue (4); the 9th request is refused at once,
    and once the stage runs again the 8 accepted ones are answered correctly."""
    feeds, refs = serve_repo.feeds[:8], serve_repo.refs[:8]
    worker = served.worker_of("chain", 2)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        async def main():
            client = http_aio.InferenceServerClient(served.http)
            try:
                accepted = [asyncio.ensure_future(client.infer("chain", inputs(http_aio, f), headers=auth()))
                            for f in feeds]
                await asyncio.sleep(1.0)  # all 8 are in (4 in the pipeline, 4 waiting)
                status, error, headers = await asyncio.to_thread(_http_error, served, json_request(feeds[0]))
                code, details = await asyncio.to_thread(_grpc_error, served, _grpc_request(feeds[0]))
                os.kill(worker.pid, signal.SIGCONT)
                return status, error, headers, code, details, await asyncio.gather(*accepted)
            finally:
                await client.close()

        status, error, headers, code, details, results = asyncio.run(main())
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert status == 503 and "at capacity" in error and headers.get("retry-after") == "1", (status, error)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at capacity" in details
    for result, ref in zip(results, refs):
        check(outputs(result, ref), ref)
