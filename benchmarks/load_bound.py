"""What bounds a balanced pipeline against ideal (K x one 1-thread session), measured in one run.

The pipeline's throughput over ideal splits into three factors, each measured here:

- **split**: the whole model alone on one core (t1) over the sum of its stages, each alone on one
  core (what cutting the graph costs: optimisations across the cut, boundary outputs);
- **contention**: the stages alone over their busy time per request with every core busy (what
  running all cores at once, and the hand-off copies, cost each stage);
- **balance**: the stages' mean busy time over the slowest one (what an uneven cut costs);
- **hand-off**: throughput x the slowest stage's busy time per request, the share of the time the
  slowest stage is busy: what the hand-offs and the gaps between requests cost on top of it
  (streamed with the pipeline's default window of 2 x stages + 2, as `corepipe bench` does).

pipeline / ideal = split x contention x balance x hand-off. For comparison, the same contention factor of
K independent 1-thread sessions (t1 alone over their per-request time side by side) says how
much of the loss any K-core configuration pays on this machine.

    python benchmarks/load_bound.py --model bert --cores 2 --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe, not an installed one
import corepipe
from corepipe.bench.peers import run_parallel, run_serial
from corepipe.bench.traffic import resolve_model
from corepipe.compiler.cut.loadbalance import CpuWatch, measure_under_load
from corepipe.compiler.cut.measure import time_stages
from corepipe.compiler.model.graph import analyze


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert", help="zoo model name")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default="onnxruntime",
                    help="stage engine (default onnxruntime: the engine t1 and the sessions run on)")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    k = args.cores
    use = sorted(os.sched_getaffinity(0))[:k]
    with tempfile.TemporaryDirectory(prefix="corepipe-bound-") as tmp:
        work = Path(tmp)
        path, feeds = resolve_model(f"zoo:{args.model}", work)
        assert feeds is not None
        inputs = work / "inputs.npz"
        np.savez(inputs, **feeds)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        cm = corepipe.compile(path, work / "art", example_inputs=feeds, num_cores=k, balance="load", engine=args.engine,
                              load_rounds=args.rounds, load_seconds=args.seconds)
        compile_s = time.perf_counter() - t0
        n1 = max(8, int(args.seconds / (sum(s.loaded_s or 0 for s in cm.stages) or 1)))
        one = run_serial(path, inputs, 1, n1, 2, use[:1])
        t1 = one["elapsed_s"] / one["requests"]
        watch = CpuWatch()
        rate, results = run_parallel(path, inputs, n1 * k, 2, use)
        sessions_foreign = watch.foreign_share()
        per_session = float(np.mean([r["elapsed_s"] / r["requests"] for r in results]))
        # The pipeline's default window (2 x stages + 2, as `corepipe bench` and `run` stream):
        # saturated, so the next request is always waiting when a stage frees.
        m = measure_under_load(cm.path, feeds, cores=use, seconds=args.seconds, window=2 * k + 2)
        bounds = [st.node_start for st in cm.stages] + [cm.plan.num_nodes]
        alone = time_stages(analyze(path, feeds), bounds, feeds, engines=[args.engine])
        one_again = run_serial(path, inputs, 1, n1, 2, use[:1])
        t1 = min(t1, one_again["elapsed_s"] / one_again["requests"])  # the quieter of two runs
    busy = m.stage_busy_s
    ideal = k / t1
    split = t1 / sum(alone)
    contention = sum(alone) / sum(busy)
    balance = (sum(busy) / k) / max(busy)
    handoff = m.throughput * max(busy)
    lines = [
        f"### What bounds balance='load' on {args.model}, {k} cores",
        "",
        f"`python benchmarks/load_bound.py --model {args.model} --cores {k} --seconds {args.seconds:g} "
        f"--rounds {args.rounds} --engine {args.engine}` (compile {compile_s:.0f} s; {m.requests} requests timed)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| whole model, 1 thread alone (t1) | {t1 * 1e3:.1f} ms |",
        f"| stages alone, one core each in turn | {' / '.join(f'{a * 1e3:.1f}' for a in alone)} ms "
        f"(sum {sum(alone) * 1e3:.1f}) |",
        f"| stages' busy time per request under load | {' / '.join(f'{b * 1e3:.1f}' for b in busy)} ms "
        f"(sum {sum(busy) * 1e3:.1f}) |",
        f"| pipeline throughput | {m.throughput:.2f} req/s (ideal {ideal:.2f}) |",
        f"| **pipeline / ideal** | **{m.throughput / ideal:.3f}** |",
        f"| = split (t1 / sum of stages alone) | {split:.3f} |",
        f"| x contention (stages alone / busy under load) | {contention:.3f} |",
        f"| x balance (mean / slowest stage) | {balance:.3f} |",
        f"| x hand-off (throughput x slowest stage's busy time) | {handoff:.3f} |",
        f"| {k} sessions side by side: throughput / ideal | {rate / ideal:.3f} |",
        f"| {k} sessions: contention (t1 / per-request time side by side) | {t1 / per_session:.3f} |",
        f"| other processes' share of the CPUs: pipeline run / sessions run | {m.foreign_cpu:.0%} / "
        f"{sessions_foreign:.0%} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
