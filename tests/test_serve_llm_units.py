"""The OpenAI and KServe generate request checks and response shapes (`corepipe.serve.openai_api`),
without a server: each bad field is a 400 naming the field and what it takes."""

from __future__ import annotations

import json

import pytest

from corepipe.errors import InputError
from corepipe.serve.llm import Params
from corepipe.serve.openai_api import chunk, completion, error_body, generate_params, params, sse


def test_params_take_openais_names_and_defaults():
    assert params({}) == Params(max_tokens=16, temperature=1.0, top_p=1.0, top_k=0, seed=None, stop=(), n=1)
    p = params({"max_tokens": 5, "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "\n", "n": 2, "ignore_eos": True})
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop, p.n, p.ignore_eos) == (5, 0.0, 0.5, 3, ("\n",), 2, True)
    assert params({"max_completion_tokens": 7}).max_tokens == 7


@pytest.mark.parametrize("body, field", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": "9"}, "max_tokens"), ({"temperature": -1}, "temperature"),
    ({"temperature": True}, "temperature"), ({"top_p": 2}, "top_p"), ({"n": 0}, "n"), ({"n": 99}, "n"),
    ({"stop": ["a"] * 5}, "stop"), ({"stop": [""]}, "stop"), ({"seed": 1.5}, "seed")])
def test_bad_fields_are_named(body, field):
    with pytest.raises(InputError, match=field):
        params(body)


def test_generate_takes_text_or_ids_with_parameters():
    prompt, p, stream = generate_params({"text_input": "hi", "parameters": {"max_tokens": 4, "stream": True}})
    assert (prompt, p.max_tokens, stream) == ("hi", 4, True)
    prompt, p, stream = generate_params({"input_ids": [1, 2], "max_tokens": 3, "temperature": 0})
    assert (prompt, p.max_tokens, p.temperature, stream) == ([1, 2], 3, 0.0, False)
    with pytest.raises(InputError, match="text_input"):
        generate_params({"prompt": "x"})


def test_shapes_clients_read():
    assert error_body(429, "full")["error"] == {"message": "full", "type": "rate_limit_error", "param": None,
                                                 "code": None}
    body = completion("text", "cmpl-1", "m", [(1, "b", [2], "length"), (0, "a", [1, 3], "stop")], 4)
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["usage"]["completion_tokens"] == 3
    chat = chunk("chat", "c", "m", 0, "x", [5], None, role=True)["choices"][0]
    assert chat["delta"] == {"role": "assistant", "content": "x"} and chat["token_ids"] == [5]
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert json.loads(sse({"a": 1})[6:]) == {"a": 1}


def _trained(kind: str):
    """A small tokenizer trained here: byte-level BPE (GPT-2's kind) or Metaspace BPE (Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if kind == "bytes":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    corpus = ["héllo wörld, naïve café", "日本語のテキスト", "emoji 🎉🎉 and more", "plain ascii words here"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
    return tok


@pytest.mark.parametrize("kind", ["bytes", "metaspace"])
def test_incremental_text_equals_one_decode_of_every_id(kind):
    """Streamed pieces, joined, are the whole decode, for text whose characters span tokens; a
    piece never ends inside a character. One decode of every id per token grew with the square
    of the output; the window decodes a few."""
    from corepipe.serve.llm import IncrementalText

    tok = _trained(kind)
    ids = tok.encode("héllo 日本語 🎉 wörld naïve café 🎉 plain").ids

    def decode(part):
        return tok.decode(part, skip_special_tokens=True)

    inc, calls = IncrementalText(decode), []
    pieces = []
    for i, t in enumerate(ids):
        piece = inc.add(t)
        pieces.append(piece)
        assert "\ufffd" not in piece
        assert decode(ids[: i + 1]).startswith(inc.text), (i, inc.text)
    assert "".join(pieces) == inc.text == decode(ids)
    if kind == "bytes":  # a character split over byte tokens waits for its last byte
        assert any(p == "" for p in pieces)
    counting = IncrementalText(lambda part: (calls.append(len(part)), decode(part))[1])
    for t in ids:
        counting.add(t)
    assert max(calls) < len(ids) / 2, "each token decodes a short window, not every id so far"


def test_incremental_text_without_a_tokenizer_joins_ids_by_spaces():
    from corepipe.serve.llm import IncrementalText

    inc = IncrementalText(lambda part: " ".join(str(t) for t in part))
    assert [inc.add(t) for t in (5, 17, 3)] == ["5", " 17", " 3"] and inc.text == "5 17 3"
