"""Batches: a batch-N request split into the model's batch (split_batch), a dynamic batch dim
taking it whole, and dynamic batching (load(max_batch=, batch_delay=)) merging waiting requests
with order, replay and error isolation unchanged."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import skip_unless_ci
from shapemodels import VOCAB, abs_embed_model, assert_same, embed_model, ids, reference

import corepipe
from corepipe.engines import missing_engine

pytestmark = pytest.mark.usefixtures("no_leaks")

BACKENDS = ["inline", "local"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The embedding model, compiled at batch 1 (static) and with a dynamic batch dim 1..4."""
    root = tmp_path_factory.mktemp("batches")
    model = embed_model(root / "embed.onnx")
    static = corepipe.compile(model, root / "static", example_inputs={"ids": np.zeros((1, 6), np.int64)},
                              num_cores=2, engine="onnxruntime").path
    batched = corepipe.compile(model, root / "batched", example_inputs={"ids": np.zeros((1, 6), np.int64)},
                               num_cores=2, engine="onnxruntime", dynamic_dims={"batch": (1, 4)}, buckets=None).path
    return model, static, batched


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_batch_streams_the_items_of_a_batch_1_pipeline(models, backend):
    model, static, _ = models
    feeds = ids(np.random.default_rng(0), 5, 6)
    with corepipe.load(static, backend=backend) as pipe:
        with pytest.raises(corepipe.InputError, match=r"expected int64\[1,6\], got int64\[5,6\].*split_batch=True"):
            pipe.run(feeds)
        assert_same(pipe.run(feeds, split_batch=True), reference(model, feeds))
        fut = pipe.submit(feeds, split_batch=True)
        assert_same(fut.result(timeout=60), reference(model, feeds))
        assert pipe.stats().completed == 10  # five items each time


def test_split_batch_chunks_a_dynamic_batch_to_its_max(models):
    model, _, batched = models
    feeds = ids(np.random.default_rng(1), 10, 6)
    with corepipe.load(batched, backend="inline") as pipe:
        three = {"ids": feeds["ids"][:3]}
        assert_same(pipe.run(three), reference(model, three))
        assert_same(pipe.run(feeds, split_batch=True), reference(model, feeds))
        assert pipe.stats().completed == 1 + 3  # 3 rows whole, then 10 rows as 4 + 4 + 2


def test_split_batch_refuses_ragged_or_batchless_requests(models, tmp_path):
    model, static, _ = models
    with corepipe.load(static, backend="inline") as pipe:
        with pytest.raises(corepipe.InputError, match="an empty batch"):
            pipe.run({"ids": np.zeros((0, 6), np.int64)}, split_batch=True)
        with pytest.raises(corepipe.InputError, match=r"rows 0..0 of the batch: input 'ids': expected int64\[1,6\]"):
            pipe.run({"ids": np.zeros((3, 5), np.int64)}, split_batch=True)
        assert pipe.stats().completed == 0  # a bad batch queues nothing
    two = corepipe.compile(model, tmp_path / "two", example_inputs={"ids": np.zeros((2, 6), np.int64)},
                           engine="onnxruntime").path
    with corepipe.load(two, backend="inline") as pipe, \
            pytest.raises(corepipe.InputError, match=r"split_batch needs a batch axis.*input 'ids' is int64\[2,6\]"):
        pipe.run({"ids": np.zeros((4, 6), np.int64)}, split_batch=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_batching_merges_waiting_requests_and_keeps_order(models, backend):
    model, _, batched = models
    rng = np.random.default_rng(2)
    feeds = [ids(rng, 1 + i % 2, 6) for i in range(24)]
    # a long delay: the oldest waits for company, so a burst merges whatever the machine's speed
    with corepipe.load(batched, backend=backend, max_batch=4, batch_delay="1s") as pipe:
        futs = [pipe.submit(f) for f in feeds]
        outs = [f.result(timeout=60) for f in futs]
        for out, x in zip(outs, feeds):
            assert_same(out, reference(model, x))
        assert pipe.mean_batch > 1
        assert pipe.stats().completed == len(feeds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_request_among_merged_ones_fails_alone(models, backend):
    model, _, batched = models
    rng = np.random.default_rng(3)
    good = [ids(rng, 1, 6) for _ in range(7)]
    bad = {"ids": np.full((1, 6), VOCAB + 10**6, np.int64)}  # out of the table
    with corepipe.load(batched, backend=backend, max_batch=4, batch_delay="1s") as pipe:
        futs: list = []
        for i, f in enumerate(good):
            if i == 2:  # each checked before it can merge: its shape, then its values
                with pytest.raises(corepipe.InputError, match=r"dim 'sequence'|expected int64"):
                    pipe.submit({"ids": np.zeros((1, 7), np.int64)})
                with pytest.raises(corepipe.InputError, match=rf"value {VOCAB + 10**6} at \[0, 0\] is out of range"):
                    pipe.submit(bad)
            futs.append((f, pipe.submit(f)))
        for x, fut in futs:
            assert_same(fut.result(timeout=60), reference(model, x))
        assert pipe.mean_batch > 1 and pipe.stats().failed == 0
        assert_same(pipe.run(good[0]), reference(model, good[0]))  # and it goes on


def test_max_batch_needs_a_dynamic_batch_dim(models):
    _, static, batched = models
    with pytest.raises(corepipe.DeploymentError, match=r"has none .* dynamic_dims=\{'batch': \(1, 8\)\}"):
        corepipe.load(static, backend="inline", max_batch=8)
    with pytest.raises(corepipe.DeploymentError, match=r"within 1..4"):
        corepipe.load(batched, backend="inline", max_batch=8)
    with pytest.raises(corepipe.DeploymentError, match="batch_delay"):
        corepipe.load(batched, backend="inline", max_batch=2, batch_delay="soon")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_merged_batch_that_fails_inside_a_stage_is_sent_again_one_request_at_a_time(tmp_path, backend):
    """An id past the table reaches the Gather through an Abs: no intake check sees it, so it
    passes `submit`, merges with good requests, and the batch fails inside stage 0. The batcher
    sends that batch's members again alone: only the bad one fails, its neighbours are right."""
    model = abs_embed_model(tmp_path / "abs.onnx")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs={"ids": np.zeros((1, 6), np.int64)}, num_cores=2,
                          engine="onnxruntime", dynamic_dims={"batch": (1, 4)}, buckets=None)
    assert not cm.plan.input_checks  # nothing at intake can refuse it: the stage must
    rng = np.random.default_rng(4)
    good = [ids(rng, 1, 6) for _ in range(7)]
    bad = {"ids": np.full((1, 6), VOCAB + 7, np.int64)}
    stream = good[:2] + [bad] + good[2:]
    with corepipe.load(cm.path, backend=backend, max_batch=4, batch_delay="1s") as pipe:
        futs = [pipe.submit(f) for f in stream]  # a burst: [g g bad g] and [g g g g]
        exc = futs[2].exception(timeout=60)
        assert isinstance(exc, corepipe.StageError) and exc.stage == 0, exc
        for x, fut in zip(stream, futs):
            if x is not bad:
                assert_same(fut.result(timeout=60), reference(model, x))
        stats = pipe.stats()
        assert (stats.completed, stats.failed) == (7, 1)
        inner = pipe._inner.stats()  # the merged batch failed, then the bad request alone
        assert inner.failed == 2 and inner.completed == 3 + 1, (inner.completed, inner.failed)
        assert_same(pipe.run(good[0]), reference(model, good[0]))  # and it goes on


def test_merged_batches_in_flight_are_replayed_when_a_worker_dies(models):
    """Batching on, the local backend: stage 1's worker is stopped while merged batches queue
    behind it, then killed. The batches it held are replayed whole; every request is right."""
    model, _, batched = models
    rng = np.random.default_rng(5)
    feeds = [ids(rng, 1 + i % 2, 6) for i in range(16)]
    with corepipe.load(batched, backend="local", max_batch=4, batch_delay="50ms") as pipe:
        assert_same(pipe.run(feeds[0]), reference(model, feeds[0]))
        victim = pipe.worker_pids()[1]
        os.kill(victim, signal.SIGSTOP)  # holds what reaches it: neither works nor dies
        futs = [pipe.submit(f) for f in feeds]
        time.sleep(0.5)  # the batches have left the merger and wait in stage 1
        assert not any(f.done() for f in futs)
        os.kill(victim, signal.SIGKILL)
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=120), reference(model, x))
        stats = pipe.stats()
        assert stats.stages[1].restarts == 1 and stats.failed == 0
        assert pipe.mean_batch > 1
        assert victim not in pipe.worker_pids()


