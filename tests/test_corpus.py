"""Models as users bring them (`corpus`): every stage on OpenVINO wherever OpenVINO runs the model.

The rule, for every corpus model at 2, 4 and 8 stages: if OpenVINO compiles the whole model and
computes it right (checked here first), ``engine="auto"`` puts every stage on OpenVINO and
``engine="openvino"`` compiles; a failure names the model, the stage and the reason. With it, for
every plan: the pipelined outputs equal one onnxruntime session on the whole model (fp32, rtol =
atol = 1e-4, on the example inputs and a second request), no boundary carries an initializer or
a value computed from initializers and static shapes alone, and every stage graph is static (every
value typed with static dims in the ONNX file, every op's output static as OpenVINO reads it). At
bf16 (2 stages), each output is within the documented tolerance (`corepipe.engines.tolerance`).

The legacy exports (what the issue saw fall back) run by default; the dynamo, optimum, Keras and
zoo entries are marked slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import skip_unless_ci
from corpus import ENTRIES, HEAVY, load
from corpus.optimum_export import OptimumMissing
from graphcases import run_reference

import corepipe
from corepipe.artifact.plan import Plan
from corepipe.engines import cpu_math
from corepipe.engines.tolerance import close_enough, differs

pytest.importorskip("torch")
pytest.importorskip("transformers")
ov_engine = pytest.importorskip("corepipe.engines.ov")

CORES = (2, 4, 8)
RTOL = ATOL = 1e-4
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _param(name: str, *rest: object) -> object:
    fast = "-legacy" in name
    return pytest.param(name, *rest, id="-".join([name, *map(str, rest)]),
                        marks=() if fast else pytest.mark.slow)


LIGHT = [e for e in ENTRIES if e not in HEAVY]


@dataclass
class Model:
    name: str
    path: str
    requests: list[dict[str, np.ndarray]]
    references: list[dict[str, np.ndarray]]


_MODELS: dict[str, Model] = {}


def corpus_model(name: str) -> Model:
    """The export (cached on disk), its requests and the whole model's answers, once a session.
    Skips, saying why, where the export cannot be made here (optimum's environment missing), and
    where OpenVINO does not run the whole model right (the rule then asks nothing); with
    ``CI=true`` both fail instead, as the README promises every entry runs on OpenVINO. An export
    that fails is a failure everywhere."""
    if name not in _MODELS:
        try:
            path, requests = load(name)
        except OptimumMissing as exc:
            skip_unless_ci(f"{name}: {exc}")
        proto = onnx.load(path)
        _MODELS[name] = Model(name, path, requests, [run_reference(proto, r) for r in requests])
    model = _MODELS[name]
    why = openvino_whole_model(model)
    if why is not None:
        skip_unless_ci(f"{name}: OpenVINO does not run the whole model right ({why}): the rule asks nothing")
    return model


_WHOLE: dict[str, str | None] = {}


def openvino_whole_model(model: Model) -> str | None:
    """Why OpenVINO cannot run the whole export right, or None when it can."""
    if model.name not in _WHOLE:
        names = list(model.references[0])
        try:
            engine = ov_engine.OpenVinoEngine(model.path, inputs=list(model.requests[0]), outputs=names)
            got = engine.run(model.requests[0])
            bad = [f"{n} {p}" for n, g, w in zip(names, got, model.references[0].values())
                   if (p := differs(g, w, "fp32")) is not None]
            _WHOLE[model.name] = "; ".join(bad) or None
        except Exception as exc:
            _WHOLE[model.name] = str(exc)[:300]
    return _WHOLE[model.name]


def oracle_constants(path: str) -> set[str]:
    """Names the original model computes from initializers and static shapes alone, by the
    definition, independently of the compiler: initializers, Constant outputs, Shape and Size
    outputs (every shape here is static once the inputs are), and the outputs of deterministic
    ops without subgraphs whose inputs are all such names."""
    graph = onnx.load(path, load_external_data=False).graph
    const = {t.name for t in graph.initializer}
    for node in graph.node:
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if node.op_type in ("Shape", "Size") or (
                node.op_type not in _RANDOM and not subgraph and all(x in const for x in node.input if x)):
            const.update(o for o in node.output if o)
    return const


def static_problems(out: Path, plan: Plan) -> list[str]:
    """Where a stage graph is not static: a value without a static type in the ONNX file, or an
    op output OpenVINO's reader sees with a dynamic dim."""
    problems = []
    for st in plan.stages:
        g = onnx.load(str(out / st.file), load_external_data=False).graph
        typed = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            dims = vi.type.tensor_type.shape.dim
            typed[vi.name] = vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims)
        typed.update((t.name, True) for t in g.initializer)
        loose = [o for node in g.node for o in node.output if o and not typed.get(o)]
        if loose:
            problems.append(f"stage {st.index}: {len(loose)} values without a static type, e.g. {loose[:3]}")
        dynamic = ov_engine.dynamic_outputs(str(out / st.file))
        if dynamic:
            problems.append(f"stage {st.index}: OpenVINO reads {dynamic}")
    return problems


