"""Bad data fails, never comes back quietly wrong, with the default engine (OpenVINO, which does
not check data): index and size inputs are checked at intake (`InputError`), operands no intake
check covers run on onnxruntime (`StageError` from the stage), and every tensor a stage writes
is checked against the compiled signature (`StageError` naming stage, node and request)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from graphcases import run_reference
from graphcases.baddata import BadRequest, bad_requests, case_request_operands, good, mixed_stream
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

import corepipe
from corepipe.artifact.plan import Plan, TensorSpec
from corepipe.artifact.signature import tensor_problem
from corepipe.artifact.valuechecks import ValueCheck, ValueChecker
from corepipe.compiler.checks.unchecked import find_unchecked
from corepipe.compiler.model.graph import analyze

_spec = importlib.util.spec_from_file_location(
    "unchecked_ops", Path(__file__).resolve().parents[1] / "benchmarks" / "unchecked_ops.py")
assert _spec and _spec.loader
OPS = importlib.util.module_from_spec(_spec)
sys.modules["unchecked_ops"] = OPS
_spec.loader.exec_module(OPS)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _ort(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _ort_raises(model, feeds) -> bool:
    try:
        _ort(model, feeds)
    except Exception:
        return True
    return False


# -- the checks themselves, on the values ------------------------------------------------------
def test_reshape_and_expand_rules_agree_with_onnxruntime():
    """The intake's Reshape and Expand rules refuse exactly what onnxruntime refuses."""
    shape = h.make_tensor_value_info("s", TP.INT64, [None])
    for op, data, targets in [
        ("Reshape", (4, 8), [[8, 4], [-1, 16], [0, -1], [0, 8], [32], [2, 2, -1, 2], [7, -1], [-1, -1],
                             [-2, -16], [0, 0, 0], [3, 11], [0, 0], [4, 8, 1]]),
        ("Expand", (1, 3), [[2, 3], [3], [2, 1, 3], [0, 3], [2, 4], [-1, 3], [1], [3, 1, 1]]),
    ]:
        m = _model([h.make_node(op, ["d", "s"], ["y"])], [shape], [h.make_tensor_value_info("y", TP.FLOAT, None)],
                   [numpy_helper.from_array(np.ones(data, np.float32), "d")])
        for target in targets:
            check = ValueCheck("s", "n", op, "shape", kind=op.lower(), data_shape=data)
            value = np.array(target, np.int64)
            assert (check.problem(value) is not None) == _ort_raises(m, {"s": value}), (op, target)


def test_a_range_check_names_the_input_the_value_its_position_and_the_range():
    check = ValueCheck("input_ids", "Gather_3", "Gather", "indices", lo=(-30522,), hi=(30521,),
                       what="an index into 'word_embeddings' along axis 0 (30522 entries)")
    ids = np.arange(128, dtype=np.int64).reshape(1, 128)
    assert check.problem(ids) is None
    ids[0, 37] = 30522
    assert check.problem(ids) == (
        "input 'input_ids': value 30522 at [0, 37] is out of range: node 'Gather_3' (Gather) reads it as its "
        "indices, an index into 'word_embeddings' along axis 0 (30522 entries), so must be in -30522..30521 "
        "(negative values count from the end, as ONNX allows)")
    # Index tuples (GatherND): one range per column; steps (a cast, an added constant) first.
    nd = ValueCheck("t", "nd", "GatherND", "indices", lo=(-3, -4), hi=(2, 3), steps=(("cast", "int64"), ("add", 1)))
    assert nd.problem(np.array([[1.5, 2.0], [-4.0, 0.0]], np.float32)) is None
    why = nd.problem(np.array([[1.0, 2.0], [0.0, 3.0]], np.float32))
    assert why is not None and "value 3.0 (4 after a cast to int64, adding 1) at [1, 1]" in why
    assert "column 1 of each index tuple must be in -4..3" in why
    assert "NaN" not in str(nd.problem(np.array([[np.nan, 0]], np.float32)))  # refused, not crashed
    assert nd.problem(np.array([[np.nan, 0]], np.float32)) is not None


