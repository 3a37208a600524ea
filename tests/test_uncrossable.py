"""Values that cannot cross a stage boundary (sequences, optionals, dtypes numpy lacks) are
never cut across: the solver routes around them, explicit cuts through them are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphcases import run_reference
from onnx import TensorProto as TP
from onnx import helper as h

import corepipe
from corepipe.compiler.model.graph import analyze

pytestmark = pytest.mark.usefixtures("no_leaks")


def _model(nodes, out="y"):
    x = h.make_tensor_value_info("x", TP.FLOAT, [2, 3])
    y = h.make_tensor_value_info(out, TP.FLOAT, [2, 3])
    return h.make_model(h.make_graph(nodes, "g", [x], [y]), opset_imports=[h.make_opsetid("", 17)])


def sequence_model():
    return _model([
        h.make_node("Relu", ["x"], ["a"]), h.make_node("Neg", ["a"], ["b"]),
        h.make_node("SequenceConstruct", ["a", "b"], ["s"]),
        h.make_node("Tanh", ["a"], ["c"]),
        h.make_node("SequenceAt", ["s", "one"], ["e"]), h.make_node("Add", ["e", "c"], ["f"]),
        h.make_node("Sigmoid", ["f"], ["g"]), h.make_node("Exp", ["g"], ["y"]),
    ]), "s"


def bfloat16_model():
    return _model([
        h.make_node("Relu", ["x"], ["r"]), h.make_node("Cast", ["r"], ["a"], to=TP.BFLOAT16),
        h.make_node("Cast", ["a"], ["b"], to=TP.FLOAT), h.make_node("Neg", ["b"], ["c"]),
        h.make_node("Exp", ["c"], ["y"]),
    ]), "a"


def optional_model():
    return _model([
        h.make_node("Relu", ["x"], ["r"]), h.make_node("Optional", ["r"], ["o"]),
        h.make_node("Tanh", ["r"], ["t"]), h.make_node("OptionalGetElement", ["o"], ["e"]),
        h.make_node("Add", ["e", "t"], ["f"]), h.make_node("Exp", ["f"], ["y"]),
    ]), "o"


def _with_one(model):
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), "one"))
    return model


@pytest.mark.parametrize("build", [sequence_model, bfloat16_model, optional_model])
def test_solver_routes_around_values_that_cannot_cross(tmp_path, build):
    model, blocker = build()
    model = _with_one(model)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    ref = run_reference(model, {"x": x})
    graph = analyze(model)
    blocked = [p for p, ok in enumerate(graph.cuttable()) if not ok]
    assert blocked and all(blocker in graph.live[p] for p in blocked)
    for k in (2, 3):
        cm = corepipe.compile(model, tmp_path / f"k{k}", num_cores=k)
        starts = [s.node_start for s in cm.stages]
        assert not set(starts) & set(blocked)
        assert all(blocker not in [t.name for t in b] for b in cm.plan.boundaries)
        for backend in ("inline", "local"):
            with corepipe.load(cm.path, backend=backend) as pipe:
                np.testing.assert_allclose(pipe.run({"x": x})["y"], ref["y"], rtol=1e-5, atol=1e-6)
    with pytest.raises(corepipe.CompileError, match=f"cannot cut before node {blocked[0]}: '{blocker}'"):
        corepipe.compile(model, tmp_path / "cut", cuts=[blocked[0]])


def test_too_many_stages_for_the_cuttable_places_is_a_clear_error(tmp_path):
    model, _ = sequence_model()
    model = _with_one(model)
    places = sum(analyze(model).cuttable()[1:-1])
    with pytest.raises(corepipe.CompileError, match=f"only {places} places"):
        corepipe.compile(model, tmp_path / "a", num_cores=places + 2)


def test_sequence_output_or_bfloat16_input_is_refused(tmp_path):
    model, _ = sequence_model()
    model = _with_one(model)
    model.graph.output.append(h.make_tensor_sequence_value_info("s", TP.FLOAT, [2, 3]))
    with pytest.raises(corepipe.CompileError, match="model output 's' is a sequence"):
        corepipe.compile(model, tmp_path / "a", num_cores=1)
    x = h.make_tensor_value_info("x", TP.BFLOAT16, [2])
    y = h.make_tensor_value_info("y", TP.FLOAT, [2])
    m = h.make_model(h.make_graph([h.make_node("Cast", ["x"], ["y"], to=TP.FLOAT)], "g", [x], [y]),
                     opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(corepipe.CompileError, match="input 'x' is bfloat16"):
        corepipe.compile(m, tmp_path / "b", num_cores=1)
