"""Choosing buckets: pure arithmetic on measured seconds (no ONNX, no engines).

A request whose dim is ``v`` runs at the smallest bucket ``b >= v``. Given each candidate
size's measured time and how often each value comes (a shape profile), the expected time of a
bucket set is ``sum_v weight(v) * time(bucket(v))``; `choose_sizes` finds the set of at most
``max_buckets`` sizes (the largest always among them) that minimises it, by dynamic
programming over the sorted candidates. `decide` then weighs padded buckets against running
every shape natively, per stage, the way a pipeline's throughput goes: by its slowest stage.
`implied_dims` reads what a bucket list given alone means: its dim, dynamic over 1..max.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CompileError

__all__ = ["candidate_sizes", "interpolate", "expected", "choose_sizes", "ModeTimes", "Decision", "decide", "implied_dims"]


def candidate_sizes(lo: int, hi: int) -> list[int]:
    """Bucket sizes worth timing within ``lo..hi``: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of
    two and the midpoints between), and ``hi`` itself."""
    out, p = set(), 1
    while p <= hi:
        for size in (p, p + p // 2):
            if lo <= size <= hi:
                out.add(size)
        p *= 2
    out.add(hi)
    return sorted(out)


def interpolate(points: Mapping[int, float], x: float) -> float:
    """Piecewise-linear ``points`` at ``x`` (held flat past the ends)."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        return points[xs[-1]]
    i = bisect.bisect_left(xs, x)
    a, b = xs[i - 1], xs[i]
    return points[a] + (points[b] - points[a]) * (x - a) / (b - a)


def expected(times: Mapping[int, float], weights: Mapping[int, float], sizes: Sequence[int]) -> float:
    """``sum_v weights[v] * times[bucket(v)]`` with ``bucket(v)`` the smallest of ``sizes`` >= v."""
    total = 0.0
    for value, weight in weights.items():
        i = bisect.bisect_left(sizes, value)
        if i == len(sizes):
            raise ValueError(f"value {value} is over the largest bucket {sizes[-1]}")
        total += weight * times[sizes[i]]
    return total


def choose_sizes(times: Mapping[int, float], weights: Mapping[int, float], max_buckets: int) -> tuple[int, ...]:
    """The set of at most ``max_buckets`` sizes among ``times``' keys, the largest always in it,
    with the least expected time for values drawn by ``weights`` (ties: fewer buckets).

    >>> choose_sizes({16: 1.0, 32: 2.0, 64: 4.0, 128: 8.0}, {10: 0.5, 100: 0.5}, 2)
    (16, 128)
    """
    sizes = sorted(times)
    if max_buckets < 1 or not sizes:
        raise ValueError("choose at least one bucket among at least one size")
    if max(weights, default=0) > sizes[-1]:
        raise ValueError(f"values up to {max(weights)} need a bucket of at least that size; largest is {sizes[-1]}")
    m = len(sizes)
    # mass[j]: weight of the values that bucket j takes when bucket i (< j) is the one below it
    def mass(i: int, j: int) -> float:
        low = sizes[i] if i >= 0 else float("-inf")
        return sum(w for v, w in weights.items() if low < v <= sizes[j])

    inf = float("inf")
    # best[k][j]: least cost of values <= sizes[j] with k buckets, the largest at sizes[j]
    best = [[inf] * m for _ in range(max_buckets + 1)]
    back: list[list[int]] = [[-1] * m for _ in range(max_buckets + 1)]
    for j in range(m):
        best[1][j] = mass(-1, j) * times[sizes[j]]
    for k in range(2, max_buckets + 1):
        for j in range(m):
            for i in range(j):
                if best[k - 1][i] == inf:
                    continue
                cost = best[k - 1][i] + mass(i, j) * times[sizes[j]]
                if cost < best[k][j] - 1e-15:
                    best[k][j], back[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda k: (best[k][m - 1], k))
    chosen, j = [], m - 1
    while j >= 0 and k >= 1:
        chosen.append(sizes[j])
        j, k = back[k][j], k - 1
    return tuple(sorted(chosen))


