"""The HTTP/REST front end (a Starlette ASGI app): KServe v2, Triton's model configuration,
statistics and system shared memory extensions, TensorFlow Serving predict, and Prometheus metrics.

Routes (``{v}``: an optional ``/versions/1``):

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (no token needed: probes; the status alone,
  200 or 503, with an empty body, as the Open Inference Protocol says);
- ``GET /v2``: server metadata; ``POST /v2/repository/index``: every model and its state;
- ``GET /v2/models/{name}{v}``, ``.../ready`` (status alone), ``.../config``, ``.../stats``;
  ``GET /v2/models/stats``;
- ``POST /v2/models/{name}{v}/infer``: JSON tensors, the binary tensor data extension, or tensors
  in registered shared memory regions;
- ``/v2/systemsharedmemory/...`` and the routes of the extensions not offered: `http_ext`;
- ``POST /v1/models/{name}:predict``, ``GET /v1/models/{name}``: TensorFlow Serving;
- ``GET /metrics``: Prometheus text format.

Request bodies may come compressed (``Content-Encoding: gzip|deflate``); infer and predict
responses are compressed when ``Accept-Encoding`` asks. Errors, unknown routes and wrong methods
included, are ``{"error": "..."}`` with the status from `corepipe.serve.service.classify` (404
and 405 for routes, as Triton answers them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .codec import encode_response, parse_request, select_outputs
from .http_ext import extension_routes
from .httpio import BIG, error_response, inflate, json_response, read_body, reply
from .llm_http import llm_routes
from .metrics import CONTENT_TYPE_LATEST
from .model import Rejected
from .service import Service
from .shm import check_room, read_inputs, write_outputs
from .tfserving import encode_predict, parse_predict

__all__ = ["make_app"]

Handler = Callable[[Request], Awaitable[Response]]


def _header_length(request: Request) -> int | None:
    length = request.headers.get("inference-header-content-length")
    if length is not None and not length.strip().isdigit():
        raise Rejected(400, f"Inference-Header-Content-Length {length!r} is not a byte count",
                       code="INVALID_ARGUMENT")
    return int(length) if length is not None else None


async def _no_route(request: Request, exc: Exception) -> Response:
    """Unknown routes (404) and wrong methods (405) as JSON errors, like every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}: use {allow or 'another method'}"
    elif exc.status_code == 404:
        message = (f"no route {request.method} {request.url.path}: corepipe serve answers KServe v2 "
                   "(/v2/...), TF-Serving (/v1/models/NAME:predict), OpenAI (/v1/completions, /v1/chat/completions, /v1/models) for decoders, and /metrics")
    else:
        message = str(exc.detail)
    return json_response({"error": message}, exc.status_code, dict(exc.headers or {}) or None)


