"""The multi-host rig itself (tests/hosts.py): what it leaves behind after a killed run."""

from __future__ import annotations

import os
import subprocess

import pytest
from hosts import clean_stale, missing

if why := missing():
    if os.environ.get("CI") == "true":
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
