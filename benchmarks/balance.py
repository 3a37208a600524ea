"""Balance: corepipe's solver against the cuts a user would make by hand, on real architectures.

For each model and stage count N, three plans of N contiguous stages:

- ``corepipe``: the solver's plan (min slowest stage, by the analytic cost model);
- ``nodes``: equal node counts per stage;
- ``params``: equal weight bytes per stage (greedy prefix: stage s ends at the first node where
  the bytes of the weights first used so far reach ``(s + 1) / N`` of the model's).

Each plan is scored by the same cost model the solver uses (``solver.stage_costs`` with the
target's links: hand-off in + compute + hand-off out), as its slowest stage, that stage's
ratio to corepipe's, and the largest stage's resident weight bytes (a weight read by several
stages counts in each). With ``--measure``, each plan's stages are also timed on one core
(``corepipe.compiler.cut.measure.time_stages``: one onnxruntime thread, median of ``--repeats`` runs; compute
only, no hand-off) for N in ``--measure-cores``, and the slowest measured stage is reported.

    python benchmarks/balance.py                              # estimates, every model
    python benchmarks/balance.py --models resnet50 bert --measure --out balance.md
    python benchmarks/balance.py --skip-export                # zoo models only

Measure on an idle machine: other processes on the core inflate stage times unevenly.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from corepipe import zoo
from corepipe.artifact.target import Target, resolve_target
from corepipe.compiler.cut import solver
from corepipe.compiler.cut.cost import estimate_node_seconds
from corepipe.compiler.cut.partition import links_for, make_problem
from corepipe.compiler.model.graph import ModelGraph, analyze

MiB = 2**20
PLANS = ("corepipe", "nodes", "params")

Loaded = tuple[onnx.ModelProto | str, dict[str, np.ndarray]]
# name -> loader(workdir): (model or .onnx path, example inputs)
MODELS: dict[str, Callable[[Path], Loaded]] = {
    "resnet50": lambda d: zoo.get("resnet50", image_size=224),
    "densenet121": lambda d: zoo.get("densenet121", image_size=224),
    "inception_v1": lambda d: zoo.get("inception_v1", image_size=224),
    "bert": lambda d: zoo.get("bert", num_layers=12, seq=128),
}
EXPORTS = {"hf_bert": "bert", "hf_gpt2": "gpt2"}  # transformers BERT-base and GPT-2 small


def _export(arch: str) -> Callable[[Path], Loaded]:
    def load(workdir: Path) -> Loaded:
        from corepipe.frontends import export_transformers

        path, feeds = export_transformers(arch, workdir / f"{arch}.onnx", seq=128)
        return str(path), feeds

    return load


MODELS.update({name: _export(arch) for name, arch in EXPORTS.items()})


# ----------------------------------------------------------------------------- baseline cuts
def node_count_cut(n: int, k: int) -> list[int]:
    """``[0, b1, ..., n]`` with equal node counts per stage (floor division; ``k <= n``)."""
    return [i * n // k for i in range(k + 1)]


def weight_bytes_cut(graph: ModelGraph, k: int) -> list[int]:
    """``[0, b1, ..., n]`` with equal weight bytes per stage, by a greedy prefix.

    A weight counts at its first use. Stage ``s`` ends right after the node where the bytes so
    far reach ``(s + 1) / k`` of the total; every stage keeps at least one node.
    """
    n = graph.n
    seen: set[str] = set()
    first_use = np.zeros(n)
    for node in graph.nodes:
        new = [w for w in node.weights if w not in seen]
        seen.update(new)
        first_use[node.index] = sum(graph.weight_bytes[w] for w in new)
    prefix = np.concatenate([[0.0], np.cumsum(first_use)])  # prefix[p]: bytes of nodes < p
    bounds = [0]
    for s in range(1, k):
        p = int(np.searchsorted(prefix, prefix[-1] * s / k, side="left"))
        bounds.append(min(max(p, bounds[-1] + 1), n - (k - s)))
    bounds.append(n)
    return bounds


# ------------------------------------------------------------------------------------ scoring
@dataclass
class Row:
    """One model at one stage count: each plan's bounds, slowest stage and largest stage."""

    model: str
    cores: int
    bounds: dict[str, list[int]]
    estimated_s: dict[str, float]
    max_resident: dict[str, int]
    measured_s: dict[str, float] = field(default_factory=dict)


