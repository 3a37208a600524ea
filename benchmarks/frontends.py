"""Time and peak memory of compiling a Keras ResNet-50 SavedModel: the seed's one call
(``corepipe.tensorflow``) against the two steps it replaces (``python -m tf2onnx.convert``, then
``corepipe.compile`` on the .onnx file). Each measurement runs in a fresh Python process, so its
peak RSS (``ru_maxrss``) and its imports are its own.

    python benchmarks/frontends.py [--saved-model DIR] [--cores 16] [--repeat 2] [--markdown FILE]

Without ``--saved-model`` it exports ``keras.applications.ResNet50(weights=None)`` first (not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, saved: str, out: str, cores: int) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    import numpy as np

    t0 = time.perf_counter()
    flags = ["--static-weights", "--num-neuroncores", str(cores)]
    example = np.zeros([1, 224, 224, 3], dtype="float16")
    phases: dict[str, float] = {}
    if mode == "seed":  # the seed's call, as written
        import corepipe.tensorflow as tfn

        tfn.saved_model.compile(saved, out, model_feed_dict={"input_1:0": example}, compiler_args=flags)
    elif mode == "phases":  # the same work, timed step by step
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401

        from corepipe.frontends.tensorflow import convert_saved_model

        phases["import_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        conv = convert_saved_model(saved, {"input_1:0": example})
        phases["convert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        import corepipe

        corepipe.compile(conv.model, out, example_inputs=conv.examples, compiler_args=flags)
        phases["compile_s"] = time.perf_counter() - t
        del conv
        import gc

        import psutil

        gc.collect()
        phases["rss_after_mib"] = psutil.Process().memory_info().rss / 2**20  # what the caller keeps
    elif mode == "tf2onnx-cli":  # step 1 of the manual path: tf2onnx's own command line
        import runpy

        sys.argv = ["tf2onnx.convert", "--saved-model", saved, "--output", out, "--opset", "17"]
        runpy.run_module("tf2onnx.convert", run_name="__main__")
    elif mode == "compile-onnx":  # step 2: corepipe.compile on the converted file
        import corepipe

        corepipe.compile(saved, out, example_inputs={"keras_tensor": example.astype(np.float32)},
                         compiler_args=flags)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return {"total_s": time.perf_counter() - t0, "peak_rss_mib": _peak_mib(), **phases}


def _measure(mode: str, saved: Path, out: Path, cores: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(saved), str(out), str(cores)],
        capture_output=True, text=True, env=env, check=False,
    )
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["wall_s"] = time.perf_counter() - start  # with the interpreter's start-up
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saved-model", type=Path)
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--markdown", type=Path, help="append the table to this file")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "SAVED", "OUT", "CORES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, saved, out, cores = args.child
        print(json.dumps(_child(mode, saved, out, int(cores))))
        return

    with tempfile.TemporaryDirectory(prefix="corepipe_fe_bench_") as tmp_dir:
        tmp = Path(tmp_dir)
        saved = args.saved_model
        if saved is None:
            saved = tmp / "rn50"
            code = ("import keras; keras.utils.set_random_seed(0); "
                    f"keras.applications.ResNet50(weights=None).export({str(saved)!r}, verbose=False)")
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in ("seed", "phases", "tf2onnx-cli", "compile-onnx")}
        for r in range(args.repeat):
            rows["seed"].append(_measure("seed", saved, tmp / f"seed{r}" / "1", args.cores))
            rows["phases"].append(_measure("phases", saved, tmp / f"phases{r}" / "1", args.cores))
            onnx_file = tmp / f"rn50_{r}.onnx"
            rows["tf2onnx-cli"].append(_measure("tf2onnx-cli", saved, onnx_file, args.cores))
            rows["compile-onnx"].append(_measure("compile-onnx", onnx_file, tmp / f"manual{r}" / "1", args.cores))
            print(f"round {r + 1}/{args.repeat}: " + json.dumps({m: v[-1] for m, v in rows.items()}), flush=True)

    def best(mode: str, key: str) -> float:
        return min(x[key] for x in rows[mode])

    def peak(mode: str) -> float:
        return max(x["peak_rss_mib"] for x in rows[mode])

    manual_wall = best("tf2onnx-cli", "wall_s") + best("compile-onnx", "wall_s")
    lines = [
        f"`python benchmarks/frontends.py --cores {args.cores} --repeat {args.repeat}` "
        f"(Keras ResNet-50, weights=None, fp16 example; best of {args.repeat}; wall includes interpreter start-up)",
        "",
        "| path | wall s | in-process s | peak RSS MiB |",
        "|---|---:|---:|---:|",
        f"| seed's call `tfn.saved_model.compile` (one process) | {best('seed', 'wall_s'):.1f} | "
        f"{best('seed', 'total_s'):.1f} | {peak('seed'):.0f} |",
        f"| same, by step: import TF+tf2onnx / convert / compile | | {best('phases', 'import_s'):.1f} / "
        f"{best('phases', 'convert_s'):.1f} / {best('phases', 'compile_s'):.1f} | {peak('phases'):.0f} |",
        f"| manual step 1: `python -m tf2onnx.convert --saved-model` | {best('tf2onnx-cli', 'wall_s'):.1f} | "
        f"{best('tf2onnx-cli', 'total_s'):.1f} | {peak('tf2onnx-cli'):.0f} |",
        f"| manual step 2: `corepipe.compile(model.onnx)` | {best('compile-onnx', 'wall_s'):.1f} | "
        f"{best('compile-onnx', 'total_s'):.1f} | {peak('compile-onnx'):.0f} |",
        "",
        f"Resident after the call (phases run, after gc): {max(x['rss_after_mib'] for x in rows['phases']):.0f} MiB.",
        "",
        f"One call over the two manual steps, wall time: **{best('seed', 'wall_s') / manual_wall:.2f}x**; "
        f"peak RSS: **{peak('seed') / max(peak('tf2onnx-cli'), peak('compile-onnx')):.2f}x** the larger step's.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with args.markdown.open("a") as fh:
            fh.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
