"""``corepipe tune``: the command, its live display of the search, and its table."""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence
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

from ..compiler.cut.choose import ENGINE_CHOICES, PRECISION_CHOICES
from ..compiler.driver import BALANCES
from ..tune import Point, TuneResult, parse_duration, tune
from ..tune.result import num, ordered
from ._app import app, cli_errors, err, out
from ._inputs import InputShapes, check_model, example_feeds
from .options import CoresAlias, core_count, core_flag, usable_cores
from .report import fit
from .shapeopts import Dynamic, lengths_option, shape_kwargs

__all__ = ["tune_cmd", "points_table"]

_COLUMNS = ("setup", "precision", "req/s", "x best peer", "p50 ms", "p99 ms", "Pareto", "predicted req/s, ms",
            "others' CPU")


def points_table(points: list[Point], *, chosen: Point | None = None, title: str | None = None,
                 width: int | None = None, unit: str = "req") -> Table:
    """One row per measured point: setup (R x S x T), precision, req/s, x best peer, p50, p99,
    Pareto front, predicted, others' CPU. Fits ``width`` (see `report.fit`). ``unit="token"``:
    a decoder's (tok/s; p50/p99 between tokens; TTFT in the column of predictions)."""
    from ..tune import pareto_front

    peers = [p for p in points if p.kind == "peer"]
    best = max((p.req_per_s for p in peers), default=0.0)
    front = {id(p) for p in pareto_front(points)} if points else set()

    def build(hidden: Sequence[str]) -> Table:
        table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
        columns = [c for c in _COLUMNS if c not in hidden]
        heads = {"req/s": "tok/s", "predicted req/s, ms": "TTFT ms"} if unit == "token" else {}
        for col in columns:
            table.add_column(heads.get(col, col), justify="left" if col in ("setup", "precision", "Pareto") else "right",
                             no_wrap=True)
        for p in ordered(points):
            name = p.name if p.candidate is None else f"corepipe {p.name}"
            cells = {
                "setup": ("★ " if p is chosen else "") + name, "precision": p.precision,
                "req/s": num(p.req_per_s), "x best peer": f"{p.req_per_s / best:.2f}" if best else "-",
                "p50 ms": num(p.p50_s * 1e3), "p99 ms": "-" if p.p99_s is None else num(p.p99_s * 1e3),
                "Pareto": "●" if id(p) in front else "",
                "predicted req/s, ms": (num(p.ttft_s * 1e3) if p.ttft_s is not None else "") if unit == "token" else
                ("" if p.predicted is None else f"{num(p.predicted[0])}, {num(p.predicted[1] * 1e3)}"),
                "others' CPU": "" if p.foreign_cpu is None else f"{p.foreign_cpu:.0%}",
            }
            table.add_row(*[cells[c] for c in columns], style="bold" if p is chosen else None)
        return table

    return fit(build, width, ("predicted req/s, ms", "others' CPU", "p99 ms", "precision", "Pareto", "x best peer"))


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
            rate = f"{p.req_per_s:,.4g} tok/s" if p.ttft_s is not None else f"{p.req_per_s:,.4g} req/s"
            err.print(Text(f"measured {p.name}: {rate}, p50 {p.p50_s * 1e3:.4g} ms"
                           + (f" (best of {p.runs})" if p.runs > 1 else "")))

        yield (lambda *a: None), on_point_plain
        return
    with Live(Group(progress), console=err, transient=True, refresh_per_second=4) as live:
        def on_point(p: Point) -> None:
            points[:] = [q for q in points if q.name != p.name] + [p]
            unit = "token" if any(q.ttft_s is not None for q in points) else "req"
            live.update(Group(points_table(points, title="measured so far", width=err.width, unit=unit), progress))

        yield on_progress, on_point


