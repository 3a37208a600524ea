"""Shared-memory segments of the ``local`` backend: how they are named, made, attached, released,
and how those a killed client left behind are swept.

Every segment is named ``corepipe_<pid>_<random>`` after the client process that made it, so
whose it is shows in ``/dev/shm``. A client that exits in any ordinary way (close, exception,
Ctrl-C, interpreter exit) unlinks its own; one killed by SIGKILL cannot, and its segments stay
until something removes them. `sweep_orphans` is that something: the next pipeline started on
the machine removes every ``corepipe_<pid>_*`` segment whose ``<pid>`` no longer runs.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

__all__ = ["SHM_DIR", "attach_shm", "create_shm", "release_shm", "sweep_orphans"]

#: Where POSIX shared memory lives on Linux.
SHM_DIR = Path("/dev/shm")
_NAME = re.compile(r"^corepipe_(\d+)_[0-9a-f]+$")


def attach_shm(name: str) -> SharedMemory:
    """Attach to a segment another process created, without registering it for cleanup here:
    only its creator unlinks it (Python < 3.13 would otherwise unlink it when we exit)."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    original = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return SharedMemory(name=name)
    finally:
        resource_tracker.register = original  # type: ignore[assignment]


def create_shm(size: int) -> SharedMemory:
    """A new segment named ``corepipe_<pid>_<random>``: whose it is shows in ``/dev/shm``, so a
    leak is easy to attribute (and tests can tell their segments from a neighbour's)."""
    return SharedMemory(create=True, name=f"corepipe_{os.getpid()}_{secrets.token_hex(6)}", size=max(size, 1))


def release_shm(shm: SharedMemory, unlink: bool) -> None:
    """Unmap ``shm`` and, for its creator, remove its name."""
    try:
        shm.close()
    except BufferError:  # a caller still holds a view; the mapping goes with the process
        pass
    if unlink:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts: EPERM says it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(directory: Path = SHM_DIR) -> list[str]:
    """Remove the ``corepipe_<pid>_*`` segments in ``directory`` whose owner ``<pid>`` is gone;
    return their names. A segment of a running process is never touched (a reused pid keeps
    its segments until that process ends too: the sweep errs on the side of keeping)."""
    removed: list[str] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    alive: dict[int, bool] = {}
    for entry in entries:
        m = _NAME.match(entry.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid not in alive:
            alive[pid] = _running(pid)
        if alive[pid]:
            continue
        try:
            entry.unlink()
            removed.append(entry.name)
        except OSError:  # another sweep got there first, or not ours to remove
            pass
    return removed
