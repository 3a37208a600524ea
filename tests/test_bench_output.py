"""What `corepipe bench` prints and draws, read as a new user would (issue 28): which "in
flight" a figure was taken at, the traffic in words, and a timeline title that tells warm-up
from measured requests. Behaviour only, no timing asserts."""

from __future__ import annotations

from pathlib import Path

import pytest
from shapemodels import embed_model
from typer.testing import CliRunner

import corepipe
from corepipe.artifact.dims import ShapeProfile
from corepipe.bench.mixed import profile_words
from corepipe.cli import app
from corepipe.cli.benchcmd import timeline_words

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_profile_words() -> None:
    assert profile_words(ShapeProfile.of("sequence", {4: 1, 24: 3, 128: 1}), "sequence") == (
        "3 lengths 4..128, median 24")
    assert profile_words(ShapeProfile.of("sequence", {16: 1}), "sequence") == "length 16"


def test_bench_says_what_its_figures_were_taken_at(tmp_path: Path) -> None:
    model = embed_model(tmp_path / "embed.onnx")
    r = CliRunner().invoke(app, ["bench", str(model), "-n", "2", "--lengths", "~6:16", "-r", "8", "--warmup", "1",
                                 "--balance", "estimate", "-e", "onnxruntime", "--no-peers",
                                 "--timeline", str(tmp_path / "t.png")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "ShapeProfile(" not in text
    assert "traffic: sequence drawn from 16 lengths 1..16, median 6 (seed 0; these 8:" in text
    assert "in flight: requests in flight while p50 and p99 were taken; req/s ran with the pipeline kept full" in text
    assert "in flight for corepipe," in text and (tmp_path / "t.png").stat().st_size > 10_000


def test_the_bench_timeline_title_tells_warm_up_from_measured(tmp_path: Path) -> None:
    model = embed_model(tmp_path / "embed.onnx")
    result = corepipe.bench(str(model), num_cores=2, lengths="3,5", requests=6, warmup=3, balance="estimate",
                            engine="onnxruntime", peers=False)
    row = result.find("corepipe")
    assert row is not None and row.in_flight == 1 and row.rate_in_flight is not None and row.rate_in_flight > 1
    assert result.timeline is not None
    warm = len(result.timeline.requests) - 6
    assert warm >= 3 and timeline_words(result) == f"{warm} warm-up + 6 measured requests"
