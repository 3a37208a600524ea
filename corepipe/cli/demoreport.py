"""What the demo prints about speed: each figure named, the measured speed-up beside the one the
compile-time stage times allow, with the reasons they differ, latency alone (split into the
stages' run time and the hand-offs) and under load, and a noise verdict."""

from __future__ import annotations

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..artifact.plan import Plan
from ..bench.steady import NOISY, Rounds
from ..runtime import PipelineStats, Timeline
from . import report

__all__ = ["explain", "service_per_core"]


def service_per_core(before: PipelineStats, after: PipelineStats) -> dict[str, float]:
    """Seconds per request each core spent running its stages between two `Pipeline.stats`
    (stages that share a core add up; the inline backend's stages all run on the caller)."""
    out: dict[str, float] = {}
    for a, b in zip(before.stages, after.stages):
        done = b.requests - a.requests
        if done > 0:
            out[b.core] = out.get(b.core, 0.0) + (b.busy_s - a.busy_s) / done
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds >= 0.01 else f"{seconds * 1e3:.3f}"


def _speed_table(plan: Plan, backend: str, pipe: Rounds, session: Rounds,
                 pipe_solo_s: float, session_solo_s: float) -> Table:
    table = Table(title="speed in steady state (median of the rounds)", title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("", "req/s", "rounds", "spread", "ms, 1 in flight"):
        table.add_column(name, justify="left" if not name else "right", no_wrap=True)
    for name, rounds, solo in (
        (f"pipeline, {report.plural(plan.num_cores, 'stage')} ({backend})", pipe, pipe_solo_s),
        ("onnxruntime, 1 session, 1 thread", session, session_solo_s),
    ):
        table.add_row(name, f"{rounds.median:,.2f}", f"{min(rounds.rates):,.1f}-{max(rounds.rates):,.1f}",
                      f"{rounds.spread:.0%}", _ms(solo), style="bold red" if rounds.noisy else None)
    return table


def explain(
    console: Console, *, plan: Plan, backend: str, pipe: Rounds, session: Rounds,
    before: PipelineStats, after: PipelineStats, loaded: Timeline, in_flight: int,
    pipe_solo_s: float, session_solo_s: float, load: float | None, cores: int,
    solo_split: tuple[float, float] | None = None,
) -> None:
    """Print the speed table and what each figure means (see the module docstring)."""
    console.print(_speed_table(plan, backend, pipe, session, pipe_solo_s, session_solo_s))
    measured = pipe.median / session.median
    per_round = [p / s for p, s in zip(pipe.rates, session.rates)]
    predicted, plan_slowest, _ = report.predicted_speedup(plan)
    plan_sum = sum(report.stage_seconds(plan))
    service = service_per_core(before, after)
    busiest = max(service.values()) if service else 0.0
    session_s = 1.0 / session.median
    rows: list[tuple[str, str]] = [
        ("speed-up", f"{measured:.2f}x measured (rounds {min(per_round):.2f}x-{max(per_round):.2f}x) over one "
                     f"onnxruntime session; the stage times {plan.stage_seconds_kind()} at compile time allow "
                     f"{predicted:.2f}x"),
        ("measured", "the pipeline's rate while full (its fill not counted) over one 1-thread "
                     f"session's, each the median of {report.plural(len(pipe.rates), 'round')} run in turns"),
        ("allowed", f"the stage times {plan.stage_seconds_kind()} when compiling, summed, over the busiest "
                    "core's: an upper bound, not a measurement (stages side by side run slower than alone, "
                    "and hand-offs cost)"),
    ]
    if backend == "inline":
        rows.append(("why", "the inline backend runs the stages one after another in this process: "
                            "it cannot be faster than one session (use --backend local)"))
    elif busiest > 0:
        allowed = session_s / busiest
        rows += [
            ("why", f"one session took {_ms(session_s)} ms per request now; the stages summed to "
                    f"{_ms(plan_sum)} ms when compiled"),
            ("", f"the busiest core spent {_ms(busiest)} ms per request on its stages now "
                 f"({_ms(plan_slowest)} ms when compiled, alone on one core): {_ms(session_s)} / "
                 f"{_ms(busiest)} = {allowed:.2f}x is what this run's stage times allow"
                 + ("; stages run slower side by side than alone (shared caches and memory "
                    "bandwidth, other work on the machine)" if busiest > 1.03 * plan_slowest else "")),
            ("", f"the pipeline reached {pipe.median:,.2f} req/s of the {1 / busiest:,.2f} its busiest "
                 f"core allows ({pipe.median * busiest:.0%}); the rest is the hand-offs and the "
                 "client's threads sharing the cores with the stages"),
        ]
        if plan_slowest < 1e-3:
            rows.append(("", "stages this short are dominated by the fixed cost of each hand-off "
                             "(about 0.1 ms): pipelining pays off when a stage runs for milliseconds"))
    rows.append(("latency", _solo_text(plan, pipe_solo_s, session_solo_s, solo_split)))
    waits = [r.completed - r.submitted for r in loaded.requests]
    if waits and backend != "inline":
        p50, rate = float(np.median(waits)), pipe.rates[-1]
        held = rate * p50  # Little's law: requests in flight = rate x time each spends inside
        rows.append(("", f"under load (up to {in_flight} requests in flight): p50 {_ms(p50)} ms at "
                         f"{rate:,.1f} req/s, so about {held:.1f} requests were in flight on average "
                         "(Little's law: in flight = rate x latency)"
                         + ("; each waits behind the others" if held >= 0.75 * in_flight else
                            "; fewer than allowed: the client, sharing the cores, did not keep the "
                            "pipeline full")))
    rows.append(_noise(pipe, session, load, cores))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, text in rows[:-1]:
        grid.add_row(label, text)
    label, text = rows[-1]
    noisy = pipe.noisy or session.noisy
    grid.add_row(label, Text(text, style="bold yellow" if noisy else "green"))
    console.print(grid)


def _noise(pipe: Rounds, session: Rounds, load: float | None, cores: int) -> tuple[str, str]:
    busy = f"; load average {load:.1f} on {report.plural(cores, 'core')} before the run" if load is not None else ""
    spread = f"the rounds varied by {pipe.spread:.0%} (pipeline) and {session.spread:.0%} (session){busy}"
    if pipe.noisy or session.noisy:
        return ("noise", f"{spread}. Above {NOISY:.0%}: this machine is too noisy to trust the speed "
                         "figures above (other work is sharing the cores). Run again when it is quiet, "
                         "or with more --requests or --rounds.")
    return ("noise", f"{spread}; within {NOISY:.0%}, so the speed figures hold on this machine now")


def _solo_text(plan: Plan, pipe_s: float, session_s: float, split: tuple[float, float] | None) -> str:
    """One request alone (medians), through the pipeline and through one session, and why they
    differ: over the same requests, the mean time in the stages (which need not equal the
    session's: another engine or precision) and in the hand-offs (the rest)."""
    text = f"one request alone: {_ms(pipe_s)} ms through the pipeline, {_ms(session_s)} ms in one session (medians)"
    if split is None or split[0] <= 0:
        return text
    stages_s, mean_s = split
    text += (f"; on average {_ms(mean_s)} ms through the pipeline = {_ms(stages_s)} ms running its "
             f"{report.plural(plan.num_cores, 'stage')} + {_ms(max(mean_s - stages_s, 0.0))} ms for the "
             f"{plan.num_cores + 1} hand-offs (client in, between stages, out) and the client")
    engines = sorted({f"{s.engine} {s.precision}" for s in plan.stages})
    if engines != ["onnxruntime fp32"]:
        text += (f"; the stages run {', '.join(engines)} and the session onnxruntime fp32, so the stages "
                 "alone need not take what the session takes")
    return text
