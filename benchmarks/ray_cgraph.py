"""Ray's Compiled Graph (``experimental_compile``) as a data path for the ``ray`` backend, measured
against corepipe's own two (the TCP stream and the object store) in one run on one rig: 2 hosts as
network namespaces (tests/hosts.py), links capped with ``tbf``, one artifact's 2 stages on hosts 0
and 1, the driver on host 0 with stage 0.

The Compiled Graph's actors run the very stages (corepipe's `StageRunner`, one thread each), so the
three rows differ only in how a request travels: Compiled Graph channels (shared memory on one
host, Ray's mutable objects pushed by the raylet between hosts), corepipe's slot frames over one
TCP connection per boundary, or Ray calls through the object store. The Compiled Graph row keeps
none of corepipe's guarantees (no replay after a death, no checks on arrival, pickled values):
it is here to choose a path, not to be used.

Per row: throughput streaming ``--requests`` (at most ``2 * stages + 2`` in flight), latency with
one request in flight, the stage-to-stage hop with one in flight (send to arrival: the hosts share
this machine's clock), and CPU per request outside the stages' inference.

    python benchmarks/ray_cgraph.py --model resnet50 --gbit 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))  # the rig: tests/hosts.py
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local instances stay on the loopback

from ray_hosts_support import MiB, _compile, _cpu, _local, _ray, _row


class CGStage:
    """Stage ``k`` of the artifact at ``path``, for a Compiled Graph: takes and returns
    ``(arrays, sent_at, hop)``: the boundary's arrays, when they were sent, the hop into stage 1."""

    def __init__(self, path: str, k: int) -> None:
        from corepipe.artifact.transfer import manifest_sha256, open_stage
        from corepipe.engines import StageRunner

        art = open_stage(path, k, manifest_sha256(path))
        self.runner = StageRunner(art, k, threads=1, spin=False)
        plan = art.plan
        self.names_in = [t.name for t in plan.boundaries[k]]
        self.names_out = [t.name for t in plan.boundaries[k + 1]]
        self.busy = 0.0

    def run(self, msg: tuple[list[Any], float, float]) -> tuple[list[Any], float, float]:
        arrived = time.time()
        arrays, sent_at, hop = msg
        hop = hop or (arrived - sent_at if sent_at else 0.0)
        t0 = time.perf_counter()
        out = self.runner.run(dict(zip(self.names_in, arrays)))
        self.busy += time.perf_counter() - t0
        return [out[n] for n in self.names_out], time.time(), hop

    def busy_s(self) -> float:
        return self.busy

    def pid(self) -> int:
        return os.getpid()


def _cgraph(h: Any, path: Path, feeds: dict, args: argparse.Namespace) -> dict[str, Any]:
    """The Compiled Graph row: stage k on host k, at most ``2 * 2 + 2`` executions in flight."""
    import ray
    from ray.dag import InputNode

    import corepipe

    names = [t.name for t in corepipe.artifact.open_artifact(path).plan.boundaries[0]]
    x = [feeds[n] for n in names]
    cls = ray.remote(CGStage)
    actors = [cls.options(num_cpus=1, resources={f"cp_h{k}": 1}).remote(str(path), k) for k in range(2)]
    window = 6
    with InputNode() as inp:
        dag = actors[1].run.bind(actors[0].run.bind(inp))
    cg = dag.experimental_compile(_max_inflight_executions=window)
    try:
        def one() -> tuple[list[Any], float, float]:
            return cg.execute((x, 0.0, 0.0)).get(timeout=300)

        for _ in range(window):
            one()
        pids = {ray.get(a.pid.remote()) for a in actors}
        rig = {p for i in range(h.n) for p in h.pids(i)}
        groups = {"driver": {os.getpid()}, "actors": pids, "daemons": rig - pids}
        cpu0 = {k: _cpu(v) for k, v in groups.items()}
        busy0 = sum(ray.get([a.busy_s.remote() for a in actors]))
        t0, refs = time.perf_counter(), []
        for _ in range(args.requests):
            if len(refs) == window:
                refs.pop(0).get(timeout=300)
            refs.append(cg.execute((x, 0.0, 0.0)))
        for r in refs:
            r.get(timeout=300)
        rate = args.requests / (time.perf_counter() - t0)
        cpu = {k: (_cpu(v) - cpu0[k]) / args.requests * 1e3 for k, v in groups.items()}
        busy = (sum(ray.get([a.busy_s.remote() for a in actors])) - busy0) / args.requests * 1e3
        lat, hops = [], []
        for _ in range(args.latency):
            t1 = time.perf_counter()
            _, _, hop = one()
            lat.append(time.perf_counter() - t1)
            hops.append(hop)
    finally:
        cg.teardown(kill_actors=True)  # a plain teardown waited forever here once (Ray 2.60)
    return {"rate": rate, "p50": statistics.median(lat) * 1e3, "hops": [float("nan"), statistics.mean(hops) * 1e3,
                                                                          float("nan")],
            "cpu": cpu, "busy": busy}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="zoo model (default resnet50)")
    p.add_argument("--gbit", type=float, default=10.0, help="link cap (default 10)")
    p.add_argument("--requests", type=int, default=60, help="streamed requests per setup (default 60)")
    p.add_argument("--latency", type=int, default=20, help="one-at-a-time requests per setup (default 20)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to let Ray's daemons settle (default 5)")
    p.add_argument("--markdown", type=Path, help="append the report here")
    args = p.parse_args(argv)
    from hosts import Hosts, missing

    import corepipe
    from corepipe import zoo

    if why := missing():
        print(f"ray_cgraph.py: {why}", file=sys.stderr)
        return 2
    model, feeds = zoo.get(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        cm = _compile(model, feeds, tmp, num_cores=2)
        nbytes = sum(t.nbytes for t in corepipe.artifact.open_artifact(cm.path).plan.boundaries[1])
        rows: dict[str, dict[str, Any]] = {"local (before)": _local(cm.path, feeds, args)}
        with Hosts(2, cpus=[1, 1], gbit=args.gbit) as h, h.driver():
            time.sleep(args.settle)
            for name in ("ray compiled graph", "ray stream", "ray object-store"):
                try:
                    rows[name] = (_cgraph(h, cm.path, feeds, args) if name == "ray compiled graph"
                                  else _ray(h, cm.path, feeds, args, name.split()[-1]))
                except Exception as exc:  # say what failed, measure the others
                    print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
                    continue
                print(name, rows[name], flush=True)
        rows["local (after)"] = _local(cm.path, feeds, args)
    local = {k: (rows["local (before)"][k] + rows["local (after)"][k]) / 2 for k in ("rate", "p50")}
    lines = [
        f"`python benchmarks/ray_cgraph.py --model {args.model} --gbit {args.gbit:g} --requests {args.requests} "
        f"--latency {args.latency}` (x86_64, 2-core shared VM; 2 namespace hosts of 1 CPU, links capped at "
        f"{args.gbit:g} Gbit/s; stage k on host k, driver on host 0; boundary {nbytes / MiB:.2f} MiB)",
        "",
        "| setup | req/s | x local | latency p50 ms (1 in flight) | x local | hand-off per boundary ms "
        "(client in, stage to stage, out) | CPU ms/request outside inference | CPU ms/request by process |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    lines += [_row(name, r, local) for name, r in rows.items()] + [""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
