"""Same result as one onnxruntime session: every graph case, cut every way, run inline.

For each case: every single cut (2 stages) and the solver's own plans for 2, 3 and 4 cores with
``engine="auto"`` (OpenVINO wherever it computes the stage right, onnxruntime elsewhere), and
seeded random cut sets of 3 and 4 stages on onnxruntime alone. Each output must match the whole
model run by onnxruntime (values within the case's tolerance, dtype and shape exactly), and per
case the tensors that make the case hard must really have crossed a cut in at least one plan.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphcases import CASES, GraphCase, run_reference

import corepipe
from corepipe.artifact.plan import Plan
from corepipe.compiler.model.graph import ModelGraph, analyze

CASE_IDS = [make.__name__.removeprefix("case_") for make in CASES]


def compile_and_run(
    case: GraphCase, out: Path, **options: object
) -> tuple[corepipe.CompiledModel, dict[str, np.ndarray]]:
    cm = corepipe.compile(case.model, out, example_inputs=case.inputs(), **options)  # type: ignore[arg-type]
    with corepipe.load(out, backend="inline") as pipe:
        outputs = pipe.run(case.feeds)
    return cm, outputs


def assert_same(case: GraphCase, got: dict[str, np.ndarray], what: str) -> None:
    want = run_reference(case.model, case.feeds)
    assert list(got) == list(want), f"{case.name} {what}: output names/order"
    for name, ref in want.items():
        value = got[name]
        assert isinstance(value, np.ndarray), f"{case.name} {what}: {name} is {type(value)}"
        assert value.dtype == ref.dtype, f"{case.name} {what}: {name} dtype {value.dtype} != {ref.dtype}"
        assert value.shape == ref.shape, f"{case.name} {what}: {name} shape {value.shape} != {ref.shape}"
        np.testing.assert_allclose(
            value, ref, rtol=case.rtol, atol=case.atol, err_msg=f"{case.name} {what}: {name}"
        )


def assert_plan_sane(plan: Plan) -> None:
    plan.validate()
    for st in plan.stages:
        assert "" not in st.inputs + st.outputs + st.carried, st
    for boundary in plan.boundaries:
        assert all(t.name for t in boundary)


def node_count(case: GraphCase) -> int:
    return analyze(case.model, case.inputs()).n


def random_cut_sets(n: int, k: int, how_many: int, seed: int) -> list[list[int]]:
    every = list(itertools.combinations(range(1, n), k - 1))
    return [list(c) for c in random.Random(seed).sample(every, min(how_many, len(every)))]


# --- what each case's plans must show, over all plans compiled for it -------------------------

@dataclass
class Seen:
    """Every plan compiled for one case, where each was written, and the analysed graph."""

    graph: ModelGraph
    plans: list[Plan] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)


def middle(plan: Plan) -> list[set[str]]:
    """Names in the boundaries between stages (not the model inputs or outputs)."""
    return [{t.name for t in b} for b in plan.boundaries[1:-1]]


def crosses(seen: Seen, *names: str) -> bool:
    """All ``names`` sit together in some boundary between two stages of some plan."""
    return any(set(names) <= b for p in seen.plans for b in middle(p))


def never_crosses(seen: Seen, *names: str) -> bool:
    return not any(b & set(names) for p in seen.plans for b in middle(p))


def carried(seen: Seen, name: str) -> bool:
    """Some stage passes ``name`` along without computing with it."""
    return any(name in st.carried for p in seen.plans for st in p.stages)


def outer_read(seen: Seen, op: str, name: str) -> bool:
    """Some stage runs an ``op`` node and takes ``name`` as input only because that node's body
    reads it from the outer scope (no node of the stage lists it as a direct input)."""
    g = seen.graph
    for p in seen.plans:
        for st in p.stages:
            idx = range(st.node_start, st.node_end)
            direct = {x for i in idx for x in g.model.graph.node[i].input}
            if name in st.inputs and name not in direct and any(g.nodes[i].op_type == op for i in idx):
                return True
    return False


def weight_in_stages(out: Path, plan: Plan, weight: str) -> int:
    """How many stage files hold initializer ``weight`` (loaded with their external data)."""
    count = 0
    for st in plan.stages:
        model = onnx.load(str(out / st.file))
        count += weight in {t.name for t in model.graph.initializer}
    return count


def check_shared_weight(seen: Seen) -> bool:
    table = 160 * 8 * 4  # emb_table: float32[160, 8]
    for plan, out in zip(seen.plans, seen.dirs):
        heavy = [st for st in plan.stages if st.resident_bytes >= table]
        if len(heavy) >= 2 and weight_in_stages(out, plan, "emb_table") >= 2:
            return True
    return False


def has_dtype(seen: Seen, dtype: str, shape: tuple[int, ...] | None = None) -> bool:
    """A tensor of ``dtype`` (and ``shape``) sits in a boundary between two stages."""
    return any(
        t.dtype == dtype and (shape is None or t.shape == shape)
        for p in seen.plans for b in p.boundaries[1:-1] for t in b
    )


def last_stage_emits_w_and_two_stages_hold_it(seen: Seen) -> bool:
    if not all("w" in p.stages[-1].outputs for p in seen.plans):
        return False
    return any(weight_in_stages(d, p, "w") == 2 for p, d in zip(seen.plans, seen.dirs))


Check = Callable[[Seen], bool]
CONSTANTS = ("c_vec", "c_f", "c_ints", "c_late")
INTERESTING: dict[str, tuple[str, Check]] = {
    "skip_far": ("'early' and 'x' cross a middle boundary",
                 lambda s: crosses(s, "early") and crosses(s, "x")),
    "if_outer_scope": ("a stage running If takes outer 'b' as input",
                       lambda s: outer_read(s, "If", "b")),
    "loop_outer_scope": ("a stage running Loop takes outer 't' as input",
                         lambda s: outer_read(s, "Loop", "t")),
    "scan_outer_scope": ("a stage running Scan takes outer 'o' as input",
                         lambda s: outer_read(s, "Scan", "o")),
    "shared_weight_far": ("two stages both hold and count emb_table, and none a transposed copy",
                          lambda s: check_shared_weight(s)
                          and not any(weight_in_stages(d, p, "emb_t") for p, d in zip(s.plans, s.dirs))),
    "optional_empty_inputs": ("'c2' and 'p2' cross", lambda s: crosses(s, "c2") and crosses(s, "p2")),
    # The static input shape decides the arithmetic: its values are folded into weights.
    "shape_arith_int64": ("'new_shape' is a constant: it never crosses, the last stage emits it",
                          lambda s: never_crosses(s, "new_shape", "d12", "pos_2d")
                          and all("new_shape" in p.stages[-1].outputs for p in s.plans)),
    "constant_nodes": ("'x' crosses; folded constants never do",
                       lambda s: crosses(s, "x") and never_crosses(s, *CONSTANTS)),
    "input_is_output": ("input 'x' is carried to the outputs", lambda s: carried(s, "x")),
    "initializer_is_output": ("two stages hold w; the last stage emits it",
                              last_stage_emits_w_and_two_stages_hold_it),
    "output_early": ("output 'early' is carried past a stage", lambda s: carried(s, "early")),
    "float16": ("a float16 tensor crosses", lambda s: has_dtype(s, "float16")),
    "symbolic_dims": ("inputs fixed to [2,5,8]; 'pos_col', made from the fixed seq, never crosses",
                      lambda s: all(p.inputs[0].shape == (2, 5, 8) for p in s.plans)
                      and never_crosses(s, "pos_col", "shp", "seq_len")),
    "multi_io": ("'out_early' and int64 'ids' cross together",
                 lambda s: crosses(s, "out_early", "ids") and carried(s, "out_early")),
    "unused_input": ("'unused' stays a model input but never crosses",
                     lambda s: all("unused" in {t.name for t in p.inputs} for p in s.plans)
                     and never_crosses(s, "unused")),
    "diamond_branches": ("'pre' and 'cat' cross", lambda s: crosses(s, "pre") and crosses(s, "cat")),
    "bool_and_int_tensors": ("bool and int32 tensors cross",
                             lambda s: has_dtype(s, "bool") and has_dtype(s, "int32")),
    "scalar_and_empty": ("a 0-d and a [0,3] tensor cross",
                         lambda s: has_dtype(s, "float32", ()) and has_dtype(s, "float32", (0, 3))),
    "identity_chain_output_twice": ("output 'a' crosses", lambda s: crosses(s, "a")),
    "dropout_optional_output": ("'ln_inv_std' crosses; unread optional outputs never do",
                                lambda s: crosses(s, "ln_inv_std")
                                and never_crosses(s, "d_mask_unused", "p_idx_unused")),
    "unnamed_nodes": ("stages get non-empty node labels",
                      lambda s: all(st.first_node and st.last_node for p in s.plans for st in p.stages)),
}
# Cut sets beyond the single cuts, where one cut cannot show the case's point: the last node
# of scan_outer_scope reads 'o' directly, so only a stage holding Scan alone shows the outer read.
EXTRA_CUTS: dict[str, list[list[int]]] = {"scan_outer_scope": [[4, 5]]}


#: Cases whose every stage OpenVINO refuses, with the reason the plan gives.
OPENVINO_REFUSES = {"float16": "float16 tensors"}


def test_every_case_has_an_interesting_check() -> None:
    assert sorted(INTERESTING) == sorted(CASE_IDS)


@pytest.mark.parametrize("make", CASES, ids=CASE_IDS)
def test_every_single_cut(make: Callable[[], GraphCase], tmp_path: Path) -> None:
    case = make()
    n = node_count(case)
    assert n >= 3
    seen = Seen(analyze(case.model, case.inputs()))
    for cuts in [[c] for c in range(1, n)] + EXTRA_CUTS.get(case.name, []):
        out = tmp_path / ("cut" + "_".join(map(str, cuts)))
        cm, got = compile_and_run(case, out, cuts=cuts)
        assert [s.node_start for s in cm.stages] == [0, *cuts]
        assert cm.stages[-1].node_end == n
        assert_plan_sane(cm.plan)
        assert_same(case, got, f"cuts {cuts}")
        seen.plans.append(cm.plan)
        seen.dirs.append(out)
    what, check = INTERESTING[case.name]
    assert check(seen), f"{case.name}: no single cut shows that {what}"
    on_openvino = sum(st.engine == "openvino" for p in seen.plans for st in p.stages)
    if case.name in OPENVINO_REFUSES:  # every stage holds what OpenVINO refuses, and says so
        assert on_openvino == 0
        assert all(OPENVINO_REFUSES[case.name] in (st.fallback or "") for p in seen.plans for st in p.stages)
    else:
        assert on_openvino > 0, f"{case.name}: no stage of any cut ran on openvino"


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("make", CASES, ids=CASE_IDS)
def test_random_cut_sets(make: Callable[[], GraphCase], k: int, tmp_path: Path) -> None:
    case = make()
    n = node_count(case)
    for i, cuts in enumerate(random_cut_sets(n, k, how_many=5, seed=1000 * k + n)):
        out = tmp_path / f"k{k}_{i}"
        cm, got = compile_and_run(case, out, cuts=cuts, engine="onnxruntime")
        assert cm.num_cores == k
        assert [s.node_start for s in cm.stages] == [0, *cuts]
        assert_plan_sane(cm.plan)
        assert_same(case, got, f"cuts {cuts}")


@pytest.mark.parametrize("make", CASES, ids=CASE_IDS)
def test_solver_chosen_plans(make: Callable[[], GraphCase], tmp_path: Path) -> None:
    case = make()
    for k in (2, 3, 4):
        out = tmp_path / f"auto{k}"
        cm, got = compile_and_run(case, out, num_cores=k)
        assert cm.num_cores == k
        assert_plan_sane(cm.plan)
        assert_same(case, got, f"num_cores={k} (cuts {[s.node_start for s in cm.stages]})")
