"""Prometheus metrics of the server (``GET /metrics``), in a registry of its own.

Series (label ``model`` everywhere; ``protocol`` is http, grpc or tfserving):

- ``corepipe_requests_total{model,protocol}`` and ``corepipe_request_failures_total{model,protocol,code}``
  (``code``: the HTTP status sent; a gRPC failure counts under the status its code maps to);
- ``corepipe_request_duration_seconds{model}``: histogram of accepted requests, arrival to answer;
- ``corepipe_request_queue_seconds{model}``: histogram of the wait for room in the pipeline's window;
- ``corepipe_requests_in_flight{model}`` (in the pipeline) and ``corepipe_requests_waiting{model}``;
- ``corepipe_model_ready{model}``: 1 when the model serves, 0 while a stage is down or it failed;
- per stage (label ``stage``): ``corepipe_stage_busy_ratio`` (busy fraction since the previous scrape,
  at most one second back), ``corepipe_stage_busy_seconds_total``, ``corepipe_stage_queue_depth``
  (requests waiting in the hand-off ring before the stage), ``corepipe_stage_restarts_total``,
  ``corepipe_stage_requests_total`` and ``corepipe_stage_engine_runs_total`` (fewer runs than
  requests: ``--stage-batch`` merged them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .model import ServedModel

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Live(Collector):
    """Gauges read at scrape time from each model's pipeline."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        self.models = models
        self._last: dict[tuple[str, int, int], tuple[float, float, float]] = {}  # -> (t, busy_s, ratio)
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("corepipe_model_ready", "1 when the model serves requests", labels=["model"])
        running = GaugeMetricFamily("corepipe_requests_in_flight", "Requests in the pipeline", labels=["model"])
        waiting = GaugeMetricFamily("corepipe_requests_waiting", "Requests waiting for room in the pipeline",
                                    labels=["model"])
        busy = GaugeMetricFamily("corepipe_stage_busy_ratio", "Fraction of time the stage was running a request",
                                 labels=["model", "replica", "stage"])
        busy_s = CounterMetricFamily("corepipe_stage_busy_seconds", "Seconds the stage spent running requests",
                                     labels=["model", "replica", "stage"])
        depth = GaugeMetricFamily("corepipe_stage_queue_depth", "Requests waiting in the hand-off ring before the stage",
                                  labels=["model", "replica", "stage"])
        restarts = CounterMetricFamily("corepipe_stage_restarts", "Restarts of the stage's worker",
                                       labels=["model", "replica", "stage"])
        requests = CounterMetricFamily("corepipe_stage_requests", "Requests the stage ran",
                                       labels=["model", "replica", "stage"])
        runs = CounterMetricFamily("corepipe_stage_engine_runs", "Engine calls the stage made (fewer than its "
                                   "requests where --stage-batch merged them)", labels=["model", "replica", "stage"])
        now = time.monotonic()
        for m in self.models:
            ready.add_metric([m.name], 1.0 if m.ready else 0.0)
            running.add_metric([m.name], m.running)
            waiting.add_metric([m.name], m.waiting)
            if m.pipe is None:
                continue
            for st in m.pipe.stats().stages:
                label = [m.name, str(st.replica), str(st.index)]
                busy.add_metric(label, self._ratio((m.name, st.replica, st.index), now, st.busy_s, st.busy_pct / 100))
                busy_s.add_metric(label, st.busy_s)
                depth.add_metric(label, st.queue_depth)
                restarts.add_metric(label, st.restarts)
                requests.add_metric(label, st.requests)
                runs.add_metric(label, st.runs)
        yield from (ready, running, waiting, busy, busy_s, depth, restarts, requests, runs)

    def _ratio(self, key: tuple[str, int, int], now: float, busy_s: float, lifetime: float) -> float:
        with self._lock:
            last = self._last.get(key)
            if last is None:
                self._last[key] = (now, busy_s, lifetime)
                return min(1.0, lifetime)
            if now - last[0] < 1.0:
                return last[2]
            ratio = min(1.0, max(0.0, (busy_s - last[1]) / (now - last[0])))
            self._last[key] = (now, busy_s, ratio)
            return ratio


class Metrics:
    """The server's metrics; handlers call `count`, models report through their ``on_finish``."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("corepipe_requests", "Inference requests received",
                                ["model", "protocol"], registry=self.registry)
        self.failures = Counter("corepipe_request_failures", "Inference requests that failed, by status",
                                ["model", "protocol", "code"], registry=self.registry)
        self.latency = Histogram("corepipe_request_duration_seconds",
                                 "Accepted requests: arrival to answer, in the server",
                                 ["model"], buckets=_BUCKETS, registry=self.registry)
        self.queue = Histogram("corepipe_request_queue_seconds",
                               "Accepted requests: wait for room in the pipeline's window",
                               ["model"], buckets=_BUCKETS, registry=self.registry)
        self.registry.register(_Live(models))
        for m in models:
            m.on_finish = self._finished

    def _finished(self, model: ServedModel, ok: bool, seconds: float, queued: float) -> None:
        if ok:
            self.latency.labels(model.name).observe(seconds)
            self.queue.labels(model.name).observe(queued)

    def count(self, model: str, protocol: str, status: int) -> None:
        """One inference request for ``model`` answered with HTTP ``status`` (or its gRPC twin)."""
        self.requests.labels(model, protocol).inc()
        if status >= 400:
            self.failures.labels(model, protocol, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
