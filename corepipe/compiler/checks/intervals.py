"""Bounds on the values of a graph's tensors, whatever its request holds: interval arithmetic.

Inputs are unbounded (bool ones 0..1), initializers span their min..max, shapes are the
compiled shapes (over dynamic dims, anything in their ranges), and a small set of ops map their inputs' bounds to their output's soundly
(comparisons give 0..1, ArgMax 0..dim-1, a cumulative sum of n values in lo..hi stays within
n*lo..n*hi, Add/Sub/Mul combine the bounds...). Any other op, or an integer result that could
wrap around its type, has no bound. `corepipe.compiler.checks.unchecked` uses it to prove an index
computed from the request in range (RoBERTa's position ids), so its node needs no onnxruntime.
"""

from __future__ import annotations

import math

import onnx
from onnx import numpy_helper

from ..model.graph import ModelGraph
from ..model.shapes import dtype_of

__all__ = ["Bound", "Intervals"]

Bound = tuple[float, float]
_BOOLEAN = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                      "IsNaN", "IsInf"})
#: Ops whose output values are some of their first input's values.
_SAME_VALUES = frozenset({"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Transpose", "Slice",
                          "Tile", "Gather", "GatherElements", "GatherND"})
#: Ops that combine their inputs' bounds (the rest give none).
_ARITHMETIC = frozenset({"Concat", "Max", "Min", "Where", "Cast", "Relu", "Neg", "Abs", "Clip", "CumSum", "Add",
                         "Sub", "Mul"})
#: Integer dtypes: (lowest, highest) value.
_LIMITS = {f"int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)} | {
    f"uint{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


class Intervals:
    """``Intervals(graph).of(name)``: (lo, hi) that every value of tensor ``name`` lies within
    for any request, or None where no bound is known. Results are memoized."""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self.inputs = {t.name: t.dtype for t in graph.inputs}
        self.nodes = list(graph.model.graph.node)
        self.producer = {out: i for i, info in enumerate(graph.nodes) for out in info.writes}
        self._memo: dict[str, Bound | None] = {}

    def of(self, name: str) -> Bound | None:
        try:
            return self._of(name)
        except RecursionError:  # a chain deeper than Python's stack: no bound, never a wrong one
            return None

    def _of(self, name: str) -> Bound | None:
        if name not in self._memo:
            self._memo[name] = None  # a cycle (there is none in a valid graph) finds no bound
            bound = self._bound(name)
            spec = self.graph.tensors.get(name)
            if bound is not None and spec is not None and spec.dtype in _LIMITS:
                lowest, highest = _LIMITS[spec.dtype]
                if bound[0] < lowest or bound[1] > highest:
                    bound = None  # it could wrap around
            self._memo[name] = bound
        return self._memo[name]

    def _shape(self, name: str) -> tuple[int, ...] | None:
        spec = self.graph.tensors.get(name)
        return None if spec is None or spec.dynamic else spec.shape

    def _bound(self, name: str) -> Bound | None:
        if name in self.inputs:
            return (0.0, 1.0) if self.inputs[name] == "bool" else None
        if name in self.graph.initializers:
            return self._constant(self.graph.initializers[name])
        if name not in self.producer:
            return None
        node = self.nodes[self.producer[name]]
        if node.domain not in ("", "ai.onnx"):
            return None
        op, args = node.op_type, list(node.input)
        if op in ("Shape", "Size"):
            shape = self._shape(args[0])
            if shape is None:
                return None
            spec = self.graph.tensors[args[0]]
            smallest = spec.min_shape or shape  # over dynamic dims, any shape from min_shape to shape
            if op == "Size":
                return (float(math.prod(smallest)), float(math.prod(shape)))
            return (float(min(smallest)), float(max(shape))) if shape else None
        if op in _BOOLEAN:
            return (0.0, 1.0)
        if op in ("ArgMax", "ArgMin"):
            shape, axis = self._shape(args[0]), _attr(node, "axis", 0)
            return (0.0, float(shape[axis] - 1)) if shape and -len(shape) <= axis < len(shape) else None
        if op in _SAME_VALUES:
            return self._of(args[0])
        if op not in _ARITHMETIC:
            return None
        ins = [self._of(x) if x else None for x in args]
        if op in ("Concat", "Max", "Min", "Where"):
            parts = ins[1:] if op == "Where" else ins
            if not parts or any(b is None for b in parts):
                return None
            los, his = [b[0] for b in parts if b], [b[1] for b in parts if b]
            if op == "Max":
                return (max(los), max(his))
            if op == "Min":
                return (min(los), min(his))
            return (min(los), max(his))
        if op == "Clip":  # min(max(x, lo), hi), each bound optional
            return self._clip(ins[0], ins[1] if len(args) > 1 and args[1] else (), ins[2] if len(args) > 2 and args[2] else ())
        a = ins[0] if ins else None
        if a is None:
            return None
        if op == "Cast":
            to = dtype_of(_attr(node, "to", 0))
            if to == "bool":
                return (0.0, 1.0)
            return (float(math.trunc(a[0])), float(math.trunc(a[1]))) if to in _LIMITS else a
        if op == "Relu":
            return (max(0.0, a[0]), max(0.0, a[1]))
        if op == "Neg":
            return (-a[1], -a[0])
        if op == "Abs":
            low = 0.0 if a[0] <= 0 <= a[1] else min(abs(a[0]), abs(a[1]))
            return (low, max(abs(a[0]), abs(a[1])))
        b = ins[1] if len(ins) > 1 else None
        if b is None:
            return None
        if op == "CumSum":
            shape = self._shape(args[0])
            if shape is None or b[0] != b[1] or not -len(shape) <= int(b[0]) < len(shape):
                return None
            n = shape[int(b[0])]
            lo, hi = min(a[0], n * a[0]), max(a[1], n * a[1])
            return (min(lo, 0.0), max(hi, 0.0)) if _attr(node, "exclusive", 0) else (lo, hi)
        if op == "Add":
            return (a[0] + b[0], a[1] + b[1])
        if op == "Sub":
            return (a[0] - b[1], a[1] - b[0])
        if op == "Mul":
            products = [x * y for x in a for y in b]
            return (min(products), max(products))
        return None

    @staticmethod
    def _clip(x: Bound | None, lo: Bound | tuple[()] | None, hi: Bound | tuple[()] | None) -> Bound | None:
        """Clip's bounds: ``lo``/``hi`` are () where the input is omitted, None where unbounded."""
        if lo is None or hi is None:
            return None
        a = x if x is not None else (-math.inf, math.inf)
        if lo:
            a = (max(a[0], lo[0]), max(a[1], lo[1]))
        if hi:
            a = (min(a[0], hi[0]), min(a[1], hi[1]))
        return a if math.isfinite(a[0]) and math.isfinite(a[1]) else None

    @staticmethod
    def _constant(t: onnx.TensorProto) -> Bound | None:
        count = math.prod(t.dims)
        if t.data_location == onnx.TensorProto.EXTERNAL or count == 0 or count > 2**16:
            return None
        a = numpy_helper.to_array(t)
        if a.dtype.kind not in "biuf":
            return None
        lo, hi = float(a.min()), float(a.max())
        return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None
