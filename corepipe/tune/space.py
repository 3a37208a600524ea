"""The search space of `corepipe tune`: (stages S, threads per stage T, replicas R) with
R x S x T = K, and the cost model that predicts each one before anything is measured.

The model (numbers in, numbers out; nothing here runs a model):

- one request on one core takes ``one_core_s`` (measured: the onnxruntime 1-thread peer);
- T threads speed a stage up by ``T ** a``, where ``a`` comes from the measured K-thread peer
  (``one_core_s / k_thread_s = K ** a``); 1 means perfect scaling, 0 none;
- the slowest of S stages holds ``slowest_share[S]`` of the model's time (the solver's cut on
  the analytic estimate), plus one hand-off of ``handoff_s``;
- a replica's throughput is 1 / its slowest stage; R replicas add up;
- latency with one request per stage worker in flight (how candidates are measured) follows
  Little's law: requests in flight / throughput = S x (slowest stage + hand-off).
- R replicas hold R copies of the weights: a candidate whose copies exceed ``memory_bytes``
  is not a candidate.

It is deliberately simple: it only orders candidates so that the measurement budget goes to
the promising ones. Every figure `tune` reports is measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "CostModel", "SearchSpace", "candidates", "select", "slowest_shares"]


@dataclass(frozen=True, order=True)
class Candidate:
    """R replicas x S stages x T threads per stage; with ``max_batch`` B > 1, loaded with dynamic
    batching up to B rows (`corepipe.load`'s ``max_batch``)."""

    replicas: int
    stages: int
    threads: int
    max_batch: int = 1

    @property
    def cores(self) -> int:
        return self.replicas * self.stages * self.threads

    @property
    def label(self) -> str:
        """``2r x 4s x 2t``: replicas, stages, threads per stage (``... x b8``: batching up to 8)."""
        return f"{self.replicas}r x {self.stages}s x {self.threads}t" + (
            f" x b{self.max_batch}" if self.max_batch > 1 else "")

    @property
    def window(self) -> int:
        """Requests in flight when measured: one per stage worker."""
        return self.replicas * self.stages


def candidates(cores: int, *, min_stages: int = 1, max_stages: int | None = None) -> list[Candidate]:
    """Every (R, S, T) with R x S x T = ``cores`` and ``min_stages <= S <= max_stages``."""
    out = []
    for s in range(max(1, min_stages), (max_stages or cores) + 1):
        if cores % s:
            continue
        for t in range(1, cores // s + 1):
            if (cores // s) % t == 0:
                out.append(Candidate(replicas=cores // (s * t), stages=s, threads=t))
    return sorted(out, key=lambda c: (c.stages, c.threads))


@dataclass(frozen=True)
class SearchSpace:
    """Every plan `corepipe.tune` may measure on ``cores`` cores: R x S x T = ``cores``, with S
    between the fewest stages the model's memory allows and the most cuts it has.

    The one place the candidates come from: a new dimension of the search is a field here and
    a field of `Candidate`. ``batches``: the dynamic batching sizes each plan is measured at
    (1: none); they share the plan's artifact, so they cost measurements, not compiles.
    """

    cores: int
    min_stages: int = 1
    max_stages: int | None = None
    batches: tuple[int, ...] = (1,)

    def stage_counts(self) -> list[int]:
        """The S worth analysing: divisors of ``cores`` within the bounds."""
        return sorted({c.stages for c in self.candidates()})

    def candidates(self) -> list[Candidate]:
        """The plans (R, S, T), at batch 1: what is compiled; `batched` gives each one's variants."""
        return candidates(self.cores, min_stages=self.min_stages, max_stages=self.max_stages)

    def batched(self, c: Candidate) -> list[Candidate]:
        """``c`` at each of ``batches``, in order."""
        return [Candidate(c.replicas, c.stages, c.threads, max_batch=b) for b in self.batches]

    def bounded(self, min_stages: int, max_stages: int) -> SearchSpace:
        """This space within a model's bounds (from `corepipe.compiler.cut.estimate`)."""
        low = max(self.min_stages, min_stages)
        high = max_stages if self.max_stages is None else min(self.max_stages, max_stages)
        return SearchSpace(self.cores, low, high, self.batches)


@dataclass(frozen=True)
class CostModel:
    """Predicts (throughput req/s, latency s) of a candidate; see the module docstring."""

    one_core_s: float
    cores: int
    k_thread_s: float | None = None
    slowest_share: dict[int, float] | None = None
    handoff_s: float = 3e-4
    weight_bytes: int = 0
    memory_bytes: int | None = None

    @property
    def thread_exponent(self) -> float:
        """``a`` in speed-up(T) = T ** a, from the K-thread peer; 0.8 when not measured."""
        if self.k_thread_s is None or self.cores < 2 or self.k_thread_s <= 0:
            return 0.8
        return min(1.0, max(0.0, math.log(self.one_core_s / self.k_thread_s) / math.log(self.cores)))

    def fits(self, c: Candidate) -> bool:
        """Whether R copies of the weights fit in memory."""
        return self.memory_bytes is None or c.replicas * self.weight_bytes <= self.memory_bytes

    def predict(self, c: Candidate) -> tuple[float, float]:
        share = (self.slowest_share or {}).get(c.stages, 1.0 / c.stages)
        stage = self.one_core_s * share / (c.threads ** self.thread_exponent)
        step = stage + (self.handoff_s if c.stages > 1 else 0.0)
        return c.replicas / step, c.stages * step


def _dominates(a: tuple[float, float], b: tuple[float, float], slack: float) -> bool:
    """``a`` beats ``b`` clearly: more throughput and less latency, both by ``slack``."""
    return a[0] >= b[0] * (1 + slack) and a[1] * (1 + slack) <= b[1]


def select(
    pool: Iterable[Candidate], model: CostModel, *, objective: str, keep: int, slack: float = 0.15
) -> tuple[list[Candidate], list[Candidate]]:
    """Split ``pool`` into (to measure, pruned).

    A candidate is pruned when its copies of the weights do not fit in memory, or when another
    is predicted to beat it clearly on both throughput and latency (by ``slack``). Of the
    rest, the ``keep`` best by the objective are measured; the best predicted for the other
    objective is always among them, so the table and the picture show both ends.
    """
    pool = list(pool)
    fits = [c for c in pool if model.fits(c)]
    pred = {c: model.predict(c) for c in fits}
    front = [c for c in fits if not any(_dominates(pred[o], pred[c], slack) for o in fits if o != c)]
    by_throughput = sorted(front, key=lambda c: (-pred[c][0], pred[c][1]))
    by_latency = sorted(front, key=lambda c: (pred[c][1], -pred[c][0]))
    ranked = by_throughput if objective == "throughput" else by_latency
    other = by_latency if objective == "throughput" else by_throughput
    chosen: list[Candidate] = []
    for c in [*ranked[: max(1, keep - 1)], *other[:1], *ranked]:
        if c not in chosen and len(chosen) < max(1, keep):
            chosen.append(c)
    return chosen, [c for c in pool if c not in chosen]


def slowest_shares(stage_seconds: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """``{S: slowest stage / sum of stages}`` from the solver's cut at each S."""
    return {s: max(secs) / sum(secs) for s, secs in stage_seconds.items() if sum(secs) > 0}
