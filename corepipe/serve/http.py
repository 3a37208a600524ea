"""The HTTP/REST front end (a Starlette ASGI app): KServe v2, Triton's model configuration and
statistics extensions, TensorFlow Serving predict, and Prometheus metrics.

Routes (``{v}``: an optional ``/versions/1``):

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (no token needed: probes);
- ``GET /v2``: server metadata; ``POST /v2/repository/index``: every model and its state;
- ``GET /v2/models/{name}{v}``, ``.../ready``, ``.../config``, ``.../stats``; ``GET /v2/models/stats``;
- ``POST /v2/models/{name}{v}/infer``: JSON tensors or the binary tensor data extension;
- ``POST /v1/models/{name}:predict``, ``GET /v1/models/{name}``: TensorFlow Serving;
- ``GET /metrics``: Prometheus text format.

Errors are ``{"error": "..."}`` with the status from `corepipe.serve.service.classify`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .codec import encode_response, parse_request, select_outputs
from .metrics import CONTENT_TYPE_LATEST
from .model import Rejected
from .service import Service, classify
from .tfserving import encode_predict, parse_predict

__all__ = ["make_app"]

Handler = Callable[[Request], Awaitable[Response]]

#: JSON bodies above this many bytes (or JSON outputs above an eighth as many values) are decoded
#: and encoded on a worker thread instead of the event loop.
_BIG = 64 * 1024


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status_code=status,
                    media_type="application/json", headers=headers)


def _error(exc: BaseException) -> tuple[Response, int]:
    status, _, message, retry = classify(exc)
    headers = {"Retry-After": str(math.ceil(retry))} if retry is not None else None
    return _json({"error": message}, status, headers), status


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"request body of {declared} bytes is over this model's limit of {limit} "
                       "bytes; send tensors in binary (tritonclient's default) or raise --max-body-bytes",
                       code="RESOURCE_EXHAUSTED")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"request body is over this model's limit of {limit} bytes; raise "
                           "--max-body-bytes", code="RESOURCE_EXHAUSTED")
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(svc: Service) -> Starlette:
    """The ASGI app serving ``svc``'s models."""

    def guarded(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
        """Token check and error mapping for the non-inference routes; dicts become JSON."""
        async def handler(request: Request) -> Response:
            try:
                svc.authorize(request.headers.get("authorization"))
                out = await fn(request)
            except Exception as exc:
                return _error(exc)[0]
            return out if isinstance(out, Response) else _json(out)
        return handler

    def model_of(request: Request) -> Any:
        return svc.get(request.path_params["name"], request.path_params.get("version", ""))

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        ok = svc.ready()
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(request: Request) -> dict[str, Any]:
        return svc.metadata()

    async def index(request: Request) -> list[dict[str, Any]]:
        return svc.index()

    async def model_metadata(request: Request) -> dict[str, Any]:
        return model_of(request).metadata()

    async def model_ready(request: Request) -> Response:
        model = model_of(request)
        ok, why, _ = model.readiness()
        return _json({"name": model.name, "ready": ok, **({"reason": why} if why else {})}, 200 if ok else 503)

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
            body = await _body(request, model.body_limit)
            length = request.headers.get("inference-header-content-length")
            if length is not None and not length.strip().isdigit():
                raise Rejected(400, f"Inference-Header-Content-Length {length!r} is not a byte count",
                               code="INVALID_ARGUMENT")
            header = int(length) if length is not None else None
            # Large JSON tensors take milliseconds to decode and encode: do that off the event
            # loop, so other requests (and the pipeline's results) keep flowing meanwhile.
            big_json = (header if header is not None else len(body)) > _BIG
            req = await asyncio.to_thread(parse_request, body, header) if big_json else parse_request(body, header)
            names = select_outputs(req.outputs, model.outputs)
            results = await model.infer(req.feeds)
            json_values = sum(results[n].size for n in names if not req.binary.get(n, req.binary_default))
            encode = (model.name, model.version, req, results, names)
            data, header_len = (await asyncio.to_thread(encode_response, *encode) if json_values > _BIG // 8
                                else encode_response(*encode))
            if header_len is None:
                return Response(data, media_type="application/json")
            return Response(data, media_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(header_len)})
        except Exception as exc:
            response, status = _error(exc)
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
            body = await _body(request, model.body_limit)
            feeds, fmt = (await asyncio.to_thread(parse_predict, body, model.inputs) if len(body) > _BIG
                          else parse_predict(body, model.inputs))
            results = await asyncio.gather(*(model.infer(f) for f in feeds))
            size = sum(r[o.name].size for r in results for o in model.outputs)
            data = (await asyncio.to_thread(encode_predict, results, model.outputs, fmt) if size > _BIG // 8
                    else encode_predict(results, model.outputs, fmt))
            return Response(data, media_type="application/json")
        except Exception as exc:
            response, status = _error(exc)
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
    return Starlette(routes=routes)
