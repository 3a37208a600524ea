"""Replicas of a decoder (issue 25): `corepipe.load(art, replicas=R)` on the ``local`` backend
sends each new sequence to the less loaded replica and keeps it there, every step and any replay
after a worker's death; tokens equal the whole-model loop; the other replica goes on undisturbed.
"""

from __future__ import annotations

import os
import signal

from decoders import decoder_model_or_skip, prompts, reference_generate
from test_generate import MIXED, decoder_artifact

import corepipe


def test_replicas_keep_each_sequence_on_its_replica(tmp_path_factory, no_leaks) -> None:
    art = decoder_artifact(tmp_path_factory, "gpt2", 1)  # 2 replicas x 1 stage on 2 cores
    batch = prompts(1000, 8, MIXED, seed=6)
    want = reference_generate(decoder_model_or_skip("gpt2"), batch, 32)
    with corepipe.load(art, backend="local", replicas=2, threads_per_stage=1) as pipe:
        streams = [pipe.generate(p, max_new_tokens=32, timeout=60) for p in batch]
        homes = [pipe.replica_of(s) for s in streams]
        assert sorted(homes) == [0] * 4 + [1] * 4  # new sequences go to the less loaded replica
        got = [[next(s), next(s)] for s in streams]
        os.kill(pipe.worker_pids(replica=0)[0], signal.SIGKILL)  # replica 0's stage dies
        for g, s in zip(got, streams):
            g.extend(s)
        mine = [pipe.replica(r).sequences() for r in (0, 1)]
        restarts = [pipe.replica(r).stats().stages[0].restarts for r in (0, 1)]
        total = pipe.sequences()
    assert got == want
    # each sequence ran (and replayed) on its replica only: replica 0 restarted and replayed at most
    # its own 4 live sequences; replica 1 went on undisturbed
    assert [m["finished"] for m in mine] == [4, 4] and total["finished"] == 8
    assert restarts == [1, 0] and mine[0]["replays"] <= 4 and mine[1]["replays"] == 0