def make_app(svc: Service) -> Starlette:
    """The ASGI app serving ``svc``'s models."""

    def guarded(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
        """Token check and error mapping for the non-inference routes; dicts become JSON."""
        async def handler(request: Request) -> Response:
            try:
                svc.authorize(request.headers.get("authorization"))
                out = await fn(request)
            except Exception as exc:
                return error_response(exc)[0]
            return out if isinstance(out, Response) else json_response(out)
        return handler

    def model_of(request: Request) -> Any:
        return svc.get(request.path_params["name"], request.path_params.get("version", ""))

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if svc.ready() else 503)

    async def server_metadata(request: Request) -> dict[str, Any]:
        return svc.metadata()

    async def index(request: Request) -> list[dict[str, Any]]:
        return svc.index()

    async def model_metadata(request: Request) -> dict[str, Any]:
        return model_of(request).metadata()

    async def model_ready(request: Request) -> Response:
        return Response(status_code=200 if model_of(request).ready else 503)  # why not: the index says

    async def model_config(request: Request) -> dict[str, Any]:
        return model_of(request).config()

    async def model_stats(request: Request) -> dict[str, Any]:
        if "name" in request.path_params:
            return {"model_stats": [model_of(request).statistics()]}
        return {"model_stats": [m.statistics() for m in svc.models.values()]}

    async def metrics(request: Request) -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        status = 200
        try:
            svc.authorize(request.headers.get("authorization"))
            model = model_of(request)
            body = await read_body(request, model.body_limit)
            t0 = time.perf_counter_ns()
            body = await inflate(request, body, model.body_limit)
            header = _header_length(request)
            # Large JSON tensors take milliseconds to decode and encode: do that off the event
            # loop, so other requests (and the pipeline's results) keep flowing meanwhile.
            big_json = (header if header is not None else len(body)) > BIG
            req = await asyncio.to_thread(parse_request, body, header) if big_json else parse_request(body, header)
            names = select_outputs(req.outputs, model.outputs)
            with svc.shm.lease(req.regions()) as regions:
                feeds = {**req.feeds, **read_inputs(regions, req.shm_inputs)}
                check_room(regions, req.shm_outputs, model.outputs, feeds, model.inputs)
                t1 = time.perf_counter_ns()
                results = await model.infer(feeds)
                t2 = time.perf_counter_ns()
                write_outputs(regions, req.shm_outputs, results)
            results = model.classified(results, req.classes)
            json_values = sum(results[n].size for n in names
                              if n not in req.shm_outputs and not req.binary.get(n, req.binary_default))
            encode = (model.name, model.version, req, results, names)
            data, header_len = (await asyncio.to_thread(encode_response, *encode) if json_values > BIG // 8
                                else encode_response(*encode))
            model.record_io(t1 - t0, time.perf_counter_ns() - t2)
            if header_len is None:
                return await reply(request, data, "application/json")
            return await reply(request, data, "application/octet-stream",
                               {"Inference-Header-Content-Length": str(header_len)})
        except Exception as exc:
            response, status = error_response(exc)
            return response
        finally:
            svc.metrics.count(svc.label(name), "http", status)

    async def tf_status(request: Request) -> dict[str, Any]:
        model = model_of(request)
        ok, why, _ = model.readiness()
        return {"model_version_status": [{
            "version": model.version, "state": "AVAILABLE" if ok else "UNAVAILABLE",
            "status": {"error_code": "OK" if ok else "UNAVAILABLE", "error_message": why}}]}

    async def tf_predict(request: Request) -> Response:
        name = request.path_params["name"]
        status = 200
        try:
            svc.authorize(request.headers.get("authorization"))
            model = model_of(request)
            body = await read_body(request, model.body_limit)
            t0 = time.perf_counter_ns()
            body = await inflate(request, body, model.body_limit)
            batched = model.batching.rows is not None  # N instances: one batch-N request
            feeds, fmt = (await asyncio.to_thread(parse_predict, body, model.inputs, batched=batched)
                          if len(body) > BIG else parse_predict(body, model.inputs, batched=batched))
            t1 = time.perf_counter_ns()
            results = await asyncio.gather(*(model.infer(f) for f in feeds))
            t2 = time.perf_counter_ns()
            size = sum(r[o.name].size for r in results for o in model.outputs)
            data = (await asyncio.to_thread(encode_predict, results, model.outputs, fmt, batched=batched)
                    if size > BIG // 8 else encode_predict(results, model.outputs, fmt, batched=batched))
            model.record_io(t1 - t0, time.perf_counter_ns() - t2)
            return await reply(request, data, "application/json")
        except Exception as exc:
            response, status = error_response(exc)
            return response
        finally:
            svc.metrics.count(svc.label(name), "tfserving", status)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", guarded(server_metadata)),
        Route("/v2/repository/index", guarded(index), methods=["POST", "GET"]),
        Route("/v2/models/stats", guarded(model_stats)),
        Route("/metrics", guarded(metrics)),
    ]
    for v in ("", "/versions/{version}"):
        routes += [
            Route(f"/v2/models/{{name}}{v}", guarded(model_metadata)),
            Route(f"/v2/models/{{name}}{v}/ready", guarded(model_ready)),
            Route(f"/v2/models/{{name}}{v}/config", guarded(model_config)),
            Route(f"/v2/models/{{name}}{v}/stats", guarded(model_stats)),
            Route(f"/v2/models/{{name}}{v}/infer", infer, methods=["POST"]),
            Route(f"/v1/models/{{name}}{v}:predict", tf_predict, methods=["POST"]),
            Route(f"/v1/models/{{name}}{v}", guarded(tf_status)),
        ]
    routes += extension_routes(svc, guarded)
    routes += llm_routes(svc)
    return Starlette(routes=routes, exception_handlers={404: _no_route, 405: _no_route})
