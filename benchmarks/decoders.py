"""Decoders against their peers (issue 25): tokens/s, time to first token, inter-token p50/p99
and RSS, for prompts of 32 tokens and of mixed lengths, 64 new tokens, 1/8/16 sequences at once.

Every peer runs in its own process and python (`decoder_workers`), all loaded at once, and each
configuration runs each peer in turn (the order rotating each round: same run, alternating):

- ``ort``, ``ov``: onnxruntime's and OpenVINO's whole-model Python loops on the same ONNX, all
  sequences as one batch tensor;
- ``ortgenai``: onnxruntime-genai 0.18 on the same ONNX (a hand-written genai_config.json);
- ``ovgenai``: openvino-genai 2026.4 ``LLMPipeline`` on optimum-intel's fp32 export of the same
  weights, a batch of prompts in one ``generate`` call;
- ``corepipe`` (``--stages`` stages x 1 thread) and ``corepipe-1x2`` (1 stage x 2 threads, what
  a latency plan may pick for 1 sequence): ``pipe.generate`` from one thread per sequence on an
  artifact compiled from the same ONNX (where this tree has it; else the rows say "not available");
  ``corepipe-ov``: as ``corepipe`` with every stage on OpenVINO; ``corepipe-before``: as
  ``corepipe`` from another checkout (``COREPIPE_BEFORE_TREE``), for before/after in one run.

All fp32 (OpenVINO's CPU plugin would pick bf16 on this AMX CPU: ``INFERENCE_PRECISION_HINT=f32``).
The peers' venvs come from ``bash benchmarks/decoder_peers.sh``. Also measured: what bounds batch 1
(weight bytes read per token against this machine's memory read bandwidth). Run it alone::

    flock /tmp/corepipe-bench.lock python benchmarks/decoders.py --rounds 3 --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `tests.decoders`, the corpus: this file shares its module name
from decoder_bound import bandwidth_gbs, weight_bytes_per_token
from decoder_prep import PYTHONS, prepare

from tests import decoders

PEERS = ["ort", "ov", "ortgenai", "ovgenai", "corepipe", "corepipe-ov", "corepipe-before", "corepipe-1x2"]
LABELS = {"ort": "onnxruntime, whole model, Python loop (one batch tensor)",
          "ov": "OpenVINO, whole model, Python loop (one batch tensor)",
          "ortgenai": "onnxruntime-genai 0.18", "ovgenai": "openvino-genai 2026.4 LLMPipeline",
          "corepipe": "corepipe pipe.generate, {stages} stages x 1 thread",
          "corepipe-ov": "corepipe pipe.generate, {stages} stages x 1 thread, every stage on OpenVINO",
          "corepipe-before": "corepipe pipe.generate, {stages} stages x 1 thread, the tree in COREPIPE_BEFORE_TREE",
          "corepipe-1x2": "corepipe pipe.generate, 1 stage x 2 threads"}


class Worker:
    """One peer's process: loaded once, then one request a line."""

    def __init__(self, peer: str, model_dir: Path, threads: int, stages: int) -> None:
        self.peer = peer
        script = HERE / "decoder_workers.py"
        if peer == "corepipe-before":  # another checkout's corepipe (COREPIPE_BEFORE_TREE), same harness
            script, peer = Path(os.environ["COREPIPE_BEFORE_TREE"]) / "benchmarks" / "decoder_workers.py", "corepipe"
        self.proc = subprocess.Popen([PYTHONS[peer], str(script), peer, str(model_dir),
                                      str(threads), str(stages)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self._read()
        self.error = ready.get("error")
        self.load_s = ready.get("load_s")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return {"error": f"{self.peer}: the worker exited (code {self.proc.wait()}); see its stderr above"}
            if line.startswith("{"):
                return dict(json.loads(line))

    def run(self, prompts: list[list[int]], new: int) -> dict[str, Any]:
        if self.error:
            return {"error": self.error}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"prompts": prompts, "new": new}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def workloads(vocab: int, seed: int) -> dict[str, Any]:
    """name -> (concurrency -> prompts): 32 tokens each, or mixed lengths (8..128, seeded)."""
    rng = np.random.default_rng(seed)
    mixed = rng.integers(8, 129, 16).tolist()
    return {"32": {c: decoders.prompts(vocab, c, 32, seed=seed + c) for c in (1, 8, 16)},
            "mixed": {c: decoders.prompts(vocab, c, mixed[:c], seed=seed + c) for c in (1, 8, 16)}}


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of one (workload, concurrency, peer) over its rounds."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error", "no run") if runs else "no run"}
    tps = [r["tokens"] / r["wall"] for r in ok]
    return {"tok_s": float(np.median(tps)), "tok_s_range": (min(tps), max(tps)),
            "ttft_ms": 1e3 * _pct([t for r in ok for t in r["ttft"]], 50),
            "itl_p50_ms": 1e3 * _pct([t for r in ok for t in r["itl"]], 50),
            "itl_p99_ms": 1e3 * _pct([t for r in ok for t in r["itl"]], 99),
            "cpu_ms_tok": 1e3 * float(np.median([r["cpu"] / r["tokens"] for r in ok])),
            "rss_mib": max(r["rss"] for r in ok) / 2**20, "maxrss_mib": max(r["maxrss"] for r in ok) / 2**20,
            "tokens": ok[0]["tokens"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = prepare(args.model, args.peers)
    vocab = decoders.RECIPES[args.model]["vocab"]
    loads = workloads(vocab, seed=7)
    workers = {}
    for p in args.peers:
        workers[p] = Worker(p, model_dir, args.threads, args.stages)
        print(f"{p}: {'ERROR ' + str(workers[p].error) if workers[p].error else f'loaded in {workers[p].load_s:.1f} s'}",
              flush=True)
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    agree: dict[tuple[str, int, str], list[float]] = {}
    try:
        for w in workers.values():  # warm-up: every engine's first calls, every batch size
            for c in args.concurrency:
                w.run(loads["mixed"][c], 4)
        for rnd in range(args.rounds):
            for load in args.workloads:
                for c in args.concurrency:
                    order = args.peers[rnd % len(args.peers):] + args.peers[:rnd % len(args.peers)]
                    outs = {}
                    for p in order:
                        r = workers[p].run(loads[load][c], args.new)
                        results.setdefault((load, c, p), []).append(r)
                        outs[p] = r.get("out")
                        print(f"round {rnd} {load:>5} x{c:<2} {p:>9}: "
                              + (r["error"] if "error" in r else
                                 f"{r['tokens'] / r['wall']:8.1f} tok/s ttft {1e3 * float(np.median(r['ttft'])):7.1f} ms"),
                              flush=True)
                    ref = outs.get("ort")
                    for p, o in outs.items():  # share of the sequences whose greedy tokens equal ort's
                        if ref is not None and o is not None:
                            agree.setdefault((load, c, p), []).append(
                                float(np.mean([a == b for a, b in zip(o, ref, strict=True)])))
    finally:
        for w in workers.values():
            w.close()
    summary = {k: summarise(v) for k, v in results.items()}
    ratios = {}
    for (load, c, p), runs in results.items():
        base = results.get((load, c, "ovgenai"), [])
        rs = [r["tokens"] / r["wall"] / (b["tokens"] / b["wall"]) for r, b in zip(runs, base, strict=False)
              if "error" not in r and "error" not in b]
        ratios[(load, c, p)] = (float(np.median(rs)), min(rs), max(rs)) if rs else None
    return {"summary": summary, "ratios": ratios, "agree": agree, "model_dir": model_dir}


def markdown(args: argparse.Namespace, res: dict[str, Any], bound: dict[str, float]) -> str:
    lines = [f"Model `{args.model}` ({json.dumps(decoders.RECIPES[args.model])}), fp32, greedy, {args.new} new tokens, "
             f"{args.rounds} rounds alternating (order rotated each round), {args.threads} threads per peer, "
             f"corepipe {args.stages} stages. Machine shared with other engineers' tests: compare within a row's "
             "run only. Figures: median tok/s over rounds (range), TTFT and inter-token pooled over rounds; "
             "RSS of the peer's process (corepipe: itself + its workers) after its runs; CPU ms per token: "
             "CPU time of the peer's processes (all threads) over the tokens made, median of rounds (the cost "
             "that a shared machine's wall clock hides); 'same' = share of sequences whose tokens equal the "
             "onnxruntime loop's.", "",
             "| prompts | seqs | peer | tok/s (range) | x ovgenai | TTFT p50 ms | ITL p50 / p99 ms | CPU ms/tok | RSS MiB | same |",
             "|---|---:|---|---|---:|---:|---|---:|---:|---:|"]
    for load in args.workloads:
        for c in args.concurrency:
            for p in args.peers:
                s = res["summary"].get((load, c, p), {"error": "not run"})
                if "error" in s:
                    lines.append(f"| {load} | {c} | {LABELS[p].format(stages=args.stages)} | not available: {s['error'][:160]} | | | | | | |")
                    continue
                r = res["ratios"].get((load, c, p))
                ag = res["agree"].get((load, c, p))
                lines.append(
                    f"| {load} | {c} | {LABELS[p].format(stages=args.stages)} | {s['tok_s']:.1f} ({s['tok_s_range'][0]:.1f}-{s['tok_s_range'][1]:.1f}) | "
                    f"{f'{r[0]:.2f}' if r else '-'} | {s['ttft_ms']:.1f} | {s['itl_p50_ms']:.2f} / {s['itl_p99_ms']:.2f} | "
                    f"{s['cpu_ms_tok']:.2f} | {s['rss_mib']:.0f} | {f'{min(ag):.2f}' if ag else '-'} |")
    floor = 1e3 / bound["tps_cpu"]
    lines += ["", f"What bounds batch 1: each decode step reads {bound['weights_mib']:.1f} MiB of weights "
              f"({bound['params_m']:.1f} M parameters in all; an embedding table is read one row a token). "
              f"One core reads {bound['bw_cpu1']:.1f} GB per CPU second here (a matrix-vector product over 512 MiB; "
              f"{bound['bw_cpu2']:.1f} each with 2 at once; wall-clock {bound['bw1']:.1f} and {bound['bw2']:.1f} GB/s "
              f"on this shared machine), so a token costs at least {floor:.2f} CPU ms: at most "
              f"{bound['tps_cpu']:.0f} tokens/s per core, {2 * bound['tps_cpu2']:.0f} for 2 cores reading at once."]
    for p in args.peers:
        one, eight = res["summary"].get(("32", 1, p), {}), res["summary"].get(("32", 8, p), {})
        if "cpu_ms_tok" in one:
            line = (f"- {LABELS[p].format(stages=args.stages)}: {one['cpu_ms_tok']:.2f} CPU ms per token at 1 sequence "
                    f"({floor / one['cpu_ms_tok']:.2f} of the bandwidth floor)")
            if "cpu_ms_tok" in eight:
                step8 = 8 * eight["cpu_ms_tok"]
                line += f"; a step of 8 sequences costs {step8:.1f} CPU ms, {step8 / one['cpu_ms_tok']:.1f}x a step of 1"
            lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-bench", choices=sorted(decoders.RECIPES))
    ap.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    ap.add_argument("--workloads", nargs="+", default=["32", "mixed"], choices=["32", "mixed"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 16])
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", type=int, default=2, help="corepipe's stages")
    ap.add_argument("--markdown", type=Path, help="write the section's table here")
    args = ap.parse_args(argv)
    t0 = time.time()
    res = run(args)
    wb, params = weight_bytes_per_token(res["model_dir"] / "model.onnx")
    (bw1, cpu1), (bw2, cpu2) = bandwidth_gbs(1), bandwidth_gbs(2)
    bound = {"weights_mib": wb / 2**20, "params_m": params / 1e6, "bw1": bw1, "bw2": bw2,
             "bw_cpu1": cpu1, "bw_cpu2": cpu2, "tps_cpu": cpu1 * 1e9 / wb, "tps_cpu2": cpu2 * 1e9 / wb}
    text = markdown(args, res, bound) + f"\n(`python benchmarks/decoders.py {' '.join(argv)}`, {time.time() - t0:.0f} s)\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
