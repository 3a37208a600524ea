"""The ``ray`` backend across hosts: each host a network namespace with its own IP and a Ray node
(`hosts.Hosts`), so stages on different hosts talk over a network, a host can be killed or cut
off, and a host can be blind to the artifact directory.

One rig serves the module: host 0 runs the head and the driver (this test's thread, moved into
its namespace) and offers no CPU, so stages land on hosts 1-3 (1 CPU and a 2.5 MiB budget for
weights each); host 3 cannot see the `private` directory. Ray declares a silent host dead after
3 missed health checks 0.5 s apart (each waiting 0.5 s): within `DETECT_S`. A test that kills or
cuts a host brings it back before the next test (`whole`).
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import psutil
import pytest
from conftest import IN_CI, wait_gone
from graphcases import all_cases, big_weight_model, run_reference
from hosts import HEALTH, RAY_SHM, Hosts, missing, shm_names

import corepipe

ray = pytest.importorskip("ray")

if why := missing():
    if IN_CI:
        pytest.fail(f"CI must run the multi-host tests, but {why}", pytrace=False)
    pytest.skip(f"the multi-host rig cannot run here: {why}", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks", "whole")]

MiB = 2**20
BUDGET = int(2.5 * MiB)
#: Ray declares a silent host dead within this: every check of the threshold times out.
DETECT_S = HEALTH["health_check_failure_threshold"] * (
    HEALTH["health_check_period_ms"] + HEALTH["health_check_timeout_ms"]) / 1000
START_S = 30.0  # the pipelines' start_timeout: what one restart may take before it fails
BOUND_S = DETECT_S + START_S  # a new request after a host is lost is answered within this


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    private = tmp_path_factory.mktemp("private")
    shm = shm_names()
    h = Hosts(4, cpus=[0, 1, 1, 1], memory=[None, BUDGET, BUDGET, BUDGET], hidden={3: [private]})
    with h, h.driver():
        yield h, private
    assert not [ns for ns in _names("netns") if ns.startswith(h.tag)], "a namespace was left behind"
    assert not [ln for ln in _names("link") if ln.startswith(h.tag)], "a link was left behind"
    assert wait_gone([p for p in psutil.pids() if _in_rig(p, h.tag)]) == [], "a rig process was left behind"
    left = [n for n in shm_names() - shm if RAY_SHM.match(n)]
    assert not left, f"Ray's files were left in /dev/shm: {left}"


def _names(kind: str) -> list[str]:
    out = subprocess.run(["ip", "-o", kind, "list"] if kind == "link" else ["ip", "netns", "list"],
                         capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] if kind == "link" else line.split(" ")[0]
            for line in out.splitlines() if line.strip()]


def _in_rig(pid: int, tag: str) -> bool:
    """Whether process ``pid`` runs the rig's Ray (its temp directory is named by the rig's tag)."""
    try:
        return f"/tmp/{tag}" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


@pytest.fixture
def whole(rig):
    """After the test: every host's node up again (restarted where a test killed or cut it)."""
    yield
    h, _ = rig
    alive = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    for i in range(h.n):
        if h.ip(i) not in alive or not h.alive(i):
            h.restart(i)
    deadline = time.monotonic() + 30
    while len([n for n in ray.nodes() if n["Alive"]]) < h.n and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A 2-stage model, 40 distinct requests and their answers."""
    case = big_weight_model([64 * 1024] * 4)
    path = tmp_path_factory.mktemp("chain") / "a"
    corepipe.compile(case.model, path, example_inputs=case.inputs(), num_cores=2)
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(40)]
    return path, feeds, [run_reference(case.model, f) for f in feeds]


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """A 2-stage model whose stage 1 loops on request (~0.1 s here), so requests queue up at a
    host that is then killed or cut off; 12 requests and their answers."""
    from test_reliability import _slow_on_demand_model

    model = _slow_on_demand_model()
    rng = np.random.default_rng(11)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32), "n": np.array(50_000, np.int64)}
             for _ in range(12)]
    cm = corepipe.compile(model, tmp_path_factory.mktemp("slow") / "a", example_inputs=feeds[0], cuts=[2],
                          engine="onnxruntime")
    return cm.path, feeds, [run_reference(model, f) for f in feeds]


def _check(outs, refs):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def _host(h, ip):
    return next(i for i in range(h.n) if h.ip(i) == ip)


@pytest.mark.parametrize("data_path", ["stream", "object-store"])
def test_stages_on_different_hosts(rig, chain, data_path):
    h, _ = rig
    path, feeds, refs = chain
    with corepipe.load(path, backend="ray", stage_resources=[{"cp_h2": 1}, {"cp_h1": 1}],
                       data_path=data_path) as pipe:
        where = pipe.placement()
        assert [w["ip"] for w in where] == [h.ip(2), h.ip(1)] and pipe.data_path == data_path
        assert [w["source"] for w in where] == ["path", "path"]  # hosts 1 and 2 see this disk
        if data_path == "stream":  # each stage listens on its host's address, nowhere else
            assert [w["inlet"][0] for w in where] == [h.ip(2), h.ip(1)]
        _check(list(pipe.map(feeds)), refs)
        st = pipe.stats()
    assert st.completed == len(feeds) and [s.requests for s in st.stages] == [len(feeds)] * 2
    assert [b.handoffs for b in st.boundaries] == [len(feeds)] * 3
    assert all(b.mean_s > 0 for b in st.boundaries[:2])


def test_strict_spread_puts_each_stage_on_its_own_host(rig, tmp_path):
    case = next(c for c in all_cases() if c.name == "skip_far")
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=3)
    with corepipe.load(cm.path, backend="ray", placement_strategy="STRICT_SPREAD") as pipe:
        assert sorted(w["ip"] for w in pipe.placement()) == [rig[0].ip(i) for i in (1, 2, 3)]
        _check([pipe.run(case.feeds, timeout=60)], [run_reference(case.model, case.feeds)])


def test_weights_over_one_hosts_budget_run_across_hosts(rig, tmp_path):
    case = big_weight_model([MiB] * 6)  # 6 MiB of weights; each host declares 2.5 MiB
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(),
                          target="ray", core_memory=BUDGET, num_cores="auto")
    assert cm.num_cores == 3 and all(s.resident_bytes > BUDGET / 2 for s in cm.stages)
    with corepipe.load(cm.path, backend="ray", placement_strategy="PACK") as pipe:
        assert len({w["ip"] for w in pipe.placement()}) == 3
        _check([pipe.run(case.feeds, timeout=60)], [run_reference(case.model, case.feeds)])


def test_a_host_blind_to_the_artifact_gets_its_stage_shipped(rig, chain, tmp_path):
    h, private = rig
    case = big_weight_model([64 * 1024] * 4)
    path = private / "a"  # host 3 sees an empty directory here
    corepipe.compile(case.model, path, example_inputs=case.inputs(), num_cores=2)
    _, feeds, _ = chain
    with corepipe.load(path, backend="ray", stage_resources=[{"cp_h1": 1}, {"cp_h3": 1}]) as pipe:
        where = pipe.placement()
        assert [w["ip"] for w in where] == [h.ip(1), h.ip(3)]
        assert [w["source"] for w in where] == ["path", "ship"]
        _check(list(pipe.map(feeds[:8])), [run_reference(case.model, f) for f in feeds[:8]])


def test_kill_9_of_a_hosts_processes_mid_stream_loses_nothing(rig, slow):
    h, _ = rig
    path, feeds, refs = slow
    with corepipe.load(path, backend="ray", stage_resources=[{"cp_h1": 1}, {}], max_in_flight=len(feeds),
                       start_timeout=START_S) as pipe:
        victim = _host(h, pipe.placement()[1]["ip"])
        futs = [pipe.submit(f) for f in feeds]
        futs[1].result(timeout=60)
        assert not futs[-1].done()  # requests are queued at stage 1 when its host dies
        assert h.kill(victim)  # raylet, workers, agents: every process on the host
        _check([f.result(timeout=BOUND_S + 60) for f in futs], refs)
        moved = _host(h, pipe.placement()[1]["ip"])
        st = pipe.stats()
    assert moved not in (0, 1, victim) and st.stages[1].restarts == 1
    assert st.completed == len(feeds) and st.failed == 0 and pipe.replayed >= 1


def test_partition_mid_stream_moves_the_stage_and_answers_each_request_once(rig, slow):
    h, _ = rig
    path, feeds, refs = slow
    with corepipe.load(path, backend="ray", stage_resources=[{"cp_h1": 1}, {}], max_in_flight=len(feeds),
                       start_timeout=START_S) as pipe:
        victim = _host(h, pipe.placement()[1]["ip"])
        futs = [pipe.submit(f) for f in feeds[:8]]
        futs[1].result(timeout=60)
        h.link(victim, False)  # the host is cut off: it neither sends nor hears anything
        late = pipe.submit(feeds[8])  # accepted while the host is unreachable
        # The bound: Ray's detection plus one restart (start_timeout is the limit on that).
        _check([late.result(timeout=BOUND_S)], refs[8:9])
        _check([f.result(timeout=1) for f in futs], refs[:8])  # answered before it, in order
        _check([pipe.run(feeds[9], timeout=BOUND_S)], refs[9:10])
        moved = _host(h, pipe.placement()[1]["ip"])
        timeline = pipe.timeline()
        h.link(victim, True)  # back: Ray declared it dead, so its node shuts itself down
        _check(list(pipe.map(feeds[10:])), refs[10:])
        st = pipe.stats()
    assert moved not in (0, 1, victim) and st.stages[1].restarts == 1 and pipe.replayed >= 1
    assert st.completed == len(feeds) and st.failed == 0  # each answered once, none lost
    assert [r.stages for r in timeline.recoveries] == [(1,)]
    assert sorted(r.request_id for r in timeline.requests) == list(range(10))


def test_partition_under_give_up_fails_requests_naming_the_lost_host(rig, slow):
    h, _ = rig
    path, feeds, _ = slow
    with corepipe.load(path, backend="ray", stage_resources=[{"cp_h1": 1}, {}], max_in_flight=len(feeds),
                       restart="give-up", max_deaths=1, start_timeout=START_S) as pipe:
        victim = _host(h, pipe.placement()[1]["ip"])
        futs = [pipe.submit(f) for f in feeds[:6]]
        futs[0].result(timeout=60)
        h.link(victim, False)
        errors = [f.exception(timeout=BOUND_S) for f in futs[1:]]
        assert all(isinstance(e, corepipe.StageError) for e in errors), errors
        lost = [e for e in errors if "lost with its host" in str(e)]
        assert lost and all(e.stage == 1 and h.ip(victim) in str(e) for e in lost)
        with pytest.raises(corepipe.PipelineClosedError, match="lost with its host"):
            pipe.submit(feeds[0])



@pytest.mark.xfail(strict=False, reason=(
    "flaky on the rig (2026-12-08): passed in one full-suite run, hung to the 300 s timeout in the "
    "next; the blocked port block can still catch a port Ray opens later"))
def test_a_stage_its_neighbour_cannot_reach_falls_back_to_the_object_store(rig, chain):
    """Host 1 cannot open a TCP connection to a block of 1,024 ports (a routing rule blackholes
    them), and host 2's listeners get ports there (its ephemeral range): stage 0 on host 1 cannot
    reach stage 1's inlet on host 2, while Ray's own ports (bound before) still work. ``"auto"``
    falls back to the object store and answers right; ``"stream"`` is refused saying why."""
    h, _ = rig
    path, feeds, refs = chain
    # A block of ports no socket of host 2 uses now (Ray's listeners and connections keep theirs).
    taken = subprocess.run(["ip", "netns", "exec", h.ns(2), "ss", "-Htan"], capture_output=True, text=True).stdout
    used = {int(line.split()[3].rsplit(":", 1)[1]) for line in taken.splitlines() if line.strip()}
    low = next(b for b in range(33792, 59392, 1024) if not any(b <= port < b + 1024 for port in used))
    high = low + 1023
    rule = ["ip", "-n", h.ns(1), "rule", "add", "ipproto", "tcp", "dport", f"{low}-{high}", "table", "100", "prio", "100"]
    subprocess.run(["ip", "netns", "exec", h.ns(2), "sysctl", "-qw", f"net.ipv4.ip_local_port_range={low} {high}"],
                   check=True)
    try:
        subprocess.run(rule, check=True)
        subprocess.run(["ip", "-n", h.ns(1), "route", "add", "blackhole", "default", "table", "100"], check=True)
        pins = [{"cp_h1": 1}, {"cp_h2": 1}]
        with corepipe.load(path, backend="ray", stage_resources=pins, start_timeout=START_S) as pipe:
            assert pipe.data_path == "object-store"
            where = pipe.placement()
            assert [w["ip"] for w in where] == [h.ip(1), h.ip(2)] and low <= where[1]["inlet"][1] <= high
            _check(list(pipe.map(feeds[:8])), refs[:8])
        with pytest.raises(corepipe.CorepipeError, match="data_path='stream': stage 0 cannot reach its downstream"):
            corepipe.load(path, backend="ray", stage_resources=pins, data_path="stream", start_timeout=START_S)
    finally:
        subprocess.run(["ip", "-n", h.ns(1), "rule", "del", "prio", "100"], check=False)
        subprocess.run(["ip", "-n", h.ns(1), "route", "flush", "table", "100"], check=False)
        subprocess.run(["ip", "netns", "exec", h.ns(2), "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999"],
                       check=False)
