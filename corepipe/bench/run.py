"""`corepipe.bench`: compile a model for K cores and measure the pipeline against the peers a user
would pick instead (`corepipe.bench.peers`), each in its own process on the same inputs, in one run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifact.dims import ShapeProfile
from ..artifact.protoio import tensor_nbytes
from ..artifact.sizes import plural
from ..compiler.cut.choose import check_request, resolve_precision
from ..compiler.driver import BALANCES
from ..compiler.driver import compile as compile_model
from ..errors import CorepipeError
from ..runtime.placement import resolve_cores
from .mixed import plan_mixed
from .mixedrun import BenchProgress, bench_mixed, stage_rows
from .peers import measure_peer, peer_setups
from .pipeline import measure_pipeline
from .result import BenchResult
from .traffic import ModelSource, Traffic, resolve_model

__all__ = ["bench", "BenchProgress", "BACKENDS"]

#: The backends a bench measures (``inline`` runs the stages one after another: nothing to measure).
BACKENDS = ("local", "ray")


def bench(
    model: ModelSource,
    *,
    num_cores: int | None = None,
    precision: str | None = None,
    engine: str = "auto",
    backend: str = "local",
    requests: int = 64,
    peers: bool = True,
    warmup: int = 5,
    balance: str = "measure",
    example_inputs: Mapping[str, np.ndarray] | None = None,
    address: str | None = None,
    progress: BenchProgress | None = None,
    lengths: str | os.PathLike[str] | ShapeProfile | None = None,
    max_batch: int | None = None,
    batch_delay: float | str = "500us",
    concurrency: int | None = None,
    dynamic_dims: Mapping[str, tuple[int, int]] | None = None,
    buckets: str | Mapping[str, Sequence[int]] | None = "auto",
    seed: int = 0,
) -> BenchResult:
    """Compile ``model`` for K cores and measure the pipeline against the peers, in one run.

    The peers, each in its own process on the same inputs: onnxruntime with 1 thread and with
    K threads, K 1-thread sessions in parallel, one session shared by K threads, OpenVINO's
    THROUGHPUT (K streams) and LATENCY (K threads) hints at ``precision``. onnxruntime has no
    fast bf16, so its rows stay fp32; every row says its precision, and every ratio taken across
    precisions says so (`corepipe.bench.Ratio`).

    >>> result = corepipe.bench("zoo:mlp", num_cores=2, requests=32)          # doctest: +SKIP
    >>> result.pipeline.req_per_s, result.ratios["ort 1 thread"].value          # doctest: +SKIP
    >>> print(result.to_markdown())                                             # doctest: +SKIP
    >>> corepipe.bench("bert.onnx", num_cores=2, lengths="~24:128")             # doctest: +SKIP
    >>> corepipe.bench("resnet_dyn.onnx", num_cores=2, max_batch=8, concurrency=16)  # doctest: +SKIP

    Mixed traffic (``lengths``, ``max_batch``; `corepipe.bench.mixed`): the pipeline is compiled
    with those dims free, and a static pipeline at the largest shape is measured beside it (row
    ``"corepipe padded static (...)"``, every request padded to it; with ``max_batch`` alone,
    ``"corepipe without batching"``). Every setup gets the same requests, drawn with ``seed``;
    the peers run the model's own symbolic dims (OpenVINO's reshaped to the same bounded
    ranges). With ``max_batch``, OpenVINO THROUGHPUT runs at batch 1, 2, 4, ... ``max_batch``
    (batch-1 clients merged as a server would; lengths then leave it at batch 1).

    Args:
        model: an ``.onnx`` path, ``"zoo:NAME"`` (a built-in model) or a ModelProto.
        num_cores: K, the cores to use (default: all this process may run on).
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"``: the pipeline's
            compile precision, and the OpenVINO peers'.
        engine: the pipeline's compile engine (``"auto"``: per stage).
        backend: the pipeline's backend, ``"local"`` or ``"ray"``; with ``"ray"`` the local
            backend is measured too, in the same run (row ``"corepipe local"``).
        requests: requests per measurement (the K-sessions peer splits them across K).
        peers: measure the peers (``False``: the pipeline alone, no ratios).
        warmup: unmeasured requests before each measurement.
        balance: how the pipeline is cut (`corepipe.compile`): ``"measure"`` (default: stages
            timed one at a time, the cut a benchmark should show), ``"load"`` or ``"estimate"``.
        example_inputs: the request to send (default: the built-in model's example, else
            deterministic random inputs of the signature).
        address: the Ray cluster for ``backend="ray"`` (default: a private instance).
        progress: called with ``(step, done, total)`` as each setup starts.
        lengths: mixed traffic: each request's length drawn from ``"8:128"`` (uniform),
            ``"~24:128"`` (log-normal, median 24, capped at 128), ``"16,32,128"`` (seen), a file
            of lengths, or a `ShapeProfile` (`corepipe.bench.lengths`); unnamed lengths vary
            the model's sequence dim, which must be symbolic (ONNX ``dim_param``).
        max_batch: dynamic batching (`corepipe.load`'s ``max_batch``) along the model's
            symbolic batch dim, measured with a closed loop of ``concurrency`` clients.
        batch_delay: how long a merged batch waits for more (`corepipe.load`'s).
        concurrency: clients in a closed loop, each sending its next request when its answer
            is back (default with ``max_batch``: 2 x ``max_batch``; else as many in flight as
            each setup takes).
        dynamic_dims: the range each dim is compiled for (default: the lengths' own, and the
            batch up to ``max_batch``); a length outside it is an error before anything runs.
        buckets: as `corepipe.compile`'s (``"auto"``: per stage, measured on the traffic).
        seed: the draw of lengths (the same requests for every setup and every run).

    Returns:
        A `BenchResult`: ``.rows`` (``.setup``, ``.req_per_s``, ``.p50_s``, ``.p99_s``,
        ``.rss_bytes``, ``.precision``), ``.ratios``, ``.to_markdown()``.

    Raises:
        DeploymentError: more cores than this process may use.
        CompileError: the model cannot be compiled as asked (engine, precision, balance...).
        CorepipeError: a model that is not an .onnx file, ModelProto or zoo:NAME; a backend
            that cannot be benchmarked; lengths that do not parse, name no symbolic dim of the
            model, or fall outside ``dynamic_dims``; ``max_batch`` on a model with no batch dim.
    """
    if backend not in BACKENDS:
        raise CorepipeError(
            f"backend {backend!r} cannot be benchmarked: "
            + ("the inline backend runs the stages one after another in this process; " if backend == "inline" else "")
            + f"use one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise CorepipeError(f"address applies to backend='ray' only, not {backend!r}")
    if balance not in BALANCES:
        raise CorepipeError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    if concurrency is None and max_batch is not None:
        concurrency = 2 * max_batch
    traffic = Traffic(inputs=example_inputs, requests=requests, warmup=warmup, concurrency=concurrency, seed=seed)
    use = resolve_cores(num_cores)
    k = len(use)
    prec = resolve_precision(precision)
    check_request(engine, prec)
    say = progress or (lambda step, done, total: None)
    with tempfile.TemporaryDirectory(prefix="corepipe-bench-") as tmp:
        work = Path(tmp)
        path, zoo_feeds = resolve_model(model, work)
        if lengths is not None or max_batch is not None or dynamic_dims:
            return bench_mixed(
                model, path, work, plan_mixed(onnx.load(str(path), load_external_data=False), lengths, max_batch,
                                              dynamic_dims),
                traffic, zoo_feeds, use=use, precision=prec, engine=engine, balance=balance,
                backend=backend, address=address, peers=peers, batch_delay=batch_delay, buckets=buckets, say=say)
        setups = peer_setups(k, prec) if peers else []
        total = len(setups) + 1 + (backend != "local")
        say(f"compile for {plural(k, 'core')} ({balance} balance, engine {engine}, {prec})", 0, total)
        t0 = time.perf_counter()
        cm = compile_model(path, work / "compiled", num_cores=k, example_inputs=traffic.inputs or zoo_feeds,
                           balance=balance, engine=engine, precision=prec)
        compile_s = time.perf_counter() - t0
        feeds = traffic.feeds(cm.inputs, zoo_feeds)
        inputs = work / "inputs.npz"
        np.savez(inputs, **feeds)  # type: ignore[arg-type]
        weight_bytes = sum(  # from the dims: the weights themselves stay on disk
            tensor_nbytes(t) for t in onnx.load(str(path), load_external_data=False).graph.initializer)
        stages = stage_rows(cm)
        rows = []
        for i, peer in enumerate(setups):
            say(peer.what, i, total)
            rows.append(measure_peer(peer, path, inputs, use, traffic.requests, traffic.warmup))
        say(f"corepipe pipeline, {plural(k, 'stage')} ({backend} backend)", len(setups), total)
        options: dict[str, Any] = {"address": address} if backend == "ray" else {"cores": use}
        row, timeline, stage_cores = measure_pipeline(cm.path, feeds, traffic, backend, options, stages=stages)
        rows.append(row)
        if backend != "local":
            say(f"corepipe pipeline, {plural(k, 'stage')} (local backend)", len(setups) + 1, total)
            rows.append(measure_pipeline(cm.path, feeds, traffic, "local", {"cores": use}, stages=stages,
                                         setup="corepipe local")[0])
        say("done", total, total)
    return BenchResult(
        model=model if isinstance(model, str) else ("ModelProto" if isinstance(model, onnx.ModelProto)
                                                      else os.fspath(model)),
        cores=k, requests=traffic.requests, weight_bytes=weight_bytes, rows=rows, stages=stages,
        compile_s=compile_s, host=f"{os.uname().machine}, {plural(len(resolve_cores(None)), 'core')}",
        precision=prec, engine=engine, timeline=timeline, stage_cores=stage_cores, backend=backend,
    )
