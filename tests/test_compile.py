"""`corepipe.compile`: core counts, errors that say what to do, targets, and stable artifacts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from graphcases import CASES, GraphCase, big_weight_model, broken_models, run_reference

import corepipe
from corepipe.artifact.plan import Plan
from corepipe.artifact.sizes import format_bytes, parse_size
from corepipe.artifact.target import resolve_target
from corepipe.compiler.model.graph import analyze
from corepipe.errors import CompileError, CorepipeError, DoesNotFitError

KIB = 1024


def case(name: str) -> GraphCase:
    return next(make() for make in CASES if make.__name__ == f"case_{name}")


def check_runs(cm: corepipe.CompiledModel, c: GraphCase) -> None:
    with corepipe.load(cm.path, backend="inline") as pipe:
        got = pipe.run(c.feeds)
    for name, want in run_reference(c.model, c.feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=c.rtol, atol=c.atol)


# --- how many cores ----------------------------------------------------------------------------

def test_auto_picks_the_smallest_core_count_that_fits(tmp_path: Path) -> None:
    # Weights 64, 64, 128, 64 KiB in a chain; 160 KiB per core. Two cores cannot hold them
    # (every 2-way split leaves >= 192 KiB on one side); three can: [64+64][128][64] or similar.
    c = big_weight_model([64 * KIB, 64 * KIB, 128 * KIB, 64 * KIB])
    cm = corepipe.compile(c.model, tmp_path / "auto", core_memory="160KiB")
    assert cm.num_cores == 3
    assert all(s.resident_bytes <= 160 * KIB for s in cm.stages)
    assert sum(s.resident_bytes for s in cm.stages) == 320 * KIB
    check_runs(cm, c)

    with pytest.raises(DoesNotFitError) as info:
        corepipe.compile(c.model, tmp_path / "two", core_memory="160KiB", num_cores=2)
    err = info.value
    assert err.min_cores == 3
    assert err.capacity == 160 * KIB
    assert err.needed > err.capacity
    message = str(err)
    assert re.search(r"stage \d+ needs", message), message
    assert format_bytes(err.needed) in message
    assert format_bytes(160 * KIB) in message
    assert "smallest core count that fits is 3" in message
    assert not (tmp_path / "two").exists()


def test_auto_with_room_for_everything_uses_one_core(tmp_path: Path) -> None:
    c = big_weight_model([8 * KIB, 8 * KIB])
    cm = corepipe.compile(c.model, tmp_path / "a", core_memory="1MiB")
    assert cm.num_cores == 1
    check_runs(cm, c)


def test_one_node_over_capacity_fits_no_core_count(tmp_path: Path) -> None:
    c = big_weight_model([64 * KIB, 256 * KIB])
    for num_cores in ("auto", 3):
        with pytest.raises(DoesNotFitError) as info:
            corepipe.compile(c.model, tmp_path / "a", core_memory="160KiB", num_cores=num_cores)
        err = info.value
        assert err.min_cores is None
        assert err.needed == 256 * KIB
        assert "'MatMul_mm1'" in str(err)
        assert format_bytes(256 * KIB) in str(err) and format_bytes(160 * KIB) in str(err)


def test_explicit_cuts_over_capacity_do_not_fit(tmp_path: Path) -> None:
    # Two 64 KiB weights, 100 KiB per core: cut before node 4 fits; cut before node 5 puts
    # both MatMuls (nodes 0 and 4) in stage 0. The error must name that stage of those cuts.
    c = big_weight_model([64 * KIB, 64 * KIB])
    corepipe.compile(c.model, tmp_path / "ok", core_memory="100KiB", cuts=[4])
    with pytest.raises(DoesNotFitError) as info:
        corepipe.compile(c.model, tmp_path / "a", core_memory="100KiB", cuts=[5])
    err = info.value
    assert err.min_cores == 2 and err.needed == 128 * KIB
    assert "cuts [5]" in str(err) and f"stage 0 needs {format_bytes(128 * KIB)}" in str(err), str(err)


def test_more_cores_than_nodes(tmp_path: Path) -> None:
    c = case("skip_far")
    n = analyze(c.model, c.feeds).n
    corepipe.compile(c.model, tmp_path / "ok", num_cores=n)
    with pytest.raises(CompileError, match=rf"{n + 1} cores for {n} nodes"):
        corepipe.compile(c.model, tmp_path / "a", num_cores=n + 1)


@pytest.mark.parametrize("bad", [0, -1, True, "two", 1.5, None])
def test_bad_num_cores(bad: object, tmp_path: Path) -> None:
    c = case("skip_far")
    with pytest.raises(CompileError, match="num_cores"):
        corepipe.compile(c.model, tmp_path / "a", num_cores=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("cuts", [[3, 3], [5, 2], [0, 12], [-1], [12]])
def test_bad_cuts(cuts: list[int], tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="cuts"):
        corepipe.compile(case("skip_far").model, tmp_path / "a", cuts=cuts)


# --- invalid models and example inputs ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(broken_models()))
def test_invalid_model_names_the_checker(name: str, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="ONNX checker") as info:
        corepipe.compile(broken_models()[name], tmp_path / "a")
    assert "OpType:" in str(info.value)  # the checker's detail (which node) survives its line break
    assert not (tmp_path / "a").exists()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="does not exist"):
        corepipe.compile(tmp_path / "nope.onnx", tmp_path / "a")


def test_symbolic_dims_need_an_example_input(tmp_path: Path) -> None:
    c = case("symbolic_dims")
    with pytest.raises(CompileError, match=r"input 'x' has symbolic dims \[\?,\?,8\]") as info:
        corepipe.compile(c.model, tmp_path / "a")
    assert "example_inputs" in str(info.value)


def test_model_path_and_symbolic_dims(tmp_path: Path) -> None:
    c = case("symbolic_dims")
    path = tmp_path / "m.onnx"
    path.write_bytes(c.model.SerializeToString())
    cm = corepipe.compile(path, tmp_path / "a", example_inputs=c.example_inputs, num_cores=2)
    assert cm.inputs[0].shape == (2, 5, 8)
    check_runs(cm, c)


@pytest.mark.parametrize(
    "examples, match",
    [
        ({"x": np.zeros((2, 5, 8), np.float64)}, r"'x' is float64, the model declares float32"),
        ({"x": np.zeros((2, 5, 7), np.float32)}, r"'x' has shape \[2, 5, 7\], the model declares \[\?,\?,8\]"),
        ({"x": np.zeros((5, 8), np.float32)}, r"'x' has shape \[5, 8\]"),
        ({"x": np.zeros((2, 5, 8), np.float32), "y": np.zeros(1)}, r"\['y'\], which are not model inputs"),
    ],
)
def test_bad_example_inputs(examples: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=match):
        corepipe.compile(case("symbolic_dims").model, tmp_path / "a", example_inputs=examples)


def test_example_input_contradicting_a_static_dim(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"'x' has shape \[3, 8\], the model declares \[2,8\]"):
        corepipe.compile(case("skip_far").model, tmp_path / "a",
                         example_inputs={"x": np.zeros((3, 8), np.float32)})


# --- Neuron-style compiler arguments -----------------------------------------------------------

def test_neuron_compiler_args(tmp_path: Path) -> None:
    c = case("skip_far")
    cm = corepipe.compile(c.model, tmp_path / "a",
                          compiler_args=["--static-weights", "--num-neuroncores", "3"])
    assert cm.num_cores == 3 and len(cm.stages) == 3
    check_runs(cm, c)
    cm = corepipe.compile(c.model, tmp_path / "b", compiler_args=["--neuroncore-pipeline-cores=2"])
    assert cm.num_cores == 2
    check_runs(cm, c)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--static-weights", "--fast-math"], "'--fast-math'"),
        (["-O2"], "'-O2'"),
        (["--num-neuroncores"], "positive core count"),
        (["--num-neuroncores", "zero"], "positive core count, got 'zero'"),
        (["--num-neuroncores=0"], "positive core count"),
    ],
)
def test_bad_compiler_args(args: list[str], match: str, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=match):
        corepipe.compile(case("skip_far").model, tmp_path / "a", compiler_args=args)


# --- targets and sizes -------------------------------------------------------------------------

def test_inf1_places_four_stages_per_device(tmp_path: Path) -> None:
    cm = corepipe.compile(case("skip_far").model, tmp_path / "a", target="inf1", num_cores=6)
    assert [(s.device, s.core) for s in cm.stages] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert cm.plan.target.name == "inf1" and cm.plan.target.cores_per_device == 4


def test_inf1_cross_device_handoff_costs_more(tmp_path: Path) -> None:
    inf1 = resolve_target("inf1")
    for nbytes in (0, 64, 1 << 20):
        assert inf1.handoff_s(nbytes, cross_device=True) > inf1.handoff_s(nbytes, cross_device=False)
    # Same model, same cuts: once on inf1 and once on a copy of inf1 whose chip-to-chip link is
    # as fast as the on-chip one. Only the two stages beside the device crossing (3 | 4) differ,
    # each by exactly the extra hand-off cost of the boundary between them.
    flat = dataclasses.replace(inf1, cross_device_latency_s=inf1.link_latency_s,
                               cross_device_bytes_per_s=inf1.link_bytes_per_s)
    c = case("skip_far")
    cuts = [1, 3, 5, 7, 9]
    real = corepipe.compile(c.model, tmp_path / "real", target=inf1, cuts=cuts).plan
    same = corepipe.compile(c.model, tmp_path / "flat", target=flat, cuts=cuts).plan
    nbytes = sum(t.nbytes for t in real.boundaries[4])
    assert nbytes > 0
    extra = inf1.handoff_s(nbytes, cross_device=True) - inf1.handoff_s(nbytes, cross_device=False)
    for s, (a, b) in enumerate(zip(real.stages, same.stages)):
        if s in (3, 4):
            assert a.estimated_s == pytest.approx(b.estimated_s + extra, rel=1e-9), s
        else:
            assert a.estimated_s == pytest.approx(b.estimated_s, rel=1e-12), s


def test_unknown_target(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"unknown target 'tpu9'.*\['cpu', 'inf1', 'ray'\]"):
        corepipe.compile(case("skip_far").model, tmp_path / "a", target="tpu9")


@pytest.mark.parametrize("bad", ["lots", "12 parsecs", "-5MiB", "0", 0, -1, 0.5, float("inf"), "9" * 400])
def test_bad_core_memory(bad: object, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="core_memory"):
        corepipe.compile(case("skip_far").model, tmp_path / "a", core_memory=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("64MiB", 64 * 2**20), ("1.5 GB", 1_500_000_000), ("4096", 4096), (4096, 4096),
        (" 2 kib ", 2048), ("1k", 1000), ("3B", 3), ("1.5KiB", 1536), ("2GiB", 2 * 2**30),
        ("1TB", 10**12), (2.9, 2), ("7.", 7),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", ["", "MiB", "abc", "-1", "0", "0.1B", "1e3", "1.5 XB", "1 2", ".5k", True, False, 0, -3,
            0.2, float("nan"), float("inf"), "9" * 400],
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]


# --- artifacts: stable, round-tripping, validated, safe to write --------------------------------

def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("name", ["big_weight", "shared_weight_far", "if_outer_scope", "constant_nodes"])
def test_same_inputs_give_byte_identical_artifacts(name: str, tmp_path: Path) -> None:
    make = (lambda: big_weight_model([8 * KIB, 4 * KIB, 8 * KIB])) if name == "big_weight" else (lambda: case(name))
    c = make()
    one = corepipe.compile(c.model, tmp_path / "one", num_cores=3, example_inputs=c.inputs())
    two = corepipe.compile(make().model, tmp_path / "elsewhere" / "two", num_cores=3,
                           example_inputs=c.inputs())
    a, b = _files(one.path), _files(two.path)
    assert sorted(a) == sorted(b)
    assert "manifest.json" in a and (name != "big_weight" or "stage_002.weights" in a)
    for fname in a:
        assert a[fname] == b[fname], fname


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    for name, kwargs in [("multi_io", {"num_cores": 3}), ("skip_far", {"target": "inf1", "num_cores": 6}),
                         ("scalar_and_empty", {"cuts": [3, 9]})]:
        c = case(name)
        plan = corepipe.compile(c.model, tmp_path / name, example_inputs=c.inputs(), **kwargs).plan
        assert Plan.from_dict(plan.to_dict()) == plan
        assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert Plan.from_dict(manifest["plan"]) == plan
        assert corepipe.CompiledModel.open(tmp_path / name).plan == plan


def _broken_plans(plan: Plan) -> dict[str, Plan]:
    s0, s1, s2 = plan.stages
    r = dataclasses.replace
    return {
        "mislabelled": r(plan, stages=(s0, r(s1, index=2), s2)),
        "gap": r(plan, stages=(s0, r(s1, node_start=s1.node_start + 1), s2)),
        "empty stage": r(plan, stages=(s0, r(s1, node_end=s1.node_start), s2)),
        "short": r(plan, num_nodes=plan.num_nodes + 1),
        "too few boundaries": r(plan, boundaries=plan.boundaries[:-1]),
        "reads unknown": r(plan, stages=(s0, r(s1, inputs=(*s1.inputs, "ghost")), s2)),
        "carries unknown": r(plan, stages=(s0, r(s1, carried=(*s1.carried, "ghost")), s2)),
        "drops an output": r(plan, stages=(s0, s1, r(s2, outputs=s2.outputs[1:]))),
        "over memory": r(plan, stages=(s0, r(s1, resident_bytes=plan.target.core_memory + 1), s2)),
        "no stages": r(plan, stages=(), boundaries=plan.boundaries[:1]),
        "stray input": r(plan, boundaries=((*plan.boundaries[0], plan.outputs[0]), *plan.boundaries[1:])),
        "outputs reordered": r(plan, boundaries=(*plan.boundaries[:-1], plan.boundaries[-1][::-1])),
    }


BROKEN = ["mislabelled", "gap", "empty stage", "short", "too few boundaries", "reads unknown",
          "carries unknown", "drops an output", "over memory", "no stages", "stray input",
          "outputs reordered"]


@pytest.mark.parametrize("how", BROKEN)
def test_validate_catches_hand_broken_plans(how: str, tmp_path: Path) -> None:
    plan = corepipe.compile(case("multi_io").model, tmp_path / "a", num_cores=3).plan
    plan.validate()
    broken = _broken_plans(plan)
    assert sorted(broken) == sorted(BROKEN)
    with pytest.raises(ValueError):
        broken[how].validate()


def test_refuses_a_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    c = case("skip_far")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(CorepipeError, match="not a corepipe artifact"):
        corepipe.compile(c.model, mine, num_cores=2)
    assert _files(mine) == {"notes.txt": b"precious"}
    # Some other tool's manifest.json does not make a directory ours to delete.
    (mine / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(CorepipeError, match="not a corepipe artifact"):
        corepipe.compile(c.model, mine, num_cores=2)
    assert sorted(_files(mine)) == ["manifest.json", "notes.txt"]
    # Nor does a real artifact with the user's own file dropped in beside it.
    art = tmp_path / "art"
    corepipe.compile(c.model, art, num_cores=2)
    (art / "notes.txt").write_text("precious")
    with pytest.raises(CorepipeError, match="not a corepipe artifact"):
        corepipe.compile(c.model, art, num_cores=3)
    assert (art / "notes.txt").read_text() == "precious"
    # A plain file in the way is refused too; no temporary directories are left behind.
    (tmp_path / "file").write_text("x")
    with pytest.raises(CorepipeError):
        corepipe.compile(c.model, tmp_path / "file", num_cores=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "file", "mine"]


def test_recompiling_replaces_an_artifact(tmp_path: Path) -> None:
    c = case("skip_far")
    out = tmp_path / "a"
    corepipe.compile(c.model, out, num_cores=4)
    assert (out / "stage_003.onnx").exists()
    cm = corepipe.compile(c.model, out, num_cores=2)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == ["stage_000.onnx", "stage_001.onnx"]
    assert corepipe.CompiledModel.open(out).num_cores == 2
    check_runs(cm, c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_compiling_into_an_empty_directory(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    cm = corepipe.compile(case("skip_far").model, out, num_cores=2)
    assert (out / "manifest.json").is_file() and cm.num_cores == 2


def test_model_proto_is_not_modified(tmp_path: Path) -> None:
    c = case("constant_nodes")
    before = c.model.SerializeToString()
    corepipe.compile(c.model, tmp_path / "a", num_cores=3)
    assert c.model.SerializeToString() == before
