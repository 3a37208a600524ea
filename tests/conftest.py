"""Shared fixtures: leak checks for processes and shared memory."""

from __future__ import annotations

import os
import time

import psutil
import pytest


def _ours(pid: int) -> bool:
    """Whether a segment made by ``pid`` belongs to this test run: made by this process or one of
    its descendants, or by a process now gone (a leak). Segments of other live processes (another
    test run on the same machine) are theirs to clean."""
    if pid == os.getpid() or not psutil.pid_exists(pid):
        return True
    try:
        return any(p.pid == os.getpid() for p in psutil.Process(pid).parents())
    except psutil.Error:
        return True


def shm_segments() -> set[str]:
    """corepipe's shared-memory segments (``corepipe_<pid>_<random>``) that belong to this run."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:  # not Linux
        return set()
    out = set()
    for name in names:
        parts = name.split("_")
        if parts[0] == "corepipe" and len(parts) == 3 and parts[1].isdigit() and _ours(int(parts[1])):
            out.add(name)
    return out


def corepipe_children() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "corepipe.runtime.worker" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            pass
    return out


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Pids still alive (and not zombies) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        still = []
        for pid in alive:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        alive = still
        if alive:
            time.sleep(0.05)
    return alive


@pytest.fixture
def no_leaks():
    """Fail the test if it leaves a worker process or a shared-memory segment behind."""
    before = shm_segments()
    yield
    leftover = [p.pid for p in corepipe_children()]
    assert wait_gone(leftover) == [], f"worker processes left behind: {leftover}"
    deadline = time.monotonic() + 5
    while shm_segments() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shm_segments() - before == set(), f"shared memory left behind: {shm_segments() - before}"


def compiled_chain(directory, weight_bytes: int, requests: int, seed: int):
    """A 3-stage model (six MatMuls of ``weight_bytes`` each) whose output depends on its input,
    compiled into ``directory``, with ``requests`` distinct inputs and their reference answers."""
    import numpy as np
    from graphcases import big_weight_model, run_reference

    import corepipe

    case = big_weight_model([weight_bytes] * 6)
    path = directory / "a"
    corepipe.compile(case.model, path, example_inputs=case.inputs(), num_cores=3)
    rng = np.random.default_rng(seed)
    name, spec = next(iter(case.feeds.items()))
    feeds = [{name: rng.standard_normal(spec.shape).astype(spec.dtype)} for _ in range(requests)]
    return path, feeds, [run_reference(case.model, f) for f in feeds]


@pytest.fixture(scope="session")
def serve_repo(tmp_path_factory):
    """A model repository for the serving tests (see tests/serving.py)."""
    pytest.importorskip("uvicorn")
    from serving import build_repo

    return build_repo(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def served(serve_repo):
    """A `corepipe serve` process on the repository, with a token and a small window (4 in flight
    + 4 waiting per model), shared by one module's tests; stopped with SIGTERM at the module's end,
    which must exit 0 and leave no shared memory. (Module scope, not session: its workers are
    this process's descendants, and other modules' leak checks must not find them.)"""
    from serving import TOKEN, Server

    srv = Server.start(serve_repo.path, "--token", TOKEN, "--max-in-flight", "4", "--max-queue", "4")
    yield srv
    code = srv.stop()
    assert code == 0, "\n".join(srv.lines)
    assert srv.shm() == set()
