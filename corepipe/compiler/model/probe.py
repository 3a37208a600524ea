"""The shape probe: run the model on the example inputs to learn the types and shapes of the tensors
that ONNX shape inference could not tell (outputs of ops it has no schema for, data-dependent
shapes), a few nodes at a time.

Running the whole model in one onnxruntime session would hold its weights several times over (the
serialized model, the parsed one, the session's tensors): 5x the weights for BERT-base. Instead
the nodes are run in consecutive *chunks* of at most `CHUNK_BYTES` of weights (or one node, if a
node alone holds more), each in its own small session, with the values later chunks read carried
from chunk to chunk. Weights enter a chunk as inputs: external ones mapped from their file, never
copied, and dropped with the session. A chunk boundary never falls where a value known not to be
a tensor is alive. If a chunk cannot run this way (a value that cannot be fed back, an op that
wants constant weights), the probe runs the whole model once, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper

from ...artifact.plan import TensorSpec
from ...artifact.protoio import tensor_nbytes
from ...artifact.weights import materialize, weight_array
from ...errors import CompileError
from .constants import Cones
from .shapes import CROSSABLE

__all__ = ["CHUNK_BYTES", "probe_shapes"]

#: Weights one chunk may hold (more only when a single node holds more).
CHUNK_BYTES = 64 * 2**20
#: Initializers up to this size stay initializers in a chunk (shape constants among them).
_SMALL = 4096


class _Node(Protocol):
    @property
    def reads(self) -> tuple[str, ...]: ...
    @property
    def writes(self) -> tuple[str, ...]: ...
    @property
    def weights(self) -> tuple[str, ...]: ...


class _CannotChunk(Exception):
    """A chunk cannot run on its own; probe the whole model instead."""


def _chunks(nodes: Sequence[_Node], inits: Mapping[str, onnx.TensorProto], cut_ok: Sequence[bool],
            budget: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` runs of nodes, each holding at most ``budget`` of weights where
    cutting is allowed."""
    out: list[tuple[int, int]] = []
    start, held, seen = 0, 0, set[str]()
    for i, node in enumerate(nodes):
        new = [w for w in node.weights if w not in seen and tensor_nbytes(inits[w]) > _SMALL]
        extra = sum(tensor_nbytes(inits[w]) for w in new)
        if i > start and held + extra > budget and cut_ok[i]:
            out.append((start, i))
            start, held, seen = i, 0, set[str]()
            new = [w for w in node.weights if tensor_nbytes(inits[w]) > _SMALL]
            extra = sum(tensor_nbytes(inits[w]) for w in new)
        held += extra
        seen.update(new)
    out.append((start, len(nodes)))
    return out


def _value_info(name: str, value: Any) -> onnx.ValueInfoProto:
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
    if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        elem = helper.np_dtype_to_tensor_dtype(value[0].dtype)
        return helper.make_tensor_sequence_value_info(name, elem, None)
    raise _CannotChunk(f"{name!r} is {type(value).__name__}, which cannot be fed to the next chunk")


