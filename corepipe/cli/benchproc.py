"""Baseline processes for `corepipe bench`: one onnxruntime session, timed in its own process.

Run as ``python -m corepipe.cli.benchproc CONFIG_JSON``. Modes:
- ``serial``: one session with ``threads`` intra-op threads runs ``requests`` requests one by one.
- ``parallel``: one of K copies; loads, warms up, prints ``ready``, waits for a line on stdin,
  runs its share, then reports. The parent starts all K at once and times the whole.
Results are one JSON line on stdout (plain numbers, no pickle).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def main(config_json: str) -> None:
    cfg = json.loads(config_json)
    if cfg.get("cores"):
        os.sched_setaffinity(0, set(cfg["cores"]))
    import onnxruntime as ort
    import psutil

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(cfg["threads"])
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(cfg["model"], opts, providers=["CPUExecutionProvider"])
    with np.load(cfg["inputs"]) as data:
        feeds = {k: data[k] for k in data.files}
    for _ in range(int(cfg["warmup"])):
        session.run(None, feeds)
    if cfg["mode"] == "parallel":
        print("ready", flush=True)
        sys.stdin.readline()
    latencies = []
    start = time.perf_counter()
    for _ in range(int(cfg["requests"])):
        t0 = time.perf_counter()
        session.run(None, feeds)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    mem = psutil.Process().memory_full_info()
    print(json.dumps({
        "elapsed_s": elapsed,
        "requests": len(latencies),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "rss_bytes": int(mem.rss),
        "uss_bytes": int(getattr(mem, "uss", mem.rss)),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
