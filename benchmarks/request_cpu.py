"""Where one request's CPU goes: the client, each worker outside its engine, the engine, and the
peers on the same request, measured in one run (issue 16, part 2).

For each deployment asked (``RxSxT``: replicas x stages x threads per stage) the pipeline streams
``--requests`` requests in a closed loop with ``--window`` in flight (default R x S, as `corepipe
tune` measures; ``+1`` keeps one request queued per replica), after a warm-up. Instruments:

- every thread's CPU time, read from the kernel (psutil) before and after the timed requests: the
  client's threads (the caller, and the service thread; a tree before issue 27 also had a
  feeder, a collector and a monitor), and each worker process (its main thread and the
  engine's threads);
- the per-phase counters of `corepipe.runtime.phases` (``COREPIPE_PHASES``): wall and CPU of each
  phase of the worker loop (wait, header, bind, engine, after, publish) and of the client
  (submit, feed, collect), over the pipeline's whole life (warm-up included);
- the peers (OpenVINO THROUGHPUT and LATENCY, onnxruntime one session shared by K threads, K
  sessions) in their own processes on the same cores and inputs, with the CPU each used over its
  timed requests (`corepipe.bench.proc`).

    python benchmarks/request_cpu.py --model resnet50 --precision bf16 --shapes 1x2x1 2x1x1 --markdown out.md

``--summary LABEL=RUN.json ...`` (runs written with ``--json``) prints the breakdown table of
benchmarks/RESULTS.md, one row per pipeline run, every figure per request.

`benchmarks/hot_path.py` runs `run_pipeline` for two trees alternating (one's hot path against
another's), with a tiny model's round trip and the eventfd floor.

``--work DIR`` keeps the compiled artifacts between runs (compile under cp-test, then measure
under cp-bench with the same DIR).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe, not an installed one
import corepipe
from corepipe.bench.peers import run_parallel, run_serial
from corepipe.bench.traffic import resolve_model
from corepipe.runtime.phases import ENV

try:
    from corepipe.compiler.cut.loadbalance import CpuWatch
except ImportError:  # a tree before the compiler's rooms (hot_path.py --trees runs old checkouts too)
    from corepipe.compiler.loadbalance import CpuWatch  # type: ignore[no-redef]

Shape = tuple[int, int, int]


def parse_shape(text: str) -> Shape:
    r, s, t = (int(x) for x in text.lower().replace("r", "").replace("s", "").replace("t", "").split("x"))
    return r, s, t


def window_for(text: str, shape: Shape) -> int:
    r, s, _ = shape
    if text.startswith("+"):
        return r * s + int(text[1:]) * r
    return int(text) or r * s


def compile_for(path: Path, feeds: Mapping[str, np.ndarray], work: Path, stages: int, precision: str,
                balance: str) -> Path:
    out = work / f"art_{precision}_{stages}s_{balance}"
    if (out / "manifest.json").exists():
        return out
    corepipe.compile(path, out, num_cores=stages, example_inputs=dict(feeds), precision=precision, engine="auto",
                     balance=balance if stages > 1 else "estimate")
    return out


def _thread_cpu(proc: psutil.Process) -> dict[int, float]:
    """Seconds on a CPU of each thread of ``proc``, from the scheduler (nanoseconds; psutil's
    thread times come in 10 ms ticks)."""
    out = {}
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError):
            pass
    return out


def _proc_cpu(pid: int) -> float:
    return sum(_thread_cpu(psutil.Process(pid)).values())


def run_pipeline(art: Path, feeds: Mapping[str, np.ndarray], shape: Shape, cores: Sequence[int], requests: int,
                 window: int, warmup: int, phases: bool = True) -> dict[str, Any]:
    """Stream ``requests`` through the artifact as ``shape``; every figure per request."""
    r, s, t = shape
    with tempfile.TemporaryDirectory(prefix="corepipe-phases-") as phases_dir:
        if phases:
            os.environ[ENV] = phases_dir
        try:
            pipe = corepipe.load(art, replicas=r, threads_per_stage=t, cores=list(cores), max_in_flight=window)
        finally:
            os.environ.pop(ENV, None)
        me = psutil.Process()
        with pipe:
            pids = list(pipe.worker_pids())  # type: ignore[attr-defined]
            pending: collections.deque[Future[Any]] = collections.deque()
            for _ in range(warmup):
                while len(pending) >= window:
                    pending.popleft().result()
                pending.append(pipe.submit(feeds))
            while pending:
                pending.popleft().result()
            names = {th.native_id: th.name for th in threading.enumerate()}
            before = pipe.stats()
            c0, w0 = _thread_cpu(me), {pid: _proc_cpu(pid) for pid in pids}
            wt0 = {pid: _thread_cpu(psutil.Process(pid)) for pid in pids}
            watch = CpuWatch()
            t0 = time.perf_counter()
            for _ in range(requests):
                while len(pending) >= window:
                    pending.popleft().result()
                pending.append(pipe.submit(feeds))
            while pending:
                pending.popleft().result()
            elapsed = time.perf_counter() - t0
            c1, w1 = _thread_cpu(me), {pid: _proc_cpu(pid) for pid in pids}
            wt1 = {pid: _thread_cpu(psutil.Process(pid)) for pid in pids}
            after = pipe.stats()
            foreign = watch.foreign_share()
        files = [json.loads(p.read_text()) for p in sorted(Path(phases_dir).glob("*.json"))]
    client_threads: dict[str, float] = collections.defaultdict(float)
    for tid, cpu in c1.items():
        name = names.get(tid, "other")
        if name.startswith("corepipe-spawner") or name.startswith("ThreadPoolExecutor"):
            name = "spawner"
        client_threads[name] += (cpu - c0.get(tid, 0.0)) / requests
    workers = []
    for i, pid in enumerate(pids):
        main = (wt1[pid].get(pid, 0.0) - wt0[pid].get(pid, 0.0)) / requests
        workers.append({"pid": pid, "cpu_s": (w1[pid] - w0[pid]) / requests, "main_thread_cpu_s": main,
                        "stage": i % s, "replica": i // s})
    busy = {}
    for a, b in zip(before.stages, after.stages):
        n = b.requests - a.requests
        busy[(b.replica, b.index)] = (b.busy_s - a.busy_s) / n if n else 0.0
    return {"shape": shape, "window": window, "requests": requests, "elapsed_s": elapsed,
            "req_per_s": requests / elapsed, "client_threads_cpu_s": dict(client_threads),
            "client_cpu_s": sum(client_threads.values()), "workers": workers,
            "busy_s": {f"r{k[0]}s{k[1]}": v for k, v in busy.items()}, "phases": files, "foreign_cpu": foreign}


def run_peers(path: Path, inputs: Path, cores: Sequence[int], precision: str, requests: int,
              thp: bool = False, as_exported: Path | None = None) -> list[dict[str, Any]]:
    """The peers, each in its own process: OpenVINO THROUGHPUT with one request per stream and
    with one more waiting per stream, LATENCY with 1 and 2 in flight, onnxruntime shared by K
    threads and K sessions; ``thp``: the OpenVINO ones again with huge pages for their heap;
    ``as_exported``: OpenVINO THROUGHPUT again on that file (the model with its dynamic dims,
    where ``path`` has them fixed at the request's shapes)."""
    k = len(cores)
    setups = [(f"openvino THROUGHPUT ({k} streams, {k} in flight)", "ov_throughput", k, precision, k, ""),
              (f"openvino THROUGHPUT ({k} streams, {2 * k} in flight)", "ov_throughput", k, precision, 2 * k, ""),
              (f"openvino LATENCY ({k} threads, 1 in flight)", "ov_latency", k, precision, 1, ""),
              (f"openvino LATENCY ({k} threads, 2 in flight)", "ov_latency", k, precision, 2, ""),
              (f"ort 1 session shared by {k} threads", "shared", k, "fp32", k, "")]
    if thp:
        setups += [(f"openvino THROUGHPUT ({k} streams, {2 * k} in flight), huge pages", "ov_throughput", k,
                    precision, 2 * k, "glibc.malloc.hugetlb=1")]
    out = []
    if as_exported is not None:
        r = run_serial(as_exported, inputs, k, requests, 3, cores, mode="ov_throughput", precision=precision)
        out.append({"setup": f"openvino THROUGHPUT ({k} streams), the model as exported (dynamic dims)",
                    "precision": precision, "req_per_s": r["requests"] / r["elapsed_s"],
                    "cpu_s": r["cpu_s"] / r["requests"], "p50_s": r["latency_p50_s"]})
    for label, mode, threads, prec, in_flight, tunables in setups:
        old = os.environ.get("GLIBC_TUNABLES")
        if tunables:
            os.environ["GLIBC_TUNABLES"] = tunables
        try:
            r = run_serial(path, inputs, threads, requests, 3, cores, mode=mode, precision=prec, in_flight=in_flight)
        finally:
            if tunables:
                if old is None:
                    os.environ.pop("GLIBC_TUNABLES", None)
                else:
                    os.environ["GLIBC_TUNABLES"] = old
        out.append({"setup": label, "precision": prec, "req_per_s": r["requests"] / r["elapsed_s"],
                    "cpu_s": r["cpu_s"] / r["requests"], "p50_s": r["latency_p50_s"]})
    rate, results = run_parallel(path, inputs, requests, 3, cores)
    out.append({"setup": f"{k} ort sessions in parallel", "precision": "fp32", "req_per_s": rate,
                "cpu_s": sum(x["cpu_s"] for x in results) / sum(x["requests"] for x in results),
                "p50_s": float(np.median([x["latency_p50_s"] for x in results]))})
    return out


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def _phase_rows(files: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for f in sorted(files, key=lambda f: f["role"]):
        for name, p in f["phases"].items():
            n = p["count"] or 1
            rows.append(f"| {f['role']} (pid {f['pid']}) | {name} | {p['count']} | {_us(p['wall_ns'] / n / 1e9)} | "
                        f"{_us(p['cpu_ns'] / n / 1e9)} | "
                        f"{_us(p['process_cpu_ns'] / n / 1e9) if 'process_cpu_ns' in p else '-'} |")
    return rows


def markdown(model: str, precision: str, runs: Sequence[Mapping[str, Any]], peers: Sequence[Mapping[str, Any]],
             command: str) -> str:
    lines = [f"#### {model}, {precision}, 2 cores: CPU per request", "", f"`{command}`", "",
             "| setup | req/s | wall per request µs (1 / req/s) | CPU per request µs, all processes | "
             "client CPU µs (threads) | workers' CPU µs (main thread; engine threads) | stages' busy ms | others' CPU |",
             "|---|---:|---:|---:|---|---|---|---:|"]
    for p in peers:
        lines.append(f"| {p['setup']} ({p['precision']}) | {p['req_per_s']:.2f} | {_us(1 / p['req_per_s'])} | "
                     f"{_us(p['cpu_s'])} | - | - | - | - |")
    for run in runs:
        r, s, t = run["shape"]
        threads = ", ".join(f"{k} {_us(v)}" for k, v in sorted(run["client_threads_cpu_s"].items()) if v > 0)
        total = run["client_cpu_s"] + sum(w["cpu_s"] for w in run["workers"])
        workers = "; ".join(f"r{w['replica']}s{w['stage']} {_us(w['cpu_s'])} ({_us(w['main_thread_cpu_s'])}; "
                            f"{_us(w['cpu_s'] - w['main_thread_cpu_s'])})" for w in run["workers"])
        busy = " / ".join(f"{v * 1e3:.2f}" for v in run["busy_s"].values())
        thp = ", huge pages" if run.get("huge_pages") else ""
        lines.append(f"| corepipe {r}r x {s}s x {t}t, window {run['window']}{thp} | {run['req_per_s']:.2f} | "
                     f"{_us(1 / run['req_per_s'])} | {_us(total)} | {_us(run['client_cpu_s'])} ({threads}) | "
                     f"{workers} | {busy} | {run['foreign_cpu']:.0%} |")
    for run in runs:
        r, s, t = run["shape"]
        thp = ", huge pages" if run.get("huge_pages") else ""
        lines += ["", f"Phases of corepipe {r}r x {s}s x {t}t, window {run['window']}{thp} (means over the pipeline's life, "
                  "warm-up included):", "",
                  "| process | phase | count | wall µs | thread CPU µs | process CPU µs |", "|---|---|---:|---:|---:|---:|"]
        lines += _phase_rows(run["phases"])
    return "\n".join(lines) + "\n"


def _per_call(files: Sequence[Mapping[str, Any]], role: str, phase: str, key: str = "cpu_ns") -> float:
    """Mean µs per call of ``phase`` over every file of ``role`` (replicas: several)."""
    got = [f["phases"][phase] for f in files if f["role"] == role and phase in f["phases"]]
    n = sum(p["count"] for p in got)
    return sum(p[key] for p in got) / n / 1e3 if n else 0.0


def summary(labelled: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One row per pipeline run (huge pages off) of each ``(label, request_cpu --json)``: the
    breakdown of one request's CPU, in µs, against the OpenVINO THROUGHPUT peer's."""
    lines = ["| model, precision | plan | req/s | x OV THROUGHPUT | client: submit / copy in / completion | "
             "client threads in all | each worker outside the engine: wait / header / bind / after + publish | "
             "engine CPU per request, each stage (preempted) | CPU per request, all processes | "
             "OV THROUGHPUT's CPU per request |",
             "|---|---|---:|---:|---|---:|---|---|---:|---:|"]
    for label, data in labelled:
        ovt = [p for p in data["peers"] if p["setup"].startswith("openvino THROUGHPUT") and "exported" not in p["setup"]
               and "huge" not in p["setup"]]
        best_ovt = max(ovt, key=lambda p: p["req_per_s"])
        for run in data["runs"]:
            if run.get("huge_pages"):
                continue
            r, st, t = run["shape"]
            files = run["phases"]
            client = " / ".join(f"{_per_call(files, 'client', ph):,.0f}" for ph in ("submit", "feed", "collect"))
            stages = sorted({f["role"] for f in files if f["role"] != "client"})
            outside = "; ".join(
                f"s{x[5:]}: " + " / ".join(f"{_per_call(files, x, ph):,.0f}" for ph in ("wait", "header", "bind"))
                + f" / {_per_call(files, x, 'after') + _per_call(files, x, 'publish'):,.0f}" for x in stages)
            engine = "; ".join(f"s{x[5:]}: {_per_call(files, x, 'engine') / 1e3:,.2f} ms "
                               f"({(_per_call(files, x, 'engine', 'wall_ns') - _per_call(files, x, 'engine')) / 1e3:,.2f})"
                               for x in stages)
            total = run["client_cpu_s"] + sum(w["cpu_s"] for w in run["workers"])
            lines.append(f"| {label} | {r}r x {st}s x {t}t | {run['req_per_s']:.2f} | "
                         f"{run['req_per_s'] / best_ovt['req_per_s']:.3f} | {client} | {_us(run['client_cpu_s'])} | "
                         f"{outside} | {engine} | {_us(total)} | {_us(best_ovt['cpu_s'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    if argv and argv[0] == "--summary":  # --summary LABEL=FILE.json ...: the breakdown table
        print(summary([(a.split("=", 1)[0], json.loads(Path(a.split("=", 1)[1]).read_text())) for a in argv[1:]]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="zoo model name, or an .onnx path")
    ap.add_argument("--inputs", type=Path, help="an .npz of the request (an .onnx path's own; default: random)")
    ap.add_argument("--peer-model", type=Path,
                    help="the peers run this file (the model with static dims); the model itself too, once")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", default=["1x2x1"], help="deployments RxSxT (R x S x T = cores)")
    ap.add_argument("--window", nargs="+", default=["0"],
                    help="requests in flight for each shape: N, 0 for R x S, +N for R x S + N x R "
                         "(N queued per replica); several: each measured")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--balance", default="measure")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-phases", action="store_true", help="leave the per-phase counters off")
    ap.add_argument("--thp-peer", action="store_true", help="also OpenVINO THROUGHPUT with huge pages")
    ap.add_argument("--thp", action="store_true", help="workers with huge pages (COREPIPE_HUGEPAGES=1)")
    ap.add_argument("--thp-ab", action="store_true", help="each pipeline run without and with huge pages")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--work", type=Path, help="keep compiled artifacts here")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    use = sorted(os.sched_getaffinity(0))[: args.cores]
    with tempfile.TemporaryDirectory(prefix="corepipe-cpu-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = args.model if args.model.endswith(".onnx") else f"zoo:{args.model}"
        (work / "model").mkdir(exist_ok=True)
        path, zoo_feeds = resolve_model(source, work / "model")
        if args.inputs is not None:
            with np.load(args.inputs) as npz:
                zoo_feeds = {k: npz[k] for k in npz.files}
        if zoo_feeds is None:
            from corepipe.bench.traffic import example_feeds
            from corepipe.compiler.model.graph import analyze

            zoo_feeds = example_feeds(analyze(path).inputs)
        inputs = work / "inputs.npz"
        np.savez(inputs, **zoo_feeds)  # type: ignore[arg-type]
        shapes = [parse_shape(x) for x in args.shapes]
        arts = {s: compile_for(path, zoo_feeds, work, s, args.precision, args.balance) for s in {sh[1] for sh in shapes}}
        if args.compile_only:
            return
        if args.thp:
            os.environ["COREPIPE_HUGEPAGES"] = "1"
        peers = [] if args.no_peers else run_peers(args.peer_model or path, inputs, use, args.precision, args.requests,
                                                   args.thp_peer, path if args.peer_model else None)
        runs = []
        for sh in shapes:
            for w in args.window:
                for thp in (("0", "1") if args.thp_ab else (os.environ.get("COREPIPE_HUGEPAGES", "0"),)):
                    os.environ["COREPIPE_HUGEPAGES"] = thp
                    run = run_pipeline(arts[sh[1]], zoo_feeds, sh, use, args.requests, window_for(w, sh),
                                       args.warmup, not args.no_phases)
                    run["huge_pages"] = thp == "1"
                    runs.append(run)
    command = "python benchmarks/request_cpu.py " + " ".join(argv)
    text = markdown(args.model, args.precision, runs, peers, command)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "peers": peers}, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