def test_requests_that_pad_to_one_bucket_merge(tmp_path):
    """Lengths 3, 5, 7 and 8 all pad to the bucket 8, so they merge into one batch; 12 and 9 pad
    to 16 and make a second. Each answer is trimmed back to its own length."""
    model = embed_model(tmp_path / "embed.onnx")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs={"ids": np.zeros((1, 8), np.int64)}, num_cores=2,
                          engine="onnxruntime", dynamic_dims={"batch": (1, 4), "sequence": (1, 16)},
                          buckets={"sequence": [8, 16]})
    rng = np.random.default_rng(6)
    feeds = [ids(rng, 1, n) for n in (3, 5, 7, 8, 12, 9)]
    with corepipe.load(cm.path, backend="inline", max_batch=4, batch_delay="1s") as pipe:
        futs = [pipe.submit(f) for f in feeds]
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        assert (pipe._batches, pipe.mean_batch) == (2, 3.0)


def test_dynamic_batching_on_openvino_stages(models, tmp_path):
    if missing_engine("openvino") is not None:
        skip_unless_ci(f"openvino: {missing_engine('openvino')}")
    model = models[0]
    cm = corepipe.compile(model, tmp_path / "ov", example_inputs={"ids": np.zeros((1, 6), np.int64)}, num_cores=2,
                          engine="openvino", dynamic_dims={"batch": (1, 4)}, buckets=None)
    assert [st.engine for st in cm.stages] == ["openvino", "openvino"]
    rng = np.random.default_rng(7)
    feeds = [ids(rng, 1 + i % 2, 6) for i in range(12)]
    with corepipe.load(cm.path, backend="local", max_batch=4, batch_delay="1s") as pipe:
        futs = [pipe.submit(f) for f in feeds]
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, x))
        assert pipe.mean_batch > 1 and pipe.stats().failed == 0


@pytest.mark.slow
def test_dynamic_batching_on_ray(models):
    ray = pytest.importorskip("ray")
    model, _, batched = models
    rng = np.random.default_rng(8)
    feeds = [ids(rng, 1 + i % 2, 6) for i in range(12)]
    with corepipe.load(batched, backend="ray", max_batch=4, batch_delay="1s") as pipe:
        assert pipe.backend == "ray"
        futs = [pipe.submit(f) for f in feeds]
        for x, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=120), reference(model, x))
        assert pipe.mean_batch > 1 and pipe.stats().completed == len(feeds)
    assert not ray.is_initialized()
