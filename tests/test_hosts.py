"""The multi-host rig itself (tests/hosts.py): what it leaves behind after a killed run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import IN_CI
from hosts import SHM, Hosts, clean_stale, missing, shm_names

if why := missing():
    if IN_CI:
        pytest.fail(f"CI must run the multi-host tests, but {why}", pytrace=False)
    pytest.skip(f"the multi-host rig cannot run here: {why}", allow_module_level=True)


def _names() -> list[str]:
    links = subprocess.run(["ip", "-o", "link", "list"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return ([line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line]
            + [line.split(" ")[0] for line in spaces.splitlines() if line.strip()])


def test_a_killed_runs_rig_is_cleaned_up_by_the_next():
    """What a test run killed with kill -9 leaves (a namespace with a process in it, a bridge, a
    veth, named for a maker that is gone) is removed by the next rig."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    tag = f"cph{gone.pid}"
    subprocess.run(["ip", "netns", "add", f"{tag}n0"], check=True)
    subprocess.run(["ip", "link", "add", f"{tag}b", "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", f"{tag}v0", "type", "veth", "peer", "name", "eth0", "netns", f"{tag}n0"],
                   check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", f"{tag}n0", "sleep", "600"])
    try:
        removed = clean_stale()
        assert {f"{tag}n0", f"{tag}b", f"{tag}v0"} <= set(removed)
        assert orphan.wait(timeout=10) == -9
        assert not [n for n in _names() if n.startswith(tag)]
    finally:
        orphan.kill()
        for cmd in (["ip", "netns", "del", f"{tag}n0"], ["ip", "link", "del", f"{tag}b"]):
            subprocess.run(cmd, capture_output=True)


def test_teardown_removes_what_rays_killed_processes_left_in_dev_shm():
    """Semaphores a process on a host made and never unlinked (what a kill -9'd Ray leaves) go
    with the rig; one a live process outside the rig holds, or another user's file, stays."""
    names = [f"sem.obj_cph{os.getpid()}_{k}" for k in range(3)]
    held = None
    try:
        with Hosts(2, ray=False) as h:
            for i, name in enumerate(names[:2]):  # made by a process on each host, then killed
                subprocess.run(["ip", "netns", "exec", h.ns(i), "sh", "-c", f"echo x > {SHM}/{name}"], check=True)
            (SHM / names[2]).write_text("x")  # a live Ray elsewhere holds this one open
            held = subprocess.Popen(["sleep", "600"], stdin=open(SHM / names[2]))  # noqa: SIM115
            other = SHM / f"cp_other_{os.getpid()}"
            other.write_text("x")
            assert set(names) | {other.name} <= shm_names()
        assert not {names[0], names[1]} & shm_names()
        assert {names[2], other.name} <= shm_names()
        assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                    if ns.startswith(h.tag)]
    finally:
        if held is not None:
            held.kill()
            held.wait()
        for name in [*names, f"cp_other_{os.getpid()}"]:
            (SHM / name).unlink(missing_ok=True)


def test_a_cap_is_a_tbf_on_both_ends_of_the_link_and_can_be_lifted():
    with Hosts(2, ray=False, gbit=2.5) as h:
        def qdiscs(i: int) -> list[str]:
            inside = subprocess.run(["ip", "netns", "exec", h.ns(i), "tc", "qdisc", "show", "dev", "eth0"],
                                    capture_output=True, text=True, check=True).stdout
            outside = subprocess.run(["tc", "qdisc", "show", "dev", h.veth(i)],
                                     capture_output=True, text=True, check=True).stdout
            return [inside, outside]

        for i in range(2):
            assert all("tbf" in q and "rate 2500Mbit" in q for q in qdiscs(i)), qdiscs(i)
        h.cap(1, None)
        assert not any("tbf" in q for q in qdiscs(1)) and all("tbf" in q for q in qdiscs(0))
        probe = f"import socket; socket.create_connection(({h.ip(1)!r}, 9), timeout=5)"
        out = subprocess.run(["ip", "netns", "exec", h.ns(0), sys.executable, "-c", probe],
                             capture_output=True, text=True)
        assert "ConnectionRefusedError" in out.stderr, out.stderr  # host 1 answered: the link works
