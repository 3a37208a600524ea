"""The command line speaks in its flags (issue 28, the first hour): library parameter names in
errors and plan notes become the flags a user types, and `bench` and `tune` take the input flags
their own messages ask for."""

from __future__ import annotations

from pathlib import Path

import pytest
from shapemodels import embed_model
from typer.testing import CliRunner

from corepipe.cli import app
from corepipe.cli.words import flag_names

runner = CliRunner()


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def symbolic_model(path: Path) -> Path:
    """x: float32[N, 4] -> Relu -> y, with a symbolic batch dim N."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "sym",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def said(result) -> str:  # type: ignore[no-untyped-def]
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def embed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return embed_model(tmp_path_factory.mktemp("words") / "embed.onnx")


@pytest.mark.parametrize(("library", "cli"), [
    ("dynamic_dims names ['seq'], which is not", "--dynamic names ['seq'], which is not"),
    ("widen the range (dynamic_dims={'sequence': (1, 300)}) or keep", "widen the range (--dynamic sequence=1:300) or keep"),
    ("e.g. dynamic_dims={'batch': (1, 8), 'sequence': (1, 128)}", "e.g. --dynamic batch=1:8 --dynamic sequence=1:128"),
    ("uniform over 1..16 (pass shape_profile= for yours)", "uniform over 1..16 (pass --shape-profile for yours)"),
    ("compile with buckets=None", "compile with --buckets none"),
    ("pass pad_values= (e.g. the pad token)", "pass --pad-value (e.g. the pad token)"),
    ("buckets={'sequence': [16, 32]} as asked", "--buckets sequence=16,32 as asked"),
    ("pass example_inputs={'ids': array} (or --input ids=1x128:int64)",
     "pass --inputs FILE.npz (or --input ids=1x128:int64)"),
    ("num_cores=3 is too many; precision='bf16'", "--num-cores 3 is too many; --precision bf16"),
    ("serve it with max_batch=4", "serve it with --max-batch 4"),
])
def test_library_words_become_flags(library: str, cli: str) -> None:
    assert flag_names(library) == cli


def test_a_command_names_its_own_spelling_of_a_parameter() -> None:
    """bench and tune read the shape profile from --lengths."""
    note = "uniform over 1..16 (pass shape_profile= for yours)"
    assert flag_names(note, {"shape_profile": "--lengths"}) == "uniform over 1..16 (pass --lengths for yours)"


def test_errors_on_the_command_line_name_the_flags(embed: Path, tmp_path: Path) -> None:
    r = invoke("compile", embed, "-o", tmp_path / "a", "-n", "2", "--dynamic", "seq=1:16")
    assert r.exit_code == 2 and "error: --dynamic names ['seq']" in said(r), r.output
    assert "dynamic_dims" not in said(r)
    sym = invoke("compile", symbolic_model(tmp_path / "sym.onnx"), "-o", tmp_path / "s", "-n", "1")
    assert sym.exit_code == 2 and "(or --input x=1x4:float32)" in said(sym), sym.output  # a shape x takes
    r = invoke("bench", embed, "-n", "2", "--lengths", "4:300", "--dynamic", "sequence=1:64", "--no-peers")
    assert r.exit_code == 2 and "outside the range" in said(r), r.output
    assert "dynamic_dims" not in said(r) and "--dynamic sequence=" in said(r)


def test_bench_and_tune_take_the_input_flags_their_messages_ask_for(embed: Path, tmp_path: Path) -> None:
    """A model with symbolic dims and no --lengths: both commands say to pass --inputs or
    --input, and both take them (as `compile` does)."""
    for cmd in (["bench", embed, "-n", "1", "--no-peers", "-r", "2"],
                ["tune", embed, "-o", tmp_path / "t", "-n", "1", "--no-peers"]):
        r = invoke(*cmd)
        assert r.exit_code == 2, r.output
        assert "pass --inputs FILE.npz (or --input ids=1x128:int64)" in said(r), r.output
        bad = invoke(*cmd, "--input", "ids=1x8:int65")
        assert bad.exit_code == 2 and "--input 'ids=1x8:int65': unknown dtype 'int65'" in said(bad), bad.output
    r = invoke("bench", embed, "-n", "1", "--no-peers", "-r", "4", "-i", "ids=1x8:int64", "--json")
    assert r.exit_code == 0, r.output
    assert '"corepipe"' in r.output


def test_a_stage_openvino_reads_as_not_static_is_a_note_that_says_nothing_is_wrong(tmp_path: Path) -> None:
    """Issue 28: every BERT artifact over a dynamic batch printed ``warning: stage 1 is not static:
    OpenVINO reads node ...`` and ran fine; the line says what it means instead."""
    import dataclasses

    import corepipe
    from corepipe import zoo
    from corepipe.cli.report import plan_summary
    from corepipe.compiler.cut.assemble import NOT_STATIC

    model, feeds = zoo.get("mlp")
    plan = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2, engine="onnxruntime").plan
    why = "OpenVINO reads node 'val_137' (Parameter): f32[?,?,?,?]"
    plan = dataclasses.replace(plan, notes=(*plan.notes, NOT_STATIC.format(1) + why))
    text = " ".join(plan_summary(plan).plain.split())
    assert "warning: stage 1 is not static" not in text
    assert ("note: stage 1 has shapes OpenVINO works out per request, not when it reads the graph (node 'val_137' "
            "(Parameter): f32[?,?,?,?]). Nothing is wrong: its answers were checked against onnxruntime") in text


def test_run_says_what_shapes_it_sends_and_takes_lengths(tmp_path: Path) -> None:
    """`run` on a dynamic artifact: without --lengths it says every request is at the largest
    shapes; --lengths draws them as bench does; the latency line says requests were queued."""
    import numpy as np
    from shapemodels import mean_model

    import corepipe
    from corepipe.cli._inputs import length_requests

    model = mean_model(tmp_path / "mean.onnx")
    art = tmp_path / "mean"
    r = invoke("compile", model, "-o", art, "-n", "1", "--dynamic", "sequence=1:16", "--dynamic", "batch=1:2",
               "-i", "x=1x8x8", "--buckets", "none")
    assert r.exit_code == 0, r.output
    r = invoke("run", art, "-r", "6")
    assert r.exit_code == 0, r.output
    assert "shapes: every request at the largest shapes (batch 2, sequence 16); --lengths sends mixed ones" in said(r)
    assert "it counts the time each waited behind the others (queued)" in said(r)
    r = invoke("run", art, "-r", "6", "--lengths", "3,5")
    assert r.exit_code == 0 and "shapes: sequence drawn from --lengths 3,5: 3..5" in said(r), r.output
    plan = corepipe.CompiledModel.open(art).plan
    pool, _ = length_requests(plan, "3,5", 6)
    assert pool is not None and {f["x"].shape for f in pool} == {(1, 3, 8), (1, 5, 8)}
    bad = invoke("run", art, "--lengths", "4:40")
    assert bad.exit_code == 2 and "--lengths: lengths of 'sequence' run 4..40, outside the artifact's range 1..16" in said(
        bad), bad.output
    static = tmp_path / "static"
    np.savez(tmp_path / "x.npz", x=np.ones((1, 4, 8), np.float32))
    assert invoke("compile", model, "-o", static, "-n", "1", "--inputs", tmp_path / "x.npz").exit_code == 0
    bad = invoke("run", static, "--lengths", "3,5")
    assert bad.exit_code == 2 and "--lengths varies a dynamic dim, and this artifact has none" in said(bad), bad.output
