"""`compile` for a decoder: the cut that keeps each state pair in its stage, KV in each stage's
resident bytes, and the plan's decoder record (`corepipe.artifact.decoder`).

Each pair's KV store (``max_sequences x max_length`` tokens) is one more "weight" of the node
that writes its present, so the solver, which only sees numbers, counts it in the stage's memory
like any weight: `num_cores="auto"` and ``core_memory`` include it. The cut positions that would
split a pair's layer or let more than the hidden state cross are not cuttable
(`corepipe.compiler.decoder.stepvalues`). Every stage graph is dynamic over the batch, new-token and
past dims: one graph serves a prefill of any length and a decode batch of any size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...artifact.decoder import DecoderSpec, StatePair
from ...artifact.deployment import Deployment
from ...artifact.dims import Shapes
from ...artifact.plan import Plan
from ...artifact.sizes import format_bytes, plural
from ...artifact.target import Target
from ...errors import ArtifactError, CompileError, DoesNotFitError
from ..cut import solver
from ..cut.assemble import check_engines, engine_notes, make_plan, write_stages
from ..cut.cost import estimate_node_seconds
from ..cut.fit import check_cuts, not_fit, resolve_cores
from ..cut.partition import links_for, make_problem
from ..model.graph import ModelGraph
from .decodeengines import decode_choices
from .decoding import DecoderModel, analyze_decoder

__all__ = ["compile_decoder", "compile_decoder_model", "DECODER_NOTE"]

#: The plan note that says why a decoder plan has no buckets.
DECODER_NOTE = ("decoder: {pairs} state pairs kept in their stages ({kv}); every stage runs one dynamic graph, no "
                "buckets: batch, new tokens and past change together at every step")


def _kv_problem(graph: ModelGraph, problem: solver.Problem, dm: DecoderModel) -> tuple[solver.Problem, list[int]]:
    """``problem`` with each pair's KV store as a weight of the node that writes its present."""
    weights = [list(w) for w in problem.node_weights]
    sizes = list(problem.weight_bytes)
    kv = []
    writer = {w: n.index for n in graph.nodes for w in n.writes}
    for pair in dm.pairs:
        if pair.present not in writer:
            raise CompileError(f"state pair {pair.past!r} -> {pair.present!r}: no node writes the present "
                               "(it passes the past through unchanged?); give state= without it")
        nbytes = dm.max_sequences * dm.max_length * _token_bytes(pair.dtype, pair.token_shape)
        weights[writer[pair.present]].append(len(sizes))
        sizes.append(nbytes)
        kv.append(nbytes)
    return dataclasses.replace(problem, node_weights=weights, weight_bytes=sizes), kv


def _token_bytes(dtype: str, shape: Sequence[int]) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))


def _kv_words(dm: DecoderModel, kv: Sequence[int]) -> str:
    return (f"KV {format_bytes(sum(kv))} in all: {dm.max_sequences} sequences x {dm.max_length} tokens x "
            f"{format_bytes(sum(kv) // (dm.max_sequences * dm.max_length))} per token")


