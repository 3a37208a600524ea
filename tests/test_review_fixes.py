"""Regressions from an adversarial review: each test is one problem that was found."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import onnx
import pytest
from graphcases import run_reference
from onnx import TensorProto as TP
from onnx import helper as h

import corepipe

pytestmark = pytest.mark.usefixtures("no_leaks")


def _opset(graph):
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_compile_into_the_working_directory_replaces_the_artifact(tmp_path, monkeypatch):
    x = h.make_tensor_value_info("x", TP.FLOAT, [4])
    y = h.make_tensor_value_info("y", TP.FLOAT, [4])
    m = _opset(h.make_graph([h.make_node("Cos", ["x"], ["a"]), h.make_node("Sin", ["a"], ["y"])], "g", [x], [y]))
    art = tmp_path / "art"
    corepipe.compile(m, art, num_cores=2)
    monkeypatch.chdir(art)
    cm = corepipe.compile(m, ".", num_cores=1)
    assert cm.num_cores == 1
    assert sorted(os.listdir(art)) == ["manifest.json", "stage_000.onnx"]
    x = np.array([0.0, 0.5, -1.0, 3.0], np.float32)
    with corepipe.load(art, backend="inline") as pipe:  # the new one-stage artifact, computing sin(cos(x))
        np.testing.assert_allclose(pipe.run({"x": x})["y"], np.sin(np.cos(x)), rtol=1e-6, atol=1e-6)


def test_nine_dim_input_streams_through_the_local_backend(tmp_path):
    shape = [1] * 8 + [3]
    x = h.make_tensor_value_info("x", TP.FLOAT, shape)
    y = h.make_tensor_value_info("y", TP.FLOAT, shape)
    m = _opset(h.make_graph([h.make_node("Neg", ["x"], ["a"]), h.make_node("Neg", ["a"], ["y"])], "g", [x], [y]))
    cm = corepipe.compile(m, tmp_path / "a", num_cores=2)
    feeds = {"x": np.arange(3, dtype=np.float32).reshape(shape)}
    with corepipe.load(cm.path) as pipe:
        np.testing.assert_array_equal(pipe.run(feeds, timeout=30)["y"], feeds["x"])


def test_output_listed_twice_compiles_to_one_output(tmp_path):
    x = h.make_tensor_value_info("x", TP.FLOAT, [2])
    d = h.make_tensor_value_info("d", TP.FLOAT, [2])
    m = _opset(h.make_graph([h.make_node("Neg", ["x"], ["c"]), h.make_node("Exp", ["c"], ["d"])], "g", [x], [d, d]))
    cm = corepipe.compile(m, tmp_path / "a", num_cores=2)
    assert [t.name for t in cm.outputs] == ["d"]


def test_data_dependent_shape_across_a_cut(tmp_path):
    x = h.make_tensor_value_info("x", TP.FLOAT, [6])
    y = h.make_tensor_value_info("y", TP.INT64, [1, None])
    m = _opset(h.make_graph([
        h.make_node("Relu", ["x"], ["r"]), h.make_node("NonZero", ["r"], ["nz"]),
        h.make_node("Identity", ["nz"], ["t"]), h.make_node("Neg", ["t"], ["y"]),
    ], "g", [x], [y]))
    example = {"x": np.arange(6, dtype=np.float32) - 0.5}  # five non-zeros
    cm = corepipe.compile(m, tmp_path / "a", example_inputs=example, cuts=[2])
    fewer = {"x": np.array([1, -1, -1, 2, -1, -1], dtype=np.float32)}
    for backend in ("inline", "local"):
        with corepipe.load(cm.path, backend=backend) as pipe:
            for feeds in (example, fewer):
                np.testing.assert_array_equal(pipe.run(feeds)["y"], run_reference(m, feeds)["y"])


def test_stage_error_names_the_node_not_the_op(tmp_path):
    x = h.make_tensor_value_info("x", TP.INT64, [1])
    y = h.make_tensor_value_info("y", TP.FLOAT, [1])
    table = onnx.numpy_helper.from_array(np.ones(5, np.float32), "table")
    m = _opset(h.make_graph([
        h.make_node("Abs", ["x"], ["ax"], name="abs"),  # an index computed from the request: its stage checks it
        h.make_node("Gather", ["table", "ax"], ["g"], name="gather_b"),
        h.make_node("Neg", ["g"], ["y"], name="neg"),
    ], "g", [x], [y], [table]))
    cm = corepipe.compile(m, tmp_path / "a", num_cores=2, engine="onnxruntime")
    for backend in ("inline", "local"):
        with corepipe.load(cm.path, backend=backend) as pipe:
            with pytest.raises(corepipe.StageError) as info:
                pipe.run({"x": np.array([9], np.int64)})
            assert info.value.node == "gather_b"


def test_close_from_a_done_callback_still_drains(tmp_path):
    from corepipe import zoo

    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    pipe = corepipe.load(cm.path)
    closed = threading.Event()
    futs = [pipe.submit(feeds) for _ in range(6)]
    futs[0].add_done_callback(lambda f: (pipe.close(), closed.set()))
    assert closed.wait(10)
    ref = run_reference(model, feeds)
    for f in futs:  # drained, not failed: close waited for them
        out = f.result(timeout=10)
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-6)
    pipe.close()
    assert pipe.stats().completed == 6  # stats after close: the final figures


def test_sparse_initializer(tmp_path):
    x = h.make_tensor_value_info("x", TP.FLOAT, [4])
    y = h.make_tensor_value_info("y", TP.FLOAT, [4])
    values = onnx.numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "sp")
    indices = onnx.numpy_helper.from_array(np.array([1, 3], np.int64), "sp_idx")
    sparse = h.make_sparse_tensor(values, indices, [4])
    graph = h.make_graph([h.make_node("Add", ["x", "sp"], ["a"]), h.make_node("Neg", ["a"], ["y"])],
                         "g", [x], [y], sparse_initializer=[sparse])
    m = _opset(graph)
    feeds = {"x": np.arange(4, dtype=np.float32)}
    cm = corepipe.compile(m, tmp_path / "a", num_cores=2)
    with corepipe.load(cm.path, backend="inline") as pipe:
        np.testing.assert_array_equal(pipe.run(feeds)["y"], run_reference(m, feeds)["y"])


def test_tampered_giant_boundary_is_refused_before_any_shared_memory(tmp_path):
    from corepipe import zoo

    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    path = cm.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["plan"]["boundaries"][1][0]["shape"] = [2**40, 2**20]
    path.write_text(json.dumps(manifest))
    with pytest.raises(corepipe.ArtifactError, match="1 TiB"):
        corepipe.load(cm.path)
