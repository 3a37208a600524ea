"""The 16-core figures of issues 7 and 8 in one call of the device machine, most important first.

A session gets about 15 minutes of that machine, start included, so this script measures in
order of importance and writes every figure the moment it has it (``rows.jsonl`` under
``--out``): a run cut short by its time limit still returns everything measured so far.

1. Issue 7, per model (BERT-base seq 128, then ResNet-50): the corepipe pipeline (16 stages,
   balance "measure", engine "auto") against OpenVINO THROUGHPUT at bf16, then at fp32.
2. BERT-base's onnxruntime peers: 1 thread (ideal = 16 x this), one session shared by 16
   threads, 16 sessions in parallel.
3. Issue 8: BERT-base on 16 onnxruntime stages balanced on an idle core ("measure"), then under
   load ("load").
4. Issue 8: deployments R replicas x S stages (what `corepipe tune` explores), bf16, and
   R = 16 at fp32.
5. The remaining peers: OpenVINO LATENCY, ResNet-50's onnxruntime peers, onnxruntime with 16
   threads.

    python benchmarks/device16_all.py --out "$OUT" --budget 540

Each row: {"section", "model", "precision", "name", "throughput", "latency_p50_s", "t"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
import corepipe
from corepipe.artifact.deployment import Deployment
from corepipe.bench import Traffic, peer_setups
from corepipe.bench.peers import run_parallel, run_serial
from corepipe.bench.pipeline import measure_pipeline
from corepipe.bench.traffic import resolve_model

T0 = time.monotonic()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/device16-out"))
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--budget", type=float, default=540.0, help="seconds; later steps are skipped past it")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request counts (a dry run: 0.1)")
    ap.add_argument("--models", default="bert,resnet50")
    ap.add_argument("--steps", default="", help="comma-separated: run only the steps whose label contains one")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "rows.jsonl").open("a")
    k = args.cores
    use = sorted(os.sched_getaffinity(0))[:k]
    if len(use) < k:
        raise SystemExit(f"{k} cores asked, {len(use)} available")
    models = args.models.split(",")
    reqs = {"bert": max(8, int(96 * args.scale)), "resnet50": max(8, int(192 * args.scale))}

    def record(section: str, model: str, precision: str, name: str, fields: dict[str, Any]) -> None:
        row = {"section": section, "model": model, "precision": precision, "name": name,
               "t": round(time.monotonic() - T0, 1), **fields}
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)

    wanted = [w for w in args.steps.split(",") if w]

    def step(label: str, fn: Callable[[], None]) -> None:
        if wanted and not any(w in label for w in wanted):
            return
        left = args.budget - (time.monotonic() - T0)
        if left < 15:
            print(f"-- skipped (budget): {label}", flush=True)
            return
        print(f"-- {label} (t={time.monotonic() - T0:.0f}s)", flush=True)
        try:
            fn()
        except Exception as exc:  # one failed step must not cost the rest
            print(f"!! {label}: {type(exc).__name__}: {exc}", flush=True)
            record("error", label, "", type(exc).__name__, {"message": str(exc)[:2000]})

    with tempfile.TemporaryDirectory(prefix="corepipe-dev16-") as tmp:
        work = Path(tmp)
        src: dict[str, tuple[Path, dict[str, np.ndarray], Path]] = {}
        for model in models:
            path, feeds = resolve_model(f"zoo:{model}", work)
            assert feeds is not None
            inputs = work / f"{model}.npz"
            np.savez(inputs, **feeds)  # type: ignore[arg-type]
            src[model] = (path, feeds, inputs)

        def pipeline(section: str, model: str, prec: str, name: str, **compile_kw: Any) -> None:
            path, feeds, _ = src[model]
            t = time.perf_counter()
            out = work / f"{model}_{prec}_{name.replace(' ', '_')}"
            cm = corepipe.compile(path, out, example_inputs=feeds, precision=prec, **compile_kw)
            compile_s = time.perf_counter() - t
            stages = [{"engine": s.engine, "precision": s.precision} for s in cm.stages]
            row, _, _ = measure_pipeline(cm.path, feeds, Traffic(requests=reqs[model], warmup=5), "local",
                                         {"cores": use}, stages=stages)
            record(section, model, prec, name, {
                "throughput": row.req_per_s, "latency_p50_s": row.p50_s, "compile_s": compile_s,
                "handoff_s": row.handoff_s, "uss_mib": sum(row.process_uss) / 2**20,
                "engines": sorted({s.engine for s in cm.stages}),
                "stage_ms": [round(1e3 * (s.measured_s or s.estimated_s or 0), 2) for s in cm.stages],
            })

        def peer(section: str, model: str, prec: str, mode: str, name: str, threads: int) -> None:
            path, _, inputs = src[model]
            r = run_serial(path, inputs, threads, reqs[model], 5, use if threads > 1 else use[:1], mode=mode,
                        precision=prec)
            record(section, model, prec, name, {"throughput": r["requests"] / r["elapsed_s"],
                                                "latency_p50_s": r["latency_p50_s"],
                                                "uss_mib": r["uss_bytes"] / 2**20})

        def ov_peer(model: str, prec: str, mode: str, section: str = "peers") -> None:
            name = next(p.setup for p in peer_setups(k, prec) if p.mode == mode)
            step(f"{model} {name}", lambda: peer(section, model, prec, mode, name, k))

        def ort_peers(model: str) -> None:
            step(f"{model} ort 1 thread", lambda: peer("peers", model, "fp32", "serial", "ort 1 thread", 1))
            shared = next(p.setup for p in peer_setups(k, "fp32") if p.mode == "shared")
            step(f"{model} {shared}", lambda: peer("peers", model, "fp32", "shared", shared, k))

            def parallel() -> None:
                path, _, inputs = src[model]
                rate, results = run_parallel(path, inputs, reqs[model], 5, use)
                record("peers", model, "fp32", f"{k} sessions in parallel", {
                    "throughput": rate, "latency_p50_s": float(np.median([x["latency_p50_s"] for x in results]))})

            step(f"{model} {k} sessions in parallel", parallel)

        # 1. Issue 7: the pipeline against OpenVINO THROUGHPUT, bf16 then fp32.
        for model in models:
            for prec in ("bf16", "fp32"):
                step(f"{model} {prec} corepipe {k} stages",
                     lambda m=model, p=prec: pipeline("engines", m, p, f"corepipe {k} stages",
                                                      num_cores=k, balance="measure"))
                ov_peer(model, prec, "ov_throughput", "engines")
        # 2. The onnxruntime peers of the first model (ideal = K x "ort 1 thread").
        ort_peers(models[0])
        # 3. Issue 8: onnxruntime stages (the engine of the 0.53-of-ideal figure) balanced on an
        # idle core, then under load.
        if "bert" in models:
            step(f"bert fp32 onnxruntime {k} stages balance=measure",
                 lambda: pipeline("load", "bert", "fp32", f"corepipe ort {k} stages, balance measure",
                                  num_cores=k, balance="measure", engine="onnxruntime"))
            step(f"bert fp32 onnxruntime {k} stages balance=load",
                 lambda: pipeline("load", "bert", "fp32", f"corepipe ort {k} stages, balance load",
                                  num_cores=k, balance="load", load_rounds=2, load_seconds=2.0,
                                  engine="onnxruntime"))
        # 4. Issue 8: replicas x stages on the K cores, bf16 (what `corepipe tune` explores).
        for model in models:
            shapes = [("bf16", k, 1), ("bf16", k // 4, 4)]
            shapes += [("bf16", k // 8, 8)] if model == "bert" else []
            shapes += [("bf16", k // 2, 2), ("fp32", k, 1)]
            for prec, r, s in shapes:
                if r < 1:
                    continue
                dep = Deployment(replicas=r, threads_per_stage=1, cores=k)
                step(f"{model} {prec} {r} replicas x {s} stages",
                     lambda m=model, p=prec, r=r, s=s, d=dep: pipeline(
                         "deployments", m, p, f"{r} replicas x {s} stages", num_cores=s,
                         balance="measure" if s > 1 else "estimate", deployment=d))
        # 5. The remaining peers.
        for model in models:
            ov_peer(model, "bf16", "ov_latency")
        for model in models[1:]:
            ort_peers(model)
        for model in models:
            step(f"{model} ort {k} threads", lambda m=model: peer("peers", m, "fp32", "serial", f"ort {k} threads", k))
            ov_peer(model, "fp32", "ov_latency")
    print(f"done in {time.monotonic() - T0:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
