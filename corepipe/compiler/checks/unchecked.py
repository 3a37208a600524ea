"""Request data that reaches an operand OpenVINO does not check, and what corepipe does about it.

OpenVINO 2026.4 takes index and size operands as they come: a Gather index out of range reads
0, an impossible Reshape returns an empty tensor, a Range with delta 0 kills the process (the
README's table lists each operator, as `benchmarks/unchecked_ops.py` measured it). For every
such operand (`OPERANDS`) of the model, this analysis follows its values back:

- to constants only (shapes included: a stage runs the shapes it was compiled for): nothing to
  do, the compiler's run on the example inputs already met those values;
- to a graph input, unchanged or through Identity, Cast, Reshape, Flatten, Squeeze, Unsqueeze
  and the addition of a one-element constant ("direct"): a `ValueCheck` that the intake runs on
  every request, where the operand's rule can be stated on the values (an index range, a
  Reshape target); for the other operands, the node's stage runs on onnxruntime;
- to request data through anything else: the node's stage runs on onnxruntime, which checks,
  and the plan says why (`StagePlan.fallback`) -- unless interval arithmetic over the graph
  proves the values in range whatever the request holds (RoBERTa's position ids: a cumulative
  sum of a 0/1 mask plus one stay within 1..seq+1; `corepipe.compiler.checks.intervals`).

A node with subgraphs (If, Loop, Scan) that holds such an operator and reads request data runs
on onnxruntime too. The analysis reads a `ModelGraph` and nothing else; it is pure and cheap
(one pass over the nodes), so each cut the compiler tries asks it again.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import numpy_helper

from ...artifact.valuechecks import ValueCheck
from ..model.graph import ModelGraph
from ..model.shapes import dtype_of
from .intervals import Intervals

__all__ = ["OPERANDS", "Operand", "Findings", "find_unchecked", "onnxruntime_stages", "check_notes"]


@dataclass(frozen=True)
class Operand:
    """Input ``index`` of an op, which OpenVINO takes unchecked: ``role`` names it, ``rule`` says
    what corepipe checks at intake when a request reaches it directly (``"ort"``: no intake rule,
    the node runs on onnxruntime), ``ov`` what OpenVINO 2026.4.1 did with a bad value."""

    index: int
    role: str
    rule: str
    ov: str


def _ops(names: str, *operands: Operand) -> dict[str, tuple[Operand, ...]]:
    return {name: operands for name in names.split()}


_REDUCE = ("ReduceSum ReduceMax ReduceMin ReduceMean ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
           "ReduceLogSumExp ReduceSumSquare")
#: Operands OpenVINO 2026.4.1 takes without checking them, each measured by
#: `benchmarks/unchecked_ops.py` after a good request on the same infer request, as a stage runs
#: ("the previous answer": it returns the previous request's outputs again).
OPERANDS: dict[str, tuple[Operand, ...]] = {
    **_ops("Gather", Operand(1, "indices", "index", "reads 0, or another row")),
    **_ops("GatherElements", Operand(1, "indices", "index", "returns the previous answer")),
    **_ops("GatherND", Operand(1, "indices", "tuple", "reads 0")),
    **_ops("ScatterND", Operand(1, "indices", "tuple", "drops the update")),
    **_ops("ScatterElements Scatter", Operand(1, "indices", "index", "returns the previous answer, or kills the process")),
    **_ops("ReverseSequence", Operand(1, "sequence_lens", "seqlen", "returns the previous answer")),
    **_ops("RoiAlign", Operand(2, "batch_indices", "batch", "returns the previous answer")),
    **_ops("OneHot", Operand(1, "depth", "min1", "returns an empty tensor, or the previous answer")),
    **_ops("ConstantOfShape", Operand(0, "shape", "min0", "returns the previous answer")),
    **_ops("Tile", Operand(1, "repeats", "min0", "returns an empty tensor")),
    **_ops("HannWindow HammingWindow BlackmanWindow", Operand(0, "size", "min0", "returns a window of another size")),
    **_ops("Resize", Operand(2, "scales", "ort", "returns an empty tensor"),
           Operand(3, "sizes", "min1", "returns an empty tensor, or the previous answer")),
    **_ops("Upsample", Operand(1, "scales", "ort", "returns a tensor of another size")),
    **_ops("TopK", Operand(1, "k", "ort", "returns the previous answer, for the valid k 0 too")),
    **_ops("NonMaxSuppression", Operand(2, "max_output_boxes_per_class", "ort",
                                        "returns the previous answer for a (valid) negative count")),
    **_ops("CumSum", Operand(1, "axis", "axis", "returns the previous answer")),
    **_ops("Reshape", Operand(1, "shape", "reshape", "returns the previous answer, or an empty tensor")),
    **_ops("Expand", Operand(1, "shape", "expand", "returns the previous answer, or an empty tensor")),
    **_ops("Range", Operand(0, "start", "ort", "returns an empty range full"),
           Operand(1, "limit", "ort", "returns an empty range full"),
           Operand(2, "delta", "ort", "kills the process on delta 0")),
    **_ops("Slice", Operand(3, "axes", "ort", "returns the previous answer"),
           Operand(4, "steps", "ort", "returns the previous answer")),
    **_ops("Pad", Operand(1, "pads", "ort", "returns the previous answer"),
           Operand(3, "axes", "ort", "returns the previous answer")),
    **_ops("Split", Operand(1, "split", "ort", "returns the previous answer, or wrong pieces")),
    **_ops("Squeeze", Operand(1, "axes", "ort", "returns the previous answer")),
    **_ops("Unsqueeze", Operand(1, "axes", "ort", "cannot compile it")),
    **_ops(_REDUCE, Operand(1, "axes", "ort", "returns the previous answer")),
    **_ops("DFT", Operand(1, "dft_length", "ort", "kills the process on 0, ignores a negative length")),
    **_ops("Col2Im", Operand(1, "image_shape", "ort", "returns a tensor of the wrong size"),
           Operand(2, "block_shape", "ort", "returns an empty tensor")),
    **_ops("Compress", Operand(1, "condition", "compress", "reads past the end of the axis")),
    **_ops("MaxUnpool", Operand(1, "indices", "ort", "cannot convert the op"),
           Operand(2, "output_shape", "ort", "cannot convert the op")),
}
#: Ops that hand their input's values on in the same order (shape aside).
_PASS = frozenset({"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"})
#: Ops whose outputs depend on their inputs' shapes only, which are static in a stage.
_SHAPE_ONLY = frozenset({"Shape", "Size"})


@dataclass
class Findings:
    """What the analysis found: checks for the intake, and nodes (by index in the graph's order)
    whose stage must run on onnxruntime, with why."""

    checks: list[ValueCheck] = field(default_factory=list)
    onnxruntime: dict[int, str] = field(default_factory=dict)


@dataclass
class _Source:
    kind: str  # "const", "input" (direct) or "derived"
    name: str  # the graph input, or the node that derives the values
    steps: list[tuple[str, Any]] = field(default_factory=list)


class _Graph:
    """The facts the analysis reads from a `ModelGraph`: producers, request-dependent values."""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self.nodes = list(graph.model.graph.node)
        self.inputs = {t.name for t in graph.inputs}
        self.producer = {out: i for i, node in enumerate(graph.nodes) for out in node.writes}
        self.dependent = set(self.inputs)  # values that depend on request data
        for info, node in zip(graph.nodes, self.nodes):
            if node.op_type in _SHAPE_ONLY and node.domain in ("", "ai.onnx"):
                continue
            if any(r in self.dependent for r in info.reads):
                self.dependent.update(info.writes)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The tensor's shape where every request has it; None where it depends on the data or
        varies with dynamic dims (a rule stated at one size would be wrong at another)."""
        spec = self.graph.tensors.get(name)
        return None if spec is None or spec.dynamic or not spec.is_static else spec.shape

    def scalar(self, name: str) -> int | float | None:
        """The value of a one-element initializer, or None."""
        t = self.graph.initializers.get(name)
        if t is None or math.prod(t.dims) != 1 or t.data_location == onnx.TensorProto.EXTERNAL:
            return None
        value = numpy_helper.to_array(t).reshape(-1)[0].item()
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None

    def source(self, name: str) -> _Source:
        """Where the values of ``name`` come from (see the module docstring)."""
        steps: list[tuple[str, Any]] = []
        while True:
            if name in self.inputs:
                return _Source("input", name, steps[::-1])
            if name not in self.dependent:
                return _Source("const", name)
            i = self.producer[name]
            node, label = self.nodes[i], self.graph.nodes[i].name
            others = [x for x in node.input[1:] if x]
            if node.domain not in ("", "ai.onnx"):
                return _Source("derived", label)
            if node.op_type in _PASS and not any(x in self.dependent for x in others):
                name = node.input[0]
                continue
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), 0)
                try:
                    steps.append(("cast", dtype_of(to)))
                except Exception:
                    return _Source("derived", label)
                name = node.input[0]
                continue
            if node.op_type in ("Add", "Sub") and len(node.input) == 2:
                a, b = node.input
                if a in self.dependent and b not in self.dependent and self.scalar(b) is not None:
                    c = self.scalar(b)
                    steps.append(("add", c if node.op_type == "Add" else -c))  # type: ignore[operator]
                    name = a
                    continue
                if node.op_type == "Add" and b in self.dependent and a not in self.dependent \
                        and self.scalar(a) is not None:
                    steps.append(("add", self.scalar(a)))
                    name = b
                    continue
            return _Source("derived", label)


