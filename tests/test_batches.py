"""Batches: a batch-N request split into the model's batch (split_batch), a dynamic batch dim
taking it whole, and dynamic batching (load(max_batch=, batch_delay=)) merging waiting requests
with order, replay and error isolation unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from shapemodels import VOCAB, assert_same, embed_model, ids, reference

import corepipe

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
