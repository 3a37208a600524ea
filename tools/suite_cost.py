"""What a command costs: its wall time and the peak memory of its whole process tree.

The README's figures for the test run come from this (issue 19): ``/usr/bin/time`` reports the
largest single process, while the suite's workers, servers and Ray nodes run side by side, so
this samples the summed resident set (RSS) of every process the command started, every 0.2 s.
A process counts when its environment carries this run's token (`TOKEN`, inherited by every
descendant, even one that daemonized itself as ``ray start``'s nodes do).

Usage::

    python tools/suite_cost.py [--every SECONDS] [--json FILE] -- python -m pytest -q

Prints ``wall 812.3 s, peak 5.61 GiB (sum of RSS over the process tree)`` after the command
and exits with its exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil

TOKEN = "COREPIPE_SUITE_COST"


class Tree:
    """The processes that carry ``TOKEN=value`` in their environment."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.seen: dict[tuple[int, float], bool] = {}  # (pid, start time) -> ours

    def _ours(self, proc: psutil.Process) -> bool:
        try:
            key = (proc.pid, proc.create_time())
            if key not in self.seen:
                self.seen[key] = proc.environ().get(TOKEN) == self.value
            return self.seen[key]
        except psutil.Error:
            return False

    def rss(self) -> tuple[int, list[tuple[int, str]]]:
        """Summed RSS in bytes of our processes (one that vanishes while read counts 0), and
        each one's ``(rss, command line)``."""
        parts = []
        for proc in psutil.process_iter():
            if self._ours(proc):
                try:
                    parts.append((proc.memory_info().rss, " ".join(proc.cmdline())[:120]))
                except psutil.Error:
                    pass
        return sum(r for r, _ in parts), parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.2, help="sampling period in seconds")
    parser.add_argument("--json", help="also write {wall_s, peak_bytes, returncode, at_peak} here "
                        "(at_peak: the 10 largest processes at the peak)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")

    value = f"{os.getpid()}-{time.time_ns()}"
    tree = Tree(value)
    start = time.monotonic()
    proc = subprocess.Popen(command, env={**os.environ, TOKEN: value})
    peak, at_peak = 0, []
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, at_peak
        while not done.is_set():
            total, parts = tree.rss()
            if total > peak:
                peak, at_peak = total, parts
            done.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    print(f"wall {wall:.1f} s, peak {peak / 2**30:.2f} GiB (sum of RSS over the process tree)",
          file=sys.stderr)
    if args.json:
        top = sorted(at_peak, reverse=True)[:10]
        with open(args.json, "w") as f:
            json.dump({"command": command, "wall_s": round(wall, 1), "peak_bytes": peak,
                       "returncode": code, "at_peak": [f"{r / 2**20:.0f} MiB {c}" for r, c in top]},
                      f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
