"""How close OpenVINO's fp32 stages come to onnxruntime's, against the one fp32 tolerance
(`corepipe.engines.tolerance`): every element within ``1e-4 + 1e-4 * |onnxruntime's value|``.

For each built-in architecture cut into 2, 4 and 8 stages, and each graph case of the tests cut
in 2, this compiles with ``engine="auto"`` and records, for every stage the compiler checks before
trusting OpenVINO with it, the largest per-element ratio ``|ov - ort| / (1e-4 + 1e-4 |ort|)``
(<= 1: within the tolerance; the compiler refuses OpenVINO for a stage above 1). It also prints
the check the compiler used before issue 20 (largest difference over max(1, largest value),
which let a stage through at 1e-3).

    python benchmarks/fp32_tolerance.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import corepipe
import corepipe.compiler.cut.measure as measure
from corepipe import zoo
from corepipe.engines.tolerance import fp32_excess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from graphcases import all_cases

seen: list[tuple[float, float]] = []
_differs = measure.differs


def _record(got: np.ndarray, want: np.ndarray, precision: str) -> str | None:
    if precision == "fp32" and got.dtype.kind == "f" and got.shape == want.shape and want.size:
        _, ratio = fp32_excess(got, want)
        finite = np.isfinite(want)
        old = float(np.abs(got[finite].astype(np.float64) - want[finite]).max(initial=0.0)
                    / max(1.0, float(np.abs(want[finite]).max(initial=0.0))))
        seen.append((ratio, old))
    return _differs(got, want, precision)


def compile_and_report(label: str, model, feeds, num_cores: int, out: Path) -> None:
    seen.clear()
    cm = corepipe.compile(model, out, example_inputs=feeds, num_cores=num_cores)
    ov = sum(s.engine == "openvino" for s in cm.stages)
    worst = max((r for r, _ in seen), default=0.0)
    old = max((o for _, o in seen), default=0.0)
    print(f"| {label} | {num_cores} | {len(seen)} | {ov}/{len(cm.stages)} | {worst:.3f} | {old:.1e} |", flush=True)


def main() -> None:
    measure.differs = _record  # the compiler's check, watched
    print("| model | stages | stage outputs checked | stages on OpenVINO | worst per-element ratio | "
          "old check (diff / scale) |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet50", "bert", "densenet121", "inception_v1", "tiny_cnn", "mlp"):
            model, feeds = zoo.get(name)
            for k in (2, 4, 8):
                compile_and_report(f"zoo:{name}", model, feeds, k, Path(tmp) / f"{name}{k}")
        for case in all_cases():
            compile_and_report(case.name, case.model, case.inputs(), 2, Path(tmp) / case.name)


if __name__ == "__main__":
    main()
