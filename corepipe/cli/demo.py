"""``corepipe demo``: compile a built-in model, stream requests through its pipeline, and check the
outputs against one onnxruntime session on the whole model."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
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
from ..bench import path_service_s
from ..bench.steady import Rounds, load_average, pipeline_round, session_round, solo_latency
from ..compiler.cut.choose import PRECISION_CHOICES
from ..compiler.driver import compile as compile_model
from ..engines.ort import make_session
from ..engines.tolerance import TOP1_MARGIN, TOP1_MIN_AGREEMENT, close_enough
from . import report
from ._app import app, cli_errors, err, out, print_plan, start_pipeline
from .demoreport import explain
from .options import CoresAlias, core_count, core_flag

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


def _session(model: onnx.ModelProto) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """One onnxruntime session on the whole model with 1 thread, as ``run(feeds) -> outputs``."""
    session = make_session(model.SerializeToString(), 1)
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds)))

    return run


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
        "--model", "-m", metavar="NAME", help=f"Built-in model: {_MODELS}.")] = "resnet50",
    requests: Annotated[int, typer.Option(
        "--requests", "-r", min=1, metavar="N", help="Requests per round.")] = 32,
    rounds: Annotated[int, typer.Option(
        "--rounds", min=1, metavar="N",
        help="Rounds of the pipeline and of one session, in turns; their spread is the noise.")] = 3,
    num_cores: Annotated[str | None, typer.Option(
        "--num-cores", "-n", metavar="N",
        help="Stages, one per core (default: this machine's cores, 2 to 8; alias: --cores, -k).",
        show_default=False)] = None,
    cores: CoresAlias = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", "-b", metavar="local|inline|ray",
        help="Pipeline backend (default: local where available, else inline; ray: a private Ray "
        "instance on this machine).",
        show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        "--precision", "-p", metavar="fp32|bf16|fp16|auto",
        help="Compile precision; outputs are checked against onnxruntime fp32 within the "
        "precision's documented tolerance.")] = "fp32",
) -> None:
    """Compile a built-in model, stream requests through its pipeline, and check the outputs
    against one onnxruntime session on the whole model.

    The default, ResNet-50 at 224x224 (175 nodes, 25.6 M parameters, random weights), is the
    model of Neuron's pipeline tutorial: a real architecture that compiles in seconds. The demo
    then measures the pipeline's steady state (full, its fill not counted) and one 1-thread
    session in turns, --rounds times, compares the speed-up with the one the plan predicts and
    says why they differ, and says when the rounds vary too much to trust the figures.
    Everything is written to a temporary directory.

    Stages run on the fastest engine that computes them right (openvino where it can,
    checked against onnxruntime while compiling). At --precision bf16 the check is the
    documented bf16 tolerance: cosine similarity >= 0.999 and relative L2 <= 2 % per output,
    and top-1 agreement on classifier scores.

    Examples:

    ```
    corepipe demo
    corepipe demo --precision bf16
    corepipe demo --model bert --requests 16 --num-cores 4
    ```
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores)}):
        if model not in zoo.names():
            raise typer.BadParameter(f"--model {model!r}: use one of {_MODELS}")
        if precision not in PRECISION_CHOICES:
            raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        n, _ = core_count(num_cores, cores)
        backend = backend or demo_backend()
        stages = int(n) if n is not None else min(max(2, host_cores()), 8)
        load_before = load_average()
        onnx_model, _ = zoo.get(model)
        feeds = [zoo.example_inputs(onnx_model, seed=i) for i in range(requests)]
        with tempfile.TemporaryDirectory(prefix="corepipe-demo-") as tmp:
            with report.compile_progress(err) as progress:
                cm = compile_model(onnx_model, Path(tmp) / model, example_inputs=feeds[0],
                                   num_cores=stages, balance="measure", precision=precision, progress=progress)
            print_plan(cm.plan, f"{cm.path} (temporary)", f"zoo:{model}: {report.plural(cm.num_cores, 'stage')}")
            session = _session(onnx_model)
            pipe = start_pipeline(cm.path, backend)
            got: list[dict[str, np.ndarray]] = []
            want: list[dict[str, np.ndarray]] = []
            try:
                pipe.run(feeds[0])  # first-run allocations are not the steady state
                session(feeds[0])
                fill = 2 * cm.num_cores if backend != "inline" else 0
                before = pipe.stats()
                pipe_rates, session_rates = [], []
                with report.request_progress(err, 2 * rounds, "rounds (pipeline, session)") as bar:
                    for r in range(rounds):
                        pipe_rates.append(pipeline_round(pipe, feeds, fill, got if r == 0 else None))
                        bar.advance(bar.task_ids[0])
                        session_rates.append(session_round(session, feeds, want if r == 0 else None))
                        bar.advance(bar.task_ids[0])
                loaded = pipe.timeline(last=requests)
                after = pipe.stats()
                solo = feeds[: min(5, requests)]
                solo_before, started = pipe.stats(), time.perf_counter()
                pipe_solo = solo_latency(pipe.run, solo)
                # means over the same requests: their time in the stages, and in all
                solo_split = (path_service_s(solo_before, pipe.stats()), (time.perf_counter() - started) / len(solo))
                session_solo = solo_latency(session, solo)
            except KeyboardInterrupt:
                pipe.close(timeout=2.0)
                raise
            finally:
                pipe.close()
        used = next((st.precision for st in cm.stages if st.precision != "fp32"), "fp32")
        out.print(_results_table(got))
        explain(
            out, plan=cm.plan, backend=backend, pipe=Rounds(tuple(pipe_rates)),
            session=Rounds(tuple(session_rates)), before=before, after=after, loaded=loaded,
            in_flight=pipe.max_in_flight, pipe_solo_s=pipe_solo, session_solo_s=session_solo,
            solo_split=solo_split,
            load=load_before, cores=host_cores(),
        )
        ok, summary = _compare(got, want, used)
        tolerance = "fp32 tolerance" if used == "fp32" else f"{used} tolerance"
        if not ok:
            err.print(Text(f"outputs DIFFER from onnxruntime beyond the {tolerance}: {summary}",
                           style="bold red"))
            raise typer.Exit(1)
        out.print(Text(f"outputs match onnxruntime on all {report.plural(requests, 'request')} within "
                       f"the {tolerance} ({summary})", style="green"))
