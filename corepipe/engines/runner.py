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
from ..artifact.plan import Plan, StagePlan
from ..artifact.signature import tensor_problem
from ..errors import ArtifactError, StageError
from .base import Engine, LoadFailure, Ranges, engine_class
from .cpu import precision_problem

__all__ = ["StageRunner", "load_engine", "stage_variants"]


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
                         precision=plan.precision, spin=spin, variants=stage_variants(artifact.plan, index),
                         **options)
            return engine, _producers(path, plan.outputs)
    except LoadFailure as exc:
        raise ArtifactError(f"stage {index} cannot be loaded: {exc}; recompile with engine='auto'") from None


def stage_variants(plan: Plan, index: int) -> list[Ranges] | None:
    """The input shapes stage ``index`` is compiled for (see `Engine`): None for static shapes;
    each input's ranges for a ``"dynamic"`` stage; one static set per bucket (per combination
    of buckets, with several bucketed dims) for a ``"buckets"`` stage."""
    if plan.shapes is None or plan.decoder is not None:
        return None  # a decoder's stage graphs declare their own dynamic dims (past from 0)
    st = plan.stages[index]
    before = {t.name: t for t in plan.boundaries[index]}
    specs = [before[name] for name in st.inputs]
    if st.shape_mode != "buckets":
        return [tuple(tuple(spec.ranges()) for spec in specs)]
    combos: list[dict[str, int]] = [{}]
    for dim, sizes in plan.shapes.buckets.items():
        combos = [{**c, dim: size} for c in combos for size in sizes]
    return [
        tuple(tuple(_fixed(spec.dims[a] if spec.dims else None, combo, r) for a, r in enumerate(spec.ranges()))
              for spec in specs)
        for combo in combos
    ]


def _fixed(dim: str | None, values: dict[str, int], rng: tuple[int, int]) -> tuple[int, int]:
    """An axis's range with its dim fixed at ``values[dim]`` (when it has one there)."""
    return (values[dim], values[dim]) if dim is not None and dim in values else rng


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
        # (id of the views dict, ring, slot) -> (binding, that dict): a worker's ring hands back
        # the same dict for a slot while its shapes repeat (`Ring.read`), so this lookup is one
        # hash per request; the dict is kept, so its id cannot be reused while the entry lives.
        self._by_views: dict[tuple[int, int, int], tuple[Any, Mapping[str, np.ndarray]]] = {}
        after = {t.name: t for t in artifact.plan.boundaries[index + 1]}
        self._dynamic_out = any(after[name].dynamic for name in self._outputs if name in after)
        # Over dynamic dims, each request's output shapes follow from its input shapes.
        self._varying = artifact.plan.shapes is not None
        self._before = {t.name: t for t in artifact.plan.boundaries[index]}
        self._after = after
        self._checks = [(i, after[name]) for i, name in enumerate(self._outputs) if name in after]
        _release_free_memory()

    def run(self, boundary: Mapping[str, np.ndarray], request_id: int | None = None) -> dict[str, np.ndarray]:
        """Compute this stage. Raises `StageError` naming the stage, node and request."""
        try:
            values = self.engine.run({name: boundary[name] for name in self.plan.inputs})
        except Exception as exc:
            raise self._error(exc, request_id) from None
        self._check_outputs(values, request_id, self._shapes(boundary) if self._varying else None)
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
        shapes = self._shapes(boundary) if self._varying else None
        unknown = self._dynamic_out or (self._varying and shapes is None)
        binding = None if unknown else self._binding(boundary, ring, slot, shapes)
        if binding is None:  # sizes known only after the run, or unbindable: run, then copy
            ring.write(slot, self.run(boundary, request_id))
            return
        try:
            self.engine.run_bound(binding)
        except Exception as exc:
            raise self._error(exc, request_id) from None
        if self.plan.carried:
            views = ring.static_views(slot) if shapes is None else ring.views(slot, shapes)
            for name in self.plan.carried:
                src = boundary[name]
                if src.shape != views[name].shape:
                    ring.write(slot, self.run(boundary, request_id))
                    return
                views[name][...] = src
        if shapes is None:
            ring.mark_static(slot)
        else:
            ring.mark(slot, shapes)

    def _shapes(self, boundary: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]] | None:
        """The shape of every tensor this stage writes for a request over dynamic dims: its
        outputs' from the dims its inputs carry, the carried ones as they came; None when an
        output's shape is not a function of named dims (then it is copied after the run)."""
        values: dict[str, int] = {}
        for name in self.plan.inputs:
            spec = self._before[name]
            for axis, dim in enumerate(spec.dims):
                if dim is not None:
                    values[dim] = boundary[name].shape[axis]
        shapes: dict[str, tuple[int, ...]] = {name: boundary[name].shape for name in self.plan.carried}
        for name in self._outputs:
            shape = self._after[name].shape_for(values)
            if shape is None:
                return None
            shapes[name] = shape
        return shapes

    def _binding(self, boundary: Mapping[str, np.ndarray], ring: Any, slot: int,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> Any:
        fast = (id(boundary), id(ring), slot)
        hit = self._by_views.get(fast)
        if hit is not None and hit[1] is boundary:
            return hit[0]
        arrays = [boundary[name] for name in self.plan.inputs]
        # __array_interface__, not .ctypes: that makes a reference cycle per call, i.e. garbage
        # for the collector on every request.
        key = (id(ring), slot, tuple((a.__array_interface__["data"][0], a.shape, a.dtype.str) for a in arrays))
        if key not in self._bindings:
            self._bindings[key] = self._bind(arrays, ring, slot, shapes)
        if len(self._by_views) >= 64:
            del self._by_views[next(iter(self._by_views))]
        self._by_views[fast] = (self._bindings[key][0], boundary)
        return self._bindings[key][0]

    def _bind(self, arrays: list[np.ndarray], ring: Any, slot: int,
              shapes: dict[str, tuple[int, ...]] | None) -> tuple[Any, list[np.ndarray], dict[str, np.ndarray]]:
        """A new binding of ``arrays`` and ``ring``'s ``slot`` (with the buffers it keeps alive)."""
        if len(self._bindings) >= 64:
            # Inputs that are not ring slots (never in the worker), or many request shapes over
            # dynamic dims: drop the oldest binding (dicts keep insertion order).
            del self._bindings[next(iter(self._bindings))]
        views = ring.static_views(slot) if shapes is None else ring.views(slot, shapes)
        outputs = [views[name] for name in self._outputs]
        return self.engine.bind(arrays, outputs), arrays, views  # keep the buffers alive with it

    def _check_outputs(self, values: Sequence[np.ndarray], request_id: int | None,
                       shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        """Each output against its compiled spec, or over dynamic dims against the shape the
        request's dims give it (``shapes``, where known): a `StageError` naming the node that
        wrote one that does not fit (an engine that does not check data may return an empty
        tensor)."""
        for i, spec in self._checks:
            why = tensor_problem(spec, values[i], None if shapes is None else shapes.get(spec.name))
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