def compile_decoder(
    dm: DecoderModel, output_dir: str | os.PathLike[str], *, num_cores: int | str, tgt: Target, cuts: Sequence[int] | None,
    engine: str, precision: str, notes: list[str], report: Callable[[str, int, int], None],
    deployment: Deployment | None,
) -> tuple[Path, Plan]:
    """Compile the decoder ``dm`` into ``output_dir``; the plan written.

    Raises:
        CompileError: a cut that splits a pair's layer (naming it), too many cores for the
            places a decoder may be cut.
        DoesNotFitError: a stage over ``core_memory`` with its KV store (naming the KV bytes).
    """
    report("analyse graph", 0, 1)
    graph, feeds = analyze_decoder(dm)
    report("analyse graph", 1, 1)
    if cuts is not None:
        num_cores = len(check_cuts(cuts, graph.n)) - 1
    k = resolve_cores(num_cores, graph.n, tgt)
    plain = make_problem(graph, estimate_node_seconds(graph, tgt), tgt.core_memory)
    problem, kv = _kv_problem(graph, plain, dm)
    kv_words = _kv_words(dm, kv)
    try:
        need = solver.min_stages(problem)
    except solver.Infeasible:
        raise _with_kv(not_fit(graph, problem, k, tgt), kv_words) from None
    if k is None:
        k = need
    elif need > k:
        raise _with_kv(not_fit(graph, problem, k, tgt), kv_words)
    report("partition", 0, 1)
    if cuts is not None:
        bounds = check_cuts(cuts, graph.n)
        bad = [b for b in bounds[1:-1] if not problem.allowed()[b]]
        if bad:
            raise CompileError(f"cannot cut before node {bad[0]}: {graph.why_uncut(bad[0], bad[0])}; choose another cut")
        sizes = [solver.stage_memory(problem, bounds[s], bounds[s + 1]) for s in range(k)]
        if max(sizes) > tgt.core_memory:
            raise _with_kv(not_fit(graph, problem, k, tgt, bounds), kv_words)
    else:
        try:
            bounds = solver.solve(problem, k, links_for(tgt, k))
        except solver.Infeasible:
            places = int(sum(problem.allowed()[1:-1]))
            lacks = [n for n, v in (("attention_mask", dm.mask), ("position_ids", dm.positions)) if v is None]
            hint = (f" (it has no {' or '.join(lacks)} input, from which each stage recomputes the shapes and masks "
                    "it needs: re-export it with them)") if lacks else ""
            raise CompileError(
                f"cannot cut this decoder into {plural(k, 'stage')}: only {plural(places, 'place')} between its "
                f"nodes let the hidden state alone cross with each state pair's layer whole{hint}; "
                f"use num_cores <= {places + 1}") from None
    choices = check_engines(graph, bounds, feeds, engine, precision, report)
    choices, decode_notes = decode_choices(graph, bounds, dm, choices, engine, precision, report)
    report("partition", 1, 1)
    stage_of = {}
    for s in range(k):
        for node in graph.nodes[bounds[s]:bounds[s + 1]]:
            stage_of.update(dict.fromkeys(node.writes, s))
    pairs = tuple(StatePair(p.past, p.present, stage_of[p.present], p.batch_axis, p.length_axis, p.dtype,
                            p.token_shape) for p in dm.pairs)
    spec = DecoderSpec(dm.ids, dm.logits, dm.mask, dm.positions, pairs, dm.max_sequences, dm.max_length)
    shapes = Shapes(dims=dict(dm.dims), batch=dm.batch)
    # Every stage is dynamic by design: the engines' "not static" notes would only be noise.
    notes = [n for n in engine_notes(engine, precision, choices) if " is not static: " not in n] + decode_notes + notes + [
        DECODER_NOTE.format(pairs=len(pairs), kv=kv_words)]
    plan = make_plan(graph, problem, tgt, bounds, "estimate", choices, deployment=deployment, notes=notes,
                     shapes=shapes)
    step = {dm.ids, dm.mask, dm.positions}
    inputs = tuple(t for t in plan.inputs if t.name in step)
    outputs = tuple(t for t in plan.outputs if t.name == dm.logits)
    plan = dataclasses.replace(
        plan, inputs=inputs, outputs=outputs, boundaries=plan.boundaries[:-1] + (outputs,), decoder=spec,
        input_checks=tuple(c for c in plan.input_checks if c.input in {t.name for t in inputs}))
    report("write stages", 0, k)
    try:
        final = write_stages(graph, plan, bounds, Path(output_dir), lambda s: report("write stages", s + 1, k))
    except ArtifactError as exc:
        raise CompileError(str(exc)) from None
    return Path(output_dir), final


def _with_kv(exc: DoesNotFitError, kv_words: str) -> DoesNotFitError:
    """``exc`` with what the KV stores add, and how to shrink them."""
    out = DoesNotFitError(f"{exc} (stage memory includes each stage's KV store: {kv_words}; lower max_sequences= "
                          "or max_length=, or raise core_memory)", min_cores=exc.min_cores, capacity=exc.capacity,
                          needed=exc.needed)
    return out


def compile_decoder_model(dm: DecoderModel, output_dir: str | os.PathLike[str], *, balance: str, buckets: Any,
                          shape_profile: Any, source: Any = None, **kw: Any) -> tuple[Path, Plan]:
    """`corepipe.compile`'s path for a model with state pairs: refuse the options a decoder plan
    does not take, compile it (`compile_decoder`), and copy the tokenizer beside a model file
    into the artifact."""
    if balance != "estimate":
        raise CompileError(f"balance={balance!r} does not run decoders yet: compile a decoder with "
                           "balance='estimate' (or state=None to compile it as a plain model)")
    if buckets not in ("auto", None) or shape_profile is not None:
        raise CompileError("a decoder plan runs every stage as one dynamic graph: drop buckets= and shape_profile= "
                           "(or pass state=None to compile it as a plain model)")
    path, plan = compile_decoder(dm, output_dir, **kw)
    if isinstance(source, (str, os.PathLike)):  # the tokenizer beside the model goes with it
        from ...artifact.tokenizer import add_tokenizer

        add_tokenizer(path, Path(source).parent)
    return path, plan
