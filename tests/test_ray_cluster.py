"""The ``ray`` backend's actors on a real multi-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: one raylet and object store per node), kept on the loopback.

One cluster serves the whole module: three nodes (the first is the head, the driver's) with one CPU,
a declared memory budget and a custom resource each (``cp_n0``..``cp_n2``).
Each test provokes what it checks for real: actors killed with ``ray.kill``, stopped, or failing a
request; placements no node can hold. What needs hosts with their own network (stages on different
hosts, a host killed or cut off, a host blind to the artifact) is in test_ray_hosts.py.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest
from graphcases import all_cases, big_weight_model, case_index_from_request, run_reference

import corepipe

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

MiB = 2**20
BUDGET = int(2.5 * MiB)  # each node's declared memory: what its stages' weights may hold
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(corepipe.__file__)))


@pytest.fixture(scope="module")
def cluster():
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # set by conftest
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "memory": BUDGET, "resources": {"cp_n0": 1},
        # Declare a silent node dead after 3 missed checks 0.5 s apart (Ray's default: 5 x 3 s).
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    nodes = [c.head_node] + [c.add_node(num_cpus=1, node_ip_address="127.0.0.1", memory=BUDGET,
                                        resources={f"cp_n{i}": 1}) for i in (1, 2)]
    ray.init(address=c.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})  # workers import this corepipe
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A 2-stage model (weights 64 KiB each) and 40 distinct requests with their answers."""
    return compiled_2(tmp_path_factory.mktemp("chain"))


def compiled_2(directory):
    case = big_weight_model([64 * 1024] * 4)
    path = directory / "a"
    corepipe.compile(case.model, path, example_inputs=case.inputs(), num_cores=2)
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(40)]
    return path, feeds, [run_reference(case.model, f) for f in feeds]


def _check(outs, refs):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def _alive_actor_ids():
    return {a["ActorID"] for a in ray._private.state.actors().values() if a["State"] != "DEAD"}


def test_cluster_stays_on_the_loopback(cluster):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}


@pytest.mark.parametrize("data_path", ["stream", "object-store"])
def test_killed_actor_mid_stream_loses_nothing_and_keeps_order(cluster, chain, data_path):
    path, feeds, refs = chain
    with corepipe.load(path, backend="ray", max_in_flight=6, data_path=data_path) as pipe:
        assert pipe.data_path == data_path
        done = []
        for i, out in enumerate(pipe.map(feeds)):
            done.append(out)
            if i == 10:
                ray.kill(pipe.actors()[1], no_restart=True)
        st = pipe.stats()
        assert pipe.replayed >= 1 and pipe.readiness()[0]
        timeline = pipe.timeline()
    _check(done, refs)
    assert st.stages[1].restarts == 1 and st.completed == len(feeds) and st.failed == 0
    # Timelines: every request's stages in order on the driver's clock, the recovery recorded.
    assert len(timeline.requests) == len(feeds) and [r.stages for r in timeline.recoveries] == [(1,)]
    for r in timeline.requests:
        (a0, b0), (a1, b1) = r.stages
        assert r.submitted <= r.fed <= a0 <= b0 <= a1 <= b1 <= r.completed
    assert any(r.replays for r in timeline.requests)


def test_stuck_actor_past_stage_timeout_is_replaced(cluster, chain):
    path, feeds, refs = chain
    with corepipe.load(path, backend="ray", stage_timeout=2.0) as pipe:
        _check([pipe.run(feeds[0], timeout=60)], refs[:1])
        os.kill(pipe.placement()[0]["pid"], signal.SIGSTOP)  # neither works nor dies
        outs = list(pipe.map(feeds[:10]))
        assert pipe.stats().stages[0].restarts == 1
    _check(outs, refs[:10])


