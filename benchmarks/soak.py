"""Soak test for the ``local`` backend: a long stream of requests with worker kills.

Compiles a small real model into N stages, streams many requests with distinct deterministic
inputs, SIGKILLs one worker every ``--kill-every`` completed requests (rotating through the
stages, always while requests are in flight), and checks that every answer is right and in
order, that client and worker memory stays flat, and that nothing is left behind after close.

    python benchmarks/soak.py                         # 10,000 requests, a kill every 2,000
    python benchmarks/soak.py --requests 300 --kill-every 100 --model mlp --json out.json

Exit status: 0 when every answer arrived, matched the reference and came in order, every kill
was followed by a restart, and no worker process or shared-memory segment outlived ``close``;
1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import psutil

import corepipe
import corepipe.zoo

MiB = 1024 * 1024
WORKER_MARK = "corepipe.runtime.worker"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="tiny_cnn",
        help="zoo model name (corepipe.zoo.names()) or path to an .onnx file",
    )
    p.add_argument("--stages", type=int, default=3, help="pipeline stages (num_cores)")
    p.add_argument("--requests", type=int, default=10_000, help="requests to stream")
    p.add_argument(
        "--kill-every",
        type=int,
        default=2_000,
        help="SIGKILL one worker every N completed requests (0: never)",
    )
    p.add_argument(
        "--distinct",
        type=int,
        default=500,
        help="distinct inputs, reused cyclically (request i uses input i %% N); "
        "0: every request gets its own input, reference computed on the fly",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    p.add_argument("--sample-every", type=float, default=0.5, help="RSS sampling period, s")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="requests after a process starts that the RSS figures ignore "
        "(default: min(500, requests // 10))",
    )
    p.add_argument(
        "--max-slope",
        type=float,
        default=2.0,
        help="fail if a process that lived through >= --slope-span requests after "
        "warm-up grows faster than this, MiB per 1,000 requests (0: no check)",
    )
    p.add_argument(
        "--slope-span",
        type=int,
        default=3_000,
        help="requests a process must span after warm-up for --max-slope to apply",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for any one answer before calling it missing",
    )
    p.add_argument("--max-in-flight", type=int, default=None, help="pipeline max_in_flight")
    p.add_argument(
        "--max-deaths",
        type=int,
        default=None,
        help="pipeline max_deaths (default corepipe's: 3 deaths of one stage within "
        "death_window = 60 s give up); raise it for long soaks with fast kills",
    )
    p.add_argument("--workdir", default=None, help="compile here instead of a temp dir")
    p.add_argument("--markdown", default=None, help="append a Markdown section to this file")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    args = p.parse_args(argv)
    if args.stages < 1 or args.requests < 1 or args.kill_every < 0 or args.distinct < 0:
        p.error("--stages and --requests must be >= 1; --kill-every and --distinct >= 0")
    if args.warmup is None:
        args.warmup = min(500, args.requests // 10)
    return args


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


# -- the soak ----------------------------------------------------------------------------------
def soak(args: argparse.Namespace, workdir: Path, log) -> dict[str, Any]:
    model = load_model(args.model)
    cases = Cases(model, args.seed, args.distinct)
    t0 = time.perf_counter()
    cm = corepipe.compile(
        model, workdir / "artifact", example_inputs=cases.example(), num_cores=args.stages
    )
    compile_s = time.perf_counter() - t0
    log(f"compiled {args.model} into {cm.plan.num_cores} stages in {compile_s:.1f} s")

    shm_before = shm_listing()
    options: dict[str, Any] = {}
    if args.max_in_flight is not None:
        options["max_in_flight"] = args.max_in_flight
    if args.max_deaths is not None:
        options["max_deaths"] = args.max_deaths
    pipe = corepipe.load(workdir / "artifact", **options)
    owned_shm = list(pipe.shm_names())
    n_stages = len(pipe.worker_pids())
    progress = [0]
    sampler = Sampler(pipe, progress, args.sample_every)
    sampler.sample()
    sampler.start()

    mismatches: list[dict[str, Any]] = []
    failures: list[str] = []
    kills: list[dict[str, Any]] = []
    order_errors: list[str] = []
    completion_order: list[int] = [-1]  # last completed index, set by future callbacks
    order_lock = threading.Lock()
    missing = 0
    submitted = 0
    max_err = 0.0

    def on_done(i: int):
        def cb(_fut) -> None:
            with order_lock:
                if i <= completion_order[0]:
                    order_errors.append(
                        f"request {i} completed after request {completion_order[0]}"
                    )
                completion_order[0] = max(completion_order[0], i)

        return cb

    window: collections.deque[tuple[int, Any, dict[str, np.ndarray]]] = collections.deque()
    limit = pipe.max_in_flight
    broken = None
    start = time.perf_counter()
    last_log = start
    done = 0
    try:
        while done < args.requests:
            while broken is None and submitted < args.requests and len(window) < limit:
                feeds, ref = cases(submitted)
                try:
                    fut = pipe.submit(feeds, timeout=args.timeout)
                except (corepipe.PipelineClosedError, TimeoutError) as exc:
                    broken = f"submit of request {submitted} failed: {type(exc).__name__}: {exc}"
                    break
                fut.add_done_callback(on_done(submitted))
                window.append((submitted, fut, ref))
                submitted += 1
            if not window:
                break
            i, fut, ref = window.popleft()
            if i != done:
                order_errors.append(f"expected request {done}, got {i}")
            try:
                out = fut.result(timeout=args.timeout)
            except TimeoutError:
                missing += 1
                failures.append(f"request {i}: no answer within {args.timeout} s (hang?)")
                broken = broken or "hang"
                break
            except Exception as exc:  # a failed request: count it, go on
                failures.append(f"request {i}: {type(exc).__name__}: {exc}")
            else:
                bad = []
                for name, want in ref.items():
                    got = out.get(name)
                    if got is None or got.shape != want.shape or got.dtype != want.dtype:
                        bad.append(f"{name}: got {None if got is None else (got.dtype, got.shape)}")
                        continue
                    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
                    max_err = max(max_err, err)
                    if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                        bad.append(f"{name}: max abs err {err:.3g}")
                if bad:
                    mismatches.append(
                        {
                            "request": i,
                            "input": i % args.distinct if args.distinct else i,
                            "detail": bad,
                        }
                    )
            done += 1
            progress[0] = done
            if args.kill_every and done % args.kill_every == 0 and done < args.requests:
                # submit until requests are in flight, so the kill lands on work in progress
                # (the window may grow past max_in_flight here: at most 4x, still bounded)
                in_flight = pipe.stats().in_flight
                while (
                    (in_flight == 0 or len(window) < limit)
                    and submitted < args.requests
                    and len(window) < 4 * limit
                    and broken is None
                ):
                    feeds, ref = cases(submitted)
                    fut = pipe.submit(feeds, timeout=args.timeout)
                    fut.add_done_callback(on_done(submitted))
                    window.append((submitted, fut, ref))
                    submitted += 1
                    in_flight = pipe.stats().in_flight
                stage = len(kills) % n_stages
                pid = pipe.worker_pids()[stage]
                sampler.seen_pids.add(pid)
                os.kill(pid, signal.SIGKILL)
                kills.append({"at": done, "stage": stage, "pid": pid, "in_flight": in_flight})
                log(
                    f"  killed stage {stage} (pid {pid}) after {done} requests, "
                    f"{in_flight} in flight"
                )
            now = time.perf_counter()
            if now - last_log > 5:
                last_log = now
                log(
                    f"  {done}/{args.requests} requests, {done / (now - start):.0f} req/s, "
                    f"client RSS {psutil.Process().memory_info().rss / MiB:.1f} MiB"
                )
        stream_s = time.perf_counter() - start
        missing += args.requests - done
        if broken and broken != "hang":
            failures.append(broken)
        sampler.sample()
        stats = pipe.stats()
        replayed = pipe.replayed
        final_pids = pipe.worker_pids()
    finally:
        sampler.stop()
        for _i, fut, _ref in window:
            fut.cancel()
        pipe.close(timeout=10)

    # leftovers after close
    seen = sampler.seen_pids | set(final_pids) | {k["pid"] for k in kills}
    left_procs = sorted(set(alive(seen)) | worker_children())
    deadline = time.monotonic() + 5
    while True:
        now_shm = shm_listing()
        left_shm = [n for n in owned_shm if n.lstrip("/") in now_shm]
        if not left_shm or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    other_new_shm = sorted(now_shm - shm_before - {n.lstrip("/") for n in owned_shm})

    restarts = [s.restarts for s in stats.stages]
    kills_per_stage = [sum(1 for k in kills if k["stage"] == s) for s in range(n_stages)]
    rows = rss_rows(sampler.series, args.warmup)
    growing = [
        r
        for r in rows
        if args.max_slope
        and r["slope_mib_per_1k"] is not None
        and (r["to_request"] - r["from_request"]) >= args.slope_span
        and r["slope_mib_per_1k"] > args.max_slope
    ]

    problems = []
    if mismatches:
        problems.append(f"{len(mismatches)} wrong answers")
    if failures:
        problems.append(f"{len(failures)} failed requests")
    if missing:
        problems.append(f"{missing} missing answers")
    if order_errors:
        problems.append(f"{len(order_errors)} order errors")
    if stats.completed != args.requests:
        problems.append(f"pipeline counted {stats.completed} completed, expected {args.requests}")
    if restarts != kills_per_stage:
        problems.append(f"restarts per stage {restarts} != kills per stage {kills_per_stage}")
    if kills and any(k["in_flight"] == 0 for k in kills):
        problems.append("a kill landed with nothing in flight")
    if left_procs:
        problems.append(f"worker processes left after close: {left_procs}")
    if left_shm:
        problems.append(f"shared memory left after close: {left_shm}")
    if growing:
        problems.append(
            "memory grows: "
            + ", ".join(
                f"{r['process']} pid {r['pid']} {r['slope_mib_per_1k']} MiB/1k req" for r in growing
            )
        )

    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
        if args.argv is None
        else "benchmarks/soak.py " + " ".join(map(shlex.quote, args.argv)),
        "config": {k: v for k, v in vars(args).items() if k not in ("argv",)},
        "model": args.model,
        "stages": n_stages,
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "compile_s": round(compile_s, 3),
        "requests": args.requests,
        "submitted": submitted,
        "completed": done,
        "stream_s": round(stream_s, 3),
        "throughput_rps": round(done / stream_s, 1) if stream_s else 0.0,
        "stats_throughput_rps": round(stats.throughput, 1),
        "latency_p50_ms": round(stats.latency_p50_s * 1e3, 3),
        "latency_p99_ms": round(stats.latency_p99_s * 1e3, 3),
        "kills": len(kills),
        "kill_log": kills,
        "restarts_per_stage": restarts,
        "replayed": replayed,
        "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:10],
        "max_abs_err": max_err,
        "failures": len(failures),
        "failure_examples": failures[:10],
        "missing": missing,
        "order_errors": len(order_errors),
        "order_error_examples": order_errors[:10],
        "stats_completed": stats.completed,
        "stats_failed": stats.failed,
        "stage_requests": [s.requests for s in stats.stages],
        "rss_warmup_requests": args.warmup,
        "rss": rows,
        "rss_sampler_errors": sampler.errors,
        "leftover_processes": left_procs,
        "leftover_shm": left_shm,
        "other_new_shm": other_new_shm,
        "problems": problems,
        "ok": not problems,
    }


# -- reporting ---------------------------------------------------------------------------------
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, flush=True))
    with tempfile.TemporaryDirectory(prefix="corepipe-soak-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        res = soak(args, workdir, log)
    print(summary(res), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(markdown(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
