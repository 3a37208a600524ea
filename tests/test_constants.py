"""Constants (`corepipe.compiler.model.constants`): a value computed from weights and static shapes alone
never crosses a boundary. Small ones are folded into weights; larger ones stay a cone of nodes that
each reading stage copies, holding (and counting) the weights behind it once, never a second,
transformed copy. With external weights, analysing does not read them; the chunked probe runs
cones too; and a stage that OpenVINO reads as not static is a finding in the plan, said loudly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphcases import run_reference
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import corepipe
import corepipe.compiler.model.probe as probe
from corepipe.cli import app
from corepipe.compiler.model.constants import FOLD_BYTES
from corepipe.compiler.model.graph import analyze

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
H = 64  # a [64, 64] float weight is 16 KiB: over FOLD_BYTES


def exporter_like() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """What the legacy torch exporter writes: Identity nodes at the top over a weight it
    deduplicated (``w``, 16 KiB, and a 256-byte bias ``b``), read again at the end, and
    Shape/Gather/Concat arithmetic over the input whose result a Reshape reads late."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((H, H)) * H**-0.5).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    n = helper.make_node
    nodes = [
        n("Identity", ["w"], ["w_alias"], name="alias_w"),
        n("Identity", ["b"], ["b_alias"], name="alias_b"),
        n("Shape", ["x"], ["shp"], name="shape"),
        n("Gather", ["shp", "zero"], ["rows"], name="rows", axis=0),
        n("Concat", ["rows", "minus1"], ["flat"], name="flat", axis=0),
        n("MatMul", ["x", "w"], ["h1"], name="mm1"),
        n("Add", ["h1", "b"], ["h2"], name="add1"),
        n("Relu", ["h2"], ["h3"], name="relu"),
        n("Tanh", ["h3"], ["h4"], name="tanh"),
        n("Sigmoid", ["h4"], ["h5"], name="sigmoid"),
        n("MatMul", ["h5", "w_alias"], ["h6"], name="mm2"),
        n("Add", ["h6", "b_alias"], ["h7"], name="add2"),
        n("Reshape", ["h7", "flat"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(nodes, "exporter_like", [helper.make_tensor_value_info("x", F32, ["batch", H])],
                              [helper.make_tensor_value_info("y", F32, ["batch", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, {"x": rng.standard_normal((2, H)).astype(np.float32)}


def test_small_constants_fold_big_ones_stay_cones():
    model, feeds = exporter_like()
    g = analyze(model, feeds)
    assert [node.name for node in g.nodes] == ["mm1", "add1", "relu", "tanh", "sigmoid", "mm2", "add2", "reshape"]
    assert "w_alias" in g.cones and g.cones.leaves["w_alias"] == ("w",)  # an alias: no second copy
    assert "b_alias" in g.initializers and g.weight_bytes["b_alias"] <= FOLD_BYTES  # folded
    np.testing.assert_array_equal(numpy_helper.to_array(g.initializers["flat"]), [2, -1])  # from the static shape
    assert not {"shp", "rows", "one"} & set(g.initializers)  # what only folding read is gone
    mm2 = next(node for node in g.nodes if node.name == "mm2")
    assert mm2.reads == ("h5", "w_alias") and mm2.weights == ("w",)
    assert not any(name in g.cones or name in g.weight_bytes for names in g.live for name in names)


@pytest.mark.parametrize("cut", range(1, 8))
def test_no_constant_crosses_and_each_reader_holds_the_weight(cut, tmp_path):
    model, feeds = exporter_like()
    cm = corepipe.compile(model, tmp_path, example_inputs=feeds, cuts=[cut])
    crossing = {t.name for t in cm.plan.boundaries[1]}
    assert not crossing & {"w", "w_alias", "b", "b_alias", "shp", "rows", "flat"}, crossing
    w_bytes = H * H * 4
    for st in cm.stages:
        stage = onnx.load(str(tmp_path / st.file))
        inits = {t.name for t in stage.graph.initializer}
        ops = [node.op_type for node in stage.graph.node]
        holds = range(st.node_start, st.node_end)
        if 0 in holds or 5 in holds:  # mm1 reads w, mm2 reads it through the alias
            assert "w" in inits and "w_alias" not in inits and st.resident_bytes >= w_bytes, (st, inits)
        assert "Shape" not in ops and ops.count("Identity") == (5 in holds), ops
    with corepipe.load(tmp_path, backend="inline") as pipe:
        got = pipe.run(feeds)
    np.testing.assert_allclose(got["y"], run_reference(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_constant_output_comes_from_the_last_stage(tmp_path):
    model, feeds = exporter_like()
    model.graph.output.append(helper.make_tensor_value_info("w_alias", F32, [H, H]))
    cm = corepipe.compile(model, tmp_path, example_inputs=feeds, num_cores=2)
    assert "w_alias" in cm.stages[-1].outputs and all("w_alias" not in {t.name for t in b} for b in cm.plan.boundaries[1:-1])
    with corepipe.load(tmp_path, backend="inline") as pipe:
        got = pipe.run(feeds)
    np.testing.assert_array_equal(got["w_alias"], run_reference(model, feeds)["w_alias"])


def test_external_weights_are_not_read_to_find_constants(tmp_path):
    model, feeds = exporter_like()
    path = tmp_path / "m.onnx"
    onnx.save_model(onnx.ModelProto.FromString(model.SerializeToString()), str(path), save_as_external_data=True,
                    location="m.data", size_threshold=1024)
    g = analyze(path, feeds)
    w = g.initializers["w"]
    assert w.data_location == TensorProto.EXTERNAL and not w.raw_data  # still a reference on disk
    a = corepipe.compile(path, tmp_path / "a", example_inputs=feeds, num_cores=2)
    b = corepipe.compile(model, tmp_path / "b", example_inputs=feeds, num_cores=2)
    assert [(s.sha256, s.weights_sha256) for s in a.stages] == [(s.sha256, s.weights_sha256) for s in b.stages]


def test_chunked_probe_runs_the_cones_it_reads(monkeypatch):
    """com.microsoft Gelu leaves shape inference nothing after it; the weight after it is a
    Transpose of a 16 KiB weight (a cone), which every probe chunk that reads it must compute."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), f"w{i}") for i in range(3)]
    n = helper.make_node
    nodes = [n("Transpose", ["w2"], ["w2t"], perm=[1, 0]),
             n("MatMul", ["x", "w0"], ["a"]), n("Gelu", ["a"], ["g"], domain="com.microsoft"),
             n("MatMul", ["g", "w1"], ["c"]), n("Relu", ["c"], ["d"]), n("MatMul", ["d", "w2t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1, H])],
                              [helper.make_tensor_value_info("y", F32, [1, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    feeds = {"x": rng.standard_normal((1, H)).astype(np.float32)}
    monkeypatch.setattr(probe, "_chunks", lambda nodes, inits, cut_ok, budget: [(i, i + 1) for i in range(len(nodes))])
    monkeypatch.setattr(probe, "_probe_whole", lambda *a, **k: pytest.fail("fell back to the whole model"))
    g = analyze(model, feeds)
    assert "w2t" in g.cones and all(g.tensors[name].shape == (1, H) for name in ("g", "c", "d"))


def test_a_stage_openvino_reads_as_not_static_is_said_loudly(tmp_path):
    """NonZero's output shape depends on the data: the stage after it cannot be static. The plan
    says so, and compile and inspect print a note for that stage (what it means: issue 28)."""
    pytest.importorskip("openvino")
    n = helper.make_node
    nodes = [n("NonZero", ["x"], ["nz"]), n("Cast", ["nz"], ["nzf"], to=F32), n("ReduceSum", ["nzf"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "nz", [helper.make_tensor_value_info("x", F32, [8])],
                              [helper.make_tensor_value_info("y", F32, [])])
    path = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    cm = corepipe.compile(path, tmp_path / "a", cuts=[1])
    said = [note for note in cm.plan.notes if note.startswith("stage 1 ")]
    assert said and "not static" in said[0] and "OpenVINO reads" in said[0], cm.plan.notes
    runner = CliRunner()
    for args in (["compile", str(path), "-o", str(tmp_path / "b"), "-n", "2"], ["inspect", str(tmp_path / "a")]):
        shown = runner.invoke(app, args).stdout
        lines = [line for line in shown.splitlines() if line.startswith("note: stage 1")]
        assert lines and "works out per request" in " ".join(lines), shown


def test_a_shape_slice_of_static_dims_is_constant_beside_a_dynamic_dim():
    """NonZero's output is [rank of x, ?] ([1, ?] here): the count of non-zeros depends on the
    data, the rank does not, so Shape(start=0, end=1) of it is a constant (folded), while the
    whole Shape is not."""
    n = helper.make_node
    nodes = [n("NonZero", ["x"], ["nz"]), n("Shape", ["nz"], ["rank"], start=0, end=1),
             n("Shape", ["nz"], ["whole"]), n("Cast", ["nz"], ["nzf"], to=F32),
             n("ReduceSum", ["nzf", "rank"], ["y"], keepdims=0), n("Cast", ["whole"], ["z"], to=F32)]
    graph = helper.make_graph(nodes, "slice", [helper.make_tensor_value_info("x", F32, [8])],
                              [helper.make_tensor_value_info("y", F32, ["n"]), helper.make_tensor_value_info("z", F32, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    g = analyze(model, {"x": np.arange(8, dtype=np.float32)})
    np.testing.assert_array_equal(numpy_helper.to_array(g.initializers["rank"]), [1])
    assert "whole" not in g.initializers and "whole" not in g.cones
    assert [node.op_type for node in g.nodes] == ["NonZero", "Shape", "Cast", "ReduceSum", "Cast"]
