"""Same result as one onnxruntime session, on real architectures cut into 2, 3, 4 and 8 stages.

Architectures: the zoo's ResNet-50, DenseNet-121 and Inception-v1 (64x64 images), the zoo's
BERT (small config), and BERT and GPT-2 exported from transformers (tiny configs; skipped
without torch/transformers). Every plan runs on the inline backend with ``engine="auto"``, so on
OpenVINO (each test checks that every stage did), and each output's name, dtype, shape and
values must match the whole model on onnxruntime (rtol = atol = 1e-4), on the example inputs
and on a second, different request. Also: GPT-2's tied embedding / LM-head weight cut apart
(each stage holds and counts its own copy), ``num_cores="auto"`` picking the smallest core
count on ResNet-50 under a tight core memory, and bf16's documented tolerances
(`corepipe.engines.tolerance`) on the BERT export's hidden states and ResNet-50's logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import skip_unless_bf16
from graphcases import run_reference

import corepipe
from corepipe import zoo
from corepipe.artifact.plan import Plan
from corepipe.compiler.model.graph import ModelGraph, analyze
from corepipe.engines import make_session
from corepipe.engines.tolerance import (
    BF16_MIN_COSINE,
    TOP1_MARGIN,
    TOP1_MIN_AGREEMENT,
    close_enough,
    cosine,
    rel_l2,
)

pytestmark = pytest.mark.slow

RTOL = ATOL = 1e-4
CORES = (2, 3, 4, 8)
ZOO_BERT = {"num_layers": 2, "hidden": 64, "heads": 2, "intermediate": 128, "vocab": 500,
            "seq": 16}
HF_TINY = {"seq": 16, "num_layers": 2, "hidden": 64, "heads": 2, "vocab": 1000}
ZOO: dict[str, tuple[str, dict[str, Any], int]] = {  # id -> (zoo name, kwargs, token vocab)
    "resnet50": ("resnet50", {"image_size": 64}, 0),
    "densenet121": ("densenet121", {"image_size": 64}, 0),
    "inception_v1": ("inception_v1", {"image_size": 64}, 0),
    "zoo_bert": ("bert", ZOO_BERT, ZOO_BERT["vocab"]),
}
HF = {"hf_bert": "bert", "hf_gpt2": "gpt2"}


@dataclass
class Arch:
    """One architecture: what to compile (a ModelProto or an .onnx path) and its requests."""

    name: str
    model: onnx.ModelProto | str
    requests: list[dict[str, np.ndarray]]  # [example inputs, a second, different request]
    references: list[dict[str, np.ndarray]]  # one onnxruntime session on the whole model

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return self.requests[0]


def another_request(feeds: dict[str, np.ndarray], vocab: int) -> dict[str, np.ndarray]:
    """A second request of the same signature: new values, and a padded attention mask."""
    rng = np.random.default_rng(1)
    out = {}
    for name, value in feeds.items():
        if value.dtype == np.float32:
            out[name] = rng.standard_normal(value.shape, dtype=np.float32)
        elif name == "input_ids":
            out[name] = rng.integers(0, vocab, value.shape, dtype=np.int64)
        elif name == "attention_mask":
            mask = np.ones_like(value)
            mask[..., -3:] = 0  # the last tokens are padding
            out[name] = mask
        else:
            out[name] = value.copy()
    return out


def make_arch(name: str, model: onnx.ModelProto | str, feeds: dict[str, np.ndarray],
              vocab: int) -> Arch:
    proto = onnx.load(model) if isinstance(model, str) else model
    requests = [feeds, another_request(feeds, vocab)]
    return Arch(name, model, requests, [run_reference(proto, r) for r in requests])


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """The transformers BERT and GPT-2 exports, made once for this module."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from corepipe.frontends import export_transformers

    root = tmp_path_factory.mktemp("hf_exports")
    return {key: export_transformers(arch, root / f"{arch}.onnx", **HF_TINY)
            for key, arch in HF.items()}


