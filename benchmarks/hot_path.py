"""The hot path, tree against tree (issue 27): one request's CPU outside the engines, the
hand-off, and throughput, for the ``local`` backend of two corepipe checkouts, alternating in one
run (A B A B ...), with OpenVINO THROUGHPUT (2 streams) in the same rounds.

    flock /tmp/corepipe-bench.lock python benchmarks/hot_path.py --model tiny --trees /work/main . \\
        --rounds 3 --json tiny.json
    flock /tmp/corepipe-bench.lock python benchmarks/hot_path.py --model resnet50 --trees /work/main . \\
        --rounds 2 --requests 100 --peer --phases --json resnet.json
    python benchmarks/hot_path.py --floor        # a bare eventfd ping-pong between two processes

Each tree runs in its own process (``--child``), which imports that tree's corepipe first and
then reuses `request_cpu.run_pipeline` (which measures every thread from the kernel). Per tree
and round:

- ``rtt_us``: a request's round trip with one in flight (`Pipeline.run` in a loop), median;
  ``rtt_client_cpu_us``: the client's CPU per request meanwhile;
- streaming with ``--window`` in flight (default: the pipeline's own bound, 2 x stages + 2):
  throughput, the client's CPU per request (every thread), each worker's CPU per request; with
  ``--phases`` also each worker's CPU outside its engine (its process CPU minus the engine
  phase's, from ``COREPIPE_PHASES``);

``--model tiny``: 4 x (MatMul 32x32 + Relu) at batch 1, cut in 2 stages (the engines take
microseconds, so what is measured is the runtime). ``--model resnet50|bert``: the zoo's, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def tiny_model(width: int = 32, layers: int = 4) -> Any:
    """x [1, width] -> (MatMul [width, width] -> Relu) x layers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def prepare(model: str, work: Path) -> tuple[Path, Path]:
    """The 2-stage artifact and the request (.npz), compiled once with this checkout."""
    sys.path.insert(0, str(HERE.parent))
    import corepipe
    from corepipe.bench.traffic import resolve_model

    art, inputs = work / f"art_{model}", work / f"{model}.npz"
    if model == "tiny":
        source: Any = tiny_model()
        feeds = {"x": np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)}
        path, _ = resolve_model(source, work)
    else:
        path, got = resolve_model(f"zoo:{model}", work)
        assert got is not None
        feeds = got
    if not (art / "manifest.json").exists():
        corepipe.compile(path, art, num_cores=2, example_inputs=feeds, precision="fp32", engine="auto")
    np.savez(inputs, **feeds)  # type: ignore[arg-type]
    return art, inputs


def child(tree: str, art: Path, inputs: Path, requests: int, rtt: int, window: int, phases: bool) -> dict[str, Any]:
    """Measure one tree (this process imports its corepipe first)."""
    sys.path.insert(0, tree)
    import corepipe  # this tree's, before request_cpu puts ours on the path

    sys.path.insert(1, str(HERE))
    import psutil
    from request_cpu import _thread_cpu, run_pipeline

    assert Path(corepipe.__file__).resolve().is_relative_to(Path(tree).resolve()), corepipe.__file__
    with np.load(inputs) as npz:
        feeds = {k: npz[k] for k in npz.files}
    cores = sorted(os.sched_getaffinity(0))[:2]
    out: dict[str, Any] = {"tree": tree}
    if rtt:
        with corepipe.load(art, cores=cores) as pipe:
            for _ in range(20):
                pipe.run(feeds)
            me, times = psutil.Process(), []
            c0 = sum(_thread_cpu(me).values())
            for _ in range(rtt):
                t0 = time.perf_counter()
                pipe.run(feeds)
                times.append(time.perf_counter() - t0)
            out["rtt_client_cpu_us"] = (sum(_thread_cpu(me).values()) - c0) / rtt * 1e6
            # Each hand-off with one in flight, from the requests' timestamps (one clock for every
            # process): client -> stage 0 (written to entered), stage 0 -> 1, stage 1 -> client
            # (published to collected), medians in µs.
            traces = [t for t in pipe.timeline(last=rtt).requests if len(t.stages) == 2]
            out["handoff_us"] = [statistics.median(x) * 1e6 for x in (
                [t.stages[0][0] - t.fed for t in traces], [t.stages[1][0] - t.stages[0][1] for t in traces],
                [t.completed - t.stages[1][1] for t in traces])]
        out["rtt_us"] = statistics.median(times) * 1e6
        out["rtt_p90_us"] = float(np.percentile(times, 90)) * 1e6
    run = run_pipeline(art, feeds, (1, 2, 1), cores, requests, window or 6, 20, phases)
    out["req_per_s"] = run["req_per_s"]
    out["client_cpu_us"] = run["client_cpu_s"] * 1e6
    out["client_threads_us"] = {k: v * 1e6 for k, v in run["client_threads_cpu_s"].items() if v > 0}
    out["worker_cpu_us"] = [w["cpu_s"] * 1e6 for w in run["workers"]]
    out["foreign_cpu"] = run["foreign_cpu"]
    if phases:  # the engine phase's process CPU over the pipeline's life, per request
        engine = {}
        for f in run["phases"]:
            if f["role"].startswith("stage"):
                p = f["phases"]["engine"]
                engine[f["role"]] = p["process_cpu_ns"] / max(p["count"], 1) / 1e3
        out["engine_cpu_us"] = [engine.get(f"stage{k}", 0.0) for k in range(2)]
        out["outside_engine_us"] = [w - e for w, e in zip(out["worker_cpu_us"], out["engine_cpu_us"])]
    return out


