"""Decoders in the compiler: a model with state pairs analysed over its step dims.

A decoder step has a batch of ``b`` sequences, ``n`` new tokens each and a past of ``P`` tokens;
its mask spans ``P + n`` (optimum names that dim ``"past_sequence_length + sequence_length"``).
The dims are related, so `analyze_decoder` does not analyse the graph at each dim's bounds as
`corepipe.compiler.shaping.dynamic` does: it analyses it at two small steps, names each varying axis by
symbolic shape inference (a sum of dims included), and takes each named axis's range from its
dim: batch ``1..max_sequences``, new tokens ``1..max_length``, past ``0..max_length - 1`` and
past + new ``1..max_length``. Every stage graph keeps those dims dynamic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...artifact.dims import check_dims
from ...artifact.plan import TensorSpec
from ...artifact.protoio import load_checked
from ...errors import CompileError
from ..model.graph import ModelGraph, analyze
from ..model.shapes import dtype_of
from .statepairs import PairLayout, find_pairs
from .stepvalues import localize

__all__ = ["DecoderModel", "detect_decoder", "analyze_decoder", "DEFAULT_MAX_SEQUENCES", "DEFAULT_MAX_LENGTH"]

#: KV store rows per stage when ``max_sequences`` is not given.
DEFAULT_MAX_SEQUENCES = 16
#: Tokens per sequence when ``max_length`` is not given and the model's config says nothing smaller.
DEFAULT_MAX_LENGTH = 1024


@dataclass
class DecoderModel:
    """A decoder as the compiler sees it before analysis."""

    proto: onnx.ModelProto  # with its weights
    pairs: list[PairLayout]
    ids: str
    mask: str | None
    positions: str | None
    logits: str
    batch: str
    seq: str
    past: str
    total: str
    dims: dict[str, tuple[int, int]]
    max_sequences: int
    max_length: int
    source_sha256: str

    def values(self, b: int, n: int, p: int) -> dict[str, int]:
        return {self.batch: b, self.seq: n, self.past: p, self.total: p + n}

    def feeds(self, b: int, n: int, p: int, seed: int = 0) -> dict[str, np.ndarray]:
        """One step: ``b`` sequences, ``n`` new tokens, ``p`` past tokens (random pasts)."""
        rng = np.random.default_rng(seed)
        g = self.proto.graph
        types = {v.name: dtype_of(v.type.tensor_type.elem_type) for v in g.input}
        out: dict[str, np.ndarray] = {self.ids: np.zeros((b, n), types[self.ids])}
        if self.mask is not None:
            out[self.mask] = np.ones((b, p + n), types[self.mask])
        if self.positions is not None:
            out[self.positions] = np.broadcast_to(np.arange(p, p + n), (b, n)).astype(types[self.positions])
        for pair in self.pairs:
            shape = list(pair.token_shape)
            for axis, size in sorted(((pair.batch_axis, b), (pair.length_axis, p))):
                shape.insert(axis, size)
            out[pair.past] = rng.standard_normal(shape).astype(pair.dtype)
        missing = [v.name for v in g.input if v.name not in out and v.name not in {t.name for t in g.initializer}]
        if missing:
            raise CompileError(f"decoder inputs {missing} are not token ids, mask, positions or a state pair's past; "
                               "corepipe builds every step input itself (export the model without them)")
        return out


def _declared(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def _config_length(model: Any) -> int | None:
    """``n_positions`` / ``max_position_embeddings`` of the config.json beside a model file."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(model).parent / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if type(cfg.get(key)) is int and cfg[key] > 0:
            return int(cfg[key])
    return None


