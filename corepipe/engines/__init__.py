"""Engines: load one verified stage, bind its inputs and outputs in place, run it, and name the
failing node. Two engines sit behind one interface (`Engine`): onnxruntime (widest op coverage,
the reference) and OpenVINO (fastest on CPUs, bf16). `StageRunner` runs a stage on the engine
its plan names; the runtime's workers and the compiler's measurements use them. They use the
artifact layer only.
"""

from __future__ import annotations

from .base import ENGINES, Engine, LoadFailure, engine_class, missing_engine
from .cpu import PRECISIONS, CpuMath, cpu_math, precision_problem
from .ort import make_session, node_from_message
from .runner import StageRunner, load_engine

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "Engine",
    "LoadFailure",
    "StageRunner",
    "load_engine",
    "engine_class",
    "missing_engine",
    "CpuMath",
    "cpu_math",
    "precision_problem",
    "make_session",
    "node_from_message",
]
