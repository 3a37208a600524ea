"""Serving: `corepipe serve` speaks KServe v2 (Open Inference Protocol) over HTTP and gRPC, with
Triton's model configuration, statistics and system shared memory extensions (so tritonclient and
perf_analyzer drive it unmodified; the others answer that they are not offered), TensorFlow
Serving's REST predict, and Prometheus metrics; one pipeline per model of a repository of
artifacts. Decoder artifacts also speak OpenAI's API (``/v1/completions``, ``/v1/chat/completions``,
streamed as server-sent events) and KServe v2's generate extension (`corepipe.serve.llm_http`).

    >>> from corepipe.serve import ServeConfig, serve
    >>> serve("models/", ServeConfig(http_port=8000, grpc_port=8001, token="s3cret"))  # doctest: +SKIP
"""

from __future__ import annotations

from .config import ServeConfig, split_cores
from .repository import discover
from .server import Endpoints, serve

__all__ = ["ServeConfig", "Endpoints", "serve", "discover", "split_cores"]