def _position_table(model: onnx.ModelProto, positions: str | None) -> int | None:
    """Rows of the position embedding the positions index (GPT-2's ``wpe``), if the model has one."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if (node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == positions
                and node.input[0] in inits and inits[node.input[0]].dims):
            return int(inits[node.input[0]].dims[0])
    return None


def detect_decoder(model: str | os.PathLike[str] | onnx.ModelProto, state: str | Mapping[str, str] | None,
                   max_sequences: int | None, max_length: int | None,
                   dynamic_dims: Mapping[str, Any] | None) -> DecoderModel | None:
    """The decoder in ``model`` (None where it has no state pairs, or ``state=None``).

    Raises:
        CompileError: a bad ``state`` map or pair, bounds that are not positive ints, a step
            input or output it cannot identify.
    """
    for what, value in (("max_sequences", max_sequences), ("max_length", max_length)):
        if value is not None and (type(value) is not int or value < 1):
            raise CompileError(f"{what} must be a positive int, got {value!r}")
    skel = load_checked(model)[0]
    g = skel.graph
    inits = {t.name for t in g.initializer}
    ins = {v.name: v for v in g.input if v.name not in inits}
    ids = next((n for n in ("input_ids", "tokens") if n in ins), next(iter(ins), ""))
    batch_dim = _declared(ins[ids])[0] if ids in ins and _declared(ins[ids]) else None
    pairs = find_pairs(skel, state, batch_dim)
    if not pairs:
        if isinstance(state, Mapping) and state:
            raise CompileError("state names no pair")
        return None
    local = {p.present for p in pairs}
    rest = [v.name for v in g.output if v.name not in local]
    if len(rest) != 1:
        raise CompileError(f"a decoder has one output besides its state presents (the logits), this one has {rest}")
    id_dims = _declared(ins[ids])
    if len(id_dims) != 2 or not all(isinstance(d, str) for d in id_dims):
        raise CompileError(f"decoder input {ids!r} must be [batch, sequence] with both dims symbolic, got {id_dims}")
    batch, seq = str(id_dims[0]), str(id_dims[1])
    past = pairs[0].dims[pairs[0].length_axis]
    total = pairs[0].present_length
    mask = "attention_mask" if "attention_mask" in ins else None
    if mask is not None and isinstance(_declared(ins[mask])[-1], str):
        total = _declared(ins[mask])[-1]
    if not isinstance(past, str) or not isinstance(total, str):
        raise CompileError(f"state pair {pairs[0].past!r}: its length must be a symbolic dim in past and present, "
                           f"got {past!r} and {total!r}")
    positions = "position_ids" if "position_ids" in ins else None
    table = _position_table(skel, positions)
    if max_length is not None and table is not None and max_length > table:
        raise CompileError(f"max_length={max_length} is over the model's {table} position embeddings; "
                           f"use max_length <= {table}")
    hi = max_length or min(DEFAULT_MAX_LENGTH, table or _config_length(model) or DEFAULT_MAX_LENGTH)
    rows = max_sequences or DEFAULT_MAX_SEQUENCES
    dims = {batch: (1, rows), seq: (1, hi), past: (0, hi - 1), total: (1, hi)}
    if dynamic_dims:
        try:
            given = check_dims(dynamic_dims)
        except ValueError as exc:
            raise CompileError(str(exc)) from None
        unknown = sorted(set(given) - set(dims))
        if unknown:
            raise CompileError(f"dynamic_dims names {unknown}; this decoder's dims are {sorted(dims)}")
        dims.update(given)
    proto = onnx.load(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else model
    return DecoderModel(proto, pairs, ids, mask, positions, rest[0], batch, seq, past, total, dims,
                        dims[batch][1], dims[total][1], load_checked(model)[2])


def _axes(dm: DecoderModel) -> dict[str, tuple[str | None, ...]]:
    """Each input's dims by name (None: fixed)."""
    known = set(dm.dims)
    out = {}
    for vi in dm.proto.graph.input:
        named = tuple(d if isinstance(d, str) and d in known else None for d in _declared(vi))
        if any(named):
            out[vi.name] = named
    return out


#: The steps the graph is analysed at, ``(batch, new tokens, past)``: every dim and the sizes
#: exporters derive from them (past + new, batch x new) differ between them.
_STEPS = ((2, 3, 4), (3, 5, 7), (1, 2, 9))


def analyze_decoder(dm: DecoderModel) -> tuple[ModelGraph, dict[str, np.ndarray]]:
    """The decoder's graph, its tensors annotated over the step dims, its step values in cones
    and its cuts constrained (`corepipe.compiler.decoder.stepvalues.localize`); and one example step.

    Each axis is named by its sizes at three steps (`_STEPS`): equal to a dim's values at all
    three, it carries that dim (and takes its range); constant, it is fixed; otherwise the
    tensor is marked data-dependent (free dims).

    Raises:
        CompileError: see `analyze`; bounds too small to analyse at.
    """
    axes = _axes(dm)
    hi_b = dm.dims[dm.batch][1]
    if dm.max_length < 12 or hi_b < 1:
        raise CompileError(f"max_length {dm.max_length} is too small for a decoder plan: give at least 12")
    steps = [(min(b, hi_b), n, p) for b, n, p in _STEPS]
    feeds = dm.feeds(*steps[0])
    graphs = [analyze(dm.proto, feeds, dynamic=axes)] + [
        analyze(dm.proto, dm.feeds(*st, seed=i + 1), dynamic=axes) for i, st in enumerate(steps[1:])]
    ga = graphs[0]
    values = [dm.values(*st) for st in steps]
    specs = {}
    for name, spec in ga.tensors.items():
        others = [g.tensors.get(name) for g in graphs[1:]]
        if name in ga.initializers or any(o is None for o in others):
            specs[name] = spec
        else:
            specs[name] = _annotate([spec, *others], values, dm.dims)  # type: ignore[list-item]
    ga.tensors = specs
    ga.inputs = [specs[t.name] for t in ga.inputs]
    ga.outputs = [specs[t.name] for t in ga.outputs]
    ga.source_sha256 = dm.source_sha256
    roles = {"batch": dm.batch, "seq": dm.seq, "past": dm.past, "total": dm.total}
    return localize(ga, dm.mask, dm.positions, roles, dm.pairs), feeds


def _annotate(specs: Sequence[TensorSpec], values: Sequence[Mapping[str, int]],
              dims: Mapping[str, tuple[int, int]]) -> TensorSpec:
    """``specs[0]`` over the step dims, from its shapes at the steps of ``values``."""
    spec = specs[0]
    if any(len(o.shape) != len(spec.shape) for o in specs):
        return replace(spec, dynamic=True)
    axes: list[str | None] = []
    low, high, free = [], [], False
    for axis, size in enumerate(spec.shape):
        sizes = [o.shape[axis] for o in specs]
        dim = next((d for d in dims if [v[d] for v in values] == sizes), None)
        if dim is not None and len(set(sizes)) > 1:
            lo, hi = dims[dim]
            axes.append(dim if lo != hi else None)
            low.append(lo)
            high.append(hi)
            continue
        free = free or len(set(sizes)) > 1
        axes.append(None)
        low.append(size)
        high.append(size)
    if all(d is None for d in axes):
        return replace(spec, dynamic=True) if free else spec
    out = TensorSpec(spec.name, spec.dtype, tuple(high), dims=tuple(axes), min_shape=tuple(low))
    return replace(out, dynamic=True) if free else out
