"""The typer app, its global flags, and what every command shares: error handling, consoles,
starting a pipeline and streaming requests through it with a live bar.

Errors: every `CorepipeError` and every malformed flag (``typer.BadParameter``) prints one red
``error: ...`` line on stderr and exits 2. Messages from the library name its parameters
(``num_cores``); here they name the flag the user typed (``--num-cores``, or ``--cores`` when
that was the spelling used). ``--debug`` (or ``COREPIPE_DEBUG=1``) prints the traceback above
that line and exits with the same code. Ctrl-C prints ``interrupted`` and exits 130; commands
close their pipeline on the way out (try/finally), so no worker or shared memory outlives them.

Help: every command is a `CorepipeCommand`: flags show no type placeholder, options without a
metavar get one from their type (``N``, ``NUMBER``, ``PATH``, ``TEXT``), and help text is
Markdown, so paragraphs reflow to the terminal and indented examples stay as written.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.text import Text
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .._version import __version__
from ..artifact.plan import Plan
from ..errors import CorepipeError
from ..runtime import Pipeline, load
from . import report
from .options import remember_args
from .words import flag_names

__all__ = [
    "app", "backend_options", "cli_errors", "err", "out", "print_plan", "print_run",
    "start_pipeline", "stream", "CorepipeCommand",
]

_TYPE_METAVARS = {int: "N", float: "NUMBER", Path: "PATH", str: "TEXT"}


def _tidy(param: Any) -> None:
    """One look for every option: no ``<bool>`` on flags, a plain metavar, no ``[x>=1]``."""
    if isinstance(param, TyperOption):
        if param.is_flag:
            param.metavar = ""
        elif param.metavar is None:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            param.metavar = _TYPE_METAVARS.get(annotation, "TEXT") if isinstance(annotation, type) else "TEXT"
        param._get_number_range_help_str = lambda: None  # type: ignore[method-assign]
    elif isinstance(param, TyperArgument):
        if param.metavar is None and param.name:
            param.metavar = param.name.upper()
        name = param.metavar or ""
        param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        param._usage_display_name = (  # type: ignore[method-assign]
            lambda: name if param.required else f"[{name}]")


def _usage_error(exc: UsageError) -> None:
    """A malformed command line (a missing --output, an unknown flag, a value out of range) as
    the one ``error:`` line every other error gets, exit 2, instead of click's boxed usage."""
    where = exc.ctx.command_path if exc.ctx is not None else "corepipe"
    message = " ".join(exc.format_message().split())
    message = message[:1].lower() + message[1:]
    _fail(Text(f"error: {message.rstrip('.')} (`{where} --help` lists the {'commands' if message.startswith('no such command') else 'options'})", style="red"), 2)


class _OneLineUsage:
    """Mixed into the group and every command: usage errors print as one ``error:`` line, and
    the command's arguments as typed are kept so errors can name a flag as the user spelled it
    (`corepipe.cli.options.core_flag`)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            _usage_error(exc)
            raise  # unreachable: _usage_error exits
        return ctx

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not isinstance(self, TyperGroup):
            remember_args(list(args))
        return super().parse_args(ctx, args)  # type: ignore[misc,no-any-return]


class CorepipeCommand(_OneLineUsage, TyperCommand):
    """A command whose options print with plain metavars (see `_tidy`) and whose usage errors
    are one line (see `_OneLineUsage`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _tidy(p)
        return params


#: Commands in the order a newcomer meets them; commands added later follow, as registered.
ORDER = ("demo", "compile", "inspect", "run", "bench")


class _Group(_OneLineUsage, TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _tidy(p)
        return params

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:  # no such command
            _usage_error(exc)
            raise

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]


class _App(typer.Typer):
    """A typer app whose commands are `CorepipeCommand` unless they ask for another class."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,  # type: ignore[override]
                **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls or CorepipeCommand, **kwargs)


app = _App(
    name="corepipe",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
#: Results go to stdout; progress bars and errors to stderr, so ``--json`` output pipes cleanly.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_state: dict[str, Any] = {"debug": False}


@contextmanager
def cli_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn corepipe errors and bad flags into one ``error:`` line (exit 2), Ctrl-C into 130.

    Args:
        flags: library parameter name -> the flag the user typed for it, where a command
            accepts several spellings (``{"num_cores": "--cores"}``); the rest use
            `corepipe.cli.words.API_FLAGS`.
    """
    try:
        yield
    except (CorepipeError, typer.BadParameter) as exc:
        message = exc.message if isinstance(exc, typer.BadParameter) else str(exc)
        _fail(Text("error: " + flag_names(" ".join(message.split()), flags), style="red"), 2)
    except KeyboardInterrupt:
        _fail(Text("interrupted", style="red"), 130)


def _fail(line: Text, code: int) -> None:
    if _state["debug"]:
        err.print(Text(traceback.format_exc().rstrip()), soft_wrap=True)
    err.print(line, soft_wrap=True)
    raise typer.Exit(code) from None


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
        help="Show the traceback above an error (the exit code stays the error's).")] = False,
) -> None:
    """Compile one ONNX model into a pipeline of stages, one per core, and run it.

    Start with `corepipe demo`. Then compile a model, look at its plan, and stream requests
    through it:

    ```
    corepipe demo
    corepipe compile zoo:resnet50 -o resnet_compiled/ --num-cores 2
    corepipe inspect resnet_compiled/ --plot plan.png
    corepipe run resnet_compiled/ --requests 200 --timeline timeline.png
    corepipe bench zoo:resnet50 --num-cores 2
    corepipe tune zoo:resnet50 -o resnet_tuned/ --num-cores 2
    ```

    MODEL is an .onnx file or zoo:NAME (zoo:resnet50, zoo:bert, zoo:mlp, ...); compile also
    takes a TensorFlow SavedModel directory. Every command takes --help. Errors print one line
    and exit 2; Ctrl-C exits 130. Every command is a library call too: corepipe.compile, load,
    bench, tune.
    """
    _state["debug"] = debug
    columns = os.environ.get("COLUMNS", "")
    for console in (out, err):
        if columns.isdigit() and int(columns) > 0:
            console.width = int(columns)
        elif not console.is_terminal:
            # Piped or captured output: rich would assume 80 columns and squeeze the tables.
            console.width = 120


