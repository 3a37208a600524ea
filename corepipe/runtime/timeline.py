"""Request timelines: when each request entered and left each stage, kept for the last N requests.

Workers stamp (enter, leave) around each run into the slot header (`corepipe.runtime.shm`); the
client adds when the request was submitted, fed into the first ring and completed. A `Timeline`
is that record as plain data, with the two readings a Gantt chart needs:

- `Timeline.phases`: *fill* (until the first request reaches the last stage), *steady state*
  (every stage has work), *drain* (after the first stage ran its last request);
- `Timeline.waits`: where a stage sat idle although the pipeline could have used it. A stage is
  *blocked* while its next request is ready but the slot it writes into is still held
  downstream (back-pressure from a slower stage), and *stalled* while both were ready and it
  still did not run for longer than a quarter of its median run time (at least 1 ms): time
  the pipeline did not explain, typically the OS running something else on its core.

Times are ``time.monotonic()`` seconds, one clock for every process on Linux.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["RequestTrace", "Recovery", "Wait", "Timeline", "TraceLog"]

#: A stall is an unexplained idle gap longer than this share of the stage's median run time...
STALL_SHARE = 0.25
#: ...and at least this many seconds (wake-up latency of an idle worker is well below it).
STALL_MIN_S = 1e-3


@dataclass(frozen=True)
class RequestTrace:
    """One completed (or failed) request's path through the pipeline."""

    request_id: int
    submitted: float
    fed: float  # first written into the first ring (after waiting for admission and a free slot)
    stages: tuple[tuple[float, float], ...]  # (enter, leave) per stage
    completed: float
    ok: bool = True
    replays: int = 0  # times it was sent through again after a worker died


@dataclass(frozen=True)
class Recovery:
    """A worker death (or hang) the pipeline recovered from: from when it was noticed until the
    replayed requests were queued again, and which stages restarted."""

    start: float
    end: float
    stages: tuple[int, ...]


@dataclass(frozen=True)
class Wait:
    """An interval where ``stage`` was idle: ``kind`` is ``"blocked"`` or ``"stall"``."""

    stage: int
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class Timeline:
    """The last requests' traces (in submission order), recoveries, and what was dropped."""

    stages: int
    slots: int
    requests: tuple[RequestTrace, ...] = ()
    recoveries: tuple[Recovery, ...] = ()
    dropped: int = 0  # older traces beyond the bound

    @property
    def start(self) -> float:
        return min((r.fed for r in self.requests), default=0.0)

    @property
    def end(self) -> float:
        return max((r.completed for r in self.requests), default=0.0)

    def phases(self) -> tuple[float, float, float, float]:
        """``(start, fill_end, drain_start, end)``; steady state is ``fill_end .. drain_start``
        (empty when the pipeline never had every stage busy, e.g. one request at a time)."""
        if not self.requests:
            return (0.0, 0.0, 0.0, 0.0)
        fill_end = min(r.stages[-1][0] for r in self.requests)
        drain_start = max(r.stages[0][1] for r in self.requests)
        return (self.start, fill_end, max(fill_end, drain_start), self.end)

    def service_times(self, stage: int) -> np.ndarray:
        """Run times (leave - enter) of ``stage`` over the kept requests, in seconds."""
        return np.array([r.stages[stage][1] - r.stages[stage][0] for r in self.requests])

    def waits(self) -> list[Wait]:
        """Blocked and stalled intervals of every stage (see the module docstring)."""
        out: list[Wait] = []
        reqs = sorted(self.requests, key=lambda r: r.request_id)
        for k in range(self.stages):
            median = float(np.median(self.service_times(k))) if reqs else 0.0
            threshold = max(STALL_MIN_S, STALL_SHARE * median)
            for i in range(1, len(reqs)):
                prev, cur = reqs[i - 1], reqs[i]
                if cur.replays or prev.replays:
                    continue  # a recovery reset the rings: the slot arithmetic starts over
                idle_from = prev.stages[k][1]
                ready = cur.fed if k == 0 else cur.stages[k - 1][1]  # its input is there
                ready = max(ready, idle_from)
                j = i - self.slots if self.slots else -1  # last user of the slot it writes into
                room = ready
                if j >= 0:
                    holder = reqs[j]
                    freed = holder.completed if k == self.stages - 1 else holder.stages[k + 1][1]
                    room = max(ready, freed)
                enter = cur.stages[k][0]
                if room > ready and min(room, enter) > ready:
                    out.append(Wait(k, "blocked", ready, min(room, enter)))
                if enter - room > threshold:
                    out.append(Wait(k, "stall", room, enter))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TraceLog:
    """Thread-safe, bounded recorder of `RequestTrace` (the last ``keep``) and recoveries."""

    keep: int = 10_000
    _traces: collections.deque[RequestTrace] = field(init=False)
    _recoveries: collections.deque[Recovery] = field(init=False)
    _seen: int = 0

    def __post_init__(self) -> None:
        self._traces = collections.deque(maxlen=max(0, self.keep))
        self._recoveries = collections.deque(maxlen=100)
        self._lock = threading.Lock()

    def add(self, trace: RequestTrace) -> None:
        with self._lock:
            self._seen += 1
            self._traces.append(trace)

    def recovered(self, start: float, end: float, stages: tuple[int, ...]) -> None:
        with self._lock:
            self._recoveries.append(Recovery(start, end, stages))

    def timeline(self, stages: int, slots: int, last: int | None = None) -> Timeline:
        with self._lock:
            traces = sorted(self._traces, key=lambda r: r.request_id)
            recoveries = tuple(self._recoveries)
            seen = self._seen
        if last is not None:
            traces = traces[-last:] if last > 0 else []
        return Timeline(stages, slots, tuple(traces), recoveries, seen - len(traces))