def test_the_checker_merges_ranges_and_names_the_check_that_refused():
    wide = ValueCheck("ids", "big", "Gather", "indices", lo=(-100,), hi=(99,))
    narrow = ValueCheck("ids", "small", "Gather", "indices", lo=(-10,), hi=(9,))
    size = ValueCheck("n", "tile", "Tile", "repeats", lo=(0,))
    checker = ValueChecker([wide, narrow, size])
    assert checker._merged == {"ids": (-10, 9), "n": (0, math.inf)}
    checker({"ids": np.array([9, -10]), "n": np.array([0, 7])})
    with pytest.raises(corepipe.InputError, match=r"value 50 at \[1\].*node 'small'.*-10\.\.9"):
        checker({"ids": np.array([0, 50]), "n": np.array([1, 1])})
    with pytest.raises(corepipe.InputError, match=r"input 'n': value -1 at \[0\].*at least 0"):
        checker({"ids": np.array([0, 0]), "n": np.array([-1, 1])})


def test_value_checks_round_trip_and_a_tampered_manifest_is_refused():
    checks = (ValueCheck("a", "g", "Gather", "indices", lo=(-5,), hi=(4,), steps=(("cast", "int64"),)),
              ValueCheck("s", "r", "Reshape", "shape", kind="reshape", data_shape=(4, 8), allowzero=True))
    for c in checks:
        assert ValueCheck.from_dict(c.to_dict()) == c
    for bad in [{"kind": "eval"}, {"lo": ["1"]}, {"lo": [1, 2]}, {"steps": [["exec", "x"]]},
                {"steps": [["cast", "object"]]}, {"lo": [float("nan")]}, {"input": 3}]:
        with pytest.raises((ValueError, TypeError, KeyError)):
            ValueCheck.from_dict({**checks[0].to_dict(), **bad})


def test_a_tensor_that_does_not_fit_its_spec_says_how():
    static = TensorSpec("y", "float32", (8, 4))
    dyn = TensorSpec("y", "float32", (8, 4), dynamic=True)
    assert tensor_problem(static, np.zeros((8, 4), np.float32)) is None
    assert "dim 0 is 0, not 8" in str(tensor_problem(static, np.zeros((0, 0), np.float32)))
    assert "with 1 dims" in str(tensor_problem(static, np.zeros(32, np.float32)))
    assert "is float64, compiled as float32" in str(tensor_problem(static, np.zeros((8, 4))))
    assert tensor_problem(dyn, np.zeros((32, 1), np.float32)) is None  # data-dependent: any split
    assert "larger than the compiled" in str(tensor_problem(dyn, np.zeros((8, 5), np.float32)))
    assert "outside 1..4" in str(tensor_problem(static, np.zeros((8, 6), np.float32), dims=(8, (1, 4))))


# -- the analysis -----------------------------------------------------------------------------
def _table_model(index_nodes, inputs):
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    return _model(index_nodes + [h.make_node("Gather", ["table", "idx"], ["y"], name="gather")], inputs,
                  [h.make_tensor_value_info("y", TP.FLOAT, ["n", 4])],
                  [table, numpy_helper.from_array(np.array(1, np.int64), "one"),
                   numpy_helper.from_array(np.array([0], np.int64), "ax0")])


def test_the_analysis_follows_casts_reshapes_and_constant_shifts_to_the_input():
    ids = h.make_tensor_value_info("ids", TP.INT32, [3])
    m = _table_model([h.make_node("Cast", ["ids"], ["c"], to=TP.INT64),
                      h.make_node("Unsqueeze", ["c", "ax0"], ["u"]),
                      h.make_node("Add", ["u", "one"], ["idx"])], [ids])
    found = find_unchecked(analyze(m, {"ids": np.zeros(3, np.int32)}))
    assert not found.onnxruntime
    [check] = found.checks
    assert (check.input, check.node, check.lo, check.hi) == ("ids", "gather", (-10,), (9,))
    assert check.steps == (("cast", "int64"), ("add", 1))


