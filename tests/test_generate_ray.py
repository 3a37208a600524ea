"""`pipe.generate` on the ``ray`` backend (issue 25), on a private loopback Ray instance: greedy
tokens equal the onnxruntime whole-model loop (`reference_generate`) and the ``local`` backend's
at 2 stages with 8 sequences at once; an actor killed mid-generation (``ray.kill``, or kill -9 of
its process) is restarted, its KV rebuilt by replaying the live sequences' tokens, and the tokens
stay the same; a step message holds only the header words and the hidden state (or input ids,
or token ids); nothing is left running after close.
"""

from __future__ import annotations

import os
import signal

import pytest
from decoders import decoder_model_or_skip, prompts, reference_generate
from test_generate import MIXED, _concurrently, decoder_artifact

import corepipe
from corepipe.runtime.sequences.header import TOKENS, WORDS
from corepipe.runtime.sequences.rings import HEADER

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]


def test_greedy_equals_the_whole_model_loop_and_local(tmp_path_factory) -> None:
    pytest.importorskip("ray")
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    batch = prompts(1000, 8, MIXED, seed=3)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 12)
    with corepipe.load(art, backend="ray") as pipe:
        assert pipe.data_path == "stream"
        spec = pipe.plan.decoder
        state = {p.past for p in spec.pairs} | {p.present for p in spec.pairs}
        frames = [[(t.name, t.dtype, len(t.shape)) for t in pipe._boundary(b)] for b in range(3)]
        words = {pipe._boundary(b)[0].shape[1] for b in range(3)}
        got = _concurrently(pipe, batch, 12)
        counts = pipe.sequences()
    with corepipe.load(art, backend="local") as pipe:
        local = _concurrently(pipe, batch, 12)
    assert got == want == local
    assert counts["live"] == counts["rows_in_use"] == 0 and counts["finished"] == 8
    assert counts["steps"] < 8 * 12  # decode steps ran batched
    hidden = pipe.plan.boundaries[1][0]
    assert frames == [[(HEADER, "int64", 2), ("input_ids", "int64", 2)],
                      [(HEADER, "int64", 2), (hidden.name, "float32", 3)],
                      [(HEADER, "int64", 2), (TOKENS, "int64", 1)]]
    assert words == {WORDS}
    assert not state & {name for f in frames for name, _, _ in f}


@pytest.mark.parametrize("how, victim", [("ray.kill", 1), ("kill -9", 0)])
def test_an_actor_killed_mid_generation_replays(tmp_path_factory, how, victim) -> None:
    ray = pytest.importorskip("ray")
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    batch = prompts(1000, 8, MIXED, seed=4)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 24)
    with corepipe.load(art, backend="ray") as pipe:
        streams = [pipe.generate(p, max_new_tokens=24, timeout=120) for p in batch]
        got = [[next(s), next(s)] for s in streams]  # every sequence mid-generation
        old = pipe.placement()[victim]["pid"]
        if how == "ray.kill":
            ray.kill(pipe.actors()[victim], no_restart=True)
        else:
            os.kill(old, signal.SIGKILL)
        for g, s in zip(got, streams):
            g.extend(s)
        assert pipe.replayed >= 1 and pipe.sequences()["replays"] >= 1
        assert pipe.placement()[victim]["pid"] != old
    assert got == want


def test_the_object_store_path_gives_the_same_tokens(tmp_path_factory) -> None:
    pytest.importorskip("ray")
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    batch = prompts(1000, 3, [4, 11, 2], seed=5)
    with corepipe.load(art, backend="ray", data_path="object-store") as pipe:
        assert pipe.data_path == "object-store"
        got = _concurrently(pipe, batch, 8)
    assert got == reference_generate(decoder_model_or_skip("gpt2"), batch, 8)


def test_replicas_keep_each_sequence_on_its_replica(tmp_path_factory) -> None:
    ray = pytest.importorskip("ray")
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    batch = prompts(1000, 4, [5, 13, 2, 8], seed=6)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 32)
    with corepipe.load(art, backend="ray", replicas=2) as pipe:
        streams = [pipe.generate(p, max_new_tokens=32, timeout=120) for p in batch]
        assert sorted(pipe.replica_of(s) for s in streams) == [0, 0, 1, 1]
        got = [[next(s)] for s in streams]
        ray.kill(pipe.replica(0).actors()[1], no_restart=True)  # replica 0's last stage dies
        for g, s in zip(got, streams):
            g.extend(s)
        mine = [pipe.replica(r).sequences() for r in (0, 1)]
        restarts = [pipe.replica(r).stats().stages[1].restarts for r in (0, 1)]
    assert got == want
    assert [m["finished"] for m in mine] == [2, 2] and mine[1]["replays"] == 0 and restarts == [1, 0]
