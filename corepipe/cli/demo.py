"""``corepipe demo``: compile a built-in model, stream requests through its pipeline, and check the
outputs against one onnxruntime session on the whole model."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import onnx
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from .. import zoo
from ..artifact.target import host_cores
from ..compiler.choose import PRECISION_CHOICES
from ..compiler.driver import compile as compile_model
from ..engines.ort import make_session
from ..engines.tolerance import TOP1_MARGIN, TOP1_MIN_AGREEMENT, close_enough
from . import report
from ._app import app, cli_errors, err, out, print_plan, print_run, start_pipeline, stream

__all__ = ["demo_backend", "demo_cmd"]

_MODELS = ", ".join(zoo.names())


def demo_backend() -> str:
    """The backend `corepipe demo` uses when --backend is not given: ``local`` where it exists.

    Once the local backend ships, this becomes ``return "local"`` (one line).
    """
    try:
        from ..runtime import local  # noqa: F401
    except ImportError:
        return "inline"
    return "local"


def _reference(model: onnx.ModelProto, requests: list[dict[str, np.ndarray]]
               ) -> tuple[list[dict[str, np.ndarray]], float, float]:
    """One onnxruntime session on the whole model, 1 thread: outputs, seconds, p50 latency."""
    session = make_session(model.SerializeToString(), 1)
    names = [o.name for o in session.get_outputs()]
    session.run(names, requests[0])  # warm-up, as for the pipeline
    results, latencies = [], []
    start = time.perf_counter()
    with report.request_progress(err, len(requests), "onnxruntime") as bar:
        for feeds in requests:
            t0 = time.perf_counter()
            results.append(dict(zip(names, session.run(names, feeds))))
            latencies.append(time.perf_counter() - t0)
            bar.advance(bar.task_ids[0])
    return results, time.perf_counter() - start, float(np.median(latencies))


def _compare(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]],
             precision: str) -> tuple[bool, str]:
    """Whether every output of every request matches onnxruntime within ``precision``'s
    documented tolerance (`corepipe.engines.tolerance`), and the worst figures."""
    ok, notes, top1 = True, {}, []
    for g, w in zip(got, want, strict=True):
        for name, ref in w.items():
            good, figures = close_enough(g[name], ref, precision)
            if not good or name not in notes:
                notes[name] = figures
            ok = ok and good
            if precision != "fp32" and _is_scores(name, ref):
                scores = np.sort(ref.reshape(-1).astype(np.float64))
                margin = (scores[-1] - scores[-2]) / max(float(np.ptp(scores)), 1e-30)
                same = int(g[name].argmax()) == int(ref.argmax())
                top1.append(same)
                ok = ok and (same or margin <= TOP1_MARGIN)
    summary = "; ".join(f"{name}: {text}" for name, text in notes.items())
    if top1:
        agreement = sum(top1) / len(top1)
        ok = ok and agreement >= TOP1_MIN_AGREEMENT
        summary += f"; top-1 agreement {agreement:.0%}"
    return ok, summary


def _is_scores(name: str, value: np.ndarray) -> bool:
    """A classifier's scores (``logits`` [1, C]): shown as the top-1 class."""
    is_named = any(word in name.lower() for word in ("logit", "prob", "score"))
    return is_named and value.dtype.kind == "f" and value.size > 1 and value.size == value.shape[-1]


