"""Stage batching (load(stage_batch=)): a local worker runs the requests queued in its incoming
ring as one engine call, and nothing else changes: each answer equals one onnxruntime session's,
in order; a bad request in a batch fails alone; a killed worker's requests are replayed.

To make requests queue whatever the machine's speed, a test stops a worker (SIGSTOP) while it
submits, then lets it go: it finds them all waiting. Each stage's ``runs`` counter (engine calls)
then shows the batches, so a test fails if batching stops."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from conftest import skip_unless_ci
from shapemodels import VOCAB, abs_embed_model, assert_same, embed_model, ids, reference

import corepipe
from corepipe.engines import missing_engine
from corepipe.runtime.phases import ENV as PHASES_ENV

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The embedding model with a dynamic batch dim 1..4 (and a second with sequence 1..8 too)."""
    root = tmp_path_factory.mktemp("stagebatch")
    model = embed_model(root / "embed.onnx")
    example = {"ids": np.zeros((1, 6), np.int64)}
    batched = corepipe.compile(model, root / "batched", example_inputs=example, num_cores=2,
                               engine="onnxruntime", dynamic_dims={"batch": (1, 4)}, buckets=None).path
    both = corepipe.compile(model, root / "both", example_inputs=example, num_cores=2, engine="onnxruntime",
                            dynamic_dims={"batch": (1, 4), "sequence": (1, 8)}, buckets=None).path
    static = corepipe.compile(model, root / "static", example_inputs=example, num_cores=2, engine="onnxruntime").path
    return model, batched, both, static


def _held(pipe, stages, feeds):
    """Submit ``feeds`` while ``stages``' workers are stopped, then let them go in order (each
    finds its ring full); returns the futures."""
    pids = [pipe.worker_pids()[k] for k in stages]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        futs = [pipe.submit(f) for f in feeds]
        time.sleep(0.3)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.3)  # the next stage's ring fills before that stage goes on
    return futs


def test_queued_requests_run_as_batches_in_order_with_the_reference_answers(models):
    model, batched, _, _ = models
    rng = np.random.default_rng(0)
    feeds = [ids(rng, 1 + (i % 3 == 0), 6) for i in range(14)]  # rows 2,1,1,2,...: 19 in all
    with corepipe.load(batched, stage_batch=True) as pipe:
        assert_same(pipe.run(feeds[0]), reference(model, feeds[0]))  # one alone: a batch of one
        futs = _held(pipe, [0, 1], feeds)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        stats = pipe.stats()
        traces = pipe.timeline().requests
    assert [t.request_id for t in traces] == sorted(t.request_id for t in traces) and len(traces) == 15
    for t in traces:  # each request's own path: fed, then stage 0, then stage 1, then done
        (e0, l0), (e1, l1) = t.stages
        assert t.fed <= e0 < l0 <= e1 < l1 <= t.completed, t
    assert [s.requests for s in stats.stages] == [15, 15]
    # 19 rows queued, at most 4 a batch: stage 0 ran them in a handful of calls, not 14
    assert stats.stages[0].runs <= 1 + 8, stats.stages
    assert stats.stages[1].runs < 15, stats.stages
    assert stats.completed == 15 and stats.failed == 0


def test_stage_batching_off_runs_one_request_per_call(models):
    model, batched, _, _ = models
    rng = np.random.default_rng(1)
    feeds = [ids(rng, 1, 6) for _ in range(6)]
    with corepipe.load(batched) as pipe:
        futs = _held(pipe, [0], feeds)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        assert [(s.requests, s.runs) for s in pipe.stats().stages] == [(6, 6), (6, 6)]


def test_requests_of_other_shapes_do_not_merge(models):
    """Over a sequence dim too, requests merge only with neighbours of their own length."""
    model, _, both, _ = models
    rng = np.random.default_rng(2)
    feeds = [ids(rng, 1, n) for n in (5, 5, 5, 8, 8, 3, 5, 5)]
    with corepipe.load(both, stage_batch=4) as pipe:
        futs = _held(pipe, [0], feeds)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        assert pipe.stats().stages[0].runs == 4  # [5 5 5] [8 8] [3] [5 5]


def test_a_bad_request_in_a_batch_fails_alone(tmp_path):
    """An id past the table reaches the Gather through an Abs, so it passes `submit` and fails
    inside stage 0, in a batch with good requests: the worker runs that batch again one request
    at a time, so only the bad one fails and its neighbours get their answers."""
    model = abs_embed_model(tmp_path / "abs.onnx")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs={"ids": np.zeros((1, 6), np.int64)}, num_cores=2,
                          engine="onnxruntime", dynamic_dims={"batch": (1, 4)}, buckets=None)
    rng = np.random.default_rng(3)
    good = [ids(rng, 1, 6) for _ in range(7)]
    bad = {"ids": np.full((1, 6), VOCAB + 7, np.int64)}
    stream = good[:2] + [bad] + good[2:]  # queued: [g g bad g] [g g g g]
    with corepipe.load(cm.path, stage_batch=True) as pipe:
        futs = _held(pipe, [0], stream)
        exc = futs[2].exception(timeout=60)
        assert isinstance(exc, corepipe.StageError) and exc.stage == 0 and exc.request_id == futs[2].request_id, exc
        assert "Gather" in str(exc) or "embed" in str(exc), exc
        for x, fut in zip(stream, futs):
            if x is not bad:
                assert_same(fut.result(timeout=60), reference(model, x))
        stats = pipe.stats()
        assert (stats.completed, stats.failed) == (7, 1)
        assert stats.stages[0].runs == (1 + 4) + 1, stats.stages  # the failed batch, its 4 alone, the good batch
        assert_same(pipe.run(good[0]), reference(model, good[0]))  # and it goes on


