"""One stage's onnxruntime session: created once (weights stay resident), run per request."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..artifact.manifest import Artifact
from ..artifact.plan import StagePlan
from ..errors import StageError

__all__ = ["StageRunner", "make_session", "node_from_message"]

_NODE_NAME_RE = re.compile(r"[Nn]ode\.?\s*Name:\s*'([^']*)'")
_NODE_OP_RE = re.compile(r"running (\S+) node")


def node_from_message(message: str) -> str | None:
    """The node onnxruntime named in an error message: its name, else its op type."""
    m = _NODE_NAME_RE.search(message)
    if m and m.group(1):
        return m.group(1)
    m = _NODE_OP_RE.search(message)
    return m.group(1) if m else None


def make_session(model: bytes | str, threads: int, *, spin: bool = True):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session (model bytes or a verified path) with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 4  # failures reach the caller as StageError; no stderr noise
    if not spin:
        # A pipeline worker waiting for its next request must not burn the core a neighbour needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _release_free_memory() -> None:
    """Hand the transient copies made while loading (verified bytes, protobuf) back to the OS,
    so a worker's resident memory is its weights, not its loading peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StageRunner:
    """Runs stage ``index`` of an artifact: boundary tensors in, next boundary's tensors out.

    Carried tensors are passed through without entering onnxruntime.
    """

    def __init__(self, artifact: Artifact, index: int, *, threads: int = 1, spin: bool = True) -> None:
        self.plan: StagePlan = artifact.plan.stages[index]
        self.index = index
        # A private, verified copy: onnxruntime maps only bytes we hashed. It is deleted once
        # the session holds the weights (a mapping outlives its file's name on Linux).
        with tempfile.TemporaryDirectory(prefix=f"corepipe-stage{index}-") as private:
            path = artifact.copy_stage(index, private)
            self.session = make_session(str(path), threads, spin=spin)
        self._outputs = list(self.plan.outputs)
        self._bindings: dict[Any, tuple[Any, ...]] = {}
        after = {t.name: t for t in artifact.plan.boundaries[index + 1]}
        self._dynamic_out = any(after[name].dynamic for name in self._outputs if name in after)
        _release_free_memory()

    def run(self, boundary: Mapping[str, np.ndarray], request_id: int | None = None) -> dict[str, np.ndarray]:
        """Compute this stage. Raises `StageError` naming the stage, node and request."""
        feeds = {name: boundary[name] for name in self.plan.inputs}
        try:
            values = self.session.run(self._outputs, feeds) if self._outputs else []
        except Exception as exc:
            raise self._error(exc, request_id) from None
        out = {name: boundary[name] for name in self.plan.carried}
        out.update(zip(self._outputs, values))
        return out

    def run_into(self, boundary: Mapping[str, np.ndarray], ring: Any, slot: int, request_id: int | None = None) -> None:
        """Compute this stage with onnxruntime reading its inputs in place and writing its outputs
        straight into ``ring``'s ``slot`` (no copies). Falls back to `run` + copy when an output's
        shape differs from the compiled one (data-dependent shapes). Raises `StageError` like `run`.

        Slots sit at fixed addresses, so the binding for a (slot, input buffers) pair is made
        once and reused: per request, onnxruntime just runs.
        """
        if self._dynamic_out:  # sizes known only after the run: run, then copy what came out
            ring.write(slot, self.run(boundary, request_id))
            return
        views = ring.static_views(slot) if self.plan.carried else None
        binding = self._binding(boundary, ring, slot)
        try:
            if self._outputs:
                self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise self._error(exc, request_id) from None
        if views is not None:
            for name in self.plan.carried:
                src = boundary[name]
                if src.shape != views[name].shape:
                    ring.write(slot, self.run(boundary, request_id))
                    return
                views[name][...] = src
        ring.mark_static(slot)

    def _binding(self, boundary: Mapping[str, np.ndarray], ring: Any, slot: int) -> Any:
        import onnxruntime as ort

        arrays = [boundary[name] for name in self.plan.inputs]
        key = (id(ring), slot, tuple((a.ctypes.data, a.shape, a.dtype.str) for a in arrays))
        cached = self._bindings.get(key)
        if cached is not None:
            return cached[0]
        if len(self._bindings) >= 64:  # inputs that are not ring slots (never in the worker)
            self._bindings.clear()
        binding = self.session.io_binding()
        keep = []
        for name, arr in zip(self.plan.inputs, arrays):
            value = ort.OrtValue.ortvalue_from_numpy(arr)  # wraps the buffer, no copy
            binding.bind_ortvalue_input(name, value)
            keep.append(value)
        views = ring.static_views(slot)
        for name in self._outputs:
            v = views[name]
            binding.bind_output(name, "cpu", 0, v.dtype, list(v.shape), v.ctypes.data)
        self._bindings[key] = (binding, keep, arrays, views)
        return binding

    def _error(self, exc: BaseException, request_id: int | None) -> StageError:
        message = str(exc).strip()
        node = node_from_message(message)
        return StageError(
            f"stage {self.index} failed on request {request_id}"
            + (f" at node {node!r}" if node else "")
            + f": {message}",
            stage=self.index, request_id=request_id, node=node,
        )
