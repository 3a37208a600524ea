"""Does engine="auto" follow this machine's engine speeds, and what does a default compile reach?
(issue 27, "Let the machine choose the engine").

For each model and precision, in one run on the same cores:

1. A default compile (``balance="estimate"``, 2 stages) with an empty engine-speed cache: each
   stage is probed on both engines with one thread. The table shows, per stage, each engine's
   one-core time and the engine chosen (it must be the faster one). A second compile shows the
   cached probe's cost.
2. That pipeline (local backend, one process per stage on 2 cores), against two one-thread
   sessions of each engine (K processes, `corepipe.bench.peers.run_parallel`), alternating
   A B C A B C ... for ``--rounds`` rounds. Target: >= 0.95 of the faster engine's pair.

    python benchmarks/engine_choice.py --models resnet50,bert --precisions fp32,bf16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
import corepipe
from corepipe.bench.peers import run_parallel
from corepipe.bench.reqfile import write_requests
from corepipe.bench.traffic import resolve_model


def _stream(path: Path, feeds: dict, seconds: float, cores: list[int]) -> float:
    """The pipeline's req/s streaming one request over and over for about ``seconds``."""
    with corepipe.load(path, cores=cores) as pipe:
        t0 = time.perf_counter()
        list(pipe.map([feeds] * 4))
        one = (time.perf_counter() - t0) / 4
        n = max(8, int(seconds / max(one / len(cores), 1e-4)))
        t0 = time.perf_counter()
        list(pipe.map([feeds] * n))
        return n / (time.perf_counter() - t0)


def _pair(model: Path, inputs: Path, seconds: float, cores: list[int], mode: str, precision: str) -> float:
    rate, _ = run_parallel(model, inputs, 8, 2, cores, mode=mode, precision=precision)  # sizes the run
    rate, _ = run_parallel(model, inputs, max(8, int(rate * seconds)), 3, cores, mode=mode, precision=precision)
    return rate


def one(name: str, precision: str, rounds: int, seconds: float, cores: list[int], work: Path) -> list[str]:
    path, feeds = resolve_model(f"zoo:{name}", work)
    assert feeds is not None
    inputs = work / "inputs.npz"
    write_requests(inputs, [dict(feeds)])
    os.environ["COREPIPE_CACHE_DIR"] = str(work / "cache")  # an empty cache: the probe runs
    t0 = time.perf_counter()
    cm = corepipe.compile(path, work / "default", example_inputs=feeds, num_cores=2, precision=precision)
    probed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    corepipe.compile(path, work / "again", example_inputs=feeds, num_cores=2, precision=precision)
    cached_s = time.perf_counter() - t0
    os.environ["COREPIPE_ENGINE_PROBE"] = "off"
    t0 = time.perf_counter()
    corepipe.compile(path, work / "off", example_inputs=feeds, num_cores=2, precision=precision)
    off_s = time.perf_counter() - t0
    del os.environ["COREPIPE_ENGINE_PROBE"]
    out = [f"#### {name} {precision}", "",
           f"default compile: {probed_s:.1f} s with the probe timed, {cached_s:.1f} s with it cached, "
           f"{off_s:.1f} s with it off (COREPIPE_ENGINE_PROBE=off: every stage still checked on both engines)", "",
           "| stage | nodes | onnxruntime fp32 ms (1 thread) | openvino ms (1 thread) | chosen | why |",
           "|---|---|---:|---:|---|---|"]
    for st in cm.stages:
        t = st.engine_s or {}
        ms = [f"{t[e] * 1e3:.2f}" if e in t else "-" for e in ("onnxruntime", "openvino")]
        out.append(f"| {st.index} | {st.node_start}..{st.node_end - 1} | {ms[0]} | {ms[1]} | "
                   f"{st.engine} {st.precision} | {st.engine_why} |")
    setups = {"corepipe default (2 stages)": lambda: _stream(cm.path, feeds, seconds, cores),
              "2 x onnxruntime 1 thread": lambda: _pair(path, inputs, seconds, cores, "parallel", "fp32"),
              f"2 x openvino 1 thread ({precision})": lambda: _pair(path, inputs, seconds, cores, "ov_parallel",
                                                                    precision)}
    runs: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):  # alternating, so a noisy moment hits every setup alike
        for k, fn in setups.items():
            runs[k].append(fn())
    med = {k: statistics.median(v) for k, v in runs.items()}
    # onnxruntime has no bf16 kernels: at bf16 its fp32 pair is shown, and counts if it is faster
    peers = [k for k in setups if not k.startswith("corepipe")]
    best = max(peers, key=lambda k: med[k])
    out += ["", "| setup | req/s (median) | rounds |", "|---|---:|---|"]
    out += [f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |" for k, v in runs.items()]
    ratio = med["corepipe default (2 stages)"] / med[best]
    per_round = [a / b for a, b in zip(runs["corepipe default (2 stages)"], runs[best])]
    out += ["", f"default compile over {best}: **{ratio:.3f}x** (rounds {', '.join(f'{r:.3f}' for r in per_round)};"
            " target >= 0.95)", ""]
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,bert")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--markdown", type=Path, help="append the tables here")
    args = ap.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))[:2]
    lines: list[str] = []
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            with tempfile.TemporaryDirectory(prefix="corepipe-engine-choice-") as tmp:
                part = one(name, precision, args.rounds, args.seconds, cores, Path(tmp))
            print("\n".join(part), flush=True)
            lines += part
    if args.markdown is not None:
        with args.markdown.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
