"""engine="auto" follows this machine's measured engine speeds (issue 27), and the plan says why.

The default compile probes each stage on both engines with one thread and keeps the times in a
per-machine cache (`corepipe.engines.speeds`). These tests drive the choice through that cache:
a cache that says onnxruntime is faster makes ``auto`` pick onnxruntime, one that says OpenVINO
is faster picks OpenVINO, and `corepipe inspect` says which figures chose. No timing threshold:
what is checked is that the choice follows the figures, whatever they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphcases import run_reference
from graphcases.tensors import case_float16
from typer.testing import CliRunner

import corepipe
from corepipe import zoo
from corepipe.artifact.plan import StagePlan
from corepipe.cli import app
from corepipe.engines import cpu_math, missing_engine
from corepipe.engines.speeds import SpeedCache, machine_key
from corepipe.errors import CompileError

pytestmark = pytest.mark.skipif(missing_engine("openvino") is not None, reason="needs both engines installed")


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The probe on (the suite turns it off, tests/conftest.py), with a cache of this test's own."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COREPIPE_ENGINE_PROBE", "on")
    monkeypatch.setenv("COREPIPE_CACHE_DIR", str(cache))
    return cache


def _mlp() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    return zoo.get("mlp")


def _cache_file(cache: Path) -> Path:
    files = list((cache / "engine-speeds").glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _rewrite(path: Path, ort: float, ov: float) -> None:
    data = json.loads(path.read_text())
    assert data["stages"], "the compile cached no stage"
    data["stages"] = {k: {"onnxruntime": ort, "openvino": ov} for k in data["stages"]}
    path.write_text(json.dumps(data))


def _same_as_onnxruntime(path: Path, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    with corepipe.load(path, backend="inline") as pipe:
        got = pipe.run(feeds)
    want = run_reference(model, feeds)
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("ort", "ov", "winner"), [(0.001, 0.1, "onnxruntime"), (0.1, 0.001, "openvino")])
def test_auto_follows_the_cached_probe_and_inspect_says_why(probe: Path, tmp_path: Path, ort: float, ov: float,
                                                            winner: str) -> None:
    model, feeds = _mlp()
    first = corepipe.compile(model, tmp_path / "first", example_inputs=feeds, num_cores=2)
    assert all("probe timed now" in (st.engine_why or "") for st in first.stages), [s.engine_why for s in first.stages]
    assert all(set(st.engine_s or {}) == {"onnxruntime", "openvino"} for st in first.stages)
    for st in first.stages:  # the engine chosen is the faster one timed
        times = st.engine_s
        assert times is not None and st.engine == min(times, key=times.__getitem__)
    _rewrite(_cache_file(probe), ort, ov)
    cm = corepipe.compile(model, tmp_path / "out", example_inputs=feeds, num_cores=2)
    assert [st.engine for st in cm.stages] == [winner, winner]
    for st in cm.stages:
        assert st.engine_s == {"onnxruntime": ort, "openvino": ov}
        assert "probe cached for this machine" in (st.engine_why or "")
    _same_as_onnxruntime(cm.path, model, feeds)
    text = CliRunner().invoke(app, ["inspect", str(cm.path)])
    assert text.exit_code == 0, text.output
    flat = " ".join(text.output.split())
    fast, slow = (f"onnxruntime fp32 {ort * 1e3:.3g} ms", f"openvino fp32 {ov * 1e3:.3g} ms")
    if winner == "openvino":
        fast, slow = slow, fast
    assert f"stage 0 runs on {winner}: fastest on one core (probe cached for this machine): {fast}, {slow}" in flat
    js = CliRunner().invoke(app, ["inspect", str(cm.path), "--json"])
    stages = json.loads(js.output)["stages"]
    assert [s["engine"] for s in stages] == [winner, winner]
    assert all("probe cached" in s["engine_why"] and s["engine_s"]["onnxruntime"] == ort for s in stages)


def test_a_stage_openvino_cannot_run_goes_to_onnxruntime_and_says_why(probe: Path, tmp_path: Path) -> None:
    case = case_float16()
    cm = corepipe.compile(case.model, tmp_path / "out", example_inputs=case.inputs(), num_cores=2)
    for st in cm.stages:
        assert st.engine == "onnxruntime"
        assert st.engine_why is not None and st.engine_why.startswith("the only engine that runs it: ")
        assert "float16 tensors" in st.engine_why


def test_the_machine_key_changes_with_the_cpu_mask(monkeypatch: pytest.MonkeyPatch, probe: Path) -> None:
    cpu_math.cache_clear()
    try:
        seen = cpu_math().flags & {"avx2", "avx512f", "avx512_bf16", "f16c"}
        if not seen:
            pytest.skip("this CPU shows none of the flags COREPIPE_CPU_MASK can hide")
        plain, plain_path = machine_key("fp32"), SpeedCache.open("fp32").path
        monkeypatch.setenv("COREPIPE_CPU_MASK", sorted(seen)[0])
        cpu_math.cache_clear()
        masked, masked_path = machine_key("fp32"), SpeedCache.open("fp32").path
        assert masked["flags"] != plain["flags"] and masked_path != plain_path
        assert machine_key("bf16") != masked  # and with the precision
    finally:
        monkeypatch.delenv("COREPIPE_CPU_MASK", raising=False)
        cpu_math.cache_clear()


@pytest.mark.parametrize("garbage", ["{not json", json.dumps({"format": 1, "machine": {}, "stages": {}}),
                                     json.dumps({"format": 1, "stages": {"s": {"openvino": -1}}})])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_probed_again(probe: Path, tmp_path: Path,
                                                                    garbage: str) -> None:
    model, feeds = _mlp()
    path = SpeedCache.open("fp32").path
    path.parent.mkdir(parents=True)
    path.write_text(garbage)
    with pytest.warns(RuntimeWarning, match="ignoring the engine-speed cache"):
        cm = corepipe.compile(model, tmp_path / "out", example_inputs=feeds, num_cores=2)
    assert all("probe timed now" in (st.engine_why or "") for st in cm.stages)
    data = json.loads(path.read_text())
    assert data["machine"] == machine_key("fp32")  # rewritten: the two stages (and a cut the probe moved to)
    assert len(data["stages"]) in (2, 4) and all(set(t) == {"onnxruntime", "openvino"} for t in data["stages"].values())


def test_refresh_times_again_and_off_neither_times_nor_reads(probe: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    model, feeds = _mlp()
    corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    _rewrite(_cache_file(probe), 5.0, 7.0)
    monkeypatch.setenv("COREPIPE_ENGINE_PROBE", "refresh")
    cm = corepipe.compile(model, tmp_path / "b", example_inputs=feeds, num_cores=2)
    assert all("probe timed now" in (st.engine_why or "") for st in cm.stages)
    assert all(s["onnxruntime"] < 5.0 for s in json.loads(_cache_file(probe).read_text())["stages"].values())
    monkeypatch.setenv("COREPIPE_ENGINE_PROBE", "off")
    cm = corepipe.compile(model, tmp_path / "c", example_inputs=feeds, num_cores=2)
    assert [st.engine for st in cm.stages] == ["openvino", "openvino"]
    assert all(st.engine_s is None and "not timed" in (st.engine_why or "") for st in cm.stages)
    monkeypatch.setenv("COREPIPE_ENGINE_PROBE", "sometimes")
    with pytest.raises(CompileError, match="COREPIPE_ENGINE_PROBE='sometimes': expected one of"):
        corepipe.compile(model, tmp_path / "d", example_inputs=feeds, num_cores=2)


def test_measure_times_each_stage_on_each_engine_and_picks_the_faster(probe: Path, tmp_path: Path) -> None:
    model, feeds = _mlp()
    cm = corepipe.compile(model, tmp_path / "out", example_inputs=feeds, num_cores=2, balance="measure")
    for st in cm.stages:
        times = st.engine_s
        assert times is not None and set(times) == {"onnxruntime", "openvino"}
        assert st.engine == min(times, key=times.__getitem__)
        assert (st.engine_why or "").startswith("fastest on one core (measured): ")
    _same_as_onnxruntime(cm.path, model, feeds)


def test_user_asked_engine_is_the_reason(probe: Path, tmp_path: Path) -> None:
    model, feeds = _mlp()
    cm = corepipe.compile(model, tmp_path / "out", example_inputs=feeds, num_cores=2, engine="openvino")
    assert all(st.engine_why == "engine='openvino' was asked for" for st in cm.stages)
    assert not (probe / "engine-speeds").exists()  # nothing to choose: nothing timed


def test_the_plan_keeps_and_checks_why() -> None:
    base = dict(index=0, node_start=0, node_end=1, first_node="a", last_node="a", first_op="Relu", last_op="Relu",
                inputs=["x"], outputs=["y"], carried=[], weights=0, resident_bytes=0, estimated_s=1.0, device=0,
                core=0)
    st = StagePlan.from_dict({**base, "engine_why": "because", "engine_s": {"onnxruntime": 0.5}})
    back = st.to_dict()
    assert back["engine_why"] == "because" and back["engine_s"] == {"onnxruntime": 0.5}
    assert "engine_why" not in StagePlan.from_dict(base).to_dict()  # absent where not recorded, as before
    with pytest.raises(ValueError, match="engine_s must map engines to seconds"):
        StagePlan.from_dict({**base, "engine_s": {"onnxruntime": "fast"}})
    with pytest.raises(ValueError, match="engine_why must be a string"):
        StagePlan.from_dict({**base, "engine_why": 3})


def test_the_probe_moves_the_estimated_cut_once_where_its_times_say_so(probe: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model, feeds = _mlp()
    monkeypatch.setenv("COREPIPE_ENGINE_PROBE", "off")  # nothing timed: the estimated cut stands
    off = corepipe.compile(model, tmp_path / "off", example_inputs=feeds, num_cores=2)
    cut = off.stages[1].node_start
    assert not any("engine probe" in n for n in off.plan.notes)
    monkeypatch.setenv("COREPIPE_ENGINE_PROBE", "on")
    corepipe.compile(model, tmp_path / "first", example_inputs=feeds, num_cores=2)  # probes the estimated cut
    path = _cache_file(probe)
    data = json.loads(path.read_text())  # its first stage "takes" a second on either engine, its last nothing
    data["stages"] = {k: ({"onnxruntime": 1.0, "openvino": 1.0} if f":0-{cut}:" in k
                          else {"onnxruntime": 1e-6, "openvino": 1e-6})
                      for k in data["stages"] if f":0-{cut}:" in k or f":{cut}-" in k}
    assert len(data["stages"]) == 2
    path.write_text(json.dumps(data))
    cm = corepipe.compile(model, tmp_path / "out", example_inputs=feeds, num_cores=2)
    assert cm.stages[1].node_start < cut, "a slow first stage must give nodes to the second"
    assert any(n.startswith(f"the engine probe's one-core times moved the cut from [{cut}] to ") for n in cm.plan.notes)
    assert all("probe timed now" in (st.engine_why or "") for st in cm.stages)  # the new cut, timed
    _same_as_onnxruntime(cm.path, model, feeds)
