"""Mixed traffic in `corepipe.bench` / `corepipe bench`: lengths read from a spec or a file, named
after the model's dims and drawn with a fixed seed; requests cut from the example; the padded
static pipeline and the peers on the same requests; dynamic batching with a closed loop; and
the errors (a spec that does not parse, a length outside the compiled range, a model without the
dim). No timing asserts: behaviour only."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from shapemodels import VOCAB, embed_model, mean_model, reference
from typer.testing import CliRunner

import corepipe
from corepipe.artifact.dims import ShapeProfile
from corepipe.artifact.manifest import open_artifact
from corepipe.bench.lengths import (
    UNNAMED,
    check_in_range,
    name_profile,
    pad_request,
    parse_lengths,
    request_at,
)
from corepipe.bench.mixed import batch_sizes, plan_mixed
from corepipe.bench.proc import _batches
from corepipe.bench.reqfile import read_requests, write_requests
from corepipe.bench.traffic import Traffic
from corepipe.cli import app
from corepipe.errors import CorepipeError


@pytest.fixture(scope="module")
def embed(tmp_path_factory):
    return embed_model(tmp_path_factory.mktemp("traffic") / "embed.onnx")


def _values(profile: ShapeProfile, name: str) -> dict[int, float]:
    return {dict(d)[name]: w for d, w in profile.points}


def test_lengths_specs_read_as_profiles():
    uniform = parse_lengths("8:128")
    assert uniform.names == [UNNAMED] and sorted(_values(uniform, UNNAMED)) == list(range(8, 129))
    seen = parse_lengths("16,32,32,128")
    assert _values(seen, UNNAMED) == {16: 1.0, 32: 2.0, 128: 1.0}
    short = parse_lengths("~24:128")
    values = _values(short, UNNAMED)
    assert max(values) == 128 and min(values) >= 1 and 22 <= short.typical()[UNNAMED] <= 26  # 4096 draws
    assert parse_lengths("~24:128") == short  # a fixed seed: the same profile every time
    assert parse_lengths("sequence=8:16").names == ["sequence"]
    assert parse_lengths("sequence~24:128").names == ["sequence"]
    given = ShapeProfile.of("sequence", [5, 6])
    assert parse_lengths(given) is given


def test_lengths_files_hold_one_request_per_line_or_a_profile(tmp_path):
    text = tmp_path / "lengths.txt"
    text.write_text("# lengths seen yesterday\n37\n12\n\n37  # again\n")
    assert _values(parse_lengths(text), UNNAMED) == {12: 1.0, 37: 2.0}
    named = tmp_path / "shapes.txt"
    named.write_text("sequence=37 batch=2\nsequence=12 batch=1\n")
    assert sorted(parse_lengths(str(named)).names) == ["batch", "sequence"]
    js = tmp_path / "profile.json"
    js.write_text(json.dumps(ShapeProfile.of("sequence", {16: 3, 64: 1}).to_dict()))
    assert _values(parse_lengths(js), "sequence") == {16: 3, 64: 1}
    bad = tmp_path / "bad.txt"
    bad.write_text("12\nlong\n")
    with pytest.raises(CorepipeError, match=r"bad.txt, line 2: cannot read 'long'.*one request per line"):
        parse_lengths(bad)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(CorepipeError, match="holds no lengths"):
        parse_lengths(tmp_path / "empty.txt")
    with pytest.raises(CorepipeError, match="does not exist"):
        parse_lengths(tmp_path / "missing.txt")


@pytest.mark.parametrize("spec", ["8-128", "short", "~24", "sequence=", "8:128:4", ""])
def test_a_bad_lengths_spec_says_what_it_takes(spec):
    with pytest.raises(CorepipeError, match=r"cannot read lengths .*LO:HI \(uniform\), ~MEDIAN:CAP \(log-normal\)"):
        parse_lengths(spec)


def test_unnamed_lengths_vary_the_models_sequence_dim(embed, tmp_path):
    model = onnx.load(str(embed))
    assert name_profile(parse_lengths("8:16"), model).names == ["sequence"]
    with pytest.raises(CorepipeError, match=r"lengths name \['tokens'\].*symbolic dims: 'batch'.*'sequence'"):
        name_profile(parse_lengths("tokens=8:16"), model)
    from corepipe import zoo

    static, _ = zoo.get("mlp")
    with pytest.raises(CorepipeError, match=r"symbolic sequence dim.*none besides its batch.*dynamic_axes"):
        name_profile(parse_lengths("8:16"), static)


def test_a_length_outside_the_compiled_range_is_a_clear_error(embed):
    model = onnx.load(str(embed))
    with pytest.raises(CorepipeError, match=r"lengths of 'sequence' run 8..128, outside the range given in "
                                            r"dynamic_dims 1..64: widen the range.*or keep the lengths within 1..64"):
        plan_mixed(model, "8:128", None, dynamic_dims={"sequence": (1, 64)})
    with pytest.raises(CorepipeError, match="does not free"):
        check_in_range(ShapeProfile.of("sequence", [4]), {"batch": (1, 4)})
    mixed = plan_mixed(model, "8:128", 4)
    assert mixed.dims == {"sequence": (8, 128), "batch": (1, 4)} and mixed.batch == "batch"
    assert mixed.largest == {"sequence": 128, "batch": 1}
    from corepipe import zoo

    static, _ = zoo.get("mlp")
    with pytest.raises(CorepipeError, match=r"max_batch=4 merges requests along the model's batch dim.*no symbolic "
                                            r"dim on axis 0"):
        plan_mixed(static, None, 4)


def test_requests_are_the_example_cut_or_extended_and_padded_for_the_static_pipeline(embed):
    example = {"ids": np.arange(1, 9, dtype=np.int64).reshape(1, 8)}
    axes = {"ids": ("batch", "sequence")}
    short = request_at(example, axes, {"sequence": 3})
    assert short["ids"].tolist() == [[1, 2, 3]]
    long = request_at(example, axes, {"sequence": 11, "batch": 2})
    assert long["ids"].shape == (2, 11) and long["ids"][0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]
    padded = pad_request(short, axes, {"sequence": 6}, {"ids": 7})
    assert padded["ids"].tolist() == [[1, 2, 3, 7, 7, 7]]
    mixed = plan_mixed(onnx.load(str(embed)), "~6:16", None)
    traffic = Traffic(requests=12, profile=mixed.profile, seed=3)
    reqs = mixed.requests({"ids": np.ones((1, 16), np.int64)}, traffic)
    drawn = [d["sequence"] for d in traffic.draws()]
    assert [r["ids"].shape for r in reqs] == [(1, n) for n in drawn]
    assert drawn == [d["sequence"] for d in Traffic(requests=12, profile=mixed.profile, seed=3).draws()]
    assert all(r["ids"].shape == (1, 16) for r in mixed.padded(reqs))
    assert batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(6) == [1, 2, 4, 6] and batch_sizes(1) == [1]


def test_peer_processes_read_the_requests_in_order(tmp_path):
    reqs = [{"ids": np.full((1, n), n, np.int64), "m": np.ones((1, n), np.float32)} for n in (3, 5, 4)]
    write_requests(tmp_path / "r.npz", reqs)
    back = read_requests(tmp_path / "r.npz")
    assert [r["ids"].shape for r in back] == [(1, 3), (1, 5), (1, 4)] and set(back[1]) == {"ids", "m"}
    write_requests(tmp_path / "one.npz", reqs[:1])
    assert [set(r) for r in read_requests(tmp_path / "one.npz")] == [{"ids", "m"}]
    same = [{"x": np.full((1, 2), i, np.float32)} for i in range(3)]
    merged = _batches(same, 2)
    assert len(merged) == 3 and merged[0]["x"][:, 0].tolist() == [0, 1] and merged[1]["x"][:, 0].tolist() == [2, 0]


def test_bench_measures_mixed_lengths_against_the_padded_static_pipeline_and_the_peers(embed):
    feeds = {"ids": np.random.default_rng(0).integers(0, VOCAB, (1, 24)).astype(np.int64)}
    result = corepipe.bench(str(embed), num_cores=2, lengths="~8:24", requests=12, warmup=1, balance="estimate",
                            example_inputs=feeds, engine="onnxruntime")
    names = [r.setup for r in result.rows]
    assert names[-2:] == ["corepipe", "corepipe padded static (sequence 24)"]
    assert "openvino THROUGHPUT (2 streams)" in names and "ort 1 thread" in names
    assert all(r.req_per_s > 0 and 0 < r.p50_s <= r.p99_s for r in result.rows)
    assert "corepipe padded static (sequence 24)" in result.ratios
    assert "sequence drawn from" in result.traffic and "seed 0" in result.traffic
    assert "Traffic: sequence drawn" in result.to_markdown()
    assert all(s["shape_mode"] in ("dynamic", "buckets") for s in result.stages)
    # the peers get the requests the pipeline gets (the same lengths, in the same order); only
    # the padded static pipeline gets them padded
    digests = {r.setup: r.requests_digest for r in result.rows}
    assert all(digests.values()), digests
    padded = digests.pop("corepipe padded static (sequence 24)")
    assert len(set(digests.values())) == 1 and padded not in digests.values(), digests


def test_bench_with_max_batch_runs_a_closed_loop_against_no_batching_and_batched_peers(embed):
    feeds = {"ids": np.ones((1, 6), np.int64)}
    result = corepipe.bench(str(embed), num_cores=2, max_batch=2, requests=16, warmup=1, balance="estimate",
                            example_inputs=feeds, engine="onnxruntime", concurrency=4, batch_delay="20ms")
    rows = {r.setup: r for r in result.rows}
    # bench passed max_batch on: 4 clients, 20 ms for company, so requests merged (at most 2)
    assert rows["corepipe"].mean_batch is not None and 1 < rows["corepipe"].mean_batch <= 2, rows["corepipe"]
    assert rows["corepipe without batching"].mean_batch is None
    assert {"openvino THROUGHPUT (2 streams)", "openvino THROUGHPUT (2 streams, batch 2)", "corepipe",
            "corepipe without batching"} <= set(rows)
    assert rows["corepipe"].in_flight == 4 == rows["corepipe without batching"].in_flight
    assert rows["openvino THROUGHPUT (2 streams, batch 2)"].in_flight == 4
    assert all(r.req_per_s > 0 and 0 < r.p50_s <= r.p99_s for r in result.rows)
    assert "dynamic batching up to 2 along 'batch'; closed loop of 4 clients" in result.traffic


def test_bench_cli_takes_lengths_and_max_batch_and_refuses_what_cannot_run(embed, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", str(embed), "--lengths", "8-128", "-n", "1"])
    assert bad.exit_code == 2 and "--lengths: cannot read lengths '8-128'" in " ".join(bad.output.split())
    out = runner.invoke(app, ["bench", str(embed), "--lengths", "8:128", "--dynamic", "sequence=1:64", "-n", "1"])
    assert out.exit_code == 2
    assert "lengths of 'sequence' run 8..128, outside the range given" in " ".join(out.output.split())
    static = runner.invoke(app, ["bench", "zoo:mlp", "--max-batch", "4", "-n", "1"])
    assert static.exit_code == 2 and "--max-batch 4 merges requests along the model's batch dim" in " ".join(
        static.output.split())
    no_dim = runner.invoke(app, ["bench", "zoo:mlp", "--lengths", "8:16", "-n", "1"])
    assert no_dim.exit_code == 2 and "symbolic sequence dim" in " ".join(no_dim.output.split())
    np.savez(tmp_path / "feeds.npz", ids=np.ones((1, 8), np.int64))
    ok = runner.invoke(app, ["bench", str(embed), "--lengths", "4,8", "-n", "2", "--no-peers", "-r", "6",
                             "--warmup", "1", "--balance", "estimate", "-e", "onnxruntime", "--inputs",
                             str(tmp_path / "feeds.npz"), "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert [r["setup"] for r in data["rows"]] == ["corepipe", "corepipe padded static (sequence 8)"]
    assert data["traffic"].startswith("sequence drawn from")


def test_lengths_on_a_model_whose_answer_padding_changes_still_bench(tmp_path):
    """mean_model averages over the sequence: buckets are refused for it, so the pipeline runs
    its dynamic graph, and the padded static row is still measured (padding is the user's
    choice there, as today)."""
    model = mean_model(tmp_path / "mean.onnx")
    result = corepipe.bench(str(model), num_cores=2, lengths="3,5", requests=4, warmup=1, balance="estimate",
                            engine="onnxruntime", peers=False)
    assert [r.setup for r in result.rows] == ["corepipe", "corepipe padded static (sequence 5)"]


def test_tune_learns_mixed_lengths_and_the_batch_size(embed, tmp_path):
    """Every candidate is compiled with the dims free and measured at batch 1 and batched, on
    the lengths drawn; the peers get the same requests; the artifact written keeps the dims."""
    feeds = {"ids": np.ones((1, 8), np.int64)}
    seen: list[str] = []
    result = corepipe.tune(str(embed), tmp_path / "tuned", num_cores=2, seconds=0.2, max_candidates=1,
                           engine="onnxruntime", balance="estimate", example_inputs=feeds, lengths="4,8,8",
                           max_batch=2, concurrency=4, on_point=lambda p: seen.append(p.name))
    labels = [p.name for p in result.candidates]
    assert len(labels) == 2 and labels[1] == labels[0] + " x b2", labels
    assert {c.candidate.max_batch for c in result.candidates if c.candidate} == {1, 2}
    assert any(name.startswith("openvino THROUGHPUT") for name in seen)
    plan = open_artifact(result.path).plan
    assert plan.shapes is not None and plan.shapes.dims == {"sequence": (4, 8), "batch": (1, 2)}
    with corepipe.load(result.path, backend="inline") as pipe:
        five = {"ids": np.arange(5, dtype=np.int64).reshape(1, 5)}
        out = pipe.run(five)["y"]
        assert out.shape == (1, 5, 8)
        np.testing.assert_allclose(out, reference(embed, five)["y"], rtol=1e-4, atol=1e-4)
    runner = CliRunner()
    bad = runner.invoke(app, ["tune", str(embed), "-o", str(tmp_path / "t2"), "--lengths", "x", "-n", "1"])
    assert bad.exit_code == 2 and "--lengths: cannot read lengths 'x'" in " ".join(bad.output.split())
    out = runner.invoke(app, ["tune", str(embed), "-o", str(tmp_path / "t3"), "--lengths", "4:300", "--dynamic",
                              "sequence=1:64", "-n", "1"])
    assert out.exit_code == 2 and "outside the range given" in " ".join(out.output.split())