def test_indices_from_shapes_need_nothing_and_computed_ones_need_onnxruntime():
    x = h.make_tensor_value_info("x", TP.FLOAT, [2, 5])
    from_shape = _table_model([h.make_node("Shape", ["x"], ["s"]), h.make_node("Sub", ["s", "one"], ["idx"])], [x])
    from_shape.graph.node.append(h.make_node("Relu", ["x"], ["r"]))  # an output that is not a constant
    from_shape.graph.output.append(h.make_tensor_value_info("r", TP.FLOAT, [2, 5]))
    found = find_unchecked(analyze(from_shape, {"x": np.zeros((2, 5), np.float32)}))
    assert not found.checks and not found.onnxruntime
    ids = h.make_tensor_value_info("ids", TP.INT64, [3])
    computed = _table_model([h.make_node("Mul", ["ids", "ids"], ["idx"], name="square")], [ids])
    found = find_unchecked(analyze(computed, {"ids": np.zeros(3, np.int64)}))
    assert not found.checks
    assert "node 'gather' (Gather) takes its indices from node 'square', from request data" in found.onnxruntime[1]


def _positions_model(rows: int, cast_to: int = TP.INT64):
    """RoBERTa's position ids: cumsum(ids != pad) * (ids != pad) + pad, gathered from ``rows``."""
    ids = h.make_tensor_value_info("ids", TP.INT64, [1, 6])
    inits = [numpy_helper.from_array(np.arange(rows * 2, dtype=np.float32).reshape(rows, 2), "pos"),
             numpy_helper.from_array(np.array(1, np.int64), "pad")]
    nodes = [h.make_node("Equal", ["ids", "pad"], ["eq"]), h.make_node("Not", ["eq"], ["ne"]),
             h.make_node("Cast", ["ne"], ["m"], to=TP.INT32), h.make_node("CumSum", ["m", "pad"], ["cs"]),
             h.make_node("Mul", ["cs", "m"], ["masked"]), h.make_node("Cast", ["masked"], ["mi"], to=cast_to),
             h.make_node("Add", ["mi", "pad"], ["positions"]),
             h.make_node("Gather", ["pos", "positions"], ["y"], name="positions_gather")]
    return _model(nodes, [ids], [h.make_tensor_value_info("y", TP.FLOAT, [1, 6, 2])], inits)


def test_computed_indices_proven_in_range_keep_openvino_and_the_others_do_not():
    feeds = {"ids": np.array([[0, 5, 1, 7, 1, 1]], np.int64)}
    # 6 tokens: positions within 1..7, so a table of 8 rows holds every one, whatever the ids.
    assert find_unchecked(analyze(_positions_model(8), feeds)).onnxruntime == {}
    short = find_unchecked(analyze(_positions_model(7), feeds)).onnxruntime
    assert list(short.values()) == [
        "node 'positions_gather' (Gather) takes its indices from node 'Mul_4', from request data, and openvino "
        "does not check it (reads 0, or another row); onnxruntime does"]
    # A cast that could wrap around (int8 of up to 7 is fine; uint8 of a negative is not) is no proof.
    assert find_unchecked(analyze(_positions_model(8, TP.INT8), feeds)).onnxruntime == {}


def test_an_argmax_index_is_proven_and_an_unbounded_product_is_not():
    x = h.make_tensor_value_info("x", TP.FLOAT, [3, 5])
    ids = h.make_tensor_value_info("ids", TP.INT64, [3])
    table = numpy_helper.from_array(np.ones((5, 2), np.float32), "table")
    for nodes, inputs, proven in [
        ([h.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0)], [x], True),
        ([h.make_node("Mul", ["ids", "ids"], ["idx"])], [ids], False),
        ([h.make_node("Clip", ["ids", "zero", "four"], ["idx"])], [ids], True),
    ]:
        m = _model(nodes + [h.make_node("Gather", ["table", "idx"], ["y"], name="g")], inputs,
                   [h.make_tensor_value_info("y", TP.FLOAT, [3, 2])],
                   [table, numpy_helper.from_array(np.array(0, np.int64), "zero"),
                    numpy_helper.from_array(np.array(4, np.int64), "four")])
        feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim],
                                  np.float32 if i.type.tensor_type.elem_type == TP.FLOAT else np.int64) for i in inputs}
        assert (find_unchecked(analyze(m, feeds)).onnxruntime == {}) is proven, nodes[0].op_type


