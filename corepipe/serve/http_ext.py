"""Triton's extension routes over HTTP: system shared memory (offered), and the extensions
corepipe serve does not offer, each answering what it is and that it is not offered (501).

- ``GET /v2/systemsharedmemory[/region/NAME]/status``: ``[{"name", "key", "offset", "byte_size"}]``;
- ``POST /v2/systemsharedmemory/region/NAME/register`` with ``{"key", "offset", "byte_size"}``;
- ``POST /v2/systemsharedmemory[/region/NAME]/unregister`` (without a name: every region);
- ``/v2/cudasharedmemory/...``: registering is 501; the status lists no region and unregistering
  is a no-op (there is none), so clients that clear both kinds first (Triton's shared memory
  examples, perf_analyzer) work;
- ``POST /v2/repository[/REPO]/models/NAME/load|unload``, ``GET|POST /v2/trace/setting``,
  ``GET|POST /v2/models/NAME/trace/setting``, ``GET|POST /v2/logging``: 501.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InputError
from .httpio import inflate, read_body
from .model import Rejected
from .service import NOT_OFFERED, Service, not_offered

__all__ = ["extension_routes"]

Guard = Callable[[Callable[[Request], Awaitable[Any]]], Callable[[Request], Awaitable[Response]]]
_REGISTER_LIMIT = 64 * 1024


def extension_routes(svc: Service, guarded: Guard) -> list[Route]:
    """The extension routes of ``svc``; ``guarded`` wraps a handler with the token check and the
    error mapping."""

    def region(request: Request) -> str:
        return str(request.path_params.get("region", ""))

    async def shm_status(request: Request) -> Any:
        return svc.shm.status(region(request))

    async def shm_register(request: Request) -> Response:
        name = region(request)
        if not name:
            raise InputError("a region needs a name: POST /v2/systemsharedmemory/region/NAME/register")
        body = await inflate(request, await read_body(request, _REGISTER_LIMIT), _REGISTER_LIMIT)
        try:
            spec = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"register request is not valid JSON: {exc}") from None
        if not isinstance(spec, dict) or "key" not in spec or "byte_size" not in spec:
            raise InputError('a register request is {"key": "/segment", "offset": 0, "byte_size": N}, '
                             f"got {body[:200]!r}")
        svc.shm.register(name, spec["key"], spec.get("offset", 0), spec["byte_size"])
        return Response(status_code=200)

    async def shm_unregister(request: Request) -> Response:
        svc.shm.unregister(region(request))
        return Response(status_code=200)

    async def cuda_status(request: Request) -> Any:
        if region(request):
            raise Rejected(404, f"no CUDA shared memory region {region(request)!r} is registered: "
                           + NOT_OFFERED["cuda_shared_memory"], code="NOT_FOUND")
        return []

    async def cuda_unregister(request: Request) -> Response:
        return Response(status_code=200)  # none can be registered: unregistering any is done

    def refuse(extension: str) -> Callable[[Request], Awaitable[Any]]:
        async def handler(request: Request) -> Any:
            raise not_offered(extension)
        return handler

    shm, cuda = "/v2/systemsharedmemory", "/v2/cudasharedmemory"
    both = ["GET", "POST"]
    routes = []
    for prefix in ("", "/region/{region}"):
        routes += [
            Route(f"{shm}{prefix}/status", guarded(shm_status), methods=["GET"]),
            Route(f"{shm}{prefix}/register", guarded(shm_register), methods=["POST"]),
            Route(f"{shm}{prefix}/unregister", guarded(shm_unregister), methods=["POST"]),
            Route(f"{cuda}{prefix}/status", guarded(cuda_status), methods=["GET"]),
            Route(f"{cuda}{prefix}/register", guarded(refuse("cuda_shared_memory")), methods=["POST"]),
            Route(f"{cuda}{prefix}/unregister", guarded(cuda_unregister), methods=["POST"]),
        ]
    for repo in ("", "/{repository}"):
        routes += [Route(f"/v2/repository{repo}/models/{{model}}/{action}", guarded(refuse("model_repository")),
                         methods=["POST"]) for action in ("load", "unload")]
    routes += [
        Route("/v2/trace/setting", guarded(refuse("trace")), methods=both),
        Route("/v2/models/{name}/trace/setting", guarded(refuse("trace")), methods=both),
        Route("/v2/logging", guarded(refuse("logging")), methods=both),
    ]
    return routes