def score(
    name: str, graph: ModelGraph, feeds: Mapping[str, np.ndarray], target: Target,
    cores: Sequence[int], measure_cores: Sequence[int], repeats: int,
) -> list[Row]:
    """Plan, score and (for ``measure_cores``) time the three plans at every stage count."""
    problem = make_problem(graph, estimate_node_seconds(graph, target), target.core_memory)
    rows = []
    for k in cores:
        if k > graph.n:
            continue
        links = links_for(target, k)
        try:
            best = solver.solve(problem, k, links)
        except solver.Infeasible:
            print(f"{name}: no plan of {k} stages fits the core memory", file=sys.stderr)
            continue
        plans = {
            "corepipe": best,
            "nodes": node_count_cut(graph.n, k),
            "params": weight_bytes_cut(graph, k),
        }
        row = Row(name, k, plans, {}, {})
        for plan, bounds in plans.items():
            row.estimated_s[plan] = max(solver.stage_costs(problem, bounds, links))
            row.max_resident[plan] = max(
                solver.stage_memory(problem, bounds[s], bounds[s + 1]) for s in range(k)
            )
            if k in measure_cores:
                from corepipe.compiler.cut.measure import time_stages

                row.measured_s[plan] = max(time_stages(graph, bounds, feeds, repeats=repeats))
        rows.append(row)
    return rows


def _ratio(values: Mapping[str, float], plan: str) -> str:
    return f"{values[plan] / values['corepipe']:.2f}x"


def format_table(rows: Sequence[Row], capacity: int | None = None) -> str:
    """A Markdown table, one line per model and stage count."""
    measured = any(r.measured_s for r in rows)
    head = ["model", "N", "corepipe est. ms", "nodes", "params",
            "max stage MiB (cp / nodes / params)"]
    if measured:
        head += ["measured ms (cp / nodes / params)", "nodes", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mem = " / ".join(
            f"{r.max_resident[p] / MiB:.1f}" + ("*" if capacity and r.max_resident[p] > capacity else "")
            for p in PLANS
        )
        cells = [r.model, str(r.cores), f"{r.estimated_s['corepipe'] * 1e3:.2f}",
                 _ratio(r.estimated_s, "nodes"), _ratio(r.estimated_s, "params"), mem]
        if measured:
            if r.measured_s:
                cells += [" / ".join(f"{r.measured_s[p] * 1e3:.1f}" for p in PLANS),
                          _ratio(r.measured_s, "nodes"), _ratio(r.measured_s, "params")]
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nnodes / params: each baseline's slowest stage over corepipe's (estimated, then "
            "measured on one core); >1x means corepipe's plan is faster.")
    if capacity:
        note += f" * = over the core memory of {capacity / MiB:.0f} MiB."
    return "\n".join(lines) + note + "\n"


# --------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS),
                   help="models to plan (default: all; the hf_* ones are transformers exports)")
    p.add_argument("--cores", nargs="+", type=int, default=[2, 4, 8, 16], help="stage counts")
    p.add_argument("--skip-export", action="store_true",
                   help="skip the transformers exports (hf_bert, hf_gpt2)")
    p.add_argument("--measure", action="store_true",
                   help="also time each plan's stages on one core (slow; use an idle machine)")
    p.add_argument("--measure-cores", nargs="+", type=int, default=[2, 4],
                   help="stage counts to time with --measure")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per stage (median)")
    p.add_argument("--target", default="cpu", help="corepipe target name (cpu, inf1)")
    p.add_argument("--core-memory", default=None,
                   help="core memory for the solver (e.g. 64MiB); default: the target's")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    return p.parse_args(argv)


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    target = resolve_target(args.target, args.core_memory)
    names = [m for m in args.models if m not in EXPORTS or not args.skip_export]
    if any(m in EXPORTS for m in names) and not _have_torch():
        print("torch/transformers not installed: skipping the transformers exports", file=sys.stderr)
        names = [m for m in names if m not in EXPORTS]
    measure_cores = args.measure_cores if args.measure else []
    if measure_cores and os.getloadavg()[0] > 1.5:
        print(f"warning: load average {os.getloadavg()[0]:.2f}; measured times will be noisy",
              file=sys.stderr)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="corepipe-balance-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            model, feeds = MODELS[name](Path(tmp))
            graph = analyze(model, feeds)
            del model
            rows += score(name, graph, feeds, target, args.cores, measure_cores, args.repeats)
            print(f"{name}: {graph.n} nodes, {sum(graph.weight_bytes.values()) / MiB:.1f} MiB "
                  f"of weights, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            del graph
    capacity = target.core_memory if args.core_memory is not None else None
    table = format_table(rows, capacity)
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