def _report(result: TuneResult) -> None:
    out.print(points_table(result.points, chosen=result.chosen, width=out.width, unit=result.unit, title=(
        f"{result.model}: tuned for {result.objective} on {result.cores} cores ({result.host}; one run"
        + (f", each point the best of {result.repeats} measurements" if result.repeats > 1 else "")
        + (f"; {result.workload}; p50/p99: between tokens" if result.workload else "")
        + "; ★ chosen, ● Pareto front; others' CPU: the share of the CPUs other processes used meanwhile)")))
    ch = result.chosen
    unit = "tok" if result.unit == "token" else "req"
    lines = [f"chosen: {ch.name} (R replicas x S stages x T threads per stage): {ch.req_per_s:,.4g} {unit}/s, "
             f"p50 {ch.p50_s * 1e3:.4g} ms, p99 {(ch.p99_s or 0) * 1e3:.4g} ms"
             + ("" if ch.ttft_s is None else f", time to first token {ch.ttft_s * 1e3:.4g} ms")]
    lines += result.summary()
    lines.append(f"artifact: {result.path} (deployment in manifest.json; picture {result.path / 'tune.png'}; "
                 f"figures {result.path / 'tune.json'}); {result.seconds:.0f} s")
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
        help="Compile precision of every candidate; the OpenVINO peers run at it too, onnxruntime's stay "
        "fp32 (default fp32).", show_default=False)] = None,
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
        help="How multi-stage candidates are cut: under load (the default here: the load they are measured "
        "at), one core at a time, or on the estimate.")] = "load",
    load_rounds: Annotated[int, typer.Option(
        "--load-rounds", min=1, metavar="N", help="Cuts --balance load tries per candidate.")] = 3,
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
    input_shapes: InputShapes = None,
    md_out: Annotated[Path | None, typer.Option(
        "--markdown", metavar="FILE.md", help="Append the run as a Markdown section (for benchmarks/RESULTS.md).",
        show_default=False)] = None,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", metavar="LO:HI|~MEDIAN:CAP|V,V,...|FILE",
        help="Mixed traffic, as `corepipe bench --lengths`: every candidate is compiled with the sequence "
        "dim free and measured on requests of these lengths (fixed --seed); the peers get the same.",
        show_default=False)] = None,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, metavar="N",
        help="Also measure every plan with dynamic batching at 2, 4, ... N (a closed loop of --concurrency "
        "clients); the chosen size is printed and noted in the plan.", show_default=False)] = None,
    batch_delay: Annotated[str, typer.Option(
        "--batch-delay", metavar="DURATION", help="With --max-batch: how long a batch waits for more.")] = "500us",
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", "-c", min=1, metavar="N",
        help="Clients in a closed loop for every candidate (default with --max-batch: 2 x N).",
        show_default=False)] = None,
    dynamic: Dynamic = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the lengths (a decoder's: prompts) drawn.")] = 0,
    sequences: Annotated[int | None, typer.Option(
        "--sequences", min=1, metavar="N",
        help="A decoder: sequences at once under --objective throughput (default 16; latency runs one).",
        show_default=False)] = None,
    prompt_tokens: Annotated[int, typer.Option(
        "--prompt-tokens", min=1, metavar="N", help="A decoder: prompt length of the workload.")] = 32,
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", min=2, metavar="N", help="A decoder: tokens each sequence generates.")] = 64,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1, metavar="TOKENS",
        help="A decoder: tokens per sequence the plans hold (as compile's; default from the model).",
        show_default=False)] = None,
) -> None:
    """Measure candidate plans (R replicas x S stages x T threads per stage = K cores) under real
    load, against the peers, and write the best as an artifact with its deployment.

    Each candidate the cost model keeps is compiled (multi-stage ones balanced under load in
    their own deployment) and measured with one request per stage worker in flight. The peers
    run in the same run. The chosen artifact goes to --output with its deployment in the
    manifest (`corepipe run`, `corepipe.load` and `serve` use it unless told otherwise), with
    tune.png (throughput against p50 latency: candidates, chosen plan, peers, Pareto front)
    and tune.json (every figure), written whole at the end or not at all. From Python:
    corepipe.tune(...).

    A decoder (an export with past/present pairs) is tuned in tokens: every plan runs
    pipe.generate on --sequences sequences at once (--objective latency: one), prompts of
    --prompt-tokens, --new-tokens each, against onnxruntime's whole-model loop with K threads;
    tok/s, p50/p99 between tokens and time to first token. --rate/--p99, --lengths,
    --max-batch, --concurrency, --inputs and --dynamic count requests and are refused for it.

    Examples:

    ```
    corepipe tune zoo:bert -o bert_tuned/ --num-cores 2
    corepipe tune model.onnx -o out/ -n 16 --objective latency
    corepipe tune model.onnx -o out/ -n 16 --latency-budget 50ms
    corepipe tune zoo:resnet50 -o rn/ -n 16 --rate 500 --p99 100ms
    corepipe tune bert.onnx -o bt/ -n 2 --inputs feeds.npz --lengths "~24:128"
    corepipe tune resnet_dyn.onnx -o rn_tuned/ -n 2 --max-batch 8
    corepipe tune gpt2/model.onnx -o gpt2_tuned/ -n 2 --objective latency
    corepipe tune gpt2/model.onnx -o gpt2_tuned/ -n 2 --sequences 16
    ```
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores), "latency_budget": "--latency-budget",
                     "load_rounds": "--load-rounds", "example_inputs": "--inputs", "rate": "--rate",
                     "p99": "--p99", "out": "--output", "max_batch": "--max-batch",
                     "concurrency": "--concurrency", "sequences": "--sequences",
                     "prompt_tokens": "--prompt-tokens", "new_tokens": "--new-tokens", "max_length": "--max-length",
                     "lengths": "--lengths", "dynamic_dims": "--dynamic"}):
        k, _ = core_count(num_cores, cores, available=len(usable_cores()))
        if objective not in ("throughput", "latency"):
            raise typer.BadParameter(f"--objective must be 'throughput' or 'latency', got {objective!r}")
        if balance not in BALANCES:
            raise typer.BadParameter(f"--balance must be one of {', '.join(BALANCES)}, got {balance!r}")
        if precision is not None and precision not in PRECISION_CHOICES:
            raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        if engine not in ENGINE_CHOICES:
            raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
        if (rate is None) != (p99 is None):
            raise typer.BadParameter("--rate and --p99 go together: how many req/s, within which p99 latency")
        check_model(model)
        budget = parse_duration(latency_budget) if latency_budget is not None else None
        p99_s = parse_duration(p99) if p99 is not None else None
        feeds = example_feeds(inputs, input_shapes)
        shaped = shape_kwargs(dynamic, None, None, None)
        profile = lengths_option(lengths)
        with _display(err.is_terminal) as (on_progress, on_point):
            result = tune(
                model, output, num_cores=None if k is None else int(k), objective=objective, latency_budget=budget,
                rate=rate, p99=p99_s, max_cores=max_cores, max_candidates=max_candidates, balance=balance,
                load_rounds=load_rounds, seconds=seconds, repeats=repeats, tie=tie, precision=precision,
                engine=engine, peers=not no_peers, example_inputs=feeds, lengths=profile, max_batch=max_batch,
                batch_delay=batch_delay, concurrency=concurrency, seed=seed, sequences=sequences,
                prompt_tokens=prompt_tokens, new_tokens=new_tokens, max_length=max_length, **shaped,
                progress=on_progress, on_point=on_point,  # type: ignore[arg-type]
            )
        _report(result)
        if md_out is not None:
            cmd = shlex.join(["corepipe", "tune", model, "-o", str(output), "-n", str(result.cores), "--objective",
                              objective, "--seconds", f"{seconds:g}", "--repeats", str(repeats)]
                             + (["--precision", precision] if precision else [])
                             + (["--latency-budget", latency_budget] if latency_budget else [])
                             + (["--rate", f"{rate:g}", "--p99", str(p99)] if rate is not None else [])
                             + (["--lengths", lengths, "--seed", str(seed)] if lengths is not None else [])
                             + (["--max-batch", str(max_batch), "--batch-delay", batch_delay] if max_batch else [])
                             + (["--concurrency", str(concurrency)] if concurrency else [])
                             + (["--sequences", str(sequences)] if sequences else [])
                             + (["--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens)]
                                if result.unit == "token" else []))
            with open(md_out, "a") as f:
                f.write(result.to_markdown(cmd))
