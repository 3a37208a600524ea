"""What the HTTP and gRPC front ends share: the models by name, the token check, readiness, server
metadata, and one mapping from errors to HTTP statuses and gRPC codes.

| error | HTTP | gRPC |
|---|---|---|
| `InputError` (name, dtype, shape; malformed JSON or binary layout) | 400 | INVALID_ARGUMENT |
| unknown model or version | 404 | NOT_FOUND |
| body over the limit | 413 | (gRPC has its own message limit: RESOURCE_EXHAUSTED) |
| window and queue full | 503 + Retry-After | RESOURCE_EXHAUSTED |
| a decoder's wait for a KV row full (`corepipe.serve.llm`) | 429 + Retry-After | RESOURCE_EXHAUSTED |
| model not ready (a stage down, or it could not start), server draining | 503 + Retry-After | UNAVAILABLE |
| missing or wrong bearer token | 401 | UNAUTHENTICATED |
| `StageError` (the request failed in a stage) | 500 | INTERNAL |
| an extension corepipe does not offer (CUDA shared memory, model load/unload, trace, log settings) | 501 | UNIMPLEMENTED |
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..errors import CorepipeError, InputError, PipelineClosedError, StageError
from .llm import Decoder, is_decoder
from .llm_metrics import LLMMetrics
from .metrics import Metrics
from .model import Rejected, ServedModel
from .shm import SystemSharedMemory

__all__ = ["EXTENSIONS", "NOT_OFFERED", "Service", "classify", "not_offered"]

log = logging.getLogger("corepipe.serve")

#: Protocol extensions the server implements, by Triton's names (reported in its metadata). The
#: repository index is served too, but not model_repository's load and unload.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "system_shared_memory"]

#: Triton's extensions corepipe serve does not offer: what each is, why, and what to do instead.
NOT_OFFERED = {
    "cuda_shared_memory": "CUDA shared memory (Triton's cuda_shared_memory extension) is not offered by "
    "corepipe serve: its pipelines run on CPU cores; register system shared memory instead "
    "(/v2/systemsharedmemory, gRPC SystemSharedMemoryRegister)",
    "model_repository": "loading and unloading models (Triton's model_repository extension) is not offered "
    "by corepipe serve: it serves the models it was started with; restart it on the repository you want "
    "(the index, POST /v2/repository/index, lists them)",
    "trace": "trace settings (Triton's trace extension) are not offered by corepipe serve: per-stage "
    "timings are in /metrics and in each model's /stats",
    "logging": "log settings (Triton's logging extension) are not offered by corepipe serve: start it with "
    "--verbose for more log lines",
}


def not_offered(extension: str) -> Rejected:
    """The error for a route of an extension in `NOT_OFFERED`: 501 / UNIMPLEMENTED, saying so."""
    return Rejected(501, NOT_OFFERED[extension], code="UNIMPLEMENTED")


def classify(exc: BaseException) -> tuple[int, str, str, float | None]:
    """``(HTTP status, gRPC code name, message, retry-after seconds or None)`` for an error."""
    if isinstance(exc, Rejected):
        return exc.status, exc.code, str(exc), exc.retry_after
    if isinstance(exc, InputError):
        return 400, "INVALID_ARGUMENT", str(exc), None
    if isinstance(exc, StageError):
        return 500, "INTERNAL", str(exc), None
    if isinstance(exc, PipelineClosedError):
        return 503, "UNAVAILABLE", str(exc), 1.0
    if isinstance(exc, CorepipeError):
        return 500, "INTERNAL", str(exc), None
    log.exception("unexpected error while serving a request", exc_info=exc)
    return 500, "INTERNAL", f"internal error: {type(exc).__name__}: {exc}", None


class Service:
    """The served models and the rules every request goes through, whatever its protocol."""

    def __init__(self, models: Sequence[ServedModel], *, token: str | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.token = token
        self.metrics = Metrics(models)
        #: the models that generate (`corepipe.serve.llm`), by name, and their metrics
        self.decoders = {m.name: Decoder(m) for m in models if is_decoder(m)}
        self.llm_metrics = LLMMetrics(self.metrics.registry, self.decoders.values())
        self.background: set[Any] = set()  # tasks the routes started (kept referenced until done)
        self.shm = SystemSharedMemory()
        self.draining = False

    def authorize(self, header: str | None) -> None:
        """Check an ``Authorization`` header against the token (when the server has one).

        Raises:
            Rejected: 401 / UNAUTHENTICATED.
        """
        if self.token is None:
            return
        scheme, _, given = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            why = "no Authorization header" if not header else "the bearer token does not match"
            raise Rejected(401, f"this server needs 'Authorization: Bearer <token>' ({why})",
                           code="UNAUTHENTICATED")

    def get(self, name: str, version: str = "") -> ServedModel:
        """The model called ``name`` (version "" or "1").

        Raises:
            Rejected: 404 / NOT_FOUND, listing the models there are.
        """
        model = self.models.get(name)
        if model is None:
            # Triton's wording first: clients (Triton's own examples) look for it.
            raise Rejected(404, f"Request for unknown model: {name!r} is not found; this server has "
                           f"{sorted(self.models)}", code="NOT_FOUND")
        if version not in ("", model.version):
            raise Rejected(404, f"model {name!r} has no version {version!r}: it has version {model.version!r}",
                           code="NOT_FOUND")
        return model

    def label(self, name: str) -> str:
        """The metrics label for a model name: unknown names share one, so clients cannot grow
        the number of series."""
        return name if name in self.models else "_unknown"

    def ready(self) -> bool:
        """Ready when not draining and every model serves (a Kubernetes readiness probe)."""
        return not self.draining and all(m.ready for m in self.models.values())

    def metadata(self) -> dict[str, Any]:
        return {"name": "corepipe", "version": __version__, "extensions": EXTENSIONS}

    def index(self) -> list[dict[str, Any]]:
        """The repository index: every model with its state and, when not ready, why."""
        out = []
        for m in self.models.values():
            ready, why, _ = m.readiness()
            out.append({"name": m.name, "version": m.version, "state": "READY" if ready else "UNAVAILABLE",
                        "reason": why})
        return out
