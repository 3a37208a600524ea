"""Dtype rewrites the front-ends apply to a converted graph: run a float16 graph in float32, and
let the graph's inputs and outputs keep the dtypes the user's framework and examples use.

Why: this CPU (and onnxruntime's x86 CPU kernels) has no float16 math, so a float16 graph is
run in float32: every float16 weight, constant, cast target and declared type becomes float32
(exact: float32 holds every float16 value). The graph's inputs then take the dtype of the
user's example (a float16 example gives a float16 input, cast to float32 by the graph's first
node) and its outputs the dtype the source model returns (a float16 model still answers in
float16), so requests written for the source model work against the compiled pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["has_float16", "float16_to_float32", "set_io_dtypes", "value_names", "rename_uses"]

_F16, _F32 = TensorProto.FLOAT16, TensorProto.FLOAT
#: Ops whose ``dtype`` attribute names the type of the tensor they create.
_DTYPE_ATTR_OPS = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
    "Multinomial", "Bernoulli",
}


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) inside it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.output
    yield from graph.value_info


def has_float16(model: onnx.ModelProto) -> bool:
    """Whether any weight, constant, cast or declared tensor of ``model`` is float16."""
    for g in _graphs(model.graph):
        if any(t.data_type == _F16 for t in g.initializer):
            return True
        if any(vi.type.tensor_type.elem_type == _F16 for vi in _value_infos(g)):
            return True
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _F16:
                    return True
                if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == _F16:
                    return True
    return False


def _upcast_tensor(t: TensorProto) -> None:
    if t.data_type != _F16:
        return
    if t.data_location == TensorProto.EXTERNAL:
        raise ValueError(
            f"float16 tensor {t.name!r} is stored externally: load the model with its external "
            "data before converting it to float32"
        )
    arr = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def float16_to_float32(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place so that it computes in float32 wherever it computed in float16.

    Weights, Constant values and other tensor attributes, ``Cast(to=float16)`` and the ``dtype``
    of ops that create tensors, and every declared type (inputs, outputs, value_info), in the
    main graph and its subgraphs. The graph's inputs and outputs become float32 too; restore
    the dtypes callers use with :func:`set_io_dtypes`. Returns the number of items rewritten.
    """
    changed = 0
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_type == _F16:
                _upcast_tensor(t)
                changed += 1
        for vi in _value_infos(g):
            if vi.type.tensor_type.elem_type == _F16:
                vi.type.tensor_type.elem_type = _F32
                changed += 1
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _F16:
                    _upcast_tensor(attr.t)
                    changed += 1
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        if t.data_type == _F16:
                            _upcast_tensor(t)
                            changed += 1
                elif attr.type == onnx.AttributeProto.INT and attr.i == _F16 and (
                    (attr.name == "to" and node.op_type == "Cast")
                    or (attr.name == "dtype" and node.op_type in _DTYPE_ATTR_OPS)
                ):
                    attr.i = _F32
                    changed += 1
    return changed


def _fresh(taken: set[str], base: str) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def value_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor, value and node name used anywhere in ``model`` (subgraphs included)."""
    out: set[str] = set()
    for g in _graphs(model.graph):
        out.update(t.name for t in g.initializer)
        out.update(vi.name for vi in _value_infos(g))
        for node in g.node:
            out.update(node.input)
            out.update(node.output)
            out.add(node.name)
    return out


def rename_uses(graph: onnx.GraphProto, old: str, new: str, *, outputs_too: bool) -> None:
    """Point every node input (subgraphs included: ONNX forbids shadowing) from ``old`` to ``new``;
    with ``outputs_too``, also the node output and value_info that define ``old``."""
    for g in _graphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            if outputs_too:
                for i, name in enumerate(node.output):
                    if name == old:
                        node.output[i] = new
        if outputs_too:
            for vi in g.value_info:
                if vi.name == old:
                    vi.name = new


def set_io_dtypes(
    model: onnx.ModelProto,
    inputs: Mapping[str, int] | None = None,
    outputs: Mapping[str, int] | None = None,
) -> list[str]:
    """Give graph inputs and outputs new element types (``TensorProto`` codes), adding a Cast
    after each retyped input and before each retyped output; names stay the same.

    Returns a line per change (``"input 'x': float16 -> float32"``) for logs and docs.
    """
    g = model.graph
    taken = value_names(model)
    notes = []
    for vi in g.input:
        want = (inputs or {}).get(vi.name)
        have = vi.type.tensor_type.elem_type
        if want is None or want == have:
            continue
        inner = _fresh(taken, f"{vi.name}__{_dtype_name(have)}")
        rename_uses(g, vi.name, inner, outputs_too=False)
        g.node.insert(0, helper.make_node("Cast", [vi.name], [inner], to=have, name=_fresh(taken, f"cast_{vi.name}")))
        vi.type.tensor_type.elem_type = want
        notes.append(f"input {vi.name!r}: {_dtype_name(want)} -> {_dtype_name(have)}")
    produced = {o for node in g.node for o in node.output}
    for vi in g.output:
        want = (outputs or {}).get(vi.name)
        have = vi.type.tensor_type.elem_type
        if want is None or want == have or vi.name not in produced:
            continue
        inner = _fresh(taken, f"{vi.name}__{_dtype_name(have)}")
        rename_uses(g, vi.name, inner, outputs_too=True)
        g.node.append(helper.make_node("Cast", [inner], [vi.name], to=want, name=_fresh(taken, f"cast_{vi.name}")))
        vi.type.tensor_type.elem_type = want
        notes.append(f"output {vi.name!r}: {_dtype_name(have)} -> {_dtype_name(want)}")
    return notes


def _dtype_name(code: int) -> str:
    return str(helper.tensor_dtype_to_np_dtype(code))
