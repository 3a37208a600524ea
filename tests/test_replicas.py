"""Replicas x stages x threads: R copies of a pipeline behind one client (local and inline),
results in submission order, replay inside a replica, per-replica stats, R x S x T checks, and
the artifact's deployment used by default and overridden by arguments."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from graphcases import big_weight_model, run_reference

import corepipe
from corepipe.artifact.manifest import open_artifact
from corepipe.artifact.writer import republish_artifact

pytestmark = pytest.mark.usefixtures("no_leaks")

CORES = len(os.sched_getaffinity(0))
#: Two replicas need 2 x S cores: one stage each on this 2-core machine, two on a bigger one.
STAGES = 2 if CORES >= 4 else 1


def _check(outs, refs):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An artifact of STAGES stages and a 3-stage one, 60 distinct requests and their answers."""
    root = tmp_path_factory.mktemp("replicas")
    case = big_weight_model([512 * 1024] * 6)
    one = corepipe.compile(case.model, root / "a", example_inputs=case.inputs(), num_cores=STAGES).path
    three = corepipe.compile(case.model, root / "b", example_inputs=case.inputs(), num_cores=3).path
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(60)]
    return one, three, feeds, [run_reference(case.model, f) for f in feeds]


@pytest.mark.parametrize("backend", ["local", "inline"])
def test_concurrent_submitters_get_right_answers_in_submission_order(model, backend):
    path, three, feeds, refs = model
    # inline pins nothing, so it can hold the 3-stage plan twice on any machine
    art = three if backend == "inline" else path
    order: list[int] = []
    lock = threading.Lock()
    futures: dict[int, tuple[int, object]] = {}
    with corepipe.load(art, backend=backend, replicas=2, threads_per_stage=1) as pipe:
        assert pipe.replicas == 2

        def client(offset: int) -> None:
            for i in range(offset, len(feeds), 4):
                fut = pipe.submit(feeds[i])
                fut.add_done_callback(lambda f: (lock.acquire(), order.append(f.request_id), lock.release()))
                futures[fut.request_id] = (i, fut)

        threads = [threading.Thread(target=client, args=(o,)) for o in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, fut in futures.values():
            _check([fut.result(timeout=60)], [refs[i]])
        st = pipe.stats()
    assert order == sorted(order) and len(order) == len(feeds), "futures must complete in submission order"
    per_replica = [sum(s.requests for s in st.stages if s.replica == r and s.index == 0) for r in (0, 1)]
    assert sum(per_replica) == len(feeds)
    if backend == "local":
        assert min(per_replica) > 0, "the client spreads requests across replicas"


def test_stats_say_which_replica_and_core_each_stage_runs_on(model):
    path, _, feeds, refs = model
    with corepipe.load(path, replicas=2, threads_per_stage=1, cores=2 * STAGES) as pipe:
        _check(list(pipe.map(feeds)), refs)
        st = pipe.stats()
        pids = pipe.worker_pids()
        by_replica = [pipe.worker_pids(replica=r) for r in (0, 1)]
        affinity = {pid: psutil.Process(pid).cpu_affinity() for pid in pids}
    assert st.replicas == 2 and st.completed == len(feeds)
    assert [(s.replica, s.index) for s in st.stages] == [(r, k) for r in (0, 1) for k in range(STAGES)]
    cores = [s.core for s in st.stages]
    assert sorted(cores) == [str(c) for c in sorted(os.sched_getaffinity(0))[:2 * STAGES]], cores
    assert by_replica[0] + by_replica[1] == pids and not set(by_replica[0]) & set(by_replica[1])
    for s, pid in zip(st.stages, pids):  # the stats' core is where the worker really is pinned
        assert affinity[pid] == [int(s.core)]
    assert all(s.busy_s > 0 for s in st.stages)


def test_kill_9_in_one_replica_replays_there_and_keeps_order(model):
    path, _, feeds, refs = model
    with corepipe.load(path, replicas=2, threads_per_stage=1) as pipe:
        victim = pipe.worker_pids(replica=1)[-1]
        outs = []
        for i, out in enumerate(pipe.map(feeds * 3)):
            outs.append(out)
            if i == 20:  # mid-stream: both replicas hold requests
                os.kill(victim, signal.SIGKILL)
        st = pipe.stats()
        assert victim not in pipe.worker_pids()
    _check(outs, refs * 3)
    restarts = {r: sum(s.restarts for s in st.stages if s.replica == r) for r in (0, 1)}
    assert restarts[1] >= 1 and restarts[0] == 0
    assert st.completed == 3 * len(feeds) and st.failed == 0


def test_close_from_a_done_callback_and_close_twice(model):
    path, _, feeds, _ = model
    pipe = corepipe.load(path, replicas=2, threads_per_stage=1)
    closed = threading.Event()
    first = pipe.submit(feeds[0])
    first.add_done_callback(lambda f: (pipe.close(), closed.set()))
    first.result(timeout=60)
    assert closed.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pipe.submit(feeds[1])
        except corepipe.PipelineClosedError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the pipeline still takes requests after close")
    pipe.close()


def test_r_x_s_x_t_over_the_cores_is_refused_with_what_fits(model):
    path, three, _, _ = model
    with pytest.raises(corepipe.DeploymentError, match=r"2 replicas x 3 stages x 1 thread per stage need 6 cores") as e:
        corepipe.load(three, replicas=2, cores=2)
    assert "alone need 3 cores" in str(e.value)  # 3 stages on 2 cores: nothing replicates
    with pytest.raises(corepipe.DeploymentError, match=r"need 4 cores, but 1 core is given") as e:
        corepipe.load(path, replicas=2, threads_per_stage=2 // STAGES, cores=1)
    fits = "replicas=1, threads_per_stage=1..2; replicas=2, threads_per_stage=1" if STAGES == 1 else \
        "replicas=1, threads_per_stage=1"
    with pytest.raises(corepipe.DeploymentError, match="these fit: " + fits):
        corepipe.load(path, replicas=1, threads_per_stage=3, cores=2)
    with pytest.raises(corepipe.DeploymentError, match="may run on"):
        corepipe.load(path, cores=CORES + 1)
    with pytest.raises(corepipe.DeploymentError, match="positive integer"):
        corepipe.load(path, replicas=0)
    with pytest.raises(corepipe.DeploymentError, match="distinct core ids"):
        corepipe.load(path, cores=[0, 0])
    with pytest.raises(corepipe.DeploymentError, match="not among the cores"):
        corepipe.load(path, cores=[max(os.sched_getaffinity(0)) + 1])
    with pytest.raises(corepipe.DeploymentError, match="need 6 cores"):  # inline checks given cores too
        corepipe.load(three, backend="inline", replicas=2, cores=2)
    # no replicas or threads asked: a plan with more stages than cores still shares them
    with corepipe.load(three, cores=1) as pipe:
        assert [s.core for s in pipe.stats().stages] == [str(sorted(os.sched_getaffinity(0))[0])] * 3


def _with_deployment(path, out, **fields):
    art = open_artifact(path)
    dep = corepipe.Deployment(**fields)
    republish_artifact(art, out, dataclasses.replace(art.plan, deployment=dep))
    return out


def test_the_artifacts_deployment_is_the_default_and_arguments_override_it(model, tmp_path):
    path, _, feeds, refs = model
    tuned = _with_deployment(path, tmp_path / "tuned", replicas=2, threads_per_stage=1, cores=2 * STAGES,
                             objective="throughput", throughput=100.0)
    with corepipe.load(tuned) as pipe:
        assert pipe.replicas == 2
        _check(list(pipe.map(feeds[:10])), refs[:10])
    with corepipe.load(tuned, replicas=1) as pipe:
        assert pipe.replicas == 1
        assert {s.core for s in pipe.stats().stages} == {
            str(c) for c in sorted(os.sched_getaffinity(0))[:STAGES]}  # T=1 still from the artifact
    with corepipe.load(tuned, backend="inline") as pipe:
        assert pipe.replicas == 2
    big = _with_deployment(path, tmp_path / "big", replicas=CORES, threads_per_stage=2, cores=4 * CORES * STAGES)
    with pytest.raises(corepipe.DeploymentError, match=r"the artifact.s deployment.*override"):
        corepipe.load(big)
    with corepipe.load(big, replicas=1, threads_per_stage=1) as pipe:
        _check([pipe.run(feeds[0])], refs[:1])


def test_older_plans_without_deployment_still_read_and_new_ones_round_trip(model):
    path, _, _, _ = model
    plan = open_artifact(path).plan
    data = plan.to_dict()
    assert "deployment" not in data and all("loaded_s" not in s for s in data["stages"])
    assert corepipe.Plan.from_dict(data) == plan
    dep = corepipe.Deployment(replicas=2, threads_per_stage=1, cores=2 * STAGES, objective="latency",
                              latency_p50_s=0.01)
    tuned = dataclasses.replace(plan, deployment=dep)
    assert corepipe.Plan.from_dict(tuned.to_dict()) == tuned
    with pytest.raises(ValueError, match="exceeds the 1 cores"):
        dataclasses.replace(plan, deployment=corepipe.Deployment(replicas=2, cores=1)).validate()
    with pytest.raises(ValueError, match="unknown fields"):
        corepipe.Deployment.from_dict({"cores": 2, "replica": 2})


def test_requests_go_around_a_replica_that_is_down(model):
    path, _, feeds, refs = model
    with corepipe.load(path, replicas=2, threads_per_stage=1) as pipe:
        assert pipe.readiness() == (True, "", 0.0)
        pipe.replica(1).close()  # as a stage waiting out its restart backoff: not ready
        ready, _, _ = pipe.readiness()
        assert ready
        _check(list(pipe.map(feeds[:10])), refs[:10])  # all on replica 0, none stuck on replica 1
        st = pipe.stats()
        assert sum(s.requests for s in st.stages if s.replica == 0 and s.index == 0) >= 10
        pipe.replica(0).close()
        ready, why, _ = pipe.readiness()
        assert not ready and "replica 0: the pipeline is closed" in why
