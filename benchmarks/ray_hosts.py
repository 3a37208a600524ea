"""The ``ray`` backend across hosts that have their own network: hosts as network namespaces on
this machine (tests/hosts.py), a Ray node on each, links capped with ``tbf``.

Sections (``--section``), each short enough for one ``cp-bench`` call:

- ``paths``: one artifact on ``local`` and on ``ray`` over 2 hosts (stage k pinned to host k; the
  driver on host 0 with stage 0), for each data path (``stream``, ``object-store``): throughput
  streaming, latency with one request in flight, the hand-off per boundary with one in flight
  (`stats().boundaries`, other hosts' clocks corrected), the wire time of the stage-to-stage
  boundary at the cap, and CPU per request outside the stages' inference (Ray's daemons, the
  actors' data path, the driver). ``local`` runs before and after the rig; ratios use their mean.
- ``caps``: raw TCP between two hosts (bulk Gbit/s, one boundary-sized frame) and the stream
  pipeline at each cap (``--caps 1 10 25``).
- ``partition``: 3 hosts; stage 1's host cut off mid-stream; seconds until a request submitted
  at the cut is answered (Ray's detection + one restart), per data path.
- ``budget``: a model larger than one host (``--budget``): compiled for hosts with that budget,
  one stage per host, on both data paths and on ``local``.

    python benchmarks/ray_hosts.py --model resnet50 --section paths --gbit 10
    python benchmarks/ray_hosts.py --model resnet50 --section caps --caps 1 10 25
    python benchmarks/ray_hosts.py --model bert --section budget --budget 200MiB --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))  # the rig: tests/hosts.py
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local instances stay on the loopback

from ray_hosts_support import MiB, _compile, _local, _ray, _row, _tcp

PATHS = ("stream", "object-store")


def section_paths(args: argparse.Namespace, model: Any, feeds: dict, tmp: str) -> list[str]:
    from hosts import Hosts

    import corepipe

    cm = _compile(model, feeds, tmp, num_cores=2)
    plan = corepipe.artifact.open_artifact(cm.path).plan
    specs = plan.boundaries[1]
    nbytes = sum(t.nbytes for t in specs)
    rows: dict[str, dict[str, Any]] = {"local (before)": _local(cm.path, feeds, args)}
    print(rows, flush=True)
    with Hosts(2, cpus=[1, 1], gbit=args.gbit) as h, h.driver():
        time.sleep(args.settle)
        for name, dp in (("ray stream", "stream"), ("ray object-store", "object-store"),
                         ("ray stream (again)", "stream")):
            rows[name] = _ray(h, cm.path, feeds, args, dp)
            print(name, rows[name], flush=True)
    rows["local (after)"] = _local(cm.path, feeds, args)
    local = {"rate": (rows["local (before)"]["rate"] + rows["local (after)"]["rate"]) / 2,
             "p50": (rows["local (before)"]["p50"] + rows["local (after)"]["p50"]) / 2}
    wire = nbytes * 8 / (args.gbit * 1e9) * 1e3 if args.gbit else 0.0
    lines = [
        f"`python benchmarks/ray_hosts.py --model {args.model} --section paths --gbit {args.gbit:g} "
        f"--requests {args.requests} --latency {args.latency}` (x86_64, 2-core shared VM; 2 namespace "
        f"hosts of 1 CPU, links capped at {args.gbit:g} Gbit/s; stage k on host k, driver on host 0)",
        "",
        f"Stage-to-stage boundary: {nbytes / MiB:.2f} MiB ({', '.join(t.name for t in specs)}); wire time "
        f"at {args.gbit:g} Gbit/s: **{wire:.2f} ms**. Stages: "
        + ", ".join(f"{(s.measured_s or s.estimated_s) * 1e3:.1f} ms" for s in plan.stages) + " (compiler).",
        "",
        "| setup | req/s | x local | latency p50 ms (1 in flight) | x local | hand-off per boundary ms "
        "(client in, stage to stage, out) | CPU ms/request outside inference | CPU ms/request by process "
        "(streaming) |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    lines += [_row(name, r, local) for name, r in rows.items()]
    lines += ["", f"Cross-host hop (stream) {rows['ray stream']['hops'][1]:.2f} and "
              f"{rows['ray stream (again)']['hops'][1]:.2f} ms against wire + 1 ms = {wire + 1:.2f} ms; "
              f"object store {rows['ray object-store']['hops'][1]:.2f} ms.", ""]
    return lines


def section_caps(args: argparse.Namespace, model: Any, feeds: dict, tmp: str) -> list[str]:
    from hosts import Hosts

    import corepipe

    cm = _compile(model, feeds, tmp, num_cores=2)
    plan = corepipe.artifact.open_artifact(cm.path).plan
    nbytes = sum(t.nbytes for t in plan.boundaries[1])
    before = _local(cm.path, feeds, args)
    rows: list[tuple[float, float, float, Any, Any]] = []
    with Hosts(2, cpus=[1, 1]) as h:
        time.sleep(args.settle)
        for cap in [0.0, *args.caps]:
            for i in range(2):
                h.cap(i, cap or None)
            h.enter(0)
            try:
                bulk, one = _tcp(h, nbytes)
            finally:
                h.leave()
            if not cap:
                rows.append((cap, bulk, one, None, None))
                continue
            with h.driver():
                s = _ray(h, cm.path, feeds, args, "stream")
                o = _ray(h, cm.path, feeds, args, "object-store")
            print(cap, bulk, one, s, o, flush=True)
            rows.append((cap, bulk, one, s, o))
    after = _local(cm.path, feeds, args)
    local = {"rate": (before["rate"] + after["rate"]) / 2, "p50": (before["p50"] + after["p50"]) / 2}
    lines = [
        f"`python benchmarks/ray_hosts.py --model {args.model} --section caps --caps "
        f"{' '.join(f'{c:g}' for c in args.caps)} --requests {args.requests} --latency {args.latency}` "
        f"(x86_64, 2-core shared VM; 2 namespace hosts of 1 CPU; tbf on both ends of each link, "
        f"bucket 1 ms of traffic; local backend before and after the rig: {before['rate']:.2f} and "
        f"{after['rate']:.2f} req/s, p50 {before['p50']:.1f} and {after['p50']:.1f} ms; x local: over their mean)",
        "",
        f"| cap Gbit/s | TCP bulk Gbit/s | one {nbytes / MiB:.2f} MiB frame ms (wire) | ray stream req/s | "
        "x local | p50 ms | stage-to-stage hop ms | ray object-store req/s | p50 ms | hop ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cap, bulk, one, st, o in rows:
        if st is None or o is None:
            lines.append(f"| none | {bulk:.2f} | {one:.2f} | | | | | | | |")
            continue
        wire = nbytes * 8 / (cap * 1e9) * 1e3
        lines.append(f"| {cap:g} | {bulk:.2f} | {one:.2f} ({wire:.2f}) | {st['rate']:.2f} | "
                     f"{st['rate'] / local['rate']:.3f} | {st['p50']:.1f} | {st['hops'][1]:.2f} | "
                     f"{o['rate']:.2f} | {o['p50']:.1f} | {o['hops'][1]:.2f} |")
    return lines + [""]


def section_partition(args: argparse.Namespace, model: Any, feeds: dict, tmp: str) -> list[str]:
    from hosts import HEALTH, Hosts

    import corepipe

    cm = _compile(model, feeds, tmp, num_cores=2)
    detect = HEALTH["health_check_failure_threshold"] * (
        HEALTH["health_check_period_ms"] + HEALTH["health_check_timeout_ms"]) / 1000
    lines = [
        f"`python benchmarks/ray_hosts.py --model {args.model} --section partition` (x86_64, 2-core "
        f"shared VM; 3 namespace hosts of 1 CPU; stage 0 on host 0 with the driver, stage 1 on host 1 "
        f"or 2 (the other free), its host cut off; Ray health checks every {HEALTH['health_check_period_ms']} ms, "
        f"{HEALTH['health_check_timeout_ms']} ms each, dead after {HEALTH['health_check_failure_threshold']}"
        f" missed: detection <= {detect:.1f} s)",
        "",
        "| data path | requests in flight at the cut | answered | completed (stats) | lost | first answer "
        "after the cut s | host declared lost after s | restart s | request submitted at the cut answered "
        "after s | stage 1 moved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    with Hosts(3, cpus=[1, 1, 1]) as h, h.driver():
        time.sleep(args.settle)
        for dp in PATHS:
            with corepipe.load(cm.path, backend="ray", stage_resources=[{"cp_h0": 1}, {}],
                               data_path=dp, max_in_flight=8) as pipe:
                pipe.run(feeds, timeout=120)
                victim = next(i for i in range(h.n) if h.ip(i) == pipe.placement()[1]["ip"])
                answered: list[int] = []
                lock = threading.Lock()

                def note(fut: Any, answered: list[int] = answered, lock: threading.Lock = lock) -> None:
                    with lock:
                        answered.append(fut.request_id)

                futs = [pipe.submit(feeds) for _ in range(6)]
                for f in futs:
                    f.add_done_callback(note)
                time.sleep(0.05)
                h.link(victim, False)
                cut = time.monotonic()
                late = pipe.submit(feeds)
                late.add_done_callback(note)
                firsts = []
                for f in futs:
                    f.result(timeout=120)
                    firsts.append(time.monotonic() - cut)
                late.result(timeout=120)
                late_s = time.monotonic() - cut
                moved = pipe.placement()[1]["ip"]
                ids = [f.request_id for f in futs] + [late.request_id]
                lost = len(set(ids) - set(answered))
                rec = pipe.timeline().recoveries[0]
                done = pipe.stats().completed - 1  # less the warm-up request
                lines.append(f"| {dp} | {len(futs)} | {len(answered)} | {done} | {lost} | {min(firsts):.2f} | "
                             f"{rec.start - cut:.2f} | {rec.end - rec.start:.2f} | {late_s:.2f} | "
                             f"{h.ip(victim)} -> {moved} |")
                print(lines[-1], flush=True)
            h.restart(victim)
            deadline = time.monotonic() + 30
            import ray

            while len([n for n in ray.nodes() if n["Alive"]]) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
    return lines + [""]


def section_budget(args: argparse.Namespace, model: Any, feeds: dict, tmp: str) -> list[str]:
    from hosts import Hosts

    from corepipe.artifact.sizes import parse_size

    budget = parse_size(args.budget)
    cm = _compile(model, feeds, tmp, target="ray", core_memory=budget, num_cores="auto")
    n = cm.num_cores
    weights = sum(s.resident_bytes for s in cm.stages)
    rows = {"local (before)": _local(cm.path, feeds, args)}
    with Hosts(n, cpus=1, memory=budget, object_store=max(256 * MiB, 2 * budget)) as h, h.driver():
        time.sleep(args.settle)
        for dp in PATHS:
            rows[f"ray {dp}"] = _ray(h, cm.path, feeds, args, dp, pins=False)
            print(dp, rows[f"ray {dp}"], flush=True)
            assert len(set(rows[f"ray {dp}"]["hosts"])) == n
    rows["local (after)"] = _local(cm.path, feeds, args)
    local = {"rate": (rows["local (before)"]["rate"] + rows["local (after)"]["rate"]) / 2,
             "p50": (rows["local (before)"]["p50"] + rows["local (after)"]["p50"]) / 2}
    lines = [
        f"`python benchmarks/ray_hosts.py --model {args.model} --section budget --budget {args.budget} "
        f"--requests {args.requests} --latency {args.latency}` (x86_64, 2-core shared VM; {n} namespace "
        f"hosts of 1 CPU and {args.budget} each, uncapped links; local: {n} workers on the 2 cores)",
        "",
        f"Weights {weights / MiB:.0f} MiB > one host's {budget / MiB:.0f} MiB: **{n} stages** of "
        + ", ".join(f"{s.resident_bytes / MiB:.0f}" for s in cm.stages) + " MiB, one per host (PACK: each "
        "bundle reserves its stage's bytes of its host's memory).",
        "",
        "| setup | req/s | x local | latency p50 ms (1 in flight) | x local | hand-off per boundary ms | "
        "CPU ms/request outside inference | CPU ms/request by process |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    return lines + [_row(name, r, local) for name, r in rows.items()] + [""]


SECTIONS = {"paths": section_paths, "caps": section_caps, "partition": section_partition,
            "budget": section_budget}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="zoo model (default resnet50)")
    p.add_argument("--section", choices=sorted(SECTIONS), default="paths")
    p.add_argument("--gbit", type=float, default=10.0, help="link cap for --section paths (default 10)")
    p.add_argument("--caps", type=float, nargs="+", default=[1.0, 10.0, 25.0])
    p.add_argument("--budget", default="200MiB", help="each host's memory for --section budget")
    p.add_argument("--requests", type=int, default=60, help="streamed requests per setup (default 60)")
    p.add_argument("--latency", type=int, default=20, help="one-at-a-time requests per setup (default 20)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds to wait after the rig starts, while Ray's daemons finish starting (default 5)")
    p.add_argument("--markdown", type=Path, help="append the report here")
    args = p.parse_args(argv)
    from hosts import missing

    if why := missing():
        print(f"ray_hosts.py: {why}", file=sys.stderr)
        return 2
    from corepipe import zoo

    model, feeds = zoo.get(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        lines = SECTIONS[args.section](args, model, feeds, tmp)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
