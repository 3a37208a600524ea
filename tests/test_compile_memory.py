"""Compiling without holding the model's weights several times over: external weights stay on disk
until a stage needs them, and the shape probe runs a few nodes at a time."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import onnx
import pytest
from graphcases import all_cases, big_weight_model, run_reference
from onnx import TensorProto, helper, numpy_helper

import corepipe
import corepipe.compiler.model.probe as probe
from corepipe.compiler.model.graph import analyze
from corepipe.runtime.process import module_command

MiB = 2**20
_PROBED = ["loop_outer_scope"]  # inference leaves gaps (shape arithmetic over static shapes is folded)


def gelu_chain(weight_bytes: int, links: int, hidden: int = 64) -> tuple[onnx.ModelProto, dict]:
    """MatMul -> com.microsoft Gelu, ``links`` times. ONNX has no schema for the contrib op, so
    shape inference types nothing after the first MatMul and every boundary needs the probe."""
    rng = np.random.default_rng(0)
    n = weight_bytes // (4 * hidden)
    nodes, inits, h = [], [], "x"
    for i in range(links):
        w = (rng.standard_normal((hidden, n)) * hidden**-0.5).astype(np.float32)
        back = (rng.standard_normal((n, hidden)) * n**-0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(back, f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"up{i}"]),
                  helper.make_node("Gelu", [f"up{i}"], [f"g{i}"], domain="com.microsoft"),
                  helper.make_node("MatMul", [f"g{i}", f"b{i}"], [f"h{i}"])]
        h = f"h{i}"
    graph = helper.make_graph(nodes, "gelu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, hidden])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    return model, {"x": rng.standard_normal((1, hidden)).astype(np.float32)}


def save_external(model: onnx.ModelProto, path, location: str) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving moves the weights out of the message it is given
    onnx.save_model(copy, str(path), save_as_external_data=True, location=location, size_threshold=1024)


def test_external_weights_stay_on_disk_and_compile_to_the_same_artifact(tmp_path):
    case = big_weight_model([256 * 1024] * 6)
    path = tmp_path / "m.onnx"
    save_external(case.model, path, "m.data")
    graph = analyze(path, case.inputs())
    big = [t for t in graph.initializers.values() if t.dims and np.prod(t.dims) * 4 > 1024]
    assert big and all(t.data_location == TensorProto.EXTERNAL and not t.raw_data for t in big)
    a = corepipe.compile(path, tmp_path / "a", example_inputs=case.inputs(), num_cores=3)
    b = corepipe.compile(case.model, tmp_path / "b", example_inputs=case.inputs(), num_cores=3)
    assert [(s.sha256, s.weights_sha256) for s in a.stages] == [(s.sha256, s.weights_sha256) for s in b.stages]


@pytest.mark.parametrize("name", _PROBED)
def test_probe_node_by_node_learns_what_the_whole_model_run_learns(name, monkeypatch):
    case = next(c for c in all_cases() if c.name == name)
    whole = analyze(case.model, case.inputs())
    calls = []
    original = probe._probe_chunked

    def spy(*args, **kwargs):
        calls.append(len(args[6]))
        return original(*args, **kwargs)

    def per_node(nodes, inits, cut_ok, budget):  # a chunk per node wherever a cut is allowed
        cuts = [p for p in range(1, len(nodes)) if cut_ok[p]]
        return list(zip([0, *cuts], [*cuts, len(nodes)]))

    monkeypatch.setattr(probe, "_chunks", per_node)
    monkeypatch.setattr(probe, "_probe_chunked", spy)
    monkeypatch.setattr(probe, "_probe_whole", lambda *a, **k: pytest.fail("fell back to the whole model"))
    chunked = analyze(case.model, case.inputs())
    assert calls and calls[0] > 1
    assert chunked.tensors == whole.tensors and chunked.uncrossable == whole.uncrossable


def test_probe_with_external_weights_in_chunks_is_transparent(tmp_path, monkeypatch):
    model, feeds = gelu_chain(64 * 1024, links=4)
    path = tmp_path / "g.onnx"
    save_external(model, path, "g.data")
    monkeypatch.setattr(probe, "CHUNK_BYTES", 100 * 1024)  # two MatMuls' weights a chunk at most
    cm = corepipe.compile(path, tmp_path / "a", example_inputs=feeds, num_cores=3)
    ref = run_reference(model, feeds)
    with corepipe.load(cm.path, backend="inline") as pipe:
        out = pipe.run(feeds)
    np.testing.assert_allclose(out[cm.outputs[0].name], ref[cm.outputs[0].name], rtol=1e-5, atol=1e-5)


def test_chunks_hold_the_budget_and_cut_only_where_allowed():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class N:
        reads: tuple[str, ...]
        writes: tuple[str, ...]
        weights: tuple[str, ...]

    inits = {f"w{i}": numpy_helper.from_array(np.zeros(2048, np.float32), f"w{i}") for i in range(5)}  # 8 KiB
    nodes = [N((f"w{i}",), (f"o{i}",), (f"w{i}",)) for i in range(5)]
    assert probe._chunks(nodes, inits, [True] * 6, 16 * 1024) == [(0, 2), (2, 4), (4, 5)]
    assert probe._chunks(nodes, inits, [True, True, False, True, True, True], 16 * 1024) == [(0, 3), (3, 5)]
    assert probe._chunks(nodes, inits, [True] * 6, 0) == [(i, i + 1) for i in range(5)]


@pytest.mark.slow
def test_compile_peak_memory_stays_near_one_stage_of_a_model_that_needs_the_probe(tmp_path):
    """16 MiB per link, 6 links (96 MiB of weights), probed: the peak must stay within the
    weights once plus 1.5 stages over a bare interpreter with the same imports (running the
    whole model once in onnxruntime, as before, needs about 5x the weights)."""
    model, feeds = gelu_chain(8 * MiB, links=6)  # two 8 MiB weights a link
    path = tmp_path / "g.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="g.data")
    del model
    np.savez(tmp_path / "x.npz", **feeds)
    # VmHWM: this process's own peak (ru_maxrss would count the forking parent's, pytest's).
    # The floor loads the engines compile checks each stage on: onnxruntime, and OpenVINO's CPU
    # plugin (engine "auto" where it is installed: ~55 MiB of libraries, no weights).
    script = ("import json, sys, corepipe, onnxruntime\n"
              "if sys.argv[1] == 'bare':\n"
              "    from corepipe.compiler.cut.choose import candidates\n"
              "    if 'openvino' in candidates('auto'):\n"
              "        import numpy as np, openvino as ov\n"
              "        from onnx import TensorProto, helper\n"
              "        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in 'xy']\n"
              "        g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', io[:1], io[1:])\n"
              "        m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
              "        core = ov.Core()\n"
              "        core.compile_model(core.read_model(m.SerializeToString(), b''), 'CPU')(np.zeros((1, 4), np.float32))\n"
              "if sys.argv[1] == 'compile':\n"
              "    import numpy as np\n"
              "    cm = corepipe.compile(sys.argv[2], sys.argv[3], example_inputs=dict(np.load(sys.argv[4])), num_cores=6)\n"
              "    print(json.dumps([s.resident_bytes for s in cm.stages]))\n"
              "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024)\n")
    argv, env = module_command("corepipe")  # env with this corepipe first on the path
    base = subprocess.run([argv[0], "-c", script, "bare"], env=env, capture_output=True, text=True, check=True)
    run = subprocess.run([argv[0], "-c", script, "compile", str(path), str(tmp_path / "a"), str(tmp_path / "x.npz")],
                         env=env, capture_output=True, text=True, check=True)
    stages = json.loads(run.stdout.splitlines()[0])
    weights = os.path.getsize(tmp_path / "g.data")
    added = int(run.stdout.splitlines()[-1]) - int(base.stdout.splitlines()[-1])
    assert added <= weights + 1.5 * max(stages), (added / MiB, weights / MiB, max(stages) / MiB)
