"""`corepipe.bench` over mixed traffic (`corepipe.bench.mixed`): compile the pipeline with its
dims free and a static one beside it, then measure the peers, the pipeline and the static
pipeline on the same requests, in one run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifact.protoio import tensor_nbytes
from ..artifact.sizes import plural
from ..compiler.driver import CompiledModel
from ..compiler.driver import compile as compile_model
from ..runtime.placement import resolve_cores
from .mixed import MixedTraffic, batch_sizes
from .peers import measure_peer, peer_setups
from .pipeline import measure_pipeline
from .reqfile import write_requests
from .result import BenchResult, BenchRow
from .traffic import ModelSource, Traffic, example_feeds

__all__ = ["bench_mixed", "stage_rows", "base_request", "BenchProgress"]

#: ``progress(step, done, total)``: which setup runs now, of how many (as `corepipe.compile`'s).
BenchProgress = Callable[[str, int, int], None]


def stage_rows(cm: CompiledModel) -> list[dict[str, Any]]:
    """The compiled stages as a result's ``stages`` (plain data)."""
    return [
        {"index": s.index, "nodes": s.num_nodes, "first_op": s.first_op, "last_op": s.last_op,
         "resident_bytes": s.resident_bytes, "estimated_s": s.estimated_s, "measured_s": s.measured_s,
         "engine": s.engine, "precision": s.precision, "fallback": s.fallback, "loaded_s": s.loaded_s,
         "shape_mode": getattr(s, "shape_mode", "static")}
        for s in cm.stages
    ]


def base_request(model: onnx.ModelProto, mixed: MixedTraffic, given: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The request every drawn one is cut from: the one given, else inputs of the model's
    signature at the largest shape: random floats (`example_feeds`), ints all 1 (a token id,
    a mask and a segment id any text model takes)."""
    if given:
        return {k: np.asarray(v) for k, v in given.items()}
    from ..artifact.plan import TensorSpec
    from ..compiler.model.shapes import dtype_of

    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        axes = mixed.axes.get(vi.name, ())
        shape = tuple(mixed.largest.get(a, 1) if a is not None else (d.dim_value or 1)
                      for a, d in zip(axes, vi.type.tensor_type.shape.dim))
        specs.append(TensorSpec(vi.name, np.dtype(dtype_of(vi.type.tensor_type.elem_type)).name, shape))
    return {k: (np.ones_like(v) if v.dtype.kind in "iub" else v) for k, v in example_feeds(specs).items()}


def bench_mixed(model: ModelSource, path: Path, work: Path, mixed: MixedTraffic, traffic: Traffic,
                zoo_feeds: Mapping[str, np.ndarray] | None, *, use: Sequence[int], precision: str, engine: str,
                balance: str, backend: str, address: str | None, peers: bool, batch_delay: float | str,
                buckets: Any, say: BenchProgress) -> BenchResult:
    """`corepipe.bench` of mixed traffic; the arguments are `corepipe.bench`'s, worked out."""
    k = len(use)
    graph = onnx.load(str(path), load_external_data=False)
    traffic = replace(traffic, profile=mixed.profile)
    base = base_request(graph, mixed, traffic.inputs or zoo_feeds)
    reqs = mixed.requests(base, traffic)
    typical = mixed.profile.typical() if mixed.profile is not None else {}
    one = {mixed.batch: 1} if mixed.batch else {}
    batches = batch_sizes(mixed.max_batch) if mixed.max_batch and mixed.profile is None else [1]
    setups = peer_setups(k, precision, ov_batches=batches, in_flight=traffic.concurrency) if peers else []
    total = len(setups) + 4
    say(f"compile for {plural(k, 'core')} with {', '.join(f'{d} {lo}..{hi}' for d, (lo, hi) in mixed.dims.items())} "
        f"free ({balance} balance, engine {engine}, {precision})", 0, total)
    t0 = time.perf_counter()
    cm = compile_model(path, work / "compiled", num_cores=k, example_inputs=mixed.example(base, {**typical, **one}),
                       balance=balance, engine=engine, precision=precision, dynamic_dims=mixed.dims,
                       buckets=buckets, shape_profile=mixed.profile)
    compile_s = time.perf_counter() - t0
    say(f"compile the static pipeline ({mixed.static_name()})", 1, total)
    static = compile_model(path, work / "static", num_cores=k, example_inputs=mixed.example(base, mixed.largest),
                           balance=balance, engine=engine, precision=precision)
    inputs = work / "inputs.npz"
    write_requests(inputs, reqs)
    rows: list[BenchRow] = []
    for i, peer in enumerate(setups):
        say(peer.what, 2 + i, total)
        rows.append(measure_peer(peer, path, inputs, use, traffic.requests, traffic.warmup,
                                 ranges=mixed.ov_ranges(base, peer.batch)))
    options: dict[str, Any] = {"address": address} if backend == "ray" else {"cores": list(use)}
    say(f"corepipe pipeline, {plural(k, 'stage')} ({backend} backend)", 2 + len(setups), total)
    batching = {"max_batch": mixed.max_batch, "batch_delay": batch_delay} if mixed.max_batch else {}
    stages = stage_rows(cm)
    row, timeline, stage_cores = measure_pipeline(cm.path, reqs, traffic, backend, {**options, **batching},
                                                  stages=stages)
    rows.append(row)
    say(f"{mixed.static_name()} ({backend} backend)", 3 + len(setups), total)
    rows.append(measure_pipeline(static.path, mixed.padded(reqs), traffic, backend, options,
                                 stages=stage_rows(static), setup=mixed.static_name())[0])
    say("done", total, total)
    weight_bytes = sum(tensor_nbytes(t) for t in graph.graph.initializer)
    return BenchResult(
        model=model if isinstance(model, str) else ("ModelProto" if isinstance(model, onnx.ModelProto)
                                                    else os.fspath(model)),
        cores=k, requests=traffic.requests, weight_bytes=weight_bytes, rows=rows, stages=stages,
        compile_s=compile_s, host=f"{os.uname().machine}, {plural(len(resolve_cores(None)), 'core')}",
        precision=precision, engine=engine, timeline=timeline, stage_cores=stage_cores, backend=backend,
        traffic=mixed.describe(traffic),
    )
