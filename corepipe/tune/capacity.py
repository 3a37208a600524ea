"""The capacity answer: how many cores and replicas hold a request rate within a p99 budget,
from the plans `tune` measured, and how sure that answer is.

The model, stated so it can be checked:

1. **Service.** A replica of a measured plan (S stages x T threads, S x T cores) serves
   ``mu = measured throughput / R`` requests per second: measured with every stage busy.
2. **Replicas scale.** n replicas on n x S x T cores serve n x mu: each replica keeps its
   measured speed. This holds within the cores measured; beyond them it assumes no new shared
   bottleneck (memory bandwidth, sockets, the network), and the answer says how far it
   extrapolates.
3. **Queueing.** Requests arrive at random (Poisson) and go to the least busy replica. The
   wait for a replica is that of an M/M/n queue (Erlang C): P(wait > t) = C(n, lambda/mu) x
   exp(-(n mu - lambda) t). Exponential service is more variable than a pipeline's nearly
   constant one, so this errs on the safe side.
4. **Latency.** p99 = the plan's measured p99 (with every stage busy) + the 99th percentile
   of that wait.
5. **How sure.** The measurement was cut into chunks; the slowest and fastest chunk rates give
   a pessimistic and an optimistic mu, and so a range of replicas. Confidence is *high* when
   that range is one number and nothing is extrapolated, *low* when it is wide or the answer
   extrapolates more than 8x, *medium* otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import DeploymentError
from .choose import Point

__all__ = ["CapacityAnswer", "answer", "erlang_c", "p99_latency", "parse_duration", "MODEL"]

MODEL = ("per-replica service rate = measured throughput / replicas; n replicas serve n x that; "
         "Poisson arrivals to the least busy replica, waiting as in an M/M/n queue (Erlang C, "
         "on the safe side of a pipeline's near-constant service); p99 = measured p99 + the "
         "wait's 99th percentile; range from the slowest and fastest measured chunk")


def parse_duration(text: str) -> float:
    """Seconds from ``"100ms"``, ``"0.1s"``, ``"250us"`` or a bare number of milliseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise DeploymentError(f"latency {text!r} is not a positive duration: write e.g. 100ms, 0.1s or 100")
    value, unit = float(m.group(1)), m.group(2) or "ms"
    return value * {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}[unit]


def erlang_c(n: int, load: float) -> float:
    """Probability that an arrival waits in an M/M/n queue with offered load ``load`` = lambda/mu
    (< n). Computed through the Erlang B recursion, stable for thousands of servers."""
    if load <= 0:
        return 0.0
    if load >= n:
        return 1.0
    b = 1.0
    for k in range(1, n + 1):
        b = load * b / (k + load * b)
    rho = load / n
    return b / (1 - rho * (1 - b))


def p99_latency(n: int, rate: float, mu: float, base_p99_s: float, q: float = 0.99) -> float:
    """Predicted p99 latency with ``n`` replicas of service rate ``mu`` at ``rate`` req/s
    (infinite when the replicas cannot keep up)."""
    if rate >= n * mu:
        return math.inf
    c = erlang_c(n, rate / mu)
    wait = 0.0 if c <= 1 - q else math.log(c / (1 - q)) / (n * mu - rate)
    return base_p99_s + wait


