"""A decoder's graph made stage-local: step values recomputed where read, state kept out of the
boundaries, and cuts only where the hidden state alone crosses.

A decoder step reads its state pairs' pasts and a few step inputs the runtime builds per stage
(``attention_mask``, ``position_ids``). Everything the graph computes from those alone (the
causal mask, rotary tables, position embeddings: *step values*) is taken out of the node list
into the graph's cones (`corepipe.compiler.model.constants.Cones`), so each stage that reads one
computes its own copy, as constants are copied, instead of receiving it across a boundary.

`localize` first makes every ``Shape`` of a tensor over the step dims (the token ids, a past,
the hidden state) read that shape from the step inputs instead: batch and new tokens are the
positions' shape, past + new the mask's, past their difference. So no stage needs another
stage's past, the token ids or an activation it does not hold for a shape, and the causal mask
built from them is a step value too. Then it moves the step values into cones, keeps pasts,
presents and step inputs out of every boundary, and forbids each cut that would split a pair's
layer (a pair's past readers and present writer) or let anything but one activation cross.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...artifact.plan import TensorSpec
from ..model.constants import Cones, _computable
from ..model.graph import ModelGraph, NodeInfo, _liveness
from .statepairs import PairLayout

__all__ = ["localize"]


class _Shapes:
    """Nodes that compute, from the step inputs alone, the shape of a tensor over the step dims:
    batch and new tokens from the positions' shape, past + new from the mask's, past the
    difference. They are step values: each stage that needs one computes it."""

    def __init__(self, graph: ModelGraph, mask: str | None, positions: str | None, dims: Mapping[str, str]):
        self.graph, self.nodes, self.made = graph, [], {}  # type: ignore[var-annotated]
        self.parts: dict[str, str] = {}
        if mask is None or positions is None:
            return
        t = "corepipe.step"
        one, two = self.const(f"{t}.c1", [1]), self.const(f"{t}.c2", [2])
        self.nodes += [
            helper.make_node("Shape", [mask], [f"{t}.mask"]),
            helper.make_node("Shape", [positions], [f"{t}.pos"]),
            helper.make_node("Slice", [f"{t}.mask", self.const(f"{t}.c0", [0]), one], [f"{t}.batch"]),
            helper.make_node("Slice", [f"{t}.mask", one, two], [f"{t}.total"]),
            helper.make_node("Slice", [f"{t}.pos", one, two], [f"{t}.new"]),
            helper.make_node("Sub", [f"{t}.total", f"{t}.new"], [f"{t}.past"]),
        ]
        self.parts = {dims[role]: f"{t}.{role if role != 'seq' else 'new'}" for role in ("batch", "seq", "past", "total")
                      if role in dims}

    def const(self, name: str, values: list[int]) -> str:
        if name not in self.graph.initializers:
            tensor = numpy_helper.from_array(np.array(values, dtype=np.int64), name)
            self.graph.initializers[name] = tensor
            self.graph.weight_bytes[name] = tensor.ByteSize()
        return name

    def of(self, spec: TensorSpec) -> str | None:
        """The value holding ``spec``'s shape, or None where an axis varies with no step dim."""
        if spec.dynamic or not self.parts:
            return None
        axes = spec.dims or (None,) * len(spec.shape)
        key = tuple(a if a is not None else int(hi) for a, (lo, hi) in zip(axes, spec.ranges()))
        if any(isinstance(k, str) and k not in self.parts for k in key) or any(
                a is None and lo != hi for a, (lo, hi) in zip(axes, spec.ranges())):
            return None
        if key not in self.made:
            name = f"corepipe.step.shape{len(self.made)}"
            parts = [self.parts[k] if isinstance(k, str) else self.const(f"{name}.d{i}", [k]) for i, k in enumerate(key)]
            self.nodes.append(helper.make_node("Concat", parts, [name], axis=0) if parts else
                              helper.make_node("Identity", [self.const(f"{name}.empty", [])], [name]))
            self.made[key] = name
        return self.made[key]

    def replace(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """``node`` reading a step shape instead where it is a Shape of a tensor over step dims."""
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.input[0] not in self.graph.tensors:
            return node
        full = self.of(self.graph.tensors[node.input[0]])
        if full is None:
            return node
        attrs = {a.name: a.i for a in node.attribute}
        if not attrs:
            return helper.make_node("Identity", [full], list(node.output), name=node.name)
        rank = len(self.graph.tensors[node.input[0]].shape)
        lo = self.const(f"{node.output[0]}.start", [attrs.get("start", 0)])
        hi = self.const(f"{node.output[0]}.end", [attrs.get("end", rank)])
        return helper.make_node("Slice", [full, lo, hi], list(node.output), name=node.name)


def localize(graph: ModelGraph, mask: str | None, positions: str | None, dims: Mapping[str, str],
             pairs: Sequence[PairLayout]) -> ModelGraph:
    """``graph`` with its step values (computed from the ``mask``, the ``positions``, shapes over
    the step ``dims`` (role -> dim name: batch, seq, past, total) and constants alone) moved into
    its cones, pasts, presents and step inputs kept out of every boundary, and each cut forbidden
    (`ModelGraph.forbidden`) that splits a pair's layer or lets more than one activation, or a
    model input, cross."""
    src = {n for n in (mask, positions) if n is not None}
    step: set[str] = set()
    graph = replace(graph, initializers=dict(graph.initializers), weight_bytes=dict(graph.weight_bytes))
    shapes = _Shapes(graph, mask, positions, dims)
    protos = [shapes.replace(node) for node in graph.model.graph.node]
    cones = Cones(list(graph.cones.nodes), dict(graph.cones.producer), dict(graph.cones.leaves))
    for node in shapes.nodes:  # ahead of every node that reads them
        _add_cone(cones, node, graph)
        step.update(o for o in node.output if o)
    keep: list[int] = []
    for i, node in enumerate(protos):
        ins = [x for x in node.input if x]
        known = all(x in src or x in step or graph.is_constant(x) for x in ins)
        if _computable(node) and known and any(x in src or x in step for x in ins):
            _add_cone(cones, node, graph)
            step.update(o for o in node.output if o)
        else:
            keep.append(i)
    local_in = src | {p.past for p in pairs}
    local_out = {p.present for p in pairs}
    keep = [keep[j] for j in _reorder([graph.nodes[i] for i in keep], local_in, local_out)]
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    del model.graph.node[:]
    model.graph.node.extend(protos[i] for i in keep)
    nodes = []
    for j, i in enumerate(keep):
        old = graph.nodes[i]
        weights = tuple(dict.fromkeys([*old.weights, *cones.weights_for(old.reads)]))
        nodes.append(NodeInfo(j, old.name, old.op_type, old.reads, old.writes, weights))
    inputs = [t.name for t in graph.inputs if t.name not in local_in]
    outputs = [t.name for t in graph.outputs if t.name not in local_out]
    live = _liveness(nodes, inputs, outputs)
    out = replace(graph, model=model, nodes=nodes, live=live, cones=cones,
                  local_outputs=tuple(p.present for p in pairs))
    out.forbidden = _forbidden(out, pairs, {t.name for t in graph.inputs})
    return out


def _reorder(nodes: Sequence[NodeInfo], pasts: set[str], presents: set[str]) -> list[int]:
    """The indices of ``nodes`` in a topological order where the nodes that only unpack pasts
    run just before their first reader and those that only pack presents just after their last
    input: exporters may put them all at the start or the end of the graph (the legacy one
    stacks every ``present.{i}`` last), which would spread a pair's layer over the whole graph."""
    n = len(nodes)
    key = [float(i) for i in range(n)]
    producer = {w: i for i, node in enumerate(nodes) for w in node.writes}
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for r in node.reads:
            readers.setdefault(r, []).append(i)
    head = [False] * n
    for i, node in enumerate(nodes):  # reads pasts (and weights), through other such nodes only
        ins = [r for r in node.reads if r in pasts or r in producer]
        head[i] = bool(ins) and all(r in pasts or head[producer[r]] for r in ins)
    tail = [False] * n
    for i in range(n - 1, -1, -1):  # feeds presents only, through other such nodes
        outs = [(w, readers.get(w, [])) for w in nodes[i].writes]
        tail[i] = bool(outs) and all((w in presents or rs) and all(tail[j] for j in rs) for w, rs in outs) and any(
            w in presents or rs for w, rs in outs)
    for i in range(n):
        if tail[i] and not head[i]:
            before = [key[producer[r]] for r in nodes[i].reads if r in producer]
            key[i] = max(before) + 1e-3 if before else key[i]
    for i in range(n - 1, -1, -1):
        if head[i] and not tail[i]:
            after = [key[j] for w in nodes[i].writes for j in readers.get(w, [])]
            key[i] = min(after) - 1e-3 if after else key[i]
    deps = [{producer[r] for r in node.reads if r in producer} for node in nodes]
    waiting = [len(d) for d in deps]
    users: list[list[int]] = [[] for _ in range(n)]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [(key[i], i) for i in range(n) if not waiting[i]]
    heapq.heapify(ready)
    order = []
    while ready:  # topological, the smallest key first
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready, (key[j], j))
    return order