def fallbacks(plan: Plan, name: str) -> list[str]:
    return [f"{name}: stage {st.index} runs on {st.engine} {st.precision}: {st.fallback}"
            for st in plan.stages if st.engine != "openvino" or st.fallback]


def run_inline(out: Path, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    with corepipe.load(out, backend="inline") as pipe:
        return list(pipe.map(requests))


@pytest.mark.parametrize(("name", "k"), [_param(n, k) for n in LIGHT for k in CORES])
def test_every_stage_on_openvino_and_transparent(name: str, k: int, tmp_path: Path) -> None:
    model = corpus_model(name)
    cm = corepipe.compile(model.path, tmp_path, example_inputs=model.requests[0], num_cores=k)
    assert cm.num_cores == k
    assert not fallbacks(cm.plan, name), "\n".join(fallbacks(cm.plan, name))
    assert not [n for n in cm.plan.notes if "not static" in n], cm.plan.notes
    assert not static_problems(tmp_path, cm.plan), static_problems(tmp_path, cm.plan)
    # No boundary carries a weight or a value computed from weights and static shapes alone.
    consts = oracle_constants(model.path)
    crossing = sorted({t.name for b in cm.plan.boundaries[1:-1] for t in b} & consts)
    assert not crossing, f"{name} at {k} stages: constants cross a boundary: {crossing[:5]}"
    assert all(len(b) > 0 for b in cm.plan.boundaries[1:-1])
    token_ids_checked_at_intake(cm.plan, model, tmp_path)
    for r, (got, want) in enumerate(zip(run_inline(tmp_path, model.requests), model.references)):
        assert list(got) == list(want), f"{name} request {r}: output names/order"
        for out, ref in want.items():
            assert got[out].dtype == ref.dtype and got[out].shape == ref.shape, (name, r, out)
            np.testing.assert_allclose(got[out], ref, rtol=RTOL, atol=ATOL, err_msg=f"{name} k={k} request {r}: {out}")


def token_ids_checked_at_intake(plan: Plan, model: Model, out: Path) -> None:
    """The README's promise: each token-id input (an integer input named ``*input_ids``) has a
    range check in the plan, and an id past any table is an `InputError` at `submit` naming it,
    before anything runs; models without token ids (ViT, Whisper's encoder) have none to check."""
    request = model.requests[0]
    tokens = sorted(n for n, v in request.items() if v.dtype.kind in "iu" and n.endswith("input_ids"))
    if model.name.split("-")[0] in ("bert", "distilbert", "roberta", "gpt2"):  # text models take token ids
        assert tokens, f"{model.name}: no input named *input_ids among {sorted(request)}"
    checked = {c.input for c in plan.input_checks if c.kind == "range"}
    assert set(tokens) <= checked, f"{model.name}: token ids {tokens} not all checked at intake ({sorted(checked)})"
    with corepipe.load(out, backend="inline") as pipe:
        for name in tokens:
            bad = {**request, name: np.full_like(request[name], 10**9)}
            with pytest.raises(corepipe.InputError, match=f"input {name!r}.*out of range"):
                pipe.submit(bad)
        assert pipe.stats().completed == 0 and pipe.stats().failed == 0  # refused: nothing ran


# The zoo's CNNs at 8 stages only (the most cuts): test_transparency_real runs them at 2, 3, 4 and
# 8 stages with engine="auto", every stage on OpenVINO and transparent.
@pytest.mark.parametrize(("name", "k"), [_param(n, k) for n in ENTRIES for k in CORES if n not in HEAVY or k == 8])
def test_engine_openvino_compiles(name: str, k: int, tmp_path: Path) -> None:
    model = corpus_model(name)
    cm = corepipe.compile(model.path, tmp_path, example_inputs=model.requests[0], num_cores=k, engine="openvino")
    assert [st.engine for st in cm.stages] == ["openvino"] * k


@pytest.mark.parametrize("name", [_param(n) for n in LIGHT])
def test_bf16_within_documented_tolerance(name: str, tmp_path: Path) -> None:
    if not cpu_math().bf16:
        pytest.skip(f"no native bf16 on this CPU ({cpu_math().describe()}): bf16 is refused here")
    model = corpus_model(name)
    cm = corepipe.compile(model.path, tmp_path, example_inputs=model.requests[0], num_cores=2, precision="bf16")
    assert [(st.engine, st.precision) for st in cm.stages] == [("openvino", "bf16")] * 2, fallbacks(cm.plan, name)
    for r, (got, want) in enumerate(zip(run_inline(tmp_path, model.requests), model.references)):
        for out, ref in want.items():
            if ref.dtype.kind != "f":
                np.testing.assert_array_equal(got[out], ref)
                continue
            ok, figures = close_enough(got[out], ref, "bf16")
            assert ok, f"{name} request {r}: {out}: {figures}"
