"""Small contracts that are easy to get subtly wrong: contradicting options, loose manifest
types, non-int cuts, compiling over a user's files."""

from __future__ import annotations

import json

import pytest

import corepipe
from corepipe import zoo


@pytest.fixture(scope="module")
def mlp():
    return zoo.get("mlp")


def test_num_cores_contradicting_compiler_args_is_an_error(tmp_path, mlp):
    model, feeds = mlp
    with pytest.raises(corepipe.CompileError, match="contradicts compiler_args"):
        corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2,
                         compiler_args=["--num-neuroncores", "3"])
    cm = corepipe.compile(model, tmp_path / "b", example_inputs=feeds, num_cores=3,
                          compiler_args=["--num-neuroncores", "3"])
    assert cm.num_cores == 3


@pytest.mark.parametrize("cuts", [[1.5], ["2"], [True]])
def test_cuts_must_be_ints(tmp_path, mlp, cuts):
    model, feeds = mlp
    with pytest.raises(corepipe.CompileError, match="cuts"):
        corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=cuts)


def test_compiling_over_a_users_directory_is_a_compile_error(tmp_path, mlp):
    model, feeds = mlp
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(corepipe.CompileError, match="not a corepipe artifact"):
        corepipe.compile(model, tmp_path, example_inputs=feeds, num_cores=1)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("mutate", [
    lambda m: m.__setitem__("format_version", True),
    lambda m: m.__setitem__("format_version", 1.0),
    lambda m: m["plan"]["target"].__setitem__("devices", "1"),
    lambda m: m["plan"]["target"].__setitem__("core_memory", -5),
    lambda m: m["plan"]["target"].__setitem__("flops_per_s", "fast"),
    lambda m: m["plan"]["target"].__setitem__("extra", 1),
])
def test_loosely_typed_manifests_are_refused(tmp_path, mlp, mutate):
    model, feeds = mlp
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    path = cm.path / "manifest.json"
    manifest = json.loads(path.read_text())
    mutate(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(corepipe.ArtifactError):
        corepipe.load(cm.path, backend="inline")
