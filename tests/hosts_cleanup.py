"""Cleaning up after the multi-host rig (tests/hosts.py), whatever happened: killing what runs in
its network namespaces, deleting them and its links by name, removing what Ray's killed processes
left in /dev/shm, and the rigs of runs that were killed before they could clean up."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "cph"
_NAME = re.compile(rf"^{PREFIX}(\d+)[nbv]\d*$")
#: What Ray's processes leave in /dev/shm when they die unclean: the named semaphores of its
#: mutable objects (``sem_open("/hdr...")``, ``"/obj..."``: Compiled Graph channels) and plasma files.
RAY_SHM = re.compile(r"^(sem\.hdr|sem\.obj|plasma)")
SHM = Path("/dev/shm")


def missing() -> str:
    """Why the rig cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (`ip`, `tc`) is not installed"
    return ""


def _run(*argv: str, check: bool = True) -> str:
    out = subprocess.run(argv, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _netns_pids(ns: str) -> list[int]:
    return [int(p) for p in _run("ip", "netns", "pids", ns, check=False).split()]


def _remove(owner: int, namespaces: Sequence[str], links: Sequence[str]) -> None:
    """Kill what runs in ``namespaces``, then delete them and ``links``, by name."""
    for _ in range(50):  # processes may fork while being killed: until none is left
        pids = [p for ns in namespaces for p in _netns_pids(ns) if p != os.getpid()]
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.1)
    for ns in namespaces:
        _run("ip", "netns", "del", ns, check=False)
    for link in links:
        _run("ip", "link", "del", link, check=False)
    shutil.rmtree(f"/tmp/{PREFIX}{owner}", ignore_errors=True)


def shm_names() -> set[str]:
    """The names in /dev/shm now."""
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def shm_in_use() -> set[str]:
    """The names in /dev/shm that a live process maps or holds open."""
    used: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            maps = Path(f"/proc/{pid}/maps").read_text()
            used.update(m.split()[0] for m in maps.split(f"{SHM}/")[1:])
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if (target := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith(f"{SHM}/"):
                        used.add(target[len(str(SHM)) + 1 :].split()[0])
    return used


def clean_shm(before: set[str]) -> list[str]:
    """Remove what Ray left in /dev/shm since ``before`` (`RAY_SHM` names no live process holds:
    another user's live Ray keeps its own); returns the names removed."""
    left = sorted({n for n in shm_names() - before if RAY_SHM.match(n)} - shm_in_use())
    for name in left:
        with contextlib.suppress(OSError):
            (SHM / name).unlink()
    return left


def clean_stale() -> list[str]:
    """Remove every rig whose maker is no longer alive (namespaces, links, processes); returns
    the names removed."""
    owners: dict[int, tuple[list[str], list[str]]] = {}
    for ns in _run("ip", "netns", "list", check=False).split("\n"):
        name = ns.split(" ")[0]
        if m := _NAME.match(name):
            owners.setdefault(int(m.group(1)), ([], []))[0].append(name)
    for line in _run("ip", "-o", "link", "show", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if m := _NAME.match(name):
            owners.setdefault(int(m.group(1)), ([], []))[1].append(name)
    removed = []
    for owner, (namespaces, links) in owners.items():
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            _remove(owner, namespaces, links)
            removed += namespaces + links
    return removed
