"""Worker processes: how they are started, watched and stopped, and which cores they get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["HUGEPAGES_ENV", "WorkerProcess", "assign_cores", "huge_pages_env", "module_command", "spawn"]

#: Set to ``1`` to start workers with transparent huge pages for their heap (see `huge_pages_env`).
HUGEPAGES_ENV = "COREPIPE_HUGEPAGES"
_HUGETLB = "glibc.malloc.hugetlb=1"


def module_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment to run ``python -m module args`` as a helper process.

    The child must import this very corepipe, and nothing from the caller's working directory:
    a ``bisect.py`` or ``random.py`` lying there would shadow the standard library. So the
    package's own root goes first on ``PYTHONPATH``, ``-P`` (3.11+) keeps the working directory
    off ``sys.path``, and callers start the child in ``/``.
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe, "-m", module, *args], env


#: Linux ties PR_SET_PDEATHSIG to the *thread* that forked the child, not to the process: a
#: worker started from a short-lived thread (an executor, ``asyncio.to_thread``) would be killed
#: when that thread exits. Every worker is therefore forked by this one thread, which lives as
#: long as the process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corepipe-spawner")


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen)``, forked by the process-lifetime spawner thread."""
    def fork() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), **popen)

    return _SPAWNER.submit(fork).result()


def huge_pages_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with glibc's malloc asking for transparent huge pages (``GLIBC_TUNABLES``
    ``glibc.malloc.hugetlb=1``, glibc >= 2.35; older ones ignore it) when ``COREPIPE_HUGEPAGES=1``;
    else ``env`` unchanged. Tunables the user set are kept.

    Off by default: measured on 2 cores, same runs (benchmarks/RESULTS.md, "Where one request's
    CPU goes"), huge pages cost the BERT-base fp32 workers 15-18 % more CPU per request (5 and
    13 % less throughput), gave BERT-base bf16 4-5 % more throughput, and moved ResNet-50 by
    -1 to +3 %: no default fits all.
    """
    if env.get(HUGEPAGES_ENV, "0") != "1":
        return env
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{_HUGETLB}" if tunables else _HUGETLB
    return env


class WorkerProcess:
    """A worker process started as ``python -m corepipe.runtime.worker``: no pickling, no
    re-import of the user's ``__main__`` (scripts need no ``if __name__ == '__main__'`` guard).
    With ``COREPIPE_HUGEPAGES=1`` its heap asks for transparent huge pages (`huge_pages_env`)."""

    def __init__(self, config: dict[str, Any], pass_fds: Sequence[int], report: int) -> None:
        argv, env = module_command("corepipe.runtime.worker", json.dumps(config))
        env = huge_pages_env(env)
        self.popen = spawn(
            argv, env=env, cwd="/", pass_fds=tuple(pass_fds), stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        self.pid = self.popen.pid
        self._report = report

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.is_alive():
            try:
                self.popen.kill()
            except OSError:
                pass

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def report(self) -> str:
        """What the worker wrote before exiting at start-up, if anything."""
        try:
            return os.read(self._report, 4096).decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            os.close(self._report)
        except OSError:
            pass


def assign_cores(
    n: int, cores: Sequence[int] | None, threads: int | None,
    planned: Sequence[int] | None = None,
) -> list[list[int]]:
    """Cores for each of ``n`` stages: ``threads`` (default: an even share) consecutive cores
    each. When stages outnumber cores, one core each: the plan's core (``planned``, which
    groups consecutive stages to balance the cores' load), else round-robin."""
    avail = sorted(cores) if cores else sorted(os.sched_getaffinity(0))
    if n <= len(avail):
        per = threads or max(1, len(avail) // n)
        return [avail[(k * per) % len(avail):][:per] or [avail[k % len(avail)]] for k in range(n)]
    if planned is not None and len(planned) == n:
        return [[avail[c % len(avail)]] for c in planned]
    return [[avail[k % len(avail)]] for k in range(n)]
