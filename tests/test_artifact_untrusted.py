"""What reaches an engine when the artifact is changed behind corepipe's back.

- A file swapped after verification (between ``open_artifact`` and a worker's private copy of its
  stage) never reaches onnxruntime or OpenVINO: the copy is hashed while it is made, and the
  engine loads only the copy. The test does what a worker does (``open_artifact`` without hashes,
  then `StageRunner`), swapping a file in between.
- A manifest mutated at random (hypothesis) is refused with `ArtifactError`, or it still
  verifies and the pipeline gives the untouched artifact's answer (or refuses the request by the
  signature it now declares): never a wrong answer or a failure inside a stage.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphcases import big_weight_model, run_reference
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_artifact import KIB, guard_engines, read

import corepipe
from corepipe import ArtifactError, InputError
from corepipe.artifact.manifest import open_artifact
from corepipe.engines import StageRunner

CASE = big_weight_model([4 * KIB, 4 * KIB])
OTHER = big_weight_model([4 * KIB, 4 * KIB], seed=1)  # the same graph, other weights
REFERENCE = run_reference(CASE.model, CASE.feeds)


# --- files swapped after verification ----------------------------------------------------------

@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("swap", ["weights of the same length", "another stage's graph"])
def test_a_file_swapped_after_verification_never_reaches_the_engine(
        engine: str, swap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = corepipe.compile(CASE.model, tmp_path / "a", cuts=[4], engine=engine).path
    other = corepipe.compile(OTHER.model, tmp_path / "b", cuts=[4], engine=engine).path
    assert [s.engine for s in open_artifact(path).plan.stages] == [engine] * 2
    name = "stage_001.weights" if swap.startswith("weights") else "stage_001.onnx"
    source = other / name if swap.startswith("weights") else path / "stage_000.onnx"
    original = (path / name).read_bytes()
    assert source.read_bytes() != original
    if swap.startswith("weights"):
        assert len(source.read_bytes()) == len(original)  # only the hash can tell them apart

    open_artifact(path)  # the client verifies every file: all good
    shutil.copyfile(source, path / name)  # ... then the file changes under it
    with monkeypatch.context() as m:
        guard_engines(m)  # onnxruntime and OpenVINO fail the test if handed anything
        with pytest.raises(ArtifactError) as refused:
            # What a worker does: open the manifest (no hashes: the copy is hashed), then copy
            # its stage privately, hashing it, and hand the copy to the engine.
            StageRunner(open_artifact(path, verify_hashes=False), 1)
    # Same-length weights pass every check but the hash; another graph may fail earlier (its
    # external data points at another stage's weights), never later than the hash.
    text = str(refused.value)
    assert text.startswith("stage 1 ") and ("sha256" in text or "points at external data" in text), text
    if swap.startswith("weights"):
        assert f"weights {name!r} do not match their sha256" in text, text
    # The refusal is the swap's doing: with the file put back, the same path runs, right.
    (path / name).write_bytes(original)
    with corepipe.load(path, backend="inline") as pipe:
        np.testing.assert_allclose(pipe.run(CASE.feeds)["y"], REFERENCE["y"], rtol=1e-5, atol=1e-6)


# --- random mutations of a valid manifest --------------------------------------------------------

def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["stage_000.onnx", "../manifest.json", "float32", "int64", "/", "cpu"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, manifest: dict[str, Any]) -> dict[str, Any]:
    m = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(m)
        path = draw(st.sampled_from(paths))
        parent: Any = m
        for key in path[:-1]:
            parent = parent[key]
        kind = draw(st.sampled_from(["delete", "replace", "wrap", "add_key", "append"]))
        if not path:
            m = draw(JSON) if kind == "replace" else {"garbage": m}
            if not isinstance(m, dict):
                return m  # type: ignore[return-value]
            continue
        last = path[-1]
        target = parent[last]
        if kind == "delete":
            del parent[last]
        elif kind == "replace":
            parent[last] = draw(JSON)
        elif kind == "wrap":
            parent[last] = [target] if draw(st.booleans()) else {"v": target}
        elif kind == "add_key" and isinstance(target, dict):
            target[draw(st.text(max_size=8))] = draw(JSON)
        elif kind == "append" and isinstance(target, list):
            target.append(draw(JSON))
        else:
            parent[last] = str(target)
    return m


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`CASE` in two stages, each with its own weights file."""
    return corepipe.compile(CASE.model, tmp_path_factory.mktemp("pristine") / "art", cuts=[4]).path


@pytest.fixture(scope="module")
def fuzz_root(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(pristine, tmp_path_factory.mktemp("fuzz") / "art"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_manifest_mutations(pristine: Path, fuzz_root: Path, data: st.DataObject) -> None:
    """Refused, or still verified and still right: a mutation that loads may only change what
    does not matter (notes, estimates, unknown keys) or the signature requests are checked
    against (then the untouched request is refused as an `InputError`, before any stage)."""
    m = data.draw(mutated(read(pristine)), label="manifest")
    (fuzz_root / "manifest.json").write_text(json.dumps(m))
    try:
        pipe = corepipe.load(fuzz_root, backend="inline")
    except ArtifactError:
        event("refused")
        return
    with pipe:
        open_artifact(fuzz_root)  # it still verifies: schema, paths, every file's sha256
        try:
            got = pipe.run(CASE.feeds)
        except InputError:
            event("loaded; the request refused by the signature the manifest now declares")
            return
    event("loaded; the same answer")
    assert sorted(got) == sorted(REFERENCE)
    np.testing.assert_allclose(got["y"], REFERENCE["y"], rtol=1e-5, atol=1e-6)
