"""What every HTTP route shares: JSON answers, errors as ``{"error": ...}`` with their status,
bounded request bodies (decompressed per ``Content-Encoding``), and responses compressed per
``Accept-Encoding``."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .compression import ENCODINGS, compress, decompress, response_encoding
from .model import Rejected
from .service import classify

__all__ = ["BIG", "error_response", "inflate", "json_response", "read_body", "reply"]

#: Bodies above this many bytes are decoded, decompressed, encoded and compressed on a worker
#: thread instead of the event loop (and JSON outputs above an eighth as many values).
BIG = 64 * 1024


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status_code=status,
                    media_type="application/json", headers=headers)


def error_response(exc: BaseException) -> tuple[Response, int]:
    """``{"error": message}`` with the error's status (and Retry-After, or the codings a 415
    would take), and that status."""
    status, _, message, retry = classify(exc)
    headers = {"Retry-After": str(math.ceil(retry))} if retry is not None else {}
    if status == 415:
        headers["Accept-Encoding"] = ", ".join(ENCODINGS)
    return json_response({"error": message}, status, headers or None), status


async def read_body(request: Request, limit: int) -> bytes:
    """The request body as sent, refusing (413) one over ``limit`` bytes before reading it all."""
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


async def inflate(request: Request, body: bytes, limit: int) -> bytes:
    """``body`` with the request's ``Content-Encoding`` undone, under the same ``limit`` as an
    uncompressed body (see `corepipe.serve.compression`)."""
    coding = request.headers.get("content-encoding")
    if coding is None:
        return body
    if len(body) > BIG // 8:  # inflating runs at ~100-300 MB/s: off the loop past a few KB
        return await asyncio.to_thread(decompress, body, coding, limit)
    return decompress(body, coding, limit)


async def reply(request: Request, data: bytes, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """A 200 response with ``data``, compressed when the request's ``Accept-Encoding`` asks for
    gzip or deflate (``Inference-Header-Content-Length`` in ``headers`` still counts the
    uncompressed JSON header, as tritonclient reads it)."""
    out = dict(headers or {})
    coding = response_encoding(request.headers.get("accept-encoding"))
    if coding is not None:
        data = await asyncio.to_thread(compress, data, coding) if len(data) > BIG else compress(data, coding)
        out["Content-Encoding"] = coding
        out["Vary"] = "Accept-Encoding"
    return Response(data, media_type=media_type, headers=out or None)
