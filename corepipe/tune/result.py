"""What one `corepipe.tune` run measured and decided (`TuneResult`), and its Markdown."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact.deployment import OBJECTIVES
from ..bench.result import num
from ..errors import DeploymentError
from .capacity import CapacityAnswer
from .choose import Point, choose, dominated_by, pareto_front
from .space import Candidate

__all__ = ["TuneResult", "num", "UNFAIR_SHARE", "UNFAIR_GAP"]

#: Others' share of the CPUs during some plan from which the summary stops comparing with the
#: peers, when it is also `UNFAIR_GAP` above the most during any peer.
UNFAIR_SHARE = 0.2
UNFAIR_GAP = 0.1


@dataclass
class TuneResult:
    """Everything one tune run measured and decided (``tune.json`` is its `to_dict`).

    Attributes:
        chosen: the plan written to `path`: ``.replicas``, ``.stages``, ``.threads`` (R, S, T),
            ``.req_per_s``, ``.p50_s``, ``.p99_s``.
        points: every candidate measured and every peer, each once (its best run).
        pruned: candidates the cost model kept from measuring, with their predicted
            (req/s, latency s).
        capacity: the answer to the capacity question (``rate=`` and ``p99=``), if asked.
        failed: candidates that could not be compiled or run, with why.
        path: the artifact directory written, with ``tune.png`` and ``tune.json`` in it.
        seconds: how long the whole run took.
        unit: ``"req"``, or ``"token"`` for a decoder: then each point's ``req_per_s`` is
            tokens/s and its ``p50_s``/``p99_s`` the times between tokens, under ``workload``
            (what was run, in words).
    """

    model: str
    cores: int
    objective: str
    latency_budget_s: float | None
    points: list[Point]
    pruned: list[tuple[Candidate, tuple[float, float]]]
    chosen: Point
    path: Path
    host: str
    seconds: float
    capacity: CapacityAnswer | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    repeats: int = 1
    tie: float = 0.03
    precision: str = "fp32"
    unit: str = "req"
    workload: str = ""

    @property
    def peers(self) -> list[Point]:
        return [p for p in self.points if p.kind == "peer"]

    @property
    def candidates(self) -> list[Point]:
        return [p for p in self.points if p.kind == "candidate"]

    @property
    def pareto(self) -> list[Point]:
        """The points no other beats on both throughput and p50 latency, fastest p50 first."""
        return pareto_front(self.points)

    def best_peer(self, by: str = "throughput") -> Point | None:
        """The peer with the most req/s (``by="latency"``: the least p50), if any ran."""
        peers = self.peers
        if not peers:
            return None
        if by == "latency":
            return min(peers, key=lambda p: p.p50_s)
        return max(peers, key=lambda p: p.req_per_s)

    def choice_for(self, objective: str) -> Point | None:
        """The plan the other objective would have chosen from the same measurements (within
        the same latency budget), or ``None`` when none meets it."""
        try:
            return choose(self.points, objective, self.latency_budget_s, tie=self.tie)
        except DeploymentError:
            return None

    def dominating_peers(self) -> list[Point]:
        """Peers both faster and lower-latency than the chosen plan (the target: none)."""
        return dominated_by(self.chosen, self.peers)

    def to_dict(self) -> dict[str, Any]:
        best = self.best_peer()
        return {
            "model": self.model, "cores": self.cores, "objective": self.objective, "precision": self.precision,
            "latency_budget_s": self.latency_budget_s, "host": self.host, "seconds": self.seconds,
            "repeats": self.repeats, "tie": self.tie, "unit": self.unit, "workload": self.workload,
            "points": [p.to_dict() for p in self.points],
            "pruned": [{"candidate": dataclasses.asdict(c), "predicted": list(pred)} for c, pred in self.pruned],
            "failed": [{"name": n, "error": e} for n, e in self.failed],
            "chosen": self.chosen.name,
            "choice_by_objective": {o: getattr(self.choice_for(o), "name", None) for o in OBJECTIVES},
            "pareto_front": [p.name for p in self.pareto],
            "dominating_peers": [p.name for p in self.dominating_peers()],
            "vs_best_peer_throughput": None if best is None else self.chosen.req_per_s / best.req_per_s,
            "capacity": None if self.capacity is None else dataclasses.asdict(self.capacity),
        }

    def unfair(self) -> str | None:
        """Why the plans and the peers were not measured under the same conditions, or None:
        other processes took clearly more of the CPUs while the plans ran (the most during any
        plan at least `UNFAIR_SHARE`, and `UNFAIR_GAP` above the most during any peer)."""
        mine = [p.foreign_cpu for p in self.candidates if p.foreign_cpu is not None]
        theirs = [p.foreign_cpu for p in self.peers if p.foreign_cpu is not None]
        if not mine or not theirs or max(mine) < UNFAIR_SHARE or max(mine) - max(theirs) < UNFAIR_GAP:
            return None
        return (f"other processes took {_span(mine)} of the CPUs while corepipe's plans ran, against "
                f"{_span(theirs)} during the peers (others' CPU)")

    def summary(self) -> list[str]:
        """The decision in sentences: against the peers (or why that comparison is not fair),
        the other objective's choice, what was pruned or failed, and the capacity answer."""
        ch = self.chosen
        best, fast = self.best_peer(), self.best_peer("latency")
        lines = []
        if best is not None and fast is not None:
            lines.append(f"Chosen {ch.name}: throughput {ch.req_per_s / best.req_per_s:.2f}x the best peer's "
                         f"({best.name}{_across(ch, best)}); p50 {ch.p50_s / fast.p50_s:.2f}x the lowest-latency "
                         f"peer's ({fast.name}{_across(ch, fast)}).")
            beaten = self.dominating_peers()
            unfair = self.unfair()
            if unfair is not None:
                lines.append(f"Not a fair comparison: {unfair}, so these ratios measure the machine's load as much "
                             "as the setups; run again on a quiet machine, or with --repeats 3 (each point its best "
                             "run), before reading them.")
            else:
                lines.append("No peer is both faster and lower-latency." if not beaten else
                             "Peers both faster and lower-latency: " + ", ".join(p.name for p in beaten) + ".")
        if ch.candidate is not None and ch.candidate.max_batch > 1:
            lines.append(f"Chosen with dynamic batching: load or serve it with max_batch={ch.candidate.max_batch} "
                         "(corepipe.load(..., max_batch=), corepipe serve --max-batch).")
        other = "latency" if self.objective == "throughput" else "throughput"
        alt = self.choice_for(other)
        if alt is not None and alt is not ch:
            lines.append(f"--objective {other} would choose {alt.name}: {alt.req_per_s:,.4g} {self.unit}/s, "
                         f"p50 {alt.p50_s * 1e3:.4g} ms (same measurements).")
        if self.pruned:
            lines.append("Pruned by the cost model (predicted): " + "; ".join(
                f"{c.label} {num(pred[0])} {self.unit}/s {num(pred[1] * 1e3)} ms" for c, pred in self.pruned) + ".")
        for name, error in self.failed:
            lines.append(f"Not measured: {name}: {error}")
        if self.capacity is not None:
            lines.append("Capacity: " + self.capacity.text() + ".")
            lines.append("Capacity model: " + self.capacity.model + ".")
        return lines

    def to_markdown(self, command: str | None = None) -> str:
        """The run as a Markdown section (for benchmarks/RESULTS.md); ``command``: what produced
        it, quoted under the heading."""
        best = max((p.req_per_s for p in self.peers), default=0.0)
        front = {p.name for p in self.pareto}
        how = (f"{self.host}; {self.seconds:.0f} s" + (f"; {self.workload}" if self.workload else "")
               + (f"; each point the best of {self.repeats} measurements" if self.repeats > 1 else ""))
        lines = [
            f"### tune {self.model}, {self.cores} cores, objective {self.objective}", "",
            (f"`{command}` ({how})" if command else f"({how})"), "",
            f"| setup | R x S x T | precision | {self.unit}/s | x best peer | p50 ms | p99 ms | Pareto "
            f"| predicted {self.unit}/s, ms | others' CPU |",
            "|---|---|---|---:|---:|---:|---:|---|---|---:|",
        ]
        for p in ordered(self.points):
            c = p.candidate
            name = p.name if c is None else "corepipe " + (f"**{p.name}** (chosen)" if p is self.chosen else p.name)
            lines.append(
                f"| {name} | {'-' if c is None else f'{c.replicas} x {c.stages} x {c.threads}'} | {p.precision} | "
                f"{num(p.req_per_s)} | {f'{p.req_per_s / best:.2f}' if best else '-'} | {num(p.p50_s * 1e3)} | "
                f"{'-' if p.p99_s is None else num(p.p99_s * 1e3)} | {'yes' if p.name in front else ''} | "
                f"{'' if p.predicted is None else f'{num(p.predicted[0])}, {num(p.predicted[1] * 1e3)}'} | "
                f"{'' if p.foreign_cpu is None else f'{p.foreign_cpu:.0%}'} |")
        return "\n".join([*lines, "", *self.summary(), ""]) + "\n"


def ordered(points: list[Point]) -> list[Point]:
    """Candidates first, then peers, each by throughput, most first."""
    return sorted(points, key=lambda p: (p.kind != "candidate", -p.req_per_s))


def _across(a: Point, b: Point) -> str:
    """``"; bf16 over fp32"`` where the two ran at different precisions, else nothing."""
    return "" if a.precision == b.precision else f"; {a.precision} over {b.precision}"


def _span(shares: list[float]) -> str:
    """``"24-57 %"`` (or ``"3 %"``): the range of some CPU shares."""
    lo, hi = round(min(shares) * 100), round(max(shares) * 100)
    return f"{lo} %" if lo == hi else f"{lo}-{hi} %"
