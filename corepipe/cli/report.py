"""Tables and progress displays the command line prints: plans, pipeline statistics, demos.

Everything here turns plain data (`Plan`, `PipelineStats`) into rich renderables; nothing here
compiles or runs a model, so the commands in `corepipe.cli` stay thin and these stay testable.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..artifact.plan import Plan
from ..artifact.sizes import format_bytes
from ..artifact.sizes import plural as _plural
from ..runtime import PipelineStats
from .words import flag_names

__all__ = [
    "MIB",
    "bottleneck",
    "fit",
    "compile_progress",
    "latency_line",
    "plan_summary",
    "plan_table",
    "plural",
    "predicted_speedup",
    "request_progress",
    "stage_seconds",
    "stats_table",
]

MIB = 2**20
_SHORT = {"openvino": "ov", "onnxruntime": "ort"}  # the plan table's engine column


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 request"``, ``"2 requests"``: see `corepipe.artifact.sizes.plural`."""
    return _plural(count, word, many)


def stage_seconds(plan: Plan) -> list[float]:
    """Each stage's time: measured where the plan was balanced by measurement, else estimated."""
    return plan.stage_seconds()


def bottleneck(plan: Plan) -> list[int]:
    """The stages that set the pipeline's throughput: the slowest stage (the first one, on
    ties) or, when stages share cores, every stage of the busiest core."""
    seconds = stage_seconds(plan)
    per_core: dict[tuple[int, int], list[int]] = {}
    for k, st in enumerate(plan.stages):
        per_core.setdefault((st.device, st.core), []).append(k)
    if len(per_core) == len(seconds):
        return [max(range(len(seconds)), key=lambda k: (seconds[k], -k))]
    return max(per_core.values(), key=lambda ks: (sum(seconds[k] for k in ks), -ks[0]))


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _boundary_mib(plan: Plan, k: int) -> float:
    return sum(t.nbytes for t in plan.boundaries[k]) / MIB


#: Optional plan-table columns, in the order they give way when the terminal is narrow.
_DROPPABLE = ("last op", "first op", "mem %")


def _fits(table: Table, width: int) -> bool:
    probe = Console(width=10_000, file=io.StringIO())
    return probe.measure(table).maximum <= width


def fit(build: Callable[[Sequence[str]], Table], width: int | None, droppable: Sequence[str]) -> Table:
    """``build(hidden)`` with as few columns left out as it takes to fit ``width``.

    No value is ever wrapped or cut: while the table is wider than ``width``, the next column of
    ``droppable`` is left out, and a caption names the ones left out.
    """
    hidden: list[str] = []
    table = build(hidden)
    for name in droppable:
        if width is None or _fits(table, width):
            break
        hidden.append(name)
        table = build(hidden)
    if hidden:
        names = " and ".join(f"'{h}'" for h in reversed(hidden))
        table.caption = f"({names} not shown at {width} columns; wider: COLUMNS={max(width or 0, 80) + 40})"
        table.caption_justify = "left"
    return table


def plan_table(plan: Plan, *, title: str | None = None, width: int | None = None) -> Table:
    """One row per stage: nodes, first/last op, placement, memory, time share, hand-off size.

    No value is ever wrapped or cut: when the table would be wider than ``width``, the first
    and last op columns (then the memory share) are left out and a caption says so.
    """
    return fit(lambda hidden: _plan_table(plan, title, hidden), width, _DROPPABLE)


def _plan_table(plan: Plan, title: str | None, hidden: Sequence[str]) -> Table:
    seconds = stage_seconds(plan)
    total = sum(seconds) or 1.0
    slow = bottleneck(plan)
    kind = plan.stage_seconds_kind()
    out_bytes = [sum(t.nbytes for t in plan.boundaries[k + 1]) for k in range(plan.num_cores)]
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    columns = [
        ("stage", "right"), ("nodes", "right"), ("first op", "left"), ("last op", "left"),
        ("core", "center"), ("engine", "left"), ("resident", "right"), ("mem %", "right"),
        ({"under load": "loaded ms", "measured alone": "measured ms"}.get(kind, "est. ms"), "right"),
        ("share", "left"), ("out", "right"),
    ]
    keep = [i for i, (name, _) in enumerate(columns) if name not in hidden]
    for i in keep:
        name, justify = columns[i]
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    cap = plan.target.core_memory
    for k, st in enumerate(plan.stages):
        is_slow = k in slow and plan.num_cores > 1
        pct = 100.0 * st.resident_bytes / cap
        cells = [
            str(k), str(st.num_nodes), st.first_op, st.last_op, f"{st.device}:{st.core}",
            f"{_SHORT.get(st.engine, st.engine)} {st.precision}" + (" *" if st.fallback else ""),
            format_bytes(st.resident_bytes), f"{pct:.0f}%" if pct >= 1 or pct == 0 else "<1%",
            _ms(seconds[k]), f"{100.0 * seconds[k] / total:.1f}%" + (" ◀" if is_slow else ""),
            format_bytes(out_bytes[k]),
        ]
        table.add_row(*[cells[i] for i in keep], style="bold yellow" if is_slow else None)
    return table