def _replicas_needed(rate: float, mu: float, base_p99_s: float, budget_s: float, most: int) -> int | None:
    """The fewest replicas (at most ``most``) that hold ``rate`` within ``budget_s``."""
    if mu <= 0 or base_p99_s >= budget_s:
        return None
    n = max(1, math.floor(rate / mu) + 1)
    while n <= most:
        if p99_latency(n, rate, mu, base_p99_s) <= budget_s:
            return n
        n += max(1, n // 64)  # exact for small n; steps of ~1.5 % where thousands are needed
    return None


def _max_rate(n: int, mu: float, base_p99_s: float, budget_s: float) -> float:
    """The highest rate ``n`` replicas hold within ``budget_s`` (bisection)."""
    if base_p99_s >= budget_s or n < 1:
        return 0.0
    lo, hi = 0.0, n * mu
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p99_latency(n, mid, mu, base_p99_s) <= budget_s else (lo, mid)
    return lo


@dataclass(frozen=True)
class CapacityAnswer:
    """Replicas and cores of the measured plan that holds ``rate`` within ``p99_budget_s``."""

    rate: float
    p99_budget_s: float
    plan: str
    stages: int
    threads: int
    replicas: int
    cores: int
    replicas_range: tuple[int, int | None]  # (optimistic, pessimistic); None: over max_cores
    predicted_p99_s: float
    utilisation: float
    confidence: str
    reasons: list[str] = field(default_factory=list)
    model: str = MODEL

    def text(self) -> str:
        lo, hi = self.replicas_range
        spread = ("" if lo == hi else
                  f" ({lo} to {hi if hi is not None else 'more than allowed'} across the measured spread)")
        return (
            f"{self.rate:,.4g} req/s within p99 {self.p99_budget_s * 1e3:.4g} ms: {self.replicas} replicas of "
            f"{self.plan}{spread} = {self.cores} cores, predicted p99 {self.predicted_p99_s * 1e3:.4g} ms at "
            f"{self.utilisation:.0%} utilisation; confidence {self.confidence}"
            + (": " + "; ".join(self.reasons) if self.reasons else "")
        )


def answer(points: Sequence[Point], rate: float, p99_budget_s: float, *, measured_cores: int,
           max_cores: int = 1024) -> CapacityAnswer:
    """How many cores and replicas of a measured plan hold ``rate`` within ``p99_budget_s``.

    Args:
        points: what `tune` measured; only candidate plans with a p99 count.
        measured_cores: K, the cores the plans were measured on (for the extrapolation).
        max_cores: the most cores the answer may use.

    Raises:
        DeploymentError: no plan's own p99 is under the budget (no core count can help), or
            the rate needs more than ``max_cores`` with every plan; the message says what is
            possible.
    """
    if rate <= 0:
        raise DeploymentError(f"--rate must be a positive number of requests per second, got {rate}")
    plans = [p for p in points if p.kind == "candidate" and p.candidate is not None and p.p99_s]
    if not plans:
        raise DeploymentError("no measured plan has a p99 latency to answer a capacity question from")
    fast = [p for p in plans if (p.p99_s or 0) < p99_budget_s]
    if not fast:
        best = min(plans, key=lambda p: p.p99_s or math.inf)
        possible = f"a p99 budget above {(best.p99_s or 0) * 1e3:.4g} ms"
        raise DeploymentError(
            f"no core count holds a p99 of {p99_budget_s * 1e3:.4g} ms: even unloaded, the lowest p99 "
            f"measured is {(best.p99_s or 0) * 1e3:.4g} ms ({best.name}), and more replicas "
            f"only shorten the wait, not a request; possible: {possible}, or tune with more threads "
            "per stage (more cores) to shorten each request", possible=possible)
    options = []
    for p in fast:
        c = p.candidate
        assert c is not None and p.p99_s is not None
        per = c.stages * c.threads
        mu = p.req_per_s / c.replicas
        n = _replicas_needed(rate, mu, p.p99_s, p99_budget_s, max_cores // per)
        if n is not None:
            options.append((n * per, p99_latency(n, rate, mu, p.p99_s), p, n, mu))
    if not options:
        held = [(_max_rate(max_cores // (p.candidate.stages * p.candidate.threads),  # type: ignore[union-attr]
                           p.req_per_s / p.candidate.replicas, p.p99_s or 0, p99_budget_s), p)  # type: ignore[union-attr]
                for p in fast]
        top, plan = max(held, key=lambda x: x[0])
        possible = (f"at most {top:,.4g} req/s within p99 {p99_budget_s * 1e3:.4g} ms on {max_cores} cores "
                    f"({plan.name} replicas); raise --max-cores or relax --p99")
        raise DeploymentError(
            f"no core count up to {max_cores} holds {rate:,.4g} req/s within p99 {p99_budget_s * 1e3:.4g} ms; "
            f"possible: {possible}", possible=possible)
    cores, p99, plan, n, mu = min(options, key=lambda o: (o[0], o[1]))
    c = plan.candidate
    assert c is not None and plan.p99_s is not None
    per = c.stages * c.threads
    chunks = [x / c.replicas for x in plan.chunk_throughputs] or [mu]
    optimistic = _replicas_needed(rate, max(chunks + [mu]), plan.p99_s, p99_budget_s, max_cores // per)
    pessimistic = _replicas_needed(rate, min(chunks + [mu]), plan.p99_s, p99_budget_s, max_cores // per)
    lo = min(n, optimistic or n)
    reasons = []
    if len(chunks) > 1:
        reasons.append(f"measured rate per replica {min(chunks):.4g}-{max(chunks):.4g} req/s over "
                       f"{len(chunks)} chunks (mean {mu:.4g})")
    extrapolation = cores / measured_cores
    if extrapolation > 1:
        reasons.append(f"extrapolates {extrapolation:.3g}x beyond the {measured_cores} cores measured, "
                       "assuming replicas keep their measured speed")
    utilisation = rate / (n * mu)
    if utilisation > 0.85:
        reasons.append(f"runs at {utilisation:.0%} utilisation, where p99 is sensitive to the service rate")
    if pessimistic == lo and extrapolation <= 1:
        level = "high"
    elif pessimistic is None or pessimistic - lo > max(1, lo // 4) or extrapolation > 8:
        level = "low"
    else:
        level = "medium"
    return CapacityAnswer(
        rate=rate, p99_budget_s=p99_budget_s, plan=plan.name, stages=c.stages, threads=c.threads,
        replicas=n, cores=cores, replicas_range=(lo, pessimistic), predicted_p99_s=p99,
        utilisation=utilisation, confidence=level, reasons=reasons,
    )
