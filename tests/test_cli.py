"""The `corepipe` command line: compile, inspect, run, demo, and its one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper
from typer.testing import CliRunner

import corepipe
import corepipe.engines
from corepipe.cli import app
from corepipe.cli._inputs import npz_requests, parse_input_flag, random_requests

runner = CliRunner()


def invoke(*args: str | Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "mlp_compiled"
    result = invoke("compile", "zoo:mlp", "-o", out, "--num-cores", "2")
    assert result.exit_code == 0, result.output
    return out


def symbolic_model(path: Path) -> Path:
    """x: float32[N, 4] -> Relu -> Neg -> y, with a symbolic batch dim N."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu"),
         helper.make_node("Neg", ["h"], ["y"], name="neg")],
        "sym",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_compile_prints_the_plan_table(artifact: Path, tmp_path: Path) -> None:
    result = invoke("compile", "zoo:mlp", "-o", tmp_path / "a", "-n", "2")
    assert result.exit_code == 0, result.output
    for text in ("stage", "first op", "core", "resident", "mem %", "share",
                 "% ◀", "bottleneck: stage", "MatMul", "0:0", "0:1", "req/s pipelined", str(tmp_path / "a")):
        assert text in result.stdout, text
    assert corepipe.CompiledModel.open(tmp_path / "a").num_cores == 2


def test_compile_fixes_symbolic_dims_and_reads_compiler_args(tmp_path: Path) -> None:
    model = symbolic_model(tmp_path / "sym.onnx")
    result = invoke("compile", model, "-o", tmp_path / "out", "--input", "x=3x4:float32",
                    "--compiler-arg", "--static-weights", "--compiler-arg=--num-neuroncores=2")
    assert result.exit_code == 0, result.output
    plan = corepipe.CompiledModel.open(tmp_path / "out").plan
    assert plan.num_cores == 2 and plan.inputs[0].shape == (3, 4)


def test_compile_engine_and_precision_flags_and_inspect_shows_them(tmp_path: Path) -> None:
    result = invoke("compile", "zoo:mlp", "-o", tmp_path / "a", "-n", "2", "--engine", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert "ort fp32" in result.stdout and "onnxruntime fp32 for stages 0, 1" in result.stdout
    result = invoke("compile", "zoo:mlp", "-o", tmp_path / "b", "-n", "2", "--precision", "bf16",
                    "--balance", "measure")
    if corepipe.engines.cpu_math().bf16:
        assert result.exit_code == 0, result.output
        shown = invoke("inspect", tmp_path / "b")
        flat = " ".join(shown.stdout.split())
        assert "ov bf16" in shown.stdout and "stage 0 runs on openvino: the only engine that runs precision 'bf16' (" \
            in flat and "on one core, measured)" in flat, shown.stdout
        plan = json.loads(invoke("inspect", tmp_path / "b", "--json").stdout)
        assert [(st["engine"], st["precision"]) for st in plan["stages"]] == [("openvino", "bf16")] * 2
    else:
        assert result.exit_code == 2 and "bf16 needs native bf16" in result.stderr


def test_inspect_names_the_fallback(tmp_path: Path) -> None:
    w = onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["d"], name="det_node"), helper.make_node("Mul", ["x", "d"], ["m"], name="mul"),
         helper.make_node("MatMul", ["m", "w"], ["y"], name="mm")], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "det.onnx")
    result = invoke("compile", tmp_path / "det.onnx", "-o", tmp_path / "a", "-n", "2")
    assert result.exit_code == 0, result.output
    for shown in (result.stdout, invoke("inspect", tmp_path / "a").stdout):  # both say it, one line a stage
        assert "ort fp32 *" in shown and "'det_node' (Det)" in shown, shown
        assert shown.count("warning: stage") == 1 and "warning: stage 0 falls back to onnxruntime fp32" in shown, shown


def test_compile_reads_example_inputs_from_npz(tmp_path: Path) -> None:
    model = symbolic_model(tmp_path / "sym.onnx")
    np.savez(tmp_path / "ex.npz", x=np.zeros((5, 4), np.float32))
    result = invoke("compile", model, "-o", tmp_path / "out", "--inputs", tmp_path / "ex.npz")
    assert result.exit_code == 0, result.output
    assert corepipe.CompiledModel.open(tmp_path / "out").inputs[0].shape == (5, 4)


