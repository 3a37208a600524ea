"""A model larger than one node, on a real multi-node Ray cluster on this machine.

BERT-base (418 MiB of weights) is compiled for Ray nodes that each declare a budget for resident
weights (``target="ray"``, ``core_memory=BUDGET``, ``num_cores="auto"``: the fewest nodes whose
budgets hold the stages), then run with ``backend="ray"`` on a ``ray.cluster_utils.Cluster`` of
that many nodes (one raylet and object store each, all on 127.0.0.1, each declaring ``BUDGET`` of
memory and one CPU). Each stage's bundle reserves its weights' bytes of its node's memory, so no
node can take two stages: they land on different nodes, checked through the actors' node ids.

Reports: the stages and where each ran, the outputs' largest difference to one onnxruntime
session on the whole model, throughput and latency, the hand-off time per boundary
(``stats().boundaries``), and each actor's resident memory.

    python benchmarks/ray_nodes.py                       # zoo:bert, nodes of 200 MiB
    python benchmarks/ray_nodes.py --budget 150MiB --requests 30 --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # this checkout's corepipe, also for the actors (PYTHONPATH below)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only

MiB = 2**20


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="bert", help="zoo model (default bert)")
    p.add_argument("--budget", default="200MiB", help="each node's budget for resident weights")
    p.add_argument("--requests", type=int, default=20, help="timed requests (default 20)")
    p.add_argument("--markdown", type=Path, help="append the report here")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import psutil
    import ray
    from ray.cluster_utils import Cluster

    import corepipe
    from corepipe import zoo
    from corepipe.artifact.sizes import parse_size

    budget = parse_size(args.budget)
    model, feeds = zoo.get(args.model)
    lines = [f"### {args.model} across Ray nodes of {args.budget} each (ray.cluster_utils.Cluster, loopback)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cm = corepipe.compile(model, Path(tmp) / "art", example_inputs=feeds, target="ray",
                              core_memory=budget, num_cores="auto")
        compile_s = time.perf_counter() - t0
        weights = sum(s.resident_bytes for s in cm.stages)
        n = cm.num_cores
        print(f"compiled in {compile_s:.1f} s: {n} stages, "
              f"{[round(s.resident_bytes / MiB) for s in cm.stages]} MiB", flush=True)
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feeds)))
        del ref, model

        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "memory": budget, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        for _ in range(n - 1):
            cluster.add_node(num_cpus=1, memory=budget, node_ip_address="127.0.0.1")
        try:
            ray.init(address=cluster.address, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
            assert {x["NodeManagerAddress"] for x in ray.nodes()} == {"127.0.0.1"}
            t0 = time.perf_counter()
            with corepipe.load(cm.path, backend="ray") as pipe:
                start_s = time.perf_counter() - t0
                where = pipe.placement()
                out = pipe.run(feeds, timeout=300)
                diff = max(float(np.max(np.abs(out[k] - expected[k]))) for k in expected)
                for _ in range(2 * n):
                    pipe.run(feeds, timeout=300)
                before = pipe.stats()
                t0 = time.perf_counter()
                for _ in pipe.map(feeds for _ in range(args.requests)):
                    pass
                rate = args.requests / (time.perf_counter() - t0)
                lat = []
                for _ in range(5):
                    t1 = time.perf_counter()
                    pipe.run(feeds, timeout=300)
                    lat.append(time.perf_counter() - t1)
                after = pipe.stats()
                rss = [psutil.Process(w["pid"]).memory_info().rss for w in where]
            nodes = len({w["node_id"] for w in where})
        finally:
            ray.shutdown()
            cluster.shutdown()

    hand = []
    for a, b in zip(before.boundaries, after.boundaries):
        k = b.handoffs - a.handoffs
        hand.append((b.mean_s * b.handoffs - a.mean_s * a.handoffs) / k * 1e3 if k else 0.0)
    lines += [
        f"`python benchmarks/ray_nodes.py --model {args.model} --budget {args.budget} --requests {args.requests}` "
        f"(x86_64, 2-core shared VM; {n} Ray nodes on 127.0.0.1, 1 CPU and {args.budget} of memory each)",
        "",
        f"- weights {weights / MiB:.0f} MiB > one node's {budget / MiB:.0f} MiB: `auto` chose **{n} stages**, "
        f"{', '.join(f'{s.resident_bytes / MiB:.0f}' for s in cm.stages)} MiB (compile {compile_s:.1f} s)",
        f"- placement: stages on **{nodes} different nodes** "
        f"({', '.join(w['node_id'][:8] for w in where)}), sources {[w['source'] for w in where]}; "
        f"actors placed and loaded in {start_s:.1f} s",
        f"- outputs vs one onnxruntime session on the whole model: max abs diff {diff:.2e}",
        f"- {rate:.2f} req/s over {args.requests} requests streamed; latency one at a time "
        f"p50 {np.median(lat) * 1e3:.0f} ms ({n} stages on {n} one-CPU nodes sharing 2 cores)",
        f"- hand-off per boundary (client in, {n - 1} stage to stage, out to client), mean send to arrival: "
        + ", ".join(f"{h:.2f} ms" for h in hand),
        f"- actor RSS: {' + '.join(f'{r / MiB:.0f}' for r in rss)} MiB",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(text + "\n")
    return 0 if nodes == n and diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
