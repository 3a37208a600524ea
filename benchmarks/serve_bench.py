"""`corepipe serve` under perf_analyzer (gRPC and HTTP) against the same artifact run in-process.

Compiles MODEL for K cores (K stages), then, one after the other on the same artifact:

- in-process, as `corepipe run` streams: throughput with the pipeline's window full
  (``Pipeline.map``), and p50 latency with one request in flight (``Pipeline.run`` in a loop);
- the server: ``corepipe serve`` in its own process, driven by perf_analyzer over gRPC and HTTP at
  concurrency 1 (p50 latency) and at the pipeline's window (throughput).

Reports the ratios (server / in-process throughput; server p50 - in-process p50 at concurrency
1), and what the requests cost outside the pipeline: CPU seconds per request of perf_analyzer
and of the server's own process (event loop, protocol, pipeline client threads), which on a
2-core machine compete with the two stage workers for the same cores.

    python benchmarks/serve_bench.py --model zoo:resnet50 --cores 2 --markdown benchmarks/RESULTS.md

perf_analyzer: $COREPIPE_PERF_ANALYZER, or PATH, or /tmp/pa (see shared/notes/perf_analyzer.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import corepipe
from corepipe.bench.traffic import resolve_model
from corepipe.runtime.process import module_command


def find_perf_analyzer() -> tuple[str, dict[str, str]]:
    for cand in (os.environ.get("COREPIPE_PERF_ANALYZER"), shutil.which("perf_analyzer"), "/tmp/pa/bin/perf_analyzer"):
        if cand and os.access(cand, os.X_OK):
            env = dict(os.environ)
            libs = sorted({str(p.parent) for p in Path(cand).resolve().parents[1].rglob("libcudart.so.12")})
            env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")]).strip(":")
            return cand, env
    sys.exit("perf_analyzer not found: install it as shared/notes/perf_analyzer.md says")


def in_process(path: Path, feeds: dict[str, np.ndarray], requests: int, latency_runs: int) -> dict[str, float]:
    """What `corepipe run` measures, on zero inputs (perf_analyzer sends zeros too)."""
    me = psutil.Process()
    with corepipe.load(path) as pipe:
        fill = 2 * pipe.max_in_flight
        start, cpu0 = time.perf_counter(), 0.0
        for i, _ in enumerate(pipe.map(feeds for _ in range(fill + requests))):
            if i == fill - 1:
                start, cpu0 = time.perf_counter(), sum(me.cpu_times()[:2])
        rate = requests / (time.perf_counter() - start)
        client_cpu = (sum(me.cpu_times()[:2]) - cpu0) / requests
        for _ in range(3):
            pipe.run(feeds)
        lat = []
        for _ in range(latency_runs):
            t0 = time.perf_counter()
            pipe.run(feeds)
            lat.append(time.perf_counter() - t0)
        window = pipe.max_in_flight
    return {"throughput": rate, "p50_ms": float(np.median(lat)) * 1e3, "window": window,
            "client_cpu_ms_per_req": 1e3 * client_cpu}


def start_server(path: Path) -> tuple[subprocess.Popen[str], str, str]:
    argv, env = module_command("corepipe", "serve", str(path), "--http-port", "0", "--grpc-port", "0")
    proc = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    http = grpc = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    seen = []
    while not grpc and time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if not line:
            raise RuntimeError("server exited before it was ready:\n" + "".join(seen))
        if m := re.search(r"HTTP\s+http://([\d.]+:\d+)", line):
            http = m.group(1)
        if m := re.search(r"gRPC\s+([\d.]+:\d+)", line):
            grpc = m.group(1)
    return proc, http, grpc


def _served(http: str, name: str) -> int:
    with urllib.request.urlopen(f"http://{http}/v2/models/{name}/stats", timeout=30) as r:
        return int(json.load(r)["model_stats"][0]["inference_stats"]["success"]["count"])


def perf(binary: str, env: dict[str, str], name: str, url: str, proto: str, concurrency: int,
         interval_ms: int, server_pid: int, http: str, workdir: Path) -> dict[str, Any]:
    """One perf_analyzer run; CPU per request of perf_analyzer and of the server's own process."""
    out = workdir / f"pa_{proto}_{concurrency}.csv"
    cmd = [binary, "-m", name, "-u", url, "-i", proto, "--concurrency-range", f"{concurrency}:{concurrency}",
           "--input-data", "zero", "--measurement-interval", str(interval_ms), "--max-trials", "10",
           "--stability-percentage", "20", "-f", str(out)]
    server = psutil.Process(server_pid)
    cpu0, n0 = sum(server.cpu_times()[:2]), _served(http, name)
    ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=580)
    ru1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    served = _served(http, name) - n0
    cpu_server = sum(server.cpu_times()[:2]) - cpu0
    if res.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed:\n{res.stdout}{res.stderr}")
    with open(out) as f:
        row = next(csv.DictReader(f))
    pa_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
        "server_queue_ms": float(row["Server Queue"]) / 1e3,
        "server_compute_ms": float(row["Server Compute Infer"]) / 1e3,
        "served": served,
        "server_cpu_ms_per_req": 1e3 * cpu_server / max(1, served),
        "server_cpu_pct": 100 * cpu_server / wall,
        "perf_analyzer_cpu_pct": 100 * pa_cpu / wall,
        "perf_analyzer_cpu_ms_per_req": 1e3 * pa_cpu / max(1, served),
        "command": "perf_analyzer " + " ".join(cmd[1:-2]),
    }


