"""Pictures: the plan's bars and the request timeline, checked by what they draw (bars per stage,
their heights, bars per request) and by the files the commands write (format, size)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import corepipe
from corepipe import zoo
from corepipe.cli import app

pytest.importorskip("matplotlib")

from corepipe.plots import plan_figure, save, timeline_figure

runner = CliRunner()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; fails unless the file is a PNG."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    model, feeds = zoo.get("tiny_cnn")
    cm = corepipe.compile(model, tmp_path_factory.mktemp("pics") / "a", example_inputs=feeds, num_cores=3)
    return cm.path, feeds


def _bars(fig, gid: str) -> list:  # type: ignore[no-untyped-def]
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == gid]


def test_plan_figure_has_one_bar_per_stage_in_each_panel(artifact) -> None:
    path, _ = artifact
    plan = corepipe.CompiledModel.open(path).plan
    fig = plan_figure(plan, "zoo:tiny_cnn")
    for gid in ("time", "memory", "handoff"):
        assert len(_bars(fig, gid)) == plan.num_cores, gid
    heights = [b.get_height() for b in _bars(fig, "memory")]
    resident = [s.resident_bytes for s in plan.stages]
    np.testing.assert_allclose(np.array(heights) / heights[1], np.array(resident) / resident[1], rtol=1e-9)
    handoff = [sum(t.nbytes for t in plan.boundaries[k + 1]) for k in range(plan.num_cores)]
    assert np.argmax([b.get_height() for b in _bars(fig, "handoff")]) == np.argmax(handoff)
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert labels == [f"stage {k}\ncore {s.device}:{s.core}" for k, s in enumerate(plan.stages)]
    assert "speed-up these stage times allow" in fig._suptitle.get_text()


def test_inspect_and_compile_draw_the_plan(artifact, tmp_path: Path) -> None:
    path, _ = artifact
    result = runner.invoke(app, ["inspect", str(path), "--plot", str(tmp_path / "plan.png")])
    assert result.exit_code == 0, result.output
    width, height = png_size(tmp_path / "plan.png")
    assert width >= 700 and height >= 700 and (tmp_path / "plan.png").stat().st_size > 20_000
    result = runner.invoke(app, ["compile", "zoo:mlp", "-o", str(tmp_path / "m"), "-n", "2",
                                 "--plot", str(tmp_path / "plan.svg")])
    assert result.exit_code == 0, result.output
    assert "<svg" in (tmp_path / "plan.svg").read_text()[:1000]


@pytest.mark.usefixtures("no_leaks")
def test_timeline_has_one_bar_per_request_on_every_stage(artifact, tmp_path: Path) -> None:
    path, feeds = artifact
    with corepipe.load(path) as pipe:
        for _ in pipe.map([feeds] * 17):
            pass
        timeline = pipe.timeline()
    fig = timeline_figure(timeline)
    for k in range(3):
        drawn = [c for ax in fig.axes for c in ax.collections if c.get_gid() in (f"run-{k}", f"replay-{k}")]
        assert sum(len(c.get_paths()) for c in drawn) == 17, k
    assert "17 requests through 3 stages" in fig._suptitle.get_text()
    out = save(fig, tmp_path / "t.png")
    assert png_size(out)[0] >= 1000


@pytest.mark.usefixtures("no_leaks")
def test_run_draws_the_timeline(artifact, tmp_path: Path) -> None:
    """(`bench --timeline` is drawn in tests/test_bench.py, which runs a bench anyway.)"""
    path, _ = artifact
    result = runner.invoke(app, ["run", str(path), "-r", "12", "--timeline", str(tmp_path / "run.png")])
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "run.png")[0] >= 1000


def test_without_matplotlib_the_flags_fail_at_once(artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = artifact
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    for args in (["inspect", str(path), "--plot", str(tmp_path / "p.png")],
                 ["run", str(path), "-b", "inline", "--timeline", str(tmp_path / "t.png")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "pip install 'corepipe[plot]'" in result.stderr
        assert "requests in" not in result.stdout  # refused before any work
    assert not list(tmp_path.iterdir())


def test_request_colours_do_not_repeat_and_neighbours_differ() -> None:
    """200 requests: 200 colours, and any two within 10 of each other clearly apart (so a
    request can be followed down the lanes); fill and drain shading is not faint."""
    from corepipe.plots import timeline as tl

    colours = [tl.request_colour(i) for i in range(200)]
    assert len({tuple(round(c, 3) for c in col) for col in colours}) == 200
    for i in range(200):
        for j in range(i + 1, min(i + 10, 200)):
            assert sum(abs(a - b) for a, b in zip(colours[i], colours[j])) > 0.15, (i, j)
    assert tl._PHASE_ALPHA >= 0.2


def test_plan_title_fits_no_label_sits_on_the_even_split_and_dynamic_ranges_show(artifact, tmp_path: Path) -> None:
    """Issue 28: plan.png's second title line ran past both edges; a value label sat on the
    dashed even-split line; a plan over dynamic dims did not show them."""
    import dataclasses

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from corepipe.artifact.dims import Shapes

    path, _ = artifact
    plan = corepipe.CompiledModel.open(path).plan
    fig = plan_figure(plan, "a rather long model name, as a path to an .onnx file in a deep directory")
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    box, width = fig._suptitle.get_window_extent(renderer), fig.bbox.width
    assert box.x0 >= 0 and box.x1 <= width, "the title is cut at the figure's edges"
    # Stage times with one just under the even split: its label goes inside the bar, off the line.
    times = [1.0e-3, 0.98e-3, 1.02e-3]
    stages = tuple(dataclasses.replace(s, estimated_s=t, measured_s=None, loaded_s=None, device=0, core=k) for k, (s, t) in enumerate(zip(plan.stages, times)))
    even = dataclasses.replace(plan, stages=stages)
    fig = plan_figure(even)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "--")
    y = line.get_ydata()[0]
    line_px = ax.transData.transform((0, y))[1]
    for label in ax.texts:
        b = label.get_window_extent(fig.canvas.get_renderer())
        assert not b.y0 <= line_px <= b.y1, f"value label {label.get_text()!r} sits on the dashed line"
    # Over dynamic dims: the dims in the title, each stage's mode under it, its range as whiskers.
    costs = [{"min_s": t / 4, "typical_s": t, "max_s": t * 3} for t in times]
    dyn = dataclasses.replace(even, shapes=Shapes(dims={"sequence": (1, 128)}), stages=tuple(
        dataclasses.replace(s, shape_mode="dynamic", shape_costs=c) for s, c in zip(stages, costs)))
    fig = plan_figure(dyn)
    assert "over dynamic dims sequence 1..128" in fig._suptitle.get_text()
    assert [t.get_text().split("\n")[-1] for t in fig.axes[-1].get_xticklabels()] == ["dynamic"] * 3
    whiskers = [c for c in fig.axes[0].collections if c.get_gid() == "range"]
    assert len(whiskers) == 1 and len(whiskers[0].get_segments()) == 3
    lo, hi = whiskers[0].get_segments()[0][:, 1]
    bar = _bars(fig, "time")[0].get_height()
    assert lo == pytest.approx(bar / 4) and hi == pytest.approx(bar * 3)
