"""The partition solver: numbers in, stage boundaries out. Imports no ONNX.

A model is a sequence of ``n`` nodes in topological order. A plan of ``k`` stages cuts that
sequence into ``k`` contiguous, non-empty runs. The solver sees only:

- ``compute[i]``: estimated (or measured) seconds of node ``i``;
- ``node_weights[i]``: ids of the weights node ``i`` reads; ``weight_bytes[w]`` their sizes.
  A weight read by several stages is held (and counted) by each of them;
- ``boundary_bytes[p]``: bytes of the tensors alive across a cut before node ``p``
  (``p == 0``: the model inputs; ``p == n``: the model outputs);
- ``links[b]``: ``(latency_s, bytes_per_s)`` of hand-off ``b`` (``b == 0`` into the first stage,
  ``b == k`` out of the last);
- ``cuttable[p]`` (optional): whether a cut before node ``p`` is allowed (a value that cannot
  cross a boundary, such as a sequence, is alive there otherwise).

A stage's time is its hand-off in + compute + hand-off out. `solve` minimises the slowest stage
subject to every stage's weights fitting ``capacity``; ties go to the lower total latency.
`min_stages` is the smallest count for which any feasible cut exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Problem", "Infeasible", "min_stages", "solve", "stage_costs", "stage_memory"]


class Infeasible(Exception):
    """No cut satisfies the memory capacity. ``node`` is set when one node alone exceeds it."""

    def __init__(
        self, message: str, *, node: int | None = None, needed: int = 0,
        span: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.needed = needed
        self.span = span  # nodes start..end-1 that no allowed cut separates, when that is why


@dataclass(frozen=True)
class Problem:
    compute: Sequence[float]
    node_weights: Sequence[Sequence[int]]
    weight_bytes: Sequence[int]
    boundary_bytes: Sequence[float]
    capacity: float
    cuttable: Sequence[bool] | None = None

    def __post_init__(self) -> None:
        n = len(self.compute)
        if n == 0:
            raise ValueError("a problem needs at least one node")
        if len(self.node_weights) != n:
            raise ValueError(f"node_weights has {len(self.node_weights)} entries for {n} nodes")
        if len(self.boundary_bytes) != n + 1:
            raise ValueError(f"boundary_bytes needs n + 1 = {n + 1} entries")
        if self.cuttable is not None and len(self.cuttable) != n + 1:
            raise ValueError(f"cuttable needs n + 1 = {n + 1} entries")
        w = len(self.weight_bytes)
        bad = [(i, x) for i, ids in enumerate(self.node_weights) for x in ids if not 0 <= x < w]
        if bad:
            raise ValueError(f"node {bad[0][0]} reads weight id {bad[0][1]}, not in 0..{w - 1}")

    @property
    def n(self) -> int:
        return len(self.compute)

    def allowed(self) -> np.ndarray:
        """Cut positions 0..n that may start a stage (0 and n always may)."""
        out = np.ones(self.n + 1, dtype=bool)
        if self.cuttable is not None:
            out[:] = np.asarray(self.cuttable, dtype=bool)
            out[0] = out[-1] = True
        return out


def stage_memory(problem: Problem, start: int, end: int) -> int:
    """Bytes of the distinct weights read by nodes ``start .. end - 1``."""
    ids = {w for i in range(start, end) for w in problem.node_weights[i]}
    return int(sum(problem.weight_bytes[w] for w in ids))


def stage_costs(
    problem: Problem, bounds: Sequence[int], links: Sequence[tuple[float, float]]
) -> list[float]:
    """Time of each stage of the cut ``bounds`` (``[0, b1, ..., n]``)."""
    costs = []
    for k in range(len(bounds) - 1):
        s, e = bounds[k], bounds[k + 1]
        lat_in, bw_in = links[k]
        lat_out, bw_out = links[k + 1]
        costs.append(
            lat_in
            + problem.boundary_bytes[s] / bw_in
            + float(sum(problem.compute[s:e]))
            + lat_out
            + problem.boundary_bytes[e] / bw_out
        )
    return costs


def _memory_rows(problem: Problem):  # type: ignore[no-untyped-def]
    """Yield, for each end node j, the array mem[i] = bytes of stage i..j for i <= j.

    Incremental: a weight counts for every start at or before its last use so far.
    """
    add = np.zeros(problem.n, dtype=np.float64)
    last: dict[int, int] = {}
    for j in range(problem.n):
        for w in set(problem.node_weights[j]):
            if w in last:
                add[last[w]] -= problem.weight_bytes[w]
            add[j] += problem.weight_bytes[w]
            last[w] = j
        yield np.cumsum(add[j::-1])[::-1]


def min_stages(problem: Problem) -> int:
    """The smallest stage count whose stages all fit ``capacity``.

    Greedy is optimal here: a stage's memory only grows as it extends, and a run inside a
    feasible run is feasible, so cutting as late as allowed never hurts.

    Raises:
        Infeasible: one node alone reads more weight bytes than the capacity (``.node``), or a
            run of nodes that no allowed cut separates does (``.span``).
    """
    for i, ws in enumerate(problem.node_weights):
        own = sum(problem.weight_bytes[w] for w in set(ws))
        if own > problem.capacity:
            raise Infeasible(f"node {i} alone holds {own} bytes", node=i, needed=int(own))
    allowed = problem.allowed()
    stages, start, mem = 1, 0, 0
    last_ok: int | None = None  # the latest allowed cut in (start, j]
    held: set[int] = set()
    for j in range(problem.n):
        if j > start and allowed[j]:
            last_ok = j
        new = set(problem.node_weights[j]) - held
        extra = sum(problem.weight_bytes[w] for w in new)
        if mem + extra <= problem.capacity:
            held |= new
            mem += extra
            continue
        if last_ok is None:
            raise Infeasible(
                f"nodes {start}..{j} cannot be cut apart and hold {mem + extra} bytes",
                needed=int(mem + extra), span=(start, j + 1),
            )
        stages, start = stages + 1, last_ok
        last_ok = None
        held = {w for i in range(start, j + 1) for w in problem.node_weights[i]}
        mem = sum(problem.weight_bytes[w] for w in held)
        if mem > problem.capacity:
            raise Infeasible(
                f"nodes {start}..{j} cannot be cut apart and hold {mem} bytes",
                needed=int(mem), span=(start, j + 1),
            )
    return stages


def _sweep(
    problem: Problem, k: int, prefix: np.ndarray, in_cost: np.ndarray, out_cost: np.ndarray,
    limit: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """best[s, j] and the start of stage s in it, over cuts of nodes 0..j into stages 0..s.

    ``limit is None``: minimise the slowest stage. Otherwise: minimise the summed stage time
    over cuts whose every stage costs at most ``limit``. Stages that do not fit are excluded.
    """
    n = problem.n
    allowed = problem.allowed()
    best = np.full((k, n), np.inf)
    choice = np.zeros((k, n), dtype=np.int64)
    for j, mem in enumerate(_memory_rows(problem)):
        fits = (mem <= problem.capacity) & allowed[: j + 1]  # over starts i = 0..j
        compute = prefix[j + 1] - prefix[: j + 1]
        for s in range(min(k, j + 1)):
            # Stage s covers i..j with i in lo..hi-1; stages before it cover 0..i-1.
            if s == 0:
                lo, hi, prev = 0, 1, np.zeros(1)
            else:
                lo, hi, prev = s, j + 1, best[s - 1][s - 1 : j]
            cost = in_cost[s][lo:hi] + compute[lo:hi] + out_cost[s][j + 1]
            if limit is None:
                cand = np.where(fits[lo:hi], np.maximum(prev, cost), np.inf)
            else:
                cand = np.where(fits[lo:hi] & (cost <= limit), prev + cost, np.inf)
            pick = int(np.argmin(cand))
            best[s, j], choice[s, j] = cand[pick], lo + pick
    return best, choice


def solve(problem: Problem, k: int, links: Sequence[tuple[float, float]]) -> list[int]:
    """Cut the nodes into exactly ``k`` stages; return ``[0, b1, ..., b_{k-1}, n]``.

    Minimises the slowest stage (hand-off in + compute + hand-off out) with every stage's
    weights within the capacity; among equally slow cuts, the one with the lowest summed stage
    time (end-to-end latency). Exact dynamic programme, O(k * n^2) in vectorised numpy.

    Raises:
        ValueError: ``k`` is not in ``1..n`` or ``links`` does not have ``k + 1`` entries.
        Infeasible: no cut into ``k`` stages fits the capacity.
    """
    n = problem.n
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} nodes into {k} stages")
    if len(links) != k + 1:
        raise ValueError(f"links needs k + 1 = {k + 1} entries, got {len(links)}")
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(problem.compute, dtype=np.float64))])
    bb = np.asarray(problem.boundary_bytes, dtype=np.float64)
    # in_cost[s][p]: hand-off into stage s when it starts at node p.
    in_cost = np.array([lat + bb[:n] / bw for lat, bw in links[:k]])
    out_cost = np.array([lat + bb / bw for lat, bw in links[1:]])  # [s][p]: stage s ends before p
    # Two passes, because the tie-break is not optimal substructure: a prefix with a worse
    # slowest stage can still lead to the lowest total. Pass 1 finds the best slowest stage;
    # pass 2 minimises the total over the cuts whose every stage is within that bound.
    best_max, _ = _sweep(problem, k, prefix, in_cost, out_cost, limit=None)
    top = best_max[k - 1, n - 1]
    if top == np.inf:
        raise Infeasible(f"no cut into {k} stages fits {problem.capacity} bytes per stage")
    _, choice = _sweep(problem, k, prefix, in_cost, out_cost, limit=top * (1 + 1e-9))
    bounds = [n]
    end = n - 1
    for s in range(k - 1, 0, -1):
        start = int(choice[s, end])
        bounds.append(start)
        end = start - 1
    bounds.append(0)
    return bounds[::-1]
