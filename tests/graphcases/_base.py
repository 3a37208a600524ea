"""Plumbing shared by the graph cases: the ``GraphCase`` record and small builders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the IR version that goes with opset 17; onnxruntime 1.32 accepts it.
IR_VERSION = 8

F32 = TensorProto.FLOAT
F16 = TensorProto.FLOAT16
I64 = TensorProto.INT64
I32 = TensorProto.INT32
BOOL = TensorProto.BOOL


@dataclass
class GraphCase:
    """One small model plus deterministic inputs for it.

    ``example_inputs`` is set only where the model has symbolic dims that a compiler must fix
    from concrete example arrays; ``inputs()`` falls back to ``feeds`` otherwise.
    """

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    example_inputs: dict[str, np.ndarray] | None = None
    rtol: float = 1e-5
    atol: float = 1e-5

    def inputs(self) -> dict[str, np.ndarray]:
        """The arrays to compile with: ``example_inputs`` when given, else ``feeds``."""
        return self.example_inputs if self.example_inputs is not None else self.feeds


def randn(seed: int, *shape: int, dtype: Any = np.float32) -> np.ndarray:
    """Deterministic standard-normal array."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def init(name: str, value: Any, dtype: Any = None) -> TensorProto:
    """An initializer tensor from a numpy array or Python value."""
    arr = np.asarray(value, dtype=dtype)
    return numpy_helper.from_array(arr, name)


def vi(name: str, elem_type: int, shape: Sequence[int | str | None] | None) -> onnx.ValueInfoProto:
    """A typed value info (graph input/output or subgraph input/output)."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def node(
    op: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None, **attrs: Any
) -> onnx.NodeProto:
    """A node named after its op and first output unless ``name`` is given ("" stays empty)."""
    if name is None:
        name = f"{op}_{outputs[0]}"
    return helper.make_node(op, list(inputs), list(outputs), name=name, **attrs)


def build(
    name: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    """A model with one default-domain opset import."""
    graph = helper.make_graph(
        list(nodes), name, list(inputs), list(outputs), initializer=list(initializers)
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version,
        producer_name="corepipe-graphcases",
    )


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` as one onnxruntime CPU session (one thread) and name its outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
