"""Which engine runs each stage, at which precision.

- ``precision``: ``"fp32"`` (exact; the default), ``"bf16"``, ``"fp16"`` or ``"auto"`` (bf16 where
  this CPU has native bf16, fp32 elsewhere). A precision the CPU would only emulate is refused.
- ``engine="onnxruntime"`` or ``"openvino"``: every stage on that engine; a stage it cannot run is
  a `CompileError` naming the node and op.
- ``engine="auto"``: each stage is timed on each engine with one thread and the faster kept:
  with ``balance="measure"`` and ``"load"`` every time (`corepipe.compiler.cut.measure`); with
  ``"estimate"`` a short probe of the stage, cached per machine (`corepipe.engines.speeds`;
  ``COREPIPE_ENGINE_PROBE=off`` skips it and prefers OpenVINO wherever it runs the stage). A
  stage that one engine cannot run falls back to the other, and its `StagePlan.fallback` says
  why; `StagePlan.engine_why` says why each stage runs where it does. onnxruntime runs fp32 only,
  so a bf16 stage that falls back runs fp32, and the plan says that too.

A stage where request data reaches an operand openvino does not check (a Gather index, a Reshape
target computed from the inputs; `corepipe.compiler.checks.unchecked`) and no intake check covers it
runs on onnxruntime, which checks; with ``engine="openvino"`` that is a `CompileError`.

Every stage an engine other than onnxruntime would run is first run on the example inputs and
checked against onnxruntime (`corepipe.engines.tolerance.differs`): OpenVINO computes some valid graphs wrongly (an If
whose body reads a tensor that is also a stage output, in 2026.4), and a stage it gets wrong
is one it "cannot run". This is a safety net on the example inputs, not a proof for all inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from ...engines import LoadFailure, cpu_math, missing_engine, precision_problem
from ...engines.tolerance import differs
from ...errors import CompileError

__all__ = ["ENGINE_CHOICES", "Choice", "candidates", "check_request", "data_choice", "differs", "engine_precision",
           "failure_error", "io_names", "resolve_precision", "PRECISION_CHOICES"]

ENGINE_CHOICES = ("auto", "onnxruntime", "openvino")
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "auto")


@dataclass
class Choice:
    """One stage's engine and precision, why (``fallback``), its one-core times if measured,
    why OpenVINO's reader finds the stage graph not static (``dynamic``), if it does, and whether
    OpenVINO runs it with its snippets on (``snippets``; ``snippets_off``: why not), and why this
    engine (``why``: what was asked, what the other engine cannot run, or each engine's one-core
    time and where it comes from)."""

    engine: str
    precision: str
    fallback: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    dynamic: str | None = None
    snippets: bool = False
    snippets_off: str | None = None
    why: str | None = None


def resolve_precision(precision: str | None, from_flags: str | None = None) -> str:
    """The precision to compile for: ``precision``, else the Neuron flags', else fp32.

    Raises:
        CompileError: an unknown precision, flags that contradict it, or a precision this
            CPU has no native math for (the message names what the CPU has).
    """
    if precision is not None and precision not in PRECISION_CHOICES:
        raise CompileError(f"precision must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    if precision is not None and from_flags is not None and precision != from_flags:
        raise CompileError(
            f"precision={precision!r} contradicts compiler_args, which ask for {from_flags!r}; give it once")
    chosen = precision or from_flags or "fp32"
    if chosen == "auto":
        return "bf16" if cpu_math().bf16 else "fp32"
    problem = precision_problem(chosen)
    if problem is not None:
        raise CompileError(problem)
    return chosen


def check_request(engine: str, precision: str) -> None:
    """Refuse an engine that is unknown or not installed, or that cannot run ``precision`` fast.

    Raises:
        CompileError: with the fix (another engine, ``engine="auto"``, or the package to install).
    """
    if engine not in ENGINE_CHOICES:
        raise CompileError(f"engine must be one of {list(ENGINE_CHOICES)}, got {engine!r}")
    if engine == "onnxruntime" and precision != "fp32":
        raise CompileError(
            f"precision {precision!r} is not fast on onnxruntime: its CPU provider has no {precision} "
            "matmul or convolution kernels on x86-64; use engine='openvino' or 'auto', or precision='fp32'")
    if engine in ("openvino", "onnxruntime"):
        problem = missing_engine(engine)
        if problem is not None:
            raise CompileError(f"{problem}; or use engine='auto'")
    if engine == "auto" and precision != "fp32" and missing_engine("openvino") is not None:
        raise CompileError(
            f"precision {precision!r} needs the openvino engine, and {missing_engine('openvino')}; "
            "or compile with precision='fp32'")


def candidates(engine: str) -> list[str]:
    """Engines to try for every stage, preferred first."""
    if engine != "auto":
        return [engine]
    return ["openvino", "onnxruntime"] if missing_engine("openvino") is None else ["onnxruntime"]


def engine_precision(engine: str, precision: str) -> str:
    """The precision ``engine`` runs a stage at when ``precision`` was asked for."""
    return precision if engine == "openvino" else "fp32"


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """A stage graph's input and output names."""
    inits = {t.name for t in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output])


def failure_error(stage: int, failure: LoadFailure, engine: str) -> CompileError:
    """The error for a stage that the engine asked for cannot run."""
    return CompileError(
        f"stage {stage}: {failure}; use engine='auto' to run it on the engine that can"
        if engine != "auto" else f"stage {stage}: no engine can run it: {failure}")


def data_choice(stage: int, why: str, engine: str, ort_ran: bool, seconds: dict[str, float],
                fallback: str | None) -> Choice:
    """The choice for a stage that must run on onnxruntime because request data reaches an operand
    openvino does not check (``why``; `corepipe.compiler.checks.unchecked`): onnxruntime in fp32, the
    plan saying why.

    Raises:
        CompileError: ``engine="openvino"`` was asked for, or onnxruntime cannot run the stage.
    """
    if engine == "openvino":
        raise CompileError(
            f"stage {stage}: {why}, so openvino would answer bad requests wrongly without a word; compile with "
            "engine='auto' (that stage then runs on onnxruntime) or engine='onnxruntime'")
    if not ort_ran:
        raise CompileError(f"stage {stage}: {why}, and onnxruntime cannot run it: {fallback}")
    return Choice("onnxruntime", "fp32", why, dict(seconds), why=f"onnxruntime checks its data: {why}")


def fallback_note(failures: Sequence[LoadFailure]) -> str | None:
    """Why a stage runs on a later engine than the first choice."""
    return "; ".join(str(f) for f in failures) or None
