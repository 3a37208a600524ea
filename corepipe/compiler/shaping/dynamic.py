"""Dynamic dims in the compiler: a model's symbolic dims, requests at the bounds of their
ranges, and which axis of every tensor carries which dim.

`compile(..., dynamic_dims={"sequence": (1, 128)})` keeps the named ONNX ``dim_param`` dims
free within their ranges. The compiler then analyses the graph at the largest shapes (which
size the hand-off slots and resident memory) and at the smallest, and names each varying axis
after the dim it carries. The names come from symbolic shape inference (onnxruntime's, over
the graph with the dynamic dims left symbolic) and each is confirmed by the sizes measured at
both bounds; an axis that varies without such a derivation stays unnamed, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from ...artifact.dims import ShapeProfile, check_dims, dim_parts
from ...artifact.plan import TensorSpec
from ...artifact.protoio import load_checked, skeleton, structure
from ...artifact.target import Target
from ...errors import CompileError
from ..cut.cost import estimate_node_seconds
from ..model.graph import ModelGraph, analyze

__all__ = ["symbolic_dims", "describe_symbolic_dims", "DimFeeds", "prepare_dims", "resize", "annotate",
           "derive_axes", "batch_dim", "DynamicGraph", "analyze_dynamic", "main_dim"]


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Each symbolic dim (``dim_param``) of the model's inputs and outputs -> where it appears
    (``"input 'input_ids' axis 1"``), in graph order."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    where: dict[str, list[str]] = {}
    for kind, values in (("input", [i for i in g.input if i.name not in inits]), ("output", list(g.output))):
        for vi in values:
            if not vi.type.HasField("tensor_type"):
                continue
            for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                if d.HasField("dim_param") and d.dim_param:
                    where.setdefault(d.dim_param, []).append(f"{kind} {vi.name!r} axis {axis}")
    return where


def describe_symbolic_dims(model: onnx.ModelProto) -> str:
    """The model's symbolic dims in words, for errors and `corepipe inspect`."""
    where = symbolic_dims(model)
    if not where:
        return "it has none (every input dim is fixed)"
    return "; ".join(f"{name!r} ({', '.join(places)})" for name, places in where.items())


