"""The HTTP routes of decoder models: OpenAI's API and KServe v2's generate extension.

- ``GET /v1/models``: the decoders served (OpenAI's list);
- ``POST /v1/completions``: ``prompt`` as text (with the artifact's tokenizer), token ids, or a
  list of either; ``POST /v1/chat/completions``: ``messages`` through the tokenizer's chat
  template (400 where the artifact has none). ``max_tokens``, ``temperature``, ``top_p``,
  ``top_k``, ``seed``, ``stop``, ``n``, ``ignore_eos`` (vLLM's); every choice carries
  ``token_ids``; ``usage`` counts the prompt's and the completion's tokens. ``stream: true``:
  server-sent events, one chunk per token as the last stage samples it, then ``data: [DONE]``
  (``stream_options.include_usage``: a last chunk with ``usage``);
- ``POST /v2/models/{name}/generate`` and ``.../generate_stream``: Triton's generate extension
  (``text_input`` or ``input_ids`` + ``parameters`` -> ``text_output`` and ``token_ids``; the
  stream as server-sent events, one per token).

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on the ``/v1`` routes and
``{"error": "..."}`` on ``/v2``, with the status `corepipe.serve.service.classify` gives (429 with
Retry-After when the wait for a KV row is full). A client that goes away (mid-stream or while
waiting for a whole answer) cancels its sequences: their KV rows are freed in every stage.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import InputError
from .httpio import error_response, json_response, read_body
from .llm import Decoder, Generation
from .model import Rejected
from .openai_api import chunk, completion, error_body, generate_params, model_card, new_id, params, sse
from .service import Service, classify

__all__ = ["llm_routes"]

_BODY_LIMIT = 8 * 2**20
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _openai_error(exc: BaseException) -> Response:
    status, code, message, retry = classify(exc)
    headers = {"Retry-After": str(math.ceil(retry))} if retry is not None else None
    return json_response(error_body(status, message, code.lower()), status, headers)


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, _BODY_LIMIT)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputError(f"the request body must be a JSON object; got {raw[:120]!r}")
    return body


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _prompts(dec: Decoder, prompt: Any) -> list[list[int]]:
    """OpenAI's ``prompt``: a string, a list of ids, or a list of either (one choice set each)."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return [dec.encode(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    if prompt is None:
        raise InputError('a completion request needs a "prompt": text, or a list of token ids')
    return [dec.encode(prompt)]


def _seed(seed: int | None, i: int) -> int | None:
    return None if seed is None else seed + i


