"""What the ``ray`` backend measures: per-stage counters from the actors' pings, the hand-off time
of every boundary, and each node's clock offset from the driver's.

Actors stamp with their own wall clocks. Those on the driver's host share its clock; for other
hosts, the monitor's pings estimate the offset (the sample with the shortest round trip of the
latest 64: its error is at most half that round trip), which corrects hand-off times and moves
request timelines onto the driver's monotonic clock.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...artifact.plan import Plan
from ...errors import CorepipeError
from ..base import BoundaryStats, PipelineStats, StageStats

__all__ = ["RayStats"]


class RayStats:
    """Mixin for `RayPipeline`: `stats`, hand-off times per boundary, clock offsets."""

    backend: str
    plan: Plan
    _ray: Any
    _n: int
    _actors: list[Any]
    _where: list[dict[str, Any]]
    _restarts: list[int]
    _last_ping: dict[int, dict[str, Any]]
    _clock: dict[str, collections.deque[tuple[float, float]]]
    _driver_ip: str
    _mono_minus_wall: float
    _out_handoffs: list[float]
    _final_stats: PipelineStats | None
    _started: float
    _latencies: Any
    _completed: int
    _failed: int
    _cv: Any
    _inflight: dict[int, Any]
    _pending: Any
    _down: tuple[str, float] | None
    _broken: CorepipeError | None

    def stats(self) -> PipelineStats:
        if self._final_stats is not None:  # closed: the figures as they stood at the end
            return self._final_stats
        elapsed = time.perf_counter() - self._started
        pings = self._fresh_pings()
        stages = []
        for k in range(self._n):
            p, where = pings.get(k) or {}, self._where[k] if k < len(self._where) else {}
            requests, busy = int(p.get("requests", 0)), float(p.get("busy_s", 0.0))
            stages.append(StageStats.measured(
                k, where.get("pid"), f"{where.get('ip', '?')} node {where.get('node_id', '?')[:8]}",
                requests, busy, elapsed, int(p.get("queued", 0)), restarts=self._restarts[k],
            ))
        with self._cv:
            in_flight = len(self._inflight) + len(self._pending)
        summary = self._summary(elapsed, stages, in_flight, self._boundary_stats(pings))  # type: ignore[attr-defined]
        with self._cv:
            down, broken = self._down, self._broken
        problem = f"the pipeline broke: {broken}" if broken is not None else down[0] if down else None
        return replace(summary, problem=problem) if problem else summary

    def _boundary_stats(self, pings: Mapping[int, Mapping[str, Any]]) -> list[BoundaryStats]:
        """Mean send-to-arrival time per boundary, clocks of other hosts corrected by their offsets."""
        out = []
        for b, specs in enumerate(self.plan.boundaries):
            nbytes = sum(t.nbytes for t in specs)
            if b < self._n:
                p = pings.get(b) or {}
                count, raw = int(p.get("handoffs", 0)), float(p.get("handoff_s", 0.0))
                skew = self._offset(b) - (self._offset(b - 1) if b > 0 else 0.0)
            else:
                count, raw = int(self._out_handoffs[0]), float(self._out_handoffs[1])
                skew = -self._offset(self._n - 1)
            mean = raw / count - skew if count else 0.0
            out.append(BoundaryStats(index=b, nbytes=nbytes, handoffs=count, mean_s=max(0.0, mean)))
        return out

    def _to_monotonic(self, stamps: list[float]) -> tuple[tuple[float, float], ...]:
        """Stage ``k``'s wall-clock (enter, leave) in this process's monotonic clock."""
        out = []
        for k in range(self._n):
            shift = self._mono_minus_wall - self._offset(k)
            enter, leave = (stamps[2 * k], stamps[2 * k + 1]) if len(stamps) == 2 * self._n else (0.0, 0.0)
            out.append((enter + shift, leave + shift))
        return tuple(out)

    def _fresh_pings(self) -> dict[int, Mapping[str, Any]]:
        """Every actor's counters now (the monitor's latest for one that does not answer)."""
        ray = self._ray
        out: dict[int, Mapping[str, Any]] = dict(self._last_ping)
        refs = {a.ping.remote(): k for k, a in enumerate(self._actors)}
        try:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=2.0)
            for ref in ready:
                try:
                    out[refs[ref]] = ray.get(ref)
                except Exception:  # dead: keep what it last said
                    pass
        except Exception:
            pass
        return out

    def _clock_sample(self, k: int, sent: float, received: float, remote: float) -> None:
        ip = self._where[k].get("ip")
        if not ip or ip == self._driver_ip:
            return
        window = self._clock.setdefault(ip, collections.deque(maxlen=64))
        window.append((received - sent, remote - (sent + received) / 2))

    def _offset(self, k: int) -> float:
        """Seconds stage ``k``'s clock runs ahead of the driver's (0 on the driver's host)."""
        if k < 0:
            return 0.0
        window = self._clock.get(self._where[k].get("ip", ""))
        return min(window)[1] if window else 0.0
