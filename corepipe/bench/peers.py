"""The peers: the setups a user would pick instead of a pipeline, each timed in its own process
(`corepipe.bench.proc`) on the same inputs and cores.

- onnxruntime, one session with 1 thread (the reference every "x 1 thread" ratio is over);
- onnxruntime, one session with K threads;
- K onnxruntime sessions of 1 thread in parallel, one per core, started together;
- one onnxruntime session (1 thread) shared by K Python threads;
- OpenVINO's THROUGHPUT hint with K streams, and its LATENCY hint with K threads, one in flight.

onnxruntime has no fast bf16 kernels on x86-64, so its setups always run fp32; the OpenVINO ones
run at the precision asked for. Each setup's row says its precision, and how many requests were
in flight while its latency was taken.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.sizes import plural
from ..engines import missing_engine
from ..runtime.process import module_command
from .result import BenchRow

__all__ = ["PeerSetup", "peer_setups", "measure_peer", "run_serial", "run_parallel", "threads_row", "parallel_row"]


def threads_row(k: int) -> str:
    """Name of the one-session, K-thread setup (distinct from the 1-thread one when K is 1)."""
    return f"ort {k} threads" if k > 1 else "ort K=1 thread"


def parallel_row(k: int) -> str:
    """Name of the K-sessions-in-parallel setup."""
    return f"{k} sessions in parallel" if k > 1 else "K=1 session"


@dataclass(frozen=True)
class PeerSetup:
    """One peer: how `corepipe.bench.proc` runs it (``mode``, ``threads``) and how it is shown.

    Attributes:
        setup: the row's name (``"ort 1 thread"``, ``"openvino THROUGHPUT (2 streams)"``...).
        mode: `corepipe.bench.proc`'s mode; ``"parallel"`` runs K processes of 1 thread.
        engine, precision: what computes it, at which precision.
        threads: threads (or OpenVINO streams) of the one process; K processes for ``parallel``.
        in_flight: requests in flight while its latency is taken.
        what: a phrase for progress displays.
        one_core: it runs on one core (the reference), else on all K.
        batch: requests merged into one inference (OpenVINO THROUGHPUT batching its clients).
    """

    setup: str
    mode: str
    engine: str
    precision: str
    threads: int
    in_flight: int
    what: str
    one_core: bool = False
    batch: int = 1


def peer_setups(k: int, precision: str, *, strong: bool = True, ov_batches: Sequence[int] = (1,),
                in_flight: int | None = None) -> list[PeerSetup]:
    """The peers on ``k`` cores, in the order they are measured and shown.

    Args:
        precision: the OpenVINO peers' (onnxruntime's stay fp32).
        strong: include the strongest peers (one shared session, OpenVINO THROUGHPUT and
            LATENCY); OpenVINO's are left out when it is not installed.
        ov_batches: OpenVINO THROUGHPUT once per batch size: B requests merged into one
            inference, as a server batching its clients would (dynamic batching's peer).
        in_flight: requests OpenVINO THROUGHPUT keeps in flight (a closed loop of clients;
            default one per stream).
    """
    out = [PeerSetup("ort 1 thread", "serial", "onnxruntime", "fp32", 1, 1, "onnxruntime, 1 thread", one_core=True),
           PeerSetup(threads_row(k), "serial", "onnxruntime", "fp32", k, 1, f"onnxruntime, {plural(k, 'thread')}"),
           PeerSetup(parallel_row(k), "parallel", "onnxruntime", "fp32", 1, 1,
                     f"{plural(k, 'onnxruntime session')} in parallel")]
    if not strong:
        return out
    out.append(PeerSetup(f"ort 1 session shared by {plural(k, 'thread')}", "shared", "onnxruntime", "fp32", k, k,
                         f"onnxruntime, 1 session shared by {plural(k, 'thread')}"))
    if missing_engine("openvino") is None:
        flight = in_flight or k
        out += [PeerSetup(f"openvino THROUGHPUT ({plural(k, 'stream')}" + (f", batch {b})" if b > 1 else ")"),
                          "ov_throughput", "openvino", precision, k, max(flight, b),
                          "openvino THROUGHPUT" + (f" at batch {b}" if b > 1 else ""), batch=b)
                for b in ov_batches]
        out += [PeerSetup(f"openvino LATENCY ({plural(k, 'thread')}, 1 in flight)", "ov_latency", "openvino",
                          precision, k, 1, "openvino LATENCY")]
    return out


def _config(model: Path, inputs: Path, mode: str, threads: int, requests: int, warmup: int,
            cores: Sequence[int], precision: str = "fp32", in_flight: int | None = None,
            extra: Mapping[str, Any] | None = None) -> str:
    return json.dumps({"model": str(model.resolve()), "inputs": str(inputs.resolve()), "mode": mode,
                       "threads": threads, "requests": requests, "warmup": warmup, "cores": list(cores),
                       "precision": precision, "in_flight": in_flight, **(extra or {})})


def run_serial(model: Path, inputs: Path, threads: int, requests: int, warmup: int, cores: Sequence[int],
               mode: str = "serial", precision: str = "fp32", in_flight: int | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One peer process in ``mode``, to completion: its JSON report (see `corepipe.bench.proc`;
    ``extra``: more of its config, e.g. ``ranges``, ``batch``, ``offset``)."""
    argv, env = module_command("corepipe.bench.proc", _config(model, inputs, mode, threads, requests, warmup, cores,
                                                              precision, in_flight, extra))
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"peer process ({mode}, {threads} threads) failed: {out.stderr.strip()[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_parallel(model: Path, inputs: Path, requests: int, warmup: int, cores: Sequence[int], *,
                 mode: str = "parallel", precision: str = "fp32") -> tuple[float, list[dict[str, Any]]]:
    """K 1-thread sessions, one per core, started together on a broadcast ``go``; ``(requests
    per second of the whole, each process's report)``. ``mode="ov_parallel"``: OpenVINO
    sessions (LATENCY hint, one thread, at ``precision``) in place of onnxruntime's."""
    share = [requests // len(cores) + (1 if i < requests % len(cores) else 0) for i in range(len(cores))]
    procs = [
        subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for argv, env in (
            module_command("corepipe.bench.proc", _config(model, inputs, mode, 1, share[i], warmup, [c], precision,
                                                          extra={"offset": sum(share[:i])}))
            for i, c in enumerate(cores)
        )
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"peer process failed to start: {line!r}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1]) for p in procs]
        # Each process times its own share; they start together on the broadcast "go", so the
        # slowest one's time is the wall time of the whole, without our pipe round trips.
        wall = max(r["elapsed_s"] for r in results)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return sum(share) / wall, results


def measure_peer(peer: PeerSetup, model: Path, inputs: Path, cores: Sequence[int], requests: int,
                 warmup: int, ranges: Mapping[str, Any] | None = None) -> BenchRow:
    """Time ``peer`` on ``cores`` (the first one only for a one-core peer) with ``requests``
    requests after ``warmup``; the row of what it did. ``ranges``: the OpenVINO peers' model
    reshaped to these bounded dynamic dims (input -> per axis ``[lo, hi]``)."""
    use = list(cores[:1] if peer.one_core else cores)
    if peer.mode == "parallel":
        rate, results = run_parallel(model, inputs, requests, warmup, use)
        return BenchRow(
            peer.setup, "peer", peer.engine, peer.precision, rate,
            float(np.median([x["latency_p50_s"] for x in results])),
            max(float(x.get("latency_p99_s", x["latency_p50_s"])) for x in results), peer.in_flight,
            tuple(int(x["rss_bytes"]) for x in results), tuple(int(x["uss_bytes"]) for x in results),
            requests_digest=",".join(sorted({str(x.get("requests_digest", "")) for x in results})))
    extra: dict[str, Any] = {"batch": peer.batch}
    if ranges and peer.engine == "openvino":
        extra["ranges"] = dict(ranges)
    flight = max(1, peer.in_flight // peer.batch) if peer.mode == "ov_throughput" else None
    r = run_serial(model, inputs, peer.threads, requests, warmup, use, mode=peer.mode, precision=peer.precision,
                   in_flight=flight, extra=extra)
    return BenchRow(peer.setup, "peer", peer.engine, peer.precision, r["requests"] / r["elapsed_s"],
                    float(r["latency_p50_s"]), float(r.get("latency_p99_s", r["latency_p50_s"])), peer.in_flight,
                    (int(r["rss_bytes"]),), (int(r["uss_bytes"]),), requests_digest=str(r.get("requests_digest", "")))
