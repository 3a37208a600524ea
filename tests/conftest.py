"""Shared fixtures: leak checks for processes and shared memory; what a skip means in CI."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from typing import NoReturn

# Keep every test's Ray traffic on the loopback: Ray reads this when it is imported, and binds the
# machine's other interface without it (the clusters' nodes also name node_ip_address=127.0.0.1).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The engine-speed cache (corepipe.engines.speeds) of a test run is its own, never the user's; and
# engine="auto" takes OpenVINO wherever it runs a stage, as it did before the one-core probe: a
# choice by timing on a shared machine would flip the engine a test asserts from run to run. The
# tests of the probe (tests/test_engine_choice.py) turn it on.
os.environ["COREPIPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="corepipe-test-cache-")
atexit.register(shutil.rmtree, os.environ["COREPIPE_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("COREPIPE_ENGINE_PROBE", "off")

import psutil
import pytest

try:  # No test may fail for taking long (tests/test_lint.py keeps it so): no hypothesis deadline.
    from hypothesis import settings as _hypothesis

    _hypothesis.register_profile("corepipe", deadline=None)
    _hypothesis.load_profile("corepipe")
except ImportError:  # hypothesis is a dev extra; the tests that use it import it themselves
    pass

#: Whether this run is CI's (``CI=true``, as .ci/run and most CI services set it).
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_missing_packages_in_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    """In CI, a test or module skipped because a package is missing fails: every package the
    tests import is in the dev extra that CI installs, so the skip would hide a broken install."""
    if IN_CI and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if "could not import" in reason:
            report.outcome = "failed"
            report.longrepr = f"CI=true, and the dev extra must provide this: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_missing_packages_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_missing_packages_in_ci(outcome.get_result())


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip a test that cannot run here, saying why; in CI (``CI=true``) fail it instead: CI must
    run everything the README promises, so a missing tool there is a broken CI, not a skip."""
    if IN_CI:
        pytest.fail(f"CI=true, and this must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


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


def skip_unless_bf16(directory) -> None:
    """On a CPU without native bf16 (or with it masked: ``COREPIPE_CPU_MASK=bf16``), check what
    such a CPU must do, refuse bf16 with the error naming the CPU and the fix, then skip the rest
    of the test, which needs bf16 math; on a CPU with bf16, do nothing."""
    import corepipe
    from corepipe import zoo
    from corepipe.engines import cpu_math

    cpu = cpu_math()
    if cpu.bf16:
        return
    model, feeds = zoo.get("mlp")
    with pytest.raises(corepipe.CompileError) as info:
        corepipe.compile(model, directory, example_inputs=feeds, num_cores=2, precision="bf16")
    text = str(info.value)
    assert text.startswith("bf16 needs native bf16 math (avx512_bf16 or amx_bf16)"), text
    assert cpu.describe() in text and "use precision='fp32'" in text, text
    pytest.skip(f"no native bf16 on this CPU ({cpu.describe()}): checked that bf16 is refused, "
                "naming the CPU; running bf16 needs bf16 math")


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
