"""Constants: the values a model computes from its weights and its static shapes alone.

A value is *constant* when it is an initializer, the output of a Shape or Size of a tensor whose
static shape is known, or the output of a deterministic standard op without subgraphs whose
inputs are all constant. Exporters make many: the legacy torch exporter emits an Identity over
one shared initializer for every weight equal to another (tied or deduplicated weights), and
Shape -> Gather -> Unsqueeze -> Concat -> Reshape arithmetic that the static input shapes decide.

A constant is never a boundary tensor and never a node the solver cuts between (it is not in
`corepipe.compiler.model.graph.ModelGraph.nodes`):

- a small one (every output at most `FOLD_BYTES`: shape arithmetic, a bias behind an Identity)
  is *folded*: computed here, once, and kept as an initializer, so ONNX shape inference and
  every engine see static shapes downstream of it;
- a larger one (a transposed or dequantised weight, an Identity over a big weight) stays a node
  of its *cone*: each stage that reads it gets a copy of the cone's nodes and holds the weights
  they read, counted in that stage's resident bytes, so no big weight is ever materialised
  twice (an Identity stays an alias; engines fold the cone when they load the stage).

Folding repeats until nothing more folds, since a folded Reshape target can make the next Shape
static. Each round evaluates the small constants in one onnxruntime session; weights larger than
a shape constant enter it mapped from their files (`corepipe.artifact.weights.weight_array`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...artifact.plan import TensorSpec
from ...artifact.protoio import skeleton, tensor_nbytes
from ...artifact.weights import is_external, materialize, weight_array

__all__ = ["FOLD_BYTES", "Cones", "fold_constants", "infer", "reads_of", "subgraph_reads"]

#: A constant node whose outputs are all at most this size is folded into initializers (the
#: size up to which `corepipe.artifact.protoio.skeleton` shows shape inference the values).
FOLD_BYTES = 4096
#: Rounds of fold-then-infer at most (each round folds at least one node, or the loop ends).
MAX_ROUNDS = 64
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "Dropout"})
_NOT_TENSOR = frozenset({"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
                         "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
                         "Optional", "OptionalGetElement", "OptionalHasElement"})


@dataclass
class Cones:
    """The constant nodes kept as nodes (not folded), in the model's order, and what each needs.

    ``leaves[v]``: the initializers that computing constant ``v`` reads (its cone's weights).
    """

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    producer: dict[str, int] = field(default_factory=dict)  # value -> index into nodes
    leaves: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.producer

    def __len__(self) -> int:
        return len(self.producer)

    def nodes_for(self, names: Iterable[str]) -> list[onnx.NodeProto]:
        """The cone nodes that compute ``names`` (those that are constants), in model order."""
        todo = [n for n in names if n in self.producer]
        need: set[int] = set()
        while todo:
            i = self.producer[todo.pop()]
            if i not in need:
                need.add(i)
                todo.extend(x for x in self.nodes[i].input if x in self.producer)
        return [self.nodes[i] for i in sorted(need)]

    def weights_for(self, names: Iterable[str]) -> list[str]:
        """The initializers behind the constants among ``names``, without repeats."""
        out: dict[str, None] = {}
        for name in names:
            out.update(dict.fromkeys(self.leaves.get(name, ())))
        return list(out)


def infer(proto: onnx.ModelProto, inits: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto | None:
    """ONNX shape inference with data propagation on ``proto`` (weights as typed inputs), or
    None where it fails (it is best effort; the probe fills the gaps)."""
    try:
        return onnx.shape_inference.infer_shapes(
            skeleton(proto, inits), check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return None


Dims = tuple[int | None, ...]  # None: a dim not known statically


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, Dims] | None:
    """(element type, dims) of a tensor value info, an unknown dim as None; None without a shape."""
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if tt.elem_type == 0 or not tt.HasField("shape"):
        return None
    return tt.elem_type, tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)


def _known(inferred: onnx.ModelProto | None, inputs: Sequence[TensorSpec],
           inits: Mapping[str, onnx.TensorProto]) -> dict[str, tuple[int, Dims]]:
    """name -> (element type, dims) for every tensor whose rank is known."""
    out: dict[str, tuple[int, Dims]] = {}
    if inferred is not None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            found = _dims(vi)
            if found is not None:
                out[vi.name] = found
    for spec in inputs:  # an axis carrying a dynamic dim is not known statically
        dims = tuple(None if spec.dims and spec.dims[a] else d for a, d in enumerate(spec.shape))
        out[spec.name] = (helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), dims)
    for t in inits.values():
        out[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
    return out


def _standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _computable(node: onnx.NodeProto) -> bool:
    """Whether ``node`` computes the same outputs from the same inputs, with no subgraph."""
    if not _standard(node) or node.op_type in _RANDOM or node.op_type in _NOT_TENSOR:
        return False
    return not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _shape_read(node: onnx.NodeProto, known: Mapping[str, tuple[int, Dims]]) -> np.ndarray | None:
    """The output of a Shape or Size node when the dims it reads are static, else None (a
    Shape-15 slice of the static dims of a tensor with other, dynamic dims is constant too)."""
    if not _standard(node) or node.op_type not in ("Shape", "Size") or node.input[0] not in known:
        return None
    dims = known[node.input[0]][1]
    if node.op_type == "Shape":
        attrs = {a.name: a.i for a in node.attribute}
        dims = dims[attrs.get("start", 0):attrs.get("end", len(dims))]  # clamped like a Python slice
    static = [d for d in dims if d is not None]
    if len(static) != len(dims):
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(static, dtype=np.int64)), dtype=np.int64)
    return np.array(static, dtype=np.int64)


def _nbytes(name: str, known: Mapping[str, tuple[int, Dims]]) -> int | None:
    if name not in known:
        return None
    elem, dims = known[name]
    static = [d for d in dims if d is not None]
    if len(static) != len(dims):
        return None
    try:
        size = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize
    except Exception:
        return None
    return int(np.prod(static, dtype=np.int64)) * size


def _evaluate(proto: onnx.ModelProto, nodes: list[onnx.NodeProto], names: list[str],
              inits: Mapping[str, onnx.TensorProto], weights_dir: str | None) -> dict[str, np.ndarray]:
    """Run ``nodes`` (constants only) in one onnxruntime session; the values of ``names``.
    Empty where the session fails: those constants then stay nodes."""
    import onnxruntime as ort

    made = {o for n in nodes for o in n.output}
    read = [x for n in nodes for x in n.input if x and x not in made]
    leaves = [inits[x] for x in dict.fromkeys(read) if x in inits]
    big = [t for t in leaves if is_external(t) or tensor_nbytes(t) > FOLD_BYTES]
    g = helper.make_graph(
        nodes, "constants",
        [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big],
        [onnx.ValueInfoProto(name=n) for n in names],
        [materialize(t, weights_dir) for t in leaves if t not in big])
    model = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        values = sess.run(names, {t.name: weight_array(t, weights_dir) for t in big})
    except Exception:
        return {}
    return {n: np.asarray(v) for n, v in zip(names, values) if isinstance(v, np.ndarray)}


def _ancestors(nodes: Sequence[onnx.NodeProto], chosen: Iterable[int], producer: Mapping[str, int]) -> list[int]:
    """``chosen`` and every node they depend on through ``producer``, in order."""
    need: set[int] = set()
    todo = list(chosen)
    while todo:
        i = todo.pop()
        if i not in need:
            need.add(i)
            todo.extend(producer[x] for x in nodes[i].input if x in producer)
    return sorted(need)


def _fold_round(proto: onnx.ModelProto, inits: dict[str, onnx.TensorProto], weights_dir: str | None,
                known: Mapping[str, tuple[int, Dims]], keep: set[str]) -> list[int] | None:
    """Classify the nodes of ``proto`` once and fold its small constants: their values go into
    ``inits``, their nodes out of the graph. Returns None when something was folded (classify
    again, after inference), else the indices of the constant nodes, which stay nodes."""
    g = proto.graph
    const = set(inits)
    values: dict[str, np.ndarray] = {}
    cone: dict[str, int] = {}  # value -> node index, for constants computed by a node
    constant_nodes: list[int] = []
    for i, node in enumerate(g.node):
        shape = _shape_read(node, known)
        if shape is not None:
            values[node.output[0]] = shape
            const.add(node.output[0])
        elif _computable(node) and all(x in const for x in node.input if x):
            constant_nodes.append(i)
            for o in node.output:
                if o:
                    const.add(o)
                    cone[o] = i

    def small(i: int) -> bool:
        sizes = [_nbytes(o, known) for o in g.node[i].output if o]
        return all(s is None or s <= FOLD_BYTES for s in sizes)

    candidates = [i for i in constant_nodes if small(i)]
    if candidates:
        for name, v in values.items():  # shape reads feed the session as initializers
            inits[name] = numpy_helper.from_array(v, name)
        order = _ancestors(g.node, candidates, cone)
        wanted = [o for i in candidates for o in g.node[i].output if o]
        got = _evaluate(proto, [g.node[i] for i in order], wanted, inits, weights_dir)
        for i in candidates:
            outs = [o for o in g.node[i].output if o]
            if all(o in got and got[o].nbytes <= FOLD_BYTES for o in outs):
                values.update((o, got[o]) for o in outs)
    folded = {i for i, node in enumerate(g.node) if node.output and all(o in values for o in node.output if o)}
    if not folded:
        return constant_nodes
    remaining = [node for i, node in enumerate(g.node) if i not in folded]
    read = reads_of(remaining) | keep
    for name, v in values.items():
        if name in read:
            inits[name] = numpy_helper.from_array(v, name)
        else:
            inits.pop(name, None)
    del g.node[:]
    g.node.extend(remaining)
    return None


def fold_constants(
    proto: onnx.ModelProto, inits: dict[str, onnx.TensorProto], weights_dir: str | None,
    inputs: Sequence[TensorSpec], outputs: Sequence[str],
) -> tuple[onnx.ModelProto | None, Cones]:
    """Fold ``proto``'s small constants into ``inits`` (in place), take its other constant nodes
    out of ``proto.graph.node`` into `Cones`, and drop initializers nothing reads any more.
    Returns the shape inference of the final graph (cone nodes included) and the cones."""
    keep = set(outputs)
    inferred = infer(proto, inits)
    kept: list[int] | None = None
    for _ in range(MAX_ROUNDS):
        kept = _fold_round(proto, inits, weights_dir, _known(inferred, inputs, inits), keep)
        if kept is not None:  # nothing folded: the classification is final
            break
        inferred = infer(proto, inits)
    g = proto.graph
    cones = Cones()
    rest: list[onnx.NodeProto] = []
    constant = set(kept or ())  # still folding after MAX_ROUNDS: no cones, every node a node
    for i, node in enumerate(g.node):
        if i not in constant:
            rest.append(node)
            continue
        leaves: dict[str, None] = {}
        for x in node.input:
            if x in inits:
                leaves[x] = None
            elif x in cones.leaves:
                leaves.update(dict.fromkeys(cones.leaves[x]))
        for o in node.output:
            if o:
                cones.producer[o] = len(cones.nodes)
                cones.leaves[o] = tuple(leaves)
        cones.nodes.append(node)
    if cones.nodes:
        del g.node[:]
        g.node.extend(rest)
    read = reads_of(list(g.node) + cones.nodes) | keep
    for name in [n for n in inits if n not in read]:
        del inits[name]
    return inferred, cones


def reads_of(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every name ``nodes`` read, their subgraphs' outer-scope reads included."""
    return {x for node in nodes for x in list(node.input) + sorted(subgraph_reads(node)) if x}


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names that ``node``'s subgraphs (If/Loop/Scan bodies) read, recursively."""
    reads: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs = list(attr.graphs)
        else:
            continue
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            defined |= {t.values.name for t in g.sparse_initializer}
            for inner in g.node:
                for name in list(inner.input) + sorted(subgraph_reads(inner)):
                    if name and name not in defined:
                        reads.add(name)
                defined.update(o for o in inner.output if o)
    return reads
