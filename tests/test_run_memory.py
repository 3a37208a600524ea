"""`corepipe run` keeps no outputs: memory stays flat whatever the request count, and `--save`
streams outputs to disk, refusing up front when they would not fit.

Flatness is measured without timing: Python's own allocation tracer (numpy reports its buffers
to it) records the peak of what the command allocates while it streams; each request's output
is 256 KiB, so keeping them would add requests x 256 KiB to that peak.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

import corepipe
from corepipe.cli import app

runner = CliRunner()
WIDE = 65536  # floats per output: 256 KiB per request


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x float32[1, 64] -> Relu -> Tile x1024 -> Neg -> y float32[1, 65536], in 2 stages."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Tile", ["r", "reps"], ["t"], name="tile"),
         helper.make_node("Neg", ["t"], ["y"], name="neg")],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDE])],
        [helper.make_tensor("reps", TensorProto.INT64, [2], [1, WIDE // 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = tmp_path_factory.mktemp("wide") / "a"
    corepipe.compile(model, out, num_cores=2)
    return out


def _peak_mib(*args: str) -> float:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = runner.invoke(app, list(args))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    return (peak - base) / 2**20


@pytest.mark.usefixtures("no_leaks")
def test_run_memory_does_not_grow_with_requests(wide: Path, tmp_path: Path) -> None:
    requests = 400  # kept, their outputs alone would be 100 MiB
    peak = _peak_mib("run", str(wide), "--requests", str(requests))
    assert peak < 0.2 * requests * WIDE * 4 / 2**20, f"run allocated up to {peak:.1f} MiB"
    peak = _peak_mib("run", str(wide), "--requests", str(requests), "--save", str(tmp_path / "o.npz"))
    assert peak < 0.2 * requests * WIDE * 4 / 2**20, f"run --save allocated up to {peak:.1f} MiB"
    with np.load(tmp_path / "o.npz") as saved:
        assert saved.files == ["y"] and saved["y"].shape == (requests, 1, WIDE)
    assert [p.name for p in tmp_path.iterdir()] == ["o.npz"]  # no stacks or partial file left


def test_save_keeps_each_request_output_in_order(wide: Path, tmp_path: Path) -> None:
    xs = np.random.default_rng(0).standard_normal((5, 1, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=xs)
    result = runner.invoke(app, ["run", str(wide), "-b", "inline", "--inputs", str(tmp_path / "in.npz"),
                                 "--requests", "7", "--save", str(tmp_path / "out.npz")])
    assert result.exit_code == 0, result.output
    assert "saved the outputs of 7 requests" in result.stdout
    with np.load(tmp_path / "out.npz") as saved:
        y = saved["y"]
    assert y.shape == (7, 1, WIDE)
    for i in range(7):  # requests cycle through the 5 inputs
        np.testing.assert_array_equal(y[i], -np.tile(np.maximum(xs[i % 5], 0), (1, WIDE // 64)))


def test_save_that_cannot_fit_is_refused_before_any_request(wide: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(wide), "--requests", str(10**9), "--save", str(tmp_path / "o.npz")])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: --save") and "would not fit" in line and "1,000,000,000 requests" in line
    assert "requests in" not in result.stdout and not list(tmp_path.iterdir())
    result = runner.invoke(app, ["run", str(wide), "--save", str(tmp_path / "o.txt")])
    assert result.exit_code == 2 and "must end with .npz" in result.stderr
