"""``corepipe tune``: the command, its live display of the search, and its table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from ..compiler.choose import ENGINE_CHOICES, PRECISION_CHOICES
from ..tune import Point, parse_duration
from ._app import app, cli_errors, err, out
from ._inputs import load_npz
from .options import CoresAlias, core_count, core_flag, usable_cores
from .tune import TuneResult, run_tune

__all__ = ["tune_cmd", "points_table"]


def _num(x: float) -> str:
    """Three significant figures without exponents: 64,770 / 8.21 / 0.0155."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 0.001 else f"{x:.2g}"


def _others(p: Point) -> str:
    """Other processes' share of the CPUs during the point's run, when watched."""
    return "" if p.foreign_cpu is None else f"{p.foreign_cpu:.0%}"


def points_table(points: list[Point], *, chosen: Point | None = None, title: str | None = None) -> Table:
    """One row per measured point: R, S, T, req/s, x best peer, p50, p99, Pareto, predicted."""
    from ..tune import pareto_front

    peers = [p for p in points if p.kind == "peer"]
    best = max((p.throughput for p in peers), default=0.0)
    front = {id(p) for p in pareto_front(points)} if points else set()
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for col in ("setup (R x S x T)", "req/s", "x best peer", "p50 ms", "p99 ms", "front", "predicted req/s, ms",
                "others' CPU"):
        table.add_column(col, justify="left" if col in ("setup (R x S x T)", "front") else "right", no_wrap=True)
    for p in sorted(points, key=lambda p: (p.kind != "candidate", -p.throughput)):
        c = p.candidate
        name = p.name if c is None else f"corepipe {p.name}"
        if p is chosen:
            name = "★ " + name
        table.add_row(
            name,
            _num(p.throughput),
            f"{p.throughput / best:.2f}" if best else "-",
            _num(p.latency_p50_s * 1e3),
            "-" if p.latency_p99_s is None else _num(p.latency_p99_s * 1e3),
            "●" if id(p) in front else "",
            "" if p.predicted is None else f"{_num(p.predicted[0])}, {_num(p.predicted[1] * 1e3)}",
            _others(p),
            style="bold" if p is chosen else None,
        )
    return table


@contextmanager
def _display(enabled: bool) -> Iterator[tuple[object, object]]:
    """A live bar for the search and a table filling in as points are measured (a terminal),
    else one line per measured point on stderr (logs)."""
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err)
    task = progress.add_task("tune", total=1)
    points: list[Point] = []

    def on_progress(message: str, done: int, total: int) -> None:
        progress.update(task, description=message, completed=done, total=max(total, 1))

    if not enabled:
        def on_point_plain(p: Point) -> None:
            err.print(Text(f"measured {p.name}: {p.throughput:,.4g} req/s, p50 {p.latency_p50_s * 1e3:.4g} ms"
                           + (f" (best of {p.runs})" if p.runs > 1 else "")))

        yield (lambda *a: None), on_point_plain
        return
    with Live(Group(progress), console=err, transient=True, refresh_per_second=4) as live:
        def on_point(p: Point) -> None:
            points[:] = [q for q in points if q.name != p.name] + [p]
            live.update(Group(points_table(points, title="measured so far"), progress))

        yield on_progress, on_point


