"""``corepipe bench``: the pipeline side by side with the baselines a user would pick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from ..compiler.choose import ENGINE_CHOICES, PRECISION_CHOICES
from ._app import app, cli_errors, err, out
from ._inputs import load_npz
from .bench import run_bench
from .benchresult import BenchResult
from .options import CoresAlias, NumCores, core_count, core_flag, usable_cores
from .pictures import check_plot, draw_timeline
from .report import plural

__all__ = ["bench_cmd", "markdown"]


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def _rss(values: list[int]) -> str:
    """RSS per process: each one for up to 3 processes, else the total and the count."""
    if len(values) <= 3:
        return " + ".join(_mib(x) for x in values)
    return f"{_mib(sum(values))} in {len(values)}"


def table(result: BenchResult) -> Table:
    one = result.row("ort 1 thread").throughput
    t = Table(title=f"{result.model}: {plural(result.requests, 'request')} at batch 1, "
                    f"{plural(result.cores, 'core')} ({result.host})",
              title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("setup", "req/s", "x 1 thread", "p50 ms (1 in flight)", "RSS MiB"):
        t.add_column(col, justify="left" if col == "setup" else "right", no_wrap=True)
    for row in result.rows:
        t.add_row(row.name, f"{row.throughput:.2f}", f"{row.throughput / one:.2f}",
                  f"{row.latency_p50_s * 1e3:.2f}", _rss(row.rss_bytes))
    return t


def markdown(result: BenchResult, command: str) -> str:
    """The result as a Markdown section for benchmarks/RESULTS.md."""
    one = result.row("ort 1 thread").throughput
    lines = [
        f"### {result.model}, {result.cores} cores, {result.precision}",
        "",
        f"`{command}` ({result.host}; {result.requests} requests; weights {_mib(result.weight_bytes)} MiB; "
        f"compile {result.compile_s:.1f} s; engine {result.engine}, precision {result.precision})",
        "",
        "| setup | req/s | x 1 thread | latency p50 ms | RSS MiB per process | USS MiB per process |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in result.rows:
        lines.append(
            f"| {row.name} | {row.throughput:.2f} | {row.throughput / one:.2f} | {row.latency_p50_s * 1e3:.2f} | "
            f"{' + '.join(_mib(x) for x in row.rss_bytes)} | {' + '.join(_mib(x) for x in row.uss_bytes)} |"
        )
    lines.append("")
    lines.append("Ratios (corepipe throughput over each baseline): " + ", ".join(
        f"{k} **{v:.2f}**" for k, v in result.ratios().items()))
    lines.append("")
    mem = result.memory_ratio()
    if mem is not None:
        lines.append(f"Resident memory of all corepipe workers together over one OpenVINO THROUGHPUT process: "
                     f"**{mem:.2f}x** ({_mib(sum(result.row('corepipe').rss_bytes))} MiB vs "
                     f"{_mib(sum(result.find('openvino THROUGHPUT').rss_bytes))} MiB RSS)")  # type: ignore[union-attr]
        lines.append("")
    bound = result.bound_text()
    if bound is not None:
        lines += [bound, ""]
    lines.append(result.latency_text())
    pipe_row = result.row("corepipe")
    if pipe_row.boundary_s:
        lines.append(f"{result.backend} hand-off per boundary (send to arrival, one request in flight; "
                     "client in, stage to stage, out to client): "
                     + ", ".join(f"{x * 1e3:.2f} ms" for x in pipe_row.boundary_s))
    stage_txt = "; ".join(
        f"stage {s['index']}: {s['nodes']} nodes, {_mib(s['resident_bytes'])} MiB, {s.get('engine', 'onnxruntime')} "
        f"{s.get('precision', 'fp32')}"
        + (f", measured {s['measured_s'] * 1e3:.1f} ms" if s.get("measured_s") else "")
        + (f", under load {s['loaded_s'] * 1e3:.1f} ms" if s.get("loaded_s") else "")
        + (" (fallback)" if s.get("fallback") else "")
        for s in result.stages)
    lines.append(f"Stages: {stage_txt}")
    lines.append("")
    return "\n".join(lines)


@app.command("bench")
def bench_cmd(
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="An .onnx file, or zoo:NAME for a built-in model (zoo:resnet50, zoo:bert, ...).",
        show_default=False)],
    num_cores: NumCores = None,
    cores: CoresAlias = None,
    requests: Annotated[int, typer.Option(
        "--requests", "-r", min=1, metavar="N", help="Requests per measurement.")] = 64,
    warmup: Annotated[int, typer.Option(
        "--warmup", min=0, metavar="N", help="Unmeasured requests before each measurement.")] = 5,
    balance: Annotated[str, typer.Option(
        "--balance", metavar="estimate|measure|load",
        help="Compile balance: measure (time stages on one core), load (run all stages at once) or "
        "estimate.")] = "measure",
    precision: Annotated[str | None, typer.Option(
        "--precision", "-p", metavar="fp32|bf16|fp16|auto",
        help="Compile precision; the OpenVINO peers run at it too (default fp32).", show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", "-e", metavar="auto|onnxruntime|openvino", help="Compile engine.")] = "auto",
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", metavar="FILE.npz",
        help="Example inputs (one array per model input) to send instead of random ones.",
        show_default=False)] = None,
    timeline: Annotated[Path | None, typer.Option(
        "--timeline", metavar="FILE.png",
        help="Draw the pipeline's measured requests as a Gantt chart (.png, .svg, .pdf; needs "
        "matplotlib).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the full result as JSON instead of the tables.")] = False,
    md_out: Annotated[Path | None, typer.Option(
        "--markdown", metavar="FILE.md",
        help="Append a Markdown section (for benchmarks/RESULTS.md) here.", show_default=False)] = None,
    backend: Annotated[str, typer.Option(
        "--backend", "-b", metavar="local|inline|ray",
        help="The pipeline's backend; with ray, the local backend is measured too, in the same run.",
    )] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", metavar="auto|ray://HOST:PORT",
        help="Ray cluster for --backend ray (default: a private instance on this machine).",
        show_default=False)] = None,
) -> None:
    """Measure the pipeline against the baselines a user would pick, in one run.

    Side by side, each on the same inputs: one onnxruntime session with 1 thread, one with K
    threads, K 1-thread sessions in parallel (one per core), one session shared by K threads,
    OpenVINO THROUGHPUT (K streams) and LATENCY (K threads, 1 in flight) at the compiled
    precision, and the corepipe pipeline on K cores (K: --num-cores, default all this process
    may run on). Prints throughput and ratios, the pipeline's own bound, latency with one
    request in flight, and memory per process. The machine may be noisy: compare ratios within
    one run, not absolute times.

    Examples:

    ```
    corepipe bench zoo:resnet50
    corepipe bench zoo:bert --num-cores 2 --precision bf16
    corepipe bench zoo:resnet50 --num-cores 2 --timeline timeline.png
    corepipe bench bert.onnx --inputs feeds.npz --markdown results.md
    corepipe bench zoo:resnet50 --num-cores 2 --backend ray
    ```
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores)}):
        k, _ = core_count(num_cores, cores, available=len(usable_cores()))
        if balance not in ("measure", "estimate", "load"):
            raise typer.BadParameter(f"--balance must be 'measure', 'load' or 'estimate', got {balance!r}")
        if precision is not None and precision not in PRECISION_CHOICES:
            raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        if engine not in ENGINE_CHOICES:
            raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
        if backend not in ("local", "ray"):
            raise typer.BadParameter(
                f"--backend {backend!r} cannot be benchmarked: "
                + ("the inline backend runs the stages one after another in this process; " if backend == "inline" else "")
                + "use local or ray")
        if address is not None and backend != "ray":
            raise typer.BadParameter(f"--address applies to --backend ray only, not {backend!r}")
        if not model.startswith("zoo:") and not Path(model).is_file():
            raise typer.BadParameter(f"model file {model!r} does not exist")
        if timeline is not None:
            check_plot(timeline, "--timeline")
        feeds = load_npz(inputs) if inputs is not None else None
        try:
            with err.status("starting") as status:
                result = run_bench(model, cores=None if k is None else int(k), requests=requests,
                                   warmup=warmup, balance=balance, example_inputs=feeds,
                                   progress=lambda step: status.update(step), engine=engine,
                                   precision=precision, backend=backend, address=address)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=1))
        else:
            out.print(table(result))
            ratios = ", ".join(f"{k}: [bold]{v:.2f}x[/bold]" for k, v in result.ratios().items())
            out.print(f"corepipe throughput {ratios}")
            if result.bound_text() is not None:
                out.print(result.bound_text())
            out.print(result.latency_text())
            pipe = result.row("corepipe")
            if pipe.boundary_s:
                out.print(f"{backend} hand-off per boundary (send to arrival, one in flight): "
                          + ", ".join(f"{x * 1e3:.2f} ms" for x in pipe.boundary_s))
            mem = result.memory_ratio()
            out.print(f"resident memory: corepipe workers {' + '.join(_mib(x) for x in pipe.rss_bytes)} "
                      f"MiB RSS for {_mib(result.weight_bytes)} MiB of weights"
                      + (f"; {mem:.2f}x one OpenVINO THROUGHPUT process" if mem else ""))
        if timeline is not None and result.timeline is not None:
            draw_timeline(result.timeline, timeline, f"corepipe bench {model}", result.stage_cores)
        if md_out is not None:
            cmd = (f"corepipe bench {model} --num-cores {result.cores} --requests {requests} --balance {balance}"
                   f" --engine {engine} --precision {result.precision}"
                   + (f" --backend {backend}" if backend != "local" else ""))
            with open(md_out, "a") as f:
                f.write(markdown(result, cmd) + "\n")
