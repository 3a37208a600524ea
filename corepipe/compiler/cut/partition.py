"""From a solved cut to stage graphs: one self-contained ONNX model per stage.

Each stage graph takes the boundary tensors its nodes read, holds its own copy of every weight
it reads (a weight shared by several stages is copied into each), and outputs what later stages
or the client need. Tensors that a stage only passes along ("carried") never enter its graph:
the runtime copies them from the incoming boundary to the outgoing one. We carry rather than
route directly so that every stage talks only to its neighbours; the cost of carrying is in the
boundary bytes the solver minimises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ...artifact.plan import StagePlan, TensorSpec
from ...artifact.target import Target
from ...artifact.weights import fill_tensor
from ...engines.base import Ranges
from ..model.graph import ModelGraph
from .solver import Problem

__all__ = ["make_problem", "links_for", "build_stage_model", "stage_plans", "place_stages", "stage_reads",
           "stage_variants"]


def make_problem(graph: ModelGraph, compute: Sequence[float], capacity: float) -> Problem:
    """The solver's view of ``graph``: numbers only."""
    ids = {name: i for i, name in enumerate(graph.weight_bytes)}
    node_weights = [[ids[w] for w in node.weights] for node in graph.nodes]
    # Outputs that are constants are emitted by the last stage: charge it their weights.
    if graph.const_outputs:
        node_weights[-1] = node_weights[-1] + [ids[w] for w in graph.weights_for(graph.const_outputs)]
    return Problem(
        compute=list(compute),
        node_weights=node_weights,
        weight_bytes=list(graph.weight_bytes.values()),
        boundary_bytes=graph.boundary_bytes(),
        capacity=capacity,
        cuttable=graph.cuttable(),
    )


def links_for(target: Target, k: int) -> list[tuple[float, float]]:
    """``(latency_s, bytes_per_s)`` of hand-offs 0..k for a plan of ``k`` stages on ``target``."""
    links = []
    for b in range(k + 1):
        cross = 0 < b < k and target.crosses_device(b)
        if cross:
            links.append((target.cross_device_latency_s, target.cross_device_bytes_per_s))
        else:
            links.append((target.link_latency_s, target.link_bytes_per_s))
    return links


def _stage_io(graph: ModelGraph, start: int, end: int, last: bool) -> tuple[list[str], list[str], list[str]]:
    """(graph inputs, graph outputs, carried) of the stage holding nodes start..end-1."""
    produced: set[str] = set()
    reads: list[str] = []
    for node in graph.nodes[start:end]:
        for name in node.reads:
            if name not in produced and not graph.is_constant(name) and name not in reads:
                reads.append(name)
        produced.update(node.writes)
    # Model inputs the copied cones read (a decoder's step inputs: `corepipe.compiler.decoder.stepvalues`).
    model_inputs = {t.name for t in graph.inputs}
    for node in graph.stage_nodes(start, end):
        reads.extend(x for x in node.input if x in model_inputs and x not in reads)
    after = list(graph.live[end])
    outputs = [t for t in after if t in produced] + [t for t in graph.local_outputs if t in produced]
    carried = [t for t in after if t not in produced]
    if last:
        outputs += graph.const_outputs
    return reads, outputs, carried


def stage_reads(graph: ModelGraph, start: int, end: int) -> list[str]:
    """The boundary tensors the stage holding nodes start..end-1 reads (its graph's inputs)."""
    return _stage_io(graph, start, end, False)[0]