def test_bert_checks_its_token_ids_at_intake_and_keeps_openvino():
    from corepipe import zoo

    model, feeds = zoo.get("bert", num_layers=1, hidden=32, heads=2, intermediate=64, vocab=1000)
    graph = analyze(model, feeds)
    found = find_unchecked(graph)
    assert not found.onnxruntime
    assert [(c.input, c.lo, c.hi) for c in found.checks] == [("input_ids", (-1000,), (999,))]


# -- every operator, end to end, with the default engine ----------------------------------------
@pytest.mark.parametrize("name", list(OPS.CASES))
def test_each_operator_answers_as_onnxruntime_or_fails_alone(tmp_path, name):
    """Every index or size operand of the README's table, fed by a graph input, compiled with the
    default engine: a good request answers as onnxruntime does; a bad one fails with the right
    error (InputError where the intake checks it, else StageError from onnxruntime's stage), or
    answers as onnxruntime does where onnxruntime answers; never a quiet wrong answer."""
    model, _, feeds_by = OPS.CASES[name]()
    good = feeds_by["ok"]
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=good, num_cores=1)
    checked = {c.input for c in cm.plan.input_checks}
    [stage] = cm.stages
    with corepipe.load(cm.path, backend="inline") as pipe:
        for label, feeds in feeds_by.items():
            try:
                ref = _ort(model, feeds)
            except Exception:
                ref = None
            if ref is not None:
                room = {t.name: t.nbytes for t in cm.plan.outputs}
                if all(r.nbytes <= room[o.name] for r, o in zip(ref, model.graph.output)):
                    out = pipe.run(feeds)
                    for r, o in zip(ref, model.graph.output):
                        np.testing.assert_allclose(out[o.name], r, rtol=1e-5, atol=1e-5, err_msg=f"{name} {label}")
                else:  # a valid answer larger than the example's: refused, never cut short
                    with pytest.raises(corepipe.StageError, match="larger than the compiled"):
                        pipe.run(feeds)
                continue
            if set(feeds) & checked and stage.engine == "openvino":
                with pytest.raises(corepipe.InputError) as info:
                    pipe.run(feeds)
                assert any(f"input {n!r}" in str(info.value) for n in feeds), (name, label, info.value)
            else:
                with pytest.raises((corepipe.InputError, corepipe.StageError)) as info:
                    pipe.run(feeds)
                if isinstance(info.value, corepipe.StageError):
                    assert stage.engine == "onnxruntime" and info.value.stage == 0, (name, label)
                    assert "stage 0 failed on request" in str(info.value)
            # The request after a bad one is right.
            out = pipe.run(good)
            for r, o in zip(_ort(model, good), model.graph.output):
                np.testing.assert_allclose(out[o.name], r, rtol=1e-5, atol=1e-5)
    if stage.engine == "onnxruntime":  # the plan says why
        assert stage.fallback and ("openvino does not check" in stage.fallback or "cannot" in stage.fallback)


# -- a mixed stream, per backend -------------------------------------------------------------------
@pytest.fixture(scope="module")
def operands(tmp_path_factory):
    """`case_request_operands` compiled into 3 stages with the default engine."""
    case = case_request_operands()
    cm = corepipe.compile(case.model, tmp_path_factory.mktemp("operands") / "a", example_inputs=case.feeds,
                          num_cores=3)
    return cm, case


