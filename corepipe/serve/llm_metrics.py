"""Prometheus metrics of decoder models, under the names vLLM's users chart (prefix ``corepipe:``
where vLLM's is ``vllm:``; label ``model_name``), beside the ``corepipe_*`` series of `metrics`:

- ``corepipe:time_to_first_token_seconds``: histogram, request arrival to its first token;
- ``corepipe:inter_token_latency_seconds`` and ``corepipe:time_per_output_token_seconds`` (its
  older name in vLLM): histogram of the time between a sequence's tokens;
- ``corepipe:prompt_tokens_total``, ``corepipe:generation_tokens_total``: counters;
- ``corepipe:request_success_total{finished_reason}``: sequences ended (stop, length, cancelled, error);
- ``corepipe:num_requests_running`` (sequences holding a KV row), ``corepipe:num_requests_waiting``
  (waiting for one);
- ``corepipe:kv_cache_usage_perc{stage}``: the fraction of each stage's KV store in use (its rows),
  and ``corepipe:kv_cache_rows_in_use{stage}``, ``corepipe:kv_cache_bytes{stage}`` (its size).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .llm import Decoder

__all__ = ["LLMMetrics"]

_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
        0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class _Live(Collector):
    def __init__(self, decoders: list[Decoder]) -> None:
        self.decoders = decoders

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("corepipe:num_requests_running", "Sequences generating (holding a KV row)",
                                    labels=["model_name"])
        waiting = GaugeMetricFamily("corepipe:num_requests_waiting", "Sequences waiting for a KV row",
                                    labels=["model_name"])
        usage = GaugeMetricFamily("corepipe:kv_cache_usage_perc", "Fraction of the stage's KV store in use",
                                  labels=["model_name", "stage"])
        rows = GaugeMetricFamily("corepipe:kv_cache_rows_in_use", "KV rows (sequences) in use in the stage",
                                 labels=["model_name", "stage"])
        size = GaugeMetricFamily("corepipe:kv_cache_bytes", "Bytes of the stage's KV store (all rows)",
                                 labels=["model_name", "stage"])
        for d in self.decoders:
            counts = d.pipe.sequences()
            running.add_metric([d.name], counts["live"])
            waiting.add_metric([d.name], counts["waiting"])
            for k in range(d.pipe.plan.num_cores):
                held = counts["rows_in_use"] if d.spec.pairs_of(k) else 0
                usage.add_metric([d.name, str(k)], held / max(1, d.spec.max_sequences))
                rows.add_metric([d.name, str(k)], held)
                size.add_metric([d.name, str(k)], d.spec.kv_bytes(k))
        yield from (running, waiting, usage, rows, size)


class LLMMetrics:
    """Registers the series above in ``registry`` and observes ``decoders`` (their ``observer``)."""

    def __init__(self, registry: CollectorRegistry, decoders: Iterable[Decoder]) -> None:
        found = list(decoders)
        self.ttft = Histogram("corepipe:time_to_first_token_seconds", "Time to first token", ["model_name"],
                              buckets=_TTFT, registry=registry)
        self.itl = Histogram("corepipe:inter_token_latency_seconds", "Time between a sequence's tokens",
                             ["model_name"], buckets=_ITL, registry=registry)
        self.tpot = Histogram("corepipe:time_per_output_token_seconds", "Time per output token after the first",
                              ["model_name"], buckets=_ITL, registry=registry)
        self.prompt_tokens = Counter("corepipe:prompt_tokens", "Prompt tokens prefilled", ["model_name"],
                                     registry=registry)
        self.generation_tokens = Counter("corepipe:generation_tokens", "Tokens generated", ["model_name"],
                                         registry=registry)
        self.success = Counter("corepipe:request_success", "Sequences ended, by why", ["model_name", "finished_reason"],
                               registry=registry)
        if found:
            registry.register(_Live(found))
        for d in found:
            d.observer = self

    def prompt(self, d: Decoder, n: int) -> None:
        self.prompt_tokens.labels(d.name).inc(n)

    def token(self, d: Decoder, first: bool, seconds: float) -> None:
        self.generation_tokens.labels(d.name).inc()
        if first:
            self.ttft.labels(d.name).observe(seconds)
        else:
            self.itl.labels(d.name).observe(seconds)
            self.tpot.labels(d.name).observe(seconds)

    def end(self, d: Decoder, why: str | None) -> None:
        self.success.labels(d.name, why or "unknown").inc()
