"""The decoder corpus itself (tests/decoders.py): each model exports with the past pairs the
compiler and runtime rely on, its reference loop is deterministic, its past handling is right
(prefill + decode steps give the tokens that recomputing the whole sequence without past gives),
and its local tokenizer round-trips text and matches the model's vocab."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import decoders
import numpy as np
import onnx
import pytest
from corpus.optimum_export import OptimumMissing
from decoders import (
    EOS_ID,
    RECIPES,
    decoder_model_or_skip,
    empty_past,
    past_names,
    prompts,
    reference_generate,
    session,
    step,
    tokenizer,
)

SMALL = ["gpt2", "llama", "gpt2_legacy"]


@pytest.mark.parametrize("name", SMALL)
def test_each_decoder_exports_with_its_past_pairs(name: str) -> None:
    path = decoder_model_or_skip(name)
    recipe = RECIPES[name]
    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    assert {"input_ids", "attention_mask", "position_ids"} <= inputs
    assert outputs[0] == "logits"
    n = recipe["layers"]
    if recipe["exporter"] == "legacy":
        want = {(f"past.{i}", f"present.{i}") for i in range(n)}
    else:
        want = {(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}") for i in range(n) for kv in ("key", "value")}
    assert set(past_names(session(path))) == want
    if recipe["arch"] == "llama":  # grouped-query attention: fewer key/value heads than heads
        past = session(path).get_inputs()[[i.name for i in session(path).get_inputs()].index("past_key_values.0.key")]
        assert past.shape[1] == recipe["kv_heads"] < recipe["heads"]
    hf = json.loads((path.parent / "hf" / "config.json").read_text())
    assert hf["tie_word_embeddings"] is False and hf["vocab_size"] == recipe["vocab"]


@pytest.mark.parametrize("name", SMALL)
def test_the_reference_is_deterministic_and_its_past_handling_matches_recomputing(name: str) -> None:
    path = decoder_model_or_skip(name)
    sess = session(path)
    ps = prompts(RECIPES[name]["vocab"], 3, [7, 1, 20], seed=3)
    first = reference_generate(path, ps, max_new_tokens=10)
    assert first == reference_generate(path, ps, max_new_tokens=10)
    assert [len(t) for t in first] == [10, 10, 10]
    assert len({tuple(t) for t in first}) == 3, "different prompts should not all give the same tokens"
    for prompt, new in zip(ps, first, strict=True):
        # the whole sequence in one call without past: position k's argmax is the token after k
        logits, _ = step(sess, np.array([prompt + new[:-1]]), empty_past(sess), 0)
        assert np.argmax(logits[0, len(prompt) - 1:], -1).tolist() == new


def test_the_reference_stops_at_eos_and_keeps_it() -> None:
    path = decoder_model_or_skip("gpt2")
    (full,) = reference_generate(path, [[11, 12, 13]], max_new_tokens=8)
    stop = full[3]
    (cut,) = reference_generate(path, [[11, 12, 13]], max_new_tokens=8, eos_token_id=stop)
    assert cut == full[:full.index(stop) + 1]
    with pytest.raises(ValueError, match="empty prompt"):
        reference_generate(path, [[]], max_new_tokens=2)


@pytest.mark.parametrize("name", SMALL)
def test_a_batched_step_with_right_padded_past_equals_each_sequence_alone(name: str) -> None:
    """The runtime's convention (DECODER_CONTRACT.md): row i's past in [0, P_i), mask 1 there and
    on the new token, 0 on the padding; positions from P_i. The export must honour the mask."""
    path = decoder_model_or_skip(name)
    sess = session(path)
    batch_axis = 1 if RECIPES[name]["exporter"] == "legacy" else 0  # [2, b, h, L, d] / [b, h, L, d]
    ps = prompts(RECIPES[name]["vocab"], 3, [3, 9, 1], seed=5)
    pasts, nexts = [], []
    for p in ps:
        logits, past = step(sess, np.array([p]), empty_past(sess), 0)
        pasts.append(past)
        nexts.append(int(np.argmax(logits[0, -1])))
    alone = [step(sess, np.array([[t]]), past, len(p))[0][0, -1] for p, t, past in zip(ps, nexts, pasts, strict=True)]
    pmax = max(len(p) for p in ps)
    feeds = {"input_ids": np.array([[t] for t in nexts]),
             "attention_mask": np.array([[1] * len(p) + [0] * (pmax - len(p)) + [1] for p in ps]),
             "position_ids": np.array([[len(p)] for p in ps])}
    for past_name, _ in past_names(sess):
        pad = [(0, 0)] * pasts[0][past_name].ndim
        rows = []
        for p, past in zip(ps, pasts, strict=True):
            pad[batch_axis + 2] = (0, pmax - len(p))
            rows.append(np.pad(past[past_name], pad))
        feeds[past_name] = np.concatenate(rows, axis=batch_axis)
    batched = sess.run(["logits"], feeds)[0][:, -1]
    np.testing.assert_allclose(batched, np.stack(alone), atol=1e-4)


@pytest.mark.parametrize("name", SMALL)
def test_the_tokenizer_round_trips_and_matches_the_vocab(name: str) -> None:
    path = decoder_model_or_skip(name)
    tok = tokenizer(path)
    assert tok.get_vocab_size() == RECIPES[name]["vocab"]
    assert tok.token_to_id("<|endoftext|>") == EOS_ID
    for text in ("Hello world, the stream of tokens goes on.", "naïve café: 3 × 4 = 12 ✓", "  two  spaces\n"):
        ids = tok.encode(text).ids
        assert max(ids) < RECIPES[name]["vocab"]
        assert tok.decode(ids) == text
    config = json.loads((path.parent / "tokenizer_config.json").read_text())
    assert "chat_template" in config and config["eos_token"] == "<|endoftext|>"


def test_unknown_names_and_a_missing_optimum_say_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"no decoder 'gpt3' in the corpus: expected one of \['gpt2'"):
        decoders.decoder_model("gpt3")
    monkeypatch.setattr(decoders, "ROOT", tmp_path)
    monkeypatch.setenv("COREPIPE_OPTIMUM_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(OptimumMissing, match=r"optimum-onnx.s python not found at .*no-python.*COREPIPE_OPTIMUM_PYTHON"):
        decoders.decoder_model("llama")


def test_builds_side_by_side_make_one_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two builds of one name at once (as two test runs): one builds under the lock, the other
    waits and takes its result; no half-built directory is left."""
    monkeypatch.setattr(decoders, "ROOT", tmp_path)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(decoders.decoder_model("gpt2_legacy"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2 and got[0] == got[1] and got[0].is_file()
    assert [p.name for p in (tmp_path / "gpt2_legacy").iterdir() if p.is_dir()] == [got[0].parent.name]