def _results_table(results: list[dict[str, np.ndarray]], shown: int = 5) -> Table:
    table = Table(title=f"first {min(shown, len(results))} results (random weights)",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("request", justify="right")
    for name in results[0]:
        table.add_column(name)
    for i, res in enumerate(results[:shown]):
        cells = []
        for name, value in res.items():
            if _is_scores(name, value):
                top = int(value.argmax())
                cells.append(f"top-1 class {top} ({value.reshape(-1)[top]:.3f})")
            else:
                cells.append(f"{value.dtype}{list(value.shape)} mean {value.mean():.4f} "
                             f"std {value.std():.4f}")
        table.add_row(str(i), *cells)
    return table


@app.command("demo")
def demo_cmd(
    model: Annotated[str, typer.Option(
        "--model", "-m", help=f"Built-in model: {_MODELS}.")] = "resnet50",
    requests: Annotated[int, typer.Option("--requests", "-r", min=1, help="Requests to stream.")] = 32,
    num_cores: Annotated[int | None, typer.Option(
        "--num-cores", "-n", min=1, help="Stages (default: this machine's cores, 2 to 8).",
        show_default=False)] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", "-b", metavar="local|inline",
        help="Pipeline backend (default: local where available, else inline).",
        show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        "--precision", "-p", metavar="fp32|bf16|fp16|auto",
        help="Compile precision; outputs are checked against onnxruntime fp32 within the "
        "precision's documented tolerance.")] = "fp32",
) -> None:
    """Compile a built-in model, stream requests through its pipeline, and check the outputs
    against one onnxruntime session on the whole model.

    The default, ResNet-50 at 224x224 (175 nodes, 25.6 M parameters, random weights), is the
    model of Neuron's pipeline tutorial: a real architecture that compiles in about 2 s and
    streams 32 requests in seconds on 2 cores. Everything is written to a temporary directory.

    Stages run on the fastest engine that computes them right (openvino where it can,
    checked against onnxruntime while compiling). At --precision bf16 the check is the
    documented bf16 tolerance: cosine similarity >= 0.999 and relative L2 <= 2 % per output,
    and top-1 agreement on classifier scores.

    Examples:

      corepipe demo

      corepipe demo --precision bf16

      corepipe demo --model bert --requests 16 --num-cores 4
    """
    with cli_errors():
        if model not in zoo.names():
            raise typer.BadParameter(f"--model {model!r}: use one of {_MODELS}")
        if precision not in PRECISION_CHOICES:
            raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        backend = backend or demo_backend()
        cores = num_cores or min(max(2, host_cores()), 8)
        onnx_model, _ = zoo.get(model)
        feeds = [zoo.example_inputs(onnx_model, seed=i) for i in range(requests)]
        with tempfile.TemporaryDirectory(prefix="corepipe-demo-") as tmp:
            with report.compile_progress(err) as progress:
                cm = compile_model(onnx_model, Path(tmp) / model, example_inputs=feeds[0],
                                   num_cores=cores, balance="measure", precision=precision, progress=progress)
            print_plan(cm.plan, f"{cm.path} (temporary)", f"zoo:{model}: {cm.num_cores} stages")
            pipe = start_pipeline(cm.path, backend)
            try:
                pipe.run(feeds[0])  # warm-up: first-run allocations are not the steady state
                results, seconds = stream(pipe, feeds, requests, f"pipeline ({backend})")
                print_run(pipe, requests, seconds, note="stage counts include 1 warm-up request")
                # Latency with one request in flight, comparable to one session's (the p50
                # above includes queueing behind the other requests in flight).
                solo = []
                for f in feeds[: min(5, requests)]:
                    t0 = time.perf_counter()
                    pipe.run(f)
                    solo.append(time.perf_counter() - t0)
                p50 = float(np.median(solo))
            except KeyboardInterrupt:
                pipe.close(timeout=2.0)
                raise
            finally:
                pipe.close()
        ref, ref_seconds, ref_p50 = _reference(onnx_model, feeds)
        used = next((st.precision for st in cm.stages if st.precision != "fp32"), "fp32")
        out.print(_results_table(results))
        note = " (inline runs stages one after another)" if backend == "inline" else ""
        out.print(report.comparison_table([
            (f"pipeline, {cm.num_cores} stages, {backend}, {used}", f"{requests / seconds:,.1f}",
             f"{p50 * 1e3:.2f}", f"{ref_seconds / seconds:.2f}x{note}"),
            ("onnxruntime, 1 session, 1 thread", f"{requests / ref_seconds:,.1f}",
             f"{ref_p50 * 1e3:.2f}", "1.00x"),
        ]))
        ok, summary = _compare(results, ref, used)
        tolerance = "fp32 tolerance" if used == "fp32" else f"{used} tolerance"
        if not ok:
            err.print(Text(f"outputs DIFFER from onnxruntime beyond the {tolerance}: {summary}",
                           style="bold red"))
            raise typer.Exit(1)
        out.print(Text(f"outputs match onnxruntime on all {requests} requests, within the "
                       f"{tolerance} of its fp32 ({summary})", style="green"))
