"""A plan's invariants, checked before it is written and after it is read (`Plan.validate`):
stages in order over every node, each reading only what an earlier stage or its own state
gives it, boundaries that match, engines and precisions that exist, memory within the core,
and dynamic dims that every varying input axis names."""

from __future__ import annotations

from typing import Any

__all__ = ["validate_plan"]


def validate_plan(plan: Any) -> None:  # a `Plan` (plan.py imports this module)
    """Check the invariants a runtime relies on; raise ``ValueError`` naming the broken one."""
    n = len(plan.stages)
    if n == 0:
        raise ValueError("a plan needs at least one stage")
    if len(plan.boundaries) != n + 1:
        raise ValueError(f"{n} stages need {n + 1} boundaries, found {len(plan.boundaries)}")
    expect, dec = 0, plan.decoder
    if dec is not None:  # first: a misplaced pair is the clearest account of a stage's stray input
        dec.check_plan(plan)
    for k, st in enumerate(plan.stages):
        if st.index != k:
            raise ValueError(f"stage {k} is labelled {st.index}: stages must be in order")
        if st.node_start != expect or st.node_end <= st.node_start:
            raise ValueError(
                f"stage {k} covers nodes {st.node_start}..{st.node_end}, expected to start "
                f"at {expect} and hold at least one node"
            )
        expect = st.node_end
        before = {t.name for t in plan.boundaries[k]}
        after = [t.name for t in plan.boundaries[k + 1]]
        local_in, local_out = (dec.local_inputs(k), dec.local_outputs(k)) if dec else (set(), set())
        missing = [x for x in st.inputs if x not in before and x not in local_in]
        if missing:
            raise ValueError(f"stage {k} reads {missing}, which no earlier stage produces")
        bad_carry = [x for x in st.carried if x not in before]
        if bad_carry:
            raise ValueError(f"stage {k} carries {bad_carry}, which it never receives")
        made = [x for x in st.outputs if x not in local_out] + list(st.carried)
        if sorted(made) != sorted(after) or len(set(made)) != len(made):
            raise ValueError(
                f"stage {k} produces and carries {sorted(made)} but boundary {k + 1} "
                f"holds {sorted(after)}"
            )
        if st.engine not in type(st).ENGINES or st.precision not in type(st).PRECISIONS:
            raise ValueError(
                f"stage {k} names engine {st.engine!r} at precision {st.precision!r}; engines "
                f"are {list(type(st).ENGINES)}, precisions {list(type(st).PRECISIONS)}"
            )
        if st.engine == "onnxruntime" and st.precision != "fp32":
            raise ValueError(f"stage {k}: onnxruntime runs fp32 only, the plan says {st.precision}")
        if st.resident_bytes > plan.target.core_memory:
            raise ValueError(
                f"stage {k} holds {st.resident_bytes} bytes, over the core memory "
                f"{plan.target.core_memory}"
            )
    if expect != plan.num_nodes:
        raise ValueError(f"stages cover {expect} of {plan.num_nodes} nodes")
    model_inputs = {t.name for t in plan.inputs}
    stray = [t.name for t in plan.boundaries[0] if t.name not in model_inputs]
    if stray:
        raise ValueError(f"boundary 0 holds {stray}, which are not model inputs")
    if [t.name for t in plan.boundaries[-1]] != [t.name for t in plan.outputs]:
        raise ValueError("the last boundary must hold exactly the model outputs, in order")
    if plan.deployment is not None:
        plan.deployment.validate(n)
    unknown = sorted({c.input for c in plan.input_checks} - model_inputs)
    if unknown:
        raise ValueError(f"input checks name {unknown}, which are not model inputs")
    _validate_shapes(plan)


def _validate_shapes(plan: Any) -> None:
    """Dynamic dims: every varying input axis named by `shapes`, within its range; buckets
    named exactly when some stage runs them (requests are then padded at intake)."""
    modes = [st.shape_mode for st in plan.stages]
    if plan.shapes is None:
        if any(m != "static" for m in modes) or any(not t.is_static for t in plan.inputs):
            raise ValueError("a plan with dynamic shapes or stage shape modes needs its 'shapes'")
        return
    plan.shapes.validate()
    if "static" in modes:
        raise ValueError(f"every stage of a plan over dynamic dims is 'dynamic' or 'buckets', got {modes}")
    if ("buckets" in modes) != bool(plan.shapes.buckets):
        raise ValueError(f"stage modes {modes} and buckets {dict(plan.shapes.buckets)} disagree: a plan "
                         "names buckets exactly when a stage runs them")
    for spec in plan.inputs:
        for axis, (lo, hi) in enumerate(spec.ranges()):
            name = spec.dims[axis] if spec.dims else None
            if lo == hi:
                continue
            if name is None or name not in plan.shapes.dims:
                raise ValueError(f"input {spec.name!r} axis {axis} varies but names no dynamic dim")
            if (lo, hi) != tuple(plan.shapes.dims[name]):
                raise ValueError(f"input {spec.name!r} axis {axis} spans {lo}..{hi}, dim {name!r} "
                                 f"spans {plan.shapes.dims[name]}")