def test_stage_that_keeps_dying_backs_off_under_the_backoff_policy(cluster, chain):
    path, feeds, refs = chain
    with corepipe.load(path, backend="ray", restart="backoff", max_deaths=1, backoff_s=1.5) as pipe:
        _check([pipe.run(feeds[0], timeout=60)], refs[:1])
        ray.kill(pipe.actors()[0], no_restart=True)
        deadline = time.monotonic() + 10
        while pipe.readiness()[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        ready, why, retry = pipe.readiness()
        assert not ready and "stage 0 is down" in why and 0 < retry <= 1.5
        futs = [pipe.submit(f) for f in feeds[:6]]  # taken while the stage is down
        _check([f.result(timeout=60) for f in futs], refs[:6])  # kept, and run once it is back
        assert pipe.readiness() == (True, "", 0.0)


def test_stage_that_keeps_dying_gives_up_with_stage_error(cluster, tmp_path):
    from test_reliability import _slow_on_demand_model

    model = _slow_on_demand_model()  # stage 1 loops on request: the requests are still in flight
    feeds = [{"x": np.ones((1, 64), np.float32), "n": np.array(50_000, np.int64)}] * 6
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds[0], cuts=[2], engine="onnxruntime")
    with corepipe.load(cm.path, backend="ray", max_deaths=1) as pipe:
        futs = [pipe.submit(f) for f in feeds]
        ray.kill(pipe.actors()[0], no_restart=True)
        errors = [f.exception(timeout=60) for f in futs]
        assert any(isinstance(e, corepipe.StageError) and e.stage == 0 for e in errors)
        with pytest.raises(corepipe.PipelineClosedError, match="giving up"):
            pipe.submit(feeds[0])


def test_failing_request_fails_alone_with_a_stage_tagged_error(cluster, tmp_path):
    case = case_index_from_request()  # an index computed from the request: only its stage can check it
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=2,
                          engine="onnxruntime")
    ids_name = next(n for n, v in case.feeds.items() if v.dtype == np.int64)
    bad = dict(case.feeds)
    bad[ids_name] = np.full_like(case.feeds[ids_name], 10**9)  # out of the table: Gather raises
    ref = run_reference(case.model, case.feeds)
    with corepipe.load(cm.path, backend="ray") as pipe:
        futs = [pipe.submit(case.feeds), pipe.submit(bad), pipe.submit(case.feeds)]
        exc = futs[1].exception(timeout=60)
        assert isinstance(exc, corepipe.StageError)
        assert exc.stage == 0 and exc.request_id == 1 and exc.node and exc.node in str(exc)
        _check([futs[0].result(60), futs[2].result(60), pipe.run(case.feeds, timeout=60)], [ref] * 3)


def test_close_leaves_no_actor_placement_group_or_process(cluster, chain):
    path, feeds, refs = chain
    before = _alive_actor_ids()
    pipe = corepipe.load(path, backend="ray")
    ids = {a._actor_id.hex() for a in pipe.actors()}
    pids = [w["pid"] for w in pipe.placement()]
    pg = pipe.placement_group
    assert ids <= _alive_actor_ids()
    _check(list(pipe.map(feeds[:5])), refs[:5])
    pipe.close()
    assert _alive_actor_ids() - before == set()
    assert ray.util.placement_group_table(pg)["state"] == "REMOVED"
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(corepipe.PipelineClosedError):
        pipe.submit(feeds[0])


def test_placements_no_cluster_can_hold_are_refused_at_once(cluster, chain, tmp_path):
    """Refused before anything waits for resources: with a start_timeout far beyond the test's
    own (pytest-timeout), waiting instead of refusing could only fail the test; no actor starts."""
    path, _, _ = chain
    case = big_weight_model([64 * 1024] * 6)
    cm = corepipe.compile(case.model, tmp_path / "b", example_inputs=case.inputs(), num_cores=6)
    before = _alive_actor_ids()
    with pytest.raises(corepipe.CorepipeError, match="no node of the cluster"):
        corepipe.load(path, backend="ray", threads_per_stage=8, start_timeout=3600)
    with pytest.raises(corepipe.CorepipeError, match=r"STRICT_SPREAD .* 6 stages .* 3 nodes"):
        corepipe.load(cm.path, backend="ray", placement_strategy="STRICT_SPREAD", start_timeout=3600)
    with pytest.raises(corepipe.CorepipeError, match="placement_strategy"):
        corepipe.load(path, backend="ray", placement_strategy="EVERYWHERE")
    assert _alive_actor_ids() - before == set()
    assert ray.util.placement_group_table() == {} or all(
        p["state"] == "REMOVED" for p in ray.util.placement_group_table().values())


