"""The typer app, its global flags, and what every command shares: error handling, consoles,
starting a pipeline and streaming requests through it with a live bar.

Errors: every `CorepipeError` and every malformed flag (``typer.BadParameter``) prints one red
``error: ...`` line on stderr and exits 2; ``--debug`` (or ``COREPIPE_DEBUG=1``) re-raises it so
the traceback shows. Ctrl-C prints ``interrupted`` and exits 130; commands close their pipeline
on the way out (try/finally), so no worker or shared memory outlives the command.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.text import Text

from .._version import __version__
from ..artifact.plan import Plan
from ..errors import CorepipeError
from ..runtime import Pipeline, load
from . import report

__all__ = ["app", "cli_errors", "err", "out", "print_plan", "print_run", "start_pipeline", "stream"]

app = typer.Typer(
    name="corepipe",
    help="Compile one ONNX model into a pipeline of stages, one per core, and run it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
#: Results go to stdout; progress bars and errors to stderr, so ``--json`` output pipes cleanly.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_state = {"debug": False}


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn corepipe errors and bad flags into one ``error:`` line (exit 2), Ctrl-C into 130."""
    try:
        yield
    except (CorepipeError, typer.BadParameter) as exc:
        if _state["debug"]:
            raise
        message = exc.message if isinstance(exc, typer.BadParameter) else str(exc)
        err.print(Text("error: " + " ".join(message.split()), style="red"), soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print(Text("interrupted", style="red"))
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"corepipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="COREPIPE_DEBUG",
        help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    """Compile one ONNX model into a pipeline of stages, one per core, and run it.

    Start with `corepipe demo`; then `corepipe compile model.onnx -o out/` and `corepipe run out/`.
    """
    _state["debug"] = debug
    for console in (out, err):
        # Piped or captured output: rich would assume 80 columns and squeeze the stage table.
        console.width = console.size.width if console.is_terminal or "COLUMNS" in os.environ else 120


def start_pipeline(artifact: Path, backend: str, **options: Any) -> Pipeline:
    """`corepipe.load`, with a missing backend module reported as a one-line error."""
    try:
        return load(artifact, backend=backend, **options)
    except ModuleNotFoundError as exc:
        if exc.name != f"corepipe.runtime.{backend}":
            raise
        raise CorepipeError(
            f"the {backend!r} backend is not available in this corepipe build; use --backend inline"
        ) from None


def stream(
    pipe: Pipeline, requests: Sequence[dict[str, np.ndarray]], count: int, what: str
) -> tuple[list[dict[str, np.ndarray]], float]:
    """Send ``count`` requests (cycling through ``requests``) with a live bar.

    Returns the outputs in order and the wall-clock seconds from first submit to last result.
    """
    results = []
    feeds = (requests[i % len(requests)] for i in range(count))
    start = time.perf_counter()
    with report.request_progress(err, count, what) as bar:
        for result in pipe.map(feeds):
            results.append(result)
            bar.advance(bar.task_ids[0])
    return results, time.perf_counter() - start


def print_plan(plan: Plan, path: Path | str, title: str) -> None:
    out.print(report.plan_table(plan, title=title))
    out.print(report.plan_summary(plan, path))


def _replicas(pipe: Pipeline) -> str:
    return f"{pipe.replicas} replicas x " if pipe.replicas > 1 else ""


def print_run(pipe: Pipeline, count: int, seconds: float, note: str = "") -> None:
    """Throughput over the streaming wall clock, latency percentiles, and the stage table."""
    stats = pipe.stats()
    out.print(Text(
        f"{count} requests in {seconds:.2f} s: {count / seconds:,.1f} req/s "
        f"({pipe.backend} backend, {_replicas(pipe)}{pipe.plan.num_cores} stages{'; ' + note if note else ''})\n"
        + report.latency_line(stats)
    ))
    out.print(report.stats_table(stats))
