"""`corepipe tune` on a decoder (issue 25): candidate plans compiled as decoder plans and measured
with ``pipe.generate`` under the objective's workload, against onnxruntime's whole-model loop;
the chosen deployment written into the artifact (load, generate and inspect use it) and its
greedy tokens equal the reference; the objectives' workloads differ; options that count
requests are refused before anything is measured, and a failure writes nothing.
Real exports, real engines, real processes (the small GPT-2 of `tests/decoders.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from decoders import decoder_model_or_skip, prompts, reference_generate

import corepipe
from corepipe.errors import DeploymentError

pytestmark = pytest.mark.usefixtures("no_leaks")
#: a tiny workload: each measurement is a warm-up and one round
TINY = {"seconds": 0.05, "prompt_tokens": 6, "new_tokens": 4}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "corepipe", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_latency_tune_writes_a_deployment_that_generates_the_reference_tokens(tmp_path):
    model = decoder_model_or_skip("gpt2")
    seen: list[str] = []
    r = corepipe.tune(model, tmp_path / "lat", num_cores=2, objective="latency", max_length=32,
                      progress=lambda m, d, t: seen.append(m), **TINY)
    assert r.unit == "token" and r.workload.startswith("1 sequence at once")
    cands = r.candidates
    # every plan of 2 cores (a sequence runs on one replica of 2r x 1s x 1t: one core alone)
    assert sorted(p.name for p in cands) == ["1r x 1s x 2t", "1r x 2s x 1t", "2r x 1s x 1t"]
    assert [p.name for p in r.peers] == ["onnxruntime loop, 2 threads"]
    # every plan made the whole-model loop's tokens on the same prompts, in the run itself
    assert all("tokens = the loop's" in p.note for p in cands), [p.note for p in cands]
    assert all(p.ttft_s is not None and p.ttft_s > 0 and p.req_per_s > 0 for p in r.points)
    assert r.chosen.p50_s <= min(p.p50_s for p in cands) * (1 + r.tie)
    assert any("generate (1 sequence" in m for m in seen) and "write the artifact" in seen

    plan = corepipe.CompiledModel.open(tmp_path / "lat").plan
    dep = plan.deployment
    assert dep is not None and plan.decoder is not None
    assert (dep.objective, dep.unit, dep.cores) == ("latency", "token", 2)
    assert (dep.replicas, plan.num_cores, dep.threads_per_stage) == (r.chosen.replicas, r.chosen.stages,
                                                                     r.chosen.threads)
    assert dep.throughput == pytest.approx(r.chosen.req_per_s)
    data = json.loads((tmp_path / "lat" / "tune.json").read_text())
    assert data["unit"] == "token" and data["chosen"] == r.chosen.name
    assert (tmp_path / "lat" / "tune.png").stat().st_size > 1000

    batch = prompts(1000, 3, [5, 9, 2], seed=4)
    with corepipe.load(tmp_path / "lat") as pipe:  # the deployment from the artifact
        got = [list(pipe.generate(p, max_new_tokens=6, timeout=60)) for p in batch]
    assert got == reference_generate(model, batch, 6)

    shown = _cli("inspect", str(tmp_path / "lat"))
    assert shown.returncode == 0, shown.stderr
    assert "tuned for latency" in shown.stdout and "token/s" in shown.stdout and "between tokens" in shown.stdout


def test_throughput_tune_runs_its_sequences_at_once_and_keeps_max_candidates(tmp_path):
    model = decoder_model_or_skip("gpt2")
    r = corepipe.tune(model, tmp_path / "thr", num_cores=2, objective="throughput", sequences=3, peers=False,
                      max_candidates=2, engine="onnxruntime", **TINY)
    assert r.workload.startswith("3 sequences at once") and not r.peers
    # throughput favours replicas and stages: 2r x 1s x 1t and 1r x 2s x 1t measured, 1 x 1 x 2 listed
    assert sorted(p.name for p in r.candidates) == ["1r x 2s x 1t", "2r x 1s x 1t"]
    assert r.failed == [("1r x 1s x 2t", "not measured: over max_candidates=2")]
    assert r.chosen.req_per_s >= max(p.req_per_s for p in r.candidates) * (1 - r.tie)
    plan = corepipe.CompiledModel.open(tmp_path / "thr").plan
    assert plan.deployment is not None and plan.deployment.objective == "throughput"
    assert plan.decoder is not None and plan.decoder.max_sequences == 3  # its store holds the workload
    batch = prompts(1000, 3, 7, seed=5)
    with corepipe.load(tmp_path / "thr") as pipe:
        got = [list(pipe.generate(p, max_new_tokens=5, timeout=60)) for p in batch]
    assert got == reference_generate(model, batch, 5)


@pytest.mark.parametrize("options, match", [
    ({"rate": 5.0, "p99": 0.1}, r"rate= does not apply.*capacity question"),
    ({"max_batch": 4}, r"max_batch= does not apply.*continuous batching"),
    ({"concurrency": 4, "lengths": "4:8"}, r"lengths=, concurrency= do not apply"),
    ({"new_tokens": 1}, r"new_tokens >= 2"),
    ({"max_length": 12, "prompt_tokens": 10, "new_tokens": 4}, r"needs 14 tokens.*max_length 12"),
    ({"max_length": 8}, r"no decoder plan could be compiled.*1r x 1s x 2t: max_length 8 is too small"),
])
def test_bad_decoder_options_are_refused_and_write_nothing(tmp_path, options, match):
    model = decoder_model_or_skip("gpt2")
    with pytest.raises(DeploymentError, match=match):
        corepipe.tune(model, tmp_path / "t", num_cores=2, seconds=0.05, peers=False, engine="onnxruntime",
                      **options)
    assert not (tmp_path / "t").exists()


def test_a_decoder_workload_for_a_one_shot_model_is_refused(tmp_path):
    with pytest.raises(DeploymentError, match="describe a decoder's workload"):
        corepipe.tune("zoo:mlp", tmp_path / "t", num_cores=1, sequences=4, seconds=0.05)
    assert not (tmp_path / "t").exists()


def test_cli_says_which_flag_does_not_apply_to_a_decoder(tmp_path):
    model = decoder_model_or_skip("gpt2")
    r = _cli("tune", str(model), "-o", str(tmp_path / "t"), "-n", "2", "--rate", "5", "--p99", "100ms")
    assert r.returncode == 2
    assert "--rate does not apply" in r.stderr and "--sequences" in r.stderr, r.stderr
    assert not (tmp_path / "t").exists()


def test_cli_tunes_a_decoder_in_tokens(tmp_path):
    model = decoder_model_or_skip("gpt2")
    md = tmp_path / "results.md"
    r = _cli("tune", str(model), "-o", str(tmp_path / "t"), "-n", "2", "--objective", "latency", "--seconds", "0.05",
             "--prompt-tokens", "6", "--new-tokens", "4", "--max-length", "32", "--max-candidates", "1",
             "--no-peers", "-e", "onnxruntime", "--markdown", str(md))
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stdout and "time to first token" in r.stdout and "between tokens" in r.stdout, r.stdout
    assert "chosen: 1r x 1s x 2t" in r.stdout  # latency keeps the plan with the most threads first
    text = md.read_text()
    assert "| token/s |" in text and "--prompt-tokens 6 --new-tokens 4" in text
    assert corepipe.CompiledModel.open(tmp_path / "t").plan.deployment.unit == "token"
