"""`corepipe.tune` from Python is what `corepipe tune` prints: one library run on a small built-in
model, then the command line's own renderings of that very result (its table, `corepipe inspect`
on the artifact, `tune.json`), checked figure by figure: the chosen plan, each point's req/s and
ratio to the best peer.

    python benchmarks/tune_library.py [--model mlp] [--cores 2] [--seconds 1] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
from rich.console import Console

import corepipe
from corepipe.cli.tunecmd import points_table
from corepipe.tune.result import num


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corepipe-tunelib-") as tmp:
        out = Path(tmp) / "tuned"
        result = corepipe.tune(f"zoo:{args.model}", out, num_cores=args.cores, seconds=args.seconds)
        console = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(points_table(result.points, chosen=result.chosen, width=200))
        table = console.export_text().splitlines()
        best = max(p.req_per_s for p in result.peers)
        checks = []
        for p in result.points:
            name = p.name if p.candidate is None else f"corepipe {p.name}"
            line = next(x for x in table if name in x)
            want = [num(p.req_per_s), f"{p.req_per_s / best:.2f}", num(p.p50_s * 1e3)]
            assert all(w in line for w in want), (line, want)
            assert ("★" in line) == (p is result.chosen), line
            checks.append(f"{p.name}: {want[0]} req/s, {want[1]}x best peer, p50 {want[2]} ms")
        shown = subprocess.run([sys.executable, "-m", "corepipe", "inspect", str(out)], capture_output=True,
                               text=True, check=True).stdout
        ch = result.chosen
        deployment = next(x for x in shown.splitlines() if x.startswith("deployment:"))
        assert f"{ch.replicas} replica" in deployment and f"{ch.req_per_s:,.4g} req/s" in deployment, deployment
        figures = json.loads((out / "tune.json").read_text())
        assert figures["chosen"] == ch.name
        assert figures["vs_best_peer_throughput"] == ch.req_per_s / best
        lines = [result.to_markdown(f"python benchmarks/tune_library.py --model {args.model} --cores {args.cores} "
                                    f"--seconds {args.seconds:g}"),
                 "The library's result, as the command line renders it (every point checked in its table row: "
                 "req/s, x best peer, p50, the ★ on the chosen plan only):", "",
                 *[f"- {c}" for c in checks], "",
                 f"`corepipe inspect` on the artifact `corepipe.tune` wrote: `{deployment}`; tune.json's chosen: "
                 f"`{figures['chosen']}`, vs best peer {figures['vs_best_peer_throughput']:.3f}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