def _run(model: onnx.ModelProto, feeds: dict[str, Any], names: list[str]) -> list[Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(sess.run(names, feeds))


def _chunk_model(proto: onnx.ModelProto, nodes: list[onnx.NodeProto], ins: dict[str, Any],
                 big: dict[str, onnx.TensorProto], small: list[onnx.TensorProto],
                 outs: list[str]) -> onnx.ModelProto:
    g = onnx.GraphProto(name="probe")
    g.node.extend(nodes)
    g.input.extend(_value_info(name, value) for name, value in ins.items())
    g.input.extend(helper.make_tensor_value_info(w, t.data_type, list(t.dims)) for w, t in big.items())
    g.initializer.extend(small)
    g.output.extend(onnx.ValueInfoProto(name=name) for name in outs)
    model = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


def _probe_chunked(proto: onnx.ModelProto, nodes: Sequence[_Node], inits: Mapping[str, onnx.TensorProto],
                   weights_dir: str | None, names: list[str], values: dict[str, Any],
                   bounds: list[tuple[int, int]], cones: Cones) -> dict[str, Any]:
    wanted = set(names)
    last_read: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.reads:
            last_read[name] = i
    found: dict[str, Any] = {}
    for start, end in bounds:
        made: set[str] = set()
        ins: dict[str, Any] = {}
        weights: list[str] = []
        for node in nodes[start:end]:
            weights.extend(w for w in node.weights if w not in weights)  # a constant's weights too
            for name in node.reads:
                if name not in inits and name not in cones and name not in made and name in values:
                    ins[name] = values[name]
            made.update(node.writes)
        consts = [r for node in nodes[start:end] for r in node.reads if r in cones]
        outs = [w for node in nodes[start:end] for w in node.writes
                if w in wanted or last_read.get(w, -1) >= end]
        big = {w: inits[w] for w in weights if tensor_nbytes(inits[w]) > _SMALL}
        small = [materialize(inits[w], weights_dir) for w in weights if w not in big]
        model = _chunk_model(proto, cones.nodes_for(consts) + list(proto.graph.node[start:end]), ins, big,
                             small, outs)
        feeds = dict(ins)
        feeds.update((w, weight_array(t, weights_dir)) for w, t in big.items())
        try:
            got = _run(model, feeds, outs) if outs else []
        except Exception as exc:
            raise _CannotChunk(str(exc)) from None
        del feeds, model
        for name, value in zip(outs, got):
            if name in wanted:
                found[name] = value
            if last_read.get(name, -1) >= end:
                values[name] = value
        for name in [n for n in values if last_read.get(n, -1) < end]:
            del values[name]  # read by no later node: free it
    return found


def _probe_whole(proto: onnx.ModelProto, inits: Mapping[str, onnx.TensorProto], weights_dir: str | None,
                 names: list[str], feeds: dict[str, Any], cones: Cones) -> dict[str, Any]:
    from ...artifact.protoio import structure

    probe = structure(proto)
    nodes = cones.nodes + list(probe.graph.node)  # constants read only weights: first is in order
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    for t in inits.values():
        probe.graph.initializer.append(materialize(t, weights_dir))
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return dict(zip(names, _run(probe, feeds, names)))


def probe_shapes(
    proto: onnx.ModelProto, nodes: Sequence[_Node], inits: Mapping[str, onnx.TensorProto],
    weights_dir: str | None, names: list[str], inputs: list[TensorSpec],
    example_inputs: Mapping[str, np.ndarray] | None, cut_ok: Sequence[bool], cones: Cones | None = None,
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Run the model (chunk by chunk) to read the types of ``names``, which inference missed.
    ``cones``: the constants taken out of ``proto``'s nodes, which chunks reading them compute.
    Returns their specs, and the values that turned out not to be plain tensors.

    Raises:
        CompileError: the model does not run on the example inputs.
    """
    cones = cones if cones is not None else Cones()
    feeds: dict[str, Any] = {}
    for spec in inputs:
        if example_inputs and spec.name in example_inputs:
            feeds[spec.name] = np.asarray(example_inputs[spec.name])
        else:
            feeds[spec.name] = np.zeros(spec.shape, dtype=spec.dtype)
    largest = max((tensor_nbytes(inits[w]) for node in nodes for w in node.weights), default=0)
    bounds = _chunks(nodes, inits, cut_ok, max(CHUNK_BYTES, largest))
    try:
        try:
            found = _probe_chunked(proto, nodes, inits, weights_dir, names, dict(feeds), bounds, cones)
        except _CannotChunk:
            found = _probe_whole(proto, inits, weights_dir, names, feeds, cones)
    except Exception as exc:
        raise CompileError(
            f"could not infer static shapes for {names[:5]} (and running the model once on the "
            f"example inputs failed: {exc}); pass example_inputs for every model input"
        ) from None
    specs: dict[str, TensorSpec] = {}
    odd: dict[str, str] = {}
    for n in names:
        v = found.get(n)
        if not isinstance(v, np.ndarray):
            odd[n] = "a sequence or optional"
            continue
        # Inference could not tell this shape without the data: treat it as data-dependent.
        specs[n] = TensorSpec(n, str(v.dtype), tuple(v.shape), dynamic=True)
        if str(v.dtype) not in CROSSABLE:
            odd[n] = f"a {v.dtype} tensor"
    return specs, odd
