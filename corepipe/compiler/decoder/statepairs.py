"""State pairs: which of a model's inputs and outputs carry the same tensor from one step to the
next (a decoder's KV cache), found by name or given by the user.

`find_pairs` recognises optimum's ``past_key_values.{i}.key/value`` <-> ``present.{i}.key/value``
and the legacy torch exporter's ``past.{i}`` <-> ``present.{i}``, or takes an explicit
``state={"present.0.key": "past_key_values.0.key", ...}`` (present -> past), and reads each
pair's layout from the model's declared shapes: the batch axis (the input ids' first dim), the
length axis (the one dim that differs between past and present) and the per-token shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from ...errors import CompileError
from ..model.shapes import dtype_of

__all__ = ["PairLayout", "find_pairs", "STATE_AUTO"]

#: ``state="auto"``: pairs found by their names.
STATE_AUTO = "auto"
_AUTO = ((re.compile(r"^past_key_values\.(\d+)\.(key|value)$"), "present.{0}.{1}"),
         (re.compile(r"^past\.(\d+)$"), "present.{0}"),
         (re.compile(r"^past_key_values\.(\d+)$"), "present.{0}"))


@dataclass(frozen=True)
class PairLayout:
    """A state pair as the model declares it (its stage is chosen later).

    ``dims``: the declared dims of the past (an int, a ``dim_param`` name, or None)."""

    past: str
    present: str
    batch_axis: int
    length_axis: int
    dtype: str
    token_shape: tuple[int, ...]
    dims: tuple[int | str | None, ...]
    present_length: int | str | None  # the present's length dim ("past + sequence")


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return tuple(out)


def find_pairs(model: onnx.ModelProto, state: str | Mapping[str, str] | None,
               batch_dim: int | str | None) -> list[PairLayout]:
    """The model's state pairs, in input order; empty for ``state=None`` or a model without any.

    ``batch_dim``: the input ids' axis-0 dim, which names each pair's batch axis.

    Raises:
        CompileError: an explicit map naming what is not a model input/output, a pair whose
            shapes do not match (rank, dtype, more than one differing axis), or ``state`` of
            another kind.
    """
    if state is None:
        return []
    g = model.graph
    inits = {t.name for t in g.initializer}
    ins = {v.name: v for v in g.input if v.name not in inits}
    outs = {v.name: v for v in g.output}
    if isinstance(state, str):
        if state != STATE_AUTO:
            raise CompileError(f"state must be 'auto', None or a dict of present -> past names, got {state!r}")
        found = {}
        for name in ins:
            for pattern, present in _AUTO:
                m = pattern.match(name)
                if m and present.format(*m.groups()) in outs:
                    found[present.format(*m.groups())] = name
                    break
        mapping: Mapping[str, str] = found
    elif isinstance(state, Mapping):
        mapping = state
        for present, past in mapping.items():
            if present not in outs or past not in ins:
                raise CompileError(
                    f"state maps output {present!r} to input {past!r}, but "
                    f"{'the model has no output ' + repr(present) if present not in outs else 'the model has no input ' + repr(past)}"
                    f"; give state={{present output: past input}} (its inputs: {sorted(ins)}; outputs: {sorted(outs)})")
        pasts = list(mapping.values())
        twice = sorted({p for p in pasts if pasts.count(p) > 1})
        if twice:
            raise CompileError(f"state maps several outputs to the input(s) {twice}: each past pairs with one present")
    else:
        raise CompileError(f"state must be 'auto', None or a dict of present -> past names, got {type(state).__name__}")
    order = {name: i for i, name in enumerate(ins)}
    return [_layout(ins[past], outs[present], batch_dim)
            for present, past in sorted(mapping.items(), key=lambda kv: order[kv[1]])]


def _layout(past: onnx.ValueInfoProto, present: onnx.ValueInfoProto, batch_dim: int | str | None) -> PairLayout:
    a, b = _dims(past), _dims(present)
    where = f"state pair {past.name!r} -> {present.name!r}"
    ta, tb = past.type.tensor_type.elem_type, present.type.tensor_type.elem_type
    if len(a) != len(b) or ta != tb or len(a) < 3:
        raise CompileError(f"{where}: past and present must have the same dtype and rank (>= 3), got "
                           f"{dtype_of(ta)}{list(a)} and {dtype_of(tb)}{list(b)}")
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(differ) != 1:
        raise CompileError(f"{where}: past {list(a)} and present {list(b)} must differ in exactly one axis "
                           "(the length the new tokens grow)")
    length = differ[0]
    batch = [i for i, x in enumerate(a) if batch_dim is not None and x == batch_dim and i != length]
    if len(batch) != 1:
        raise CompileError(f"{where}: no single axis of the past {list(a)} is the batch dim {batch_dim!r} of the "
                           "input ids; corepipe needs the batch axis to keep sequences apart")
    token = [x for i, x in enumerate(a) if i not in (batch[0], length)]
    if any(type(x) is not int for x in token):
        raise CompileError(f"{where}: the past's axes other than batch and length must be fixed, got {list(a)}")
    return PairLayout(past.name, present.name, batch[0], length, dtype_of(ta),
                      tuple(x for x in token if isinstance(x, int)), a, b[length])
