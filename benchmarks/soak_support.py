"""Helpers of benchmarks/soak.py: the model with its inputs and reference answers, RSS
sampling per process with least-squares slopes, leak checks, and the soak's reports."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import psutil

import corepipe
import corepipe.zoo

MiB = 1024 * 1024
WORKER_MARK = "corepipe.runtime.worker"


# -- model, inputs, reference ------------------------------------------------------------------
def load_model(spec: str) -> onnx.ModelProto:
    if spec in corepipe.zoo.names():
        model, _ = corepipe.zoo.get(spec)
        return model
    return onnx.load(spec)


class Cases:
    """Inputs and reference outputs of request ``i``: a ring of ``distinct`` cases built once
    (bounded memory), or, with ``distinct == 0``, a fresh case per request computed on demand."""

    def __init__(self, model: onnx.ModelProto, seed: int, distinct: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.model = model
        self.seed = seed
        self.distinct = distinct
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._ring = [self._make(i) for i in range(distinct)]

    def _make(self, i: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        feeds = corepipe.zoo.example_inputs(self.model, seed=self.seed * 1_000_003 + i)
        outs = self.session.run(self.output_names, feeds)
        return feeds, dict(zip(self.output_names, outs))

    def __call__(self, i: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return self._ring[i % self.distinct] if self.distinct else self._make(i)

    def example(self) -> dict[str, np.ndarray]:
        return self(0)[0]


# -- leak checks -------------------------------------------------------------------------------
def alive(pids: set[int], timeout: float = 10.0) -> list[int]:
    """Pids still running (not zombies) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = sorted(pids)
    while True:
        still = []
        for pid in left:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        left = still
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def worker_children() -> set[int]:
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if WORKER_MARK in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.add(child.pid)
        except psutil.Error:
            pass
    return out


def shm_listing() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


# -- memory sampling ---------------------------------------------------------------------------
@dataclass
class Series:
    """RSS samples of one process: (completed requests, RSS bytes)."""

    role: str
    pid: int
    born_at: int  # completed requests when first seen
    points: list[tuple[int, int]] = field(default_factory=list)


class Sampler(threading.Thread):
    def __init__(self, pipe: corepipe.Pipeline, progress: list[int], period: float) -> None:
        super().__init__(name="soak-rss-sampler", daemon=True)
        self.pipe = pipe
        self.progress = progress  # [completed], updated by the main loop
        self.period = period
        self.stop_event = threading.Event()
        self.series: dict[tuple[str, int], Series] = {}
        self.seen_pids: set[int] = set()
        self.errors = 0

    def sample(self) -> None:
        done = self.progress[0]
        procs = [("client", os.getpid())]
        procs += [(f"stage {k}", pid) for k, pid in enumerate(self.pipe.worker_pids())]
        for role, pid in procs:
            if role != "client":
                self.seen_pids.add(pid)
            try:
                proc = psutil.Process(pid)
                rss = proc.memory_info().rss
                if proc.status() == psutil.STATUS_ZOMBIE or rss == 0:
                    continue  # killed, not yet reaped
            except psutil.Error:  # just killed, or not yet started
                continue
            s = self.series.setdefault((role, pid), Series(role, pid, done))
            s.points.append((done, rss))

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sample()
            except Exception:  # never let sampling kill the soak; count it
                self.errors += 1
            self.stop_event.wait(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


def rss_rows(series: dict[tuple[str, int], Series], warmup: int) -> list[dict[str, Any]]:
    rows = []
    for s in series.values():
        pts = [(x, r) for x, r in s.points if x >= s.born_at + warmup] or s.points[-1:]
        xs = np.array([x for x, _ in pts], dtype=np.float64)
        ys = np.array([r for _, r in pts], dtype=np.float64) / MiB
        slope = None
        if len(pts) >= 3 and xs.max() > xs.min():
            slope = float(np.polyfit(xs / 1000.0, ys, 1)[0])
        rows.append(
            {
                "process": s.role,
                "pid": s.pid,
                "samples": len(pts),
                "from_request": int(xs.min()) if len(pts) else None,
                "to_request": int(xs.max()) if len(pts) else None,
                "first_mib": round(float(ys[0]), 2) if len(pts) else None,
                "last_mib": round(float(ys[-1]), 2) if len(pts) else None,
                "max_mib": round(float(ys.max()), 2) if len(pts) else None,
                "slope_mib_per_1k": None if slope is None else round(slope, 4),
            }
        )
    order = {"client": -1}
    rows.sort(key=lambda r: (order.get(r["process"], 0), r["process"], r["from_request"] or 0))
    return rows


def _f(v: Any) -> str:
    return "-" if v is None else str(v)


def rss_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| process | pid | requests | samples | first MiB | last MiB | max MiB | MiB / 1k req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['process']} | {r['pid']} | {_f(r['from_request'])}-{_f(r['to_request'])}"
            f" | {r['samples']} | {_f(r['first_mib'])} | {_f(r['last_mib'])} "
            f"| {_f(r['max_mib'])} | {_f(r['slope_mib_per_1k'])} |"
        )
    return out