def resize(value: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``value`` cut or extended to ``size`` along ``axis``, repeating its values in turn (a
    request at another length that keeps the example's values, token ids within the vocab)."""
    if value.shape[axis] == size:
        return value
    return np.ascontiguousarray(np.take(value, np.arange(size) % value.shape[axis], axis=axis))


@dataclass(frozen=True)
class DimFeeds:
    """The dynamic dims of a compile and requests at their bounds.

    Attributes:
        dims: dim name -> (min, max).
        axes: model input -> the dynamic dim of each axis (None: fixed), for inputs that have one.
        typical: the dims' typical values (the example's, or the shape profile's median).
        examples: the example requests at the typical values.
    """

    dims: dict[str, tuple[int, int]]
    axes: dict[str, tuple[str | None, ...]]
    typical: dict[str, int]
    examples: dict[str, np.ndarray]

    def at(self, values: Mapping[str, int]) -> dict[str, np.ndarray]:
        """The example request resized to the dims ``values`` (the others typical; a sum dim
        always its parts' sum, so related dims move together)."""
        full = {d: int(values.get(d, self.typical[d])) for d in self.dims}
        for d in self.sums():
            full[d] = sum(full[p] for p in dim_parts(d))
        out = dict(self.examples)
        for name, axes in self.axes.items():
            value = out[name]
            for axis, dim in enumerate(axes):
                if dim is not None:
                    value = resize(value, axis, full[dim])
            out[name] = value
        return out

    def sums(self) -> list[str]:
        """The dims that are sums of others (``"past + sequence"``)."""
        return [d for d in self.dims if len(dim_parts(d)) > 1]

    @property
    def low(self) -> dict[str, np.ndarray]:
        return self.at({k: lo for k, (lo, _) in self.dims.items()})

    @property
    def high(self) -> dict[str, np.ndarray]:
        return self.at({k: hi for k, (_, hi) in self.dims.items()})


def prepare_dims(
    model: onnx.ModelProto, dynamic_dims: Mapping[str, Any], examples: Mapping[str, np.ndarray] | None,
    profile: ShapeProfile | None,
) -> DimFeeds:
    """Check ``dynamic_dims`` against the model and make the example requests.

    Inputs carrying a dynamic dim without an example get one (seeded normal floats, zeros for
    other dtypes) at the typical values: the profile's median, else the dim's max.

    Raises:
        CompileError: a malformed range, a name that is not a symbolic dim of the model's
            inputs (listing those it has and where), or an example outside a range or
            disagreeing with another on a dim.
    """
    try:
        dims = check_dims(dynamic_dims)
    except ValueError as exc:
        raise CompileError(f"{exc}; e.g. dynamic_dims={{'sequence': (1, 128)}}") from None
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    found = {name for name, places in symbolic_dims(model).items() if any(p.startswith("input") for p in places)}
    unknown = [name for name in dims if name not in found]
    if unknown:
        raise CompileError(
            f"dynamic_dims names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not a symbolic dim of the "
            f"model's inputs; its symbolic dims: {describe_symbolic_dims(model)}. Name dims as the "
            "model does (ONNX dim_param), or re-export it with them (torch.onnx.export(dynamic_axes=...))")
    dims = _with_sums(dims, found)
    axes: dict[str, tuple[str | None, ...]] = {}
    for vi in inputs:
        shape = vi.type.tensor_type.shape.dim
        named = tuple(d.dim_param if d.HasField("dim_param") and d.dim_param in dims else None for d in shape)
        if any(named):
            axes[vi.name] = named
    if profile is not None:
        bad = [n for n in profile.names if n not in dims]
        if bad:
            raise CompileError(f"shape_profile names {bad}, which are not in dynamic_dims {sorted(dims)}")
    typical = _typical(dims, axes, examples or {}, profile)
    feeds = dict(examples or {})
    rng = np.random.default_rng(0)
    for vi in inputs:
        if vi.name in axes and vi.name not in feeds:
            from ..model.shapes import dtype_of

            shape = [typical[a] if a is not None else (d.dim_value if d.HasField("dim_value") else 1)
                     for a, d in zip(axes[vi.name], vi.type.tensor_type.shape.dim)]
            dtype = dtype_of(vi.type.tensor_type.elem_type)
            feeds[vi.name] = (rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f"
                              else np.zeros(shape, dtype))
    out = DimFeeds(dims, axes, typical, {k: np.asarray(v) for k, v in feeds.items()})
    return replace(out, examples=out.at(typical))


def _with_sums(dims: dict[str, tuple[int, int]], found: set[str]) -> dict[str, tuple[int, int]]:
    """``dims`` with each of the model's sum dims (``"past + sequence"``) whose parts are given:
    its range is theirs added up (total = past + sequence, not a dim of its own)."""
    out = dict(dims)
    for name in sorted(found):
        parts = dim_parts(name)
        if len(parts) < 2:
            continue
        missing = [p for p in parts if p not in dims]
        if missing:
            if name in dims:
                raise CompileError(f"dynamic dim {name!r} is the sum of {list(parts)}: give their ranges instead "
                                   f"(dynamic_dims={{{', '.join(repr(p) + ': (lo, hi)' for p in parts)}}})")
            continue
        rng = (sum(dims[p][0] for p in parts), sum(dims[p][1] for p in parts))
        if name in dims and tuple(dims[name]) != rng:
            raise CompileError(f"dynamic dim {name!r} is the sum of {list(parts)}, so its range is {rng}, not "
                               f"{tuple(dims[name])}; leave it out of dynamic_dims (it follows its parts)")
        out[name] = rng
    return out


def _typical(dims: dict[str, tuple[int, int]], axes: dict[str, tuple[str | None, ...]],
             examples: Mapping[str, Any], profile: ShapeProfile | None) -> dict[str, int]:
    """Each dim's typical value: the profile's median, else the examples' (which must agree and
    lie in range), else its max."""
    seen: dict[str, tuple[str, int]] = {}
    for name, named in axes.items():
        if name not in examples:
            continue
        shape = np.shape(examples[name])
        for axis, dim in enumerate(named):
            if dim is None or axis >= len(shape):
                continue
            size = int(shape[axis])
            lo, hi = dims[dim]
            if not lo <= size <= hi:
                raise CompileError(
                    f"example input {name!r} has {dim}={size} (axis {axis}), outside dynamic_dims[{dim!r}] "
                    f"= ({lo}, {hi}); give an example within the range")
            if dim in seen and seen[dim][1] != size:
                raise CompileError(
                    f"example inputs disagree on dim {dim!r}: {seen[dim][0]!r} has {seen[dim][1]}, {name!r} has {size}")
            seen.setdefault(dim, (name, size))
    typical = {dim: seen[dim][1] if dim in seen else hi for dim, (_, hi) in dims.items()}
    if profile is not None:
        typical.update(profile.typical())
    for dim in dims:  # a sum follows its parts
        parts = dim_parts(dim)
        if len(parts) > 1:
            typical[dim] = sum(typical[p] for p in parts)
    return typical


# -- naming the axes -------------------------------------------------------------------------------
def derive_axes(model: onnx.ModelProto, initializers: Mapping[str, onnx.TensorProto], feeds: DimFeeds,
                fixed: Mapping[str, tuple[int, ...]], constants: Sequence[onnx.NodeProto] = ()
                ) -> dict[str, tuple[str | None, ...]]:
    """Per tensor, the dynamic dim each axis carries according to symbolic shape inference (None
    where it says another symbol, an expression or nothing). ``fixed``: every input's shape at
    the typical values (its other dims stay fixed); ``constants``: the nodes that compute the
    constants the graph's nodes read (`corepipe.compiler.model.constants.Cones`). Empty when inference
    cannot run."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # sympy missing: nothing is named, every varying axis stays unnamed
        return {}
    m = structure(model)
    if constants:  # they read weights only: ahead of every node, the order stays topological
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend([*constants, *nodes])
    for vi in m.graph.input:
        if vi.name not in fixed:
            continue
        named = feeds.axes.get(vi.name, ())
        del vi.type.tensor_type.shape.dim[:]
        for axis, size in enumerate(fixed[vi.name]):
            d = vi.type.tensor_type.shape.dim.add()
            if axis < len(named) and named[axis] is not None:
                d.dim_param = named[axis]  # type: ignore[assignment]
            else:
                d.dim_value = size
    del m.graph.value_info[:]
    for vi in m.graph.output:  # let inference say what the outputs are
        vi.type.tensor_type.ClearField("shape")
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level, log.level = log.level, logging.CRITICAL
    try:
        inferred = SymbolicShapeInference.infer_shapes(skeleton(m, initializers), auto_merge=True,
                                                       guess_output_rank=False, verbose=0)
    except Exception:  # best effort: an op it has no rule for leaves every axis unnamed
        return {}
    finally:
        log.setLevel(level)
    out: dict[str, tuple[str | None, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = tuple(d.dim_param if d.HasField("dim_param") and d.dim_param in feeds.dims else None
                                 for d in vi.type.tensor_type.shape.dim)
    return out


def annotate(high: dict[str, TensorSpec], low: Mapping[str, TensorSpec], named: Mapping[str, tuple[str | None, ...]],
             feeds: DimFeeds) -> dict[str, TensorSpec]:
    """``high`` (specs at every dim's max) with ``min_shape`` from ``low`` and each varying axis
    named where ``named`` (symbolic inference, or the inputs' own dims) says which dim it carries
    and the sizes at both bounds confirm it. A tensor whose rank differs between the bounds is
    marked data-dependent."""
    out = {}
    for name, spec in high.items():
        small = low.get(name)
        if small is None or small.shape == spec.shape:
            out[name] = spec
            continue
        if len(small.shape) != len(spec.shape):
            out[name] = replace(spec, dynamic=True)
            continue
        says = named.get(name, ())
        dims: list[str | None] = []
        for axis, (lo, hi) in enumerate(zip(small.shape, spec.shape)):
            dim = says[axis] if axis < len(says) else None
            confirmed = dim is not None and feeds.dims[dim] == (lo, hi)
            dims.append(dim if confirmed and lo != hi else None)
        out[name] = replace(spec, min_shape=small.shape, dims=tuple(dims))
    return out


def batch_dim(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str | None:
    """The dynamic dim that is axis 0 of every input and output (batches merge along it)."""
    names = set()
    for t in (*inputs, *outputs):
        if not t.shape or not t.dims or t.dims[0] is None:
            return None
        names.add(t.dims[0])
    return names.pop() if len(names) == 1 else None


# -- the graph over dynamic dims -------------------------------------------------------------------
@dataclass
class DynamicGraph:
    """A model analysed over its dynamic dims.

    Attributes:
        graph: the graph at every dim's max (slots and memory are sized from it), its tensors
            annotated with their smallest shapes and the dims their axes carry.
        feeds: the dims, and requests at their bounds.
        compute: per-node seconds the cut is balanced on: at the typical shapes, or the mean
            over the shape profile.
        costs: per-node seconds at the smallest (``"min"``), typical and largest shapes.
    """

    graph: ModelGraph
    feeds: DimFeeds
    compute: list[float]
    costs: dict[str, list[float]]


def main_dim(feeds: DimFeeds, profile: ShapeProfile | None = None) -> str:
    """The dim that shapes cost the most: the profile's first, else the widest range that is not
    the batch (axis 0 of the inputs), else the widest."""
    if profile is not None and profile.names:
        return profile.names[0]
    batchy = {axes[0] for axes in feeds.axes.values() if axes and axes[0] is not None} | set(feeds.sums())
    pool = [d for d in feeds.dims if d not in batchy] or [d for d in feeds.dims if d not in feeds.sums()]
    return max(pool, key=lambda d: feeds.dims[d][1] - feeds.dims[d][0])


def analyze_dynamic(model: str | Any, dynamic_dims: Mapping[str, Any], examples: Mapping[str, np.ndarray] | None,
                    profile: ShapeProfile | None, tgt: Target) -> DynamicGraph:
    """Analyse ``model`` at the bounds of ``dynamic_dims`` (and the typical shapes) and annotate
    its tensors with their ranges and dims.

    Raises:
        CompileError: see `prepare_dims`, and `analyze` at each bound.
    """
    proto = load_checked(model)[0]
    feeds = prepare_dims(proto, dynamic_dims, examples, profile)
    del proto
    high = analyze(model, feeds.high, dynamic=feeds.axes)
    low = analyze(model, feeds.low, dynamic=feeds.axes)
    typ = analyze(model, feeds.examples, dynamic=feeds.axes)
    if not low.n == high.n == typ.n:
        raise CompileError(f"the graph has {low.n}, {typ.n} and {high.n} nodes at the smallest, typical and "
                           "largest shapes; corepipe cuts one graph for every shape in range")
    named = derive_axes(high.model, high.initializers, feeds, {t.name: t.shape for t in typ.inputs}, high.cones.nodes)
    named.update(feeds.axes)
    specs = annotate(high.tensors, low.tensors, named, feeds)
    high.tensors = specs
    high.inputs = [specs[t.name] for t in high.inputs]
    high.outputs = [specs[t.name] for t in high.outputs]
    costs = {key: estimate_node_seconds(g, tgt) for key, g in (("min", low), ("typical", typ), ("max", high))}
    compute = costs["typical"]
    if profile is not None:
        dim = main_dim(feeds, profile)
        (lo, hi), mid = feeds.dims[dim], feeds.typical[dim]
        at = {lo: costs["min"], mid: costs["typical"], hi: costs["max"]}
        weights = [(dims.get(dim, mid), w) for dims, w in profile.weighted()]
        compute = [sum(w * _interp({x: c[i] for x, c in at.items()}, v) for v, w in weights)
                   for i in range(high.n)]
    return DynamicGraph(high, feeds, compute, costs)


def _interp(points: Mapping[int, float], x: float) -> float:
    from .buckets import interpolate

    return interpolate(points, x)
