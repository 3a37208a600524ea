"""A small helper that builds opset-17 ONNX graphs node by node with deterministic weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IR_VERSION", "OPSET", "GraphBuilder"]

OPSET = 17
# ONNX 1.12 shipped opset 17 with IR version 8; every onnxruntime >= 1.12 loads it.
IR_VERSION = 8


class GraphBuilder:
    """Accumulates nodes and initializers; names are unique and readable (``prefix/op_N``)."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def unique(self, base: str) -> str:
        """Return ``base`` or ``base_K``: a name not used yet in this graph."""
        name, k = base, 1
        while name in self._used:
            name = f"{base}_{k}"
            k += 1
        self._used.add(name)
        return name

    # ----------------------------------------------------------------- initializers
    def init(self, name: str, array: np.ndarray) -> str:
        """Add ``array`` as an initializer under a unique name derived from ``name``."""
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, value: Any, dtype: Any = np.float32, name: str = "const") -> str:
        """An initializer for a small constant, shared by every caller asking for the same value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if key not in self._consts:
            self._consts[key] = self.init(name, arr)
        return self._consts[key]

    def normal(self, name: str, shape: Sequence[int], std: float) -> str:
        """A float32 initializer drawn from N(0, std^2)."""
        arr = self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
        return self.init(name, arr)

    # ------------------------------------------------------------------------ nodes
    def node(
        self,
        op: str,
        inputs: Sequence[str],
        prefix: str,
        n_out: int = 1,
        **attrs: Any,
    ) -> str:
        """Append one node; returns its (first) output name."""
        node_name = self.unique(f"{prefix}/{op}")
        outs = [node_name if n_out == 1 else f"{node_name}:{i}" for i in range(n_out)]
        for o in outs:
            self._used.add(o)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=node_name, **attrs))
        return outs[0]

    # ------------------------------------------------------------- common blocks
    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        prefix: str,
        *,
        stride: int = 1,
        pad: int | None = None,
        bias: bool = False,
        gain: float = 1.0,
    ) -> str:
        """Conv k x k (He init times ``gain``; no bias by default since BN follows)."""
        pad = k // 2 if pad is None else pad
        std = gain * float(np.sqrt(2.0 / (c_in * k * k)))
        w = self.normal(f"{prefix}.weight", (c_out, c_in, k, k), std)
        ins = [x, w]
        if bias:
            ins.append(self.init(f"{prefix}.bias", np.zeros(c_out, np.float32)))
        return self.node(
            "Conv",
            ins,
            prefix,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )

    def bn(self, x: str, c: int, prefix: str, eps: float = 1e-5) -> str:
        """BatchNormalization (inference form) with gamma ~ 1, beta ~ 0, mean ~ 0, var ~ 1."""
        r = self.rng
        gamma = (1.0 + 0.05 * r.standard_normal(c)).astype(np.float32)
        beta = (0.05 * r.standard_normal(c)).astype(np.float32)
        mean = (0.05 * r.standard_normal(c)).astype(np.float32)
        var = r.uniform(0.8, 1.2, c).astype(np.float32)
        ins = [
            x,
            self.init(f"{prefix}.weight", gamma),
            self.init(f"{prefix}.bias", beta),
            self.init(f"{prefix}.running_mean", mean),
            self.init(f"{prefix}.running_var", var),
        ]
        return self.node("BatchNormalization", ins, prefix, epsilon=eps)

    def relu(self, x: str, prefix: str) -> str:
        return self.node("Relu", [x], prefix)

    def linear(self, x: str, d_in: int, d_out: int, prefix: str, std: float) -> str:
        """MatMul + Add (the transformer form of a dense layer), weight stored [d_in, d_out]."""
        w = self.normal(f"{prefix}.weight", (d_in, d_out), std)
        b = self.init(f"{prefix}.bias", np.zeros(d_out, np.float32))
        y = self.node("MatMul", [x, w], prefix)
        return self.node("Add", [y, b], prefix)

    def gemm(self, x: str, d_in: int, d_out: int, prefix: str, std: float) -> str:
        """Gemm with the weight stored [d_out, d_in] (transB=1), as classifiers export."""
        w = self.normal(f"{prefix}.weight", (d_out, d_in), std)
        b = self.init(f"{prefix}.bias", np.zeros(d_out, np.float32))
        return self.node("Gemm", [x, w, b], prefix, transB=1)

    def classifier_head(self, x: str, c: int, classes: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm c->classes."""
        y = self.node("GlobalAveragePool", [x], "head")
        y = self.node("Flatten", [y], "head", axis=1)
        return self.gemm(y, c, classes, "fc", float(np.sqrt(1.0 / c)))

    # ----------------------------------------------------------------------- model
    def build(
        self,
        inputs: Sequence[tuple[str, int, Sequence[int]]],
        outputs: Sequence[tuple[str, str, int, Sequence[int]]],
        doc: str = "",
    ) -> onnx.ModelProto:
        """Assemble the model. ``outputs`` are (tensor produced, public name, elem type, shape)."""
        nodes = list(self.nodes)
        out_infos = []
        for produced, public, elem, shape in outputs:
            if produced != public:  # rename the tensor in place: no Identity node
                for n in nodes:
                    for seq in (n.output, n.input):
                        for i, t in enumerate(seq):
                            if t == produced:
                                seq[i] = public
            out_infos.append(helper.make_tensor_value_info(public, elem, list(shape)))
        graph = helper.make_graph(
            nodes,
            self.name,
            [helper.make_tensor_value_info(n, e, list(s)) for n, e, s in inputs],
            out_infos,
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="corepipe.zoo",
            ir_version=IR_VERSION,
            doc_string=doc,
        )
        return model


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