def summary(res: dict[str, Any]) -> str:
    lines = [
        (
            f"soak: {res['model']} in {res['stages']} stages, {res['completed']}/{res['requests']} "
            f"requests in {res['stream_s']:.1f} s ({res['throughput_rps']:.0f} req/s), "
            f"p50 {res['latency_p50_ms']:.2f} ms, p99 {res['latency_p99_ms']:.2f} ms"
        ),
        (
            f"  kills {res['kills']}, restarts/stage {res['restarts_per_stage']}, replayed "
            f"{res['replayed']}, mismatches {res['mismatches']}, failures {res['failures']}, "
            f"missing {res['missing']}, order errors {res['order_errors']} "
            f"(max abs err {res['max_abs_err']:.2g})"
        ),
        (
            f"  after close: leftover processes {res['leftover_processes'] or 'none'}, "
            f"leftover shm {res['leftover_shm'] or 'none'}"
        ),
    ]
    rows = res["rss"]
    if len(rows) > 10:  # many restarts: one line per role (the tables have every process)
        rows = []
        for role in dict.fromkeys(r["process"] for r in res["rss"]):
            mine = [r for r in res["rss"] if r["process"] == role]
            slopes = [r["slope_mib_per_1k"] for r in mine if r["slope_mib_per_1k"] is not None]
            rows.append(
                {
                    "process": role,
                    "pid": f"x{len(mine)}",
                    "first_mib": mine[0]["first_mib"],
                    "last_mib": mine[-1]["last_mib"],
                    "max_mib": max(
                        (r["max_mib"] for r in mine if r["max_mib"] is not None), default=None
                    ),
                    "slope_mib_per_1k": round(float(np.median(slopes)), 4) if slopes else None,
                    "samples": sum(r["samples"] for r in mine),
                }
            )
    for r in rows:
        lines.append(
            f"  RSS {r['process']:>8} pid {r['pid']:>7}: first {_f(r['first_mib'])} "
            f"last {_f(r['last_mib'])} max {_f(r['max_mib'])} MiB, "
            f"slope {_f(r['slope_mib_per_1k'])} MiB/1k req ({r['samples']} samples)"
        )
    lines.append("  RESULT: " + ("OK" if res["ok"] else "FAIL: " + "; ".join(res["problems"])))
    return "\n".join(lines)


def markdown(res: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        (
            f"## Soak: {res['model']}, {res['stages']} stages, {res['requests']} requests "
            f"({'OK' if res['ok'] else 'FAIL'})"
        ),
        "",
        f"Run {when} on {res['cpu_count']} CPUs (affinity {res['affinity']}).",
        "",
        "```",
        res["command"],
        "```",
        "",
        "| metric | value |",
        "|---|---|",
        f"| completed | {res['completed']} / {res['requests']} |",
        (
            f"| throughput | {res['throughput_rps']} req/s (stream), "
            f"{res['stats_throughput_rps']} req/s (stats, incl. start-up) |"
        ),
        f"| latency p50 / p99 | {res['latency_p50_ms']} ms / {res['latency_p99_ms']} ms |",
        f"| kills (SIGKILL) | {res['kills']} |",
        f"| restarts per stage | {res['restarts_per_stage']} |",
        f"| replayed requests | {res['replayed']} |",
        f"| mismatches | {res['mismatches']} (max abs err {res['max_abs_err']:.2g}) |",
        (
            f"| failures / missing / order errors | {res['failures']} / {res['missing']} / "
            f"{res['order_errors']} |"
        ),
        (
            f"| leftover processes / shm after close | {len(res['leftover_processes'])} / "
            f"{len(res['leftover_shm'])} |"
        ),
        "",
        (
            f"RSS after warm-up ({res['rss_warmup_requests']} requests from each process's start); "
            "slope by least squares:"
        ),
        "",
        *rss_table(res["rss"]),
        "",
    ]
    if res["problems"]:
        lines += ["Problems: " + "; ".join(res["problems"]), ""]
    return "\n".join(lines) + "\n"
