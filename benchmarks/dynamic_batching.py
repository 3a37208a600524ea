"""Dynamic batching (issue 17's target): ResNet-50 bf16, a closed loop of 16 clients each sending
batch-1 requests, against corepipe without batching and OpenVINO THROUGHPUT at batch 1, 2, 4, 8.

ResNet-50 is corepipe's zoo model (random weights) with its batch axis made symbolic. `prepare`
compiles it for 2 cores twice: with ``batch`` free in 1..8 (``buckets="auto"``), and static at
batch 1 (today's pipeline). `measure` runs, in rounds taken in turns, each with 16 requests in
flight (a client sends its next request when its answer is back):

- corepipe with ``max_batch=8`` (waiting requests merged up to 8, ``--batch-delay``);
- corepipe's static batch-1 pipeline, no batching;
- the batch-free artifact loaded without batching (what the free dim costs at batch 1);
- OpenVINO THROUGHPUT (2 streams) with the clients' requests merged B at a time into one
  inference of a static batch-B model (a server batching them; B = 1, 2, 4, 8), 16 / B
  inferences in flight.

    /work/bin/cp-test python benchmarks/dynamic_batching.py prepare /tmp/db
    /work/bin/cp-bench python benchmarks/dynamic_batching.py measure /tmp/db --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import traffic_support as ts

import corepipe
from corepipe.bench.mixed import batch_sizes, plan_mixed
from corepipe.bench.peers import measure_peer, peer_setups
from corepipe.bench.pipeline import measure_pipeline
from corepipe.bench.reqfile import write_requests
from corepipe.bench.traffic import Traffic


def prepare(out: Path, precision: str, balance: str, max_batch: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path, feeds = ts.resnet_with_batch_dim(out)
    ts.save_feeds(out / "feeds.npz", feeds)
    made: dict[str, Any] = {"precision": precision, "balance": balance, "max_batch": max_batch}
    t0 = time.perf_counter()
    cm = corepipe.compile(path, out / "dyn", num_cores=2, example_inputs=feeds, dynamic_dims={"batch": (1, max_batch)},
                          precision=precision, balance=balance)
    made["dyn"] = ts.compiled(cm, time.perf_counter() - t0)
    print(made, flush=True)
    t0 = time.perf_counter()
    corepipe.compile(path, out / "static", num_cores=2, example_inputs=feeds, precision=precision, balance=balance)
    made["static_compile_s"] = time.perf_counter() - t0
    (out / "prepared.json").write_text(json.dumps(made, indent=1))


def measure(out: Path, requests: int, count: int, clients: int, delay: str, markdown: Path | None) -> None:
    import onnx

    made = json.loads((out / "prepared.json").read_text())
    precision, top = made["precision"], int(made["max_batch"])
    path, feeds = out / "resnet50_batch.onnx", ts.load_feeds(out / "feeds.npz")
    mixed = plan_mixed(onnx.load(str(path), load_external_data=False), None, top)
    traffic = Traffic(requests=requests, warmup=5, concurrency=clients)
    reqs = mixed.requests(feeds, traffic)
    inputs = out / "requests.npz"
    write_requests(inputs, reqs)
    cores = sorted(os.sched_getaffinity(0))[:2]
    dyn, static = out / "dyn", out / "static"
    me = f"corepipe, max_batch {top}"
    plain = "corepipe without batching (static batch 1)"
    free = "corepipe without batching (batch dim free)"
    setups = {
        me: lambda: measure_pipeline(dyn, reqs, traffic, "local", {"cores": cores, "max_batch": top,
                                                                    "batch_delay": delay},
                                     stages=ts.stage_engines(dyn), setup=me)[0],
        plain: lambda: measure_pipeline(static, reqs, traffic, "local", {"cores": cores}, stages=ts.stage_engines(static),
                                        setup=plain)[0],
        free: lambda: measure_pipeline(dyn, reqs, traffic, "local", {"cores": cores}, stages=ts.stage_engines(dyn),
                                       setup=free)[0],
    }
    ov_names = []
    for peer in peer_setups(2, precision, strong=True, ov_batches=batch_sizes(top), in_flight=clients):
        if peer.mode != "ov_throughput":
            continue
        ov_names.append(peer.setup)
        setups[peer.setup] = (lambda p=peer: measure_peer(p, path, inputs, cores, requests, 5,
                                                          ranges=mixed.ov_ranges(feeds, p.batch)))
    measured = ts.rounds(setups, count)
    how = (f"2 cores; ResNet-50 (zoo, random weights) {precision}, batch dim free 1..{top} "
           f"(stages {made['dyn']['modes']}, buckets {made['dyn']['buckets'] or 'none'}); closed loop of {clients} "
           f"clients sending batch-1 requests, {requests} timed per setup, {count} rounds; batch delay {delay}; "
           f"p50/p99: each request's, {clients} in flight (OpenVINO's: its inference's)")
    targets: list[tuple[str, str, Any, float]] = [
        (f"{me} over {plain}", me, plain, 1.1),
        (f"{me} over {free}", me, free, 1.1),
        (f"{me} over the best of OpenVINO THROUGHPUT at batch {', '.join(map(str, batch_sizes(top)))}", me, ov_names,
         0.95),
    ]
    text = ts.markdown(f"Dynamic batching: ResNet-50 {precision}, {clients} clients, 2 cores",
                       f"python benchmarks/dynamic_batching.py measure DIR --requests {requests} --rounds {count} "
                       f"--clients {clients} --batch-delay {delay}", how, measured, targets)
    print(text)
    if markdown is not None:
        with open(markdown, "a") as f:
            f.write(text + "\n")
    ts.dump(out / "measured.json", measured, {"prepared": made})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--balance", default="measure")
    p.add_argument("--max-batch", type=int, default=8)
    m = sub.add_parser("measure")
    m.add_argument("dir", type=Path)
    m.add_argument("--requests", type=int, default=300)
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--clients", type=int, default=16)
    m.add_argument("--batch-delay", default="2ms")
    m.add_argument("--markdown", type=Path)
    a = ap.parse_args()
    if a.step == "prepare":
        prepare(a.dir, a.precision, a.balance, a.max_batch)
    else:
        measure(a.dir, a.requests, a.rounds, a.clients, a.batch_delay, a.markdown)


if __name__ == "__main__":
    main()
