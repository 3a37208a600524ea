"""Balance under load and `corepipe tune`, end to end on tiny models with real processes: the plans
they write, the artifact with its deployment and picture, the capacity answer and its errors,
and that an artifact appears whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from graphcases import big_weight_model, run_reference

import corepipe
from corepipe import zoo
from corepipe.tune import TuneResult

pytestmark = pytest.mark.usefixtures("no_leaks")
CORES = len(os.sched_getaffinity(0))
FAST = {"seconds": 0.25, "load_rounds": 1}


def _same(out, ref):
    for name in ref:
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def test_balance_under_load_writes_a_valid_plan_with_the_times_measured_under_load(tmp_path):
    case = big_weight_model([256 * 1024] * 6)
    steps = []
    dep = corepipe.Deployment(replicas=1, threads_per_stage=1, cores=2)
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=2, balance="load",
                          deployment=dep, load_rounds=2, load_seconds=0.2,
                          progress=lambda step, done, total: steps.append(step))
    plan = corepipe.CompiledModel.open(cm.path).plan  # verified from disk
    assert plan.balance == "load"
    assert all(st.loaded_s is not None and st.loaded_s > 0 for st in plan.stages)
    assert any("balanced under load" in n for n in plan.notes)
    assert plan.deployment is not None and plan.deployment.throughput and plan.deployment.latency_p50_s
    assert any(s.startswith("balance under load: cut [") and "req/s" in s for s in steps)
    ref = run_reference(case.model, case.feeds)
    with corepipe.load(cm.path) as pipe:
        _same(pipe.run(case.feeds), ref)
    with pytest.raises(corepipe.CompileError, match="balance='load' runs every stage on its own cores"):
        corepipe.compile(case.model, tmp_path / "b", example_inputs=case.inputs(), num_cores=CORES + 1,
                         balance="load")


def _cli(*args, timeout=300):
    env = dict(os.environ, COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "corepipe", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_tune_end_to_end_writes_a_loadable_artifact_with_its_deployment_and_picture(tmp_path):
    out = tmp_path / "tuned"
    r = _cli("tune", "zoo:mlp", "-o", str(out), "--num-cores", "2", "--seconds", "0.25", "--load-rounds", "1",
             "--rate", "200", "--p99", "500ms")
    assert r.returncode == 0, r.stderr
    for peer in ("ort 1 thread", "ort 2 threads", "2 sessions in parallel", "ort 1 session shared by 2 threads",
                 "openvino THROUGHPUT (2 streams)", "openvino LATENCY (2 threads, 1 in flight)"):
        assert peer in r.stdout, peer
    assert "★ corepipe" in r.stdout and "Capacity: 200 req/s within p99 500 ms" in r.stdout
    assert "Erlang C" in r.stdout
    figures = json.loads((out / "tune.json").read_text())
    assert {p["kind"] for p in figures["points"]} == {"candidate", "peer"}
    assert figures["chosen"] in [p["name"] for p in figures["points"] if p["kind"] == "candidate"]
    assert figures["capacity"]["replicas"] >= 1
    png = (out / "tune.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    dep = corepipe.CompiledModel.open(out).plan.deployment
    assert dep is not None and dep.objective == "throughput" and dep.cores == 2
    assert dep.replicas * len(corepipe.CompiledModel.open(out).stages) * dep.threads_per_stage <= 2
    chosen = next(p for p in figures["points"] if p["name"] == figures["chosen"])
    assert dep.throughput == pytest.approx(chosen["req_per_s"])
    assert all(p["precision"] == "fp32" for p in figures["points"])
    assert "…" not in r.stdout, "a value cut in the table"
    model, feeds = zoo.get("mlp")
    ref = run_reference(model, feeds)
    with corepipe.load(out) as pipe:  # the deployment is the default...
        assert pipe.replicas == dep.replicas
        _same(pipe.run(feeds), ref)
    with corepipe.load(out, replicas=1, threads_per_stage=1) as pipe:  # ...and arguments override it
        assert pipe.replicas == 1
        _same(pipe.run(feeds), ref)
    shown = _cli("inspect", str(out))
    assert shown.returncode == 0 and "deployment:" in shown.stdout and "tuned for throughput" in shown.stdout


def test_tune_errors_write_nothing(tmp_path):
    out = tmp_path / "never"
    r = _cli("tune", "zoo:mlp", "-o", str(out), "-k", "2", "--no-peers", "--max-candidates", "1",
             "--seconds", "0.2", "--rate", "10", "--p99", "1us")
    assert r.returncode == 2 and "error: no core count holds a p99 of 0.001 ms" in r.stderr, r.stderr
    assert not out.exists()
    with pytest.raises(corepipe.DeploymentError, match="no measured plan meets the p99 latency budget"):
        corepipe.tune("zoo:mlp", out, num_cores=2, objective="latency", latency_budget=1e-7, peers=False,
                      max_candidates=1, **FAST)
    with pytest.raises(corepipe.DeploymentError, match="no core count up to 2 holds"):
        corepipe.tune("zoo:mlp", out, num_cores=2, rate=1e9, p99="30s", max_cores=2, peers=False, max_candidates=1,
                      **FAST)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-written sibling either
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    seen = []
    with pytest.raises(corepipe.ArtifactError, match="not a corepipe artifact"):
        corepipe.tune("zoo:mlp", foreign, num_cores=2, progress=lambda m, d, t: seen.append(m), **FAST)
    assert seen == [], "a directory that cannot be written is refused before any measuring"


def test_an_interrupted_tune_leaves_the_old_artifact_as_it_was(tmp_path):
    out = tmp_path / "art"
    model, feeds = zoo.get("mlp")
    corepipe.compile(model, out, example_inputs=feeds, num_cores=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    seen = []

    def interrupt(message, done, total):
        seen.append(message)
        if "measure under load" in message and len([m for m in seen if "measure under load" in m]) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises, in the middle of the search

    with pytest.raises(KeyboardInterrupt):
        corepipe.tune("zoo:mlp", out, num_cores=2, peers=False, progress=interrupt, **FAST)
    assert any(m.startswith("measured ") for m in seen), "one candidate was measured before the interrupt"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_tune_from_python_returns_what_it_wrote(tmp_path):
    """The library call: a `TuneResult` whose chosen plan is the artifact's deployment, whose
    figures are tune.json's, with every point reported to ``on_point`` as it was measured."""
    model, feeds = zoo.get("mlp")
    seen, steps = [], []
    result = corepipe.tune(model, tmp_path / "t", num_cores=2, peers=False, max_candidates=2, example_inputs=feeds,
                           on_point=seen.append, progress=lambda m, d, t: steps.append((m, d, t)), **FAST)
    assert isinstance(result, TuneResult) and result.path == tmp_path / "t" and result.model == "ModelProto"
    ch = result.chosen
    assert (ch.replicas, ch.stages, ch.threads) == (ch.candidate.replicas, ch.candidate.stages, ch.candidate.threads)
    assert ch.replicas * ch.stages * ch.threads == 2 and ch.req_per_s > 0 and ch.p50_s > 0
    assert {p.name for p in seen} == {p.name for p in result.points} and result.peers == []
    assert result.pareto and all(p in result.points for p in result.pareto)
    assert all(d <= t for _, d, t in steps) and steps[-1][1] == steps[-1][2]
    twice = [s for i, s in enumerate(steps) if s in steps[:i]]
    assert twice == [], "progress= hears each step once (issue 28: every compile step came twice)"
    dep = corepipe.CompiledModel.open(result.path).plan.deployment
    assert (dep.replicas, dep.threads_per_stage) == (ch.replicas, ch.threads)
    figures = json.loads((result.path / "tune.json").read_text())
    assert figures == json.loads(json.dumps(result.to_dict(), default=float))
    text = result.to_markdown()
    assert f"**{ch.name}** (chosen)" in text and "| R x S x T |" in text