def _stream(pipe, stream, model):
    """Submit ``stream``; every bad request fails with its error and words, every good one equals
    onnxruntime on the whole model."""
    futures = []
    for item in stream:
        if isinstance(item, BadRequest) and item.error == "InputError":
            with pytest.raises(corepipe.InputError) as info:
                pipe.submit(item.feeds)  # refused at submit: nothing enters the pipeline
            assert all(w in str(info.value) for w in item.words), (str(info.value), item.words)
            futures.append(None)
        else:
            futures.append(pipe.submit(item.feeds if isinstance(item, BadRequest) else item))
    for item, fut in zip(stream, futures):
        if fut is None:
            continue
        if isinstance(item, BadRequest):
            exc = fut.exception(timeout=120)
            assert isinstance(exc, corepipe.StageError), exc
            assert all(w in str(exc) for w in item.words), (str(exc), item.words)
            assert f"on request {exc.request_id} " in str(exc) and exc.node in str(exc)
        else:
            out, ref = fut.result(timeout=120), run_reference(model, item)
            for name in ref:
                np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def test_the_plan_checks_at_intake_and_runs_computed_indices_on_onnxruntime(operands):
    cm, _ = operands
    assert sorted((c.input, c.node, c.kind) for c in cm.plan.input_checks) == [
        ("ids", "emb", "range"), ("reps", "tile", "range"), ("shape", "reshape", "reshape")]
    order = [n.name for n in analyze(case_request_operands().model, case_request_operands().feeds).nodes]
    pick = order.index("pick")
    for st in cm.stages:
        if st.node_start <= pick < st.node_end:
            assert st.engine == "onnxruntime"
            assert "node 'pick' (Gather) takes its indices from node 'shift', from request data" in st.fallback
        else:
            assert st.engine == "openvino", st
    assert any("intake checks input 'ids': in -10..9" in n for n in cm.plan.notes)


def test_a_mixed_stream_through_local_fails_each_bad_request_alone(operands, no_leaks):
    cm, case = operands
    with corepipe.load(cm.path, backend="local") as pipe:
        _stream(pipe, mixed_stream(18), case.model)
        st = pipe.stats()
    assert (st.completed, st.failed) == (12, 2)  # the intake's refusals never entered


@pytest.mark.parametrize("backend", ["inline", pytest.param("ray", marks=pytest.mark.slow)])
def test_the_output_check_fails_the_request_alone_on_every_backend(operands, backend):
    """A stage output larger than its compiled size (the Tile of a request's repeats) is a
    StageError naming stage, node and request on every backend; the requests around it are right."""
    if backend == "ray":
        pytest.importorskip("ray")
    cm, case = operands
    over = next(b for b in bad_requests() if "larger than the compiled" in b.words[-1])
    stream = [good(3), good(4), over, good(5), over, good(6)]
    with corepipe.load(cm.path, backend=backend) as pipe:
        _stream(pipe, stream, case.model)


def test_the_manifest_holds_the_checks_and_older_artifacts_load_without_them(operands):
    import dataclasses
    import json

    cm, _ = operands
    data = json.loads((cm.path / "manifest.json").read_text())["plan"]
    assert [c["input"] for c in data["input_checks"]] == [c.input for c in cm.plan.input_checks]
    assert Plan.from_dict(data) == cm.plan
    del data["input_checks"]  # as corepipe wrote it before the checks: still loads, checks nothing
    assert Plan.from_dict(data).input_checks == ()
    stray = dataclasses.replace(cm.plan, input_checks=(ValueCheck("nope", "n", "Gather", "indices"),))
    with pytest.raises(ValueError, match=r"input checks name \['nope'\]"):
        stray.validate()


def test_inspect_shows_the_intake_checks_and_why_a_stage_runs_on_onnxruntime(operands):
    from typer.testing import CliRunner

    from corepipe.cli import app

    cm, _ = operands
    shown = " ".join(CliRunner().invoke(app, ["inspect", str(cm.path)], terminal_width=400).stdout.split())
    assert "intake checks input 'ids': in -10..9 (node 'emb', Gather indices)" in shown, shown
    assert "intake checks input 'shape': a valid reshape of [7, 8]" in shown, shown
    assert "node 'pick' (Gather) takes its indices from node 'shift', from request data" in shown, shown
