"""Decoders through the compiler (issue 25, part 1): each corpus decoder compiled into 2 and 4
stages runs, stage graph by stage graph with onnxruntime (prefill with an empty past, then decode
steps feeding each stage's presents back as its pasts), to what one onnxruntime session on the
whole model computes; every boundary carries the hidden state alone; each pair lives in one
stage. The runtime that does this with a KV store per stage is tested by decrt's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from decoders import decoder_model_or_skip, session

import corepipe
from corepipe.artifact import open_artifact
from corepipe.artifact.decoder import DecoderSpec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _sessions(art: Path) -> list[ort.InferenceSession]:
    plan = open_artifact(art).plan
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return [ort.InferenceSession(str(art / st.file), opts, providers=["CPUExecutionProvider"]) for st in plan.stages]


def _step_inputs(dec: DecoderSpec, ids: np.ndarray, past_len: int) -> dict[str, np.ndarray]:
    b, n = ids.shape
    feeds = {dec.input_ids: ids}
    if dec.attention_mask is not None:
        feeds[dec.attention_mask] = np.ones((b, past_len + n), np.int64)
    if dec.position_ids is not None:
        feeds[dec.position_ids] = np.broadcast_to(np.arange(past_len, past_len + n), (b, n)).astype(np.int64)
    return feeds


def _run_stages(art: Path, sessions: list[ort.InferenceSession], ids: np.ndarray, past: dict[str, np.ndarray],
                past_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One step through the stage graphs in order: each stage gets its boundary, the step inputs
    it reads and its own pairs' pasts; returns the logits and every pair's present."""
    plan = open_artifact(art).plan
    dec = plan.decoder
    assert dec is not None
    step = _step_inputs(dec, ids, past_len)
    boundary = {dec.input_ids: ids}
    presents: dict[str, np.ndarray] = {}
    for st, sess in zip(plan.stages, sessions):
        feeds = {}
        for name in st.inputs:
            feeds[name] = boundary[name] if name in boundary else step[name] if name in step else past[name]
        outs = dict(zip(st.outputs, sess.run(list(st.outputs), feeds)))
        boundary = {name: boundary[name] for name in st.carried} | {
            k: v for k, v in outs.items() if k not in dec.local_outputs(st.index)}
        presents.update({k: v for k, v in outs.items() if k in dec.local_outputs(st.index)})
    return boundary[dec.logits], presents


def _empty_past(dec: DecoderSpec, batch: int) -> dict[str, np.ndarray]:
    return {p.past: np.zeros(p.shape(batch, 0), p.dtype) for p in dec.pairs}


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt2_legacy"])
def model(request: Any) -> Path:
    return decoder_model_or_skip(request.param)


@pytest.mark.parametrize("stages", [2, 4])
def test_stages_in_sequence_equal_the_whole_model(model: Path, stages: int, tmp_path: Path) -> None:
    art = tmp_path / "art"
    cm = corepipe.compile(model, art, num_cores=stages, engine="onnxruntime", max_sequences=4, max_length=64)
    dec = cm.plan.decoder
    assert dec is not None and len(cm.stages) == stages
    whole = session(model)
    pairs = [(p.past, p.present) for p in dec.pairs]
    sessions = _sessions(art)
    rng = np.random.default_rng(0)
    batch = 2
    ids = rng.integers(1, 1000, (batch, 5)).astype(np.int64)
    past = _empty_past(dec, batch)
    ref_past = dict(past)
    length = 0
    for _ in range(4):  # the prefill, then three decode steps
        logits, presents = _run_stages(art, sessions, ids, past, length)
        ref = whole.run(None, _step_inputs(dec, ids, length) | ref_past)
        names = [o.name for o in whole.get_outputs()]
        want = dict(zip(names, ref))
        np.testing.assert_allclose(logits, want[dec.logits], rtol=1e-4, atol=1e-4)
        for _, p_out in pairs:
            np.testing.assert_allclose(presents[p_out], want[p_out], rtol=1e-4, atol=1e-4)
        past = {p_in: presents[p_out] for p_in, p_out in pairs}
        ref_past = {p_in: want[p_out] for p_in, p_out in pairs}
        length += ids.shape[1]
        ids = np.argmax(logits[:, -1:], axis=-1).astype(np.int64)


