"""OpenAI's API and KServe v2's generate extension as plain data: request bodies checked into
`Params` (clear 400s naming the field), and the response bodies, chunks and errors as those
clients read them. No I/O here: `corepipe.serve.llm_http` calls these.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..errors import InputError
from .llm import Params

__all__ = ["chunk", "completion", "error_body", "generate_params", "model_card", "params", "sse", "usage"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
                501: "not_implemented_error", 503: "service_unavailable_error"}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": code}}


def sse(data: Any) -> bytes:
    """One server-sent event carrying ``data`` as JSON (or ``[DONE]`` as is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise InputError(f"{name} must be a number in [{lo}, {hi}]; got {json.dumps(v)}")
    return float(v)


def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if type(v) is not int or v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InputError(f"{name} must be an integer {bound}; got {json.dumps(v)}")
    return v


def _stop(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) and s for s in v):
        raise InputError(f"stop must be a non-empty string or a list of at most 4 of them; got {json.dumps(v)[:120]}")
    return tuple(v)


def params(body: dict[str, Any], max_tokens_default: int = 16) -> Params:
    """`Params` from an OpenAI request body (completions or chat)."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    body = {**body, "max_tokens": max_tokens}
    return Params(
        max_tokens=_int(body, "max_tokens", max_tokens_default, 1) or max_tokens_default,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        top_k=_int(body, "top_k", 0, 0) or 0,
        seed=_int(body, "seed", None, -(2**63), 2**63 - 1),
        stop=_stop(body.get("stop")),
        n=_int(body, "n", 1, 1, 16) or 1,
        ignore_eos=bool(body.get("ignore_eos", False)),
    )


def generate_params(body: dict[str, Any]) -> tuple[Any, Params, bool]:
    """KServe v2 generate (Triton's form): ``(prompt, Params, stream)`` from ``{"text_input": ...
    or "input_ids": [...], "parameters": {"max_tokens", "temperature", "top_p", "seed", "stop",
    "stream"}}``; parameters may also sit at the top level, as Triton accepts."""
    if "text_input" in body:
        prompt = body["text_input"]
    elif "input_ids" in body:
        prompt = body["input_ids"]
    else:
        raise InputError('a generate request is {"text_input": "...", "parameters": {"max_tokens": 16}} '
                         f'(or "input_ids": [1, 2, 3]); got the keys {sorted(body)}')
    extra = body.get("parameters") or {}
    if not isinstance(extra, dict):
        raise InputError(f"parameters must be an object; got {json.dumps(extra)[:120]}")
    merged = {k: v for k, v in body.items() if k not in ("text_input", "input_ids", "parameters")} | extra
    stream = merged.pop("stream", False)
    return prompt, params(merged), bool(stream)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def completion(kind: str, rid: str, model: str, choices: list[tuple[int, str, list[int], str | None]],
               prompt_tokens: int) -> dict[str, Any]:
    """A whole answer; ``choices``: ``(index, text, token_ids, finish_reason)``."""
    made = [
        {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": why,
         "token_ids": ids} if kind == "chat" else
        {"index": i, "text": text, "logprobs": None, "finish_reason": why, "token_ids": ids}
        for i, text, ids, why in sorted(choices)]
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": made,
            "usage": usage(prompt_tokens, sum(len(c[2]) for c in choices))}


def chunk(kind: str, rid: str, model: str, index: int, text: str | None, ids: list[int],
          finish_reason: str | None, role: bool = False) -> dict[str, Any]:
    """One streamed chunk (``text`` None: a chunk with no content, e.g. the finish reason alone)."""
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason,
                                  "token_ids": ids}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason,
                  "token_ids": ids}
    return {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}


def model_card(name: str, created: int, max_length: int) -> dict[str, Any]:
    """An entry of ``GET /v1/models``."""
    return {"id": name, "object": "model", "created": created, "owned_by": "corepipe", "max_model_len": max_length}