# -- placement, memory budgets, shipped stages, a node removed: the non-root versions of what
# test_ray_hosts.py checks across namespace hosts (there only as root), with the assertions the
# move lost (the actors' module path, the boundary byte count, stage_source="ship").
def test_custom_resources_place_stages_on_chosen_nodes(cluster, chain):
    _, nodes = cluster
    path, feeds, refs = chain
    with corepipe.load(path, backend="ray", stage_resources=[{"cp_n2": 1}, {"cp_n0": 1}]) as pipe:
        where = pipe.placement()
        assert [w["node_id"] for w in where] == [nodes[2].node_id, nodes[0].node_id]
        assert all(w["module"] == os.path.join(ROOT, "corepipe") for w in where)
        assert [w["source"] for w in where] == ["path", "path"]  # the nodes share this disk
        _check(list(pipe.map(feeds)), refs)
        st = pipe.stats()
    assert st.backend == "ray" and st.completed == len(feeds) and st.failed == 0
    assert [s.requests for s in st.stages] == [len(feeds)] * 2
    assert [b.handoffs for b in st.boundaries] == [len(feeds)] * 3
    assert all(b.mean_s > 0 for b in st.boundaries)
    assert st.boundaries[1].nbytes == sum(t.nbytes for t in pipe.plan.boundaries[1])


def test_strict_spread_gives_each_stage_its_own_node(cluster, tmp_path):
    case = next(c for c in all_cases() if c.name == "skip_far")
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=3)
    with corepipe.load(cm.path, backend="ray", placement_strategy="STRICT_SPREAD",
                       stage_source="ship") as pipe:
        assert len({w["node_id"] for w in pipe.placement()}) == 3
        assert {w["source"] for w in pipe.placement()} == {"ship"}
        _check([pipe.run(case.feeds, timeout=60)], [run_reference(case.model, case.feeds)])


def test_weights_over_one_nodes_budget_run_across_nodes(cluster, tmp_path):
    case = big_weight_model([MiB] * 6)  # 6 MiB of weights; each node declares 2.5 MiB
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(),
                          target="ray", core_memory=BUDGET, num_cores="auto")
    assert cm.num_cores == 3 and all(s.resident_bytes > BUDGET / 2 for s in cm.stages)
    # PACK would fill one node, but each bundle reserves its stage's bytes of the node's memory.
    with corepipe.load(cm.path, backend="ray", placement_strategy="PACK") as pipe:
        assert len({w["node_id"] for w in pipe.placement()}) == 3
        _check([pipe.run(case.feeds, timeout=60)], [run_reference(case.model, case.feeds)])


def test_removed_node_mid_stream_moves_its_stage_and_loses_nothing(cluster, tmp_path):
    """Last in the module: it takes one of the cluster's nodes away for good."""
    from test_reliability import _slow_on_demand_model

    c, nodes = cluster
    model = _slow_on_demand_model()  # stage 1 loops n times: ~0.3 s a request on onnxruntime
    rng = np.random.default_rng(11)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32), "n": np.array(150_000, np.int64)}
             for _ in range(10)]
    refs = [run_reference(model, f) for f in feeds]
    # onnxruntime: OpenVINO runs the loop ~3x faster, and the queue could drain while the node
    # is being removed (remove_node takes about a second).
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds[0], cuts=[2], engine="onnxruntime")
    # Stage 0 on the head; stage 1 on node 1 or 2, whichever Ray picks, and the other takes it over.
    with corepipe.load(cm.path, backend="ray", stage_resources=[{"cp_n0": 1}, {}],
                       max_in_flight=len(feeds)) as pipe:
        before = pipe.placement()[1]["node_id"]
        victim = next(n for n in nodes[1:] if n.node_id == before)
        futs = [pipe.submit(f) for f in feeds]
        futs[1].result(timeout=60)
        assert not futs[-1].done()  # requests are queued at stage 1 when its node dies
        c.remove_node(victim, allow_graceful=False)  # its raylet and actors die at once
        outs = [f.result(timeout=120) for f in futs]
        after = pipe.placement()[1]["node_id"]
        st = pipe.stats()
        assert pipe.replayed >= 1
    _check(outs, refs)
    assert after != before and after in {n.node_id for n in nodes[1:]}
    assert st.stages[1].restarts >= 1 and st.completed == len(feeds) and st.failed == 0
    assert before not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