def predicted_speedup(plan: Plan) -> tuple[float, float, bool]:
    """``(speed-up, busiest core's seconds, stages share cores)``: the plan's stage times
    (measured one at a time on one core, or estimated) summed, over the busiest core's share."""
    per_core = plan.core_seconds()  # stages that share a core add up
    slowest, total = max(per_core.values()), sum(plan.stage_seconds())
    return (total / slowest if slowest > 0 else 1.0), slowest, len(per_core) < plan.num_cores


def _bottleneck_line(plan: Plan, slowest: float, kind: str) -> str:
    slow = bottleneck(plan)
    if len(slow) == 1:
        return f"bottleneck: stage {slow[0]} ({_ms(slowest)} ms {kind})"
    st = plan.stages[slow[0]]
    return (f"bottleneck: core {st.device}:{st.core}, shared by stages "
            f"{', '.join(map(str, slow))} ({_ms(slowest)} ms {kind} in all)")


def stage_warnings(plan: Plan) -> list[str]:
    """One ``warning:`` line per stage that fell back to another engine (``*`` in the table), and
    one ``note:`` per stage whose graph OpenVINO reads as not static, saying what that means: the
    stage was checked against onnxruntime as it is, so nothing is wrong (it may run slower)."""
    lines = [f"warning: stage {st.index} falls back to {st.engine} {st.precision} (* in the table): {st.fallback}"
             for st in plan.stages if st.fallback]
    for n in plan.notes:
        head, sep, why = n.partition(" is not static: ")
        if n.startswith("stage ") and sep:
            lines.append(
                f"note: {head} has shapes OpenVINO works out per request, not when it reads the graph "
                f"({why.removeprefix('OpenVINO reads ')}). Nothing is wrong: its answers were checked "
                "against onnxruntime; a graph whose every shape is known ahead can run faster.")
    return lines


def plan_summary(plan: Plan, path: Path | str | None = None) -> Text:
    """Cores, bottleneck, what the stage times allow pipelined (1/max) vs one core (1/sum), artifact.

    The stage times are the plan's best figure (`Plan.stage_seconds_kind`): under load,
    measured alone on one core, or estimated; the rate they allow is an upper bound, named as
    such, not a measured rate (`corepipe run` and `corepipe bench` measure that).
    """
    seconds = stage_seconds(plan)
    speedup, slowest, shared = predicted_speedup(plan)
    total = sum(seconds)
    kind = plan.stage_seconds_kind()
    tgt = plan.target
    lines = [
        (f"{plural(plan.num_cores, 'stage')} on target {tgt.name} ({plural(tgt.devices, 'device')} x "
         f"{plural(tgt.cores_per_device, 'core')} of {format_bytes(tgt.core_memory)}); "
         f"{plural(plan.num_nodes, 'node')}, {format_bytes(plan.resident_bytes)} resident in all; "
         f"balance: {plan.balance}"),
        _bottleneck_line(plan, slowest, kind),
    ]
    if slowest > 0 and total > 0:
        lines.append(
            f"from stage times {kind}: {1.0 / slowest:,.1f} req/s pipelined "
            f"({'1/busiest core: stages share cores' if shared else '1/max stage'}) vs "
            f"{1.0 / total:,.1f} req/s on one core (1/sum): {speedup:.2f}x at most "
            "(`corepipe run` measures the real rate)"
        )
    kinds: dict[str, list[int]] = {}
    for st in plan.stages:
        kinds.setdefault(f"{st.engine} {st.precision}", []).append(st.index)
    lines.append("engines (ov = openvino, ort = onnxruntime): " + "; ".join(
        f"{kind} for stage{'s' if len(idx) > 1 else ''} {', '.join(map(str, idx))}" for kind, idx in kinds.items()))
    from .decoderopts import decoder_lines
    from .shapeopts import shape_lines

    lines.extend(shape_lines(plan))
    lines.extend(decoder_lines(plan))
    lines.extend(stage_warnings(plan))
    lines.extend(n for n in plan.notes if n.startswith("front-end: "))  # casts, an fp16 source's precision
    lines.extend(n for n in plan.notes if n.startswith("intake checks "))  # what request values may hold
    lines.extend(f"stage {st.index} runs on {st.engine}: {st.engine_why}" for st in plan.stages if st.engine_why)
    timed = [n for n in plan.notes if " on one core: " in n]
    if timed and not any(st.engine_why for st in plan.stages):  # older artifacts: the notes say it
        lines.append("measured per engine: " + "; ".join(n.replace(" on one core", "") for n in timed))
    dep = plan.deployment
    if dep is not None:
        per = "between tokens" if dep.unit == "token" else ""
        figures = "" if dep.throughput is None else (
            f"; measured {dep.throughput:,.4g} {dep.unit or 'req'}/s, p50 {(dep.latency_p50_s or 0) * 1e3:.4g} ms"
            + (f" {per}" if per else ""))
        lines.append(f"deployment: {dep.describe(plan.num_cores)} of {dep.cores}"
                     f"{' (tuned for ' + dep.objective + ')' if dep.objective else ''}{figures}")
    measured = [s.measured_s for s in plan.stages]
    if kind == "under load" and all(t is not None for t in measured):  # the table shows the loaded times
        lines.append("measured alone on one core: " + " / ".join(f"{_ms(t or 0.0)}" for t in measured)
                     + " ms per request")
    if path is not None:
        lines.append(f"artifact: {path}")
    return Text(flag_names("\n".join(lines)))  # the plan's notes, in the flags' words


