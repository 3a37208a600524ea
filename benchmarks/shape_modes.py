"""Bounded dynamic graphs against static buckets, per stage, on corepipe's OpenVINO engine: what
decides `buckets="auto"`.

BERT-base (random weights) exported by torch.onnx's legacy exporter with dynamic batch and
sequence axes, cut in two after encoder layer 5 (constants copied into the stage that reads
them), each half loaded as a worker loads it (`corepipe.engines.OpenVinoEngine`, one thread on
one core) twice: once as one bounded dynamic graph (sequence 1..128), once as a static graph per
length. Reported per stage: the time at each length both ways, the mean over log-normal
lengths (median 24, capped at 128; fixed seed) run interleaved, dynamic against padded to 4 or
to 8 buckets, and the resident memory of the engine holding 1 dynamic graph, 4 and 8 buckets.

    python benchmarks/shape_modes.py --precision bf16 --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
from corepipe.engines.ov import OpenVinoEngine

LENGTHS = [8, 16, 24, 32, 48, 64, 96, 128]
BUCKETS = {"4": [16, 32, 64, 128], "8": LENGTHS}


def export(directory: Path) -> list[Path]:
    """BERT-base with dynamic axes, cut after layer 5: [stage0.onnx, stage1.onnx]."""
    import onnx
    import torch
    from onnx import helper

    from corepipe.frontends.transformers import build_transformers

    module, inputs = build_transformers("bert", seq=128)
    names = list(inputs)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(last_hidden_state={0: "batch", 1: "sequence"}, pooler_output={0: "batch"})
    whole = directory / "bert.onnx"
    with torch.no_grad():
        torch.onnx.export(module, tuple(torch.from_numpy(v) for v in inputs.values()), str(whole), input_names=names,
                          output_names=["last_hidden_state", "pooler_output"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    m = onnx.shape_inference.infer_shapes(onnx.load(str(whole)))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    info = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
    consts = {n.output[0]: n for n in g.node
              if n.op_type == "Constant" or (n.op_type == "Identity" and n.input[0] in inits)}
    nodes = [n for n in g.node if n.output[0] not in consts]
    cut = next(i for i, n in enumerate(nodes) if n.name == "/model/encoder/layer.5/output/LayerNorm/LayerNormalization") + 1
    made = {i.name for i in g.input} | {o for n in nodes[:cut] for o in n.output}
    live = list(dict.fromkeys(i for n in nodes[cut:] for i in n.input if i in made))
    out = []
    for k, (part, ins, outs) in enumerate([(nodes[:cut], [i.name for i in g.input], live),
                                           (nodes[cut:], live, [o.name for o in g.output])]):
        need = [consts[i] for i in dict.fromkeys(i for n in part for i in n.input if i in consts)]
        used = {i for n in need + part for i in n.input}
        graph = helper.make_graph(need + part, f"stage{k}", [info[i] for i in ins], [info[o] for o in outs],
                                  [inits[i] for i in used if i in inits])
        path = directory / f"stage{k}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=m.opset_import, ir_version=m.ir_version), str(path))
        out.append(path)
    return out


def _requests(stages: list[Path], lengths: list[int]) -> dict[int, list[dict[str, np.ndarray]]]:
    """Each stage's inputs at each length (stage 1's from stage 0 on onnxruntime)."""
    import onnxruntime as ort

    s0 = ort.InferenceSession(str(stages[0]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for n in lengths:
        first = {"input_ids": rng.integers(0, 30000, (1, n)).astype(np.int64),
                 "attention_mask": np.ones((1, n), np.int64), "token_type_ids": np.zeros((1, n), np.int64)}
        second = dict(zip([o.name for o in s0.get_outputs()], s0.run(None, first)))
        out[n] = [first, second]
    return out


def _ranges(feeds: dict[str, np.ndarray], other: dict[str, np.ndarray], at: int | None) -> tuple:
    """Each input's ranges: axes that differ between two lengths carry the sequence."""
    return tuple(tuple(((1, 128) if at is None else (at, at)) if a != b else (a, a)
                       for a, b in zip(feeds[k].shape, other[k].shape)) for k in feeds)


def _engine(path: Path, feeds: dict, other: dict, outputs: list[str], precision: str, at: list[int] | None) -> OpenVinoEngine:
    variants = [_ranges(feeds, other, None)] if at is None else [_ranges(feeds, other, n) for n in at]
    return OpenVinoEngine(str(path), inputs=list(feeds), outputs=outputs, threads=1, precision=precision,
                          spin=False, variants=variants)