def test_a_killed_worker_replays_its_batches_then_batches_again(models):
    """kill -9 of stage 1 while its ring holds batched work: every request is replayed and right;
    the new worker runs the replays one at a time (so a request that kills it would be found
    alone), then batches what queues after them."""
    model, batched, _, _ = models
    rng = np.random.default_rng(4)
    feeds = [ids(rng, 1 + i % 2, 6) for i in range(12)]
    with corepipe.load(batched, stage_batch=True) as pipe:
        assert_same(pipe.run(feeds[0]), reference(model, feeds[0]))
        victim = pipe.worker_pids()[1]
        os.kill(victim, signal.SIGSTOP)  # holds what reaches it: neither works nor dies
        futs = [pipe.submit(f) for f in feeds]
        time.sleep(0.5)
        assert not any(f.done() for f in futs)
        os.kill(victim, signal.SIGKILL)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=120), reference(model, x))
        stats = pipe.stats()
        assert stats.stages[1].restarts == 1 and stats.failed == 0
        assert victim not in pipe.worker_pids()
        assert stats.stages[0].runs < stats.stages[0].requests  # stage 0 batched before the kill
        assert stats.stages[1].runs == stats.stages[1].requests == 13  # the replays, one at a time
        more = [ids(rng, 1, 6) for _ in range(8)]
        futs = _held(pipe, [1], more)
        for x, fut in zip(more, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        after = pipe.stats().stages[1]
        assert after.requests == 21 and after.runs < 21, after


def test_stage_batching_with_dynamic_batching_and_replicas(models, tmp_path):
    model, batched, _, _ = models
    rng = np.random.default_rng(5)
    feeds = [ids(rng, 1, 6) for _ in range(16)]
    with corepipe.load(batched, max_batch=2, batch_delay="1s", stage_batch=True) as pipe:
        futs = [pipe.submit(f) for f in feeds]
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
    one = corepipe.compile(model, tmp_path / "one", example_inputs={"ids": np.zeros((1, 6), np.int64)}, num_cores=1,
                           engine="onnxruntime", dynamic_dims={"batch": (1, 4)}, buckets=None).path
    with corepipe.load(one, replicas=2, threads_per_stage=1, stage_batch=2) as pipe:
        futs = [pipe.submit(f) for f in feeds]
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        assert pipe.stats().completed == 16


def test_stage_batching_is_refused_where_it_cannot_run(models):
    _, batched, _, static = models
    with pytest.raises(corepipe.DeploymentError, match=r"this artifact has none.*dynamic_dims=\{'batch'"):
        corepipe.load(static, stage_batch=True)
    with pytest.raises(corepipe.DeploymentError, match=r"within 2..4"):
        corepipe.load(batched, stage_batch=8)
    with pytest.raises(corepipe.DeploymentError, match="backend='local'"):
        corepipe.load(batched, backend="inline", stage_batch=True)
    with corepipe.load(batched, backend="inline", stage_batch=False) as pipe:  # off: every backend takes it
        assert pipe.stats().completed == 0


def test_phase_counters_count_batches(models, tmp_path, monkeypatch):
    """COREPIPE_PHASES with stage batching: each worker counts one pass per batch, and the client
    one submit and collect per request."""
    model, batched, _, _ = models
    out_dir = tmp_path / "phases"
    monkeypatch.setenv(PHASES_ENV, str(out_dir))
    rng = np.random.default_rng(6)
    feeds = [ids(rng, 1, 6) for _ in range(8)]
    with corepipe.load(batched, stage_batch=True) as pipe:
        futs = _held(pipe, [0], feeds)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        runs = pipe.stats().stages[0].runs
    assert runs < len(feeds)
    files = {p.name.split("-")[0]: json.loads(p.read_text()) for p in out_dir.glob("*.json")}
    assert files["client"]["phases"]["collect"]["count"] == len(feeds)
    assert files["stage0"]["phases"]["publish"]["count"] == runs


def test_stage_batching_on_openvino(models, tmp_path):
    if missing_engine("openvino") is not None:
        skip_unless_ci(f"openvino: {missing_engine('openvino')}")
    model = models[0]
    cm = corepipe.compile(model, tmp_path / "ov", example_inputs={"ids": np.zeros((1, 6), np.int64)}, num_cores=2,
                          engine="openvino", dynamic_dims={"batch": (1, 4)}, buckets=None)
    assert [st.engine for st in cm.stages] == ["openvino", "openvino"]
    rng = np.random.default_rng(7)
    feeds = [ids(rng, 1 + i % 2, 6) for i in range(10)]
    with corepipe.load(cm.path, stage_batch=True) as pipe:
        futs = _held(pipe, [0], feeds)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        stats = pipe.stats()
        assert stats.stages[0].runs < stats.stages[0].requests and stats.failed == 0


def test_a_bucketed_batch_dim_batches_only_bucket_sizes(tmp_path):
    """With buckets on the batch dim each stage is compiled for those batch sizes alone: seven
    queued requests run as batches of 4, 2 and 1 rows (3 is no bucket)."""
    model = embed_model(tmp_path / "embed.onnx")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs={"ids": np.zeros((1, 6), np.int64)}, num_cores=2,
                          engine="onnxruntime", dynamic_dims={"batch": (1, 4)}, buckets={"batch": [1, 2, 4]})
    assert [st.shape_mode for st in cm.stages] == ["buckets", "buckets"]
    rng = np.random.default_rng(8)
    feeds = [ids(rng, 1, 6) for _ in range(7)]
    with corepipe.load(cm.path, stage_batch=True) as pipe:
        futs = _held(pipe, [0], feeds)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        assert pipe.stats().stages[0].runs == 3