def peer(inputs: Path, model_path: Path, requests: int) -> dict[str, Any]:
    """OpenVINO THROUGHPUT, 2 streams, 2 and 4 in flight, on the same 2 cores."""
    sys.path.insert(0, str(HERE.parent))
    from corepipe.bench.peers import run_serial

    cores = sorted(os.sched_getaffinity(0))[:2]
    out = {}
    for in_flight in (2, 4):
        r = run_serial(model_path, inputs, 2, requests, 3, cores, mode="ov_throughput", precision="fp32",
                       in_flight=in_flight)
        out[f"ov_throughput_{in_flight}_req_per_s"] = r["requests"] / r["elapsed_s"]
        out[f"ov_throughput_{in_flight}_cpu_us"] = r["cpu_s"] / r["requests"] * 1e6
    return out


def floor(rounds: int = 20000) -> dict[str, float]:
    """A bare eventfd ping-pong between two processes: what one Python hand-off costs at least
    (wake-up, syscalls, the interpreter), with nothing of corepipe in it."""
    a, b = os.eventfd(0), os.eventfd(0)
    pid = os.fork()
    if pid == 0:
        for _ in range(rounds):
            select.select([a], [], [])
            os.eventfd_read(a)
            os.eventfd_write(b, 1)
        os._exit(0)
    c0, t0 = time.thread_time(), time.perf_counter()
    for _ in range(rounds):
        os.eventfd_write(a, 1)
        select.select([b], [], [])
        os.eventfd_read(b)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    os.waitpid(pid, 0)
    return {"round_trip_us": wall / rounds * 1e6, "one_way_us": wall / rounds / 2 * 1e6,
            "cpu_per_round_trip_us_one_side": cpu / rounds * 1e6}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--trees", nargs="+", default=["/work/main", str(HERE.parent)],
                    help="checkouts to compare, each PATH or PATH:NAME=VALUE,... (its run's environment)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rtt", type=int, default=-1, help="round trips timed (default: 2000 tiny, 0 otherwise)")
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--phases", action="store_true")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--floor", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("TREE", "ART", "INPUTS"))
    args = ap.parse_args(argv)
    rtt = args.rtt if args.rtt >= 0 else (2000 if args.model == "tiny" else 0)
    if args.floor:
        print(json.dumps(floor()))
        return
    if args.child:
        tree, art, inputs = args.child
        print(json.dumps(child(tree, Path(art), Path(inputs), args.requests, rtt, args.window, args.phases)))
        return
    with tempfile.TemporaryDirectory(prefix="corepipe-hot-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        art, inputs = prepare(args.model, work)
        results: list[dict[str, Any]] = []
        for r in range(args.rounds):
            for spec in args.trees:  # PATH, or PATH:NAME=VALUE,... (an environment for that run)
                tree, _, extra = spec.partition(":")
                cmd = [sys.executable, __file__, "--child", str(Path(tree).resolve()), str(art), str(inputs),
                       "--requests", str(args.requests), "--rtt", str(rtt), "--window", str(args.window)]
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                env.update(kv.split("=", 1) for kv in extra.split(",") if kv)
                done = subprocess.run(cmd + (["--phases"] if args.phases else []), capture_output=True, text=True,
                                      env=env, check=False)
                if done.returncode:
                    raise SystemExit(f"child for {tree} failed: {done.stderr[-3000:]}")
                got = json.loads(done.stdout.strip().splitlines()[-1]) | {"round": r, "env": extra}
                print(json.dumps(got), flush=True)
                results.append(got)
            if args.peer:
                model_path = next(work.glob(f"{args.model}.onnx"))
                got = peer(inputs, model_path, args.requests) | {"round": r, "tree": "peer"}
                print(json.dumps(got), flush=True)
                results.append(got)
        if args.json:
            args.json.write_text(json.dumps({"model": args.model, "results": results, "floor": floor()}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
