"""Variable shapes end to end: compile with dynamic dims (native, buckets, auto), run any shape in
range, and transparency against one onnxruntime session on the whole model at that shape."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import onnx
import pytest
from shapemodels import VOCAB, assert_same, concat_model, embed_model, ids, mean_model, reference

import corepipe
from corepipe.engines import missing_engine

pytestmark = pytest.mark.usefixtures("no_leaks")

ENGINES = ["onnxruntime"] + (["openvino"] if missing_engine("openvino") is None else [])
DIMS = {"sequence": (1, 24), "batch": (1, 4)}
EXAMPLE = {"ids": np.arange(8, dtype=np.int64).reshape(1, 8)}


@pytest.fixture(scope="module")
def embed(tmp_path_factory):
    return embed_model(tmp_path_factory.mktemp("embed") / "embed.onnx")


def _compile(model, path, **kw):
    return corepipe.compile(model, path, example_inputs=EXAMPLE, num_cores=2, dynamic_dims=DIMS, **kw)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("buckets", [None, {"sequence": [4, 8, 16, 24]}], ids=["dynamic", "buckets"])
def test_transparent_at_min_max_and_between(embed, tmp_path, engine, buckets):
    cm = _compile(embed, tmp_path / "a", engine=engine, buckets=buckets)
    modes = {st.shape_mode for st in cm.stages}
    assert modes == ({"dynamic"} if buckets is None else {"buckets"})
    assert all(st.engine == engine for st in cm.stages)
    assert cm.plan.shapes.batch == "batch"
    assert cm.inputs[0].describe() == "int64[batch=1..4,sequence=1..24]"
    rng = np.random.default_rng(1)
    with corepipe.load(cm.path, backend="inline") as pipe:
        for batch, length in [(1, 1), (4, 24), (1, 5), (2, 8), (3, 17), (1, 24), (4, 1)]:
            feeds = ids(rng, batch, length)
            assert_same(pipe.run(feeds), reference(embed, feeds))


def test_buckets_hold_one_graph_per_bucket_and_pad_inside(embed, tmp_path):
    cm = _compile(embed, tmp_path / "a", engine="onnxruntime", buckets={"sequence": [8, 16]})
    assert dict(cm.plan.shapes.buckets) == {"sequence": (8, 16, 24)}  # the max is always a bucket
    manifest = json.loads((cm.path / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["plan"]["shapes"]["buckets"] == {"sequence": [8, 16, 24]}
    from corepipe.engines.runner import stage_variants

    art = corepipe.artifact.open_artifact(cm.path)
    variants = stage_variants(art.plan, 0)
    assert [v[0][1] for v in variants] == [(8, 8), (16, 16), (24, 24)]  # static along the bucketed dim
    assert all(v[0][0] == (1, 4) for v in variants)  # the batch stays dynamic


def test_a_bucket_list_alone_makes_its_dim_dynamic_up_to_the_largest_bucket(embed, tmp_path):
    """``buckets={"sequence": [8, 16, 24]}`` without dynamic_dims: sequence runs 1..24 (the batch,
    not named, stays at the example's 1); the CLI's --buckets alone does the same, and inspect
    says the range and where it came from."""
    cm = corepipe.compile(embed, tmp_path / "a", example_inputs=EXAMPLE, num_cores=2, engine="onnxruntime",
                          buckets={"sequence": [8, 16, 24]})
    assert dict(cm.plan.shapes.dims) == {"sequence": (1, 24)} and cm.plan.shapes.batch is None
    assert dict(cm.plan.shapes.buckets) == {"sequence": (8, 16, 24)}
    assert cm.inputs[0].describe() == "int64[1,sequence=1..24]"
    rng = np.random.default_rng(4)
    with corepipe.load(cm.path, backend="inline") as pipe:
        for length in (1, 9, 24):
            feeds = ids(rng, 1, length)
            assert_same(pipe.run(feeds), reference(embed, feeds))
    with pytest.raises(corepipe.CompileError, match=r"buckets for 'sequence' must be a list of positive sizes"):
        corepipe.compile(embed, tmp_path / "b", example_inputs=EXAMPLE, buckets={"sequence": [0, 8]})
    from typer.testing import CliRunner

    from corepipe.cli import app

    np.savez(tmp_path / "ex.npz", **EXAMPLE)
    res = CliRunner().invoke(app, ["compile", str(embed), "-o", str(tmp_path / "c"), "-n", "2", "--inputs",
                                   str(tmp_path / "ex.npz"), "--buckets", "sequence=8,16", "--engine", "onnxruntime"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "c")])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "dynamic dims: sequence 1..16" in text, res.output
    assert "buckets [8, 16] imply the dynamic dim sequence 1..16" in text


def test_static_plans_keep_manifest_version_2(embed, tmp_path):
    cm = corepipe.compile(embed, tmp_path / "a", example_inputs=EXAMPLE, num_cores=2)
    manifest = json.loads((cm.path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and "shapes" not in manifest["plan"]
    assert all("shape_mode" not in st and "min_shape" not in st["inputs"] for st in manifest["plan"]["stages"])


def test_auto_measures_both_and_records_the_choice(embed, tmp_path):
    cm = _compile(embed, tmp_path / "a", buckets="auto", shape_profile="sequence~6:24")
    for st in cm.stages:
        assert {"min_s", "typical_s", "max_s", "dynamic_s", "buckets_s"} <= set(st.shape_costs)
    note = next(n for n in cm.plan.notes if n.startswith("buckets 'auto' chose"))
    assert "dynamic" in note and "padded to buckets" in note
    assert cm.plan.shapes.profile is not None
    rng = np.random.default_rng(2)
    with corepipe.load(cm.path, backend="inline") as pipe:
        for length in (1, 6, 13, 24):
            feeds = ids(rng, 1, length)
            assert_same(pipe.run(feeds), reference(embed, feeds))


def test_unknown_dim_names_the_models_symbolic_dims(embed, tmp_path):
    with pytest.raises(corepipe.CompileError) as err:
        corepipe.compile(embed, tmp_path / "a", example_inputs=EXAMPLE, dynamic_dims={"seq": (1, 8)})
    text = str(err.value)
    assert "['seq']" in text and "'sequence' (input 'ids' axis 1" in text and "'batch' (input 'ids' axis 0" in text


def test_example_outside_its_range_is_refused(embed, tmp_path):
    with pytest.raises(corepipe.CompileError, match=r"example input 'ids' has sequence=8 .* outside dynamic_dims"):
        corepipe.compile(embed, tmp_path / "a", example_inputs=EXAMPLE, dynamic_dims={"sequence": (1, 4)})


def test_buckets_whose_padding_changes_an_answer_are_refused(tmp_path):
    model = mean_model(tmp_path / "mean.onnx")
    example = {"x": np.ones((1, 4, 8), np.float32)}
    with pytest.raises(corepipe.CompileError, match=r"pooled.*differs from the unpadded one.*pad_values="):
        corepipe.compile(model, tmp_path / "a", example_inputs=example, num_cores=2,
                         dynamic_dims={"sequence": (1, 16)}, buckets={"sequence": [8, 16]})
    # auto does not pad such a model: it stays on dynamic graphs, and says why
    cm = corepipe.compile(model, tmp_path / "b", example_inputs=example, num_cores=2,
                          dynamic_dims={"sequence": (1, 16)}, buckets="auto")
    assert {st.shape_mode for st in cm.stages} == {"dynamic"} and not cm.plan.shapes.buckets
    x = np.random.default_rng(0).standard_normal((1, 11, 8)).astype(np.float32)
    with corepipe.load(cm.path, backend="inline") as pipe:
        assert_same(pipe.run({"x": x}), reference(model, {"x": x}))


def test_output_axes_no_dim_names_cannot_be_trimmed(tmp_path):
    model = concat_model(tmp_path / "cat.onnx")
    example = {"x": np.ones((1, 4, 8), np.float32)}
    with pytest.raises(corepipe.CompileError, match=r"output 'y' varies along an axis .* cannot be trimmed"):
        corepipe.compile(model, tmp_path / "a", example_inputs=example, num_cores=2,
                         dynamic_dims={"sequence": (1, 16)}, buckets={"sequence": [8, 16]})
    cm = corepipe.compile(model, tmp_path / "b", example_inputs=example, num_cores=2,
                          dynamic_dims={"sequence": (1, 16)}, buckets=None)
    assert cm.outputs[0].describe() == "float32[1,2..32,8]"  # varies, named by no dim: run, then copied
    x = np.random.default_rng(0).standard_normal((1, 9, 8)).astype(np.float32)
    with corepipe.load(cm.path) as pipe:
        assert_same(pipe.run({"x": x}), reference(model, {"x": x}))


@pytest.fixture(scope="module")
def compiled(embed, tmp_path_factory):
    return _compile(embed, tmp_path_factory.mktemp("c") / "a", buckets=None).path


def test_mixed_shapes_stream_in_order_and_bad_dims_fail_alone(embed, compiled):
    rng = np.random.default_rng(3)
    shapes = [(1 + i % 4, 1 + (i * 7) % 24) for i in range(40)]
    feeds = [ids(rng, b, n) for b, n in shapes]
    with corepipe.load(compiled) as pipe:
        futs = [pipe.submit(f) for f in feeds]
        with pytest.raises(corepipe.InputError) as err:
            pipe.submit(ids(rng, 1, 25))
        assert str(err.value).startswith("input 'ids': dim 'sequence' (axis 1) is 25, outside its range 1..24")
        with pytest.raises(corepipe.InputError, match=r"dim 'batch' \(axis 0\) is 5, outside its range 1..4"):
            pipe.submit(ids(rng, 5, 3))
        for f, x in zip(futs, feeds):
            assert_same(f.result(timeout=60), reference(embed, x))
        assert pipe.stats().completed == len(feeds)
        assert_same(pipe.run(feeds[0]), reference(embed, feeds[0]))  # the pipeline goes on


def test_kill_9_mid_stream_with_mixed_shapes_loses_nothing(embed, compiled):
    rng = np.random.default_rng(4)
    feeds = [ids(rng, 1 + i % 3, 1 + (i * 5) % 24) for i in range(300)]
    with corepipe.load(compiled) as pipe:
        killed = []

        def killer():
            for stage in (1, 0):
                time.sleep(0.1)
                pid = pipe.worker_pids()[stage]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        t = threading.Thread(target=killer)
        t.start()
        outs = list(pipe.map(feeds))
        t.join()
        st = pipe.stats()
    assert len(killed) == 2 and sum(s.restarts for s in st.stages) >= 1
    for out, x in zip(outs, feeds):
        assert_same(out, reference(embed, x))


def test_replicas_run_mixed_shapes(embed, tmp_path):
    # one stage, so two replicas fit two cores; with buckets, so each request is padded once
    cm = corepipe.compile(embed, tmp_path / "a", example_inputs=EXAMPLE, num_cores=1, dynamic_dims=DIMS,
                          buckets={"sequence": [8, 16]})
    rng = np.random.default_rng(5)
    feeds = [ids(rng, 1 + n % 2, n) for n in (3, 24, 1, 9, 17, 2, 16, 8)]
    with corepipe.load(cm.path, replicas=2, threads_per_stage=1) as pipe:
        assert pipe.replicas == 2
        for out, x in zip(pipe.map(feeds), feeds):
            assert_same(out, reference(embed, x))


@pytest.mark.slow
def test_ray_runs_mixed_shapes(embed, compiled):
    ray = pytest.importorskip("ray")
    rng = np.random.default_rng(6)
    feeds = [ids(rng, 1 + n % 4, n) for n in (3, 24, 1, 9, 17, 2, 12)]
    with corepipe.load(compiled, backend="ray") as pipe:
        # data_path "auto" (the default) picks the stream: frames over the dims' ranges, no Ray call
        assert pipe.data_path == "stream"
        for out, x in zip(pipe.map(feeds), feeds):
            assert_same(out, reference(embed, x))
        with pytest.raises(corepipe.InputError, match="outside its range"):
            pipe.submit(ids(rng, 1, 30))
    assert not ray.is_initialized()


def test_cli_compiles_with_dynamic_dims_and_inspect_lists_symbolic_dims(embed, tmp_path):
    from typer.testing import CliRunner

    from corepipe.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(embed)])
    assert res.exit_code == 0, res.output
    assert "symbolic dims: 'batch' (input 'ids' axis 0" in " ".join(res.output.split())
    np.savez(tmp_path / "ex.npz", **EXAMPLE)
    res = runner.invoke(app, ["compile", str(embed), "-o", str(tmp_path / "a"), "-n", "2", "--inputs",
                              str(tmp_path / "ex.npz"), "--dynamic", "sequence=1:24", "--dynamic", "batch=1:4",
                              "--buckets", "sequence=8,16", "--engine", "onnxruntime", "--pad-value", "ids=0"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "dynamic dims: sequence 1..24, batch 1..4 (batch: batch)" in text
    assert "buckets: sequence [8, 16, 24]; pad values {'ids': 0}" in text and "stage 1: buckets" in text
    res = runner.invoke(app, ["compile", str(embed), "-o", str(tmp_path / "b"), "--inputs", str(tmp_path / "ex.npz"),
                              "--dynamic", "seq=1:24"])
    assert res.exit_code != 0 and "not a symbolic dim" in " ".join(res.output.split())
    res = runner.invoke(app, ["compile", str(embed), "-o", str(tmp_path / "c"), "--dynamic", "sequence=24"])
    assert res.exit_code != 0 and "NAME=MIN:MAX" in res.output


# -- value checks (issue 18) over dynamic dims ------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("buckets", [None, {"sequence": [8, 16, 24]}], ids=["dynamic", "buckets"])
def test_a_request_of_any_shape_gets_range_and_value_checks(embed, tmp_path, engine, buckets):
    cm = _compile(embed, tmp_path / "a", engine=engine, buckets=buckets)
    assert [(c.input, c.lo, c.hi) for c in cm.plan.input_checks] == [("ids", (-VOCAB,), (VOCAB - 1,))]
    rng = np.random.default_rng(7)
    with corepipe.load(cm.path, backend="inline") as pipe:
        bad = ids(rng, 2, 13)
        bad["ids"][1, 11] = VOCAB + 3  # a token id past the table: OpenVINO would read zeros
        with pytest.raises(corepipe.InputError, match=rf"value {VOCAB + 3} at \[1, 11\] is out of range"):
            pipe.run(bad)
        with pytest.raises(corepipe.InputError, match=r"dim 'sequence' .* outside its range 1..24"):
            pipe.run(ids(rng, 1, 25))
        for batch, length in [(2, 13), (1, 1), (4, 24)]:
            feeds = ids(rng, batch, length)
            assert_same(pipe.run(feeds), reference(embed, feeds))
        assert pipe.stats().completed == 3


def test_an_index_into_a_varying_axis_has_no_static_rule_and_runs_on_onnxruntime(tmp_path):
    """An index into the sequence axis allows 0..length-1 at each length: no bound stated at one
    size holds at another, so the node's stage runs on onnxruntime, which checks."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "sequence", 8])
    pick = helper.make_tensor_value_info("pick", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])
    graph = helper.make_graph([helper.make_node("Gather", ["x", "pick"], ["y"], axis=1, name="pick_row")],
                              "g", [x, pick], [y])
    model = tmp_path / "pick.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    example = {"x": np.ones((1, 8, 8), np.float32), "pick": np.array([3], np.int64)}
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=example, num_cores=1,
                          dynamic_dims={"sequence": (1, 16)}, buckets=None)
    assert not cm.plan.input_checks
    if "openvino" in ENGINES:
        assert cm.stages[0].engine == "onnxruntime" and "pick_row" in cm.stages[0].fallback
    with corepipe.load(cm.path, backend="inline") as pipe:
        x5 = np.arange(40, dtype=np.float32).reshape(1, 5, 8)
        np.testing.assert_array_equal(pipe.run({"x": x5, "pick": np.array([4])})["y"], x5[:, 4:5])
        with pytest.raises(corepipe.StageError):
            pipe.run({"x": x5, "pick": np.array([7])})  # in range at 16, not at 5
        np.testing.assert_array_equal(pipe.run({"x": x5, "pick": np.array([0])})["y"], x5[:, 0:1])