def test_balance_load_over_dynamic_dims_writes_a_plan_on_the_library_and_the_cli(tmp_path):
    """Issue 28: every trial cut of ``balance="load"`` over dynamic dims was written without its
    shapes and refused ("needs its 'shapes'"): `compile --dynamic --balance load`, and so `tune
    --lengths` (whose default balance is load) crashed on every multi-stage candidate."""
    from shapemodels import embed_model, ids, reference

    model = embed_model(tmp_path / "embed.onnx")
    cm = corepipe.compile(str(model), tmp_path / "lib", num_cores=2, balance="load", engine="onnxruntime",
                          dynamic_dims={"sequence": (1, 16)}, buckets=None, load_rounds=1, load_seconds=0.1,
                          example_inputs=ids(np.random.default_rng(0), 1, 8))
    plan = corepipe.CompiledModel.open(cm.path).plan
    assert plan.balance == "load" and plan.shapes is not None and plan.shapes.dims["sequence"] == (1, 16)
    assert all(st.loaded_s for st in plan.stages) and len(plan.stages) == 2
    feeds = ids(np.random.default_rng(1), 1, 5)
    with corepipe.load(cm.path) as pipe:
        _same(pipe.run(feeds), reference(model, feeds))
    r = _cli("compile", str(model), "-o", str(tmp_path / "cli"), "-n", "2", "--dynamic", "sequence=1:16",
             "--balance", "load", "-e", "onnxruntime", "--buckets", "none")
    assert r.returncode == 0, r.stderr
    assert corepipe.CompiledModel.open(tmp_path / "cli").plan.balance == "load"
    t = _cli("tune", str(model), "-o", str(tmp_path / "tuned"), "-n", "2", "--lengths", "~6:16", "--seconds", "0.1",
             "--load-rounds", "1", "--no-peers", "-e", "onnxruntime")
    assert t.returncode == 0, t.stderr
    tuned = corepipe.CompiledModel.open(tmp_path / "tuned").plan
    assert tuned.shapes is not None and tuned.deployment is not None and (tmp_path / "tuned" / "tune.png").exists()

