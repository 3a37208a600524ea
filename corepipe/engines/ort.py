"""The onnxruntime engine: widest op coverage and the reference that transparency is checked
against. fp32 only: its CPU provider has no fast bf16 or fp16 kernels on x86-64, so it refuses
them rather than run them slowly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Engine, LoadFailure, Ranges

__all__ = ["OrtEngine", "make_session", "node_from_message"]

_NODE_NAME_RE = re.compile(r"[Nn]ode\.?\s*Name:\s*'([^']*)'|node with name '([^']*)'")
_NODE_OP_RE = re.compile(r"running (\S+) node|implementation for (\w+)\(")


def node_from_message(message: str) -> str | None:
    """The node onnxruntime named in an error message: its name, else its op type."""
    m = _NODE_NAME_RE.search(message)
    if m and (m.group(1) or m.group(2)):
        return m.group(1) or m.group(2)
    m = _NODE_OP_RE.search(message)
    return (m.group(1) or m.group(2)) if m else None


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


class OrtEngine(Engine):
    """A stage on one onnxruntime CPU session; in-place runs go through IO bindings.

    One session runs every shape a stage graph over dynamic dims takes, buckets included:
    onnxruntime's CPU kernels do not specialise on shapes, so ``variants`` need no session of
    their own (and the weights stay one copy).
    """

    name = "onnxruntime"

    def __init__(self, model: str | bytes, *, inputs: Sequence[str], outputs: Sequence[str],
                 threads: int = 1, precision: str = "fp32", spin: bool = True,
                 variants: Sequence[Ranges] | None = None) -> None:
        super().__init__(model, inputs=inputs, outputs=outputs, threads=threads, precision=precision, spin=spin,
                         variants=variants)
        if precision != "fp32":
            raise LoadFailure(self.name, (
                f"precision {precision!r} is not fast on onnxruntime's CPU provider (it has no "
                f"{precision} matmul or convolution kernels on x86-64); use engine='openvino' or "
                "'auto', or precision='fp32'"))
        try:
            self.session = make_session(model, self.threads, spin=spin)
        except Exception as exc:  # unsupported op, bad graph: onnxruntime names the node
            message = str(exc).strip()
            op = _NODE_OP_RE.search(message)
            raise LoadFailure(self.name, message, node=node_from_message(message),
                              op=(op.group(1) or op.group(2)) if op else None) from None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.outputs:
            return []
        values = self.session.run(list(self.outputs), {name: feeds[name] for name in self.inputs})
        return list(values)

    def bind(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Any:
        import onnxruntime as ort

        binding = self.session.io_binding()
        keep = []
        for name, arr in zip(self.inputs, inputs):
            value = ort.OrtValue.ortvalue_from_numpy(arr)  # wraps the buffer, no copy
            binding.bind_ortvalue_input(name, value)
            keep.append(value)
        for name, arr in zip(self.outputs, outputs):
            binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        return (binding, keep)

    def run_bound(self, binding: Any) -> None:
        if self.outputs:
            self.session.run_with_iobinding(binding[0])

    def addresses(self, binding: Any) -> tuple[list[int], list[int]]:
        iob, keep = binding
        return [v.data_ptr() for v in keep], [v.data_ptr() for v in iob.get_outputs()]

    def failing_node(self, message: str) -> str | None:
        return node_from_message(message)