def _add_cone(cones: Cones, node: onnx.NodeProto, graph: ModelGraph) -> None:
    leaves: dict[str, None] = {}
    for x in node.input:
        if x in graph.initializers:
            leaves[x] = None
        leaves.update(dict.fromkeys(cones.leaves.get(x, ())))
    for o in node.output:
        if o:
            cones.producer[o] = len(cones.nodes)
            cones.leaves[o] = tuple(leaves)
    cones.nodes.append(node)


def _forbidden(graph: ModelGraph, pairs: Sequence[PairLayout], inputs: set[str]) -> dict[int, str]:
    """Cut position -> why a decoder may not be cut there."""
    out: dict[int, str] = {}
    for p in range(1, graph.n):
        names = graph.live[p]
        fed = [t for t in names if t in inputs]
        if fed:
            out[p] = f"model input {fed[0]!r} is still read after it (a boundary carries only the hidden state)"
        elif len(names) != 1:
            out[p] = (f"{len(names)} activations would cross ({', '.join(repr(t) for t in names[:3])}"
                      f"{', ...' if len(names) > 3 else ''}); a decoder's boundary carries only the hidden state")
    spans = []
    for pair in pairs:  # the layer: out to the nearest places where the hidden state alone crosses
        at = [n.index for n in graph.nodes if pair.past in n.reads or pair.present in n.writes]
        if not at:
            continue
        lo, hi = min(at), max(at)
        while lo > 0 and lo in out:
            lo -= 1
        while hi + 1 < graph.n and hi + 1 in out:
            hi += 1
        spans.append((lo, hi, pair))
    for lo, hi, pair in spans:
        for p in range(lo + 1, hi + 1):
            out[p] = (f"it would split the layer of state pair {pair.past!r} -> {pair.present!r} (nodes "
                      f"{lo}..{hi}: {graph.nodes[lo].name!r} to {graph.nodes[hi].name!r})")
    return out
