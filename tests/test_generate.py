"""`pipe.generate` on decoder artifacts (issue 25): greedy tokens equal the onnxruntime
whole-model loop (`tests/decoders.reference_generate`) at 2 and 4 stages with 8 sequences at once,
on the inline and local backends, and after kill -9 of a worker mid-generation; cancel and
abandon free the KV row; a full store makes sequences wait, not fail; a prompt too long is an
`InputError` before anything runs; only the hidden state and header words cross a boundary and
only token ids reach the client. Real processes, real engines; no leftover process or segment.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from decoders import decoder_model_or_skip, prompts, reference_generate

import corepipe
from corepipe.errors import InputError
from corepipe.runtime.sequences.header import TOKENS, WORDS
from corepipe.runtime.sequences.rings import HEADER

_BUILT: dict[tuple[Any, ...], Path] = {}


def decoder_artifact(tmp_path_factory: pytest.TempPathFactory, name: str, stages: int, **kw: Any) -> Path:
    """``name`` from the corpus compiled into ``stages`` stages (once per test session)."""
    kw.setdefault("max_sequences", 8)
    kw.setdefault("max_length", 64)
    key = (name, stages, tuple(sorted(kw.items())))
    if key not in _BUILT:
        model = decoder_model_or_skip(name)
        out = tmp_path_factory.mktemp(f"{name}-{stages}") / "art"
        _BUILT[key] = corepipe.compile(model, out, num_cores=stages, **kw).path
    return _BUILT[key]


def _concurrently(pipe: Any, batch: list[list[int]], new: int, **kw: Any) -> list[list[int]]:
    """Each prompt generated from its own thread, all at once."""
    out: list[list[int]] = [[] for _ in batch]

    def one(i: int) -> None:
        out[i] = list(pipe.generate(batch[i], max_new_tokens=new, timeout=60, **kw))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


MIXED = [3, 9, 17, 5, 12, 1, 24, 7]


@pytest.mark.parametrize("name, backend, stages", [
    ("gpt2", "inline", 2), pytest.param("gpt2", "local", 2, marks=pytest.mark.slow),
    pytest.param("gpt2", "local", 4, marks=pytest.mark.slow), pytest.param("llama", "local", 4, marks=pytest.mark.slow)])
def test_greedy_equals_the_whole_model_loop(tmp_path_factory, no_leaks, name, backend, stages) -> None:
    art = decoder_artifact(tmp_path_factory, name, stages)
    batch = prompts(1000, 8, MIXED, seed=3)
    want = reference_generate(decoder_model_or_skip(name), batch, 12)
    with corepipe.load(art, backend=backend) as pipe:
        got = _concurrently(pipe, batch, 12)
        counts = pipe.sequences()
        kept = [s.counters.kept for s in getattr(pipe, "_stages", []) if s.pairs]  # inline: the stages are here
    assert got == want
    # steps of the same rows as the step before fed its presents as their past (no gather)
    assert all(k > 0 for k in kept), kept
    assert counts["live"] == counts["rows_in_use"] == 0 and counts["finished"] == 8
    # 8 sequences x 12 tokens took far fewer steps than 96: decode steps ran batched
    assert counts["steps"] < 8 * 12


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_kill9_mid_generation_replays(tmp_path_factory, no_leaks, victim) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    batch = prompts(1000, 8, MIXED, seed=4)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 24)
    with corepipe.load(art, backend="local") as pipe:
        streams = [pipe.generate(p, max_new_tokens=24, timeout=60) for p in batch]
        got = [[next(s), next(s)] for s in streams]  # every sequence mid-generation
        os.kill(pipe.worker_pids()[victim], signal.SIGKILL)
        for g, s in zip(got, streams):
            g.extend(s)
        assert pipe.replayed >= 1 and pipe.stats().stages[victim].restarts == 1
    assert got == want


@pytest.mark.slow
def test_cancel_and_abandon_free_the_kv_row(tmp_path_factory, no_leaks) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    with corepipe.load(art, backend="local") as pipe:
        a = pipe.generate([5, 6, 7], max_new_tokens=40, timeout=60)
        b = pipe.generate([8, 9], max_new_tokens=40, timeout=60)
        next(a), next(b)
        assert pipe.sequences()["rows_in_use"] == 2
        a.close()
        assert a.finish_reason == "cancelled" and list(a) == []
        del b  # abandoned: garbage-collected
        gc.collect()
        deadline = time.monotonic() + 10
        while pipe.sequences()["rows_in_use"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipe.sequences()["rows_in_use"] == 0 and pipe.sequences()["live"] == 0
        # the pipeline goes on
        assert list(pipe.generate([5, 6, 7], max_new_tokens=4)) == reference_generate(
            decoder_model_or_skip("gpt2"), [[5, 6, 7]], 4)[0]


@pytest.mark.slow
def test_a_full_store_makes_sequences_wait(tmp_path_factory, no_leaks) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2, max_sequences=2)
    batch = prompts(1000, 5, [4, 6, 8], seed=5)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 8)
    with corepipe.load(art, backend="local") as pipe:
        streams = [pipe.generate(p, max_new_tokens=8, timeout=60) for p in batch]
        assert pipe.sequences()["waiting"] == 3 and pipe.sequences()["rows_in_use"] == 2
        got = [list(s) for s in streams]
    assert got == want


def test_a_prompt_too_long_is_refused_before_anything_runs(tmp_path_factory) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    with corepipe.load(art, backend="inline") as pipe:
        limit = pipe.decoder.max_length
        with pytest.raises(InputError, match=f"max_length of {limit}"):
            pipe.generate(list(range(1, limit)), max_new_tokens=2)
        for bad, match in (([], "non-empty"), ([1, 5000], "vocabulary"), ([[1, 2], [3, 4]], "one sequence")):
            with pytest.raises(InputError, match=match):
                pipe.generate(bad, max_new_tokens=2)
        with pytest.raises(InputError, match="top_p"):
            pipe.generate([1, 2], max_new_tokens=2, temperature=1.0, top_p=0.0)
        assert pipe.sequences()["steps"] == 0
        with pytest.raises(corepipe.CorepipeError, match="generate"):
            pipe.run({"input_ids": np.ones((1, 3), np.int64)})


@pytest.mark.slow
def test_only_the_hidden_state_and_header_words_cross(tmp_path_factory, no_leaks) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    with corepipe.load(art, backend="local") as pipe:
        spec = pipe.plan.decoder
        state = {p.past for p in spec.pairs} | {p.present for p in spec.pairs}
        rings = [[(t.name, t.dtype, t.shape) for t in r.specs] for r in pipe._rings]
        tokens = list(pipe.generate([1, 2, 3], max_new_tokens=5))
    assert all(isinstance(t, int) for t in tokens)
    hidden = pipe.plan.boundaries[1][0]
    width = hidden.shape[2:]
    rows = max(spec.max_length, spec.max_sequences)
    assert rings[0] == [(HEADER, "int64", (spec.max_sequences, WORDS)), ("input_ids", "int64", (rows,))]
    assert rings[1] == [(HEADER, "int64", (spec.max_sequences, WORDS)), (hidden.name, "float32", (rows, *width))]
    assert rings[2] == [(HEADER, "int64", (spec.max_sequences, WORDS)), (TOKENS, "int64", (spec.max_sequences,))]
    assert not state & {name for ring in rings for name, _, _ in ring}


@pytest.mark.slow
def test_sampling_is_seeded_and_survives_replay(tmp_path_factory, no_leaks) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    with corepipe.load(art, backend="inline") as pipe:
        first = list(pipe.generate([4, 5, 6], **kw))
        assert list(pipe.generate([4, 5, 6], **kw)) == first
        assert list(pipe.generate([4, 5, 6], **{**kw, "seed": 8})) != first
    with corepipe.load(art, backend="local") as pipe:
        s = pipe.generate([4, 5, 6], timeout=60, **kw)
        got = [next(s), next(s), next(s)]
        os.kill(pipe.worker_pids()[1], signal.SIGKILL)
        got.extend(s)
    assert got == first


def _cli(*args: str) -> Any:
    import subprocess

    from corepipe.runtime.process import module_command

    argv, env = module_command("corepipe.cli", *args)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd="/")


@pytest.mark.slow
def test_the_cli_streams_ids_and_text(tmp_path_factory, no_leaks) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    want = reference_generate(decoder_model_or_skip("gpt2"), [[1, 2, 3]], 6)[0]
    run = _cli("generate", str(art), "--prompt-ids", "1,2,3", "--max-new-tokens", "6", "--backend", "inline")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ",".join(map(str, want)) and "6 tokens (length)" in run.stderr
    from corepipe.artifact.tokenizer import open_tokenizer

    tok = open_tokenizer(art)  # the tokenizer compile copied from beside the model, verified
    ids = tok.encode("Once upon a time").ids
    want = reference_generate(decoder_model_or_skip("gpt2"), [ids], 6)[0]
    run = _cli("generate", str(art), "--prompt", "Once upon a time", "-n", "6")
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip("\n") == tok.decode(want)
    tampered = tmp_path_factory.mktemp("tampered") / "art"
    import shutil

    shutil.copytree(art, tampered)
    (tampered / "tokenizer.json").write_text((tampered / "tokenizer.json").read_text().replace("a", "b", 1))
    run = _cli("generate", str(tampered), "--prompt", "hi")
    assert run.returncode == 2 and "does not match the hash" in run.stderr
    run = _cli("generate", str(art), "--prompt-ids", "1,x")
    assert run.returncode == 2 and "comma-separated token ids" in run.stderr


def test_sampling_units() -> None:
    from corepipe.runtime.sequences.sampling import Sampling, sample
    from corepipe.runtime.sequences.store import KVStore

    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert sample(logits, Sampling(), 5) == int(np.argmax(logits))
    assert sample(logits, Sampling(temperature=1.0, top_k=1, seed=3), 5) == int(np.argmax(logits))
    assert sample(logits, Sampling(temperature=1.0, top_p=1e-6, seed=3), 5) == int(np.argmax(logits))
    draws = {sample(logits, Sampling(temperature=1.0, seed=s), 5) for s in range(20)}
    assert len(draws) > 5 and sample(logits, Sampling(temperature=1.0, seed=9), 5) == sample(
        logits, Sampling(temperature=1.0, seed=9), 5)
    for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=1.5), dict(seed=-1)):
        with pytest.raises(InputError):
            Sampling(**bad)  # type: ignore[arg-type]
    # the legacy layout [2, b, h, L, d]: rows on axis 1, tokens on axis 3
    from corepipe.artifact.decoder import StatePair

    pair = StatePair("past.0", "present.0", 0, 1, 3, "float32", (2, 3, 4))
    store = KVStore([pair], max_sequences=4, max_length=10)
    rows, past = np.array([2, 0]), np.array([3, 1])
    present = np.random.default_rng(1).standard_normal((2, 2, 3, 3 + 2, 4)).astype(np.float32)
    store.scatter(pair, rows, past, present, 3, 2)
    got = store.gather(pair, rows, past + 2, 5)
    assert np.array_equal(got[:, 0, :, 3:5], present[:, 0, :, 3:5])
    assert np.array_equal(got[:, 1, :, 1:3], present[:, 1, :, 3:5])


def test_eos_and_stop_end_a_sequence_after_yielding(tmp_path_factory) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    want = reference_generate(decoder_model_or_skip("gpt2"), [[7, 8, 9]], 12)[0]
    with corepipe.load(art, backend="inline") as pipe:
        s = pipe.generate([7, 8, 9], max_new_tokens=12, eos_token_id=want[3])
        assert list(s) == want[: want.index(want[3]) + 1] and s.finish_reason == "eos"
        s = pipe.generate([7, 8, 9], max_new_tokens=12, stop=[want[4:6]])
        got = list(s)
        assert got[-2:] == want[4:6] and got == want[: len(got)] and s.finish_reason == "stop"
        s = pipe.generate([7, 8, 9], max_new_tokens=12)
        assert list(s) == want and s.finish_reason == "length"
        assert pipe.sequences()["rows_in_use"] == 0


def test_prefills_of_one_length_go_as_one_step() -> None:
    from corepipe.runtime.sequences.header import NEW, PAST, ROW
    from corepipe.runtime.sequences.sampling import Sampling
    from corepipe.runtime.sequences.scheduler import Scheduler

    sched = Scheduler(8, 1, max_tokens=16)
    for prompt in ([1, 2, 3, 4], [5, 6], [7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18], [19, 20, 21, 22]):
        sched.open(prompt, 4, Sampling(), frozenset(), ())
    head, ids, _ = sched.take(1.0)  # the four-token prompts, up to 16 tokens: four of them
    assert ids.tolist() == [[1, 2, 3, 4], [7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18]]
    assert head[:, NEW].tolist() == [4] * 4 and head[:, PAST].tolist() == [0] * 4 and len(set(head[:, ROW])) == 4
    assert sched.take(1.0)[1].tolist() == [[5, 6]]  # first in line now; the last 4-token one is not its length
    assert sched.take(1.0)[1].tolist() == [[19, 20, 21, 22]]


@pytest.mark.parametrize("backend", ["inline", pytest.param("local", marks=pytest.mark.slow)])
def test_greedy_equals_the_reference_with_prompts_of_one_length(tmp_path_factory, no_leaks, backend) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    batch = prompts(1000, 6, [9, 9, 9, 4, 9, 4], seed=5)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 10)
    with corepipe.load(art, backend=backend) as pipe:
        assert _concurrently(pipe, batch, 10) == want
