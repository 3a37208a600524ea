"""Which ONNX operators OpenVINO runs without checking the indices or sizes they take from data.

For each operator that takes an index or a size from a tensor, a one-node model gets that
tensor as a graph input (static shapes, as in a corepipe stage) and runs on onnxruntime and on
OpenVINO (CPU, f32, the settings corepipe uses) with a good value and with bad ones. Each run is
its own process: OpenVINO kills the process on some of them. The table it prints is the README's
"Data OpenVINO does not check", with what corepipe does for each operand
(`corepipe.compiler.checks.unchecked.OPERANDS`).

    python benchmarks/unchecked_ops.py                 # every case, a markdown table
    python benchmarks/unchecked_ops.py Gather Range    # some cases
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "benchmarks"))

from unchecked_cases import CASES


# -- running ---------------------------------------------------------------------------------
def _show(values: list[Any]) -> str:
    parts = []
    for v in values:
        v = np.asarray(v)
        head = ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v.ravel()[:4].tolist())
        parts.append(f"{v.dtype}[{','.join(map(str, v.shape))}] ({head}{', ...' if v.size > 4 else ''})")
    return "; ".join(parts)


def run_one(name: str, label: str, engine: str) -> dict[str, Any]:
    """One case's ``label`` on one engine, in this process, after its good request on the same
    session (as a pipeline stage runs one request after another): ``{"ok": bool, "text": ...}``."""
    m, _, feeds_by = CASES[name]()
    try:
        if engine == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])

            def infer(feeds: dict[str, np.ndarray]) -> list[Any]:
                return list(sess.run(None, feeds))
        else:
            import openvino as ov

            core = ov.Core()
            g = core.read_model(m.SerializeToString(), ov.Tensor(np.empty(0, np.uint8)))
            compiled = core.compile_model(g, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                     "INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"})
            request = compiled.create_infer_request()

            def infer(feeds: dict[str, np.ndarray]) -> list[Any]:
                return [np.array(v, copy=True) for v in request.infer(feeds).to_tuple()]
    except Exception as exc:
        return {"ok": False, "text": " ".join(str(exc).split())}
    try:
        before = infer(feeds_by["ok"])
    except Exception:
        before = None
    try:
        values = infer(feeds_by[label])
    except Exception as exc:
        return {"ok": False, "text": " ".join(str(exc).split())}
    if engine == "openvino" and label != "ok" and before is not None and _same(values, before) and not _same(values, infer_fresh(m, feeds_by[label], engine)):
        return {"ok": True, "text": "the previous request's answer", "values": [np.asarray(v).tolist() for v in values]}
    return {"ok": True, "text": _show(values), "values": [np.asarray(v).tolist() for v in values]}


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(np.asarray(x).shape == np.asarray(y).shape and np.array_equal(x, y)
                                    for x, y in zip(a, b))


def infer_fresh(m: ModelProto, feeds: dict[str, np.ndarray], engine: str) -> list[Any]:
    """``feeds`` on a fresh OpenVINO request (to tell a stale answer from a coincidence)."""
    if engine == "onnxruntime":
        return []
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(m.SerializeToString(), ov.Tensor(np.empty(0, np.uint8))), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"})
    try:
        return [np.array(v, copy=True) for v in compiled.create_infer_request().infer(feeds).to_tuple()]
    except Exception:
        return []


def run(name: str, label: str, engine: str) -> dict[str, Any]:
    """`run_one` in a fresh process: OpenVINO kills the process on some bad values."""
    try:
        p = subprocess.run([sys.executable, __file__, "--one", name, label, engine], capture_output=True,
                           text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"ok": False, "text": "no answer within 120 s", "dead": True}
    if p.returncode != 0 or not p.stdout.strip():
        return {"ok": False, "text": f"the process died (exit {p.returncode})", "dead": True}
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def verdict(ort: dict[str, Any], ov: dict[str, Any]) -> str:
    if ov.get("dead"):
        return "**kills the process**"
    if not ov["ok"] and not ort["ok"]:
        return "raises, as onnxruntime"
    if not ov["ok"]:
        return "cannot load the op" if "onversion" in ov["text"] or "compile" in ov["text"].lower() else "raises"
    if ov["text"] == "the previous request's answer":
        return "**returns the previous request's answer**" + (f", onnxruntime {ort['text']}" if ort["ok"] else "")
    if ort["ok"]:
        same = ort["values"] == ov["values"]
        return "same as onnxruntime" if same else f"**answers {ov['text']}**, onnxruntime {ort['text']}"
    return f"**answers {ov['text']}**"


def corepipe_does(op: str, role: str) -> str:
    from corepipe.compiler.checks.unchecked import OPERANDS

    rules = {o.role: o.rule for o in OPERANDS.get(op, ())}
    wanted = {rules.get(x.strip()) for x in role.split(",")} - {None}
    if not wanted:
        return "nothing to do"
    if wanted == {"ort"}:
        return "onnxruntime runs the node"
    if wanted == {"compress"}:
        return "onnxruntime runs the node where the condition is longer than the axis"
    return "checked at intake when straight from an input, else onnxruntime runs the node"


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print(json.dumps(run_one(*argv[1:4])))
        return
    names = argv or list(CASES)
    print("| op (operand) | bad value | onnxruntime | openvino 2026.4.1 | corepipe |")
    print("|---|---|---|---|---|")
    for name in names:
        m, role, feeds_by = CASES[name]()
        for label in feeds_by:
            if label == "ok":
                continue
            ort, ov = run(name, label, "onnxruntime"), run(name, label, "openvino")
            what = "raises" if not ort["ok"] else f"answers {ort['text']}"
            op = m.graph.node[0].op_type
            print(f"| {op} ({role}) | {label.replace('_', ' ')} | {what[:90]} | {verdict(ort, ov)[:160]} "
                  f"| {corepipe_does(op, role)} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