def test_inspect_table_and_json(artifact: Path) -> None:
    result = invoke("inspect", artifact)
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout and "input float32[1,64]" in result.stdout
    assert "% ◀" in result.stdout and "bottleneck: stage" in result.stdout
    assert "ov fp32" in result.stdout and "openvino fp32 for stages 0, 1" in result.stdout
    result = invoke("inspect", artifact, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert json.loads(result.stdout) == manifest["plan"]


def test_run_inline(artifact: Path) -> None:
    result = invoke("run", artifact, "--backend", "inline", "--requests", "5")
    assert result.exit_code == 0, result.output
    assert "5 requests in" in result.stdout and "req/s" in result.stdout
    assert "p99" in result.stdout and "service ms" in result.stdout


def test_run_inline_with_npz_stack(artifact: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", input=np.ones((3, 1, 64), np.float32))
    result = invoke("run", artifact, "-b", "inline", "--inputs", tmp_path / "in.npz")
    assert result.exit_code == 0, result.output
    assert "3 requests in" in result.stdout


def test_ctrl_c_closes_and_exits_130(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = []

    def interrupted(pipe, *args, **kwargs):  # type: ignore[no-untyped-def]
        monkeypatch.setattr(pipe, "close", lambda **kw: closed.append(kw))
        raise KeyboardInterrupt

    monkeypatch.setattr("corepipe.cli.commands.stream", interrupted)
    result = invoke("run", artifact, "-b", "inline", "-r", "2")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and closed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--input", "x=1xA:int64"], "shape '1xA'"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--input", "x=1x2:int65"], "unknown dtype"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--target", "tpu"], "unknown target 'tpu'"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--core-memory", "lots"], "cannot read 'lots'"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--compiler-arg", "--fast"], "unknown compiler argument"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--num-cores", "two"], "--num-cores must be"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "-k", "two"], "-k must be"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--cores", "9"], "use --cores <= 8"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "-n", "9"], "9 cores for 8 nodes"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "-n", "2", "--cores", "2"], "give it once"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--core-memory", "1KiB"], "raise --core-memory to at least"),
        (["run", "{tmp}/nothing", "--num-cores", "999"], "--num-cores 999: this process may run on only"),
        (["run", "{tmp}/nothing", "-k", "999"], "-k 999: this process may run on only"),
        (["run", "{tmp}/nothing", "-b", "inline", "--cores", "1"], "--cores picks the cores of the local backend"),
        (["demo", "--cores", "0"], "--cores must be a positive integer"),
        (["inspect", "{tmp}/nothing", "--plot", "{tmp}/p.bmp"], "--plot"),
        (["compile", "zoo:nope", "-o", "{tmp}/o"], "zoo:mlp"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--core-memory", "1KiB"], "no core count fits"),
        (["inspect", "{tmp}/nothing"], "not a directory"),
        (["run", "{tmp}/nothing", "-b", "inline"], "not a directory"),
        (["demo", "--model", "nope"], "--model 'nope'"),
        (["demo", "--precision", "fp8"], "--precision must be one of"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--engine", "tvm"], "--engine must be one of"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--precision", "int4"], "--precision must be one of"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "-e", "onnxruntime", "-p", "bf16"],
         "not fast on onnxruntime" if corepipe.engines.cpu_math().bf16 else "bf16 needs native bf16 math"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--compiler-arg=--auto-cast-type=fp8_e4m3"], "no CPU engine"),
        (["bench", "zoo:mlp", "--precision", "fp64"], "--precision must be one of"),
        (["compile", "zoo:mlp"], "missing option '--output'"),
        (["tune", "zoo:mlp"], "missing option '--output'"),
        (["run"], "missing argument 'ARTIFACT'"),
        (["run", "{tmp}/nothing", "--requests", "0"], "'--requests'"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "--frobnicate"], "no such option: --frobnicate"),
        (["frobnicate"], "no such command 'frobnicate'"),
        (["compile", "missing.onnx", "-o", "{tmp}/o"], "MODEL 'missing.onnx' does not exist: give an .onnx file, a"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "-k", "0"], "-k must be a positive integer"),
        (["compile", "zoo:mlp", "-o", "{tmp}/o", "-e", "onnxruntime", "-p", "bf16"],  # the fix, in CLI flags
         "use --engine openvino" if corepipe.engines.cpu_math().bf16 else "use --precision fp32"),
        (["tune", "zoo:mlp", "-o", "{tmp}/o", "--objective", "fast"], "--objective must be"),
        (["tune", "{tmp}", "-o", "{tmp}/o"], "is a directory"),
    ],
)
def test_errors_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_corrupt_artifact_is_refused(artifact: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    with open(next(bad.glob("stage_*.onnx")), "ab") as f:
        f.write(b"\0")
    for args in (["inspect", bad], ["run", bad, "-b", "inline", "-r", "1"]):
        result = invoke(*args)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ") and "sha256" in result.stderr


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    for args, env in ((["--debug"], None), ([], {"COREPIPE_DEBUG": "1"})):
        result = invoke(*args, "inspect", tmp_path / "nothing", env=env)
        assert result.exit_code == 2, result.output
        assert "Traceback" in result.stderr and "ArtifactError" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    result = invoke("--debug", "compile", "zoo:mlp", "-o", tmp_path / "o", "--cores", "x")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --cores must be a positive integer or 'auto', got 'x'"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_demo_inline_matches_onnxruntime(precision: str) -> None:
    result = invoke("demo", "--model", "tiny_cnn", "--requests", "3", "--backend", "inline",
                    "--num-cores", "2", "--precision", precision)
    if precision == "bf16" and not corepipe.engines.cpu_math().bf16:  # refused in one line, naming the CPU
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: bf16 needs native bf16 math"), result.stderr
        assert corepipe.engines.cpu_math().describe() in lines[0]
        return
    assert result.exit_code == 0, result.output
    assert "zoo:tiny_cnn: 2 stages" in result.stdout
    assert "outputs match onnxruntime on all 3 requests" in result.stdout
    assert f"within the {precision} tolerance" in result.stdout
    for words in ("speed in steady state", "x measured (rounds", "at compile time allow", "one request alone",
                  "running its 2 stages +",
                  "the inline backend runs the stages one after another", "noise", "the rounds varied by"):
        assert words in " ".join(result.stdout.split()), words


def test_version_and_help() -> None:
    assert invoke("--version").stdout.strip() == f"corepipe {corepipe.__version__}"
    for command in ("compile", "inspect", "run", "demo", "bench", "tune", "serve"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Examples" in result.stdout


def test_installed_script_smoke(artifact: Path) -> None:
    script = shutil.which("corepipe")
    cmd = [script] if script else [sys.executable, "-m", "corepipe.cli"]
    done = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"corepipe {corepipe.__version__}"
    done = subprocess.run([*cmd, "inspect", str(artifact), "--json"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["num_nodes"] == 8
    done = subprocess.run([*cmd, "inspect", str(artifact / "nope")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ")


def test_input_flag_parsing() -> None:
    name, arr = parse_input_flag("input_ids=1x128:int64")
    assert name == "input_ids" and arr.shape == (1, 128) and arr.dtype == np.int64
    assert parse_input_flag("x=2,3")[1].dtype == np.float32
    assert parse_input_flag("s=scalar:bool")[1].shape == ()
    for bad in ("x", "=1x2", "x=1x0", "x=1x-2:int64", "x=1x2:object"):
        with pytest.raises(typer.BadParameter):
            parse_input_flag(bad)


def test_request_sources() -> None:
    specs = (corepipe.TensorSpec("ids", "int64", (1, 8)), corepipe.TensorSpec("x", "float32", (2,)))
    reqs = random_requests(specs, 4, seed=0)
    assert all(r["ids"].min() >= 0 and r["ids"].max() < 100 for r in reqs)
    assert np.array_equal(reqs[1]["x"], random_requests(specs, 4, seed=0)[1]["x"])
    stacked = npz_requests(specs, {"ids": np.zeros((3, 1, 8), np.int64), "x": np.ones(2, np.float32)})
    assert len(stacked) == 3 and stacked[2]["ids"].shape == (1, 8)
    with pytest.raises(typer.BadParameter, match="missing"):
        npz_requests(specs, {"ids": np.zeros((1, 8), np.int64)})


@pytest.mark.slow
def test_run_local_backend_default(artifact: Path) -> None:
    pytest.importorskip("corepipe.runtime.local")
    result = invoke("run", artifact, "--requests", "5", "--max-in-flight", "2")
    assert result.exit_code == 0, result.output
    assert "(local backend, 2 stages)" in result.stdout


def test_pipeline_stats_print_as_the_run_table() -> None:
    """`print(pipe.stats())`, as the README suggests, reads as `corepipe run`'s table, not a repr."""
    from dataclasses import replace

    from corepipe.runtime.base import BoundaryStats, PipelineStats, StageStats

    stages = [replace(StageStats.measured(i, 100 + i, str(i), 40, 0.2 * (i + 1), 2.0, restarts=i), replica=0)
              for i in range(2)]
    bounds = [BoundaryStats(i, 4096, 40, 0.0001 * (i + 1)) for i in range(3)]
    stats = PipelineStats("local", 40, 1, 2, 2.0, 20.0, 0.05, 0.06, 0.08, stages, bounds)
    text = str(stats)
    lines = text.splitlines()
    assert lines[0].startswith("40 requests done (1 failed, 2 in flight) in the 2.00 s")
    assert "20.0 req/s" in lines[0] and lines[1] == "latency p50 50.00 ms, p90 60.00 ms, p99 80.00 ms"
    assert "in 0.10 ms, 1 0.20 ms, out 0.30 ms" in lines[2]
    assert lines[3].split() == ["stage", "pid", "core", "requests", "busy", "%", "service", "ms", "queue", "restarts"]
    assert lines[5].split() == ["1", "101", "1", "40", "20.0", "10.000", "0", "1"]
    assert "PipelineStats(" not in text and "PipelineStats(" in repr(stats)


def test_a_deployment_error_names_the_flags_and_what_came_from_the_artifact(tmp_path: Path) -> None:
    """`run ART --replicas 2` on an artifact deployed with 2 threads per stage: the error says
    the threads came from the artifact and names the flags, not Python arguments."""
    result = invoke("compile", "zoo:mlp", "-o", tmp_path / "a", "-n", "1", "--threads-per-stage", "2")
    assert result.exit_code == 0, result.output
    result = invoke("run", tmp_path / "a", "--replicas", "2", "-k", "2")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: 2 replicas x 1 stage x 2 threads per stage need 4 cores"), line
    assert "--threads-per-stage 2 from the artifact's deployment" in line and "pass --threads-per-stage to" in line
    assert "--replicas 2, --threads-per-stage 1" in line and "replicas=" not in line and "_per_" not in line
