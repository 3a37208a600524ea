"""One served model: its pipeline bridged to asyncio, its admission window, metadata and statistics.

Admission. Requests to one model share its pipeline's bounded in-flight window (``max_in_flight``)
and a bounded wait for it (``max_queue``). Past both, a request is refused at once (503 with
Retry-After / RESOURCE_EXHAUSTED): memory never grows with the number of clients. A semaphore on
the event loop mirrors the pipeline's window, released only when the pipeline's future completes
(after the pipeline freed its own slot), so `Pipeline.submit` is only called when it has room and
never blocks the event loop. The future is bridged with ``call_soon_threadsafe`` from the
thread that reaps the pipeline's results. A client that goes away does not free the slot early: its request
still occupies the pipeline until it completes.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.plan import TensorSpec
from ..errors import CorepipeError, InputError, PipelineClosedError
from ..runtime import Pipeline
from ..runtime.batcher import BatchingPipeline
from ..runtime.batches import chain
from .batching import Batching, kserve_shape, parts_of, triton_dims
from .classification import classified
from .codec import datatype_of

__all__ = ["Rejected", "ServedModel", "default_body_limit"]

VERSION = "1"


class Rejected(CorepipeError):
    """A request refused before or instead of running: the HTTP status and the gRPC code to send.

    Attributes:
        status: HTTP status (400, 401, 404, 413, 500, 503).
        code: gRPC status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``...).
        retry_after: seconds a client should wait before retrying (503 only), else None.
    """

    def __init__(self, status: int, message: str, *, code: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def default_body_limit(specs: tuple[TensorSpec, ...] | list[TensorSpec], requests: int = 1) -> int:
    """Room for every input sent as JSON (24 characters a value covers any float or int64), + 1 MiB;
    ``requests``: how many pipeline requests' worth one request may carry (a batch)."""
    return 2**20 + requests * sum(24 * math.prod(s.shape) for s in specs)


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class _Stats:
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute: _Duration = field(default_factory=_Duration)
    # Decoding requests (and reading shared memory), encoding answers (and writing it): their
    # counts are compute's, as Triton's are, since perf_analyzer refuses statistics whose
    # compute_input, compute_infer and compute_output counts differ (a request between the
    # pipeline's answer and its encoding would make them differ).
    input_ns: int = 0
    output_ns: int = 0
    last_ms: int = 0
    rows: int = 0  # batch rows answered (Triton's inference_count for a model that batches)
    # Pipeline requests answered, by rows: {rows: [count, ns]} (Triton's batch_stats, when no
    # dynamic batcher merges requests underneath; then its own count is used).
    runs: dict[int, list[int]] = field(default_factory=dict)


