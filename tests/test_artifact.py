"""Loading trusts nothing: every defect in an artifact is an `ArtifactError` raised before any
engine sees a stage (onnxruntime sessions and OpenVINO model reads are patched to fail the test
if one is ever made). Files swapped after verification and random manifest mutations:
tests/test_artifact_untrusted.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import openvino
import pytest
from graphcases import big_weight_model, run_reference

import corepipe
from corepipe import ArtifactError
from corepipe.artifact.manifest import open_artifact

KIB = 1024


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stages, each with its own weights file (4 KiB MatMul weights are stored externally)."""
    c = big_weight_model([4 * KIB, 4 * KIB])
    out = tmp_path_factory.mktemp("pristine") / "art"
    cm = corepipe.compile(c.model, out, cuts=[4])
    assert [s.weights_file for s in cm.stages] == ["stage_000.weights", "stage_001.weights"]
    return out


@pytest.fixture
def art(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the artifact to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "art"))


class EngineReached(BaseException):
    """Raised by the guard; a BaseException so that no engine's error handling can swallow it."""


def guard_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any engine (onnxruntime or OpenVINO) is handed a stage."""
    def refuse(engine: str) -> Callable[..., None]:
        def fail(*args: object, **kwargs: object) -> None:
            raise EngineReached(f"{engine} was reached before the artifact was rejected")
        return fail

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse("onnxruntime"))
    monkeypatch.setattr(openvino.Core, "read_model", refuse("openvino"))


@pytest.fixture
def no_ort(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_engines(monkeypatch)


def read(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def write(root: Path, manifest: Any) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_rejected(root: Path, match: str | None = None) -> None:
    with pytest.raises(ArtifactError, match=match):
        open_artifact(root)
    with pytest.raises(ArtifactError, match=match):
        corepipe.load(root, backend="inline")


# --- the untampered artifact, and the patch that guards onnxruntime -----------------------------

def test_pristine_artifact_loads_and_runs(art: Path) -> None:
    c = big_weight_model([4 * KIB, 4 * KIB])
    with corepipe.load(art, backend="inline") as pipe:
        got = pipe.run(c.feeds)
    np.testing.assert_allclose(got["y"], run_reference(c.model, c.feeds)["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_the_guard_really_stops_the_engines(tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c = big_weight_model([4 * KIB, 4 * KIB])
    out = corepipe.compile(c.model, tmp_path / engine, cuts=[4], engine=engine).path
    guard_engines(monkeypatch)
    open_artifact(out)  # verification alone never needs an engine
    with pytest.raises(EngineReached, match=f"{engine} was reached"):
        corepipe.load(out, backend="inline")


# --- hashes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["stage_000.onnx", "stage_001.onnx", "stage_000.weights", "stage_001.weights"])
def test_flipped_byte_fails_the_hash(art: Path, no_ort: None, name: str) -> None:
    data = bytearray((art / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / name).write_bytes(bytes(data))
    assert_rejected(art, "sha256")


def test_swapped_weights_fail_the_hash(art: Path, no_ort: None) -> None:
    a, b = (art / "stage_000.weights").read_bytes(), (art / "stage_001.weights").read_bytes()
    (art / "stage_000.weights").write_bytes(b)
    (art / "stage_001.weights").write_bytes(a)
    assert_rejected(art, "sha256")


# --- paths ------------------------------------------------------------------------------------

def _point_stage_at(art: Path, key: str, value: str) -> None:
    m = read(art)
    m["plan"]["stages"][1][key] = value
    write(art, m)


@pytest.mark.parametrize("key", ["file", "weights_file"])
def test_dotdot_path(art: Path, no_ort: None, key: str) -> None:
    name = "stage_001.onnx" if key == "file" else "stage_001.weights"
    outside = art.parent / "outside"
    outside.mkdir()
    shutil.copy(art / name, outside / name)  # same bytes: only the path rule can refuse it
    _point_stage_at(art, key, f"../outside/{name}")
    assert_rejected(art, "not a plain file name")


@pytest.mark.parametrize("key", ["file", "weights_file"])
def test_absolute_path(art: Path, no_ort: None, key: str) -> None:
    name = "stage_001.onnx" if key == "file" else "stage_001.weights"
    _point_stage_at(art, key, str((art / name).resolve()))
    assert_rejected(art, "not a plain file name")


def test_subdirectory_path(art: Path, no_ort: None) -> None:
    (art / "sub").mkdir()
    shutil.copy(art / "stage_001.onnx", art / "sub" / "stage_001.onnx")
    _point_stage_at(art, "file", "sub/stage_001.onnx")
    assert_rejected(art, "not a plain file name")


@pytest.mark.parametrize("name", [".hidden.onnx", "stage_001.onnx\x00", "a\\b.onnx", "", ".", ".."])
def test_odd_names(art: Path, no_ort: None, name: str) -> None:
    _point_stage_at(art, "file", name)
    assert_rejected(art, "not a plain file name")


@pytest.mark.parametrize("name", ["stage_001.onnx", "stage_000.weights"])
def test_symlinked_file_with_the_right_content(art: Path, no_ort: None, name: str) -> None:
    real = art.parent / f"real_{name}"
    shutil.move(art / name, real)
    os.symlink(real, art / name)
    assert sha(art / name) == sha(real)  # content is right; only the link is wrong
    assert_rejected(art, "symlink")


def test_manifest_is_a_symlink(art: Path, no_ort: None) -> None:
    real = art.parent / "real_manifest.json"
    shutil.move(art / "manifest.json", real)
    os.symlink(real, art / "manifest.json")
    assert_rejected(art, "symlink")


def test_stage_path_is_a_directory(art: Path, no_ort: None) -> None:
    (art / "stage_001.onnx").unlink()
    (art / "stage_001.onnx").mkdir()
    assert_rejected(art, "not a regular file")


@pytest.mark.parametrize("name", ["stage_001.onnx", "stage_000.weights", "manifest.json"])
def test_missing_file(art: Path, no_ort: None, name: str) -> None:
    (art / name).unlink()
    assert_rejected(art, "missing")


def test_not_a_directory(tmp_path: Path, no_ort: None) -> None:
    (tmp_path / "f").write_text("x")
    assert_rejected(tmp_path / "f", "not a directory")
    assert_rejected(tmp_path / "nope", "not a directory")


# --- the manifest's form -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data", [b"", b"{", b"not json", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000],
    ids=["empty", "brace", "text", "not-utf8", "deeply-nested"],
)
def test_manifest_not_json(art: Path, no_ort: None, data: bytes) -> None:
    (art / "manifest.json").write_bytes(data)
    assert_rejected(art, "not valid JSON")


@pytest.mark.parametrize("value", [[], "manifest", 1, None, True])
def test_manifest_not_an_object(art: Path, no_ort: None, value: object) -> None:
    write(art, value)
    assert_rejected(art, "JSON object")


def test_unknown_format_version(art: Path, no_ort: None) -> None:
    for version in (5, 0, "1", "2", None, True):
        m = read(art)
        m["format_version"] = version
        write(art, m)
        assert_rejected(art, "format version")


def test_wrong_format_name(art: Path, no_ort: None) -> None:
    m = read(art)
    m["format"] = "onnx-bundle"
    write(art, m)
    assert_rejected(art, "format")


def _delete(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    def mutate(m: dict[str, Any]) -> None:
        node: Any = m
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


def _set(path: list[str | int], value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(m: dict[str, Any]) -> None:
        node: Any = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


SCHEMA_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no plan": _delete(["plan"]),
    "no stages": _delete(["plan", "stages"]),
    "no target": _delete(["plan", "target"]),
    "no inputs": _delete(["plan", "inputs"]),
    "no boundaries": _delete(["plan", "boundaries"]),
    "stage without file": _delete(["plan", "stages", 0, "file"]),
    "stage without inputs": _delete(["plan", "stages", 1, "inputs"]),
    "input without dtype": _delete(["plan", "inputs", 0, "dtype"]),
    "plan is a list": _set(["plan"], []),
    "stages is a dict": _set(["plan", "stages"], {"0": {}}),
    "stage is a string": _set(["plan", "stages", 0], "stage_000.onnx"),
    "shape is text": _set(["plan", "inputs", 0, "shape"], "one by sixty-four"),
    "negative dim": _set(["plan", "inputs", 0, "shape"], [1, -64]),
    "unknown dtype": _set(["plan", "inputs", 0, "dtype"], "float33"),
    "node_end is text": _set(["plan", "stages", 0, "node_end"], "four"),
    "resident bytes is a list": _set(["plan", "stages", 0, "resident_bytes"], [1]),
    "file is a number": _set(["plan", "stages", 0, "file"], 7),
    "file is null": _set(["plan", "stages", 0, "file"], None),
    "sha256 is a number": _set(["plan", "stages", 0, "sha256"], 0),
    "weights sha256 null": _set(["plan", "stages", 0, "weights_sha256"], None),
    "extra stage key": _set(["plan", "stages", 0, "evil"], 1),
    "target junk": _set(["plan", "target"], {"name": "cpu"}),
    "num_nodes off": _set(["plan", "num_nodes"], 99),
    "stages out of order": lambda m: m["plan"]["stages"].reverse(),
    "stage without engine": _delete(["plan", "stages", 0, "engine"]),
    "stage without precision": _delete(["plan", "stages", 1, "precision"]),
    "unknown engine": _set(["plan", "stages", 0, "engine"], "tensorrt"),
    "engine is a number": _set(["plan", "stages", 0, "engine"], 1),
    "unknown precision": _set(["plan", "stages", 0, "precision"], "int8"),
    "onnxruntime at bf16": lambda m: m["plan"]["stages"][0].update(engine="onnxruntime", precision="bf16"),
    "fallback is a list": _set(["plan", "stages", 0, "fallback"], ["x"]),
    "version 1 naming an engine": _set(["format_version"], 1),
}


@pytest.mark.parametrize("how", sorted(SCHEMA_BREAKS))
def test_manifest_schema(art: Path, no_ort: None, how: str) -> None:
    m = read(art)
    SCHEMA_BREAKS[how](m)
    write(art, m)
    assert_rejected(art)


def _boundary_h0(m: dict[str, Any], **spec: object) -> None:
    for boundary in m["plan"]["boundaries"]:
        for t in boundary:
            if t["name"] == "h0":
                t.update(spec)


@pytest.mark.parametrize("mutate,match", [
    # Found by the fuzz test: an input the stage no longer binds, which the engine read as zeros.
    (lambda m: m["plan"]["stages"][1].update(inputs=[]), r"stage 1's graph reads \['h0'\], but the manifest says \[\]"),
    (lambda m: _boundary_h0(m, shape=[1, 32]), r"stage 0's graph writes 'h0' as float32\[1, 64\], .* float32\[1, 32\]"),
    (lambda m: _boundary_h0(m, dtype="float64"), r"writes 'h0' as float32\[1, 64\], but the manifest declares float64"),
], ids=["input dropped", "boundary shape", "boundary dtype"])
def test_manifest_that_disagrees_with_its_stage_graphs(art: Path, no_ort: None, mutate: Callable[[dict[str, Any]], None],
                                                       match: str) -> None:
    """The manifest is not hashed: what it says a stage reads and writes must be what the stage's
    (hashed) graph reads and writes, or slots would be bound or sized wrongly."""
    m = read(art)
    mutate(m)
    write(art, m)
    assert_rejected(art, match)


def test_version_1_artifacts_still_load(art: Path) -> None:
    """An artifact written before engines existed: every stage runs on onnxruntime in fp32."""
    m = read(art)
    assert m["format_version"] == 2
    m["format_version"] = 1
    for stage in m["plan"]["stages"]:
        for key in ("engine", "precision", "fallback"):
            del stage[key]
    write(art, m)
    plan = open_artifact(art).plan
    assert [(s.engine, s.precision, s.fallback) for s in plan.stages] == [("onnxruntime", "fp32", None)] * 2
    c = big_weight_model([4 * KIB, 4 * KIB])
    with corepipe.load(art, backend="inline") as pipe:
        assert [r.engine.name for r in pipe._runners] == ["onnxruntime"] * 2  # type: ignore[attr-defined]
        got = pipe.run(c.feeds)
    np.testing.assert_allclose(got["y"], run_reference(c.model, c.feeds)["y"], rtol=1e-5, atol=1e-6)


# --- stage graphs whose external data points elsewhere (with a matching hash) --------------------

def _retarget(art: Path, stage: int, **entries: str) -> None:
    """Rewrite every external tensor of ``stage`` with ``entries`` and restamp its sha256."""
    path = art / f"stage_{stage:03d}.onnx"
    model = onnx.load(str(path), load_external_data=False)
    touched = 0
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        info.update(entries)
        del tensor.external_data[:]
        for key, value in info.items():
            tensor.external_data.add(key=key, value=value)
        touched += 1
    assert touched, "the stage has no external tensors to tamper with"
    path.write_bytes(model.SerializeToString())
    m = read(art)
    m["plan"]["stages"][stage]["sha256"] = sha(path)
    write(art, m)


@pytest.mark.parametrize("stage", [0, 1])
def test_external_data_outside_the_directory(art: Path, no_ort: None, stage: int) -> None:
    # A real file with the right bytes sits at '../x': only the location rule can refuse it.
    shutil.copy(art / f"stage_{stage:03d}.weights", art.parent / "x")
    _retarget(art, stage, location="../x")
    assert_rejected(art, "only")


def test_external_data_in_another_stages_weights(art: Path, no_ort: None) -> None:
    _retarget(art, 1, location="stage_000.weights")
    assert_rejected(art, "only 'stage_001.weights'")


@pytest.mark.parametrize("location", ["/etc/passwd", "stage_001.onnx", "manifest.json", ""])
def test_external_data_at_other_files(art: Path, no_ort: None, location: str) -> None:
    _retarget(art, 1, location=location)
    assert_rejected(art, "points at external data")


@pytest.mark.parametrize(
    "entries, match",
    [
        ({"offset": "4096"}, "reads bytes"),
        ({"offset": "1", "length": "4096"}, "reads bytes"),
        ({"length": "999999"}, "reads bytes"),
        ({"offset": "-8"}, "reads bytes"),
        ({"offset": "zero"}, "bad offset"),
        ({"length": "1e3"}, "bad offset"),
    ],
)
def test_external_data_beyond_the_weights(art: Path, no_ort: None, entries: dict, match: str) -> None:
    assert (art / "stage_001.weights").stat().st_size == 4 * KIB
    _retarget(art, 1, **entries)
    assert_rejected(art, match)


def test_external_data_when_the_stage_has_no_weights_file(art: Path, no_ort: None) -> None:
    m = read(art)
    m["plan"]["stages"][1]["weights_file"] = None
    m["plan"]["stages"][1]["weights_sha256"] = None
    write(art, m)
    assert_rejected(art, "points at external data")