def build_stage_model(graph: ModelGraph, start: int, end: int, last: bool) -> onnx.ModelProto:
    """A standalone ONNX model computing nodes ``start .. end - 1`` of ``graph``: the cones of
    the constants it reads first, then its nodes; every value typed (``value_info``)."""
    src = graph.model
    reads, outputs, _ = _stage_io(graph, start, end, last)
    g = onnx.GraphProto(name=f"{src.graph.name or 'model'}_stage")
    g.node.extend(graph.stage_nodes(start, end, graph.const_outputs if last else ()))
    g.input.extend(_value_info(graph.tensors[n]) for n in reads)
    g.output.extend(_value_info(graph.tensors[n]) for n in outputs)
    wanted: list[str] = []
    for node in graph.nodes[start:end]:
        wanted.extend(w for w in node.weights if w not in wanted)
    if last:
        wanted.extend(w for w in graph.weights_for(graph.const_outputs) if w not in wanted)
    io = set(reads) | set(outputs)
    inner = [o for node in g.node for o in node.output if o and o not in io and o in graph.tensors]
    g.value_info.extend(_value_info(graph.tensors[n]) for n in dict.fromkeys(inner))
    for w in wanted:  # external weights are read now, this stage's alone
        fill_tensor(g.initializer.add(), graph.initializers[w], graph.weights_dir)
    model = helper.make_model(g, opset_imports=list(src.opset_import), ir_version=src.ir_version)
    model.producer_name = "corepipe"
    model.functions.extend(src.functions)
    return model


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    # A data-dependent shape is declared with free dims, so the next stage takes any size.
    dims: list[int | str | None] = [None] * len(spec.shape) if spec.dynamic else list(spec.shape)
    if not spec.is_static and not spec.dynamic:
        # Over dynamic dims: an axis carrying one is named after it, one that varies otherwise is free.
        dims = [hi if lo == hi else spec.dims[a] for a, (lo, hi) in enumerate(spec.ranges())]
    return helper.make_tensor_value_info(spec.name, elem, dims)


def stage_plans(
    graph: ModelGraph,
    bounds: Sequence[int],
    target: Target,
    stage_seconds: Sequence[float],
    stage_bytes: Sequence[int],
    measured: Sequence[float] | None = None,
    placement: Sequence[tuple[int, int]] | None = None,
) -> list[StagePlan]:
    """Describe each stage of the cut ``bounds`` as plan data (files are filled in on write).
    ``placement``: (device, core) per stage; default ``target.place``."""
    k = len(bounds) - 1
    plans = []
    for s in range(k):
        start, end = bounds[s], bounds[s + 1]
        reads, outputs, carried = _stage_io(graph, start, end, s == k - 1)
        weights = {w for node in graph.nodes[start:end] for w in node.weights}
        if s == k - 1:
            weights.update(graph.weights_for(graph.const_outputs))
        device, core = placement[s] if placement is not None else target.place(s)
        first, last_node = graph.nodes[start], graph.nodes[end - 1]
        plans.append(
            StagePlan(
                index=s,
                node_start=start,
                node_end=end,
                first_node=first.name,
                last_node=last_node.name,
                first_op=first.op_type,
                last_op=last_node.op_type,
                inputs=tuple(reads),
                outputs=tuple(outputs),
                carried=tuple(carried),
                weights=len(weights),
                resident_bytes=int(stage_bytes[s]),
                estimated_s=float(stage_seconds[s]),
                device=device,
                core=core,
                measured_s=None if measured is None else float(measured[s]),
            )
        )
    return plans


def place_stages(target: Target, stage_seconds: Sequence[float]) -> list[tuple[int, int]]:
    """(device, core) of each stage. With no more stages than cores: the target's topology.
    With more (a CPU target whose core memory forced extra stages), consecutive stages share a
    core, grouped so the busiest core's summed stage time is smallest; round-robin would put
    the heavy first and light last stages of a model on the same cores."""
    k, cores = len(stage_seconds), target.total_cores
    if k <= cores:
        return [target.place(s) for s in range(k)]
    grouping = Problem(
        compute=list(stage_seconds), node_weights=[[] for _ in range(k)], weight_bytes=[],
        boundary_bytes=[0.0] * (k + 1), capacity=float("inf"),
    )
    from .solver import solve

    bounds = solve(grouping, cores, [(0.0, 1.0)] * (cores + 1))
    out = []
    for group in range(cores):
        for _ in range(bounds[group], bounds[group + 1]):
            out.append(target.place(group))
    return out


def stage_variants(graph: ModelGraph, bounds: list[int], *, at: Mapping[str, int] | None = None
                   ) -> list[list[Ranges]] | None:
    """Per stage of the cut ``bounds``, the input shapes to compile it for: its inputs' ranges
    (a bounded dynamic graph), or, with ``at`` (dim -> value), those dims fixed there. None for
    a graph of static shapes."""
    if all(t.is_static for t in graph.inputs):
        return None
    k = len(bounds) - 1
    out = []
    for s in range(k):
        ranges = []
        for name in stage_reads(graph, bounds[s], bounds[s + 1]):
            spec = graph.tensors[name]
            dims = spec.dims or (None,) * len(spec.shape)
            ranges.append(tuple((at[d], at[d]) if at and d is not None and d in at else r
                                for d, r in zip(dims, spec.ranges())))
        out.append([tuple(ranges)])
    return out
