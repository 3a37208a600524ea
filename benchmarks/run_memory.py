"""Peak memory of `corepipe run` against the request count (issue 12: it must stay flat).

Builds a 2-stage model whose output is 256 KiB per request (x[1,64] -> Relu -> Tile -> Neg), so
keeping outputs would show at once, then runs ``python -m corepipe run ART --requests N`` for
each N and samples the client process's RSS (psutil, every 20 ms; the workers are separate
processes and hold no outputs). ``--root`` picks the corepipe checkout to run, so an older one
can be measured side by side.

    python benchmarks/run_memory.py --requests 2000 8000 200000
    python benchmarks/run_memory.py --root /work/main --requests 2000 8000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from onnx import TensorProto, helper, save

ROOT = Path(__file__).resolve().parents[1]
WIDE = 65536


def wide_model(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Tile", ["r", "reps"], ["t"], name="tile"),
         helper.make_node("Neg", ["t"], ["y"], name="neg")],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDE])],
        [helper.make_tensor("reps", TensorProto.INT64, [2], [1, WIDE // 64])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def peak_rss(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float, int]:
    """(peak RSS bytes, seconds, exit code) of the process ``argv`` (not its children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.02)
    proc.wait()
    return peak, time.perf_counter() - start, proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT, help="corepipe checkout to run")
    p.add_argument("--requests", type=int, nargs="+", default=[2000, 8000])
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(args.root.resolve()))
    with tempfile.TemporaryDirectory(prefix="corepipe-runmem-") as tmp:
        work = Path(tmp)
        wide_model(work / "wide.onnx")
        py = [sys.executable, "-P", "-m", "corepipe"]
        subprocess.run([*py, "compile", "wide.onnx", "-o", "wide", "-n", "2"], env=env, cwd=work,
                       check=True, stdout=subprocess.DEVNULL)
        print(f"corepipe at {args.root}; outputs {WIDE * 4 // 1024} KiB per request")
        print("| requests | outputs if kept | peak client RSS | seconds |")
        print("|---:|---:|---:|---:|")
        for n in args.requests:
            peak, seconds, rc = peak_rss([*py, "run", "wide", "--requests", str(n)], env, work)
            status = "" if rc == 0 else f" (exit {rc})"
            print(f"| {n:,} | {n * WIDE * 4 / 2**30:.2f} GiB | {peak / 2**20:,.0f} MiB{status} | {seconds:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