def backend_options(backend: str, address: str | None, placement: str | None) -> dict[str, Any]:
    """The ``ray`` backend's flags as `corepipe.load` options; refused with other backends."""
    if backend != "ray":
        given = [flag for flag, value in (("--address", address), ("--placement", placement)) if value]
        if given:
            raise typer.BadParameter(f"{' and '.join(given)} apply to --backend ray only, not {backend!r}")
        return {}
    options: dict[str, Any] = {"address": address}
    if placement is not None:
        options["placement_strategy"] = placement.upper()
    return options


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
    pipe: Pipeline, requests: Sequence[dict[str, np.ndarray]], count: int, what: str,
    sink: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> float:
    """Send ``count`` requests (cycling through ``requests``) with a live bar.

    Outputs are handed to ``sink(i, outputs)`` in order and then dropped, so memory stays flat
    whatever ``count`` is. Returns the wall-clock seconds from first submit to last result.
    """
    feeds = (requests[i % len(requests)] for i in range(count))
    start = time.perf_counter()
    with report.request_progress(err, count, what) as bar:
        for i, result in enumerate(pipe.map(feeds)):
            if sink is not None:
                sink(i, result)
            del result
            bar.advance(bar.task_ids[0])
    return time.perf_counter() - start


def print_plan(plan: Plan, path: Path | str, title: str) -> None:
    width = out.width
    out.print(report.plan_table(plan, title=title, width=width))
    out.print(report.plan_summary(plan, path))


def _replicas(pipe: Pipeline) -> str:
    return f"{pipe.replicas} replicas x " if pipe.replicas > 1 else ""


def print_run(pipe: Pipeline, count: int, seconds: float, note: str = "", shapes: str = "") -> None:
    """Throughput over the streaming wall clock, latency percentiles (with what they count: the
    run keeps the pipeline full, so a request waits behind the others in flight), the shapes
    sent (``shapes``), and the stage table."""
    stats = pipe.stats()
    service = sum(s.mean_service_s for s in stats.stages if s.replica == 0)
    out.print(Text(
        f"{report.plural(count, 'request')} in {seconds:.2f} s: {count / seconds:,.1f} req/s "
        f"({pipe.backend} backend, {_replicas(pipe)}{report.plural(pipe.plan.num_cores, 'stage')}"
        f"{'; ' + note if note else ''})\n" + report.latency_line(stats)
        + (f"\nlatency is submit to answer with up to {pipe.max_in_flight} requests in flight, so it counts the "
           f"time each waited behind the others (queued); the stages' own work is {service * 1e3:.3g} ms per "
           "request (service ms below); --max-in-flight 1 measures one request alone"
           if pipe.max_in_flight > 1 and count > 1 else "")
        + (f"\nshapes: {shapes}" if shapes else "")
    ))
    out.print(report.stats_table(stats))
