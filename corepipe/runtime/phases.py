"""Per-phase time of the hot path, for finding where one request's CPU goes; off by default.

Set ``COREPIPE_PHASES`` to a directory and every ``local`` pipeline client and every worker it
starts (they inherit the environment) write one JSON file there when they stop:
``client-<pid>-<n>.json`` and ``stage<k>-<pid>.json``. Each holds, per phase, how many times it
ran and its total wall, thread-CPU and (workers) process-CPU nanoseconds, plus the CPU its
threads used in all. `benchmarks/request_cpu.py` reads them into the table in
benchmarks/RESULTS.md.

Off, it costs nothing measurable: the hot paths hold ``None`` instead of a `Phases` and test it
once per phase (a few nanoseconds against a hand-off of tens of microseconds); nothing is
wrapped, timed or written.

Worker phases, in loop order: ``wait`` (from the last publish until the next slot is ready:
idle, plus the select wake-up), ``header`` (read the slot header, set the control words, view
the tensors), ``bind`` (find the binding of these slots), ``engine`` (the engine's own run),
``after`` (carried tensors, shapes in the header), ``publish`` (counters, timestamps, header,
doorbells, free the input slot). Client phases: ``submit`` (check, admission, copy
in: the caller's thread, ``feed`` included), ``feed`` (a slot of the first ring written and
published, from ``submit`` or from the queue), ``collect`` (the outputs copied out and the future
completed, by whichever thread reaps: a caller in ``result()`` or the service thread).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ENV", "Phases", "phases_from_env"]

#: The switch: a directory to write the counters to; unset (the default), nothing is counted.
ENV = "COREPIPE_PHASES"

_serial = itertools.count()


class Phases:
    """Counters for named phases, timed back to back from one thread: `lap` closes the phase
    that began at the previous `lap` (or `start`).

    Args:
        role: ``"client"`` or ``"stage<k>"`` (the file's name starts with it).
        names: the phases, in the order the hot path runs them.
        directory: where `dump` writes.
        process_cpu: also count the whole process's CPU per phase (a worker's engine threads).
    """

    def __init__(self, role: str, names: Sequence[str], directory: str, *, process_cpu: bool = False) -> None:
        self.role = role
        self.names = list(names)
        self.directory = Path(directory)
        self._proc = process_cpu
        n = len(self.names)
        self.count = [0] * n
        self.wall_ns = [0] * n
        self.cpu_ns = [0] * n
        self.proc_ns = [0] * n
        self._lock = threading.Lock()
        self._t = self._c = self._p = 0
        self.threads: dict[str, int] = {}  # thread name -> its CPU ns when it stopped
        self.start()

    def start(self) -> None:
        """Begin a phase now (the next `lap` closes it)."""
        self._t = time.perf_counter_ns()
        self._c = time.thread_time_ns()
        self._p = time.process_time_ns() if self._proc else 0

    def lap(self, phase: int) -> None:
        """Close phase ``phase`` (an index into ``names``) now, and begin the next."""
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        self.count[phase] += 1
        self.wall_ns[phase] += t - self._t
        self.cpu_ns[phase] += c - self._c
        if self._proc:
            p = time.process_time_ns()
            self.proc_ns[phase] += p - self._p
            self._p = p
        self._t, self._c = t, c

    def add(self, phase: int, wall_ns: int, cpu_ns: int) -> None:
        """Count one run of ``phase`` timed elsewhere (from any thread)."""
        with self._lock:
            self.count[phase] += 1
            self.wall_ns[phase] += wall_ns
            self.cpu_ns[phase] += cpu_ns

    def wrap(self, obj: Any, method: str, before: int, during: int) -> None:
        """Time ``obj.method`` as phase ``during``, closing phase ``before`` as it is called
        (an engine's run inside the runner: the binding lookup before it, the run itself)."""
        inner: Callable[..., Any] = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.lap(before)
            try:
                return inner(*args, **kwargs)
            finally:
                self.lap(during)

        setattr(obj, method, timed)

    def thread_done(self, name: str) -> None:
        """Record the calling thread's CPU in all, as it stops."""
        with self._lock:
            self.threads[name] = time.thread_time_ns()

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "pid": os.getpid(),
            "phases": {name: {"count": self.count[i], "wall_ns": self.wall_ns[i], "cpu_ns": self.cpu_ns[i],
                              **({"process_cpu_ns": self.proc_ns[i]} if self._proc else {})}
                       for i, name in enumerate(self.names)},
            "threads_cpu_ns": dict(self.threads),
            "process_cpu_ns": time.process_time_ns(),
        }

    def dump(self) -> None:
        """Write the counters as ``<role>-<pid>[-<n>].json`` in the directory (never raises)."""
        suffix = f"-{next(_serial)}" if self.role == "client" else ""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.role}-{os.getpid()}{suffix}.json"
            path.write_text(json.dumps(self.to_dict()) + "\n")
        except OSError:
            pass


def phases_from_env(role: str, names: Sequence[str], *, process_cpu: bool = False) -> Phases | None:
    """A `Phases` when ``COREPIPE_PHASES`` names a directory, else None (counting off)."""
    directory = os.environ.get(ENV)
    return Phases(role, names, directory, process_cpu=process_cpu) if directory else None
