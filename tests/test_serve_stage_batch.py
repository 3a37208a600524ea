"""`corepipe serve --stage-batch N`: the server's models get stage batching (`load(stage_batch=)`)
where it applies, the metrics show each stage's engine calls beside its requests, and the option
is refused where it cannot work. Stage batching itself: tests/test_stage_batch.py."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest
from prometheus_client import generate_latest
from shapemodels import assert_same, embed_model, ids, reference

import corepipe
from corepipe.errors import CorepipeError
from corepipe.serve.config import ServeConfig
from corepipe.serve.metrics import Metrics
from corepipe.serve.repository import load_models

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """``batched``: the embedding model with a dynamic batch dim 1..4; ``static``: batch 1."""
    root = tmp_path_factory.mktemp("serve_stagebatch")
    model = embed_model(root / "embed.onnx")
    example = {"ids": np.zeros((1, 6), np.int64)}
    corepipe.compile(model, root / "repo" / "batched", example_inputs=example, num_cores=2, engine="onnxruntime",
                     dynamic_dims={"batch": (1, 4)}, buckets=None)
    corepipe.compile(model, root / "repo" / "static", example_inputs=example, num_cores=2, engine="onnxruntime")
    return model, root / "repo"


def _metric(text: str, name: str, model: str, stage: int) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line and f'stage="{stage}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} stage {stage} not in the metrics")


def test_stage_batch_reaches_the_models_that_have_a_batch_dim(repo, caplog):
    model, root = repo
    with caplog.at_level(logging.WARNING, logger="corepipe.serve"):
        served = {m.name: m for m in load_models(root, ServeConfig(stage_batch=8))}
    try:
        assert "model static has no dynamic batch dim (or is a decoder): --stage-batch" in caplog.text
        pipe = served["batched"].pipe
        rng = np.random.default_rng(1)
        feeds = [ids(rng, 1 + i % 2, 6) for i in range(10)]
        last = pipe.worker_pids()[1]
        os.kill(last, signal.SIGSTOP)  # requests queue at stage 1 whatever the machine's speed
        try:
            futs = [pipe.submit(f) for f in feeds]
            time.sleep(0.5)
        finally:
            os.kill(last, signal.SIGCONT)
        for f, fut in zip(feeds, futs):
            assert_same(fut.result(timeout=60), reference(model, f))
        text = generate_latest(Metrics(list(served.values())).registry).decode()
        requests = _metric(text, "corepipe_stage_requests_total", "batched", 1)
        runs = _metric(text, "corepipe_stage_engine_runs_total", "batched", 1)
        assert requests == 10 and runs < requests, (requests, runs)  # capped at the dim's max, 4 rows
        assert _metric(text, "corepipe_stage_engine_runs_total", "static", 0) == 0
        assert_same(served["static"].pipe.run(feeds[0]), reference(model, feeds[0]))  # one row: batch 1
    finally:
        for m in served.values():
            m.close()


@pytest.mark.parametrize("config, message", [
    (ServeConfig(stage_batch=2, backend="ray"), "--stage-batch batches inside the local backend's stage workers"),
    (ServeConfig(stage_batch=0), "--stage-batch must be >= 1"),
])
def test_stage_batch_refused_where_it_cannot_work(config, message):
    with pytest.raises(CorepipeError, match=message):
        config.check()
