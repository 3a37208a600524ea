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
import importlib.util
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import corepipe
import corepipe.zoo

MiB = 1024 * 1024


def _sibling(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` beside this script, however this script was loaded."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"corepipe_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_support = _sibling("soak_support")
Cases, Sampler, alive, load_model, markdown, rss_rows, shm_listing, summary, worker_children = (
    _support.Cases, _support.Sampler, _support.alive, _support.load_model, _support.markdown,
    _support.rss_rows, _support.shm_listing, _support.summary, _support.worker_children,
)


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
    p.add_argument(
        "--restart",
        choices=["give-up", "backoff"],
        default=None,
        help="restart policy of a stage that keeps dying (default corepipe's: give-up; "
        "backoff: what `corepipe serve` uses, restart after a growing wait, never give up)",
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
    if args.restart is not None:
        options["restart"] = args.restart
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
