"""``corepipe bench``: parse the flags, call `corepipe.bench`, print its rows and ratios."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..bench import BACKENDS, BenchResult, bench
from ..bench.result import ms, num
from ..compiler.cut.choose import ENGINE_CHOICES, PRECISION_CHOICES
from ..compiler.driver import BALANCES
from ._app import app, cli_errors, err, out
from ._inputs import InputShapes, check_model, example_feeds
from .options import CoresAlias, NumCores, core_count, core_flag, usable_cores
from .pictures import check_plot, draw_timeline
from .report import fit, plural
from .shapeopts import Buckets, Dynamic, lengths_option, shape_kwargs

__all__ = ["bench_cmd", "table", "timeline_words"]


def _rss(values: Sequence[int]) -> str:
    """RSS per process: each one for up to 3 processes, else the total and the count."""
    if len(values) <= 3:
        return " + ".join(f"{x / 2**20:.0f}" for x in values)
    return f"{sum(values) / 2**20:.0f} in {len(values)}"


def table(result: BenchResult, width: int | None = None) -> Table:
    """One row per setup: precision, req/s, x the 1-thread session, p50 and p99 with how many
    requests were in flight, RSS per process. Fits ``width`` (see `report.fit`)."""
    ref = result.find("ort 1 thread")

    def build(hidden: Sequence[str]) -> Table:
        t = Table(title=f"{result.model}: {plural(result.requests, 'request')} at batch 1, "
                        f"{plural(result.cores, 'core')} ({result.host})",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        columns = ["setup", "precision", "req/s", "x 1 thread", "p50 ms", "p99 ms", "in flight", "RSS MiB"]
        for col in columns:
            if col not in hidden:
                t.add_column(col, justify="left" if col in ("setup", "precision") else "right", no_wrap=True)
        for row in result.rows:
            cells = {"setup": row.setup, "precision": row.precision, "req/s": num(row.req_per_s),
                     "x 1 thread": "-" if ref is None else f"{row.req_per_s / ref.req_per_s:.2f}",
                     "p50 ms": ms(row.p50_s), "p99 ms": ms(row.p99_s), "in flight": str(row.in_flight),
                     "RSS MiB": _rss(row.process_rss)}
            t.add_row(*[cells[c] for c in columns if c not in hidden],
                      style="bold" if row.kind == "corepipe" else None)
        return t

    return fit(build, width, ("RSS MiB", "p99 ms", "in flight", "x 1 thread"))


def timeline_words(result: BenchResult) -> str | None:
    """The requests the bench timeline holds, in words, where some were warm-up: the timed run
    follows the warm-up right behind it, so its picture shows both."""
    assert result.timeline is not None
    drawn = len(result.timeline.requests) + result.timeline.dropped
    if drawn <= result.requests:
        return None
    return f"{drawn - result.requests:,} warm-up + {result.requests:,} measured requests"


def _report(result: BenchResult) -> None:
    out.print(table(result, out.width))
    full = [r for r in result.rows if r.rate_in_flight]
    if full:
        out.print(Text("in flight: requests in flight while p50 and p99 were taken; req/s ran with the pipeline "
                       "kept full (as its timeline shows): up to " + ", ".join(
                           f"{r.rate_in_flight} in flight for {r.setup}" for r in full)))
    if result.traffic:
        out.print(Text(f"traffic: {result.traffic}"))
    pipe = result.pipeline
    if result.ratios:
        out.print(Text(f"corepipe ({pipe.precision}) throughput over each setup: " + ", ".join(
            f"{k} {r}" for k, r in result.ratios.items())))
    for line in (result.bound_text(), result.latency_text()):
        if line is not None:
            out.print(Text(line))
    if pipe.boundary_s:
        out.print(Text(f"{result.backend} hand-off per boundary (send to arrival, one in flight): "
                       + ", ".join(f"{ms(x)} ms" for x in pipe.boundary_s)))
    out.print(Text(result.memory_text()))


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
        help="How the pipeline is cut: on stages timed one at a time (measure: the default here, "
        "since a benchmark should show the best measured cut), on all stages run at once (load), or on "
        "the analytic estimate.")] = "measure",
    precision: Annotated[str | None, typer.Option(
        "--precision", "-p", metavar="fp32|bf16|fp16|auto",
        help="Compile precision; the OpenVINO peers run at it too, onnxruntime's stay fp32 (every row "
        "shows its precision; default fp32).", show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", "-e", metavar="auto|onnxruntime|openvino", help="Compile engine (auto: per stage).")] = "auto",
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", metavar="FILE.npz",
        help="Example inputs (one array per model input) to send instead of random ones.",
        show_default=False)] = None,
    input_shapes: InputShapes = None,
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
        help="The pipeline's backend: local, or ray (the local backend is then measured too, in the same "
        "run). inline runs the stages one after another: nothing to benchmark.",
    )] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", metavar="auto|ray://HOST:PORT",
        help="Ray cluster for --backend ray (default: a private instance on this machine).",
        show_default=False)] = None,
    no_peers: Annotated[bool, typer.Option(
        "--no-peers", help="Measure the pipeline alone (no peers, no ratios).")] = False,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", metavar="LO:HI|~MEDIAN:CAP|V,V,...|FILE",
        help="Mixed traffic: each request's length drawn (fixed --seed) from LO..HI uniformly, a "
        "log-normal with this median capped at CAP, the lengths listed, or a file of lengths (one per "
        "line). The model's symbolic sequence dim varies (prefix NAME= to pick another); the pipeline "
        "is compiled with it free and a padded static pipeline is measured beside it.",
        show_default=False)] = None,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, metavar="N",
        help="Dynamic batching: merge up to N waiting requests along the model's symbolic batch dim, "
        "measured with a closed loop of --concurrency clients against corepipe without batching and "
        "OpenVINO THROUGHPUT at batch 1, 2, 4, ... N.", show_default=False)] = None,
    batch_delay: Annotated[str, typer.Option(
        "--batch-delay", metavar="DURATION", help="With --max-batch: how long a batch waits for more.")] = "500us",
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", "-c", min=1, metavar="N",
        help="Clients in a closed loop, each sending its next request when its answer is back "
        "(default with --max-batch: 2 x N).", show_default=False)] = None,
    dynamic: Dynamic = None,
    buckets: Buckets = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the lengths drawn.")] = 0,
) -> None:
    """Measure the pipeline against the peers a user would pick instead, in one run.

    Side by side, each on the same inputs: one onnxruntime session with 1 thread, one with K
    threads, K 1-thread sessions in parallel (one per core), one session shared by K threads,
    OpenVINO THROUGHPUT (K streams) and LATENCY (K threads, 1 in flight) at the compiled
    precision, and the corepipe pipeline on K cores (K: --num-cores, default all this process
    may run on). Prints each setup's precision, throughput, latency (with how many requests were
    in flight) and memory per process; the pipeline's ratio over each (a ratio across precisions
    says so); its own bound; what it adds to latency. The machine may be noisy: compare ratios
    within one run, not absolute times. From Python: corepipe.bench(...).

    Examples:

    ```
    corepipe bench zoo:resnet50
    corepipe bench zoo:bert --num-cores 2 --precision bf16
    corepipe bench zoo:resnet50 --num-cores 2 --timeline timeline.png
    corepipe bench bert.onnx --inputs feeds.npz --markdown results.md
    corepipe bench zoo:resnet50 --num-cores 2 --backend ray
    corepipe bench bert_dyn.onnx --inputs feeds.npz --lengths 8:128
    corepipe bench bert_dyn.onnx --inputs feeds.npz --lengths "~24:128" -p bf16
    corepipe bench resnet_dyn.onnx --max-batch 8 --concurrency 16 -p bf16
    ```

    With --lengths or --max-batch the traffic is mixed: every setup gets the same requests, the
    peers on the model's own dynamic dims (OpenVINO's reshaped to the same bounded ranges).
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores), "example_inputs": "--inputs",
                     "max_batch": "--max-batch", "concurrency": "--concurrency"}):
        k, _ = core_count(num_cores, cores, available=len(usable_cores()))
        if balance not in BALANCES:
            raise typer.BadParameter(f"--balance must be one of {', '.join(BALANCES)}, got {balance!r}")
        if precision is not None and precision not in PRECISION_CHOICES:
            raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        if engine not in ENGINE_CHOICES:
            raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
        if backend not in BACKENDS:
            raise typer.BadParameter(
                f"--backend {backend!r} cannot be benchmarked: "
                + ("the inline backend runs the stages one after another in this process; " if backend == "inline" else "")
                + f"use {' or '.join(BACKENDS)}")
        if address is not None and backend != "ray":
            raise typer.BadParameter(f"--address applies to --backend ray only, not {backend!r}")
        check_model(model)
        if timeline is not None:
            check_plot(timeline, "--timeline")
        feeds = example_feeds(inputs, input_shapes)
        shaped = shape_kwargs(dynamic, buckets, None, None)
        profile = lengths_option(lengths)
        with err.status("starting") as status:
            result = bench(model, num_cores=None if k is None else int(k), requests=requests, warmup=warmup,
                           balance=balance, example_inputs=feeds, engine=engine, precision=precision,
                           backend=backend, address=address, peers=not no_peers, lengths=profile,
                           max_batch=max_batch, batch_delay=batch_delay, concurrency=concurrency, seed=seed,
                           **shaped,
                           progress=lambda step, done, total: status.update(f"{step} [{done}/{total} done]"))
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=1))
        else:
            _report(result)
        if timeline is not None and result.timeline is not None:
            draw_timeline(result.timeline, timeline, f"corepipe bench {model}", result.stage_cores,
                          shown=timeline_words(result))
        if md_out is not None:
            cmd = shlex.join(["corepipe", "bench", model, "--num-cores", str(result.cores), "--requests",
                              str(requests), "--balance", balance, "--engine", engine, "--precision",
                              result.precision] + (["--backend", backend] if backend != "local" else [])
                             + (["--lengths", lengths, "--seed", str(seed)] if lengths is not None else [])
                             + (["--max-batch", str(max_batch), "--batch-delay", batch_delay] if max_batch else [])
                             + (["--concurrency", str(concurrency)] if concurrency else []))
            with open(md_out, "a") as f:
                f.write(result.to_markdown(cmd))
