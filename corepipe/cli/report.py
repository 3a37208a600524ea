"""Tables and progress displays the command line prints: plans, pipeline statistics, demos.

Everything here turns plain data (`Plan`, `PipelineStats`) into rich renderables; nothing here
compiles or runs a model, so the commands in `corepipe.cli` stay thin and these stay testable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
from ..runtime import PipelineStats

__all__ = [
    "MIB",
    "bottleneck",
    "comparison_table",
    "compile_progress",
    "latency_line",
    "plan_summary",
    "plan_table",
    "request_progress",
    "stage_seconds",
    "stats_table",
    "used_of",
]

MIB = 2**20
_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def _unit(n: float) -> tuple[str, int]:
    for name, size in _UNITS:
        if n >= size:
            return name, size
    return "KiB", 2**10


def used_of(used: int, capacity: int) -> str:
    """``'12.1 / 64.0 MiB'``; when the two need different units: ``'12.1 MiB / 32.0 GiB'``."""
    cap_unit, cap_size = _unit(capacity)
    use_unit, use_size = _unit(used)
    if use_unit == cap_unit or used == 0:
        return f"{used / cap_size:.1f} / {capacity / cap_size:.1f} {cap_unit}"
    return f"{used / use_size:.1f} {use_unit} / {capacity / cap_size:.1f} {cap_unit}"


def stage_seconds(plan: Plan) -> list[float]:
    """Each stage's time: measured where the plan was balanced by measurement, else estimated."""
    return [s.measured_s if s.measured_s is not None else s.estimated_s for s in plan.stages]


def bottleneck(plan: Plan) -> int:
    """Index of the slowest stage (the first one, on ties): it sets the pipeline's throughput."""
    seconds = stage_seconds(plan)
    return max(range(len(seconds)), key=lambda k: (seconds[k], -k))


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _boundary_mib(plan: Plan, k: int) -> float:
    return sum(t.nbytes for t in plan.boundaries[k]) / MIB


def plan_table(plan: Plan, *, title: str | None = None) -> Table:
    """One row per stage: nodes, first/last op, placement, memory, time share, hand-off size."""
    seconds = stage_seconds(plan)
    total = sum(seconds) or 1.0
    slow = bottleneck(plan)
    measured = any(s.measured_s is not None for s in plan.stages)
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("stage", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("first op")
    table.add_column("last op")
    table.add_column("dev:core", justify="center")
    table.add_column("resident / capacity", justify="right")
    table.add_column("measured ms" if measured else "est. ms", justify="right")
    table.add_column("time share", justify="right")
    table.add_column("out MiB", justify="right")
    for k, st in enumerate(plan.stages):
        share = f"{100.0 * seconds[k] / total:.1f}%"
        is_slow = k == slow and plan.num_cores > 1
        table.add_row(
            str(k),
            str(st.num_nodes),
            st.first_op,
            st.last_op,
            f"{st.device}:{st.core}",
            used_of(st.resident_bytes, plan.target.core_memory),
            _ms(seconds[k]),
            share + (" ◀ bottleneck" if is_slow else ""),
            f"{_boundary_mib(plan, k + 1):.2f}",
            style="bold yellow" if is_slow else None,
        )
    return table


def plan_summary(plan: Plan, path: Path | str | None = None) -> Text:
    """Cores, bottleneck, estimated throughput pipelined (1/max) vs one core (1/sum), artifact."""
    seconds = stage_seconds(plan)
    per_core: dict[tuple[int, int], float] = {}
    for st, sec in zip(plan.stages, seconds):  # stages that share a core add up
        per_core[(st.device, st.core)] = per_core.get((st.device, st.core), 0.0) + sec
    slowest, total = max(per_core.values()), sum(seconds)
    shared = len(per_core) < len(seconds)
    kind = "measured" if any(s.measured_s is not None for s in plan.stages) else "estimated"
    tgt = plan.target
    lines = [
        (f"{plan.num_cores} stages on target {tgt.name} ({tgt.devices} x {tgt.cores_per_device} "
        f"cores of {format_bytes(tgt.core_memory)}); {plan.num_nodes} nodes, "
        f"{format_bytes(plan.resident_bytes)} resident in all; balance: {plan.balance}"),
        f"bottleneck: stage {bottleneck(plan)} ({_ms(slowest)} ms {kind})",
    ]
    if slowest > 0 and total > 0:
        lines.append(
            f"{kind} throughput: {1.0 / slowest:,.1f} req/s pipelined "
            f"({'1/busiest core: stages share cores' if shared else '1/max stage'}) vs "
            f"{1.0 / total:,.1f} req/s on one core (1/sum): {total / slowest:.2f}x"
        )
    dep = plan.deployment
    if dep is not None:
        figures = "" if dep.throughput is None else (
            f"; measured {dep.throughput:,.4g} req/s, p50 {(dep.latency_p50_s or 0) * 1e3:.4g} ms")
        lines.append(f"deployment: {dep.describe(plan.num_cores)} of {dep.cores}"
                     f"{' (tuned for ' + dep.objective + ')' if dep.objective else ''}{figures}")
    loaded = [s.loaded_s for s in plan.stages]
    if all(t is not None for t in loaded):
        lines.append("under load: " + " / ".join(f"{_ms(t or 0.0)}" for t in loaded) + " ms busy per request")
    if path is not None:
        lines.append(f"artifact: {path}")
    return Text("\n".join(lines))


def stats_table(stats: PipelineStats) -> Table:
    """One row per stage from `Pipeline.stats()`: pid, core, requests, busy %, service, queue."""
    table = Table(title=f"stages ({stats.backend} backend)", title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD)
    replicas = stats.replicas > 1
    if replicas:
        table.add_column("replica", justify="right")
    for name in ("stage", "pid", "core", "requests", "busy %", "mean service ms", "queue depth"):
        table.add_column(name, justify="left" if name == "core" else "right")
    restarts = any(s.restarts for s in stats.stages)
    if restarts:
        table.add_column("restarts", justify="right")
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
    return (
        f"latency p50 {stats.latency_p50_s * 1e3:.2f} ms, p90 {stats.latency_p90_s * 1e3:.2f} ms, "
        f"p99 {stats.latency_p99_s * 1e3:.2f} ms"
    )


def comparison_table(rows: Sequence[tuple[str, str, str, str]]) -> Table:
    """``(what, requests/s, p50 ms, note)`` rows, for the demo's pipeline vs one session."""
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    for name in ("", "req/s", "latency ms (1 in flight)", "throughput"):
        table.add_column(name, justify="right" if name else "left")
    for row in rows:
        table.add_row(*row)
    return table


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
