"""Stage batching (issue 27): each stage's worker runs the requests queued in its ring as one
engine call (``load(stage_batch=N)``), against no batching, client-side dynamic batching
(``max_batch``) and OpenVINO THROUGHPUT at batch 1, 2, 4, 8, with many requests in flight.

The model is one where a batch costs less than its rows alone: corepipe's zoo MLP made wide
(``--widths``, default 512-2048-2048-2048-512, 10 M weights: each layer reads its weights once
per call, whatever the rows) with its batch axis symbolic. `prepare` compiles it for 2 cores with
``batch`` free in 1..8, and static at batch 1. `measure` runs every setup once per round, in turn
(A B C ... A B C ...), each a closed loop of ``--clients`` clients sending batch-1 requests; then
`bound` shows, per corepipe setup, the rows each engine call took and each stage's busy time
per request (what batching saves).

    flock /tmp/corepipe-bench.lock python benchmarks/stage_batch.py prepare /tmp/sb
    flock /tmp/corepipe-bench.lock python benchmarks/stage_batch.py measure /tmp/sb --markdown out.md
"""

from __future__ import annotations

import argparse
import collections
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


def wide_mlp(out: Path, widths: list[int]) -> tuple[Path, dict[str, Any]]:
    """The zoo MLP at ``widths`` with its batch axis symbolic, and its example request."""
    import onnx

    from corepipe import zoo

    model, feeds = zoo.get("mlp", widths=widths)
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    path = out / "mlp_batch.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path, feeds