def markdown(result: TuneResult, command: str) -> str:
    """The run as a Markdown section for benchmarks/RESULTS.md."""
    peers = [p for p in result.points if p.kind == "peer"]
    best = max((p.throughput for p in peers), default=0.0)
    front = {p.name for p in result.front}
    lines = [
        f"### tune {result.model}, {result.cores} cores, objective {result.objective}", "",
        f"`{command}` ({result.host}; {result.seconds:.0f} s"
        + (f"; each point the best of {result.repeats} measurements" if result.repeats > 1 else "") + ")", "",
        "| setup | R x S x T | req/s | x best peer | p50 ms | p99 ms | Pareto | predicted req/s, ms | others' CPU |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for p in sorted(result.points, key=lambda p: (p.kind != "candidate", -p.throughput)):
        c = p.candidate
        name = (("**" + p.name + "** (chosen)") if p is result.chosen else p.name) if c is not None else p.name
        lines.append(
            f"| {'corepipe ' if c else ''}{name} | {'-' if c is None else f'{c.replicas} x {c.stages} x {c.threads}'} | "
            f"{_num(p.throughput)} | {p.throughput / best:.2f} | {_num(p.latency_p50_s * 1e3)} | "
            f"{'-' if p.latency_p99_s is None else _num(p.latency_p99_s * 1e3)} | {'yes' if p.name in front else ''} | "
            f"{'' if p.predicted is None else f'{_num(p.predicted[0])}, {_num(p.predicted[1] * 1e3)}'} | {_others(p)} |")
    lines += ["", *_summary(result), ""]
    return "\n".join(lines)


def _summary(result: TuneResult) -> list[str]:
    ch = result.chosen
    best, fast = result.best_peer(), result.best_peer("latency")
    lines = []
    if best is not None and fast is not None:
        lines.append(f"Chosen {ch.name}: throughput {ch.throughput / best.throughput:.2f}x the best peer's "
                     f"({best.name}); p50 {ch.latency_p50_s / fast.latency_p50_s:.2f}x the lowest-latency "
                     f"peer's ({fast.name}).")
        beaten = result.dominating_peers()
        lines.append("No peer is both faster and lower-latency." if not beaten else
                     "Peers both faster and lower-latency: " + ", ".join(p.name for p in beaten) + ".")
    other = "latency" if result.objective == "throughput" else "throughput"
    alt = result.choice_for(other)
    if alt is not None and alt is not ch:
        lines.append(f"--objective {other} would choose {alt.name}: {alt.throughput:,.4g} req/s, "
                     f"p50 {alt.latency_p50_s * 1e3:.4g} ms (same measurements).")
    if result.pruned:
        lines.append("Pruned by the cost model (predicted): " + "; ".join(
            f"{c.label} {_num(pred[0])} req/s {_num(pred[1] * 1e3)} ms" for c, pred in result.pruned) + ".")
    for name, error in result.failed:
        lines.append(f"Not measured: {name}: {error}")
    if result.capacity is not None:
        lines.append("Capacity: " + result.capacity.text() + ".")
        lines.append("Capacity model: " + result.capacity.model + ".")
    return lines


def _report(result: TuneResult) -> None:
    out.print(points_table(result.points, chosen=result.chosen, title=(
        f"{result.model}: tuned for {result.objective} on {result.cores} cores ({result.host}; one run"
        + (f", each point the best of {result.repeats} measurements" if result.repeats > 1 else "")
        + "; ★ chosen, ● Pareto front; others' CPU: the share of the CPUs other processes used meanwhile)")))
    ch = result.chosen
    lines = [f"chosen: {ch.name} (R replicas x S stages x T threads per stage): {ch.throughput:,.4g} req/s, "
             f"p50 {ch.latency_p50_s * 1e3:.4g} ms, p99 {(ch.latency_p99_s or 0) * 1e3:.4g} ms"]
    lines += _summary(result)
    lines.append(f"artifact: {result.output} (deployment in manifest.json; picture {result.output / 'tune.png'}; "
                 f"figures {result.output / 'tune.json'}); {result.seconds:.0f} s")
    out.print(Text("\n".join(lines)))


@app.command("tune")
def tune_cmd(
    model: Annotated[str, typer.Argument(
        help="An .onnx file, or zoo:NAME for a built-in model (zoo:resnet50, zoo:bert, ...).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Artifact directory to write (an existing artifact is replaced).",
        show_default=False)],
    num_cores: Annotated[str | None, typer.Option(
        "--num-cores", "-n", metavar="N",
        help="Cores K to tune for: every plan has R x S x T = K (default: all this process may run on; "
        "alias: --cores, -k).", show_default=False)] = None,
    cores: CoresAlias = None,
    objective: Annotated[str, typer.Option(
        "--objective", metavar="throughput|latency",
        help="Choose the plan with the most requests/s, or the lowest p50 latency under load.")] = "throughput",
    latency_budget: Annotated[str | None, typer.Option(
        "--latency-budget", metavar="MS",
        help="Only plans whose measured p99 latency is within this (e.g. 150, 150ms, 0.15s).",
        show_default=False)] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", "-p", metavar="fp32|bf16|fp16|auto",
        help="Compile precision of every candidate; the OpenVINO peers run at it too (default fp32).",
        show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", "-e", metavar="auto|onnxruntime|openvino",
        help="Compile engine of every candidate (auto: per stage).")] = "auto",
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0.0, metavar="REQ/S",
        help="Capacity question: how many cores and replicas hold this many requests/s (with --p99).",
        show_default=False)] = None,
    p99: Annotated[str | None, typer.Option(
        "--p99", metavar="LATENCY", help="Capacity question: the p99 latency to hold --rate within (e.g. 100ms).",
        show_default=False)] = None,
    max_cores: Annotated[int, typer.Option(
        "--max-cores", min=1, metavar="N", help="Capacity question: the most cores the answer may use.")] = 1024,
    max_candidates: Annotated[int, typer.Option(
        "--max-candidates", min=1, metavar="N", help="Candidate plans to measure; the cost model prunes the rest.")] = 6,
    balance: Annotated[str, typer.Option(
        "--balance", metavar="estimate|measure|load",
        help="How multi-stage candidates are cut: under load, one core at a time, or on the estimate.")] = "load",
    rounds: Annotated[int, typer.Option("--rounds", min=1, metavar="N", help="Cuts balance=load measures per candidate.")] = 3,
    seconds: Annotated[float, typer.Option(
        "--seconds", min=0.05, metavar="S", help="Seconds of requests per measurement (longer: steadier figures).")] = 3.0,
    tie: Annotated[float, typer.Option(
        "--tie", min=0.0, max=0.5, metavar="F",
        help="Figures within this fraction of the best count as equal; the better one on the other "
        "axis wins among them.")] = 0.03,
    repeats: Annotated[int, typer.Option(
        "--repeats", min=1, metavar="N",
        help="Measure every point N times in turn and keep each one's best run (for noisy machines).")] = 1,
    no_peers: Annotated[bool, typer.Option(
        "--no-peers", help="Skip the peers (faster; then nothing to compare the plans with).")] = False,
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", metavar="FILE.npz", help="Example inputs to send instead of random ones.",
        show_default=False)] = None,
    md_out: Annotated[Path | None, typer.Option(
        "--markdown", metavar="FILE.md", help="Append the run as a Markdown section (for benchmarks/RESULTS.md).",
        show_default=False)] = None,
) -> None:
    """Measure candidate plans (R replicas x S stages x T threads per stage = K cores) under real
    load, against the peers, and write the best as an artifact with its deployment.

    Each candidate the cost model keeps is compiled (multi-stage ones balanced under load in
    their own deployment) and measured with one request per stage worker in flight. The peers
    run in the same run. The chosen artifact goes to OUTPUT with its deployment in the
    manifest (`corepipe run`, `corepipe.load` and `serve` use it unless told otherwise), with
    tune.png (throughput against p50 latency: candidates, chosen plan, peers, Pareto front)
    and tune.json (every figure). OUTPUT is written whole at the end, or not at all.

    Examples:

    ```
    corepipe tune zoo:bert -o bert_tuned/ --num-cores 2
    corepipe tune model.onnx -o out/ -n 16 --objective latency
    corepipe tune model.onnx -o out/ -n 16 --latency-budget 50ms
    corepipe tune zoo:resnet50 -o rn/ -n 16 --rate 500 --p99 100ms
    ```
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores)}):
        k, _ = core_count(num_cores, cores, available=len(usable_cores()))
        if objective not in ("throughput", "latency"):
            raise typer.BadParameter(f"--objective must be 'throughput' or 'latency', got {objective!r}")
        if balance not in ("load", "measure", "estimate"):
            raise typer.BadParameter(f"--balance must be 'load', 'measure' or 'estimate', got {balance!r}")
        if precision is not None and precision not in PRECISION_CHOICES:
            raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        if engine not in ENGINE_CHOICES:
            raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
        if (rate is None) != (p99 is None):
            raise typer.BadParameter("--rate and --p99 go together: how many req/s, within which p99 latency")
        if not model.startswith("zoo:") and not Path(model).is_file():
            raise typer.BadParameter(f"model file {model!r} does not exist")
        budget = parse_duration(latency_budget) if latency_budget is not None else None
        p99_s = parse_duration(p99) if p99 is not None else None
        feeds = load_npz(inputs) if inputs is not None else None
        with _display(err.is_terminal) as (on_progress, on_point):
            result = run_tune(
                model, output, cores=None if k is None else int(k), objective=objective, latency_budget_s=budget, rate=rate,
                p99_s=p99_s, max_cores=max_cores, max_candidates=max_candidates, balance=balance,
                rounds=rounds, seconds=seconds, repeats=repeats, tie=tie, precision=precision, engine=engine,
                peers=not no_peers, example_inputs=feeds,
                progress=on_progress, on_point=on_point,  # type: ignore[arg-type]
            )
        _report(result)
        if md_out is not None:
            cmd = " ".join(["corepipe tune", model, "-o", str(output), "-n", str(result.cores), "--objective",
                            objective, "--seconds", f"{seconds:g}", "--repeats", str(repeats)]
                           + (["--precision", precision] if precision else [])
                           + (["--latency-budget", latency_budget] if latency_budget else [])
                           + (["--rate", f"{rate:g}", "--p99", str(p99)] if rate is not None else []))
            with open(md_out, "a") as f:
                f.write(markdown(result, cmd) + "\n")
