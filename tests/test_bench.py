"""`corepipe bench` runs every baseline and the pipeline and reports ratios (no timing asserts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from corepipe import zoo
from corepipe.cli import app
from corepipe.cli.bench import run_bench
from corepipe.engines import cpu_math

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_run_bench_reports_every_setup():
    result = run_bench("zoo:mlp", cores=1, requests=10, warmup=1, balance="estimate")
    names = [r.name for r in result.rows]
    assert names == ["ort 1 thread", "ort K=1 thread", "K=1 session",
                     "ort 1 session shared by 1 thread (fp32)", "openvino THROUGHPUT (1 stream, fp32)",
                     "openvino LATENCY (1 thread, 1 in flight, fp32)", "corepipe"]
    assert all(r.throughput > 0 and r.latency_p50_s > 0 for r in result.rows)
    assert all(len(r.rss_bytes) == 1 and r.rss_bytes[0] > 0 for r in result.rows)
    assert len(result.row("corepipe").rss_bytes) == len(result.stages) == 1
    assert set(result.ratios()) == {"vs 1 thread", "vs 1 x 1 thread (ideal)", "vs K=1 thread",
                                    "vs K=1 session", "vs 1 session shared by 1 thread",
                                    "vs openvino THROUGHPUT", "vs openvino LATENCY"}
    assert result.memory_ratio() is not None and result.memory_ratio() > 0
    assert result.timeline is not None and len(result.timeline.requests) >= 10
    assert "timeline" not in result.to_dict()
    assert result.handoff_per_boundary_s() is not None


def test_bench_cli_prints_json_and_writes_markdown(tmp_path):
    _, feeds = zoo.get("tiny_cnn")
    np.savez(tmp_path / "in.npz", **feeds)
    out_md = tmp_path / "r.md"
    precision = "bf16" if cpu_math().bf16 else "fp32"
    res = CliRunner().invoke(app, ["bench", "zoo:tiny_cnn", "--requests", "20", "--warmup", "1",
                                   "--balance", "estimate", "--inputs", str(tmp_path / "in.npz"),
                                   "--precision", precision,
                                   "--json", "--markdown", str(out_md), "-k", "2",
                                   "--timeline", str(tmp_path / "t.png")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    names = {r["name"] for r in data["rows"]}
    assert {"ort 1 thread", "corepipe", f"openvino THROUGHPUT (2 streams, {precision})",
            f"openvino LATENCY (2 threads, 1 in flight, {precision})"} <= names, names
    assert data["precision"] == precision and all(s["precision"] == precision for s in data["stages"])
    assert "vs 1 thread" in data["ratios"] and "vs openvino THROUGHPUT" in data["ratios"]
    assert data["memory_ratio_vs_openvino_throughput"] > 0
    text = out_md.read_text()
    assert "| corepipe |" in text and "--num-cores 2" in text and f"--precision {precision}" in text
    assert "OpenVINO THROUGHPUT process" in text
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


def test_the_stage_path_and_boundaries_add_up_per_stage_index_over_replicas():
    """With replicas, a request crosses one copy of each stage: its path's run time is the
    per-index mean (busy over requests, both summed over the copies), not the copies' sum."""
    from dataclasses import replace

    from corepipe.cli.bench import _boundary_means, _path_service_s
    from corepipe.runtime.base import BoundaryStats, PipelineStats, StageStats

    def snap(busy: list[list[float]], n: list[list[int]], hand: list[list[tuple[int, float]]]) -> PipelineStats:
        stages = [replace(StageStats.measured(i, None, "0", n[r][i], busy[r][i], 1.0), replica=r)
                  for r in range(2) for i in range(2)]
        bounds = [BoundaryStats(index=i, nbytes=4, handoffs=c, mean_s=m, replica=r)
                  for r in range(2) for i, (c, m) in enumerate(hand[r])]
        return PipelineStats("local", 0, 0, 0, 1.0, 0.0, 0.0, 0.0, 0.0, stages, bounds, replicas=2)

    before = snap([[1.0, 2.0], [1.0, 2.0]], [[10, 10], [10, 10]], [[(10, 0.001)] * 3, [(10, 0.001)] * 3])
    # 4 more requests, 3 on replica 0 and 1 on replica 1: stage 0 takes 0.1 s, stage 1 0.2 s
    after = snap([[1.3, 2.6], [1.1, 2.2]], [[13, 13], [11, 11]],
                 [[(13, (0.01 + 3 * 0.002) / 13)] * 3, [(11, (0.01 + 0.002) / 11)] * 3])
    assert _path_service_s(before, after) == pytest.approx(0.3)
    assert _boundary_means(before, after) == pytest.approx([0.002] * 3)
    assert _path_service_s(before, before) == 0.0 and _boundary_means(before, before) == [0.0] * 3