def _proven(g: _Graph, intervals: Intervals, i: int, operand: Operand) -> bool:
    """Whether the values of ``operand`` of node ``i`` stay within what it allows, whatever the
    request holds (interval arithmetic; only for rules that are ranges)."""
    name = g.nodes[i].input[operand.index]
    allowed = _check(g, i, operand, _Source("input", name))
    bound = intervals.of(name)
    if allowed is None or allowed.kind != "range" or bound is None:
        return False
    return all((lo is None or lo <= bound[0]) and (hi is None or bound[1] <= hi)
               for lo, hi in zip(allowed.lo, allowed.hi))


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _check(g: _Graph, i: int, operand: Operand, src: _Source) -> ValueCheck | None:
    """The intake check for ``operand`` of node ``i`` fed directly by ``src``, or None where its
    rule cannot be stated on the values (unknown shapes, or an ``"ort"`` rule)."""
    node, label = g.nodes[i], g.graph.nodes[i].name
    base = {"input": src.name, "node": label, "op": node.op_type, "role": operand.role, "steps": tuple(src.steps)}
    data = node.input[0]
    shape = g.shape(data)
    rule = operand.rule
    if rule in ("min0", "min1"):
        return ValueCheck(**base, lo=(0 if rule == "min0" else 1,), what="a size")
    if shape is None or rule in ("ort", "compress"):
        return None
    if rule == "index":
        axis = _attr(node, "axis", 0)
        if not -len(shape) <= axis < len(shape):
            return None
        n = shape[axis]
        return ValueCheck(**base, lo=(-n,), hi=(n - 1,), what=f"an index into {data!r} along axis {axis} ({n} entries)")
    if rule == "tuple":
        idx = g.shape(node.input[operand.index])
        b = _attr(node, "batch_dims", 0) if node.op_type == "GatherND" else 0
        if not idx or b + idx[-1] > len(shape):
            return None
        dims = shape[b:b + idx[-1]]
        return ValueCheck(**base, lo=tuple(-d for d in dims), hi=tuple(d - 1 for d in dims),
                          what=f"an index tuple into {data!r} (dims {list(dims)})")
    if rule == "seqlen":
        axis = _attr(node, "time_axis", 0)
        return ValueCheck(**base, lo=(0,), hi=(shape[axis],), what=f"a length along axis {axis} of {data!r}")
    if rule == "batch":
        return ValueCheck(**base, lo=(0,), hi=(shape[0] - 1,), what=f"a batch index into {data!r} ({shape[0]} images)")
    if rule == "axis":
        r = len(shape)
        return ValueCheck(**base, lo=(-r,), hi=(r - 1,), what=f"an axis of the {r}-d {data!r}")
    if rule in ("reshape", "expand"):
        return ValueCheck(**base, kind=rule, data_shape=shape, allowzero=bool(_attr(node, "allowzero", 0)))
    return None


