"""`corepipe bench` runs every baseline and the pipeline and reports ratios (no timing asserts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from corepipe import zoo
from corepipe.cli import app
from corepipe.cli.bench import run_bench

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_run_bench_reports_every_setup():
    result = run_bench("zoo:mlp", cores=1, requests=10, warmup=1, balance="estimate")
    names = [r.name for r in result.rows]
    assert names == ["ort 1 thread", "ort K=1 thread", "K=1 session", "corepipe"]
    assert all(r.throughput > 0 and r.latency_p50_s > 0 for r in result.rows)
    assert len(result.row("corepipe").rss_bytes) == len(result.stages) == 1
    assert set(result.ratios()) == {"vs 1 thread", "vs 1 x 1 thread (ideal)", "vs K=1 thread",
                                    "vs K=1 session"}
    assert result.timeline is not None and len(result.timeline.requests) >= 10
    assert "timeline" not in result.to_dict()
    assert result.handoff_per_boundary_s() is not None


def test_bench_cli_prints_json_and_writes_markdown(tmp_path):
    _, feeds = zoo.get("tiny_cnn")
    np.savez(tmp_path / "in.npz", **feeds)
    out_md = tmp_path / "r.md"
    res = CliRunner().invoke(app, ["bench", "zoo:tiny_cnn", "--requests", "20", "--warmup", "1",
                                   "--balance", "estimate", "--inputs", str(tmp_path / "in.npz"),
                                   "--json", "--markdown", str(out_md), "-k", "2",
                                   "--timeline", str(tmp_path / "t.png")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {r["name"] for r in data["rows"]} >= {"ort 1 thread", "corepipe"}
    assert "vs 1 thread" in data["ratios"]
    assert "| corepipe |" in out_md.read_text() and "--num-cores 2" in out_md.read_text()
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["bench", "missing.onnx"], "does not exist"),
    (["bench", "zoo:mlp", "--balance", "guess"], "--balance"),
    (["bench", "zoo:mlp", "--cores", "99"], "--cores 99: this process may run on only"),
    (["bench", "zoo:mlp", "-n", "99"], "--num-cores 99"),
    (["bench", "zoo:mlp", "--timeline", "t.gif"], "unknown picture format"),
])
def test_bench_cli_errors(args, message):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