def stats_table(stats: PipelineStats) -> Table:
    """One row per stage from `Pipeline.stats()`: pid, core, requests, busy %, service, queue."""
    table = Table(title=f"stages ({stats.backend} backend)", title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    replicas = stats.replicas > 1
    if replicas:
        table.add_column("replica", justify="right", no_wrap=True)
    for name in ("stage", "pid", "core", "requests", "busy %", "service ms", "queue"):
        table.add_column(name, justify="left" if name == "core" else "right", no_wrap=True)
    restarts = any(s.restarts for s in stats.stages)
    if restarts:
        table.add_column("restarts", justify="right", no_wrap=True)
    for s in stats.stages:
        row = [str(s.replica)] if replicas else []
        row += [
            str(s.index), str(s.pid) if s.pid is not None else "-", s.core, str(s.requests),
            f"{s.busy_pct:.1f}", f"{s.mean_service_s * 1e3:.3f}", str(s.queue_depth),
        ]
        if restarts:
            row.append(str(s.restarts))
        table.add_row(*row)
    return table


def latency_line(stats: PipelineStats) -> str:
    line = (
        f"latency p50 {stats.latency_p50_s * 1e3:.2f} ms, p90 {stats.latency_p90_s * 1e3:.2f} ms, "
        f"p99 {stats.latency_p99_s * 1e3:.2f} ms"
    )
    if stats.boundaries:
        last = len(stats.boundaries) - 1
        parts = [
            f"{'in' if b.index == 0 else 'out' if b.index == last else b.index} "
            f"{b.mean_s * 1e3:.2f} ms ({b.nbytes / 2**10:,.0f} KiB)"
            for b in stats.boundaries
        ]
        line += "\nhand-off per boundary (send to arrival, mean): " + ", ".join(parts)
    return line


class _StepProgress:
    """A `progress(step, done, total)` callback that draws one bar per compiler step."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        # "step: detail" updates the step's bar with the detail (e.g. the latest measurement).
        name = step.split(": ", 1)[0]
        if name not in self._tasks:
            for task in self._tasks.values():  # a new step means the earlier ones are over
                t = self._progress.tasks[task]
                self._progress.update(task, completed=t.total or 1)
            self._tasks[name] = self._progress.add_task(step, total=max(total, 1))
        self._progress.update(self._tasks[name], completed=done, total=max(total, 1), description=step)


@contextmanager
def compile_progress(console: Console) -> Iterator[_StepProgress]:
    """A transient display of the compiler's steps; silent when output is not a terminal."""
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        yield _StepProgress(progress)


@contextmanager
def request_progress(console: Console, total: int, what: str = "requests") -> Iterator[Progress]:
    """A live bar for streaming ``total`` requests; the task id is 0."""
    progress = Progress(
        SpinnerColumn(), TextColumn(what), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        progress.add_task(what, total=total)
        yield progress
