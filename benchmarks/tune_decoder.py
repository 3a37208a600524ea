"""`corepipe tune` on a decoder against openvino-genai (issue 25's targets): tune's latency pick
at 1 sequence >= 0.9x openvino-genai tokens/s, its throughput pick at 16 sequences >= 1.0x.

1. ``corepipe.tune`` on the bench GPT-2 (`tests/decoders.py` ``gpt2-bench``), 2 cores, once with
   ``objective="latency"`` (1 sequence) and once with ``objective="throughput"`` (16 sequences),
   32-token prompts, 64 new tokens: tune's own tables (its peer: onnxruntime's whole-model loop).
2. The two artifacts tune wrote, loaded as a user would (``corepipe.load(ART)``: the deployment
   from the artifact), against openvino-genai 2026.4 ``LLMPipeline`` (optimum-intel's fp32 export of
   the same weights) and onnxruntime's loop, each in its own process (`decoder_workers`), at 1 and
   16 sequences, each round every peer in turn, the order rotated each round (same run,
   alternating). Greedy, EOS ignored, fp32.

Run it alone (the peers' venvs from ``bash benchmarks/decoder_peers.sh``)::

    flock /tmp/corepipe-bench.lock python benchmarks/tune_decoder.py --rounds 3 --markdown out.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
_spec = importlib.util.spec_from_file_location("bench_decoders", HERE / "decoders.py")  # not tests/decoders.py
assert _spec is not None and _spec.loader is not None
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
Worker, summarise = _bench.Worker, _bench.summarise
from decoder_prep import prepare

import corepipe
from tests import decoders as corpus

PEERS = {"ovgenai": "openvino-genai 2026.4 LLMPipeline, 2 threads",
         "ort": "onnxruntime, whole model, Python loop, 2 threads (one batch tensor)",
         "latency": "corepipe, tune's latency pick ({plan})",
         "throughput": "corepipe, tune's throughput pick ({plan})"}


def tune_both(model: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """objective -> (TuneResult, its Markdown)."""
    out = {}
    for objective in ("latency", "throughput"):
        t0 = time.time()
        r = corepipe.tune(model, work / objective, num_cores=2, objective=objective, seconds=args.seconds,
                          repeats=args.repeats, sequences=16, prompt_tokens=32, new_tokens=args.new, max_length=256,
                          progress=lambda m, d, t: print(f"  tune {d}/{t}: {m}", flush=True))
        cmd = (f"corepipe.tune(gpt2-bench, num_cores=2, objective={objective!r}, seconds={args.seconds}, "
               f"repeats={args.repeats}, sequences=16, prompt_tokens=32, new_tokens={args.new}, max_length=256)")
        out[objective] = (r, r.to_markdown(cmd))
        print(out[objective][1], f"({time.time() - t0:.0f} s)", flush=True)
    return out


def reused(work: Path) -> dict[str, Any]:
    """objective -> (the TuneResult's stand-in, a line): the artifacts an earlier run kept."""
    out = {}
    for objective in ("latency", "throughput"):
        data = json.loads((work / objective / "tune.json").read_text())
        chosen = argparse.Namespace(chosen=argparse.Namespace(name=data["chosen"]))
        out[objective] = (chosen, f"(tune's {objective} pick reused from {work / objective}: {data['chosen']}, "
                                  f"{data['workload']})")
    return out


def alternate(model_dir: Path, arts: dict[str, Path], args: argparse.Namespace) -> dict[tuple[int, str], list[Any]]:
    """(sequences, peer) -> the runs of every round."""
    vocab = corpus.RECIPES[args.model]["vocab"]
    loads = {c: corpus.prompts(vocab, c, 32, seed=11 + c) for c in (1, 16)}
    workers = {"ovgenai": Worker("ovgenai", model_dir, 2, 1), "ort": Worker("ort", model_dir, 2, 1)}
    for objective, art in arts.items():
        workers[objective] = Worker("corepipe-tuned", art, 2, 1)
    for name, w in workers.items():
        print(f"{name}: {'ERROR ' + str(w.error) if w.error else f'loaded in {w.load_s:.1f} s'}", flush=True)
    results: dict[tuple[int, str], list[Any]] = {}
    names = list(workers)
    try:
        for w in workers.values():  # warm-up: every engine's first calls, both batch sizes
            for c in loads:
                w.run(loads[c], 4)
        for rnd in range(args.rounds):
            for c in loads:
                for p in names[rnd % len(names):] + names[:rnd % len(names)]:
                    r = workers[p].run(loads[c], args.new)
                    results.setdefault((c, p), []).append(r)
                    print(f"round {rnd} x{c:<2} {p:>10}: " + (r["error"] if "error" in r else
                          f"{r['tokens'] / r['wall']:8.1f} tok/s ttft {1e3 * float(np.median(r['ttft'])):7.1f} ms"),
                          flush=True)
    finally:
        for w in workers.values():
            w.close()
    return results


def markdown(args: argparse.Namespace, tuned: dict[str, Any], results: dict[tuple[int, str], list[Any]]) -> str:
    plans = {o: tuned[o][0].chosen.name for o in tuned}
    lines = [f"Model `{args.model}` ({json.dumps(corpus.RECIPES[args.model])}), fp32, greedy, 32-token prompts, "
             f"{args.new} new tokens; 2 cores. Machine shared with other engineers' tests.", ""]
    for objective in ("latency", "throughput"):
        lines += [tuned[objective][1].replace("### tune ", f"#### tune ({objective}) "), ""]
    lines += [f"Then tune's two artifacts loaded as written (`corepipe.load(ART)`) against the peers, {args.rounds} "
              "rounds alternating (order rotated each round), each peer in its own process. Ratios: per round, "
              "against openvino-genai's run of the same round (median, range); 'same': share of sequences whose "
              "tokens equal the onnxruntime loop's.", "",
              "| seqs | peer | tok/s (range) | x ovgenai (range) | TTFT p50 ms | x ovgenai TTFT | ITL p50 / p99 ms "
              "| CPU ms/tok | same |",
              "|---:|---|---|---|---:|---:|---|---:|---:|"]
    for c in (1, 16):
        base = results.get((c, "ovgenai"), [])
        ref = results.get((c, "ort"), [])
        bs = summarise(base) if base else {"error": "not run"}
        for p in ("latency", "throughput", "ovgenai", "ort"):
            runs = results.get((c, p), [])
            s = summarise(runs) if runs else {"error": "not run"}
            label = PEERS[p].format(plan=plans.get(p, "?"))
            if "error" in s:
                lines.append(f"| {c} | {label} | not available: {s['error'][:160]} | | | | | | |")
                continue
            rs = [r["tokens"] / r["wall"] / (b["tokens"] / b["wall"]) for r, b in zip(runs, base, strict=False)
                  if "error" not in r and "error" not in b]
            ratio = f"{np.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})" if rs else "-"
            same = [float(np.mean([a == b for a, b in zip(r["out"], q["out"], strict=True)]))
                    for r, q in zip(runs, ref, strict=False) if "out" in r and "out" in q]
            tt = f"{s['ttft_ms'] / bs['ttft_ms']:.2f}" if "error" not in bs else "-"
            lines.append(f"| {c} | {label} | {s['tok_s']:.1f} ({s['tok_s_range'][0]:.1f}-{s['tok_s_range'][1]:.1f}) "
                         f"| {ratio} | {s['ttft_ms']:.1f} | {tt} | {s['itl_p50_ms']:.2f} / {s['itl_p99_ms']:.2f} "
                         f"| {s['cpu_ms_tok']:.2f} | {f'{min(same):.2f}' if same else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-bench", choices=sorted(corpus.RECIPES))
    ap.add_argument("--seconds", type=float, default=4.0, help="tune's seconds per measurement")
    ap.add_argument("--repeats", type=int, default=1, help="tune's repeats")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the tuned artifacts here (default: a temporary directory)")
    ap.add_argument("--markdown", type=Path, help="write the section here")
    ap.add_argument("--reuse", type=Path, help="skip tuning: the artifacts an earlier run kept (--keep DIR)")
    args = ap.parse_args(argv)
    t0 = time.time()
    model_dir = prepare(args.model, ["ovgenai"])
    with tempfile.TemporaryDirectory(prefix="corepipe-tunedec-") as tmp:
        work = args.reuse or args.keep or Path(tmp)
        tuned = reused(work) if args.reuse else tune_both(model_dir / "model.onnx", work, args)
        results = alternate(model_dir, {o: work / o for o in tuned}, args)
    text = markdown(args, tuned, results) + (f"\n(`python benchmarks/tune_decoder.py {' '.join(argv)}`, "
                                             f"{time.time() - t0:.0f} s)\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
