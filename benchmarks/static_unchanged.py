"""Nothing lost when unused: a static model's throughput on this tree against another tree (the
commit before variable shapes), in one run, on the same artifacts.

Each setup streams requests through a backend (``local`` by default; ``inline`` runs every stage
in the client, so the figure is the per-request CPU alone) in a fresh process whose PYTHONPATH
is the tree measured (the artifact is compiled once, by the baseline tree, and both read it:
static plans are manifest version 2 on both). Trees alternate A, B, A, B, ... so drift on a
shared machine spreads over both; the ratio is the median of each B over the A before it.

    git archive <base> | tar -x -C /tmp/base
    python benchmarks/static_unchanged.py --base /tmp/base --rounds 5 --markdown out.md

``--other TREE`` (repeatable) adds trees to each round (A, B, C, ...), each against the A of its
round: a variant of this tree measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]

_CLIENT = """
import json, sys, time, numpy as np, corepipe
path, seconds, backend = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with corepipe.load(path, backend=backend) as pipe:
    feeds = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype) if np.dtype(s.dtype).kind == "f"
             else np.zeros(s.shape, s.dtype) for s in pipe.plan.inputs}
    list(pipe.map([feeds] * 20))  # warm
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        list(pipe.map([feeds] * 50))
        n += 50
    elapsed = time.perf_counter() - start
    print(json.dumps({"rps": n / elapsed, "p99_ms": pipe.stats().latency_p99_s * 1e3}))
"""

_COMPILE = """
import sys, corepipe
from corepipe.zoo import get
name, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, feeds = get(name)
corepipe.compile(model, out, example_inputs=feeds, num_cores=n)
"""


def _run(tree: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the baseline tree (git archive of the commit before)")
    ap.add_argument("--models", default="mlp,resnet50", help="zoo models, comma-separated")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--backend", default="local",
                    help="local (processes), or inline (one process: the per-request CPU alone, no scheduling noise)")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--other", type=Path, action="append", default=[], help="another tree to measure in each round")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="static-unchanged-") as tmp:
        for name in args.models.split(","):
            art = Path(tmp) / name
            _run(args.base, _COMPILE, name, str(art), str(args.cores))
            trees = [HERE, *args.other]
            base: list[dict[str, float]] = []
            new: list[list[dict[str, float]]] = [[] for _ in trees]
            ratios: list[list[float]] = [[] for _ in trees]
            for _ in range(args.rounds):
                a = json.loads(_run(args.base, _CLIENT, str(art), str(args.seconds), args.backend))
                base.append(a)
                for i, tree in enumerate(trees):
                    b = json.loads(_run(tree, _CLIENT, str(art), str(args.seconds), args.backend))
                    new[i].append(b)
                    ratios[i].append(b["rps"] / a["rps"])
            for i, tree in enumerate(trees):
                label = f"{name} ({args.backend})" + ("" if i == 0 else f" {tree}")
                row = {
                    "model": label, "base_rps": statistics.median(r["rps"] for r in base),
                    "new_rps": statistics.median(r["rps"] for r in new[i]), "ratio": statistics.median(ratios[i]),
                    "ratios": [round(r, 3) for r in ratios[i]],
                    "base_p99_ms": statistics.median(r["p99_ms"] for r in base),
                    "new_p99_ms": statistics.median(r["p99_ms"] for r in new[i]),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = ["| model | before req/s | after req/s | after / before (median of rounds) | rounds | p99 before / after ms |",
             "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['base_rps']:,.1f} | {r['new_rps']:,.1f} | {r['ratio']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in r['ratios'])} | {r['base_p99_ms']:.2f} / {r['new_p99_ms']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