class ServedModel:
    """A model behind the server: a name, its verified artifact's signature, and its pipeline.

    ``pipe`` is None when the pipeline could not start; ``load_error`` then says why, and every
    request gets 503 with that reason. ``batching``: how it takes batches (`corepipe.serve.batching`).
    """

    def __init__(
        self, name: str, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
        pipe: Pipeline | None, *, load_error: str | None = None, max_queue: int | None = None,
        body_limit: int | None = None, cores: list[int] | None = None, deployment: dict[str, Any] | None = None,
        batching: Batching | None = None, input_format: str | None = None, labels: list[str] | None = None,
        labels_file: str = "",
    ) -> None:
        self.name = name
        self.version = VERSION
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.pipe = pipe
        self.load_error = load_error
        self.cores = cores or []
        self.deployment = deployment or {}
        self.max_in_flight = pipe.max_in_flight if pipe is not None else 0
        self.max_queue = 4 * self.max_in_flight if max_queue is None else max_queue
        self.batching = batching or Batching()
        self.input_format = input_format  # Triton's FORMAT_NCHW / FORMAT_NHWC, as declared (--input-format)
        self.labels = labels or []  # class names for classification (--labels), line i names class i
        self.labels_file = labels_file
        b = self.batching
        self.body_limit = body_limit or default_body_limit(inputs, max(1, -(-b.max_batch_size // (b.rows or 1))))
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop
        self.waiting = 0
        self.running = 0
        self.stats = _Stats()
        self._lock = threading.Lock()
        self.on_finish: Any = None  # metrics hook: (model, ok, seconds, queued_seconds) -> None

    # -- state ---------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str, float]:
        """``(ready, why not, seconds until worth retrying)``."""
        if self.pipe is None:
            return False, f"its pipeline could not start: {self.load_error}", 0.0
        return self.pipe.readiness()

    @property
    def ready(self) -> bool:
        return self.readiness()[0]

    # -- inference -----------------------------------------------------------------------------
    async def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request through the pipeline without blocking the event loop. A batch larger
        than one pipeline request holds runs as several, streamed one after another, each
        taking its own place in the window (`corepipe.serve.batching`).

        Raises:
            InputError: the request does not match the signature (or is over max_batch_size).
            Rejected: not ready (503 UNAVAILABLE) or full (503 RESOURCE_EXHAUSTED).
            StageError: the request failed inside a stage (the others go on).
        """
        ready, why, retry = self.readiness()
        if not ready or self.pipe is None:
            raise Rejected(503, f"model {self.name!r} is not ready: {why}", code="UNAVAILABLE",
                           retry_after=max(1.0, retry))
        if getattr(self.pipe.plan, "decoder", None) is not None:
            raise Rejected(400, f"model {self.name!r} is a decoder (its stages keep each sequence's KV): it "
                           "generates, it does not infer; call POST /v1/completions (OpenAI) or "
                           f"/v2/models/{self.name}/generate", code="INVALID_ARGUMENT")
        if self.waiting + self.running >= self.max_in_flight + self.max_queue:
            raise Rejected(
                503, f"model {self.name!r} is at capacity: {self.running} requests in flight and "
                f"{self.waiting} waiting (limits {self.max_in_flight} + {self.max_queue}); retry later",
                code="RESOURCE_EXHAUSTED", retry_after=1.0)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter_ns()
        futures: list[Future[dict[str, np.ndarray]]] = []
        self.waiting += 1
        try:
            for part in parts_of(self.pipe.plan, self.batching, feeds):
                futures.append(await self._submit(part))
        except Rejected:
            raise
        except Exception:
            self._record(False, t0, time.perf_counter_ns())
            raise
        finally:
            self.waiting -= 1
        t1 = time.perf_counter_ns()
        self.running += 1
        names = [t.name for t in self.outputs]
        fut = futures[0] if len(futures) == 1 else chain(
            futures, lambda rs: {n: np.concatenate([r[n] for r in rs], axis=0) for n in names})
        done: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()

        def landed(f: Future[dict[str, np.ndarray]]) -> None:  # on the thread that reaps the pipeline
            try:
                loop.call_soon_threadsafe(self._complete, f, done, t0, t1)
            except RuntimeError:  # the loop is gone (shutting down): nobody is waiting
                pass

        fut.add_done_callback(landed)
        return await done

    async def _submit(self, feeds: Mapping[str, np.ndarray]) -> Future[dict[str, np.ndarray]]:
        """One pipeline request, once the window has room for it; its place is given back when
        it completes (on the loop)."""
        assert self._slots is not None and self.pipe is not None
        loop = asyncio.get_running_loop()
        await self._slots.acquire()
        rows = max((v.shape[0] for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim), default=1)
        sent = time.perf_counter_ns()
        try:
            fut = self.pipe.submit(feeds, timeout=0)
        except TimeoutError:  # cannot happen while the semaphore mirrors the window; be safe
            self._slots.release()
            raise Rejected(503, f"model {self.name!r} is at capacity; retry later",
                           code="RESOURCE_EXHAUSTED", retry_after=1.0) from None
        except PipelineClosedError as exc:
            self._slots.release()
            raise Rejected(503, f"model {self.name!r} is not serving: {exc}", code="UNAVAILABLE",
                           retry_after=1.0) from None
        except BaseException:
            self._slots.release()
            raise

        def free(f: Future[dict[str, np.ndarray]]) -> None:  # on the pipeline's collector thread
            if not f.cancelled() and f.exception() is None:
                took = time.perf_counter_ns() - sent
                with self._lock:
                    run = self.stats.runs.setdefault(int(rows), [0, 0])
                    run[0] += 1
                    run[1] += took
            try:
                loop.call_soon_threadsafe(self._slots.release)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is gone
                pass

        fut.add_done_callback(free)
        return fut

    def _complete(self, f: Future[dict[str, np.ndarray]], done: asyncio.Future[dict[str, np.ndarray]],
                  t0: int, t1: int) -> None:
        self.running -= 1
        exc = f.exception()
        result = f.result() if exc is None else None
        rows = next((int(v.shape[0]) for v in (result or {}).values() if v.ndim), 1)
        self._record(exc is None, t0, t1, rows)
        if done.cancelled():
            return
        if exc is not None:
            if isinstance(exc, PipelineClosedError):
                exc = Rejected(503, f"model {self.name!r} stopped before the request finished: {exc}",
                               code="UNAVAILABLE", retry_after=1.0)
            done.set_exception(exc)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def _record(self, ok: bool, t0: int, t1: int, rows: int = 1) -> None:
        now = time.perf_counter_ns()
        with self._lock:
            (self.stats.success if ok else self.stats.fail).add(now - t0)
            if ok:
                self.stats.rows += rows
                self.stats.queue.add(t1 - t0)
                self.stats.compute.add(now - t1)
            self.stats.last_ms = int(time.time() * 1000)
        if self.on_finish is not None:
            self.on_finish(self, ok, (now - t0) / 1e9, (t1 - t0) / 1e9)

    def record_io(self, decode_ns: int, encode_ns: int) -> None:
        """Add the time a front end spent decoding successful requests' inputs (and copying
        them in from shared memory) and encoding their outputs (Triton's ``compute_input`` and
        ``compute_output``)."""
        with self._lock:
            self.stats.input_ns += decode_ns
            self.stats.output_ns += encode_ns

    def classified(self, results: dict[str, np.ndarray], classes: Mapping[str, int]) -> dict[str, np.ndarray]:
        """``results`` with the outputs asked by classification replaced by their top K
        (`corepipe.serve.classification`), per row when the model takes batches."""
        if not classes:
            return results
        return classified(results, classes, self.batching.max_batch_size > 0, self.labels)

    def reject_input(self, exc: InputError) -> None:
        """Count a request refused for bad input as a failure (statistics and metrics)."""
        t = time.perf_counter_ns()
        self._record(False, t, t)

    # -- descriptions --------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata."""
        def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": datatype_of(s.dtype), "shape": kserve_shape(s)} for s in specs]

        return {"name": self.name, "versions": [self.version], "platform": "corepipe",
                "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}

    def config(self) -> dict[str, Any]:
        """Triton's model configuration (JSON form), as perf_analyzer and tritonclient read it.

        ``max_batch_size`` and ``dims`` as Triton gives them (`corepipe.serve.batching`): N > 0
        with dims past the batch dim for a model with a dynamic batch dim, else 0 with the full
        shapes; ``-1`` where a dim varies; ``dynamic_batching`` when requests are merged. One
        instance group per pipeline replica. An input's ``format`` (FORMAT_NCHW/NHWC) when the
        model declares one, an output's ``label_filename`` when it has labels.
        """
        b = self.batching

        def tensors(specs: tuple[TensorSpec, ...], extra: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"name": s.name, "data_type": "TYPE_" + ("STRING" if datatype_of(s.dtype) == "BYTES"
                                                              else datatype_of(s.dtype)),
                     "dims": triton_dims(s, b), **extra} for s in specs]

        stages = self.pipe.plan.num_cores if self.pipe is not None else 0
        out: dict[str, Any] = {
            "name": self.name, "platform": "corepipe", "backend": "corepipe", "max_batch_size": b.max_batch_size,
            "input": tensors(self.inputs, {"format": f"FORMAT_{self.input_format}"} if self.input_format else {}),
            "output": tensors(self.outputs, {"label_filename": self.labels_file} if self.labels else {}),
            "instance_group": [{"name": f"{self.name}_pipeline", "kind": "KIND_CPU",
                                "count": int(self.deployment.get("replicas", 1))}],
            "parameters": {
                "stages": {"string_value": str(stages)},
                "cores": {"string_value": ",".join(str(c) for c in self.cores)},
                "max_in_flight": {"string_value": str(self.max_in_flight)},
            },
        }
        if b.merge:
            out["dynamic_batching"] = {"preferred_batch_size": [b.merge], "max_queue_delay_microseconds": b.delay_us}
        return out

    def statistics(self) -> dict[str, Any]:
        """Triton's statistics extension (JSON form) for this model.

        ``execution_count`` counts the model's executions, ``batch_stats`` them by batch size
        (rows): with dynamic batching, the merged batches the pipeline ran (fewer than the
        requests when requests merge); otherwise the pipeline requests (one per request, or
        one per chunk of a request split along its batch dim). A batch's ``compute_infer``
        is its time from sending to answer; decoding and encoding are per request
        (``inference_stats``), so a batch's ``compute_input``/``compute_output`` say 0 ns.
        """
        merged = self.pipe.executions() if isinstance(self.pipe, BatchingPipeline) else None
        with self._lock:
            s = self.stats
            runs = merged if merged is not None else {r: (n, ns) for r, (n, ns) in s.runs.items()}

            def d(x: _Duration) -> dict[str, int]:
                return {"count": x.count, "ns": x.ns}

            return {
                "name": self.name, "version": self.version, "last_inference": s.last_ms,
                "inference_count": s.rows if self.batching.max_batch_size else s.success.count,
                "execution_count": sum(n for n, _ in runs.values()),
                "inference_stats": {"success": d(s.success), "fail": d(s.fail), "queue": d(s.queue),
                                    "compute_input": {"count": s.compute.count, "ns": s.input_ns},
                                    "compute_infer": d(s.compute),
                                    "compute_output": {"count": s.compute.count, "ns": s.output_ns}},
                "batch_stats": [{"batch_size": rows, "compute_input": {"count": n, "ns": 0},
                                 "compute_infer": {"count": n, "ns": ns}, "compute_output": {"count": n, "ns": 0}}
                                for rows, (n, ns) in sorted(runs.items())],
            }

    def close(self, timeout: float | None = 30.0) -> None:
        if self.pipe is not None:
            self.pipe.close(timeout=timeout)
