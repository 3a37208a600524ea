"""One decode step batched over 8 sequences against 8 steps of one, per stage and engine, and what
the KV copies cost (issue 25: continuous batching by right-padded past + masks).

In this process (no workers): the stages of a decoder artifact, each as `DecoderStage` on
OpenVINO (the compiler's choice) and on onnxruntime, 8 sequences prefilled with prompts of
mixed lengths, then rounds alternating A (8 decode steps of batch 1) and B (one decode step of
batch 8), every sequence's past growing by one token a round. Reported: median milliseconds per
round of A and B, their ratio, and the share of B's stage time spent gathering the past out of
the store and scattering the new positions back. ``openvino-copy``: OpenVINO with its outputs (the
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
    args = ap.parse_args()
    how = Sampling()
    with tempfile.TemporaryDirectory() as tmp:
        art = corepipe.compile(decoder_model(args.model), Path(tmp) / "art", num_cores=args.stages,
                               max_sequences=16, max_length=256).path
        for engine in ("openvino", "openvino-copy", "onnxruntime"):
            stages = stages_on(art, engine.removesuffix("-copy"))
            if engine.endswith("-copy"):  # presents copied out of OpenVINO's memory, as `run` does
                for s in stages:
                    s.engine.run_shared = s.engine.run  # type: ignore[method-assign]
            batch = prompts(8192 if "bench" in args.model else 1000, 8, [32, 20, 45, 32, 9, 60, 32, 27], seed=2)
            toks = [[int(run(stages, header([(i, i, 0, len(p), how)]), np.array([p])) [0])] for i, p in enumerate(batch)]
            past = [len(p) for p in batch]
            a_ms, b_ms, copy = [], [], []
            for r in range(args.rounds):
                for mode in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    t0 = time.perf_counter()
                    if mode == "A":
                        for i in range(8):
                            run(stages, header([(i, i, past[i], 1, how)]), np.array([[toks[i][-1]]]))
                        a_ms.append((time.perf_counter() - t0) * 1e3)
                    else:
                        before = [(s.counters.gather_s + s.counters.scatter_s, s.counters.busy_s) for s in stages]
                        out = run(stages, header([(i, i, past[i], 1, how) for i in range(8)]),
                                  np.array([[t[-1]] for t in toks]))
                        b_ms.append((time.perf_counter() - t0) * 1e3)
                        c = sum(s.counters.gather_s + s.counters.scatter_s - b[0] for s, b in zip(stages, before))
                        busy = sum(s.counters.busy_s - b[1] for s, b in zip(stages, before))
                        copy.append(c / busy)
                        for i in range(8):
                            toks[i].append(int(out[i]))
                            past[i] += 1
            a, b = statistics.median(a_ms), statistics.median(b_ms)
            print(f"| {args.model} | {args.stages} | {engine} | {a:.1f} | {b:.1f} | {a / b:.2f}x | "
                  f"{100 * statistics.median(copy):.1f} % |", flush=True)


if __name__ == "__main__":
    main()
