"""The engines: one interface over onnxruntime and OpenVINO, zero-copy slot binding, engine choice
per stage with its fallbacks, mixed-engine pipelines, and every error on the way."""

from __future__ import annotations

import gc
import json
import re
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import skip_unless_bf16
from graphcases import run_reference
from onnx import TensorProto as TP
from onnx import helper as h

import corepipe
from corepipe import zoo
from corepipe.artifact.manifest import open_artifact
from corepipe.engines import StageRunner, cpu_math, engine_class
from corepipe.engines.base import LoadFailure
from corepipe.engines.ov import OpenVinoEngine, ov_node_from_message
from corepipe.runtime.shm import Ring

RNG = np.random.default_rng(7)


def det_then_matmuls() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Stage 0 (nodes 0-1) holds a Det, which OpenVINO cannot convert; stage 1 (nodes 2-5) is
    plain MatMuls. Cut at 2, ``engine="auto"`` runs onnxruntime then openvino."""
    w1 = onnx.numpy_helper.from_array((RNG.standard_normal((64, 64)) / 8).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array((RNG.standard_normal((64, 32)) / 8).astype(np.float32), "w2")
    graph = h.make_graph([
        h.make_node("Det", ["m"], ["d"], name="det_node"),
        h.make_node("Tanh", ["x"], ["a"], name="tanh"),
        h.make_node("MatMul", ["a", "w1"], ["b"], name="mm1"),
        h.make_node("Mul", ["b", "d"], ["c"], name="scale"),
        h.make_node("MatMul", ["c", "w2"], ["e"], name="mm2"),
        h.make_node("Relu", ["e"], ["y"], name="relu"),
    ], "det_then_matmuls",
        [h.make_tensor_value_info("m", TP.FLOAT, [3, 3]), h.make_tensor_value_info("x", TP.FLOAT, [1, 64])],
        [h.make_tensor_value_info("y", TP.FLOAT, [1, 32])], [w1, w2])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    feeds = {"m": RNG.standard_normal((3, 3)).astype(np.float32) + 2 * np.eye(3, dtype=np.float32),
             "x": RNG.standard_normal((1, 64)).astype(np.float32)}
    return model, feeds


# --- zero-copy slot binding ---------------------------------------------------------------------

def wide_conv() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A Conv that writes 4 MiB (1 x 64 x 128 x 128 fp32), then Relu and a 1x1 Conv: cut at 1,
    stage 0's output is far larger than the interpreter's own allocations (tens of KiB from the
    engines' Python wrappers, up to ~1 MiB when obmalloc maps a new region)."""
    w1 = onnx.numpy_helper.from_array((RNG.standard_normal((64, 3, 3, 3)) / 4).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array((RNG.standard_normal((8, 64, 1, 1)) / 8).astype(np.float32), "w2")
    graph = h.make_graph([
        h.make_node("Conv", ["input", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a"], ["b"], name="relu"),
        h.make_node("Conv", ["b", "w2"], ["y"], name="conv2"),
    ], "wide_conv", [h.make_tensor_value_info("input", TP.FLOAT, [1, 3, 128, 128])],
        [h.make_tensor_value_info("y", TP.FLOAT, [1, 8, 128, 128])], [w1, w2])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    return model, {"input": RNG.standard_normal((1, 3, 128, 128)).astype(np.float32)}


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_slot_binding_reads_and_writes_the_slots_themselves(engine: str, tmp_path: Path, no_leaks: None) -> None:
    model, feeds = wide_conv()  # stage 0 (the first Conv) writes 4 MiB per request
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[1], engine=engine)
    art = open_artifact(cm.path)
    runner = StageRunner(art, 0)
    assert runner.engine.name == engine == cm.stages[0].engine
    ring_in = Ring.create(art.plan.boundaries[0], 2)
    ring_out = Ring.create(art.plan.boundaries[1], 2)
    try:
        for slot in (0, 1):
            ring_in.write(slot, {"input": RNG.standard_normal((1, 3, 128, 128)).astype(np.float32)})
        boundaries = [ring_in.read(s) for s in (0, 1)]
        for slot in (0, 1):
            runner.run_into(boundaries[slot], ring_out, slot, request_id=slot)
        # The engine reads the input slot and writes the output slot, not copies of them.
        for slot, (binding, _, _) in enumerate(runner._bindings.values()):
            ins, outs = runner.engine.addresses(binding)
            views = ring_out.static_views(slot)
            assert ins == [boundaries[slot][n].ctypes.data for n in cm.stages[0].inputs]
            assert outs == [views[n].ctypes.data for n in cm.stages[0].outputs]
        # ...and what lands there is the stage's answer.
        for slot in (0, 1):
            want = runner.run(boundaries[slot])
            got = ring_out.read(slot)
            for name in cm.stages[0].outputs:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
        # Per request no output-sized array is allocated: over 200 requests the traced memory
        # (numpy data included) never rises by half an output's size (`run` + copy would: with
        # OpenVINO by an output; onnxruntime's outputs come from its own allocator, which
        # tracemalloc does not see, so for it the addresses above are the proof).
        out_bytes = min(t.nbytes for t in art.plan.boundaries[1])
        assert out_bytes >= 4 * 2**20
        tracemalloc.start()
        try:
            for i in range(200):
                runner.run_into(boundaries[i % 2], ring_out, i % 2, request_id=i)
            gc.collect()
            now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < out_bytes / 2 and now < out_bytes / 2, (now, peak, out_bytes)
        assert len(runner._bindings) == 2  # one binding per slot, made once
    finally:
        runner._bindings.clear()
        del boundaries
        ring_in.close(unlink=True)
        ring_out.close(unlink=True)


def test_engines_run_one_thread_per_core_and_leave_pinning_to_the_worker(tmp_path: Path) -> None:
    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=1, engine="openvino")
    path = tmp_path / "a" / cm.stages[0].file
    ov_engine = OpenVinoEngine(str(path), inputs=["input"], outputs=["logits"], threads=2)
    assert ov_engine.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert ov_engine.compiled.get_property("NUM_STREAMS") == 1
    assert ov_engine.compiled.get_property("ENABLE_CPU_PINNING") is False
    assert str(ov_engine.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    ort_engine = engine_class("onnxruntime")(str(path), inputs=["input"], outputs=["logits"], threads=2)
    assert ort_engine.session.get_session_options().intra_op_num_threads == 2  # type: ignore[attr-defined]


# --- engine choice, fallback and mixed pipelines -------------------------------------------------

def test_auto_falls_back_per_stage_and_the_plan_says_why(tmp_path: Path) -> None:
    model, feeds = det_then_matmuls()
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[2])
    assert [(s.engine, s.precision) for s in cm.stages] == [("onnxruntime", "fp32"), ("openvino", "fp32")]
    assert "det_node" in cm.stages[0].fallback and "Det" in cm.stages[0].fallback
    assert cm.stages[1].fallback is None
    assert any("det_node" in note for note in cm.plan.notes)
    again = corepipe.CompiledModel.open(cm.path)  # the manifest keeps all of it
    assert again.stages == cm.stages


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mixed_engine_pipeline_through_worker_processes(precision: str, tmp_path: Path, no_leaks: None) -> None:
    if precision == "bf16":
        skip_unless_bf16(tmp_path / "refused")
    model, feeds = det_then_matmuls()
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[2], precision=precision)
    assert [(s.engine, s.precision) for s in cm.stages] == [("onnxruntime", "fp32"), ("openvino", precision)]
    requests = [{"m": feeds["m"] + i * np.eye(3, dtype=np.float32), "x": RNG.standard_normal((1, 64)).astype(np.float32)}
                for i in range(6)]
    with corepipe.load(cm.path) as pipe:
        outs = list(pipe.map(requests))
    for out, req in zip(outs, requests):
        want = run_reference(model, req)["y"]
        if precision == "fp32":
            np.testing.assert_allclose(out["y"], want, rtol=1e-4, atol=1e-4)
        else:
            from corepipe.engines.tolerance import close_enough

            ok, figures = close_enough(out["y"], want, "bf16")
            assert ok, figures


