"""The model as the partitioner sees it: nodes in order, what each reads and writes, weights,
static tensor types, and the tensors alive across every possible cut.

`analyze` loads and checks the model, fixes symbolic dims from example inputs, turns top-level
Constant nodes into initializers, takes every other constant out of the node list (folded into
a weight, or a cone of nodes each stage that reads it copies: `corepipe.compiler.model.constants`), so
that no constant ever crosses a boundary, and infers every tensor's static type.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ...artifact.plan import TensorSpec
from ...artifact.protoio import load_checked, tensor_nbytes
from ...errors import CompileError
from .constants import Cones, fold_constants, subgraph_reads
from .probe import probe_shapes
from .shapes import CROSSABLE, dtype_of, fix_inputs

__all__ = ["NodeInfo", "ModelGraph", "analyze", "subgraph_reads"]


@dataclass(frozen=True)
class NodeInfo:
    index: int
    name: str
    op_type: str
    reads: tuple[str, ...]  # non-empty names read, outer-scope reads of subgraphs included
    writes: tuple[str, ...]  # non-empty names written
    weights: tuple[str, ...]  # initializers it needs: those it reads, and those behind constants it reads


@dataclass
class ModelGraph:
    """A checked model with static types and the facts a partitioner needs."""

    model: onnx.ModelProto  # nodes (`nodes`, in order), inputs, outputs, opsets; weights in `initializers`
    initializers: dict[str, onnx.TensorProto]
    nodes: list[NodeInfo]
    weight_bytes: dict[str, int]
    tensors: dict[str, TensorSpec]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    const_outputs: list[str]  # model outputs that are constants: the last stage emits them
    source_sha256: str
    live: list[list[str]]  # live[p]: tensors crossing a cut before node p (len = n + 1)
    uncrossable: dict[str, str] = field(default_factory=dict)  # name -> why it cannot cross
    weights_dir: str | None = None  # where external weights live (read when a stage needs them)
    cones: Cones = field(default_factory=Cones)  # constants computed by nodes each reader copies
    # A decoder's (`corepipe.compiler.decoder.stepvalues`): outputs its stages keep (state presents), and
    # cut position -> why it may not be cut there.
    local_outputs: tuple[str, ...] = ()
    forbidden: dict[int, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.nodes)

    def is_constant(self, name: str) -> bool:
        """Whether ``name`` is a weight or a constant computed from weights: never a boundary."""
        return name in self.weight_bytes or name in self.cones

    def weights_for(self, names: Iterable[str]) -> list[str]:
        """The initializers a stage needs to hold to have ``names`` (weights or constants)."""
        out = dict.fromkeys(n for n in names if n in self.weight_bytes)
        out.update(dict.fromkeys(self.cones.weights_for(names)))
        return list(out)

    def stage_nodes(self, start: int, end: int, extra: Iterable[str] = ()) -> list[onnx.NodeProto]:
        """Nodes ``start .. end - 1`` with, first, the cones of the constants they (and
        ``extra``) read."""
        consts = [r for node in self.nodes[start:end] for r in node.reads if r in self.cones]
        return self.cones.nodes_for([*consts, *extra]) + list(self.model.graph.node[start:end])

    def boundary(self, p: int) -> list[TensorSpec]:
        return [self.tensors[name] for name in self.live[p]]

    def boundary_bytes(self) -> list[int]:
        # Uncrossable values count 0: no cut is allowed where they are alive.
        return [
            sum(self.tensors[t].nbytes for t in names if t not in self.uncrossable)
            for names in self.live
        ]

    def cuttable(self) -> list[bool]:
        """Whether a cut before node p is allowed: no uncrossable value is alive there."""
        return [p in (0, self.n) or (p not in self.forbidden and not any(t in self.uncrossable for t in names))
                for p, names in enumerate(self.live)]

    def why_uncut(self, start: int, end: int) -> str:
        """Which values keep the cuts between nodes ``start`` and ``end`` from being made."""
        names = sorted({t for p in range(start, min(end, self.n) + 1) for t in self.live[p]
                        if t in self.uncrossable})
        blocked = [p for p in range(max(start, 1), min(end, self.n - 1) + 1) if p in self.forbidden]
        if blocked and not names:
            return f"a cut before node {blocked[0]} is not allowed: {self.forbidden[blocked[0]]}"
        if not names:
            return "no value blocks it"
        shown = "; ".join(f"{t!r} is {self.uncrossable[t]}" for t in names[:3])
        more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
        return f"{shown}{more}, and only numpy tensors of standard dtypes can cross a stage boundary"


#: Ops whose outputs are sequences or optionals, in case shape inference says nothing.
_NON_TENSOR_OPS = frozenset({"SequenceConstruct", "SequenceEmpty", "SequenceInsert",
                             "SequenceErase", "SplitToSequence", "Optional"})


def _non_tensor_kind(vi: onnx.ValueInfoProto) -> str | None:
    """'a sequence', 'an optional', ... when ``vi`` is not a plain tensor."""
    for field_name, kind in (("sequence_type", "a sequence"), ("optional_type", "an optional"),
                             ("map_type", "a map"), ("sparse_tensor_type", "a sparse tensor")):
        if vi.type.HasField(field_name):
            return kind
    return None


def _spec_from_value_info(vi: onnx.ValueInfoProto) -> TensorSpec | None:
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if tt.elem_type == 0 or not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return TensorSpec(vi.name, dtype_of(tt.elem_type), tuple(dims))


def _constant_to_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a top-level Constant node as an initializer, or None to leave it a node."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
    elif attr.name == "value_float":
        tensor = numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
    elif attr.name == "value_floats":
        tensor = numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
    elif attr.name == "value_int":
        tensor = numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
    elif attr.name == "value_ints":
        tensor = numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    else:  # sparse_value, strings: keep the node
        return None
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    tensor.name = name
    return tensor


def _fold_constants(
    graph: onnx.GraphProto, outputs: set[str], inits: dict[str, onnx.TensorProto]
) -> None:
    """Turn top-level Constant nodes into initializers (model outputs stay nodes)."""
    keep = []
    for node in graph.node:
        tensor = None
        is_constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        if is_constant and node.output[0] not in outputs:
            tensor = _constant_to_tensor(node)
        if tensor is None:
            keep.append(node)
        else:
            inits[tensor.name] = tensor
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _liveness(
    nodes: list[NodeInfo], inputs: Iterable[str], outputs: list[str]
) -> list[list[str]]:
    """live[p]: the non-weight tensors produced before node p and read at or after p."""
    n = len(nodes)
    produced_at: dict[str, int] = {name: -1 for name in inputs}
    order: list[str] = list(produced_at)
    for node in nodes:
        for name in node.writes:
            if name not in produced_at:
                produced_at[name] = node.index
                order.append(name)
    last_read: dict[str, int] = {}
    for node in nodes:
        for name in node.reads:
            if name in produced_at:
                last_read[name] = node.index
    for name in outputs:
        if name in produced_at:
            last_read[name] = n
    live: list[list[str]] = [[] for _ in range(n + 1)]
    for name in order:
        if name not in last_read:
            continue
        for p in range(produced_at[name] + 1, last_read[name] + 1):
            live[p].append(name)
    live[n] = [o for o in outputs if o in produced_at]
    return live


def _keep_dynamic(g: onnx.GraphProto, inputs: list[TensorSpec],
                  dynamic: Mapping[str, tuple[str | None, ...]]) -> list[TensorSpec]:
    """Declare the dynamic axes of the graph's inputs symbolic again (`fix_inputs` fixed them to
    the example) and name them in the inputs' specs: constant folding leaves them symbolic."""
    named = {vi.name: vi for vi in g.input}
    out = []
    for spec in inputs:
        axes = dynamic.get(spec.name)
        if axes:
            for d, dim in zip(named[spec.name].type.tensor_type.shape.dim, axes):
                if dim is not None:
                    d.dim_param = dim
            spec = dataclasses.replace(spec, dims=tuple(axes))
        out.append(spec)
    return out


