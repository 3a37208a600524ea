"""`corepipe bench`: the pipeline against the baselines a user would pick, in one run.

Baselines, each in its own process on the same inputs: one onnxruntime session with 1 thread,
one with K threads, K 1-thread sessions in parallel (one per core), one session shared by K
threads, OpenVINO's THROUGHPUT hint with K streams and its LATENCY hint with K threads (one
request in flight), both at the compiled precision (onnxruntime has no fast bf16, so its rows
stay fp32). Then the corepipe pipeline on K cores. Reports throughput, ratios, latency with one
request in flight (and what the pipeline adds per stage boundary), and resident memory per
process.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifact.plan import TensorSpec
from ..artifact.protoio import tensor_nbytes
from ..artifact.sizes import plural
from ..compiler.choose import resolve_precision
from ..compiler.driver import compile as compile_model
from ..engines import missing_engine
from ..runtime import Timeline
from ..runtime.process import module_command
from .benchresult import BenchResult, BenchRow, parallel_row, threads_row

__all__ = ["BenchRow", "BenchResult", "run_bench", "example_feeds", "resolve_model"]


def example_feeds(specs: tuple[TensorSpec, ...] | list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs matching ``specs``: normal floats, ints in [0, 100), random bools."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            out[spec.name] = rng.standard_normal(spec.shape).astype(dt)
        elif dt.kind in "iu":
            out[spec.name] = rng.integers(0, 100, size=spec.shape).astype(dt)
        elif dt.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=spec.shape).astype(bool)
        else:
            out[spec.name] = np.zeros(spec.shape, dtype=dt)
    return out


def resolve_model(model: str, workdir: Path) -> tuple[Path, dict[str, np.ndarray] | None]:
    """A model path, or ``zoo:NAME`` for a built-in architecture saved under ``workdir``."""
    if model.startswith("zoo:"):
        from .. import zoo

        proto, feeds = zoo.get(model[4:])
        path = workdir / f"{model[4:]}.onnx"
        onnx.save_model(proto, str(path), save_as_external_data=True, location=path.name + ".data")
        return path, feeds
    return Path(model), None


def _proc_config(model: Path, inputs: Path, mode: str, threads: int, requests: int,
                 warmup: int, cores: list[int], precision: str = "fp32") -> str:
    return json.dumps({"model": str(model.resolve()), "inputs": str(inputs.resolve()), "mode": mode, "threads": threads,
                       "requests": requests, "warmup": warmup, "cores": cores, "precision": precision})


def _serial(model: Path, inputs: Path, threads: int, requests: int, warmup: int, cores: list[int],
            mode: str = "serial", precision: str = "fp32") -> dict[str, Any]:
    argv, env = module_command("corepipe.cli.benchproc",
                               _proc_config(model, inputs, mode, threads, requests, warmup, cores, precision))
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parallel(model: Path, inputs: Path, requests: int, warmup: int, cores: list[int]) -> tuple[float, list[dict[str, Any]]]:
    share = [requests // len(cores) + (1 if i < requests % len(cores) else 0) for i in range(len(cores))]
    procs = [
        subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for argv, env in (
            module_command("corepipe.cli.benchproc",
                           _proc_config(model, inputs, "parallel", 1, share[i], warmup, [c]))
            for i, c in enumerate(cores)
        )
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"baseline process failed to start: {line!r}")
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1]) for p in procs]
        # Each process times its own share; they start together on the broadcast "go", so the
        # slowest one's time is the wall time of the whole, without our pipe round trips.
        wall = max(r["elapsed_s"] for r in results)
        del start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sum(share) / wall, results


def run_bench(
    model: str | os.PathLike[str],
    *,
    cores: int | None = None,
    requests: int = 64,
    warmup: int = 5,
    balance: str = "measure",
    example_inputs: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    engine: str = "auto",
    precision: str | None = None,
    backend: str = "local",
    address: str | None = None,
) -> BenchResult:
    """Compile ``model`` for ``cores`` cores and measure it against the baselines, in one run.

    Args:
        model: ``.onnx`` path or ``zoo:NAME``.
        cores: K, the cores to use (default: all this process may run on).
        requests: requests per measurement (the parallel baseline splits them across K).
        warmup: unmeasured requests before each measurement.
        balance: compile option, ``"measure"`` (default), ``"load"`` or ``"estimate"``.
        example_inputs: inputs to send (default: deterministic random inputs of the signature).
        progress: optional callback told which step runs.
        engine: compile option (``"auto"``, ``"onnxruntime"`` or ``"openvino"``).
        precision: compile option (``"fp32"`` default, ``"bf16"``, ``"fp16"``, ``"auto"``); the
            OpenVINO peers run at the same precision.
        backend: the pipeline's backend; with another than ``"local"`` the ``local`` pipeline is
            measured too, in the same run, and the ratio between them reported.
        address: Ray cluster for ``backend="ray"`` (default: a private instance on this host).

    Raises:
        ValueError: more cores than this process may use.
        CompileError: the model cannot be compiled as asked (engine, precision...).
    """
    say = progress or (lambda step: None)
    avail = sorted(os.sched_getaffinity(0))
    k = cores or len(avail)
    if k > len(avail):
        raise ValueError(f"asked for {plural(k, 'core')} but this process may use only {len(avail)}: {avail}")
    use = avail[:k]
    prec = resolve_precision(precision)
    with tempfile.TemporaryDirectory(prefix="corepipe-bench-") as tmp:
        work = Path(tmp)
        path, zoo_feeds = resolve_model(str(model), work)
        say(f"compile for {plural(k, 'core')} ({balance} balance, engine {engine}, {prec})")
        t0 = time.perf_counter()
        cm = compile_model(path, work / "compiled", num_cores=k, example_inputs=example_inputs or zoo_feeds,
                           balance=balance, engine=engine, precision=prec)
        compile_s = time.perf_counter() - t0
        feeds = dict(example_inputs or zoo_feeds or example_feeds(cm.inputs))
        inputs = work / "inputs.npz"
        np.savez(inputs, **feeds)  # type: ignore[arg-type]
        weight_bytes = sum(  # from the dims: the weights themselves stay on disk
            tensor_nbytes(t) for t in onnx.load(str(path), load_external_data=False).graph.initializer
        )
        rows = []
        say("onnxruntime, 1 thread")
        r = _serial(path, inputs, 1, requests, warmup, use[:1])
        rows.append(BenchRow("ort 1 thread", r["requests"] / r["elapsed_s"], r["latency_p50_s"], [r["rss_bytes"]], [r["uss_bytes"]]))
        say(f"onnxruntime, {plural(k, 'thread')}")
        r = _serial(path, inputs, k, requests, warmup, use)
        rows.append(BenchRow(threads_row(k), r["requests"] / r["elapsed_s"], r["latency_p50_s"], [r["rss_bytes"]], [r["uss_bytes"]]))
        say(f"{plural(k, 'onnxruntime session')} in parallel")
        rate, results = _parallel(path, inputs, requests, warmup, use)
        rows.append(BenchRow(
            parallel_row(k), rate, float(np.median([x["latency_p50_s"] for x in results])),
            [x["rss_bytes"] for x in results], [x["uss_bytes"] for x in results],
        ))
        rows.extend(_peer_rows(path, inputs, k, requests, warmup, use, prec, say))
        say(f"corepipe pipeline, {plural(k, 'stage')} ({backend} backend)")
        options: dict[str, Any] = {"address": address} if backend == "ray" else {"cores": use}
        row, timeline, stage_cores = _pipeline_row(cm.path, feeds, requests, warmup, backend, options)
        rows.append(row)
        if backend != "local":
            say(f"corepipe pipeline, {plural(k, 'stage')} (local backend)")
            rows.append(_pipeline_row(cm.path, feeds, requests, warmup, "local", {"cores": use},
                                      name="corepipe local")[0])
        stages = [
            {"index": s.index, "nodes": s.num_nodes, "first_op": s.first_op, "last_op": s.last_op,
             "resident_bytes": s.resident_bytes, "estimated_s": s.estimated_s, "measured_s": s.measured_s,
             "engine": s.engine, "precision": s.precision, "fallback": s.fallback, "loaded_s": s.loaded_s}
            for s in cm.stages
        ]
    return BenchResult(
        model=str(model), cores=k, requests=requests, weight_bytes=weight_bytes, rows=rows,
        stages=stages, compile_s=compile_s, host=f"{os.uname().machine}, {plural(len(avail), 'core')}",
        precision=prec, engine=engine, timeline=timeline, stage_cores=stage_cores, backend=backend,
    )


def strong_peers(k: int, precision: str) -> list[tuple[str, str, str]]:
    """``(benchproc mode, row name, what)`` of the strongest peers: one onnxruntime session
    shared by K threads (fp32: onnxruntime has no fast bf16), and OpenVINO's THROUGHPUT (K
    streams) and LATENCY (K threads) hints at ``precision``. `corepipe tune` measures them too."""
    peers = [("shared", f"ort 1 session shared by {plural(k, 'thread')} (fp32)",
              "onnxruntime, 1 session shared by K threads")]
    if missing_engine("openvino") is None:
        peers += [("ov_throughput", f"openvino THROUGHPUT ({plural(k, 'stream')}, {precision})", "openvino THROUGHPUT"),
                  ("ov_latency", f"openvino LATENCY ({plural(k, 'thread')}, 1 in flight, {precision})",
                   "openvino LATENCY")]
    return peers


def _peer_rows(path: Path, inputs: Path, k: int, requests: int, warmup: int, use: list[int],
               precision: str, say: Callable[[str], None]) -> list[BenchRow]:
    """The `strong_peers`, each in its own process on the same inputs."""
    rows = []
    for mode, name, what in strong_peers(k, precision):
        say(what)
        r = _serial(path, inputs, k, requests, warmup, use, mode=mode, precision=precision)
        rows.append(BenchRow(name, r["requests"] / r["elapsed_s"], r["latency_p50_s"], [r["rss_bytes"]], [r["uss_bytes"]]))
    return rows


def _stage_pids(pipe: Any) -> list[int]:
    if hasattr(pipe, "worker_pids"):
        return list(pipe.worker_pids())
    return [int(w["pid"]) for w in pipe.placement()]  # ray: actors on this host in a bench


def _added_per_index(before: list[Any], after: list[Any], amount: Callable[[Any], float],
                     count: Callable[[Any], int]) -> dict[int, float]:
    """Per index (stage or boundary), over all replicas: what ``amount`` added between two stats
    snapshots over what ``count`` added (0 where nothing was counted)."""
    def totals(items: list[Any]) -> dict[int, tuple[float, int]]:
        out: dict[int, tuple[float, int]] = {}
        for x in items:
            t, n = out.get(x.index, (0.0, 0))
            out[x.index] = (t + amount(x), n + count(x))
        return out

    earlier, out = totals(before), {}
    for i, (t, n) in sorted(totals(after).items()):
        t0, n0 = earlier.get(i, (0.0, 0))
        out[i] = (t - t0) / (n - n0) if n > n0 else 0.0
    return out


def _path_service_s(before: Any, after: Any) -> float:
    """Mean run time of one request's stages between two stats snapshots: a request crosses one
    copy of each stage, whichever replica served it, so per stage index it is busy seconds over
    requests (both summed over replicas), added along the path."""
    return sum(_added_per_index(before.stages, after.stages, lambda s: s.busy_s, lambda s: s.requests).values())


def _boundary_means(before: Any, after: Any) -> list[float]:
    """Mean hand-off per boundary index between two stats snapshots (backends that time
    them), over all replicas."""
    return list(_added_per_index(before.boundaries, after.boundaries, lambda x: x.mean_s * x.handoffs,
                                 lambda x: x.handoffs).values())


def _pipeline_row(path: Path, feeds: dict[str, np.ndarray], requests: int, warmup: int, backend: str,
                  options: dict[str, Any], name: str = "corepipe") -> tuple[BenchRow, Timeline, list[str]]:
    import psutil

    from ..runtime import load

    with load(path, backend=backend, **options) as pipe:
        # Steady state: the warm-up requests stream right ahead of the timed ones, so the
        # pipeline is full when the clock starts (its fill time is a one-off, like a session's
        # first run, and the baselines have none to pay).
        fill = max(warmup, 2 * pipe.plan.num_cores)
        start = time.perf_counter()
        for i, out in enumerate(pipe.map(feeds for _ in range(fill + requests))):
            del out
            if i == fill - 1:
                start = time.perf_counter()
        rate = requests / (time.perf_counter() - start)
        timeline = pipe.timeline()
        lat = []
        before = pipe.stats()
        for _ in range(min(requests, 30)):
            t0 = time.perf_counter()
            pipe.run(feeds)
            lat.append(time.perf_counter() - t0)
        after = pipe.stats()
        service = _path_service_s(before, after)
        rss, uss = [], []
        for pid in _stage_pids(pipe):
            info = psutil.Process(pid).memory_full_info()
            rss.append(int(info.rss))
            uss.append(int(getattr(info, "uss", info.rss)))
    row = BenchRow(name, rate, float(np.median(lat)), rss, uss, handoff_s=float(np.mean(lat)) - service,
                   boundary_s=_boundary_means(before, after))
    return row, timeline, [s.core for s in after.stages]
