"""What `corepipe.tune` measures: the peers (through bench's harness, sized to last about
``seconds`` each) and each candidate plan under load, with how busy the machine was meanwhile."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.peers import PeerSetup, peer_setups, run_parallel, run_serial
from ..bench.reqfile import write_requests
from ..bench.traffic import Traffic
from ..compiler.cut.loadbalance import CpuWatch, measure_under_load
from .choose import Point
from .space import Candidate, CostModel

__all__ = ["Peers", "measure_candidate", "watched"]


def _requests_for(seconds: float, per_request_s: float, least: int = 8) -> int:
    return int(min(5000, max(least, seconds / max(per_request_s, 1e-6))))


class Peers:
    """The peers of `corepipe.bench.peers`, measured on the same inputs, each call one run
    lasting about ``traffic.seconds``: the 1-thread session first (a short probe sizes every
    other run from it), then the others."""

    def __init__(self, path: Path, feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                 use: Sequence[int], traffic: Traffic, precision: str, work: Path, *,
                 ranges: Callable[[int], dict[str, Any]] | None = None, ov_batches: Sequence[int] = (1,)) -> None:
        """``feeds``: one request, or mixed traffic's, sent in turn; ``ranges(batch)``: the
        OpenVINO peers' model reshaped to these bounded dims; ``ov_batches``: OpenVINO
        THROUGHPUT at each batch size (see `corepipe.bench.peers.peer_setups`)."""
        self.path, self.use, self.traffic, self.precision = path, list(use), traffic, precision
        self.ranges, self.ov_batches = ranges, tuple(ov_batches)
        self.inputs = work / "inputs.npz"
        write_requests(self.inputs, [dict(feeds)] if isinstance(feeds, Mapping) else [dict(f) for f in feeds])
        self.one_s: float | None = None  # seconds per request, 1 thread (sizes the other runs)
        self.k_threads_s: float | None = None

    def measurers(self) -> list[tuple[str, Callable[[], Point]]]:
        """``(what, measure)`` for each peer, in order."""
        k = len(self.use)
        setups = peer_setups(k, self.precision, ov_batches=self.ov_batches, in_flight=self.traffic.concurrency)
        return [(peer.what, functools.partial(self.measure, peer)) for peer in setups
                if k > 1 or peer.one_core or peer.mode not in ("serial", "parallel")]  # K=1: no K-copies

    def calibrated(self, measured: Mapping[str, Point]) -> tuple[float | None, float | None]:
        """(1-thread, K-thread) seconds per request for the cost model. They come from
        onnxruntime in fp32; OpenVINO LATENCY (K threads, one in flight, at the precision
        tuned) rescales both to the engine and precision the candidates run at."""
        ov = next((p for name, p in measured.items() if name.startswith("openvino LATENCY")), None)
        if ov is None or self.k_threads_s is None or self.one_s is None:
            return self.one_s, self.k_threads_s
        scale = (1 / ov.req_per_s) / self.k_threads_s
        return self.one_s * scale, self.k_threads_s * scale

    def _requests(self, speedup: float, least: int = 8) -> int:
        return _requests_for(self.traffic.seconds or 1.0, (self.one_s or 1.0) / speedup, least)

    def measure(self, peer: PeerSetup) -> Point:
        k, warm = len(self.use), 2
        if peer.one_core and self.one_s is None:  # a short probe sizes the real run
            r = run_serial(self.path, self.inputs, 1, 4, 1, self.use[:1])
            self.one_s = r["elapsed_s"] / r["requests"]
        if peer.mode == "parallel":
            rate, results = run_parallel(self.path, self.inputs, self._requests(k, 2 * k), warm, self.use)
            return Point(peer.setup, "peer", rate, float(np.median([x["latency_p50_s"] for x in results])),
                         precision=peer.precision)
        # the expected speed-up over one thread sizes the run (OpenVINO THROUGHPUT may run bf16: ~2x)
        speedup = {"ov_throughput": 2.0 * k, "shared": float(k), "ov_latency": float(k)}.get(
            peer.mode, k ** 0.8 if peer.threads > 1 else 1.0)
        least = 2 * k if peer.in_flight > 1 or peer.mode == "ov_latency" else 8
        use = self.use[:1] if peer.one_core else self.use
        extra: dict[str, Any] = {"batch": peer.batch}
        if self.ranges is not None and peer.engine == "openvino":
            extra["ranges"] = self.ranges(peer.batch)
        flight = max(1, peer.in_flight // peer.batch) if peer.mode == "ov_throughput" else None
        r = run_serial(self.path, self.inputs, peer.threads, self._requests(speedup, least), warm, use,
                       mode=peer.mode, precision=peer.precision, in_flight=flight, extra=extra)
        per = r["elapsed_s"] / r["requests"]
        if peer.one_core:
            self.one_s = min(self.one_s or per, per)
        elif peer.mode == "serial":
            self.k_threads_s = per if self.k_threads_s is None else min(self.k_threads_s, per)
        return Point(peer.setup, "peer", 1 / per, float(r["latency_p50_s"]), precision=peer.precision,
                     note="1 core: reference" if peer.one_core else "")


def watched(measure: Callable[[], Point]) -> Point:
    """``measure()``, with the share of the CPUs other processes used meanwhile."""
    watch = CpuWatch()
    point = measure()
    return dataclasses.replace(point, foreign_cpu=watch.foreign_share())


def measure_candidate(c: Candidate, art: Path, feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                      use: Sequence[int], traffic: Traffic, model: CostModel, how: str, precision: str,
                      say: Callable[[str], None], batch_delay: float | str = 0.0) -> Point:
    """Run the artifact at ``art`` as ``c`` with one request per stage worker in flight (with
    ``traffic.concurrency``, that many: a closed loop of clients), ``c.max_batch`` > 1 merging
    what waits. ``feeds``: one request, or mixed traffic's, sent in turn."""
    window = traffic.concurrency or c.window
    say(f"{c.label}: measure under load ({window} in flight)")
    m = measure_under_load(art, feeds, replicas=c.replicas, threads_per_stage=c.threads, cores=list(use),
                           seconds=traffic.seconds or 3.0, window=traffic.concurrency,
                           max_batch=c.max_batch if c.max_batch > 1 else None, batch_delay=batch_delay)
    return Point(c.label, "candidate", m.throughput, m.latency_p50_s, m.latency_p99_s, candidate=c,
                 predicted=model.predict(c), chunk_throughputs=m.chunk_throughputs,
                 note=f"{how} balance" if c.stages > 1 else "", foreign_cpu=m.foreign_cpu, precision=precision)
