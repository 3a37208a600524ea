"""`StageRunner`: one stage of an artifact on the engine its plan names, for every backend.

It loads the stage from a verified private copy, passes carried tensors through without any
engine seeing them, and either runs a request into fresh arrays (`run`) or straight into a
hand-off slot (`run_into`), binding the slot's buffers once and reusing the binding.

Every tensor the engine writes fits the compiled signature, or the request fails with a
`StageError` naming the node that wrote it: `run` checks each output's dtype and shape (a
comparison per output), and an in-place binding is only made where the engine itself
guarantees the compiled shape (`Engine.bind`), so it needs no check per request.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.manifest import Artifact
from ..artifact.plan import StagePlan
from ..artifact.signature import tensor_problem
from ..errors import ArtifactError, StageError
from .base import Engine, LoadFailure, engine_class
from .cpu import precision_problem

__all__ = ["StageRunner", "load_engine"]


def _release_free_memory() -> None:
    """Hand the transient copies made while loading (verified bytes, protobuf, compiler scratch)
    back to the OS, so a worker's resident memory is its weights, not its loading peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_engine(artifact: Artifact, index: int, *, threads: int = 1, spin: bool = True) -> Engine:
    """Stage ``index`` of ``artifact`` loaded on its planned engine and precision.

    Raises:
        ArtifactError: the engine is not installed here, this CPU cannot run the stage's
            precision fast, or the engine cannot load the stage.
    """
    return _load(artifact, index, threads, spin)[0]


def _producers(path: Path, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Output name -> (node name, op) of the node in the stage graph at ``path`` that writes it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    wanted = set(names)
    return {out: (node.name or f"{node.op_type}_{i}", node.op_type)
            for i, node in enumerate(graph.node) for out in node.output if out in wanted}


def _load(artifact: Artifact, index: int, threads: int, spin: bool) -> tuple[Engine, dict[str, tuple[str, str]]]:
    """`load_engine`, and which node writes each of the stage's outputs (read from the same
    verified copy)."""
    plan = artifact.plan.stages[index]
    problem = precision_problem(plan.precision)
    if problem is not None:
        raise ArtifactError(f"stage {index} was compiled for {plan.precision}: {problem}; recompile it")
    try:
        cls = engine_class(plan.engine)
        # A private, verified copy: the engine maps only bytes we hashed. It is deleted once
        # the engine holds the weights (a mapping outlives its file's name on Linux).
        with tempfile.TemporaryDirectory(prefix=f"corepipe-stage{index}-") as private:
            path = artifact.copy_stage(index, private)
            options = {"snippets": plan.snippets} if plan.engine == "openvino" else {}
            engine = cls(str(path), inputs=plan.inputs, outputs=plan.outputs, threads=threads,
                         precision=plan.precision, spin=spin, **options)
            return engine, _producers(path, plan.outputs)
    except LoadFailure as exc:
        raise ArtifactError(f"stage {index} cannot be loaded: {exc}; recompile with engine='auto'") from None


class StageRunner:
    """Runs stage ``index`` of an artifact: boundary tensors in, next boundary's tensors out.

    The engine (onnxruntime or openvino) and precision come from the plan; ``threads`` are the
    stage's inference threads, one per core it was given. Carried tensors are passed through
    without entering the engine.

    Raises:
        ArtifactError: the stage cannot be loaded here (see `load_engine`).
    """

    def __init__(self, artifact: Artifact, index: int, *, threads: int = 1, spin: bool = True) -> None:
        self.plan: StagePlan = artifact.plan.stages[index]
        self.index = index
        self.engine, self._producers = _load(artifact, index, threads, spin)
        self._outputs = list(self.plan.outputs)
        self._bindings: dict[Any, Any] = {}
        after = {t.name: t for t in artifact.plan.boundaries[index + 1]}
        self._dynamic_out = any(after[name].dynamic for name in self._outputs if name in after)
        self._checks = [(i, after[name]) for i, name in enumerate(self._outputs) if name in after]
        _release_free_memory()

    def run(self, boundary: Mapping[str, np.ndarray], request_id: int | None = None) -> dict[str, np.ndarray]:
        """Compute this stage. Raises `StageError` naming the stage, node and request."""
        try:
            values = self.engine.run({name: boundary[name] for name in self.plan.inputs})
        except Exception as exc:
            raise self._error(exc, request_id) from None
        self._check_outputs(values, request_id)
        out = {name: boundary[name] for name in self.plan.carried}
        out.update(zip(self._outputs, values))
        return out

    def run_into(self, boundary: Mapping[str, np.ndarray], ring: Any, slot: int, request_id: int | None = None) -> None:
        """Compute this stage with the engine reading its inputs in place and writing its
        outputs straight into ``ring``'s ``slot`` (no copies). Falls back to `run` + copy when
        an output's shape differs from the compiled one (data-dependent shapes) or the engine
        cannot bind these buffers. Raises `StageError` like `run`.

        Slots sit at fixed addresses, so the binding for a (slot, input buffers) pair is made
        once and reused: per request, the engine just runs.
        """
        binding = None if self._dynamic_out else self._binding(boundary, ring, slot)
        if binding is None:  # sizes known only after the run, or unbindable: run, then copy
            ring.write(slot, self.run(boundary, request_id))
            return
        try:
            self.engine.run_bound(binding)
        except Exception as exc:
            raise self._error(exc, request_id) from None
        if self.plan.carried:
            views = ring.static_views(slot)
            for name in self.plan.carried:
                src = boundary[name]
                if src.shape != views[name].shape:
                    ring.write(slot, self.run(boundary, request_id))
                    return
                views[name][...] = src
        ring.mark_static(slot)

    def _binding(self, boundary: Mapping[str, np.ndarray], ring: Any, slot: int) -> Any:
        arrays = [boundary[name] for name in self.plan.inputs]
        # __array_interface__, not .ctypes: that makes a reference cycle per call, i.e. garbage
        # for the collector on every request.
        key = (id(ring), slot, tuple((a.__array_interface__["data"][0], a.shape, a.dtype.str) for a in arrays))
        if key in self._bindings:
            return self._bindings[key][0]
        if len(self._bindings) >= 64:  # inputs that are not ring slots (never in the worker)
            self._bindings.clear()
        views = ring.static_views(slot)
        outputs = [views[name] for name in self._outputs]
        binding = self.engine.bind(arrays, outputs)
        self._bindings[key] = (binding, arrays, views)  # keep the buffers alive with it
        return binding

    def _check_outputs(self, values: Sequence[np.ndarray], request_id: int | None) -> None:
        """Each output against its compiled spec: a `StageError` naming the node that wrote one
        that does not fit (an engine that does not check data may return an empty tensor)."""
        for i, spec in self._checks:
            why = tensor_problem(spec, values[i])
            if why is not None:
                node, op = self._producers.get(spec.name, ("", ""))
                where = f"node {node!r} ({op}) wrote {spec.name!r}" if node else f"output {spec.name!r}"
                raise StageError(
                    f"stage {self.index} failed on request {request_id} ({self.plan.engine}): {where}, which {why}",
                    stage=self.index, request_id=request_id, node=node or None)

    def _error(self, exc: BaseException, request_id: int | None) -> StageError:
        node = self.engine.failing_node(str(exc))
        message = self.engine.describe(exc)
        return StageError(
            f"stage {self.index} failed on request {request_id} ({self.plan.engine})"
            + (f" at node {node!r}" if node else "")
            + f": {message}",
            stage=self.index, request_id=request_id, node=node,
        )
