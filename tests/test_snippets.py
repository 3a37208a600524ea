"""OpenVINO's snippets per stage: on where the compiler's check against onnxruntime passes with
them, off (SNIPPETS_MODE=DISABLE) where they compute the stage wrong, and off in artifacts
compiled before the choice existed (they were checked without)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphcases import run_reference
from onnx import TensorProto as TP
from onnx import helper as h

import corepipe
from corepipe.artifact.plan import StagePlan
from corepipe.engines import missing_engine, precision_problem

pytestmark = pytest.mark.skipif(missing_engine("openvino") is not None, reason="openvino is not installed")


def _eltwise_chain() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Add, Mul, Relu, Exp, Add, Mul, Relu: OpenVINO fuses each run of these into one snippet."""
    one = h.make_tensor("one", TP.FLOAT, [1, 64, 32], np.ones(64 * 32, np.float32))
    nodes = [h.make_node("Add", ["x", "one"], ["a"], name="add0"), h.make_node("Mul", ["a", "a"], ["b"], name="mul0"),
             h.make_node("Relu", ["b"], ["c"], name="relu0"), h.make_node("Exp", ["c"], ["d"], name="exp0"),
             h.make_node("Add", ["d", "x"], ["e"], name="add1"), h.make_node("Mul", ["e", "e"], ["f"], name="mul1"),
             h.make_node("Relu", ["f"], ["y"], name="relu1")]
    graph = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", TP.FLOAT, [1, 64, 32])],
                         [h.make_tensor_value_info("y", TP.FLOAT, [1, 64, 32])], [one])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 64, 32)).astype(np.float32)
    return model, {"x": x}


def _layer_types(engine) -> set[str]:
    return {op.get_rt_info()["layerType"].astype(str) for op in engine.compiled.get_runtime_model().get_ops()}


def test_engine_compiles_snippets_only_when_asked(tmp_path: Path) -> None:
    from corepipe.engines.ov import OpenVinoEngine

    model, feeds = _eltwise_chain()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    off = OpenVinoEngine(str(path), inputs=["x"], outputs=["y"])
    on = OpenVinoEngine(str(path), inputs=["x"], outputs=["y"], snippets=True)
    assert "Subgraph" not in _layer_types(off)  # SNIPPETS_MODE=DISABLE: plain Eltwise nodes
    assert "Subgraph" in _layer_types(on)  # a snippet: OpenVINO's generated kernel
    np.testing.assert_allclose(on.run(feeds)[0], off.run(feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_stage_the_check_passes_keeps_snippets_and_the_workers_use_them(tmp_path: Path) -> None:
    model, feeds = _eltwise_chain()
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[3], engine="openvino")
    assert [s.snippets for s in cm.plan.stages] == [True, True]
    manifest = json.loads((cm.path / "manifest.json").read_text())
    stages = manifest.get("plan", manifest)["stages"]
    assert [s["snippets"] for s in stages] == [True, True]
    from corepipe.artifact.manifest import open_artifact
    from corepipe.engines import StageRunner

    runner = StageRunner(open_artifact(cm.path), 1)
    assert "Subgraph" in _layer_types(runner.engine)
    with corepipe.load(cm.path) as pipe:
        np.testing.assert_allclose(pipe.run(feeds)["y"], run_reference(model, feeds)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(precision_problem("bf16") is not None, reason="this CPU has no native bf16")
def test_stages_snippets_compute_wrong_run_without_them_and_only_those(tmp_path: Path) -> None:
    """A small BERT at bf16 cut in 4: OpenVINO 2026.4's snippets compute the two middle stages
    wrong (100 % relative error, or NaN), the outer two right. The check turns them off on
    exactly the stages it saw wrong, the notes say why, and the pipeline stays within the bf16
    tolerance of onnxruntime fp32."""
    from corepipe import zoo
    from corepipe.engines.tolerance import close_enough

    model, feeds = zoo.get("bert", num_layers=2, hidden=64, heads=2, intermediate=128, vocab=500, seq=16)
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=4, precision="bf16",
                          balance="estimate")
    assert all(s.engine == "openvino" for s in cm.stages)
    off = [s.index for s in cm.stages if not s.snippets]
    if not off:
        pytest.skip("this OpenVINO computes every stage right with its snippets: nothing to turn off")
    assert len(off) < len(cm.stages), "snippets were turned off on every stage, not only where wrong"
    for k in off:
        assert any(n.startswith(f"stage {k} runs without OpenVINO's snippets: with them output") for n in cm.plan.notes)
    ref = run_reference(model, feeds)
    with corepipe.load(cm.path) as pipe:
        out = pipe.run(feeds)
    for name, want in ref.items():
        ok, figures = close_enough(out[name], want, "bf16")
        assert ok, (name, figures)


def test_artifacts_from_before_the_choice_run_without_snippets() -> None:
    """A manifest without the field is one checked with snippets off: it loads as off."""
    base = StagePlan(index=0, node_start=0, node_end=1, first_node="n", last_node="n", first_op="Relu",
                     last_op="Relu", inputs=("x",), outputs=("y",), carried=(), weights=0, resident_bytes=0,
                     estimated_s=0.0, device=0, core=0, engine="openvino")
    data = base.to_dict()
    assert data["snippets"] is False
    del data["snippets"]
    assert StagePlan.from_dict(data).snippets is False
    assert StagePlan.from_dict({**data, "snippets": True}).snippets is True
    with pytest.raises(ValueError, match="snippets must be true or false"):
        StagePlan.from_dict({**data, "snippets": "yes"})


def test_a_check_that_fails_with_snippets_turns_them_off_for_that_stage_alone(tmp_path: Path, monkeypatch) -> None:
    """The decision, made deterministic: the compiler's check sees stage 1's output wrong with
    snippets on (its values pushed off by 1 in the trial run, as the BERT stages above are when
    this OpenVINO computes them wrong), and right without. Snippets go off on stage 1 alone, the
    plan's note says why, and the worker loads stage 1 without them (no Subgraph layer)."""
    from corepipe.artifact.manifest import open_artifact
    from corepipe.compiler.cut import measure
    from corepipe.engines import StageRunner

    real = measure._try

    def wrong_with_snippets(name, raw, inputs, outputs, precision, feeds, repeats, variants=None, snippets=False):
        values, sec = real(name, raw, inputs, outputs, precision, feeds, repeats, variants, snippets)
        if name == "openvino" and snippets and "y" in outputs:  # stage 1 (it writes y)
            values = [v + 1.0 for v in values]
        return values, sec

    monkeypatch.setattr(measure, "_try", wrong_with_snippets)
    model, feeds = _eltwise_chain()
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[3], engine="openvino")
    assert [(s.engine, s.snippets) for s in cm.plan.stages] == [("openvino", True), ("openvino", False)]
    assert [n for n in cm.plan.notes if "snippets" in n] == [
        next(n for n in cm.plan.notes if n.startswith("stage 1 runs without OpenVINO's snippets: with them output 'y'"))]
    art = open_artifact(cm.path)
    assert "Subgraph" in _layer_types(StageRunner(art, 0).engine)
    assert "Subgraph" not in _layer_types(StageRunner(art, 1).engine)
    monkeypatch.undo()
    with corepipe.load(cm.path) as pipe:
        np.testing.assert_allclose(pipe.run(feeds)["y"], run_reference(model, feeds)["y"], rtol=1e-5, atol=1e-5)
