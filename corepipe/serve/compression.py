"""HTTP content codings: compressed request bodies in (``Content-Encoding``), compressed responses
out (``Accept-Encoding``), as tritonclient's ``request_compression_algorithm`` and
``response_compression_algorithm`` send and expect them.

``gzip`` and ``deflate`` (zlib-wrapped, as RFC 9110 and tritonclient mean it; a raw deflate stream,
which some clients send, is accepted too). A body is decompressed under the same byte limit as an
uncompressed one, checked while inflating: a small compressed body that inflates to gigabytes (a
"zip bomb") is refused with 413 after ``limit`` bytes, never held in memory whole.
"""

from __future__ import annotations

import zlib

from .model import Rejected

__all__ = ["ENCODINGS", "compress", "decompress", "response_encoding"]

#: The codings the server decodes and produces (the ``Accept-Encoding`` it answers a 415 with).
ENCODINGS = ("gzip", "deflate")
_ALIASES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


def _coding(header: str | None) -> str | None:
    """The one coding a ``Content-Encoding`` header names (None: identity)."""
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _ALIASES:
        return _ALIASES[codings[0]]
    raise Rejected(415, f"Content-Encoding {header!r} is not supported: send the body uncompressed or "
                   "compressed once with gzip or deflate", code="INVALID_ARGUMENT")


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body with its ``Content-Encoding`` undone, at most ``limit`` bytes.

    Args:
        body: the body as received.
        content_encoding: the ``Content-Encoding`` header (None or ``identity``: returned as is).
        limit: the most bytes the decompressed body may hold (the model's body limit).

    Returns:
        The decompressed body.

    Raises:
        Rejected: 415 for a coding other than gzip/deflate; 413 when the body inflates past
            ``limit``; 400 for data that is not what the header says.
    """
    coding = _coding(content_encoding)
    if coding is None:
        return body
    # 47 = 32 + 15: zlib or gzip, told apart by their headers, as Triton inflates both.
    attempts = (47, -15) if coding == "deflate" else (47,)
    for i, wbits in enumerate(attempts):
        try:
            return _inflate(body, wbits, limit, coding)
        except zlib.error as exc:
            if i + 1 < len(attempts):
                continue  # not zlib-wrapped: try a raw deflate stream
            raise Rejected(400, f"the request body is not valid {coding} data ({exc}): compress the whole "
                           "body once, or send it uncompressed without Content-Encoding",
                           code="INVALID_ARGUMENT") from None
    raise AssertionError("unreachable")


def _inflate(data: bytes, wbits: int, limit: int, coding: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:  # a gzip body may hold several members, one after the other
        inflater = zlib.decompressobj(wbits)
        part = inflater.decompress(data, limit - size + 1)
        size += len(part)
        if size > limit:
            raise Rejected(413, f"the {coding} request body inflates past this model's limit of {limit} "
                           "bytes; send less, or raise --max-body-bytes", code="RESOURCE_EXHAUSTED")
        parts.append(part)
        if not inflater.eof:
            raise Rejected(400, f"the {coding} request body ends before its compressed stream does: "
                           "send the whole compressed body", code="INVALID_ARGUMENT")
        data = inflater.unused_data
        if not data or wbits < 0:
            return b"".join(parts)


def response_encoding(accept_encoding: str | None) -> str | None:
    """The coding to compress a response with, from the request's ``Accept-Encoding`` (None: none).

    The highest-weighted of gzip and deflate the client accepts (``*`` counts for both); on a tie,
    the one listed first. ``q=0`` refuses a coding.
    """
    best: tuple[float, int, str] | None = None
    for pos, item in enumerate((accept_encoding or "").split(",")):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for coding in ENCODINGS if name == "*" else ([_ALIASES[name]] if name in _ALIASES else []):
            if q > 0 and (best is None or (q, -pos) > (best[0], best[1])):
                best = (q, -pos, coding)
    return best[2] if best else None


def compress(data: bytes, coding: str) -> bytes:
    """``data`` compressed as ``coding`` (``gzip`` or ``deflate``), at a speed-leaning level: a
    response is compressed once per request, on the server's time."""
    if coding == "gzip":
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    else:
        packer = zlib.compressobj(1, zlib.DEFLATED, 15)
    return packer.compress(data) + packer.flush()
