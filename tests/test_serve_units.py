"""The serving logic that needs no server: KServe tensor decoding and encoding, TF-Serving formats,
core splitting, repository discovery, the gRPC message decoding, and the admission window with an
inline pipeline on a real event loop."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

pytest.importorskip("grpc")
from corepipe import CorepipeError, InputError
from corepipe.artifact.plan import TensorSpec
from corepipe.serve.codec import encode_response, parse_request, select_outputs
from corepipe.serve.config import split_cores
from corepipe.serve.grpc_service import request_of
from corepipe.serve.proto import grpc_service_pb2 as pb
from corepipe.serve.tfserving import encode_predict, parse_predict

X = TensorSpec("x", "float32", (1, 3))
IDS = TensorSpec("ids", "int64", (1, 2))


def test_json_and_binary_tensors_decode_to_the_same_arrays():
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    ids = np.array([[7, 8]], np.int64)
    plain = parse_request(json.dumps({"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [[0, 1, 2]]},
        {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [7, 8]}]}).encode(), None)
    head = json.dumps({"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        {"name": "ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    binary = parse_request(head + x.tobytes() + ids.tobytes(), len(head))
    for req in (plain, binary):
        np.testing.assert_array_equal(req.feeds["x"], x)
        np.testing.assert_array_equal(req.feeds["ids"], ids)
    assert binary.outputs == ["y"] and binary.binary == {"y": True}


@pytest.mark.parametrize("body,message", [
    (b"{", "not valid JSON"),
    (b'{"inputs": 3}', '"inputs" list'),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}', "holds 3 values but data has 2"),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BF16", "data": [1, 2, 3]}]}', "datatype 'BF16'"),
    (b'{"inputs": [{"name": "x", "shape": [1, -3], "datatype": "FP32", "data": []}]}', "non-negative integers"),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": ["a", "b", "c"]}]}', "not a list of FP32"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "given twice"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],'
     b' "parameters": {"shared_memory_region": "r"}}]}', "gives data and parameters.shared_memory_region"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_offset": 4}}]}',
     "need a shared_memory_region"),
    (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 0}}]}',
     "classification must be a positive integer"),
    (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2, "shared_memory_region": "r"}}]}',
     "both classification and shared_memory_region"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"classification": 2}}]}',
     "applies to a requested output"),
    (b'{"id": true, "inputs": []}', '"id" must be a string or a number'),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', "none of"),
])
def test_malformed_requests_say_what_is_wrong(body, message):
    with pytest.raises(InputError, match=message):
        parse_request(body, None)


def test_binary_layout_errors():
    head = b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}'
    with pytest.raises(InputError, match="runs past"):
        parse_request(head + b"\0" * 8, len(head))
    with pytest.raises(InputError, match="belong to no input"):
        parse_request(head + b"\0" * 16, len(head))
    with pytest.raises(InputError, match="Inference-Header-Content-Length is 999"):
        parse_request(head, 999)


def test_responses_mix_json_and_binary_outputs():
    req = parse_request(b'{"id": "7", "inputs": [], "outputs": [{"name": "a", "parameters": {"binary_data": true}},'
                        b' {"name": "b"}]}', None)
    a, b = np.array([[1.5, 2.5]], np.float32), np.array([[True, False]])
    body, head_len = encode_response("m", "1", req, {"a": a, "b": b}, ["a", "b"])
    assert head_len is not None
    head = json.loads(body[:head_len])
    assert head["id"] == "7" and head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1] == {"name": "b", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]}
    np.testing.assert_array_equal(np.frombuffer(body[head_len:], np.float32).reshape(1, 2), a)
    with pytest.raises(InputError, match="unknown outputs"):
        select_outputs(["zz"], [X])


def test_tfserving_row_and_columnar_batches_split_into_batch_1_requests():
    feeds, fmt = parse_predict(b'{"instances": [[1, 2, 3], [4, 5, 6]]}', [X])
    assert fmt == "row" and len(feeds) == 2 and feeds[1]["x"].shape == (1, 3) and feeds[1]["x"].dtype == np.float32
    feeds, fmt = parse_predict(b'{"inputs": {"x": [[1, 2, 3]], "ids": [[1, 2]]}}', [X, IDS])
    assert fmt == "columnar" and feeds[0]["ids"].dtype == np.int64
    rows = encode_predict([{"y": np.array([[1.0, 2.0]])}] * 2, [TensorSpec("y", "float32", (1, 2))], "row")
    assert json.loads(rows) == {"predictions": [[1.0, 2.0], [1.0, 2.0]]}
    cols = encode_predict([{"y": np.array([[1.0, 2.0]])}] * 2, [TensorSpec("y", "float32", (1, 2))], "columnar")
    assert json.loads(cols) == {"outputs": [[1.0, 2.0], [1.0, 2.0]]}
    with pytest.raises(InputError, match="INT64 values must be whole numbers"):
        parse_predict(b'{"instances": [{"x": [1, 2, 3], "ids": [1.5, 2]}]}', [X, IDS])
    with pytest.raises(InputError, match="either"):
        parse_predict(b'{"instances": [], "inputs": []}', [X])
    with pytest.raises(InputError, match=r"expected shape \[N,3\]"):
        parse_predict(b'{"inputs": [[1, 2]]}', [X])


def test_split_cores():
    assert split_cores({"a": 2, "b": 2}, [0, 1, 2, 3], "divide") == {"a": [0, 1], "b": [2, 3]}
    assert split_cores({"a": 6, "b": 2}, list(range(8)), "divide") == {"a": [0, 1, 2, 3, 4, 5], "b": [6, 7]}
    assert split_cores({"a": 2, "b": 2}, [0, 1], "auto") == {"a": [0, 1], "b": [0, 1]}  # too few: share
    assert split_cores({"a": 2, "b": 2}, [0, 1, 2, 3], "auto", {"a": [3]}) == {"a": [3], "b": [0, 1, 2]}
    with pytest.raises(CorepipeError, match="a core per model"):
        split_cores({"a": 1, "b": 1, "c": 1}, [0, 1], "divide")


def test_grpc_typed_and_raw_contents():
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="ids", datatype="INT64", shape=[1, 2])
    t.contents.int64_contents.extend([3, 4])
    np.testing.assert_array_equal(request_of(req).feeds["ids"], [[3, 4]])
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    raw.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
    np.testing.assert_array_equal(request_of(raw).feeds["x"], np.ones((1, 3)))
    raw.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(InputError, match="1 entries for 2 inputs"):
        request_of(raw)
    # An input in shared memory takes no raw contents: the others line up without it.
    raw.inputs[0].parameters["shared_memory_region"].string_param = "in"
    raw.inputs[0].parameters["shared_memory_byte_size"].int64_param = 12
    raw.raw_input_contents[0] = np.full((1,), 7, np.float32).tobytes()
    req = request_of(raw)
    assert req.shm_inputs["x"].region == "in" and req.shm_inputs["x"].byte_size == 12
    np.testing.assert_array_equal(req.feeds["y"], [7])
    raw.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InputError, match=r"2 entries for 1 inputs \(1 more are in shared memory\)"):
        request_of(raw)


def test_admission_window_bridges_futures_without_blocking_the_loop(tmp_path):
    """An inline pipeline behind a ServedModel: concurrent requests all come back right; a full
    window plus queue refuses at once."""
    from conftest import compiled_chain

    import corepipe
    from corepipe.serve.model import Rejected, ServedModel

    path, feeds, refs = compiled_chain(tmp_path, 1024, requests=6, seed=3)
    pipe = corepipe.load(path, backend="inline")
    model = ServedModel("m", path, pipe.plan.inputs, pipe.plan.outputs, pipe, max_queue=5)

    async def main():
        outs = await asyncio.gather(*(model.infer(f) for f in feeds))  # 1 in flight + 5 waiting
        model.running, model.waiting = 1, 5  # as if the window and the queue were full
        with pytest.raises(Rejected, match="at capacity") as info:
            await model.infer(feeds[0])
        return outs, info.value

    outs, rejected = asyncio.run(main())
    pipe.close()
    assert rejected.status == 503 and rejected.code == "RESOURCE_EXHAUSTED" and rejected.retry_after == 1.0
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out["y"] if "y" in out else next(iter(out.values())),
                                   next(iter(ref.values())), rtol=1e-5, atol=1e-5)
    stats = model.statistics()
    assert stats["inference_stats"]["success"]["count"] == 6
    # No batcher underneath: one execution per request, each of its batch size (1 row).
    assert stats["execution_count"] == 6 and [b["batch_size"] for b in stats["batch_stats"]] == [1]
    assert stats["batch_stats"][0]["compute_infer"]["count"] == 6 and stats["batch_stats"][0]["compute_infer"]["ns"] > 0


def test_the_artifacts_deployment_is_served_and_cut_down_to_the_cores_it_gets(tmp_path, caplog):
    """An artifact with a deployment (what `corepipe tune` writes: replicas x threads per stage)
    is served with it; on fewer cores than it needs, with the most replicas that fit."""
    import dataclasses
    import os

    from graphcases import big_weight_model, run_reference

    import corepipe
    from corepipe.artifact.manifest import open_artifact
    from corepipe.artifact.writer import republish_artifact
    from corepipe.serve.config import ServeConfig
    from corepipe.serve.repository import deployment_of, load_models

    case = big_weight_model([64 * 1024] * 2)
    one = corepipe.compile(case.model, tmp_path / "one", example_inputs=case.inputs(), num_cores=1)
    art = open_artifact(one.path)
    tuned = tmp_path / "tuned"
    republish_artifact(art, tuned, dataclasses.replace(art.plan, deployment=corepipe.Deployment(
        replicas=2, threads_per_stage=1, cores=2, objective="throughput")))
    assert deployment_of(tuned) == {"replicas": 2, "threads_per_stage": 1}
    ref = run_reference(case.model, case.feeds)
    cores = sorted(os.sched_getaffinity(0))
    for given, replicas in (([cores[0]], 1), (cores[:2], 2) if len(cores) >= 2 else ([cores[0]], 1)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="corepipe.serve"):
            (model,) = load_models(tuned, ServeConfig(cores=given))
        try:
            assert model.pipe.replicas == replicas
            assert model.deployment == {"replicas": replicas, "threads_per_stage": 1}
            assert model.config()["instance_group"][0]["count"] == replicas
            assert ("needs 2 cores and has 1" in caplog.text) == (len(given) == 1)
            out = model.pipe.run(case.feeds)
            np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-5, atol=1e-5)
        finally:
            model.close()


def test_large_json_is_decoded_off_the_event_loop(tmp_path):
    """A 1.5 MB JSON request is parsed on a worker thread: the loop keeps answering meanwhile."""
    import threading

    from starlette.testclient import TestClient

    import corepipe
    from corepipe.serve import http as serve_http
    from corepipe.serve.http import make_app
    from corepipe.serve.model import ServedModel
    from corepipe.serve.service import Service

    threads = []
    real = serve_http.parse_request

    def spy(body, header):
        threads.append(threading.current_thread().name)
        return real(body, header)

    from conftest import compiled_chain

    path, feeds, refs = compiled_chain(tmp_path, 1024, requests=1, seed=2)
    pipe = corepipe.load(path, backend="inline")
    (name, arr), = feeds[0].items()
    svc = Service([ServedModel("m", path, pipe.plan.inputs, pipe.plan.outputs, pipe, max_queue=4)])
    body = {"inputs": [{"name": name, "shape": list(arr.shape), "datatype": "FP32", "data": arr.ravel().tolist()}]}
    pad = json.dumps(body)[:-1] + ', "padding": "' + "x" * 100_000 + '"}'
    try:
        serve_http.parse_request = spy
        with TestClient(make_app(svc)) as client:
            small = client.post("/v2/models/m/infer", content=json.dumps(body))
            big = client.post("/v2/models/m/infer", content=pad)
    finally:
        serve_http.parse_request = real
        pipe.close()
    assert small.status_code == 200 and big.status_code == 200, big.text
    assert threads[1] != threads[0], threads  # the small one on the loop's thread, the big one not
    out = np.array(big.json()["outputs"][0]["data"], np.float32).reshape(big.json()["outputs"][0]["shape"])
    np.testing.assert_allclose(out, next(iter(refs[0].values())), rtol=1e-5, atol=1e-5)


def test_discover_reads_the_versioned_layout(tmp_path):
    """TF-Serving / Triton's ``name/<version>/``: the model is named after the directory and served
    at its highest version, whether PATH is the version, the model directory or a repository."""
    from corepipe.serve.repository import discover

    for rel in ("repo/rn50/1", "repo/rn50/2", "repo/rn50/notes", "repo/bert", "repo/mlp/3"):
        (tmp_path / rel).mkdir(parents=True)
        if not rel.endswith("notes"):
            (tmp_path / rel / "manifest.json").write_text("{}")
    repo = tmp_path / "repo"
    assert discover(repo / "rn50" / "1") == {"rn50": repo / "rn50" / "1"}
    assert discover(repo / "rn50") == {"rn50": repo / "rn50" / "2"}
    assert discover(repo) == {"bert": repo / "bert", "mlp": repo / "mlp" / "3", "rn50": repo / "rn50" / "2"}
    assert discover(repo / "bert") == {"bert": repo / "bert"}
