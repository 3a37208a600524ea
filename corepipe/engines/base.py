"""The engine interface: one stage graph loaded once, its buffers bound in place, run per request.

An engine never sees the artifact directory: the caller hands it a verified private copy of a
stage (or, while compiling, the stage's bytes). Engines differ in speed, op coverage and the
precisions they run; the compiler picks one per stage and the plan records it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = ["ENGINES", "Engine", "LoadFailure", "Ranges", "engine_class", "missing_engine"]

#: The input shapes one compiled form of a stage takes: per input (in `Engine.inputs` order), per
#: axis, ``(min, max)``. A static shape has min == max on every axis.
Ranges = tuple[tuple[tuple[int, int], ...], ...]

#: Engine names, in the order ``engine="auto"`` prefers them when it does not measure.
ENGINES = ("openvino", "onnxruntime")

_MODULES = {"onnxruntime": ("corepipe.engines.ort", "OrtEngine", "onnxruntime"),
            "openvino": ("corepipe.engines.ov", "OpenVinoEngine", "openvino")}


class LoadFailure(Exception):
    """An engine could not load or compile a stage graph.

    Internal: the compiler turns it into a `CompileError` and the runtime into an
    `ArtifactError`, each naming the stage. ``node`` and ``op`` name the culprit when the
    engine said which it was.
    """

    def __init__(self, engine: str, reason: str, *, node: str | None = None, op: str | None = None) -> None:
        where = f"node {node!r} ({op})" if node and op else f"node {node!r}" if node else f"op {op}" if op else ""
        super().__init__(f"{engine} cannot run " + (where + ": " if where else "this graph: ") + reason)
        self.engine = engine
        self.reason = reason
        self.node = node
        self.op = op


class Engine(ABC):
    """One stage graph on one engine, with ``threads`` inference threads.

    Construction loads and compiles the graph once (the weights stay resident). Then either
    `run` (fresh output arrays) or, for a hand-off slot at a fixed address, `bind` once and
    `run_bound` per request: inputs are read and outputs written in place, with no copy.

    Args:
        model: path of a verified stage file (external weights beside it), or its bytes.
        inputs: the graph's input names, in the order `bind` takes buffers.
        outputs: the output names to compute, in the order `run` returns and `bind` takes them.
        threads: intra-op threads (one per core of the stage).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (engines that cannot run one refuse it).
        spin: whether idle inference threads may spin; a pipeline worker waiting for its next
            request passes False so it does not burn the core a neighbour needs.
        variants: for a stage graph over dynamic dims, the input shapes to compile it for: one
            `Ranges` (a bounded dynamic graph) or several static ones (one graph per bucket, run
            by the one whose shapes a request has). ``None``: the shapes the graph declares.

    Raises:
        LoadFailure: the engine cannot load, compile or run this graph at this precision.
    """

    name: ClassVar[str]

    def __init__(self, model: str | bytes, *, inputs: Sequence[str], outputs: Sequence[str],
                 threads: int = 1, precision: str = "fp32", spin: bool = True,
                 variants: Sequence[Ranges] | None = None) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.threads = max(1, int(threads))
        self.precision = precision
        self.variants = tuple(variants or ())

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Compute the outputs (in `outputs` order) as fresh arrays the caller owns."""

    def run_shared(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """`run`, where the outputs may be views of the engine's own memory, valid only until
        this engine runs again (no copy out; a decoder stage reads its presents' new positions
        and hands its hidden state on before its next step)."""
        return self.run(feeds)

    @abstractmethod
    def bind(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Any:
        """A reusable binding that reads ``inputs`` and writes ``outputs`` in place.

        The arrays must stay alive and at their addresses while the binding is used; outputs
        must have the shapes the inputs' shapes give. Binding is done once per buffer set, not
        per request. Returns None (the caller runs and copies) where the engine cannot bind these
        buffers, or cannot promise to write exactly their shapes (an output whose shape depends
        on the data): a bound output is never checked per request.
        """

    @abstractmethod
    def run_bound(self, binding: Any) -> None:
        """Run once on a binding from `bind`: the outputs appear in the bound arrays."""

    @abstractmethod
    def addresses(self, binding: Any) -> tuple[list[int], list[int]]:
        """Where the engine itself will read each input and write each output of ``binding``:
        equal to the bound arrays' addresses when the binding is zero-copy."""

    @abstractmethod
    def failing_node(self, message: str) -> str | None:
        """The graph node an error message of this engine blames, if it names one."""

    def describe(self, exc: BaseException) -> str:
        """An error of this engine as one readable line."""
        return " ".join(str(exc).split())


def missing_engine(name: str) -> str | None:
    """Why engine ``name`` cannot be used here (unknown, or not installed), or None."""
    if name not in _MODULES:
        return f"unknown engine {name!r}: use one of {list(ENGINES)} or 'auto'"
    package = _MODULES[name][2]
    try:
        importlib.import_module(package)
    except ImportError as exc:
        return f"engine {name!r} is not installed ({exc}): pip install {package}"
    return None


def engine_class(name: str) -> type[Engine]:
    """The `Engine` subclass for ``name``; importing it imports only that engine's package.

    Raises:
        LoadFailure: the engine is unknown or not installed.
    """
    problem = missing_engine(name)
    if problem is not None:
        raise LoadFailure(name, problem)
    module, cls, _ = _MODULES[name]
    engine: type[Engine] = getattr(importlib.import_module(module), cls)
    return engine
