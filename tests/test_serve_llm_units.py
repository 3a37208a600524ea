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
