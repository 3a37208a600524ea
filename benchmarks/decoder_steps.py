"""One decode step batched over 8 sequences against 8 steps of one, per stage and engine, and what
the KV copies cost (issue 25: continuous batching by right-padded past + masks).

In this process (no workers): the stages of a decoder artifact, each as `DecoderStage` on
OpenVINO (the compiler's choice) and on onnxruntime, 8 sequences prefilled with prompts of
mixed lengths, then rounds of A (8 decode steps of batch 1), B (one decode step of batch 8, its
past gathered out of the store) and K (the next decode step of the same 8, its past the presents
B kept: no gather), in turn A B K / B K A, every sequence's past growing by two tokens a round.
Reported: median milliseconds per round of A, B and K, A / B, B / K, and the share of B's stage
time spent gathering the past out of the store and scattering the new positions back. ``openvino-copy``: OpenVINO with its outputs (the
presents: the whole past again) copied out each step, as `Engine.run` does; ``openvino`` reads
them in place (`Engine.run_shared`). Run it alone::

    flock /tmp/corepipe-bench.lock python benchmarks/decoder_steps.py [gpt2-bench] [--stages 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from decoders import decoder_model, prompts

import corepipe
from corepipe.artifact.manifest import open_artifact
from corepipe.engines.base import engine_class
from corepipe.runtime.sequences.header import TOKENS, header
from corepipe.runtime.sequences.sampling import Sampling
from corepipe.runtime.sequences.stage import DecoderStage


def stages_on(art: Path, engine: str) -> list[DecoderStage]:
    a = open_artifact(art)
    plan, spec = a.plan, a.plan.decoder
    assert spec is not None
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, st in enumerate(plan.stages):
            (Path(tmp) / str(k)).mkdir()
            path = a.copy_stage(k, Path(tmp) / str(k))
            eng = engine_class(engine)(str(path), inputs=st.inputs, outputs=st.outputs, threads=1, spin=False)
            out.append(DecoderStage(eng, spec, spec.pairs_of(k), last=k == plan.num_cores - 1))
    return out


def run(stages: list[DecoderStage], head: np.ndarray, ids: np.ndarray) -> np.ndarray:
    tensors = {"input_ids": ids}
    for s in stages:
        tensors = s.step(head, tensors)
    return tensors[TOKENS]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="gpt2-bench")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--engines", nargs="+", default=["openvino", "onnxruntime"],
                    choices=["openvino", "openvino-copy", "onnxruntime"])
    args = ap.parse_args()
    how = Sampling()
    with tempfile.TemporaryDirectory() as tmp:
        art = corepipe.compile(decoder_model(args.model), Path(tmp) / "art", num_cores=args.stages,
                               max_sequences=16, max_length=256).path
        for engine in args.engines:
            stages = stages_on(art, engine.removesuffix("-copy"))
            if engine.endswith("-copy"):  # presents copied out of OpenVINO's memory, as `run` does
                for s in stages:
                    s.engine.run_shared = s.engine.run  # type: ignore[method-assign]
            batch = prompts(8192 if "bench" in args.model else 1000, 8, [32, 20, 45, 32, 9, 60, 32, 27], seed=2)
            toks = [[int(run(stages, header([(i, i, 0, len(p), how)]), np.array([p])) [0])] for i, p in enumerate(batch)]
            past = [len(p) for p in batch]
            ms: dict[str, list[float]] = {"A": [], "B": [], "K": []}
            copy = []
            for r in range(args.rounds):
                # A: 8 steps of batch 1; B: a batch-8 step gathering its past from the store; K: a
                # batch-8 step right after one of the same rows, its past the kept presents
                for mode in ("A", "B", "K") if r % 2 == 0 else ("B", "K", "A"):
                    t0 = time.perf_counter()
                    if mode == "A":
                        for i in range(8):
                            run(stages, header([(i, i, past[i], 1, how)]), np.array([[toks[i][-1]]]))
                        # the same tokens again below, at the same positions: A's KV is overwritten
                        ms["A"].append((time.perf_counter() - t0) * 1e3)
                        continue
                    if mode == "B":
                        for s in stages:
                            s._kept.clear()  # force the gather from the store
                    t0 = time.perf_counter()
                    before = [(s.counters.gather_s + s.counters.scatter_s, s.counters.busy_s) for s in stages]
                    out = run(stages, header([(i, i, past[i], 1, how) for i in range(8)]),
                              np.array([[t[-1]] for t in toks]))
                    ms[mode].append((time.perf_counter() - t0) * 1e3)
                    if mode == "B":
                        c = sum(s.counters.gather_s + s.counters.scatter_s - b[0] for s, b in zip(stages, before))
                        copy.append(c / sum(s.counters.busy_s - b[1] for s, b in zip(stages, before)))
                    for i in range(8):
                        toks[i].append(int(out[i]))
                        past[i] += 1
            a, b, k = (statistics.median(ms[m]) for m in "ABK")
            print(f"| {args.model} | {args.stages} | {engine} | {a:.1f} | {b:.1f} | {k:.1f} | {a / b:.2f}x | "
                  f"{b / k:.2f}x | {100 * statistics.median(copy):.1f} % |", flush=True)

if __name__ == "__main__":
    main()
