"""Smoke test of benchmarks/soak.py: a tiny soak (kills included) passes and reports its fields."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("corepipe_bench_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # importing has no side effects
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tiny_soak_with_kills_is_clean(soak, tmp_path, capsys):
    out_json, out_md = tmp_path / "soak.json", tmp_path / "soak.md"
    argv = ["--model", "mlp", "--requests", "300", "--kill-every", "100", "--distinct", "50",
            "--sample-every", "0.05", "--json", str(out_json), "--markdown", str(out_md)]
    assert soak.main(argv) == 0, capsys.readouterr().out

    res = json.loads(out_json.read_text())
    assert res["ok"] is True and res["problems"] == []
    assert res["requests"] == res["completed"] == res["stats_completed"] == 300
    assert res["mismatches"] == res["failures"] == res["missing"] == res["order_errors"] == 0
    assert res["kills"] == 2 and [k["stage"] for k in res["kill_log"]] == [0, 1]
    assert all(k["in_flight"] > 0 for k in res["kill_log"])
    assert res["restarts_per_stage"] == [1, 1, 0]
    assert res["replayed"] >= 1
    assert res["leftover_processes"] == [] and res["leftover_shm"] == []
    for key in ("command", "throughput_rps", "latency_p50_ms", "latency_p99_ms", "stream_s"):
        assert key in res
    assert "--kill-every 100" in res["command"]
    roles = {r["process"] for r in res["rss"]}
    assert roles == {"client", "stage 0", "stage 1", "stage 2"}
    for row in res["rss"]:
        assert set(row) >= {"pid", "first_mib", "last_mib", "max_mib", "slope_mib_per_1k"}
    md = out_md.read_text()
    assert md.startswith("## Soak: mlp, 3 stages, 300 requests (OK)")
    assert "| process | pid |" in md

    # appends, never overwrites
    assert soak.main(argv[:-2] + ["--markdown", str(out_md), "--quiet"]) == 0
    assert out_md.read_text().count("## Soak:") == 2


def test_importing_runs_nothing(soak):
    assert callable(soak.main)
    args = soak.parse_args([])
    assert (args.requests, args.kill_every, args.stages, args.model) == (10_000, 2_000, 3, "tiny_cnn")