def prepare(out: Path, widths: list[int], engine: str, max_batch: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path, feeds = wide_mlp(out, widths)
    ts.save_feeds(out / "feeds.npz", feeds)
    made: dict[str, Any] = {"widths": widths, "engine": engine, "max_batch": max_batch}
    t0 = time.perf_counter()
    cm = corepipe.compile(path, out / "dyn", num_cores=2, example_inputs=feeds, engine=engine,
                          dynamic_dims={"batch": (1, max_batch)}, buckets=None)
    made["dyn"] = {**ts.compiled(cm, time.perf_counter() - t0), "engines": [s.engine for s in cm.stages]}
    cs = corepipe.compile(path, out / "static", num_cores=2, example_inputs=feeds, engine=engine)
    made["static_engines"] = [s.engine for s in cs.stages]
    (out / "prepared.json").write_text(json.dumps(made, indent=1))
    print(made, flush=True)


def _setups(out: Path, top: int) -> dict[str, tuple[Path, dict[str, Any]]]:
    dyn, static = out / "dyn", out / "static"
    return {f"corepipe, stage_batch {top}": (dyn, {"stage_batch": top}),
            "corepipe without batching (batch dim free)": (dyn, {}),
            "corepipe without batching (static batch 1)": (static, {}),
            f"corepipe, max_batch {top} (client-side, delay 0)": (dyn, {"max_batch": top, "batch_delay": 0.0}),
            f"corepipe, max_batch {top} and stage_batch {top}": (dyn, {"max_batch": top, "batch_delay": 0.0,
                                                                       "stage_batch": top})}


def bound(art: Path, feeds: dict, cores: list[int], clients: int, count: int, **options: Any) -> dict[str, Any]:
    """One closed loop of ``clients``: rows per engine call and busy ms per request, per stage."""
    with corepipe.load(art, cores=cores, **options) as pipe:
        pending: collections.deque = collections.deque(pipe.submit(feeds) for _ in range(2 * clients))
        while pending:
            pending.popleft().result()
        before = pipe.stats()
        t0, sent = time.perf_counter(), 0
        while sent < count or pending:
            while sent < count and len(pending) < clients:
                pending.append(pipe.submit(feeds))
                sent += 1
            pending.popleft().result()
        wall = time.perf_counter() - t0
        after = pipe.stats()
        merged = float(getattr(pipe, "mean_batch", 1.0) or 1.0)
    calls = [b.runs - a.runs for a, b in zip(before.stages, after.stages)]
    reqs = [b.requests - a.requests for a, b in zip(before.stages, after.stages)]
    return {"req/s": round(count / wall, 1), "client merge": round(merged, 2),
            "requests per engine call": [round(r / c, 2) if c else 0 for r, c in zip(reqs, calls)],
            "busy ms per request": [round(1e3 * (b.busy_s - a.busy_s) / count, 3) for a, b in zip(before.stages, after.stages)],
            "busy %": [round(100 * (b.busy_s - a.busy_s) / wall, 1) for a, b in zip(before.stages, after.stages)]}


def measure(out: Path, requests: int, count: int, clients: int, markdown: Path | None) -> None:
    import onnx

    made = json.loads((out / "prepared.json").read_text())
    top = int(made["max_batch"])
    path, feeds = out / "mlp_batch.onnx", ts.load_feeds(out / "feeds.npz")
    mixed = plan_mixed(onnx.load(str(path), load_external_data=False), None, top)
    traffic = Traffic(requests=requests, warmup=5, concurrency=clients)
    reqs = mixed.requests(feeds, traffic)
    inputs = out / "requests.npz"
    write_requests(inputs, reqs)
    cores = sorted(os.sched_getaffinity(0))[:2]
    ours = _setups(out, top)
    setups: dict[str, Any] = {
        name: (lambda art=art, opts=opts, name=name: measure_pipeline(
            art, reqs, traffic, "local", {"cores": cores, **opts}, stages=ts.stage_engines(art), setup=name)[0])
        for name, (art, opts) in ours.items()}
    ov_names = []
    for peer in peer_setups(2, "fp32", strong=True, ov_batches=batch_sizes(top), in_flight=clients):
        if peer.mode == "ov_throughput":
            ov_names.append(peer.setup)
            setups[peer.setup] = (lambda p=peer: measure_peer(p, path, inputs, cores, requests, 5,
                                                              ranges=mixed.ov_ranges(feeds, p.batch)))
    measured = ts.rounds(setups, count)
    names = list(ours)
    bounds = {name: bound(art, feeds, cores, clients, requests, **opts) for name, (art, opts) in ours.items()}
    for name, b in bounds.items():
        print(name, b, flush=True)
    how = (f"2 cores, shared with other sessions' tests; MLP {made['widths']} (zoo, random weights) fp32, stages on "
           f"{made['dyn']['engines']}, batch dim free 1..{top}; closed loop of {clients} clients sending batch-1 "
           f"requests, {requests} timed per setup, {count} rounds taken in turns; p50/p99: each request's")
    targets: list[tuple[str, str, Any, float]] = [
        (f"{names[0]} over {names[1]}", names[0], names[1], 1.05),
        (f"{names[0]} over {names[2]}", names[0], names[2], 1.05),
        (f"{names[3]} over {names[1]}", names[3], names[1], 1.05),
        (f"{names[4]} over {names[1]}", names[4], names[1], 1.05),
        (f"{names[0]} over the best of OpenVINO THROUGHPUT at batch {', '.join(map(str, batch_sizes(top)))}",
         names[0], ov_names, 1.0),
    ]
    notes = ["| corepipe setup (one more closed loop) | req/s | client merge | requests per engine call | "
             "busy ms per request | busy % |", "|---|---:|---:|---|---|---|"]
    notes += [f"| {n} | {b['req/s']} | {b['client merge']} | {b['requests per engine call']} | "
              f"{b['busy ms per request']} | {b['busy %']} |" for n, b in bounds.items()]
    text = ts.markdown(f"Stage batching: wide MLP fp32, {clients} clients, 2 cores",
                       f"python benchmarks/stage_batch.py measure DIR --requests {requests} --rounds {count} "
                       f"--clients {clients}", how, measured, targets, notes)
    print(text)
    if markdown is not None:
        with open(markdown, "a") as f:
            f.write(text + "\n")
    ts.dump(out / "measured.json", measured, {"prepared": made, "bounds": bounds})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--widths", default="512,2048,2048,2048,512")
    p.add_argument("--engine", default="auto")
    p.add_argument("--max-batch", type=int, default=8)
    m = sub.add_parser("measure")
    m.add_argument("dir", type=Path)
    m.add_argument("--requests", type=int, default=300)
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--clients", type=int, default=16)
    m.add_argument("--markdown", type=Path)
    a = ap.parse_args()
    if a.step == "prepare":
        prepare(a.dir, [int(w) for w in a.widths.split(",")], a.engine, a.max_batch)
    else:
        measure(a.dir, a.requests, a.rounds, a.clients, a.markdown)


if __name__ == "__main__":
    main()