def test_forced_engine_that_cannot_run_a_stage_names_node_and_op(tmp_path: Path) -> None:
    model, feeds = det_then_matmuls()
    with pytest.raises(corepipe.CompileError) as info:
        corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[2], engine="openvino")
    text = str(info.value)
    assert "stage 0" in text and "'det_node'" in text and "(Det)" in text and "engine='auto'" in text


def test_openvino_checked_against_onnxruntime_before_it_gets_a_stage(tmp_path: Path) -> None:
    """OpenVINO 2026.4 computes this If stage wrongly when it reads it from a file; the check
    keeps onnxruntime for it (and refuses engine='openvino')."""
    from graphcases.control_flow import case_if_outer_scope

    case = case_if_outer_scope()
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.feeds, cuts=[7])
    first = cm.stages[0]
    if first.engine == "openvino":
        pytest.skip("this OpenVINO computes the If stage right: nothing to fall back from")
    assert first.engine == "onnxruntime" and "differs from onnxruntime" in (first.fallback or "")
    with pytest.raises(corepipe.CompileError, match="differs from onnxruntime"):
        corepipe.compile(case.model, tmp_path / "b", example_inputs=case.feeds, cuts=[7], engine="openvino")
    with corepipe.load(cm.path, backend="inline") as pipe:
        np.testing.assert_allclose(pipe.run(case.feeds)["y"], run_reference(case.model, case.feeds)["y"],
                                   rtol=1e-5, atol=1e-5)


