"""Measured points (candidate plans and peers), the Pareto front, and the choice by objective."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DeploymentError
from .space import Candidate

__all__ = ["Point", "pareto_front", "choose", "dominated_by"]


@dataclass(frozen=True)
class Point:
    """One configuration measured in the tune run (a candidate plan or a peer); its figures are
    named as a bench row's (`corepipe.bench.BenchRow`).

    Attributes:
        name: what it is (``"2r x 4s x 1t"``, ``"ort 2 threads"``...).
        kind: ``"candidate"`` (a corepipe plan) or ``"peer"`` (a configuration a user would
            otherwise pick).
        req_per_s: throughput, requests per second. p50_s / p99_s: latency per request, under
            the same load the throughput was measured at (``p99_s`` may be ``None`` for peers).
        precision: what it computed at (``"fp32"``, ``"bf16"``; onnxruntime peers: fp32).
        candidate: the (R, S, T) of a corepipe plan.
        predicted: the cost model's (throughput, latency) for a candidate.
        chunk_throughputs: the measurement cut into consecutive chunks (for its spread).
        note: e.g. the balance used, or why a figure is missing.
        runs: how many times it was measured; the figures are those of its fastest run.
        foreign_cpu: share of the machine's CPU time other processes used during that run
            (``None``: not watched); a high one marks a figure taken on a busy machine.
        ttft_s: a decoder's p50 time to first token (``None``: not a decoder). For a decoder
            (`TuneResult.unit` ``"token"``) ``req_per_s`` counts tokens/s and ``p50_s`` /
            ``p99_s`` are the times between tokens.
    """

    name: str
    kind: str
    req_per_s: float
    p50_s: float
    p99_s: float | None = None
    candidate: Candidate | None = None
    predicted: tuple[float, float] | None = None
    chunk_throughputs: list[float] = field(default_factory=list)
    note: str = ""
    runs: int = 1
    foreign_cpu: float | None = None
    precision: str = "fp32"
    ttft_s: float | None = None

    @property
    def replicas(self) -> int | None:
        """R of a candidate plan (``None`` for a peer); likewise `stages` (S) and `threads` (T)."""
        return None if self.candidate is None else self.candidate.replicas

    @property
    def stages(self) -> int | None:
        return None if self.candidate is None else self.candidate.stages

    @property
    def threads(self) -> int | None:
        return None if self.candidate is None else self.candidate.threads

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidate"] = None if self.candidate is None else asdict(self.candidate)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        d = dict(d)
        cand = d.get("candidate")
        d["candidate"] = None if cand is None else Candidate(**cand)
        if d.get("predicted") is not None:
            d["predicted"] = tuple(d["predicted"])
        return cls(**d)


def _beats(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` on both axes and better on one."""
    return (a.req_per_s >= b.req_per_s and a.p50_s <= b.p50_s
            and (a.req_per_s > b.req_per_s or a.p50_s < b.p50_s))


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both throughput and p50 latency, fastest p50 first."""
    front = [p for p in points if not any(_beats(o, p) for o in points if o is not p)]
    return sorted(front, key=lambda p: (p.p50_s, -p.req_per_s))


def dominated_by(point: Point, others: Sequence[Point]) -> list[Point]:
    """The points of ``others`` that are both faster and lower-latency than ``point``."""
    return [o for o in others if o is not point and _beats(o, point)]


def _within(p: Point, budget_s: float | None) -> bool:
    if budget_s is None:
        return True
    return (p.p99_s if p.p99_s is not None else p.p50_s) <= budget_s


def choose(points: Sequence[Point], objective: str, latency_budget_s: float | None = None, *,
           tie: float = 0.03) -> Point:
    """The corepipe plan to ship: most throughput, or least p50 latency, among the measured
    candidates whose p99 latency is within ``latency_budget_s`` (when given).

    Figures within ``tie`` (a fraction) of the best on the objective count as equal, since a
    shared machine's measurements move by a few percent; among those, the better figure on the
    other axis wins (the throughput objective does not pay twice the latency for 1 % more).

    Raises:
        DeploymentError: no candidate meets the budget (the message gives the lowest p99 seen),
            or there is no candidate at all.
    """
    plans = [p for p in points if p.kind == "candidate"]
    if not plans:
        raise DeploymentError("no candidate plan was measured; nothing to choose from")
    ok = [p for p in plans if _within(p, latency_budget_s)]
    if not ok:
        best = min(plans, key=lambda p: p.p99_s if p.p99_s is not None else p.p50_s)
        p99 = best.p99_s if best.p99_s is not None else best.p50_s
        assert latency_budget_s is not None
        possible = (f"a latency budget of at least {p99 * 1e3:.4g} ms, or more cores (more threads "
                    "per stage shorten each request)")
        raise DeploymentError(
            f"no measured plan meets the p99 latency budget of {latency_budget_s * 1e3:.4g} ms: the "
            f"lowest p99 measured is {p99 * 1e3:.4g} ms ({best.name}, {best.req_per_s:.4g} req/s); "
            f"possible: {possible}",
            possible=possible,
        )
    if objective == "latency":
        fastest = min(p.p50_s for p in ok)
        near = [p for p in ok if p.p50_s <= fastest * (1 + tie)]
        return max(near, key=lambda p: (p.req_per_s, -p.p50_s))
    if objective == "throughput":
        most = max(p.req_per_s for p in ok)
        near = [p for p in ok if p.req_per_s >= most * (1 - tie)]
        return min(near, key=lambda p: (p.p50_s, -p.req_per_s))
    raise DeploymentError(f"objective must be 'throughput' or 'latency', got {objective!r}")