def paired(path: Path, name: str, feeds: dict[str, np.ndarray], http: str, grpc: str, rounds: int) -> dict[str, Any]:
    """One request at a time, taking turns: in-process `Pipeline.run`, then the server through
    tritonclient gRPC, then HTTP (binary tensors), ``rounds`` times. The machine's drift hits all
    three alike, so the per-round differences isolate what the server adds at concurrency 1."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    g, h = grpcclient.InferenceServerClient(grpc), httpclient.InferenceServerClient(http)
    gin, hin = [], []
    for n, a in feeds.items():
        dt = {"float32": "FP32", "int64": "INT64"}[str(a.dtype)]
        gi, hi = grpcclient.InferInput(n, list(a.shape), dt), httpclient.InferInput(n, list(a.shape), dt)
        gi.set_data_from_numpy(a)
        hi.set_data_from_numpy(a, binary_data=True)
        gin.append(gi)
        hin.append(hi)
    times: dict[str, list[float]] = {"in-process": [], "grpc": [], "http": []}
    with corepipe.load(path) as pipe:
        calls = {"in-process": lambda: pipe.run(feeds), "grpc": lambda: g.infer(name, gin),
                 "http": lambda: h.infer(name, hin)}
        for f in calls.values():  # warm-up
            f()
        for _ in range(rounds):
            for key, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - t0)
    base = np.array(times["in-process"])
    out: dict[str, Any] = {"rounds": rounds, "p50_ms": {k: float(np.median(v)) * 1e3 for k, v in times.items()}}
    out["overhead_ms"] = {k: float(np.median(np.array(times[k]) - base)) * 1e3 for k in ("grpc", "http")}
    return out


def paired_pa(binary: str, env: dict[str, str], path: Path, name: str, feeds: dict[str, np.ndarray],
              urls: dict[str, str], rounds: int, count: int, workdir: Path) -> dict[str, Any]:
    """perf_analyzer at concurrency 1 and in-process `Pipeline.run`, taking turns in short blocks of
    3 x ``count`` requests (perf_analyzer's three windows), ``rounds`` times: the median of the per-round p50 differences is what
    perf_analyzer's C++ client sees the server add, with the machine's drift cancelled out."""
    p50: dict[str, list[float]] = {"in-process": [], **{k: [] for k in urls}}
    with corepipe.load(path) as pipe:
        for _ in range(3):
            pipe.run(feeds)
        for r in range(rounds):
            lat = []
            for _ in range(3 * count):  # as many as perf_analyzer's three windows
                t0 = time.perf_counter()
                pipe.run(feeds)
                lat.append(time.perf_counter() - t0)
            p50["in-process"].append(float(np.median(lat)) * 1e3)
            for proto, url in urls.items():
                out = workdir / f"pa_pair_{proto}_{r}.csv"
                cmd = [binary, "-m", name, "-u", url, "-i", proto, "--concurrency-range", "1:1",
                       "--input-data", "zero", "--measurement-mode", "count_windows",
                       "--measurement-request-count", str(count), "--max-trials", "3",
                       "--stability-percentage", "999", "-f", str(out)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
                if res.returncode != 0:
                    raise RuntimeError(f"perf_analyzer failed:\n{res.stdout}{res.stderr}")
                with open(out) as f:
                    p50[proto].append(float(next(csv.DictReader(f))["p50 latency"]) / 1e3)
    base = np.array(p50["in-process"])
    return {"rounds": rounds, "count": count, "p50_ms": {k: float(np.median(v)) for k, v in p50.items()},
            "overhead_ms": {k: float(np.median(np.array(p50[k]) - base)) for k in urls}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="zoo:resnet50")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--requests", type=int, default=100, help="in-process streaming requests")
    p.add_argument("--latency-runs", type=int, default=40, help="in-process one-in-flight requests")
    p.add_argument("--interval-ms", type=int, default=5000, help="perf_analyzer measurement window")
    p.add_argument("--concurrency", default="1,window", help="perf_analyzer concurrencies ('window': the pipeline's)")
    p.add_argument("--balance", default="measure")
    p.add_argument("--paired", type=int, default=30, help="rounds of the paired latency comparison (0: skip)")
    p.add_argument("--paired-pa", type=int, default=5,
                   help="rounds of perf_analyzer (c=1) taking turns with in-process runs (0: skip)")
    p.add_argument("--paired-count", type=int, default=10, help="requests per perf_analyzer window in --paired-pa (3 windows a block)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    binary, env = find_perf_analyzer()
    with tempfile.TemporaryDirectory(prefix="corepipe-serve-bench-") as tmp:
        work = Path(tmp)
        src, zoo_feeds = resolve_model(args.model, work)
        name = args.model.removeprefix("zoo:") if args.model.startswith("zoo:") else Path(args.model).stem
        art = work / name
        cm = corepipe.compile(src, art, num_cores=args.cores, example_inputs=zoo_feeds, balance=args.balance)
        feeds = {s.name: np.zeros(s.shape, s.dtype) for s in cm.plan.inputs}
        local = in_process(art, feeds, args.requests, args.latency_runs)
        print(f"in-process: {local['throughput']:.2f} req/s, p50 {local['p50_ms']:.2f} ms", flush=True)
        concs = [int(local["window"]) if c == "window" else int(c) for c in args.concurrency.split(",") if c]
        server, http, grpc = start_server(art)
        rows: dict[str, dict[str, float]] = {}
        try:
            for proto, url in (("grpc", grpc), ("http", http)):
                for c in concs:
                    r = perf(binary, env, name, url, proto, c, args.interval_ms, server.pid, http, work)
                    rows[f"{proto} c={c}"] = r
                    print(f"{proto} concurrency {c}: {r['throughput']:.2f} req/s, p50 {r['p50_ms']:.2f} ms, "
                          f"CPU ms/req: server {r['server_cpu_ms_per_req']:.2f}, perf_analyzer "
                          f"{r['perf_analyzer_cpu_ms_per_req']:.2f}", flush=True)
            pair = paired(art, name, feeds, http, grpc, args.paired) if args.paired else None
            if pair:
                print(f"paired, concurrency 1: p50 {pair['p50_ms']}, overhead {pair['overhead_ms']}", flush=True)
            pair_pa = (paired_pa(binary, env, art, name, feeds, {"grpc": grpc, "http": http}, args.paired_pa,
                                 args.paired_count, work) if args.paired_pa else None)
            if pair_pa:
                print(f"paired perf_analyzer: p50 {pair_pa['p50_ms']}, overhead {pair_pa['overhead_ms']}", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=120)
        # In-process again: the shared machine drifts, so the server is compared with the better
        # of the two in-process runs (the conservative ratio).
        again = in_process(art, feeds, args.requests, 5)
        print(f"in-process again: {again['throughput']:.2f} req/s", flush=True)
        local["throughput_before"], local["throughput_after"] = local["throughput"], again["throughput"]
        local["throughput"] = max(local["throughput"], again["throughput"])
    result = {"model": args.model, "cores": args.cores, "in_process": local, "server": rows, "paired": pair, "paired_pa": pair_pa,
              "server_exit": code, "stages": [s.measured_s for s in cm.stages], "host": f"{os.cpu_count()} cores"}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(result, args) + "\n")
    print(markdown(result, args))
    return 0


def markdown(res: dict[str, Any], args: argparse.Namespace) -> str:
    local = res["in_process"]
    lines = [f"### {res['model']}, {res['cores']} cores ({res['cores']} stages)", "",
             f"`python benchmarks/serve_bench.py --model {res['model']} --cores {res['cores']} --requests "
             f"{args.requests} --interval-ms {args.interval_ms}` (perf_analyzer 2.41, `--input-data zero`, "
             f"time windows of {args.interval_ms} ms; stages measured "
             + ", ".join(f"{(s or 0) * 1e3:.1f}" for s in res["stages"]) + " ms)", "",
             "| setup | concurrency | req/s | x in-process | p50 ms | p50 - in-process ms "
             "| CPU % of a core: server process (client process) | perf_analyzer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| in-process (`Pipeline.map` / `run`; the better of runs before and after the server: "
             f"{local.get('throughput_before', 0):.2f}, {local.get('throughput_after', 0):.2f}) "
             f"| {int(local['window'])} / 1 | {local['throughput']:.2f} | 1.00 | "
             f"{local['p50_ms']:.2f} | — | ({local['client_cpu_ms_per_req'] * local['throughput'] / 10:.1f}) | — |"]
    for key, r in res["server"].items():
        proto, c = key.split(" c=")
        over = f"{r['p50_ms'] - local['p50_ms']:+.2f}" if c == "1" else "—"
        lines.append(f"| server, perf_analyzer {proto} | {c} | {r['throughput']:.2f} | "
                     f"{r['throughput'] / local['throughput']:.2f} | {r['p50_ms']:.2f} | {over} | "
                     f"{r.get('server_cpu_pct', 0):.1f} | {r.get('perf_analyzer_cpu_pct', 0):.1f} |")
    pair = res.get("paired")
    if pair:
        p50, over = pair["p50_ms"], pair["overhead_ms"]
        lines += ["", f"Paired, concurrency 1 ({pair['rounds']} rounds taking turns: in-process `run`, tritonclient "
                  f"gRPC, tritonclient HTTP binary): p50 {p50['in-process']:.2f} / {p50['grpc']:.2f} / "
                  f"{p50['http']:.2f} ms; median per-round overhead gRPC **{over['grpc']:+.2f} ms**, HTTP "
                  f"**{over['http']:+.2f} ms**."]
    ppa = res.get("paired_pa")
    if ppa:
        p50, over = ppa["p50_ms"], ppa["overhead_ms"]
        lines += ["", f"Paired with perf_analyzer, concurrency 1 ({ppa['rounds']} rounds of {3 * ppa['count']} requests "
                  f"each, taking turns: in-process `run`, perf_analyzer gRPC, perf_analyzer HTTP): median p50 "
                  f"{p50['in-process']:.2f} / {p50['grpc']:.2f} / {p50['http']:.2f} ms; median per-round p50 "
                  f"overhead gRPC **{over['grpc']:+.2f} ms**, HTTP **{over['http']:+.2f} ms**."]
    server_compute = {k: r["server_compute_ms"] for k, r in res["server"].items() if k.endswith("c=1")}
    if server_compute:
        lines += ["", "Server-side compute (submit to result, inside the server, perf_analyzer's average) at "
                  "concurrency 1: " + ", ".join(f"{k.split()[0]} {v:.2f} ms" for k, v in server_compute.items())
                  + "; end to end: " + ", ".join(
                      f"{k.split()[0]} {res['server'][k]['p50_ms']:.2f} ms p50" for k in server_compute) + "."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