def test_measure_times_each_stage_on_each_engine(tmp_path: Path) -> None:
    model, feeds = zoo.get("tiny_cnn")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, balance="measure")
    timed = [n for n in cm.plan.notes if " on one core: " in n]
    assert len(timed) == 2 and all("openvino" in n and "onnxruntime" in n for n in timed)
    for st in cm.stages:
        assert st.measured_s is not None and st.measured_s > 0
        fastest = min(timed[st.index].split(": ", 1)[1].split(", "), key=lambda t: float(t.split()[1]))
        assert fastest.split()[0] == st.engine  # the faster engine won the stage


# --- precision and engine requests that cannot be met --------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"engine": "tensorrt"}, "engine must be one of"),
    ({"precision": "int8"}, "precision must be one of"),
    ({"engine": "onnxruntime", "precision": "bf16"},
     "not fast on onnxruntime" if cpu_math().bf16 else "bf16 needs native bf16 math"),
    ({"precision": "bf16", "compiler_args": ["--auto-cast", "none"]}, "contradicts compiler_args"),
    ({"compiler_args": ["--auto-cast-type", "tf32"]}, "no CPU engine has tf32"),
    ({"compiler_args": ["--auto-cast", "some"]}, "--auto-cast 'some'"),
    ({"compiler_args": ["--fp32-cast", "op"]}, "--fp32-cast 'op'"),
    ({"compiler_args": ["--auto-cast", "matmult", "--fp32-cast", "none"]}, "give one"),
    ({"compiler_args": ["--auto-cast"]}, "needs a value"),
])
def test_bad_engine_and_precision_requests(kwargs: dict, match: str, tmp_path: Path) -> None:
    model, feeds = zoo.get("mlp")
    with pytest.raises(corepipe.CompileError, match=match):
        corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, **kwargs)


def test_onnxruntime_refuses_16_bit_precisions_on_any_cpu() -> None:
    """The engine's refusal does not depend on the CPU (compile checks the CPU first: on a CPU
    without bf16 the request above is refused for the CPU's sake)."""
    from corepipe.compiler.cut.choose import check_request

    for precision in ("bf16", "fp16"):
        with pytest.raises(corepipe.CompileError, match=f"precision '{precision}' is not fast on onnxruntime"):
            check_request("onnxruntime", precision)
    check_request("onnxruntime", "fp32")


def test_fp16_without_fp16_math_is_refused_naming_what_the_cpu_has(tmp_path: Path) -> None:
    from corepipe.engines.cpu import CpuMath, cpu_math, precision_problem

    zen4 = CpuMath("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}))
    text = precision_problem("fp16", zen4) or ""
    assert "avx512_fp16" in text and "AMD EPYC" in text and "avx512_bf16" in text and "precision='bf16'" in text
    old = CpuMath("Xeon E5", frozenset({"avx2"}))
    assert "has none" in (precision_problem("bf16", old) or "")
    assert precision_problem("bf16", zen4) is None
    if cpu_math().fp16:
        pytest.skip("this CPU has fp16 math")
    model, feeds = zoo.get("mlp")
    for how in ({"precision": "fp16"}, {"compiler_args": ["--auto-cast", "all", "--auto-cast-type", "fp16"]},
                {"compiler_args": ["--fp32-cast", "matmult-fp16"]}):
        with pytest.raises(corepipe.CompileError, match=rf"fp16 needs native fp16 math.*{re.escape(cpu_math().name)}"):
            corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, **how)


def test_neuron_casting_flags_set_the_precision(tmp_path: Path) -> None:
    from corepipe.compiler.front.flags import parse_compiler_args
    from corepipe.engines.cpu import cpu_math

    assert parse_compiler_args(["--auto-cast", "none", "--auto-cast-type", "bf16"]) == {"precision": "fp32"}
    assert parse_compiler_args(["--auto-cast=matmult"]) == {"precision": "bf16"}
    assert parse_compiler_args(["--auto-cast-type", "bf16"]) == {"precision": "bf16"}
    assert parse_compiler_args(["--fp32-cast", "all"]) == {"precision": "bf16"}
    assert parse_compiler_args(["--fp32-cast=none", "--auto-cast", "none"]) == {"precision": "fp32"}
    assert parse_compiler_args(["--static-weights"]) == {"static_weights": True}
    model, feeds = zoo.get("mlp")
    flags = ["--num-neuroncores", "2", "--auto-cast", "all", "--auto-cast-type", "bf16"]
    native = "bf16" if cpu_math().bf16 else "fp32"
    cm = corepipe.compile(model, tmp_path / "b", example_inputs=feeds, num_cores=2, precision="auto")
    assert [s.precision for s in cm.stages] == [native] * 2  # auto: bf16 where the CPU has it, else fp32
    if not cpu_math().bf16:  # the flags ask for bf16, and a CPU without it refuses, naming itself
        with pytest.raises(corepipe.CompileError, match="bf16 needs native bf16 math") as info:
            corepipe.compile(model, tmp_path / "a", example_inputs=feeds, compiler_args=flags)
        assert cpu_math().describe() in str(info.value)
        return
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, compiler_args=flags)
    assert [s.precision for s in cm.stages] == ["bf16", "bf16"]