@dataclass(frozen=True)
class ModeTimes:
    """One stage's seconds per request: running each size natively (``dynamic``, a bounded
    dynamic graph) and as a static graph compiled for that size (``static``; equal to dynamic
    on an engine that does not specialise on shapes). ``extra_bytes``: memory each static
    bucket adds (a repacked copy of the weights on OpenVINO, nothing on onnxruntime)."""

    dynamic: Mapping[int, float]
    static: Mapping[int, float]
    extra_bytes: int = 0
    fits: int | None = None  # the most buckets that fit the core's memory (None: no limit)


@dataclass(frozen=True)
class Decision:
    """What `decide` chose: ``sizes`` (empty: no buckets, every stage dynamic), each stage's
    mode, and the expected seconds per request of each stage either way."""

    sizes: tuple[int, ...]
    modes: tuple[str, ...]
    dynamic_s: tuple[float, ...]
    buckets_s: tuple[float, ...]


def decide(stages: Sequence[ModeTimes], weights: Mapping[int, float], *, max_buckets: int = 8,
           margin: float = 0.02, sizes: Sequence[int] | None = None) -> Decision:
    """Buckets or not, which sizes, and each stage's mode.

    Without buckets every stage runs each request's own shape natively: its time is the
    weighted mean of its dynamic times. With buckets every request is padded to its bucket;
    each stage runs the bucket shape as a static graph where that is faster and its copies fit
    (``fits``), else natively. The sizes minimise the stages' summed expected time. Buckets
    win when the slowest stage gets faster by more than ``margin``. ``sizes`` given: those
    buckets, no choosing (each stage still picks static or native).
    """
    def at(times: Mapping[int, float], size: int) -> float:
        return times[size] if size in times else interpolate(times, size)

    dyn = tuple(sum(w * interpolate(st.dynamic, v) for v, w in weights.items()) for st in stages)
    if sizes is None:
        limit = min([max_buckets] + [st.fits for st in stages if st.fits is not None])
        grid = sorted(set.intersection(*(set(st.static) for st in stages))) if stages else []
        summed = {size: sum(min(at(st.static, size), at(st.dynamic, size)) for st in stages) for size in grid}
        sizes = choose_sizes(summed, weights, max(1, limit)) if grid else ()
        if not sizes:
            return Decision((), ("dynamic",) * len(stages), dyn, dyn)
    chosen = tuple(sorted(sizes))
    modes, padded = [], []
    for st in stages:
        static_ok = st.fits is None or len(chosen) <= st.fits
        t_static = expected({b: at(st.static, b) for b in chosen}, weights, chosen)
        t_native = expected({b: at(st.dynamic, b) for b in chosen}, weights, chosen)
        use_static = static_ok and t_static <= t_native
        modes.append("buckets" if use_static else "dynamic")
        padded.append(t_static if use_static else t_native)
    return Decision(chosen, tuple(modes), dyn, tuple(padded))


def buckets_win(decision: Decision, margin: float = 0.02) -> bool:
    """Whether padding to ``decision``'s buckets makes the slowest stage faster by > ``margin``."""
    return bool(decision.sizes) and max(decision.buckets_s) < (1 - margin) * max(decision.dynamic_s)


def implied_dims(dims: Mapping[str, Any] | None, buckets: Any) -> tuple[dict[str, Any], list[str]]:
    """``dims`` with each bucketed dim it lacks added over 1..max(bucket sizes), and a note for
    each (a request of any size in range pads up to the next bucket).

    Raises:
        CompileError: a bucket list that is not positive whole sizes.
    """
    out = dict(dims or {})
    notes: list[str] = []
    if not isinstance(buckets, Mapping):
        return out, notes
    for name, sizes in buckets.items():
        ok = isinstance(sizes, Sequence) and not isinstance(sizes, str) and len(sizes) > 0 and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in sizes)
        if not ok:
            raise CompileError(f"buckets for {name!r} must be a list of positive sizes, e.g. [16, 32, 64], "
                               f"got {sizes!r}")
        if name not in out:
            top = int(max(sizes))
            out[name] = (1, top)
            notes.append(f"buckets {sorted(int(v) for v in sizes)} imply the dynamic dim {name} 1..{top}: a "
                         f"request's {name} pads up to the next bucket")
    return out, notes

