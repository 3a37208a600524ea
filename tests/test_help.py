"""The command line reads well: help without type placeholders, one metavar per option name
across commands, one core-count flag, examples, and tables that fit 80 and 120 columns with no
value wrapped or cut. Every check walks all commands, so commands added later are held to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import corepipe
from corepipe import zoo
from corepipe.artifact.sizes import format_bytes
from corepipe.cli import app

runner = CliRunner()
WIDTHS = (80, 120)


def _commands() -> dict[str, object]:
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def _options(command: object) -> list[object]:
    ctx = command.make_context("corepipe", [], resilient_parsing=True)  # type: ignore[attr-defined]
    return [p for p in command.get_params(ctx) if p.param_type_name == "option"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", WIDTHS)
def test_help_has_no_placeholders_and_fits(width: int) -> None:
    for args in [[]] + [[name] for name in _commands()]:
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(width)})
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert not re.search(r"<[a-z][a-z ]*>", text), f"type placeholder in `corepipe {' '.join(args)} --help`"
        assert "[x>=" not in text and "{" not in text.split("\n", 3)[1]
        assert max(len(line) for line in text.splitlines()) <= width
        assert "Examples" in text or args == [], args
    for name, command in _commands().items():  # an example wrapped at 80 columns reads as two
        examples = [line.strip() for line in (command.help or "").splitlines()  # type: ignore[attr-defined]
                    if line.strip().startswith("corepipe ")]
        assert examples, f"`corepipe {name} --help` shows no example"
        assert all(len(line) <= 76 for line in examples), [e for e in examples if len(e) > 76]
    top = runner.invoke(app, ["--help"]).stdout
    assert "corepipe compile zoo:resnet50" in top and "corepipe run" in top  # examples up front


def test_same_option_same_metavar_across_commands() -> None:
    seen: dict[str, dict[str, str]] = {}
    for name, command in _commands().items():
        for opt in _options(command):
            for flag in opt.opts:  # type: ignore[attr-defined]
                seen.setdefault(flag, {})[name] = opt.metavar  # type: ignore[attr-defined]
    clashes = {flag: by for flag, by in seen.items() if len(set(by.values())) > 1}
    assert not clashes, f"one option, several metavars: {clashes}"


def test_one_core_count_flag_with_its_alias_everywhere() -> None:
    for name, command in _commands().items():
        opts = {flag: opt for opt in _options(command) for flag in opt.opts}  # type: ignore[attr-defined]
        if "--cores" in opts or "--num-cores" in opts or "-k" in opts:
            assert opts["--num-cores"].opts == ["--num-cores", "-n"], name  # type: ignore[attr-defined]
            assert opts["--cores"].opts == ["--cores", "-k"], name  # type: ignore[attr-defined]
    assert {"compile", "demo", "run", "bench"} <= {
        name for name, c in _commands().items() if any("--num-cores" in o.opts for o in _options(c))}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def bert_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer BERT in 4 stages: op names as long as they come (LayerNormalization)."""
    model = zoo.bert(num_layers=1, hidden=64, heads=2, intermediate=128, vocab=1000)
    out = tmp_path_factory.mktemp("help") / "bert"
    corepipe.compile(model, out, example_inputs=zoo.example_inputs(model), num_cores=4)
    return out


def _row(lines: list[str], cells: list[str]) -> bool:
    """Whether one line holds every cell, in order: the row was not wrapped."""
    pattern = r"\s+".join(re.escape(c) for c in cells)
    return any(re.search(pattern, line) for line in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_tables_fit_without_wrapping_a_value(bert_small: Path, width: int) -> None:
    plan = corepipe.CompiledModel.open(bert_small).plan
    env = {"COLUMNS": str(width)}
    for args in (["inspect", str(bert_small)], ["run", str(bert_small), "-b", "inline", "-r", "3"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        table = [line for line in lines if "│" not in line and re.match(r"^\s+\d+\s", line)]
        assert table, result.stdout
        assert all(len(line) <= width for line in table), [line for line in table if len(line) > width]
        assert "…" not in result.stdout
    inspect = runner.invoke(app, ["inspect", str(bert_small)], env=env).stdout.splitlines()
    for k, st in enumerate(plan.stages):
        cells = [str(k), str(st.num_nodes)]
        if width >= 120:
            cells += [st.first_op, st.last_op]
        engine = {"openvino": "ov", "onnxruntime": "ort"}[st.engine] + f" {st.precision}" + (" *" if st.fallback else "")
        cells += [f"{st.device}:{st.core}", engine, format_bytes(st.resident_bytes)]
        assert _row(inspect, cells), (width, cells, "\n".join(inspect))
    hidden = "'first op' and 'last op' not shown at 80 columns"
    assert (hidden in "\n".join(inspect)) == (width == 80)


def test_plurals() -> None:
    from corepipe.artifact.sizes import plural

    assert [plural(1, "node"), plural(2, "node"), plural(1, "process", "processes")] == [
        "1 node", "2 nodes", "1 process"]
    model = zoo.mlp(widths=(4, 4))  # MatMul + Add: 2 nodes
    with pytest.raises(corepipe.CompileError, match="3 cores for 2 nodes"):
        corepipe.compile(model, "/nonexistent/never-written", num_cores=3)


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_and_tune_tables_fit_without_cutting_a_value(width: int) -> None:
    """The longest setup names, six-figure rates: columns are left out (and named), never cut."""
    import io

    from rich.console import Console

    from corepipe.bench import BenchResult, BenchRow
    from corepipe.cli.benchcmd import table
    from corepipe.cli.tunecmd import points_table
    from corepipe.tune import Candidate, Point

    names = ["ort 1 thread", "ort 2 threads", "2 sessions in parallel", "ort 1 session shared by 2 threads",
             "openvino THROUGHPUT (2 streams)", "openvino LATENCY (2 threads, 1 in flight)"]
    rows = [BenchRow(n, "peer", "onnxruntime", "fp32", 110_791.5 - i, 1e-5, 2e-5, 2, (2**27,), (2**27,))
            for i, n in enumerate(names)]
    rows.append(BenchRow("corepipe", "corepipe", "openvino", "bf16", 3178.0, 0.02, 0.03, 1, (2**26,) * 4, (2**26,) * 4))
    result = BenchResult("zoo:bert", 2, 64, 2**20, rows, [], 1.0, "test", precision="bf16")
    points = [Point(n, "peer", 110_791.5 - i, 1e-5, precision="fp32", foreign_cpu=0.3) for i, n in enumerate(names)]
    points.append(Point("16r x 16s x 16t", "candidate", 4450.1, 2e-4, 3e-4, candidate=Candidate(16, 16, 16),
                        predicted=(39_207.0, 2.5e-5), foreign_cpu=0.35, precision="bf16"))
    for rendered in (table(result, width), points_table(points, chosen=points[-1], width=width, title="t")):
        console = Console(width=width, file=io.StringIO(), record=True)
        console.print(rendered)
        text = console.export_text()
        assert "…" not in text, text
        assert all(len(line.rstrip()) <= width for line in text.splitlines())
        for n in names:
            assert n in text
