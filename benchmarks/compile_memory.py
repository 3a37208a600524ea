"""Compile memory: the peak resident memory of ``corepipe compile`` on models saved with external
weights, against the target *weights once + 1.5 x the largest stage*.

Models (each built in a child process and saved as ``model.onnx`` + ``model.onnx.data``):

- ``bert``: the zoo's BERT-base (seq 128, 418 MiB of weights). ONNX shape inference types every
  tensor, so compiling needs no probe run.
- ``bert-fused``: the same model through onnxruntime's transformer optimizer (SkipLayerNorm and
  BiasGelu from the ``com.microsoft`` domain, as deployed BERTs often are), without value_info.
  ONNX has no schema for those ops, so the compiler must run the model to learn the boundary
  tensors' shapes: the case where the peak used to reach 5x the weights.

Each compile runs ``python -m corepipe compile MODEL -o OUT --num-cores N`` in its own process
and reads that process's own peak (``VmHWM`` in /proc, at exit); a bare interpreter importing the
same packages gives the floor. ``--root DIR`` runs another corepipe checkout (e.g. the code before
a change) for comparison.

    python benchmarks/compile_memory.py                       # bert and bert-fused, 16 stages
    python benchmarks/compile_memory.py --engine onnxruntime         # no OpenVINO check
    python benchmarks/compile_memory.py --root /work/main --label before --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

MiB = 2**20
HERE = Path(__file__).resolve().parents[1]

_BUILD = """
import sys, onnx
from corepipe import zoo
name, out = sys.argv[1], sys.argv[2]
model, _ = zoo.get("bert")
if name == "bert-fused":
    import tempfile
    from onnxruntime.transformers import optimizer
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save_model(model, tmp + "/m.onnx", save_as_external_data=True, location="m.data")
        del model
        fused = optimizer.optimize_model(tmp + "/m.onnx", model_type="bert", num_heads=12,
                                         hidden_size=768, opt_level=0, use_gpu=False)
        del fused.model.graph.value_info[:]  # as many exporters leave it: inference has gaps
        fused.save_model_to_file(out, use_external_data_format=True)  # -> model.onnx.data
else:
    onnx.save_model(model, out, save_as_external_data=True, location="model.onnx.data")
"""

# Runs the CLI in this process and reports the process's own peak at exit (ru_maxrss would also
# count what the parent held before exec).
_MEASURE = """
import atexit, json, sys, time
t0 = time.perf_counter()
def report():
    status = open("/proc/self/status").read()
    hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print("CPMEM " + json.dumps({"peak": hwm, "seconds": time.perf_counter() - t0}), file=sys.stderr)
atexit.register(report)
if sys.argv[1] == "bare":  # the same imports, and the engines compile loads (no weights)
    import corepipe.cli, corepipe.compiler, onnx, onnxruntime, numpy as np
    from corepipe.compiler.cut.choose import candidates
    if "openvino" in candidates("auto"):  # engine auto checks every stage on OpenVINO's CPU plugin
        import openvino as ov
        from onnx import TensorProto, helper
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "xy"]
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        core = ov.Core()
        core.compile_model(core.read_model(m.SerializeToString(), b""), "CPU")(np.zeros((1, 4), np.float32))
    sys.exit(0)
import runpy
sys.argv = ["corepipe", *sys.argv[1:]]
runpy.run_module("corepipe", run_name="__main__")
"""


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    return env


def _measure(root: Path, args: Sequence[str]) -> dict[str, float]:
    run = subprocess.run([sys.executable, "-P", "-c", _MEASURE, *args], env=_env(root), cwd="/",
                         capture_output=True, text=True)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("CPMEM ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)} failed ({run.returncode}): {run.stderr[-2000:]}")
    return json.loads(lines[-1][len("CPMEM "):])


@dataclass
class Row:
    model: str
    stages: int
    weights: int
    largest_stage: int
    peak: int
    seconds: float

    @property
    def target(self) -> float:
        return self.weights + 1.5 * self.largest_stage


def bench(name: str, work: Path, root: Path, cores: int, engine: str = "auto") -> Row:
    model = work / name / "model.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-P", "-c", _BUILD, name, str(model)], env=_env(HERE), cwd="/",
                   check=True, capture_output=True)
    out = work / name / "compiled"
    got = _measure(root, ["compile", str(model), "-o", str(out), "--num-cores", str(cores), "--engine", engine])
    manifest = json.loads((out / "manifest.json").read_text())
    stages = [s["resident_bytes"] for s in manifest["plan"]["stages"]]
    weights = (model.parent / "model.onnx.data").stat().st_size
    return Row(name, len(stages), weights, max(stages), int(got["peak"]), float(got["seconds"]))


def markdown(rows: list[Row], floor: float, label: str, command: str) -> str:
    lines = [
        f"`{command}` ({label}; bare interpreter with the same imports and engines: {floor / MiB:.0f} MiB)",
        "",
        "| model | stages | weights MiB | largest stage MiB | target MiB (weights + 1.5 x stage) "
        "| peak RSS MiB | peak / weights | within target | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.stages} | {r.weights / MiB:.0f} | {r.largest_stage / MiB:.0f} "
            f"| {r.target / MiB:.0f} | {r.peak / MiB:.0f} | {r.peak / r.weights:.2f} "
            f"| {'yes' if r.peak <= r.target else 'no'} | {r.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["bert", "bert-fused"], choices=["bert", "bert-fused"])
    p.add_argument("--cores", type=int, default=16, help="stages to compile into (default 16)")
    p.add_argument("--engine", default="auto", help="compile --engine (default auto: each stage checked on OpenVINO too)")
    p.add_argument("--root", type=Path, default=HERE, help="corepipe checkout to measure (default: this one)")
    p.add_argument("--label", default="this checkout", help="what --root is, for the report")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    p.add_argument("--markdown", type=Path, help="append a Markdown table here")
    args = p.parse_args(argv)
    floor = _measure(args.root, ["bare"])["peak"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="corepipe-compile-memory-") as tmp:
        for name in args.models:
            t0 = time.perf_counter()
            rows.append(bench(name, Path(tmp), args.root.resolve(), args.cores, args.engine))
            r = rows[-1]
            print(f"{name}: peak {r.peak / MiB:.0f} MiB for {r.weights / MiB:.0f} MiB of weights "
                  f"({r.peak / r.weights:.2f}x); target {r.target / MiB:.0f} MiB; "
                  f"{time.perf_counter() - t0:.0f} s with the build", flush=True)
    command = "python benchmarks/compile_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, floor, args.label, command.strip())
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"floor": floor, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")
    return 0 if all(r.peak <= r.target for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