def _time(engine: OpenVinoEngine, feeds: dict, repeats: int = 8) -> float:
    engine.run(feeds)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.run(feeds)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def measure(stages: list[Path], precision: str) -> list[dict]:
    import onnx

    reqs = _requests(stages, sorted({*LENGTHS, 1, *range(1, 129)}))
    lengths = np.clip(np.rint(np.random.default_rng(0).lognormal(np.log(24), 0.8, 60)), 1, 128).astype(int)
    rows = []
    for k, path in enumerate(stages):
        outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
        feeds = {n: reqs[n][k] for n in reqs}
        dyn = _engine(path, feeds[16], feeds[32], outputs, precision, None)
        dyn_ms = {n: _time(dyn, feeds[n]) * 1e3 for n in LENGTHS}
        t0 = time.perf_counter()
        for n in lengths:
            dyn.run(feeds[int(n)])
        mixed = {"dynamic": (time.perf_counter() - t0) / len(lengths) * 1e3}
        del dyn
        static = {n: _engine(path, feeds[16], feeds[32], outputs, precision, [n]) for n in LENGTHS}
        static_ms = {n: _time(static[n], feeds[n]) * 1e3 for n in LENGTHS}
        for name, sizes in BUCKETS.items():
            padded = [next(b for b in sizes if b >= n) for n in lengths]
            t0 = time.perf_counter()
            for b in padded:
                static[b].run(feeds[b])
            mixed[f"buckets {name}"] = (time.perf_counter() - t0) / len(lengths) * 1e3
        rows.append({"stage": k, "precision": precision, "dynamic_ms": dyn_ms, "static_ms": static_ms,
                     "mixed_ms": mixed, "mean_length": float(lengths.mean())})
    return rows


def memory(work: Path, precision: str) -> dict[str, float]:
    """RSS growth (MiB) of a process loading stage 1 as 1 dynamic graph, 4 and 8 buckets (each
    run once), in a fresh process each (`--hold`)."""
    out = {}
    for label in ("dynamic", "4", "8"):
        done = subprocess.run([sys.executable, __file__, "--work", str(work), "--precision", precision, "--hold", label],
                              capture_output=True, text=True, check=True)
        out[label if label == "dynamic" else f"{label} buckets"] = float(done.stdout.strip().splitlines()[-1])
    return out


def _hold(work: Path, precision: str, label: str) -> float:
    import psutil

    stages = [work / "stage0.onnx", work / "stage1.onnx"]
    reqs = _requests(stages, LENGTHS)
    base = psutil.Process().memory_info().rss
    at = None if label == "dynamic" else BUCKETS[label]
    engine = _engine(stages[1], reqs[16][1], reqs[32][1], ["last_hidden_state", "pooler_output"], precision, at)
    for n in at or [16]:
        engine.run(reqs[n][1])
    return (psutil.Process().memory_info().rss - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--work", type=Path, help="keep the exported stages here (default: a temporary directory)")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--hold", help=argparse.SUPPRESS)  # internal: one engine's memory, in its own process
    args = ap.parse_args()
    if args.hold:
        print(_hold(args.work, args.precision, args.hold))
        return
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as a stage's worker
    with tempfile.TemporaryDirectory(prefix="shape-modes-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        stages = [work / "stage0.onnx", work / "stage1.onnx"]
        if not all(p.is_file() for p in stages):
            stages = export(work)
        rows = measure(stages, args.precision)
        mem = memory(work, args.precision)
    lines = [f"OpenVINO {args.precision}, one thread: ms per request at each length, bounded dynamic (1..128) / static",
             "", "| stage | " + " | ".join(str(n) for n in LENGTHS) + " | log-normal mix: dynamic | 4 buckets | 8 buckets |",
             "|---|" + "---:|" * (len(LENGTHS) + 3)]
    for r in rows:
        cells = [f"{r['dynamic_ms'][n]:.2f} / {r['static_ms'][n]:.2f}" for n in LENGTHS]
        m = r["mixed_ms"]
        lines.append(f"| {r['stage']} | " + " | ".join(cells) + f" | {m['dynamic']:.2f} | {m['buckets 4']:.2f} "
                     f"({m['buckets 4'] / m['dynamic']:.3f}x) | {m['buckets 8']:.2f} ({m['buckets 8'] / m['dynamic']:.3f}x) |")
    lines += ["", "Stage 1's engine, resident MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items())]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({"rows": rows, "memory_mib": mem}))
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