def llm_routes(svc: Service) -> list[Route]:
    """The routes of ``svc``'s decoder models (none when it serves no decoder: then every route
    answers that no model generates)."""

    def decoder(name: Any) -> Decoder:
        if name is None or name == "":
            if len(svc.decoders) == 1:
                return next(iter(svc.decoders.values()))
            raise InputError(f'name the model: "model" is one of {sorted(svc.decoders)}')
        if not isinstance(name, str) or name not in svc.decoders:
            if isinstance(name, str) and name in svc.models:
                raise InputError(f"model {name!r} is not a decoder (it has no state pairs): call it with KServe v2 "
                                 f"/v2/models/{name}/infer; the decoders here are {sorted(svc.decoders)}")
            raise Rejected(404, f"The model {name!r} does not exist: this server generates with {sorted(svc.decoders)}",
                           code="NOT_FOUND")
        return svc.decoders[name]

    async def start(dec: Decoder, prompts: list[list[int]], p: Any) -> list[Generation]:
        dec.admit(len(prompts) * p.n)
        gens: list[Generation] = []
        try:
            for i, prompt in enumerate(prompts):
                for j in range(p.n):
                    gens.append(dec.open(prompt, p, i * p.n + j, _seed(p.seed, j)))
        except BaseException:
            for g in gens:
                g.close()
            raise
        return gens

    async def whole(request: Request, gens: list[Generation]) -> list[tuple[int, str, list[int], str | None]]:
        """Every choice to its end, or cancelled when the client goes away first."""
        async def drain(g: Generation) -> tuple[int, str, list[int], str | None]:
            async for _ in g:
                pass
            return g.index, g.text, list(g.tokens), g.finish_reason

        gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
        work: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(drain(g) for g in gens)))
        try:
            await asyncio.wait([gone, work], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                raise asyncio.CancelledError("the client went away")
            return list(work.result())
        finally:
            gone.cancel()
            for g in gens:
                g.close()

    async def events(gens: list[Generation], kind: str, rid: str, model: str,
                     prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
        """Chunks from every choice as they come (interleaved), then ``[DONE]``."""
        queue: asyncio.Queue[tuple[Generation, int | None, str] | Generation | BaseException] = asyncio.Queue()

        async def pump(g: Generation) -> None:
            try:
                async for token, text in g:
                    queue.put_nowait((g, token, text))
                queue.put_nowait(g)
            except Exception as exc:
                queue.put_nowait(exc)

        tasks = [asyncio.ensure_future(pump(g)) for g in gens]
        try:
            if kind == "chat":
                for g in gens:
                    yield sse(chunk(kind, rid, model, g.index, "", [], None, role=True))
            open_ = len(gens)
            while open_:
                item = await queue.get()
                if isinstance(item, BaseException):
                    status, _, message, _ = classify(item)
                    yield sse(error_body(status, message))
                    open_ -= 1
                elif isinstance(item, Generation):
                    yield sse(chunk(kind, rid, model, item.index, None, [], item.finish_reason))
                    open_ -= 1
                else:
                    g, token, text = item
                    yield sse(chunk(kind, rid, model, g.index, text, [] if token is None else [token], None))
            if include_usage:
                body = chunk(kind, rid, model, 0, None, [], None)
                body["choices"] = []
                body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": sum(len(g.tokens) for g in gens),
                                 "total_tokens": prompt_tokens + sum(len(g.tokens) for g in gens)}
                yield sse(body)
            yield sse("[DONE]")
        finally:
            for t in tasks:
                t.cancel()
            for g in gens:
                g.close()

    def watch(request: Request, gens: list[Generation]) -> None:
        """Cancel ``gens`` as soon as the client goes away, whatever the response is doing (a
        send to a closed connection need not fail); after the response, a no-op."""
        async def run() -> None:
            await _disconnected(request)
            for g in gens:
                g.close()
        svc.background.add(task := asyncio.ensure_future(run()))
        task.add_done_callback(svc.background.discard)

    async def openai(request: Request, kind: str) -> Response:
        try:
            svc.authorize(request.headers.get("authorization"))
            body = await _body(request)
            dec = decoder(body.get("model"))
            p = params(body)
            if kind == "chat":
                prompts = [dec.chat(body.get("messages"))]
            else:
                prompts = _prompts(dec, body.get("prompt"))
            rid, name = new_id(kind), dec.name
            gens = await start(dec, prompts, p)
            prompt_tokens = sum(len(pr) for pr in prompts) * p.n
            if body.get("stream"):
                opts = body.get("stream_options") or {}
                usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
                watch(request, gens)
                return StreamingResponse(events(gens, kind, rid, name, prompt_tokens, usage),
                                         media_type="text/event-stream", headers=_SSE_HEADERS)
            return json_response(completion(kind, rid, name, await whole(request, gens), prompt_tokens))
        except asyncio.CancelledError:
            return Response(status_code=499)
        except Exception as exc:
            return _openai_error(exc)

    def counted(response: Response, request: Request, protocol: str) -> Response:
        name = request.path_params.get("name") or (next(iter(svc.decoders)) if len(svc.decoders) == 1 else "_unknown")
        svc.metrics.count(svc.label(name), protocol, response.status_code)
        return response

    async def completions(request: Request) -> Response:
        return counted(await openai(request, "text"), request, "openai")

    async def chat(request: Request) -> Response:
        return counted(await openai(request, "chat"), request, "openai")

    async def models(request: Request) -> Response:
        try:
            svc.authorize(request.headers.get("authorization"))
        except Exception as exc:
            return _openai_error(exc)
        return json_response({"object": "list", "data": [model_card(d.name, d.created, d.spec.max_length)
                                                         for d in svc.decoders.values()]})

    async def generate(request: Request) -> Response:
        streaming = request.url.path.endswith("_stream")
        try:
            svc.authorize(request.headers.get("authorization"))
            name = request.path_params["name"]
            svc.get(name, request.path_params.get("version", ""))
            dec = decoder(name)
            prompt, p, _ = generate_params(await _body(request))
            gens = await start(dec, [dec.encode(prompt, "text_input")], p)
            out = {"model_name": dec.name, "model_version": dec.model.version}
            if streaming:
                watch(request, gens)
                return StreamingResponse(_generate_events(gens[0], out), media_type="text/event-stream",
                                         headers=_SSE_HEADERS)
            (_, text, ids, why), = await whole(request, gens)
            return json_response({**out, "text_output": text, "token_ids": ids, "finish_reason": why})
        except asyncio.CancelledError:
            return Response(status_code=499)
        except Exception as exc:
            return error_response(exc)[0]

    async def generate_counted(request: Request) -> Response:
        return counted(await generate(request), request, "generate")

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    for v in ("", "/versions/{version}"):
        routes += [Route(f"/v2/models/{{name}}{v}/generate", generate_counted, methods=["POST"]),
                   Route(f"/v2/models/{{name}}{v}/generate_stream", generate_counted, methods=["POST"])]
    return routes


async def _generate_events(gen: Generation, out: dict[str, Any]) -> AsyncIterator[bytes]:
    """Triton's generate_stream: one event per token (``text_output``: the text it adds)."""
    try:
        async for token, text in gen:
            yield sse({**out, "text_output": text, "token_ids": [] if token is None else [token]})
        yield sse({**out, "text_output": "", "token_ids": [], "finish_reason": gen.finish_reason})
    except Exception as exc:
        yield sse({"error": classify(exc)[2]})
    finally:
        gen.close()