@pytest.fixture(scope="module", params=[*ZOO, *HF])
def arch(request: pytest.FixtureRequest) -> Iterator[Arch]:
    if request.param in HF:
        path, feeds = request.getfixturevalue("hf_exports")[request.param]
        yield make_arch(request.param, str(path), feeds, HF_TINY["vocab"])
    else:
        name, kwargs, vocab = ZOO[request.param]
        model, feeds = zoo.get(name, **kwargs)
        yield make_arch(request.param, model, feeds, vocab)


def run_inline(out: Path, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    with corepipe.load(out, backend="inline") as pipe:
        return list(pipe.map(requests))


def assert_same(arch: Arch, got: list[dict[str, np.ndarray]], what: str) -> None:
    assert len(got) == len(arch.references)
    for r, (outputs, want) in enumerate(zip(got, arch.references)):
        where = f"{arch.name} {what} request {r}"
        assert list(outputs) == list(want), f"{where}: output names/order"
        for name, ref in want.items():
            value = outputs[name]
            assert isinstance(value, np.ndarray), f"{where}: {name} is {type(value)}"
            assert value.dtype == ref.dtype, f"{where}: {name} dtype {value.dtype} != {ref.dtype}"
            assert value.shape == ref.shape, f"{where}: {name} shape {value.shape} != {ref.shape}"
            np.testing.assert_allclose(value, ref, rtol=RTOL, atol=ATOL, err_msg=f"{where}: {name}")


def expected_resident(graph: ModelGraph, start: int, end: int) -> int:
    """Bytes of the distinct weights that nodes ``start .. end - 1`` read, counted here."""
    names = {w for node in graph.nodes[start:end] for w in node.weights}
    return sum(graph.weight_bytes[w] for w in names)


def assert_plan_matches_graph(plan: Plan, graph: ModelGraph, k: int) -> None:
    plan.validate()
    assert plan.num_cores == k
    assert plan.num_nodes == graph.n
    for st in plan.stages:
        assert st.resident_bytes == expected_resident(graph, st.node_start, st.node_end), st.index


@pytest.mark.parametrize("k", CORES)
def test_pipeline_matches_whole_model(arch: Arch, k: int, tmp_path: Path) -> None:
    cm = corepipe.compile(arch.model, tmp_path, example_inputs=arch.feeds, num_cores=k)
    assert_plan_matches_graph(cm.plan, analyze(arch.model, arch.feeds), k)
    assert [st.engine for st in cm.stages] == ["openvino"] * k, [st.fallback for st in cm.stages]
    # The cuts are real: every boundary between two stages carries something.
    assert all(len(b) > 0 for b in cm.plan.boundaries[1:-1])
    assert_same(arch, run_inline(tmp_path, arch.requests), f"num_cores={k}")


def tied_weight(graph: ModelGraph) -> tuple[str, int, int]:
    """(weight, embedding Gather index, LM-head user index) of GPT-2's tied table."""
    for w in graph.weight_bytes:
        users = [n for n in graph.nodes if w in n.weights]
        gathers = [n.index for n in users if n.op_type == "Gather"]
        heads = [n.index for n in users if n.op_type != "Gather"]
        if gathers and heads:
            return w, gathers[0], heads[-1]
    raise AssertionError("no initializer is read by both an embedding Gather and the LM head")


def test_gpt2_tied_embedding_cut_apart(hf_exports: dict[str, tuple[Path, dict]],
                                       tmp_path: Path) -> None:
    path, feeds = hf_exports["hf_gpt2"]
    arch = make_arch("hf_gpt2", str(path), feeds, HF_TINY["vocab"])
    graph = analyze(arch.model, feeds)
    weight, gather, head = tied_weight(graph)
    size = graph.weight_bytes[weight]
    assert size == HF_TINY["vocab"] * HF_TINY["hidden"] * 4
    assert head - gather > 2
    cut = (gather + head) // 2
    cm = corepipe.compile(arch.model, tmp_path, example_inputs=feeds, cuts=[cut])
    assert_plan_matches_graph(cm.plan, graph, 2)

    def stage_of(node: int) -> int:
        return next(s.index for s in cm.stages if s.node_start <= node < s.node_end)

    holders = (stage_of(gather), stage_of(head))
    assert holders == (0, 1), f"the cut at {cut} leaves both users of {weight!r} in one stage"
    for s in holders:
        st = cm.stages[s]
        assert st.resident_bytes >= size, f"stage {s} does not count {weight!r}"
        stage_model = onnx.load(str(tmp_path / st.file))
        assert weight in {t.name for t in stage_model.graph.initializer}, f"stage {s} lacks it"
    assert cm.plan.resident_bytes >= sum(graph.weight_bytes.values()) + size  # a second copy
    assert_same(arch, run_inline(tmp_path, arch.requests), f"cuts=[{cut}]")


def test_auto_picks_the_smallest_core_count(tmp_path: Path) -> None:
    name, kwargs, vocab = ZOO["resnet50"]
    model, feeds = zoo.get(name, **kwargs)
    total = sum(analyze(model, feeds).weight_bytes.values())
    core_memory = int(total * 0.4)  # at least 3 stages: two would hold at most 80 %
    cm = corepipe.compile(model, tmp_path / "auto", example_inputs=feeds, num_cores="auto",
                          core_memory=core_memory)
    n = cm.num_cores
    assert n >= 3
    assert all(st.resident_bytes <= core_memory for st in cm.stages)
    with pytest.raises(corepipe.DoesNotFitError) as info:
        corepipe.compile(model, tmp_path / "fewer", example_inputs=feeds, num_cores=n - 1,
                         core_memory=core_memory)
    assert info.value.min_cores == n
    assert info.value.capacity == core_memory
    arch = make_arch("resnet50", model, feeds, vocab)
    assert_same(arch, run_inline(tmp_path / "auto", arch.requests), f"num_cores='auto' ({n})")


# --- bf16: the documented tolerances on real exported models -------------------------------------



def test_bf16_bert_hidden_states_within_tolerance(hf_exports: dict[str, tuple[Path, dict]],
                                                  tmp_path: Path) -> None:
    skip_unless_bf16(tmp_path / "refused")
    path, feeds = hf_exports["hf_bert"]
    arch = make_arch("hf_bert", str(path), feeds, HF_TINY["vocab"])
    cm = corepipe.compile(arch.model, tmp_path, example_inputs=feeds, num_cores=2, precision="bf16")
    assert [(st.engine, st.precision) for st in cm.stages] == [("openvino", "bf16")] * 2
    errors = []
    for got, want in zip(run_inline(tmp_path, arch.requests), arch.references):
        ok, figures = close_enough(got["last_hidden_state"], want["last_hidden_state"], "bf16")
        assert ok, figures
        assert cosine(got["last_hidden_state"], want["last_hidden_state"]) >= BF16_MIN_COSINE
        errors.append(rel_l2(got["last_hidden_state"], want["last_hidden_state"]))
    assert max(errors) > 1e-4, "no bf16 rounding at all: the stages ran fp32"


def test_bf16_resnet50_top1_agreement(tmp_path: Path) -> None:
    skip_unless_bf16(tmp_path / "refused")
    model, feeds = zoo.get("resnet50", image_size=64)
    cm = corepipe.compile(model, tmp_path, example_inputs=feeds, num_cores=2, precision="bf16")
    assert [(st.engine, st.precision) for st in cm.stages] == [("openvino", "bf16")] * 2
    requests = [zoo.example_inputs(model, seed=i) for i in range(32)]
    reference = make_session(model.SerializeToString(), 1)
    want = [reference.run(["logits"], r)[0] for r in requests]
    agree, errors = [], []
    for got, ref in zip(run_inline(tmp_path, requests), want):
        ok, figures = close_enough(got["logits"], ref, "bf16")
        assert ok, figures
        errors.append(rel_l2(got["logits"], ref))
        top = np.sort(ref.ravel())
        same = int(got["logits"].argmax()) == int(ref.argmax())
        assert same or (top[-1] - top[-2]) <= TOP1_MARGIN * np.ptp(top), "a clear top-1 flipped"
        agree.append(same)
    assert np.mean(agree) >= TOP1_MIN_AGREEMENT
    assert max(errors) > 1e-4, "no bf16 rounding at all: the stages ran fp32"