def test_missing_engine_is_a_compile_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, feeds = zoo.get("mlp")
    monkeypatch.setitem(sys.modules, "openvino", None)  # what Python does when it is not installed
    with pytest.raises(corepipe.CompileError, match=r"'openvino' is not installed.*pip install openvino"):
        corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, engine="openvino")
    from corepipe.compiler.cut.choose import check_request

    with pytest.raises(corepipe.CompileError, match="precision 'bf16' needs the openvino engine"):
        check_request("auto", "bf16")  # what compile checks once the CPU can do bf16
    if cpu_math().bf16:
        with pytest.raises(corepipe.CompileError, match="needs the openvino engine"):
            corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, precision="bf16")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    assert [s.engine for s in cm.stages] == ["onnxruntime", "onnxruntime"]
    assert any("openvino is not installed" in n for n in cm.plan.notes)


def test_loading_where_the_engine_or_precision_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import corepipe.engines.runner as runner
    from corepipe.engines.cpu import CpuMath, precision_problem

    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, engine="openvino")
    # A bf16 artifact: a bf16 compile writes the same stage files and records the precision in
    # the manifest (its engine's hint), so relabelling an fp32 one makes it on any CPU.
    manifest = json.loads((cm.path / "manifest.json").read_text())
    for st in manifest["plan"]["stages"]:
        st["precision"] = "bf16"
    (cm.path / "manifest.json").write_text(json.dumps(manifest))
    # The artifact moves to a CPU without bf16: refused at load, not run slowly.
    monkeypatch.setattr(runner, "precision_problem",
                        lambda p: precision_problem(p, CpuMath("old Xeon", frozenset({"avx2"}))))
    with pytest.raises(corepipe.ArtifactError, match=r"stage 0 was compiled for bf16.*old Xeon"):
        corepipe.load(cm.path, backend="inline")
    # ... and one with bf16 but no openvino installed: refused naming the package.
    monkeypatch.setattr(runner, "precision_problem",
                        lambda p: precision_problem(p, CpuMath("Xeon with AMX", frozenset({"amx_bf16"}))))
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(corepipe.ArtifactError, match=r"stage 0 cannot be loaded.*pip install openvino"):
        corepipe.load(cm.path, backend="inline")


# --- naming the failing node ---------------------------------------------------------------------

def test_openvino_messages_name_the_node_and_op() -> None:
    front = ("Exception from src/inference/src/cpp/core.cpp:105:\nFrontEnd API failed with OpConversionFailure:\n"
             "-- ReduceSum-17 with a message:\nWhile validating ONNX node '<Node(ReduceSum): body_sum>':\n"
             "-- Scan-17 with a message:\nWhile validating ONNX node '<Node(Scan): Scan_scan_state>': Check failed\n"
             "Summary:\n-- Conversion is failed for: ReduceSum-17, Scan-17\n")
    assert ov_node_from_message(front) == ("Scan_scan_state", "Scan")
    plugin = "Exception from src/plugins/intel_cpu/src/node.cpp:1: [CPU] Gather node with name 'g' has bad indices"
    assert ov_node_from_message(plugin) == ("g", "Gather")
    assert ov_node_from_message("No conversion rule found for operations: Det-17") == (None, "Det")
    assert ov_node_from_message("something else") == (None, None)


def test_openvino_runtime_errors_map_its_node_names_back_to_onnx(tmp_path: Path) -> None:
    model, feeds = det_then_matmuls()
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[2])
    art = open_artifact(cm.path)
    runner = StageRunner(art, 1)
    # OpenVINO names its nodes after their output tensors ('b' is what node 'mm1' makes).
    assert runner.engine.failing_node("[CPU] MatMul node with name 'b' failed") == "mm1"
    assert runner.engine.failing_node("[CPU] MatMul node with name 'mm2' failed") == "mm2"


def test_load_failure_names_what_it_knows() -> None:
    assert str(LoadFailure("openvino", "no rule", node="n1", op="Det")) == "openvino cannot run node 'n1' (Det): no rule"
    assert str(LoadFailure("openvino", "no rule", op="Det")) == "openvino cannot run op Det: no rule"
    assert str(LoadFailure("onnxruntime", "bad")) == "onnxruntime cannot run this graph: bad"
