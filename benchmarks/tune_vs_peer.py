"""`corepipe.tune`'s chosen plan against the best peer, and the 2-stage pipeline against OpenVINO
THROUGHPUT, in one run on the same cores (issue 16, part 2's targets).

One `corepipe.tune` call (a library call: the peers and every candidate measured in turn on the
same inputs), then the ratios the targets name, to three decimals:

- the chosen plan over the best peer (OpenVINO THROUGHPUT or LATENCY, onnxruntime shared session
  or K sessions, onnxruntime K threads), target >= 1.0;
- the 1r x 2s x 1t pipeline over OpenVINO THROUGHPUT at the same precision, target >= 0.97.

    python benchmarks/tune_vs_peer.py MODEL.onnx --inputs feeds.npz --precision bf16 --markdown out.md
    python benchmarks/tune_vs_peer.py zoo:resnet50 --precision fp32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
import corepipe


def _engine_table(cm: corepipe.CompiledModel) -> list[str]:
    """Per stage of the chosen plan: each engine's one-core time, the engine chosen and why."""
    rows = ["| stage | onnxruntime fp32 ms (1 thread) | openvino ms (1 thread) | chosen | why |",
            "|---|---:|---:|---|---|"]
    for st in cm.stages:
        t = st.engine_s or {}
        ms = [f"{t[e] * 1e3:.2f}" if e in t else "-" for e in ("onnxruntime", "openvino")]
        rows.append(f"| {st.index} | {ms[0]} | {ms[1]} | {st.engine} {st.precision} | {st.engine_why} |")
    return rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an .onnx path or zoo:NAME")
    ap.add_argument("--inputs", type=Path, help="an .npz of the request (default: the zoo's, or random)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--balance", default="load")
    ap.add_argument("--markdown", type=Path, help="append the section here")
    args = ap.parse_args(argv)
    feeds = None
    if args.inputs is not None:
        with np.load(args.inputs) as npz:
            feeds = {k: npz[k] for k in npz.files}
    with tempfile.TemporaryDirectory(prefix="corepipe-tunepeer-") as tmp:
        result = corepipe.tune(args.model, Path(tmp) / "tuned", num_cores=args.cores, precision=args.precision,
                               seconds=args.seconds, repeats=args.repeats, balance=args.balance,
                               example_inputs=feeds)
        engines = _engine_table(corepipe.CompiledModel.open(Path(tmp) / "tuned"))
    peers = result.peers
    best = max(peers, key=lambda p: p.req_per_s)
    ovt = next((p for p in peers if "THROUGHPUT" in p.name.upper()), None)
    pipe = next((p for p in result.candidates if p.candidate is not None and (p.candidate.replicas, p.candidate.stages, p.candidate.threads) == (1, 2, 1)),
                None)
    command = " ".join(["python benchmarks/tune_vs_peer.py", *argv])
    lines = [result.to_markdown(command),
             f"- chosen {result.chosen.name}: {result.chosen.req_per_s:.2f} req/s, best peer {best.name} "
             f"{best.req_per_s:.2f}: **{result.chosen.req_per_s / best.req_per_s:.3f}x** (target >= 1.0)"]
    if pipe is not None and ovt is not None:
        lines.append(f"- 2-stage pipeline {pipe.name}: {pipe.req_per_s:.2f} req/s, {ovt.name} {ovt.req_per_s:.2f}: "
                     f"**{pipe.req_per_s / ovt.req_per_s:.3f}x** (target >= 0.97)")
    lines += ["", f"The chosen plan's engines ({result.chosen.name}):", "", *engines]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