def test_a_right_padded_batch_equals_the_whole_model(model: Path, tmp_path: Path) -> None:
    """Rows of different past lengths in one step, as the runtime batches decode steps: each row's
    past right-padded to the longest, its mask ``[1]*P_i + [0]*(Pmax-P_i) + [1]*n``, its positions
    from ``P_i``. The mask and positions are recomputed in each stage, so they must agree."""
    art = tmp_path / "art"
    cm = corepipe.compile(model, art, num_cores=4, engine="onnxruntime", max_sequences=4, max_length=64)
    dec = cm.plan.decoder
    assert dec is not None
    rng = np.random.default_rng(1)
    lengths, pmax, n = [6, 3, 0], 6, 1
    ids = rng.integers(1, 1000, (3, n)).astype(np.int64)
    past = {p.past: rng.standard_normal(p.shape(3, pmax)).astype(p.dtype) for p in dec.pairs}
    mask = np.array([[1] * p + [0] * (pmax - p) + [1] * n for p in lengths], np.int64)
    positions = np.array([list(range(p, p + n)) for p in lengths], np.int64)
    feeds = {dec.input_ids: ids, **past}
    if dec.attention_mask is not None:
        feeds[dec.attention_mask] = mask
    if dec.position_ids is not None:
        feeds[dec.position_ids] = positions
    plan = cm.plan
    boundary: dict[str, np.ndarray] = {dec.input_ids: ids}
    presents = {}
    for st, sess in zip(plan.stages, _sessions(art)):
        outs = dict(zip(st.outputs, sess.run(list(st.outputs), {k: boundary.get(k, feeds.get(k)) for k in st.inputs})))
        boundary = {k: v for k, v in outs.items() if k not in dec.local_outputs(st.index)}
        presents.update({k: v for k, v in outs.items() if k in dec.local_outputs(st.index)})
    whole = session(model)
    want = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, feeds)))
    np.testing.assert_allclose(boundary[dec.logits], want[dec.logits], rtol=1e-4, atol=1e-4)
    for p in dec.pairs:
        np.testing.assert_allclose(presents[p.present], want[p.present], rtol=1e-4, atol=1e-4)


def test_boundaries_carry_the_hidden_state_alone(model: Path, tmp_path: Path) -> None:
    cm = corepipe.compile(model, tmp_path / "art", num_cores=4, engine="onnxruntime", max_sequences=4, max_length=64)
    plan, dec = cm.plan, cm.plan.decoder
    assert dec is not None
    width = None
    for k, boundary in enumerate(plan.boundaries[1:-1], start=1):
        assert len(boundary) == 1, f"boundary {k} holds {[t.name for t in boundary]}"
        hidden = boundary[0]
        assert hidden.dtype == "float32" and len(hidden.shape) == 3
        assert hidden.dims[:2] == (plan.shapes.batch, next(d for d in hidden.dims[1:2])) and hidden.dims[2] is None
        width = width or hidden.shape[2]
        assert hidden.shape[2] == width
    assert [t.name for t in plan.boundaries[0]] == [dec.input_ids]
    assert [t.name for t in plan.boundaries[-1]] == [dec.logits] == [t.name for t in plan.outputs]
    state = {p.past for p in dec.pairs} | {p.present for p in dec.pairs}
    assert not state & {t.name for t in plan.inputs}
    for st in plan.stages:  # pairs by stage, and stage graphs dynamic over batch, new tokens, past
        mine = dec.pairs_of(st.index)
        assert {p.past for p in mine} <= set(st.inputs) and {p.present for p in mine} <= set(st.outputs)
        assert not (set(st.inputs) | set(st.outputs)) & (state - {p.past for p in mine} - {p.present for p in mine})
        assert st.resident_bytes >= dec.kv_bytes(st.index) and st.shape_mode == "dynamic"
        graph = onnx.load(str(cm.path / st.file), load_external_data=False).graph
        declared = {vi.name: vi.type.tensor_type.shape.dim for vi in [*graph.input, *graph.output]}
        for p in mine:
            for name in (p.past, p.present):
                dims = declared[name]
                assert dims[p.batch_axis].dim_param and dims[p.length_axis].dim_param, (name, dims)
        for name in st.inputs:  # the hidden state too: batch and new tokens stay free
            if name not in dec.local_inputs(st.index) and name != dec.input_ids:
                assert [bool(d.dim_param) for d in declared[name]] == [True, True, False]
    assert sum(len(dec.pairs_of(s)) for s in range(len(plan.stages))) == len(dec.pairs)
    manifest = json.loads((cm.path / "manifest.json").read_text())
    assert manifest["format_version"] == 4 and "decoder" in manifest["plan"]
