"""What bounds the ``ray`` backend against ``local`` on one small machine: CPU spent per request
outside the stages' own inference.

One compiled artifact runs on both backends, one after the other, streaming the same requests.
For each, the CPU time (user + system) of every process involved is read before and after the
stream: the driver (this process), the stage workers or actors, and, for Ray, its own daemons
(raylet, GCS, object-store and agent processes; all children of this process for a private
instance). The stages' inference time is ``stats()``' busy time; everything else, divided by the
requests, is the backend's own cost per request. On a machine with no spare core that cost comes
straight out of the stages' CPU time, so it bounds the throughput ratio.

    python benchmarks/ray_overhead.py                          # zoo:resnet50, 2 stages
    python benchmarks/ray_overhead.py --model bert --requests 40 --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def _cpu(pids: set[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _family() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid} | {p.pid for p in me.children(recursive=True)}


def measure(path: Path, backend: str, feeds: dict, requests: int) -> dict[str, float]:
    import corepipe

    with corepipe.load(path, backend=backend) as pipe:
        for _ in pipe.map(feeds for _ in range(4 * pipe.plan.num_cores)):  # warm, and every process started
            pass
        pids = _family()
        before, busy0 = _cpu(pids), sum(s.busy_s for s in pipe.stats().stages)
        t0 = time.perf_counter()
        for _ in pipe.map(feeds for _ in range(requests)):
            pass
        wall = time.perf_counter() - t0
        after, busy1 = _cpu(pids), sum(s.busy_s for s in pipe.stats().stages)
    cpu, busy = after - before, busy1 - busy0
    return {"rate": requests / wall, "cpu_ms": cpu / requests * 1e3, "busy_ms": busy / requests * 1e3,
            "other_ms": (cpu - busy) / requests * 1e3}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="zoo model (default resnet50)")
    p.add_argument("--cores", type=int, default=2, help="stages (default 2)")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import corepipe
    from corepipe import zoo

    model, feeds = zoo.get(args.model)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cm = corepipe.compile(model, Path(tmp) / "a", example_inputs=feeds, num_cores=args.cores)
        del model
        for backend in ("local", "ray"):
            rows[backend] = measure(cm.path, backend, feeds, args.requests)
            print(backend, rows[backend], flush=True)
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"`python benchmarks/ray_overhead.py --model {args.model} --cores {args.cores} --requests {args.requests}` "
        f"(x86_64, {cores}-core shared VM; CPU ms per request, all processes of each backend)",
        "",
        "| backend | req/s | CPU ms / request | of it: stages' inference | of it: everything else |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['rate']:.2f} | {r['cpu_ms']:.1f} | {r['busy_ms']:.1f} | {r['other_ms']:.1f} |")
    extra = rows["ray"]["other_ms"] - rows["local"]["other_ms"]
    lines += ["", f"Ray's own extra CPU per request: {extra:.1f} ms; ray / local throughput "
              f"{rows['ray']['rate'] / rows['local']['rate']:.2f}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
