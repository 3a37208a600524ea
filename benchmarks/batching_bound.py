"""What bounds dynamic batching (benchmarks/dynamic_batching.py's artifacts): with 16 clients in
a closed loop, the batches that form (mean rows per merged request), each stage's busy seconds
per row (the engine's cost of one image inside a batch) and busy share, with batching and
without; the rows' cost is the most batching can save.

    /work/bin/cp-bench python benchmarks/batching_bound.py /tmp/db
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import traffic_support as ts

import corepipe


def closed_loop(art: Path, feeds: dict, cores: list[int], clients: int, count: int, **options: object) -> dict:
    with corepipe.load(art, cores=cores, **options) as pipe:
        pending: collections.deque = collections.deque()
        for _ in range(2 * clients):
            pending.append(pipe.submit(feeds))
        while pending:
            pending.popleft().result()
        before = pipe.stats()
        t0 = time.perf_counter()
        sent = 0
        while sent < count or pending:
            while sent < count and len(pending) < clients:
                pending.append(pipe.submit(feeds))
                sent += 1
            pending.popleft().result()
        wall = time.perf_counter() - t0
        after = pipe.stats()
        mean = float(getattr(pipe, "mean_batch", 1.0))
    rows = count
    return {"rps": count / wall, "mean_batch": round(mean, 2),
            "busy_ms_per_row": [round(1e3 * (b.busy_s - a.busy_s) / rows, 2) for a, b in zip(before.stages, after.stages)],
            "busy_pct": [round(100 * (b.busy_s - a.busy_s) / wall, 1) for a, b in zip(before.stages, after.stages)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    feeds = ts.load_feeds(a.dir / "feeds.npz")
    cores = sorted(os.sched_getaffinity(0))[:2]
    for name, art, options in [("static batch 1, no batching", a.dir / "static", {}),
                               ("batch dim free, no batching", a.dir / "dyn", {}),
                               ("max_batch 8, delay 2ms", a.dir / "dyn", {"max_batch": 8, "batch_delay": "2ms"}),
                               ("max_batch 8, delay 0", a.dir / "dyn", {"max_batch": 8, "batch_delay": 0.0})]:
        print(name, closed_loop(art, feeds, cores, a.clients, a.requests, **options), flush=True)


if __name__ == "__main__":
    main()
