"""Analytic cost of each node: FLOPs and bytes moved, turned into seconds on a target.

Only the ratios between nodes steer the partitioner; `--balance measure` replaces these
estimates with times measured on one core (see `corepipe.compiler.cut.measure`).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...artifact.target import Target
from ..model.graph import ModelGraph

__all__ = ["node_flops", "estimate_node_seconds"]

_ELEMENTWISE_HEAVY = {"Erf": 8, "Exp": 4, "Tanh": 8, "Sigmoid": 4, "Softmax": 6, "Gelu": 10,
                      "LayerNormalization": 8, "BatchNormalization": 2, "Pow": 4, "Sqrt": 2,
                      "Log": 4, "LogSoftmax": 6, "ReduceMean": 1, "InstanceNormalization": 8}


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(graph: ModelGraph, index: int) -> float:
    """Floating-point operations of one node, from its static shapes (0 when unknown)."""
    info = graph.nodes[index]
    node = graph.model.graph.node[index]
    specs = graph.tensors
    ins = [specs.get(n) for n in node.input]
    outs = [specs.get(n) for n in node.output if n]
    out_elems = sum(_numel(o.shape) for o in outs if o is not None)
    op = info.op_type
    if op in ("MatMul", "Gemm", "MatMulInteger", "FusedMatMul") and len(ins) >= 2 and ins[0] and ins[1]:
        a = ins[0].shape
        k = a[-1] if a else 1
        if op == "Gemm" and _attr(node, "transA", 0):
            k = a[0]
        return 2.0 * k * out_elems
    if op in ("Conv", "ConvTranspose") and len(ins) >= 2 and ins[1] is not None:
        w = ins[1].shape  # [M, C/group, kh, kw...]
        per_out = _numel(w[1:]) if op == "Conv" else _numel(w[2:]) * (w[0] if w else 1)
        return 2.0 * per_out * out_elems
    if op in ("MaxPool", "AveragePool"):
        kernel = _attr(node, "kernel_shape", [1])
        return float(out_elems * _numel(tuple(kernel)))  # type: ignore[arg-type]
    if op == "Einsum":
        return 2.0 * sum(_numel(i.shape) for i in ins if i is not None)
    if op in ("If", "Loop", "Scan"):
        return float(out_elems) * 10.0
    return float(out_elems * _ELEMENTWISE_HEAVY.get(op, 1))


_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
           "Multinomial", "Bernoulli", "Dropout"}


def folded_nodes(graph: ModelGraph) -> set[int]:
    """Nodes that read only weights (or other such nodes' outputs): onnxruntime folds them into
    constants when a session starts, so they cost nothing per request. GPT-2's Transpose of
    its tied embedding is one."""
    const = set(graph.weight_bytes) | set(graph.cones.producer)
    folded = set()
    for info in graph.nodes:
        if info.reads and info.op_type not in _RANDOM and all(r in const for r in info.reads):
            folded.add(info.index)
            const.update(info.writes)
    return folded


def _small_rows_penalty(graph: ModelGraph, index: int) -> float:
    """GEMM-like kernels run below peak when the output has few rows (a 7x7 feature map, a
    short sequence): each weight is reused fewer times. 1 + 32 / rows fits onnxruntime's conv
    and matmul on one core here within ~10% from 49 to 3136 rows."""
    info = graph.nodes[index]
    if info.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedMatMul"):
        return 1.0
    out = graph.tensors.get(info.writes[0]) if info.writes else None
    if out is None or not out.shape:
        return 1.0
    if info.op_type.startswith("Conv"):
        rows = _numel(out.shape) // max(1, out.shape[1] if len(out.shape) > 1 else 1)
    else:
        rows = _numel(out.shape) // max(1, out.shape[-1])
    return 1.0 + 32.0 / max(1, rows)


def estimate_node_seconds(graph: ModelGraph, target: Target) -> list[float]:
    """Seconds per node on one core of ``target``: a roofline of FLOPs and bytes, plus dispatch.
    Nodes onnxruntime constant-folds (`folded_nodes`) cost nothing."""
    seconds = []
    folded = folded_nodes(graph)
    for info in graph.nodes:
        if info.index in folded:
            seconds.append(0.0)
            continue
        flops = node_flops(graph, info.index)
        moved = 0
        for name in info.reads + info.writes:
            spec = graph.tensors.get(name)
            if spec is not None:
                moved += spec.nbytes
        seconds.append(
            max(flops / target.flops_per_s * _small_rows_penalty(graph, info.index),
                moved / target.mem_bytes_per_s)
            + target.node_overhead_s
        )
    return seconds
