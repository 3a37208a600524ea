"""What bounds a decoder at batch 1: every decode step reads every weight once (the embedding
tables: one row), so tokens/s <= memory read bandwidth / weight bytes per token."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper


def weight_bytes_per_token(path: Path) -> tuple[int, int]:
    """(bytes of weights one decode step reads, parameters in all) of an ONNX decoder: every
    float initializer, except that a table only gathered from (an embedding) counts one row."""
    model = onnx.load(str(path), load_external_data=False)
    gathered: dict[str, bool] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            only = node.op_type == "Gather" and i == 0
            gathered[name] = gathered.get(name, True) and only
    # optimum puts Identity nodes over deduplicated initializers: follow them
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    for out, src in alias.items():
        gathered[src] = gathered.get(src, True) and gathered.get(out, False)
    total = params = 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        size = int(np.prod(init.dims)) if init.dims else 1
        params += size
        row = size // init.dims[0] if gathered.get(init.name) and init.dims else size
        total += row * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total, params


def _reader(n_bytes: int, seconds: float, q: mp.Queue) -> None:
    a = np.ones((n_bytes // 4096, 1024), np.float32)  # a matrix times a vector: a decode step's kernel
    v = np.ones(1024, np.float32)
    a @ v
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        a @ v
        done += a.nbytes
    q.put((done / (time.perf_counter() - t0), done / (time.process_time() - c0)))


def bandwidth_gbs(procs: int, n_bytes: int = 512 << 20, seconds: float = 2.0) -> tuple[float, float]:
    """Memory read bandwidth of ``procs`` single-threaded processes, each multiplying its own
    matrix, far larger than the caches, by a vector: (GB per wall second, all processes
    together; GB per CPU second of one process). On a shared machine the second is the core's own
    bandwidth while it runs; the first is what this run got."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # the spawned children's BLAS: one thread each
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    ps = [ctx.Process(target=_reader, args=(n_bytes, seconds, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    got = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return sum(w for w, _ in got) / 1e9, float(np.median([c for _, c in got])) / 1e9
