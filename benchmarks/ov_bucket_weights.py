"""One copy of the weights across OpenVINO buckets (issue 28, section 5): what a BERT-base stage
holds as one bounded dynamic graph, as one compiled model per bucket (what `OpenVinoEngine`
does today), and as ONE compiled model holding every bucket: nested ``If`` ops whose bodies are
static clones of the stage graph, one per bucket, sharing the read graph's constants.

Why the last may share: the CPU plugin's weights cache belongs to a compiled model
(``CompiledModel::m_socketWeights``), and keys a repacked weight by its layout and the source
constant's address (``computeWeightsStringHash``). Separate compiled models never share it;
bodies of one compiled model whose constants are the same memory (clones of one read graph)
do. Only the selected body runs (``which`` picks it); the other buckets' inputs get zeros.

    python benchmarks/ov_bucket_weights.py --work /tmp/bert_stages --precision fp32   # all figures
    python benchmarks/ov_bucket_weights.py --work DIR --hold switch                 # one RSS figure

Stage 1 of `benchmarks/shape_modes.py`'s cut (BERT-base after encoder layer 5, about 164 MiB of
fp32 weights), buckets 16, 32, 64, 128; each RSS figure from a fresh process; times alternate
the two bucketed forms in one process (median of rounds, ms per request).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
sys.path.insert(0, str(Path(__file__).resolve().parent))
import shape_modes as sm

from corepipe.engines.ov import _HINT, _ov_core

BUCKETS = [16, 32, 64, 128]
OUTPUTS = ["last_hidden_state", "pooler_output"]


def switch_model(graph: Any, inputs: list[str], shapes: list[dict[str, list[int]]]) -> Any:
    """One ov.Model selecting among static clones of ``graph`` (one per entry of ``shapes``):
    inputs ``which_0`` (int64 scalar: the bucket) and ``NAME__bJ_0`` per bucket J and input."""
    import openvino as ov
    from openvino import opset8 as ops

    clones = []
    for shape in shapes:
        g = graph.clone()  # shares the constants' memory with ``graph``
        g.reshape({name: ov.PartialShape(shape[name]) for name in inputs})
        clones.append(g)
    names = [o.get_any_name() for o in clones[0].outputs]
    n = len(clones)
    body = clones[-1]
    for k in range(n - 2, -1, -1):
        which = ops.parameter([], ov.Type.i64, name=f"which_{k}")
        rows = [[ops.parameter(clones[j].input(name).get_partial_shape(), clones[j].input(name).get_element_type(),
                               name=f"{name}__b{j}_{k}") for name in inputs] for j in range(k, n)]
        node = ops.if_op(ops.equal(which, ops.constant(np.int64(k))).output(0))
        node.set_then_body(clones[k])
        node.set_else_body(body)
        for q, name in zip(rows[0], inputs):
            node.set_input(q.output(0), clones[k].input(name).get_node(), None)
        inner = list(body.get_parameters())
        if k < n - 2:
            node.set_input(which.output(0), None, inner.pop(0))
        for q, p in zip([q for row in rows[1:] for q in row], inner):
            node.set_input(q.output(0), None, p)
        results = [ops.result(node.set_output(a, b)) for a, b in zip(clones[k].get_results(), body.get_results())]
        for r, name in zip(results, names):
            r.output(0).get_tensor().set_names({name})
        body = ov.Model(results, [which, *[q for row in rows for q in row]], f"buckets_from_{k}")
    return body


class Switch:
    """A stage compiled as `switch_model`, run at one bucket at a time."""

    def __init__(self, path: Path, feeds: dict[int, dict[str, np.ndarray]], precision: str) -> None:
        core = _ov_core()
        self.inputs = list(feeds[BUCKETS[0]])
        model = switch_model(core.read_model(str(path)), self.inputs,
                             [{k: list(v.shape) for k, v in feeds[b].items()} for b in BUCKETS])
        config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
                  "INFERENCE_PRECISION_HINT": _HINT[precision],
                  "EXECUTION_MODE_HINT": "ACCURACY" if precision == "fp32" else "PERFORMANCE",
                  "SNIPPETS_MODE": "DISABLE"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.zeros = {p.get_any_name(): np.zeros([int(d) for d in p.get_partial_shape().to_shape()],
                                                 p.get_element_type().to_dtype())
                      for p in self.compiled.inputs if p.get_any_name() != "which_0"}

    def run(self, bucket: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        k = BUCKETS.index(bucket)
        data = {**self.zeros, "which_0": np.array(k, np.int64), **{f"{n}__b{k}_0": feeds[n] for n in self.inputs}}
        result = self.request.infer(data)
        return [np.array(result[self.compiled.output(o)]) for o in OUTPUTS]


def _feeds(work: Path) -> dict[int, dict[str, np.ndarray]]:
    stages = [work / "stage0.onnx", work / "stage1.onnx"]
    return {n: reqs[1] for n, reqs in sm._requests(stages, BUCKETS).items()}


def _make(mode: str, work: Path, feeds: dict[int, dict[str, np.ndarray]], precision: str) -> Any:
    path = work / "stage1.onnx"
    if mode == "switch":
        sw = Switch(path, feeds, precision)
        return sw.run
    engine = sm._engine(path, feeds[16], feeds[32], OUTPUTS, precision, None if mode == "dynamic" else BUCKETS)
    return lambda bucket, f: engine.run(f)


def hold(work: Path, mode: str, precision: str) -> dict[str, Any]:
    """RSS growth (MiB) of this process holding the stage in ``mode`` and having run each
    bucket once, and the largest difference from onnxruntime."""
    import onnxruntime as ort
    import psutil

    feeds = _feeds(work)
    base = psutil.Process().memory_info().rss
    run = _make(mode, work, feeds, precision)
    outs = {b: run(b, feeds[b]) for b in BUCKETS}
    rss = (psutil.Process().memory_info().rss - base) / 2**20
    sess = ort.InferenceSession(str(work / "stage1.onnx"), providers=["CPUExecutionProvider"])
    err = max(float(np.abs(np.asarray(g) - r).max()) for b in BUCKETS
              for g, r in zip(outs[b], sess.run(OUTPUTS, feeds[b])))
    return {"mode": mode, "rss_mib": round(rss, 1), "max_abs_diff_vs_ort": err}


def times(work: Path, precision: str, rounds: int) -> dict[str, dict[int, float]]:
    """ms per request at each bucket, one compiled model per bucket against the switch,
    alternating A B A B in one process (median over rounds)."""
    feeds = _feeds(work)
    forms = {"per bucket": _make("buckets", work, feeds, precision), "switch": _make("switch", work, feeds, precision)}
    samples: dict[str, dict[int, list[float]]] = {f: {b: [] for b in BUCKETS} for f in forms}
    for _ in range(rounds):
        for b in BUCKETS:
            for form, run in forms.items():
                run(b, feeds[b])  # warm
                t0 = time.perf_counter()
                run(b, feeds[b])
                samples[form][b].append((time.perf_counter() - t0) * 1e3)
    return {f: {b: float(np.median(v)) for b, v in per.items()} for f, per in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="where the BERT stages are (exported if missing)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--hold", choices=["dynamic", "buckets", "switch"], help="one RSS figure, this process")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--times-only", action="store_true", help="skip the RSS figures")
    args = ap.parse_args()
    if not (args.work / "stage1.onnx").exists():
        args.work.mkdir(parents=True, exist_ok=True)
        sm.export(args.work)
    if args.hold:
        print(json.dumps(hold(args.work, args.hold, args.precision)))
        return
    for mode in () if args.times_only else ("dynamic", "buckets", "switch"):
        done = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--precision", args.precision,
                               "--hold", mode], capture_output=True, text=True, check=True)
        print(done.stdout.strip().splitlines()[-1], flush=True)
    print(json.dumps({"ms": times(args.work, args.precision, args.rounds)}))


if __name__ == "__main__":
    main()
