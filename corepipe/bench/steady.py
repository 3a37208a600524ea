"""Steady-state speed for the demo: rounds taken in turns, their spread, and a noise verdict.

A pipeline's throughput is measured only while it is full: each round streams ``fill`` requests
first and times the completions after them, so the one-off fill (which a single session never
pays) is not counted. The pipeline and the reference session run in turns, round after round,
so a neighbour's burst of work hits both. The spread of the rounds, (max - min) / median, is the
noise: above `NOISY` a speed figure from this machine cannot be trusted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime import Pipeline

__all__ = ["NOISY", "Rounds", "pipeline_round", "session_round", "solo_latency", "load_average"]

#: Rounds that differ by more than this share of their median make a figure untrustworthy.
NOISY = 0.10

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Rounds:
    """Requests per second of each round."""

    rates: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.rates))

    @property
    def spread(self) -> float:
        """(max - min) / median: 0.05 means the rounds lay within 5 % of each other."""
        return (max(self.rates) - min(self.rates)) / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY


def pipeline_round(pipe: Pipeline, feeds: Sequence[Feeds], fill: int,
                   keep: list[dict[str, np.ndarray]] | None = None) -> float:
    """Stream ``fill + len(feeds)`` requests; return the steady-state rate: the requests that
    completed after the first ``fill`` over the time they took. ``keep`` collects the outputs
    of ``feeds`` (the fill requests are copies of the first one)."""
    stream = [feeds[0]] * fill + list(feeds)
    start = time.perf_counter()
    for i, result in enumerate(pipe.map(stream)):
        if i == fill - 1:
            start = time.perf_counter()
        elif i >= fill and keep is not None:
            keep.append(result)
    return len(feeds) / (time.perf_counter() - start)


def session_round(run: Callable[[Feeds], dict[str, np.ndarray]], feeds: Sequence[Feeds],
                  keep: list[dict[str, np.ndarray]] | None = None) -> float:
    """Run ``feeds`` one after another through ``run``; return requests per second."""
    start = time.perf_counter()
    for f in feeds:
        result = run(f)
        if keep is not None:
            keep.append(result)
    return len(feeds) / (time.perf_counter() - start)


def solo_latency(run: Callable[[Feeds], object], feeds: Sequence[Feeds]) -> float:
    """Median seconds of one request with nothing else in flight."""
    times = []
    for f in feeds:
        t0 = time.perf_counter()
        run(f)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
