"""What benchmarks/ray_hosts.py measures with: one pipeline's throughput, latency, hand-offs and
CPU by process group; the local backend's and the ray backend's runs on the rig; raw TCP between
two hosts; a table row."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

MiB = 2**20


def _cpu(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _hops(before: Any, after: Any) -> list[float]:
    out = []
    for a, b in zip(before.boundaries, after.boundaries):
        k = b.handoffs - a.handoffs
        out.append((b.mean_s * b.handoffs - a.mean_s * a.handoffs) / k * 1e3 if k else float("nan"))
    return out


def measure(pipe: Any, feeds: dict, requests: int, latency: int, groups: dict[str, set[int]]) -> dict[str, Any]:
    """Throughput streaming ``requests``; latency and hand-offs over ``latency`` one at a time;
    CPU seconds of each process group over the streaming part, per request."""
    for _ in pipe.map(feeds for _ in range(2 * pipe.plan.num_cores + 2)):
        pass
    cpu0 = {name: _cpu(pids) for name, pids in groups.items()}
    busy0 = sum(s.busy_s for s in pipe.stats().stages)
    t0 = time.perf_counter()
    for _ in pipe.map(feeds for _ in range(requests)):
        pass
    rate = requests / (time.perf_counter() - t0)
    cpu = {name: (_cpu(pids) - cpu0[name]) / requests * 1e3 for name, pids in groups.items()}
    busy = (sum(s.busy_s for s in pipe.stats().stages) - busy0) / requests * 1e3
    s0, lat = pipe.stats(), []
    for _ in range(latency):
        t1 = time.perf_counter()
        pipe.run(feeds, timeout=300)
        lat.append(time.perf_counter() - t1)
    return {"rate": rate, "p50": statistics.median(lat) * 1e3, "hops": _hops(s0, pipe.stats()),
            "cpu": cpu, "busy": busy}


def _local(path: Path, feeds: dict, args: argparse.Namespace) -> dict[str, Any]:
    import corepipe

    with corepipe.load(path) as pipe:
        me = psutil.Process()
        groups = {"driver": {me.pid}, "workers": {p.pid for p in me.children(recursive=True)}}
        return measure(pipe, feeds, args.requests, args.latency, groups)


def _ray(h: Any, path: Path, feeds: dict, args: argparse.Namespace, data_path: str,
         pins: bool = True) -> dict[str, Any]:
    import corepipe

    n = corepipe.artifact.open_artifact(path).plan.num_cores
    pinned = [{f"cp_h{k}": 1} for k in range(n)] if pins else None
    with corepipe.load(path, backend="ray", stage_resources=pinned, data_path=data_path) as pipe:
        actors = {w["pid"] for w in pipe.placement()}
        rig = {p for i in range(h.n) for p in h.pids(i)}
        groups = {"driver": {os.getpid()}, "actors": actors, "daemons": rig - actors}
        out = measure(pipe, feeds, args.requests, args.latency, groups)
        out["hosts"] = [w["ip"] for w in pipe.placement()]
        out["data_path"] = pipe.data_path
        return out


def _compile(model: Any, feeds: dict, tmp: str, **kw: Any) -> Any:
    import corepipe

    t0 = time.perf_counter()
    cm = corepipe.compile(model, Path(tmp) / "a", example_inputs=feeds, **kw)
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {cm.num_cores} stages", flush=True)
    return cm


def _row(name: str, r: dict[str, Any], local: dict[str, Any]) -> str:
    other = sum(r["cpu"].values()) - r["busy"]
    hops = ", ".join(f"{x:.2f}" for x in r["hops"])
    return (f"| {name} | {r['rate']:.2f} | **{r['rate'] / local['rate']:.3f}** | {r['p50']:.1f} | "
            f"**{r['p50'] / local['p50']:.3f}** | {hops} | {other:.1f} | "
            + " + ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items()) + " |")


_SERVER = r"""
import socket, sys
s = socket.create_server((sys.argv[1], 5001)); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = memoryview(bytearray(1 << 22))
while hdr := c.recv(8):
    n, got = int.from_bytes(hdr, "little"), 0
    while got < n:
        got += c.recv_into(buf[: min(len(buf), n - got)])
    c.sendall(b"k")
"""


def _tcp(h: Any, frame: int) -> tuple[float, float]:
    """Bulk Gbit/s host 0 -> 1, and the median time to send one ``frame``-byte message and hear
    a 1-byte answer (after 10 ms idle, as a stage's output after its run)."""
    import socket

    server = subprocess.Popen(["ip", "netns", "exec", h.ns(1), sys.executable, "-c", _SERVER, h.ip(1)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        c = socket.create_connection((h.ip(1), 5001))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = memoryview(bytes(1 << 22))

        def xfer(n: int) -> None:
            c.sendall(n.to_bytes(8, "little"))
            left = n
            while left:
                k = min(left, len(data))
                c.sendall(data[:k])
                left -= k
            c.recv(1)

        xfer(1 << 20)
        t0 = time.perf_counter()
        xfer(256 << 20)
        bulk = (256 << 20) * 8 / (time.perf_counter() - t0) / 1e9
        one = []
        for _ in range(20):
            time.sleep(0.01)
            t1 = time.perf_counter()
            xfer(frame)
            one.append(time.perf_counter() - t1)
        c.close()
        return bulk, statistics.median(one) * 1e3
    finally:
        server.kill()
        server.wait()
