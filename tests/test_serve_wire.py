"""The wire as Triton's own clients expect it, against a real `corepipe serve`: compressed bodies
both ways, ids echoed as given, JSON errors for unknown routes and methods, empty health bodies,
system shared memory over HTTP and gRPC (read and written by value), the extensions corepipe does
not offer answering so, integer inputs refused alike on both routes, and the statistics the
server measures."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import zlib

import numpy as np
import pytest
from serving import auth, check, inputs, outputs

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
import grpc
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from corepipe.serve.proto import grpc_service_pb2 as pb

pytestmark = pytest.mark.slow

X0 = np.arange(16, dtype=np.int32).reshape(1, 16)
X1 = np.full((1, 16), 3, np.int32)


def _request(server, method, path, body=None, headers=None, token=True):
    conn = http.client.HTTPConnection(server.http, timeout=60)
    conn.request(method, path, body=body, headers={**(auth() if token else {}), **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def _simple_json(id_text=None, x1="[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]"):
    head = f'"id": {id_text}, ' if id_text is not None else ""
    return (f'{{{head}"inputs": [{{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": {X0.ravel().tolist()}}},'
            f' {{"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": {x1}}}]}}').encode()


def _simple_inputs(module):
    out = []
    for name, arr in (("INPUT0", X0), ("INPUT1", X1)):
        t = module.InferInput(name, [1, 16], "INT32")
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


# -- compression -------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_http_compressed_requests_and_responses(served, serve_repo, algorithm):
    client = httpclient.InferenceServerClient(served.http)
    for i, (feeds, ref) in enumerate(zip(serve_repo.feeds[:2], serve_repo.refs)):
        result = client.infer("chain", inputs(httpclient, feeds, binary=i == 0), headers=auth(),
                              request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
        check(outputs(result, ref), ref)
    # The response really is compressed, and only when asked.
    body = _simple_json()
    status, headers, data = _request(served, "POST", "/v2/models/simple/infer", body, {"Accept-Encoding": algorithm})
    assert status == 200 and headers["content-encoding"] == algorithm, (status, headers)
    with pytest.raises(ValueError):
        json.loads(data)
    answer = json.loads(gzip.decompress(data) if algorithm == "gzip" else zlib.decompress(data))
    assert answer["outputs"][0]["data"] == (X0 + X1).ravel().tolist()
    status, headers, data = _request(served, "POST", "/v2/models/simple/infer", body)
    assert "content-encoding" not in headers and json.loads(data)["outputs"][1]["data"] == (X0 - X1).ravel().tolist()


def test_a_zip_bomb_is_413_and_the_server_goes_on(served):
    bomb = gzip.compress(b" " * (32 * 2**20))  # 32 MiB of spaces in 32 KiB; the model's limit is ~1 MiB
    status, _, data = _request(served, "POST", "/v2/models/simple/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "inflates past this model's limit" in json.loads(data)["error"]
    status, headers, data = _request(served, "POST", "/v2/models/simple/infer", _simple_json(), {"Content-Encoding": "br"})
    assert status == 415 and "'br' is not supported" in json.loads(data)["error"]
    assert headers["accept-encoding"] == "gzip, deflate"
    status, _, data = _request(served, "POST", "/v2/models/simple/infer", gzip.compress(_simple_json()),
                               {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(data)["outputs"][0]["data"] == (X0 + X1).ravel().tolist()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression_works(served, serve_repo, algorithm):
    client = grpcclient.InferenceServerClient(served.grpc)
    result = client.infer("chain", inputs(grpcclient, serve_repo.feeds[0]), headers=auth(),
                          compression_algorithm=algorithm)
    check(outputs(result, serve_repo.refs[0]), serve_repo.refs[0])


# -- ids, routes, health ---------------------------------------------------------------------
@pytest.mark.parametrize("id_text", ['"req-7"', "42", "4.5", "18446744073709551616"])
def test_ids_are_echoed_as_given(served, id_text):
    status, _, data = _request(served, "POST", "/v2/models/simple/infer", _simple_json(id_text))
    assert status == 200 and f'"id":{id_text}'.encode() in data, data
    assert json.loads(data)["id"] == json.loads(id_text)
    status, _, data = _request(served, "POST", "/v2/models/simple/infer", _simple_json("[1]"))
    assert status == 400 and '"id" must be a string or a number' in json.loads(data)["error"]
    result = httpclient.InferenceServerClient(served.http).infer("simple", _simple_inputs(httpclient),
                                                                 request_id="abc", headers=auth())
    assert result.get_response()["id"] == "abc"


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/nope", 404, "no route GET /nope"),
    ("POST", "/v2/models/simple/nope", 404, "no route POST /v2/models/simple/nope"),
    ("GET", "/v2/models/simple/infer", 405, "GET is not allowed on /v2/models/simple/infer: use POST"),
    ("DELETE", "/v2/models/simple", 405, "DELETE is not allowed"),
])
def test_unknown_routes_and_wrong_methods_answer_json(served, method, path, status, message):
    got, headers, data = _request(served, method, path)
    assert got == status and headers["content-type"] == "application/json"
    assert message in json.loads(data)["error"]


def test_health_and_model_ready_are_the_status_alone(served):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/simple/ready", "/v2/models/chain/versions/1/ready"):
        status, _, data = _request(served, "GET", path, token=path.startswith("/v2/models"))
        assert (status, data) == (200, b""), path
    client = httpclient.InferenceServerClient(served.http)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("simple", headers=auth())


def test_server_metadata_lists_what_it_offers(served):
    meta = httpclient.InferenceServerClient(served.http).get_server_metadata(headers=auth())
    assert meta["name"] == "corepipe" and "system_shared_memory" in meta["extensions"]
    assert "cuda_shared_memory" not in meta["extensions"]
    gmeta = grpcclient.InferenceServerClient(served.grpc).get_server_metadata(headers=auth())
    assert list(gmeta.extensions) == meta["extensions"]


# -- integers and statistics -------------------------------------------------------------------
def test_fractional_int32_is_refused_alike_on_both_routes(served):
    x1 = "[3, 3.5, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]"
    status, _, data = _request(served, "POST", "/v2/models/simple/infer", _simple_json(None, x1))
    kserve = json.loads(data)["error"]
    assert status == 400 and "input 'INPUT1': INT32 values must be whole numbers" in kserve and "3.5" in kserve
    tf = json.dumps({"inputs": {"INPUT0": X0.tolist(), "INPUT1": [json.loads(x1)]}})
    status, _, data = _request(served, "POST", "/v1/models/simple:predict", tf)
    assert status == 400 and json.loads(data)["error"] == kserve
    status, _, data = _request(served, "POST", "/v1/models/simple:predict", tf.replace("3.5", "3.0"))
    assert status == 200 and json.loads(data)["outputs"]["OUTPUT0"] == (X0 + X1).tolist()


def test_statistics_fill_compute_input_and_output(served, serve_repo):
    httpclient.InferenceServerClient(served.http).infer("simple", _simple_inputs(httpclient), headers=auth())
    grpcclient.InferenceServerClient(served.grpc).infer("simple", _simple_inputs(grpcclient), headers=auth())
    stats = httpclient.InferenceServerClient(served.http).get_inference_statistics("simple", headers=auth())
    s = stats["model_stats"][0]["inference_stats"]
    assert s["compute_input"]["count"] == s["compute_output"]["count"] == s["success"]["count"] >= 2
    assert s["compute_input"]["ns"] > 0 and s["compute_output"]["ns"] > 0
    g = grpcclient.InferenceServerClient(served.grpc).get_inference_statistics("simple", headers=auth())
    assert g.model_stats[0].inference_stats.compute_input.ns >= s["compute_input"]["ns"]


# -- extensions ------------------------------------------------------------------------------
@pytest.fixture
def regions():
    """Client-side POSIX segments (tritonclient's own helper), destroyed after the test."""
    made = []

    def make(tag, size):
        handle = shm.create_shared_memory_region(tag, f"/i18wire_{os.getpid()}_{tag}", size)
        made.append(handle)
        return handle, f"/i18wire_{os.getpid()}_{tag}"

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_reads_and_writes_by_value(served, serve_repo, regions, protocol):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(served.http if protocol == "http" else served.grpc)
    client.unregister_system_shared_memory(headers=auth())
    client.unregister_cuda_shared_memory(headers=auth())  # as Triton's examples start: a no-op here
    (name, x), = serve_repo.feeds[0].items()
    (out_name, ref), = serve_repo.refs[0].items()
    ih, ikey = regions(f"in_{protocol}", 64 + x.nbytes)
    oh, okey = regions(f"out_{protocol}", 32 + ref.nbytes + 100)
    shm.set_shared_memory_region(ih, [x], offset=64)
    client.register_system_shared_memory("in", ikey, x.nbytes, offset=64, headers=auth())
    client.register_system_shared_memory("out", okey, 32 + ref.nbytes + 100, headers=auth())
    status = client.get_system_shared_memory_status(headers=auth())
    names = sorted(r["name"] for r in status) if protocol == "http" else sorted(status.regions)
    assert names == ["in", "out"]
    try:
        t = module.InferInput(name, list(x.shape), "FP32")
        t.set_shared_memory("in", x.nbytes)
        o = module.InferRequestedOutput(out_name)
        o.set_shared_memory("out", ref.nbytes, offset=32)
        result = client.infer("chain", [t], outputs=[o], headers=auth())
        got = shm.get_contents_as_numpy(oh, np.float32, list(ref.shape), offset=32)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        listed = result.get_output(out_name)
        assert (listed["shape"] if protocol == "http" else list(listed.shape)) == list(ref.shape)
        # Mixed: INPUT0 from shared memory, INPUT1 in the request; both outputs into one region.
        shm.set_shared_memory_region(ih, [X0], offset=64)
        client.register_system_shared_memory("in0", ikey, X0.nbytes, offset=64, headers=auth())
        ins = _simple_inputs(module)
        ins[0] = module.InferInput("INPUT0", [1, 16], "INT32")
        ins[0].set_shared_memory("in0", X0.nbytes)
        outs = [module.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outs[0].set_shared_memory("out", 64)
        outs[1].set_shared_memory("out", 64, offset=64)
        client.infer("simple", ins, outputs=outs, headers=auth())
        np.testing.assert_array_equal(shm.get_contents_as_numpy(oh, np.int32, [1, 16]), X0 + X1)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(oh, np.int32, [1, 16], offset=64), X0 - X1)
        # Too small, out of bounds, not registered: clear errors, and the server goes on.
        small = module.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("out", 32)
        with pytest.raises(InferenceServerException, match="output 'OUTPUT0': needs 64 bytes but region 'out' gives it 32"):
            client.infer("simple", _simple_inputs(module), outputs=[small], headers=auth())
        with pytest.raises(InferenceServerException, match="runs past the end of segment"):
            client.register_system_shared_memory("huge", ikey, 10**6, headers=auth())
        client.unregister_system_shared_memory("in", headers=auth())
        with pytest.raises(InferenceServerException, match="region 'in' is not registered") as info:
            client.infer("chain", [t], headers=auth())
        assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    finally:
        client.unregister_system_shared_memory(headers=auth())
    status = client.get_system_shared_memory_status(headers=auth())
    assert (status if protocol == "http" else list(status.regions)) == []
    check(outputs(client.infer("chain", inputs(module, serve_repo.feeds[1]), headers=auth()), serve_repo.refs[1]),
          serve_repo.refs[1])


def test_grpc_infer_naming_an_unregistered_region_says_so(served, serve_repo):
    """The issue's case: a region named, raw contents for the other input only."""
    req = pb.ModelInferRequest(model_name="simple")
    req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    req.inputs[0].parameters["shared_memory_region"].string_param = "nowhere"
    req.inputs[0].parameters["shared_memory_byte_size"].int64_param = 64
    req.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    req.raw_input_contents.append(X1.tobytes())
    with grpc.insecure_channel(served.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(req, metadata=tuple(auth().items()), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shared memory region 'nowhere' is not registered" in info.value.details()


NOT_OFFERED = {
    "cuda": ("CUDA shared memory (Triton's cuda_shared_memory extension) is not offered by corepipe serve",
             lambda c: c.register_cuda_shared_memory("r", "AAAA", 0, 64, headers=auth())),
    "load": ("loading and unloading models (Triton's model_repository extension) is not offered",
             lambda c: c.load_model("chain", headers=auth())),
    "unload": ("loading and unloading models", lambda c: c.unload_model("chain", headers=auth())),
    "trace": ("trace settings (Triton's trace extension) are not offered", lambda c: c.get_trace_settings(headers=auth())),
    "trace model": ("trace settings", lambda c: c.update_trace_settings("chain", {"trace_rate": "1"}, headers=auth())),
    "log": ("log settings (Triton's logging extension) are not offered", lambda c: c.get_log_settings(headers=auth())),
    "log update": ("log settings", lambda c: c.update_log_settings({"log_info": True}, headers=auth())),
}


@pytest.mark.parametrize("case", NOT_OFFERED, ids=list(NOT_OFFERED))
def test_extensions_not_offered_say_so_over_both_protocols(served, case):
    message, call = NOT_OFFERED[case]
    with pytest.raises(InferenceServerException, match="501") as info:
        call(httpclient.InferenceServerClient(served.http))
    assert message in str(info.value)
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED") as info:
        call(grpcclient.InferenceServerClient(served.grpc))
    assert message in str(info.value)


def test_cuda_shared_memory_has_no_regions(served):
    client = httpclient.InferenceServerClient(served.http)
    assert client.get_cuda_shared_memory_status(headers=auth()) == []
    with pytest.raises(InferenceServerException, match="no CUDA shared memory region 'r' is registered"):
        client.get_cuda_shared_memory_status("r", headers=auth())
    gclient = grpcclient.InferenceServerClient(served.grpc)
    assert list(gclient.get_cuda_shared_memory_status(headers=auth()).regions) == []
    gclient.unregister_cuda_shared_memory("r", headers=auth())
