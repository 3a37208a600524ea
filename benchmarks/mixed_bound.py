"""What bounds the pipeline on mixed lengths (benchmarks/mixed_lengths.py's artifacts): each
stage's busy time per request while the pipeline streams the mixed requests, against the same
requests sorted by length (shape changes rare), against one length repeated, and with deeper
hand-off rings (8 slots, 16 in flight: room for a short request to queue behind a long one).

    /work/bin/cp-bench python benchmarks/mixed_lengths.py ... (prepare first)
    /work/bin/cp-bench python benchmarks/mixed_bound.py /tmp/ml --traffic lognormal
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import traffic_support as ts
from mixed_lengths import RANGE, TRAFFIC

import corepipe
from corepipe.bench.mixed import plan_mixed
from corepipe.bench.traffic import Traffic


def stream(art: Path, reqs: list, cores: list[int], **options: object) -> dict:
    with corepipe.load(art, cores=cores, **options) as pipe:
        list(pipe.map(reqs[:10]))
        before = pipe.stats()
        me = psutil.Process()
        c0 = me.cpu_times()
        t0 = time.perf_counter()
        list(pipe.map(reqs))
        wall = time.perf_counter() - t0
        c1 = me.cpu_times()
        after = pipe.stats()
    busy = [(b.busy_s - a.busy_s) / max(1, b.requests - a.requests) for a, b in zip(before.stages, after.stages)]
    return {"rps": len(reqs) / wall, "busy_ms": [x * 1e3 for x in busy],
            "busy_pct": [100 * (b.busy_s - a.busy_s) / wall for a, b in zip(before.stages, after.stages)],
            "client_cpu_ms_per_req": 1e3 * ((c1.user - c0.user) + (c1.system - c0.system)) / len(reqs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--traffic", default="lognormal")
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    path, feeds = a.dir / "bert.onnx", ts.load_feeds(a.dir / "feeds.npz")
    mixed = plan_mixed(onnx.load(str(path), load_external_data=False), TRAFFIC[a.traffic][0], None, dynamic_dims=RANGE)
    reqs = mixed.requests(feeds, Traffic(requests=a.requests, profile=mixed.profile, seed=0))
    mean = round(np.mean([r["input_ids"].shape[1] for r in reqs]))
    cores = sorted(os.sched_getaffinity(0))[:2]
    art = a.dir / f"dyn_{a.traffic}"
    for name, rs, options in [
            ("mixed, interleaved", reqs, {}),
            ("mixed, sorted by length", sorted(reqs, key=lambda r: r["input_ids"].shape[1]), {}),
            (f"one length ({mean}) repeated", [mixed.example(feeds, {"sequence": mean})] * len(reqs), {}),
            ("mixed, interleaved, 8 slots per ring, 16 in flight", reqs, {"slots": 8, "max_in_flight": 16})]:
        print(name, options, stream(art, rs, cores, **options), flush=True)


if __name__ == "__main__":
    main()
