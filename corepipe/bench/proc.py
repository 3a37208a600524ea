"""One peer setup, timed in its own process (`corepipe.bench.peers` starts it).

Run as ``python -m corepipe.bench.proc CONFIG_JSON``. Modes:
- ``serial``: one onnxruntime session with ``threads`` intra-op threads runs ``requests`` requests
  one by one.
- ``parallel``: one of K copies; loads, warms up, prints ``ready``, waits for a line on stdin,
  runs its share, then reports. The parent starts all K at once and times the whole.
- ``shared``: one onnxruntime session (1 intra-op thread) shared by ``threads`` Python threads,
  each running requests back to back (onnxruntime releases the GIL while it runs).
- ``ov_throughput``: OpenVINO ``PERFORMANCE_HINT=THROUGHPUT`` with ``threads`` streams, fed by an
  ``AsyncInferQueue`` with ``in_flight`` requests (default one per stream; two per stream keep
  one waiting inside OpenVINO, so a stream never idles while Python hands it the next).
- ``ov_latency``: OpenVINO ``PERFORMANCE_HINT=LATENCY`` with ``threads`` inference threads, one
  request in flight (``in_flight`` > 1: fed by an ``AsyncInferQueue`` of that many).
- ``ov_parallel``: ``parallel`` on OpenVINO: one of K 1-thread LATENCY copies.
OpenVINO runs at ``precision`` (fp32 also asks for ``EXECUTION_MODE_HINT=ACCURACY``, since a
bf16-capable CPU would otherwise default to bf16); with ``ranges`` (input -> per axis ``[lo, hi]``)
its model is reshaped to those bounded dynamic dims, as corepipe's own OpenVINO stages are.

Mixed traffic: an inputs file whose arrays are named ``r<i>.<input>`` holds a list of requests
(`corepipe.bench.reqfile`); each mode runs them in turn, cycling, from ``offset`` (the K parallel
copies start at their own share). ``ov_throughput`` with ``batch`` B merges B consecutive
requests along axis 0 into one inference (a server batching its clients: requests of one
shape) and counts B requests per inference. Results are one JSON line on stdout (plain
numbers, no pickle): elapsed seconds, requests, p50 and p99 latency, the process's CPU seconds
over the timed requests (every thread: what the setup costs the machine per request), RSS and USS.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .reqfile import Feeds, read_requests, requests_digest

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _ort(cfg: dict[str, Any], threads: int) -> Callable[[dict[str, np.ndarray]], object]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(cfg["model"], opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _ov(cfg: dict[str, Any], hint: str) -> Any:
    import openvino as ov

    precision = cfg.get("precision", "fp32")
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": hint,
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        "EXECUTION_MODE_HINT": "ACCURACY" if precision == "fp32" else "PERFORMANCE",
    }
    if hint == "THROUGHPUT":
        config["NUM_STREAMS"] = int(cfg["threads"])
    else:
        config["INFERENCE_NUM_THREADS"] = int(cfg["threads"])
    core = ov.Core()
    model = core.read_model(cfg["model"])
    if cfg.get("ranges"):
        model.reshape({name: ov.PartialShape([ov.Dimension(int(lo), int(hi)) for lo, hi in axes])
                       for name, axes in cfg["ranges"].items()})
    return core.compile_model(model, "CPU", config)


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


_DIGEST = [""]  # the digest of the requests this process read (`main` sets it)


def _report(elapsed: float, latencies: list[float], extra: dict[str, Any] | None = None, *, cpu_s: float) -> None:
    import psutil

    mem = psutil.Process().memory_full_info()
    print(json.dumps({
        "elapsed_s": elapsed,
        "cpu_s": _cpu_s() - cpu_s,
        "requests": len(latencies),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "rss_bytes": int(mem.rss),
        "uss_bytes": int(getattr(mem, "uss", mem.rss)),
        "requests_digest": _DIGEST[0],
        **(extra or {}),
    }), flush=True)


def _serial(run: Callable[[Feeds], object], reqs: list[Feeds], cfg: dict[str, Any]) -> None:
    first = int(cfg.get("offset", 0))
    for i in range(int(cfg["warmup"])):
        run(reqs[(first + i) % len(reqs)])
    if cfg["mode"] in ("parallel", "ov_parallel"):
        print("ready", flush=True)
        sys.stdin.readline()
    latencies = []
    cpu, start = _cpu_s(), time.perf_counter()
    for i in range(int(cfg["requests"])):
        t0 = time.perf_counter()
        run(reqs[(first + i) % len(reqs)])
        latencies.append(time.perf_counter() - t0)
    _report(time.perf_counter() - start, latencies, cpu_s=cpu)


def _shared(run: Callable[[Feeds], object], reqs: list[Feeds], cfg: dict[str, Any]) -> None:
    threads, total = int(cfg["threads"]), int(cfg["requests"])
    for i in range(int(cfg["warmup"])):
        run(reqs[i % len(reqs)])
    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker() -> None:
        while True:
            with lock:
                j = next(counter, None)
            if j is None:
                return
            t0 = time.perf_counter()
            run(reqs[j % len(reqs)])
            with lock:
                latencies.append(time.perf_counter() - t0)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    cpu, start = _cpu_s(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    _report(time.perf_counter() - start, latencies, cpu_s=cpu)


def _batches(reqs: list[Feeds], batch: int) -> list[Feeds]:
    """``batch`` consecutive requests (cycling) merged along axis 0, as many as there are requests."""
    if batch == 1:
        return reqs
    return [{k: np.concatenate([reqs[(i * batch + j) % len(reqs)][k] for j in range(batch)]) for k in reqs[0]}
            for i in range(len(reqs))]


def _ov_queue(compiled: Any, reqs: list[Feeds], cfg: dict[str, Any]) -> None:
    import openvino as ov

    batch = int(cfg.get("batch", 1))
    streams = int(compiled.get_property("NUM_STREAMS"))
    queue = ov.AsyncInferQueue(compiled, int(cfg.get("in_flight") or max(streams, int(cfg["threads"]))))
    inputs = _batches(reqs, batch)
    latencies: list[float] = []
    queue.set_callback(lambda request, _: latencies.extend([request.latency / 1e3] * batch))  # ms -> s

    def stream(count: int) -> float:
        start = time.perf_counter()
        for i in range(count):
            queue.start_async(inputs[i % len(inputs)])  # blocks while every request is busy
        queue.wait_all()
        return time.perf_counter() - start

    stream(max(int(cfg["warmup"]), 1) * len(queue))
    latencies.clear()
    cpu = _cpu_s()
    elapsed = stream(max(1, -(-int(cfg["requests"]) // batch)))
    _report(elapsed, latencies, {"streams": streams, "batch": batch}, cpu_s=cpu)


def main(config_json: str) -> None:
    cfg = json.loads(config_json)
    if cfg.get("cores"):
        os.sched_setaffinity(0, set(cfg["cores"]))
    feeds = read_requests(cfg["inputs"])
    _DIGEST[0] = requests_digest(feeds)
    mode = cfg["mode"]
    if mode in ("serial", "parallel"):
        _serial(_ort(cfg, int(cfg["threads"])), feeds, cfg)
    elif mode == "shared":
        _shared(_ort(cfg, 1), feeds, cfg)
    elif mode == "ov_throughput":
        _ov_queue(_ov(cfg, "THROUGHPUT"), feeds, cfg)
    elif mode == "ov_latency" and int(cfg.get("in_flight") or 1) > 1:
        _ov_queue(_ov(cfg, "LATENCY"), feeds, cfg)
    elif mode in ("ov_latency", "ov_parallel"):  # ov_parallel: one of K 1-thread processes
        request = _ov(cfg, "LATENCY").create_infer_request()
        _serial(lambda f: request.infer(f), feeds, cfg)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
