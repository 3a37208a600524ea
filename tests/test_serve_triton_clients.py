"""Triton's own clients against `corepipe serve` on an image classifier (issue 28, section 1):
``tiny_cnn`` with a dynamic batch dim, declared NCHW with labels.

- The call sequence of Triton's ``image_client.py`` example (its source is not in tritonclient's
  wheel): metadata and config read as it reads them (one input of 3 dims past the batch,
  ``format`` NCHW, one vector output), then a batch asked with ``class_count=3`` over HTTP and
  gRPC, answered as ``"score:index:label"`` strings, the top 3 of onnxruntime's logits.
- perf_analyzer ``-b 4 --shared-memory system`` on a batch dim that runs to 8: its output regions
  hold 4 rows, and the server checks them against 4 rows' bytes.
"""

from __future__ import annotations

import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from conftest import skip_unless_ci
from serving import Server, perf_analyzer

import corepipe
from corepipe import zoo

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")

pytestmark = pytest.mark.slow

LABELS = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``cnn``: tiny_cnn (input [batch,3,32,32] -> logits [batch,10]), batch 1..8, 2 stages."""
    root = tmp_path_factory.mktemp("triton_clients")
    model, feeds = zoo.get("tiny_cnn")
    for tensor in (model.graph.input[0], model.graph.output[0]):
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    corepipe.compile(model, root / "repo" / "cnn", example_inputs=feeds, num_cores=2, engine="onnxruntime",
                     dynamic_dims={"batch": (1, 8)})
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    srv = Server.start(root / "repo", "--input-format", "cnn=NCHW", "--labels", f"cnn={root / 'labels.txt'}")
    yield srv, model
    code = srv.stop()
    assert code == 0, "\n".join(srv.lines)
    assert srv.shm() == set()


def _top3(logits: np.ndarray) -> list[list[str]]:
    order = np.argsort(-logits, axis=1, kind="stable")[:, :3]
    return [[f"{row[i]:f}:{i}:{LABELS[i]}" for i in idx] for row, idx in zip(logits, order)]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client_call_sequence_classifies_a_batch(served, protocol):
    srv, model = served
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(srv.http if protocol == "http" else srv.grpc)
    meta, config = client.get_model_metadata("cnn"), client.get_model_config("cnn")
    if protocol == "grpc":  # image_client.py reads the protobufs' fields, and the JSON's keys
        inputs, outputs = [(t.name, list(t.shape), t.datatype) for t in meta.inputs], list(meta.outputs)
        config = config.config
        max_batch, fmt, dims = config.max_batch_size, config.input[0].format, list(config.input[0].dims)
        label_file = config.output[0].label_filename
    else:
        inputs, outputs = [(t["name"], t["shape"], t["datatype"]) for t in meta["inputs"]], meta["outputs"]
        max_batch, dims = config["max_batch_size"], config["input"][0]["dims"]
        fmt = dict(mc.ModelInput.Format.items())[config["input"][0]["format"]]
        label_file = config["output"][0]["label_filename"]
    assert len(inputs) == 1 and len(outputs) == 1 and max_batch == 8
    name, shape, datatype = inputs[0]
    assert shape == [-1, 3, 32, 32] and dims == [3, 32, 32] and datatype == "FP32"
    assert fmt == mc.ModelInput.FORMAT_NCHW and label_file == "labels.txt"
    # An "image" batch of 3 (HWC pixels, transposed to CHW as image_client does for NCHW).
    rng = np.random.default_rng(0)
    images = np.stack([np.transpose(rng.integers(0, 255, (32, 32, 3)).astype(np.float32) / 255, (2, 0, 1))
                       for _ in range(3)])
    x = module.InferInput(name, list(images.shape), datatype)
    x.set_data_from_numpy(images)
    out_name = outputs[0].name if protocol == "grpc" else outputs[0]["name"]
    result = client.infer("cnn", [x], outputs=[module.InferRequestedOutput(out_name, class_count=3)])
    got = result.as_numpy(out_name)
    assert got.shape == (3, 3) and got.dtype == object
    logits = ort.InferenceSession(model.SerializeToString()).run(None, {name: images})[0]
    want = _top3(logits)
    for r in range(3):
        texts = [b.decode() for b in got[r]]
        assert [t.split(":")[1:] for t in texts] == [w.split(":")[1:] for w in want[r]]
        np.testing.assert_allclose([float(t.split(":")[0]) for t in texts],
                                   [float(w.split(":")[0]) for w in want[r]], rtol=1e-4, atol=1e-4)
    # Without class_count, the raw logits come back, as before.
    raw = client.infer("cnn", [x]).as_numpy(out_name)
    np.testing.assert_allclose(raw, logits, rtol=1e-4, atol=1e-4)


def test_perf_analyzer_batch_4_in_system_shared_memory_on_a_batch_dim_of_8(served):
    binary, env, why = perf_analyzer()
    if binary is None:
        skip_unless_ci(why)
    srv, _ = served
    for url, proto in ((srv.grpc, "grpc"), (srv.http, "http")):
        res = subprocess.run(
            [binary, "-m", "cnn", "-u", url, "-i", proto, "-b", "4", "--shared-memory", "system",
             "--concurrency-range", "1", "--measurement-mode", "count_windows", "--measurement-request-count",
             "20", "--max-trials", "3", "--stability-percentage", "1000"],
            env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0 and "Throughput:" in res.stdout, res.stdout + res.stderr
        assert "error" not in res.stdout.lower(), res.stdout
