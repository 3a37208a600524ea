"""What Triton's system shared memory saves `corepipe serve`: perf_analyzer with
``--shared-memory system`` against the same server without it, over gRPC and HTTP, taking turns.

One server on ARTIFACT; for each concurrency, ``--rounds`` rounds, each running the four setups
(gRPC, HTTP; tensors in the request, tensors in shared memory) in an order that reverses every
round (ABBA), so a machine that drifts during the run weighs on both sides alike. Reports, per
setup, the median over rounds of: throughput, p50 latency, the server's own figures from Triton's
statistics (compute_input: decoding the request / reading shared memory; compute_output:
encoding the answer / writing shared memory) and perf_analyzer's client send/receive, and CPU
per request of the server's own process (event loop, protocol, the pipeline's client) and of
perf_analyzer; and the ratios shared memory / none within each round.

    python benchmarks/serve_shm.py --artifact models/resnet50 --concurrency 1,window --rounds 2

perf_analyzer: $COREPIPE_PERF_ANALYZER, or PATH, or /tmp/pa (see shared/notes/perf_analyzer.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import signal
import subprocess
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

import psutil
from serve_bench import _served, find_perf_analyzer, start_server

import corepipe

SETUPS = [("grpc", False), ("grpc", True), ("http", False), ("http", True)]


def run(binary: str, env: dict[str, str], name: str, url: str, proto: str, shm: bool, concurrency: int,
        interval_ms: int, server_pid: int, http: str, out: Path) -> dict[str, Any]:
    cmd = [binary, "-m", name, "-u", url, "-i", proto, "--concurrency-range", f"{concurrency}:{concurrency}",
           "--input-data", "zero", "--measurement-interval", str(interval_ms), "--max-trials", "8",
           "--stability-percentage", "25", *(["--shared-memory", "system"] if shm else []), "-f", str(out)]
    server = psutil.Process(server_pid)
    cpu0, n0 = sum(server.cpu_times()[:2]), _served(http, name)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    served = _served(http, name) - n0
    cpu_server = sum(server.cpu_times()[:2]) - cpu0
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"perf_analyzer failed:\n{res.stdout}{res.stderr}")
    with open(out) as f:
        row = next(csv.DictReader(f))
    pa_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)

    def us(key: str) -> float:  # perf_analyzer writes microseconds
        return float(row[key]) / 1e3

    return {
        "throughput": float(row["Inferences/Second"]), "p50_ms": us("p50 latency"),
        "client_send_ms": us("Client Send"), "client_recv_ms": us("Client Recv"),
        "server_input_ms": us("Server Compute Input"), "server_infer_ms": us("Server Compute Infer"),
        "server_output_ms": us("Server Compute Output"),
        "server_cpu_ms_per_req": 1e3 * cpu_server / max(1, served),
        "perf_analyzer_cpu_ms_per_req": 1e3 * pa_cpu / max(1, served),
        "command": "perf_analyzer " + " ".join(cmd[1:-2]),
    }


FIELDS = ["throughput", "p50_ms", "server_input_ms", "server_output_ms", "client_send_ms", "client_recv_ms",
          "server_cpu_ms_per_req", "perf_analyzer_cpu_ms_per_req"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True, help="a compiled artifact (its directory name is the model name)")
    p.add_argument("--concurrency", default="1,window", help="perf_analyzer concurrencies ('window': the pipeline's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    binary, env = find_perf_analyzer()
    art = Path(args.artifact).resolve()
    name = art.name
    with corepipe.load(art, backend="inline") as pipe:
        window = 2 * pipe.plan.num_cores + 2  # the local backend's default max_in_flight
        stages = pipe.plan.num_cores
    concs = [window if c == "window" else int(c) for c in args.concurrency.split(",") if c]
    server, http, grpc = start_server(art)
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="corepipe-shm-bench-") as tmp:
            for c in concs:
                for r in range(args.rounds):
                    order = SETUPS if r % 2 == 0 else SETUPS[::-1]
                    for proto, shm in order:
                        key = f"{proto} {'shm' if shm else 'none'} c={c}"
                        res = run(binary, env, name, grpc if proto == "grpc" else http, proto, shm, c, args.interval_ms,
                                  server.pid, http, Path(tmp) / f"{key.replace(' ', '_')}_{r}.csv")
                        runs.setdefault(key, []).append(res)
                        print(f"round {r} {key}: " + ", ".join(f"{k} {res[k]:.3f}" for k in FIELDS), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
    table: dict[str, dict[str, Any]] = {
        k: {**{f: median(x[f] for x in v) for f in FIELDS}, "command": v[0]["command"]} for k, v in runs.items()}
    ratios: dict[str, dict[str, float]] = {}
    for c in concs:
        for proto in ("grpc", "http"):
            pairs = list(zip(runs[f"{proto} none c={c}"], runs[f"{proto} shm c={c}"], strict=True))
            ratios[f"{proto} c={c}"] = {
                "throughput": median(s["throughput"] / n["throughput"] for n, s in pairs),
                "p50_saved_ms": median(n["p50_ms"] - s["p50_ms"] for n, s in pairs),
                "server_cpu": median(s["server_cpu_ms_per_req"] / n["server_cpu_ms_per_req"] for n, s in pairs),
            }
    result = {"artifact": str(art), "stages": stages, "window": window, "rounds": args.rounds,
              "table": table, "ratios": ratios, "server_exit": code}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"table": {k: {f: round(v[f], 3) for f in FIELDS} for k, v in table.items()},
                      "ratios": {k: {f: round(x, 3) for f, x in v.items()} for k, v in ratios.items()},
                      "server_exit": code}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