def analyze(
    model: str | os.PathLike[str] | onnx.ModelProto,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    *,
    dynamic: Mapping[str, tuple[str | None, ...]] | None = None,
) -> ModelGraph:
    """Load, check and describe a model for partitioning.

    ``dynamic``: input name -> the dynamic dim of each axis (None: fixed), for a compile over
    dynamic dims (`corepipe.compiler.shaping.dynamic`). Those axes stay symbolic in the graph, so no
    shape that depends on them is folded into a constant; the tensors' shapes are those of the
    example inputs.

    Raises:
        CompileError: unreadable or invalid model, a symbolic dim without an example input,
            an example input that contradicts the model, or types that cannot be inferred.
    """
    proto, initializers, digest, weights_dir = load_checked(model)
    g = proto.graph
    if len(g.node) == 0:
        raise CompileError("the model has no nodes: there is nothing to pipeline")
    inits = set(initializers)
    inputs = fix_inputs(g, inits, example_inputs)
    if dynamic:
        inputs = _keep_dynamic(g, inputs, dynamic)
    # Drop initializers listed as inputs (IR < 4 style): they are weights, not requests.
    if any(i.name in inits for i in g.input):
        keep = [i for i in g.input if i.name not in inits]
        del g.input[:]
        g.input.extend(keep)
    output_names = list(dict.fromkeys(o.name for o in g.output))  # a name listed twice is one output
    _fold_constants(g, set(output_names), initializers)
    inferred, cones = fold_constants(proto, initializers, weights_dir, inputs, output_names)
    if len(g.node) == 0:
        raise CompileError("every output of the model is a constant (computed from its weights alone, "
                           "whatever the inputs): there is nothing to pipeline")
    inits = set(initializers)
    weight_bytes = {name: tensor_nbytes(t) for name, t in initializers.items()}

    tensors: dict[str, TensorSpec] = {t.name: t for t in inputs}
    uncrossable: dict[str, str] = {}
    if inferred is not None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.name in inits:
                continue
            kind = _non_tensor_kind(vi)
            if kind is not None:
                uncrossable[vi.name] = kind
                continue
            try:
                spec = _spec_from_value_info(vi)
            except CompileError:  # an element type numpy lacks
                uncrossable[vi.name] = "of an element type numpy lacks"
                continue
            if spec is not None:
                tensors[vi.name] = spec
                if spec.dtype not in CROSSABLE:
                    uncrossable[vi.name] = f"a {spec.dtype} tensor"
    for t in initializers.values():
        tensors[t.name] = TensorSpec(t.name, dtype_of(t.data_type), tuple(int(d) for d in t.dims))

    nodes = []
    for i, node in enumerate(g.node):
        reads = []
        for name in list(node.input) + sorted(subgraph_reads(node)):
            if name and name not in reads:
                reads.append(name)
        writes = tuple(o for o in node.output if o)
        weights = tuple(dict.fromkeys([r for r in reads if r in inits] + cones.weights_for(reads)))
        label = node.name or f"{node.op_type}_{i}"
        nodes.append(NodeInfo(i, label, node.op_type, tuple(reads), writes, weights))
        if node.op_type in _NON_TENSOR_OPS and node.domain in ("", "ai.onnx"):
            for name in writes:
                uncrossable.setdefault(name, "a sequence or optional")

    input_names = [t.name for t in inputs]
    const_outputs = [o for o in output_names if o in inits or o in cones]
    live = _liveness(nodes, input_names, [o for o in output_names if o not in const_outputs])
    # Every tensor inference left untyped, not just those alive across a cut: stage graphs
    # declare a type for each of their values.
    needed = sorted({name for node in nodes for name in node.writes
                     if name not in tensors and name not in uncrossable})
    if needed:
        cut_ok = [p in (0, len(nodes)) or not any(t in uncrossable for t in names)
                  for p, names in enumerate(live)]
        probed, odd = probe_shapes(proto, nodes, initializers, weights_dir, needed, inputs,
                                   example_inputs, cut_ok, cones)
        tensors.update(probed)
        uncrossable.update(odd)
    bad_out = [o for o in output_names if o in uncrossable]
    if bad_out:
        raise CompileError(
            f"model output {bad_out[0]!r} is {uncrossable[bad_out[0]]}: corepipe returns numpy "
            f"tensors of {sorted(CROSSABLE)}; convert it inside the model (e.g. Cast, ConcatFromSequence)"
        )
    outputs = [tensors[o] for o in output_names]
    return ModelGraph(
        model=proto,
        initializers=initializers,
        nodes=nodes,
        weight_bytes=weight_bytes,
        tensors=tensors,
        inputs=inputs,
        outputs=outputs,
        const_outputs=const_outputs,
        source_sha256=digest,
        live=live,
        uncrossable=uncrossable,
        weights_dir=weights_dir,
        cones=cones,
    )