def _compress_safe(g: _Graph, node: onnx.NodeProto) -> bool:
    """A condition no longer than the axis it selects from is checked by its shape alone."""
    data, cond = g.shape(node.input[0]), g.shape(node.input[1])
    if data is None or cond is None:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    length = math.prod(data) if axis is None else data[axis]
    return math.prod(cond) <= length


def _holds_unchecked(node: onnx.NodeProto) -> str | None:
    """The first op of `OPERANDS` inside ``node``'s subgraphs, at any depth."""
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                if inner.op_type in OPERANDS and inner.domain in ("", "ai.onnx"):
                    return inner.op_type
                found = _holds_unchecked(inner)
                if found:
                    return found
    return None


def find_unchecked(graph: ModelGraph) -> Findings:
    """Every operand of `OPERANDS` that request data reaches: an intake check where it comes
    directly from a graph input and its rule can be stated, else onnxruntime for its node."""
    g = _Graph(graph)
    intervals = Intervals(graph)
    found = Findings()
    for i, node in enumerate(g.nodes):
        if node.domain not in ("", "ai.onnx"):
            continue
        label = graph.nodes[i].name
        inner = _holds_unchecked(node)
        if inner and any(r in g.dependent for r in graph.nodes[i].reads):
            found.onnxruntime[i] = (
                f"node {label!r} ({node.op_type}) holds a {inner} that may read request data, and openvino "
                f"does not check its {' or '.join(o.role for o in OPERANDS[inner])}; onnxruntime does")
            continue
        for operand in OPERANDS.get(node.op_type, ()):
            if operand.index >= len(node.input) or not node.input[operand.index]:
                continue
            src = g.source(node.input[operand.index])
            if src.kind == "const" or (operand.rule == "compress" and _compress_safe(g, node)):
                continue
            check = _check(g, i, operand, src) if src.kind == "input" else None
            if check is not None:
                if check not in found.checks:
                    found.checks.append(check)
                continue
            if _proven(g, intervals, i, operand):
                continue
            how = f"input {src.name!r}" if src.kind == "input" else f"node {src.name!r}, from request data"
            found.onnxruntime.setdefault(i, (
                f"node {label!r} ({node.op_type}) takes its {operand.role} from {how}, and openvino does not "
                f"check it ({operand.ov}); onnxruntime does"))
    return found


def onnxruntime_stages(graph: ModelGraph, bounds: Sequence[int]) -> dict[int, str]:
    """Stage -> why it must run on onnxruntime, for the cut ``bounds`` (stage s holds nodes
    ``bounds[s] .. bounds[s+1] - 1``)."""
    out: dict[int, str] = {}
    for i, why in sorted(find_unchecked(graph).onnxruntime.items()):
        s = bisect.bisect_right(list(bounds), i) - 1
        out[s] = why if s not in out else f"{out[s]}; {why}"
    return out


def check_notes(checks: Sequence[ValueCheck]) -> list[str]:
    """The plan's words for its intake checks."""
    notes = []
    for c in checks:
        if c.kind == "range":
            cols = [f"{'' if lo is None else lo}..{'' if hi is None else hi}" for lo, hi in zip(c.lo, c.hi)]
            rule = "in " + (cols[0] if len(cols) == 1 else "(" + ", ".join(cols) + ")")
        else:
            rule = f"a valid {c.kind} of {list(c.data_shape)}"
        notes.append(f"intake checks input {c.input!r}: {rule} (node {c.node!r}, {c.op} {c.role})")
    return notes
