"""OpenVINO settings of a corepipe worker against the THROUGHPUT peer's, one setting at a time.

Every variant compiles the same graph (a whole model, or one stage file of an artifact) in this
one process, pinned to one core, with one inference thread; then rounds run each variant in turn
(``--per-round`` requests each) and the table gives each one's median time per request and CPU
per request over the rounds, and its ratio to the worker's own configuration. Interleaving the
variants round by round lets a noisy moment hit all of them alike.

Variants (each changes one thing from ``worker``, corepipe's `OpenVinoEngine` configuration):
``snippets`` (SNIPPETS_MODE left at its default), ``pinning`` (ENABLE_CPU_PINNING on),
``denormals`` (CPU_DENORMALS_OPTIMIZATION on), ``hint`` (PERFORMANCE_HINT=THROUGHPUT with one
stream, the peer's per-stream configuration, instead of explicit streams and threads), ``sync``
(``infer()`` on the calling thread, as one-thread stages now run, instead of ``start_async()`` +
``wait()``, as stages of several threads run and the reference does), ``fresh`` (inputs
copied and outputs allocated per request, as the peer's ``AsyncInferQueue`` does, instead of
tensors bound once to fixed buffers), ``batch2`` (the moonshot's idea: two requests run as one
batch of 2, the graph reshaped to batch 2; its figures are per request, half a call's).

    python benchmarks/ov_settings.py MODEL.onnx --precision bf16 --rounds 7 --per-round 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe, not an installed one
from corepipe.bench.traffic import example_feeds
from corepipe.compiler.model.graph import analyze

_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def worker_config(precision: str, threads: int = 1) -> dict[str, Any]:
    """What `corepipe.engines.ov.OpenVinoEngine` asks for, snippets off (as on a stage the check found wrong)."""
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": _HINT[precision],
            "EXECUTION_MODE_HINT": "ACCURACY" if precision == "fp32" else "PERFORMANCE",
            "SNIPPETS_MODE": "DISABLE"}


def variants(precision: str, threads: int = 1) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (compile config, how requests run: bound / sync / fresh)."""
    base = worker_config(precision, threads)
    no_snippets = {k: v for k, v in base.items() if k != "SNIPPETS_MODE"}
    hint = {"PERFORMANCE_HINT": "THROUGHPUT" if threads == 1 else "LATENCY", "NUM_STREAMS": 1,
            **({"INFERENCE_NUM_THREADS": threads} if threads > 1 else {}), "INFERENCE_PRECISION_HINT": _HINT[precision],
            "EXECUTION_MODE_HINT": base["EXECUTION_MODE_HINT"], "SNIPPETS_MODE": "DISABLE"}
    return {
        "worker": (base, "bound"),
        "snippets": (no_snippets, "bound"),
        "pinning": ({**base, "ENABLE_CPU_PINNING": True}, "bound"),
        "denormals": ({**base, "CPU_DENORMALS_OPTIMIZATION": True}, "bound"),
        "hint": (hint, "bound"),
        "sync": (base, "sync"),
        "fresh": (base, "fresh"),
        "batch2": (base, "batch2"),
    }


def runner(core: Any, model: Any, config: dict[str, Any], how: str, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    import openvino as ov

    if how == "batch2":  # the first dim of every input doubled, the request twice over
        model = model.clone()
        model.reshape({p.get_any_name(): [2, *list(p.get_partial_shape().to_shape())[1:]] for p in model.inputs})
        feeds = {k: np.concatenate([v, v]) for k, v in feeds.items()}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    if how == "fresh":
        return lambda: request.infer(feeds, share_inputs=False, share_outputs=False)
    ins = [np.ascontiguousarray(feeds[p.get_any_name()]) for p in compiled.inputs]
    outs = [np.zeros(tuple(p.get_shape()), dtype=p.get_element_type().to_dtype()) for p in compiled.outputs]
    for i, a in enumerate(ins):
        request.set_input_tensor(i, ov.Tensor(a, shared_memory=True))
    for i, a in enumerate(outs):
        request.set_output_tensor(i, ov.Tensor(a, shared_memory=True))
    if how == "sync":
        # The pybind method itself: no Python-side dispatch of inputs, outputs returned as views.
        infer = ov._pyopenvino.InferRequest.infer

        def run() -> None:
            infer(request, {}, True, False)
        run.buffers = (ins, outs)  # type: ignore[attr-defined]  # the tensors share their memory
        return run

    def run_async() -> None:
        request.start_async()
        request.wait()
    run_async.buffers = (ins, outs)  # type: ignore[attr-defined]
    return run_async


def paired(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a / b, each round's pair timed side by side."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="an .onnx file (a whole model or a stage_NNN.onnx)")
    ap.add_argument("--inputs", type=Path, help="an .npz of the request (default: random, from the graph's inputs)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--only", nargs="+", help="variants to run (default: all)")
    ap.add_argument("--core", type=int, default=0, help="the first core (--threads consecutive ones)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (hint: LATENCY with these)")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, set(range(args.core, args.core + args.threads)))
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(args.model))
    info = analyze(str(args.model))
    if args.inputs is not None:
        with np.load(args.inputs) as npz:
            feeds = {k: npz[k] for k in npz.files}
    else:
        feeds = example_feeds(info.inputs)
    names = args.only or list(variants(args.precision))
    runs = {}
    for name in names:
        try:
            runs[name] = runner(core, model, *variants(args.precision, args.threads)[name], feeds)
        except Exception as exc:  # batch2: a graph with its batch dim baked into a constant
            print(f"{name}: left out ({' '.join(str(exc).split())[:200]})")
    names = [n for n in names if n in runs]
    per_call = {"batch2": 2}  # requests per call
    for run in runs.values():  # first runs allocate: not timed
        run()
        run()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # each variant leads in turn
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.per_round):
                runs[name]()
            wall[name].append((time.perf_counter() - t0) / args.per_round / per_call.get(name, 1))
            cpu[name].append((time.process_time() - c0) / args.per_round / per_call.get(name, 1))
    ref = float(np.median(wall["worker"])) if "worker" in wall else None
    print(f"{args.model.name}, {args.precision}, {args.threads} thread(s) from core {args.core}: {args.rounds} rounds x "
          f"{args.per_round} requests per variant, interleaved")
    print("| variant | what changes | median ms per request | min ms | CPU ms per request | x worker (time) "
          "| x worker, median of rounds (paired) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    what = {"worker": "corepipe's worker configuration", "snippets": "SNIPPETS_MODE default (on)",
            "pinning": "ENABLE_CPU_PINNING on", "denormals": "CPU_DENORMALS_OPTIMIZATION on",
            "hint": "PERFORMANCE_HINT THROUGHPUT, 1 stream", "sync": "infer() instead of start_async+wait",
            "fresh": "inputs copied, outputs fresh per request", "batch2": "two requests as one batch of 2 (per request)"}
    base = "worker"
    for name in names:
        med = float(np.median(wall[name]))
        print(f"| {name} | {what[name]} | {med * 1e3:.3f} | {min(wall[name]) * 1e3:.3f} | "
              f"{float(np.median(cpu[name])) * 1e3:.3f} | {'-' if ref is None else f'{med / ref:.3f}'} | "
              f"{'-' if ref is None else f'{paired(wall[name], wall[base]):.3f}'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
