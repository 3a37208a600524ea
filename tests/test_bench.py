"""`corepipe.bench` / `corepipe bench` run every peer and the pipeline and report rows and ratios
(no timing asserts); the ratio formulas are checked by value on hand-made rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import corepipe
from corepipe import zoo
from corepipe.bench import BenchResult, BenchRow, Ratio
from corepipe.cli import app
from corepipe.engines import cpu_math

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_bench_reports_every_setup_with_its_precision():
    result = corepipe.bench("zoo:mlp", num_cores=1, requests=10, warmup=1, balance="estimate")
    assert isinstance(result, BenchResult)
    names = [r.setup for r in result.rows]
    assert names == ["ort 1 thread", "ort K=1 thread", "K=1 session", "ort 1 session shared by 1 thread",
                     "openvino THROUGHPUT (1 stream)", "openvino LATENCY (1 thread, 1 in flight)", "corepipe"]
    assert all(r.req_per_s > 0 and 0 < r.p50_s <= r.p99_s for r in result.rows)
    assert all(r.precision == "fp32" and r.in_flight >= 1 for r in result.rows)
    assert all(len(r.process_rss) == 1 and r.rss_bytes == r.process_rss[0] > 0 for r in result.rows)
    assert result.pipeline.kind == "corepipe" and len(result.pipeline.process_rss) == len(result.stages) == 1
    assert set(result.ratios) == set(names[:-1]) | {"1 x ort 1 thread (ideal)"}
    assert not any(r.across_precisions for r in result.ratios.values())
    assert result.memory_ratio() is not None and result.memory_ratio() > 0
    assert result.timeline is not None and len(result.timeline.requests) >= 10
    assert "timeline" not in result.to_dict()
    assert result.handoff_per_boundary_s() is not None
    alone = corepipe.bench("zoo:mlp", num_cores=1, requests=5, warmup=1, balance="estimate", peers=False)
    assert [r.setup for r in alone.rows] == ["corepipe"] and alone.ratios == {}
    assert "| corepipe | fp32 |" in alone.to_markdown()


def _row(setup: str, req_per_s: float, precision: str = "fp32", p50: float = 0.01, kind: str = "peer") -> BenchRow:
    return BenchRow(setup, kind, "openvino" if setup.startswith("openvino") else "onnxruntime", precision,
                    req_per_s, p50, p50 * 2, 1, (100 * 2**20,), (90 * 2**20,))


def _result(pipe: float, precision: str, rows: list[BenchRow], cores: int = 2) -> BenchResult:
    stages = [{"index": i, "nodes": 3, "resident_bytes": 2**20, "engine": "openvino", "precision": precision,
               "measured_s": 0.004 + i * 0.001} for i in range(cores)]
    pipeline = BenchRow("corepipe", "corepipe", "openvino", precision, pipe, 0.02, 0.03, 1,
                        (60 * 2**20, 70 * 2**20), (50 * 2**20, 60 * 2**20), handoff_s=0.0009)
    return BenchResult(model="hand-made", cores=cores, requests=10, weight_bytes=2**20, rows=[*rows, pipeline],
                       stages=stages, compile_s=1.0, host="test", precision=precision, engine="auto")


def test_ratios_are_the_pipeline_over_each_setup_by_value():
    """Each ratio is corepipe's req/s over that row's, never the inverse; the ideal is over K
    copies of the 1-thread session. Hand-made rows, so a formula that is wrong fails here."""
    result = _result(300.0, "fp32", [_row("ort 1 thread", 100.0), _row("ort 2 threads", 150.0),
                                      _row("openvino THROUGHPUT (2 streams)", 400.0)])
    r = result.ratios
    assert r["ort 1 thread"].value == pytest.approx(3.0)
    assert r["ort 2 threads"].value == pytest.approx(2.0)
    assert r["openvino THROUGHPUT (2 streams)"].value == pytest.approx(0.75)
    assert r["2 x ort 1 thread (ideal)"].value == pytest.approx(1.5)
    assert float(r["ort 1 thread"]) == 3.0 and str(r["openvino THROUGHPUT (2 streams)"]) == "0.75x"
    assert set(r) == {"ort 1 thread", "ort 2 threads", "openvino THROUGHPUT (2 streams)", "2 x ort 1 thread (ideal)"}
    assert result.memory_ratio() == pytest.approx(130 / 100)
    assert result.added_latency_per_boundary_s() == pytest.approx((0.02 - 0.01) / 1)
    assert result.handoff_per_boundary_s() == pytest.approx(0.0009 / 3)
    bound = result.bound_text() or ""  # the slowest stage 5 ms: 200 req/s, over 400; the pipeline 300
    assert "200 req/s = 0.50 x openvino THROUGHPUT" in bound and "reached 150% of it" in bound, bound
    data = result.to_dict()
    assert data["ratios"]["ort 1 thread"] == {"value": pytest.approx(3.0), "precision": "fp32", "over_precision": "fp32"}


def test_a_ratio_across_precisions_always_says_so():
    """corepipe at bf16 over onnxruntime at fp32 measures the precision as much as the pipeline:
    the ratio carries both precisions and prints them; one at the same precision prints bare."""
    result = _result(300.0, "bf16", [_row("ort 1 thread", 100.0), _row("openvino LATENCY (2 threads, 1 in flight)",
                                                                        200.0, "bf16")])
    across, same = result.ratios["ort 1 thread"], result.ratios["openvino LATENCY (2 threads, 1 in flight)"]
    assert across.across_precisions and (across.precision, across.over_precision) == ("bf16", "fp32")
    assert str(across) == "3.00x (bf16 over fp32)" and across.value == pytest.approx(3.0)
    assert not same.across_precisions and str(same) == "1.50x"
    assert result.ratios["2 x ort 1 thread (ideal)"].across_precisions
    text = result.to_markdown("corepipe bench x")
    assert "| corepipe | bf16 |" in text and "| ort 1 thread | fp32 |" in text
    assert "ort 1 thread **3.00x (bf16 over fp32)**" in text and "**1.50x**" in text
    assert Ratio("x", 2.0, "fp32", "fp32").across_precisions is False


def test_bench_rows_say_precision_at_auto():
    """`precision="auto"` on a bf16 CPU: the pipeline and OpenVINO rows say bf16, onnxruntime's
    fp32, and the ratios over onnxruntime say they cross precisions."""
    if not cpu_math().bf16:
        pytest.skip("this CPU has no native bf16: auto is fp32 and no ratio crosses precisions")
    result = corepipe.bench("zoo:mlp", num_cores=1, requests=5, warmup=1, balance="estimate", precision="auto")
    by = {r.setup: r.precision for r in result.rows}
    assert by["corepipe"] == "bf16" and by["ort 1 thread"] == "fp32" and by["openvino THROUGHPUT (1 stream)"] == "bf16"
    assert result.ratios["ort 1 thread"].across_precisions
    assert not result.ratios["openvino THROUGHPUT (1 stream)"].across_precisions


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
    rows = {r["setup"]: r for r in data["rows"]}
    assert {"ort 1 thread", "corepipe", "openvino THROUGHPUT (2 streams)",
            "openvino LATENCY (2 threads, 1 in flight)"} <= set(rows), rows
    assert rows["openvino THROUGHPUT (2 streams)"]["precision"] == precision == rows["corepipe"]["precision"]
    assert rows["ort 1 thread"]["precision"] == "fp32" and rows["corepipe"]["rss_bytes"] > 0
    assert data["precision"] == precision and all(s["precision"] == precision for s in data["stages"])
    assert "ort 1 thread" in data["ratios"] and "openvino THROUGHPUT (2 streams)" in data["ratios"]
    assert data["memory_ratio_vs_openvino_throughput"] > 0
    text = out_md.read_text()
    assert f"| corepipe | {precision} |" in text and "--num-cores 2" in text and f"--precision {precision}" in text
    assert "OpenVINO THROUGHPUT process" in text
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["bench", "missing.onnx"], "does not exist"),
    (["bench", "zoo:mlp", "--backend", "inline"], "cannot be benchmarked"),
    (["bench", "zoo:mlp", "-k", "0"], "-k must be a positive integer"),
    (["bench", "zoo:mlp", "--requests", "0"], "'--requests'"),
    (["bench", "zoo:mlp", "--balance", "guess"], "--balance"),
    (["bench", "zoo:mlp", "--cores", "99"], "--cores 99: this process may run on only"),
    (["bench", "zoo:mlp", "-n", "99"], "--num-cores 99"),
    (["bench", "zoo:mlp", "--timeline", "t.gif"], "unknown picture format"),
])
def test_bench_cli_errors(args, message):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_the_stage_path_and_boundaries_add_up_per_stage_index_over_replicas():
    """With replicas, a request crosses one copy of each stage: its path's run time is the
    per-index mean (busy over requests, both summed over the copies), not the copies' sum."""
    from dataclasses import replace

    from corepipe.bench.pipeline import boundary_means, path_service_s
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
    assert path_service_s(before, after) == pytest.approx(0.3)
    assert boundary_means(before, after) == pytest.approx([0.002] * 3)
    assert path_service_s(before, before) == 0.0 and boundary_means(before, before) == [0.0] * 3
