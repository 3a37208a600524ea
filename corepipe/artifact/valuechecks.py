"""Checks on the values of request inputs, made at intake: an index against the size it indexes,
a target shape against the data it reshapes.

The fast engine does not check data (OpenVINO reads 0 for a Gather index out of range and
returns an empty tensor for an impossible Reshape), so where request data reaches such an
operand unchanged, or through casts and reshapes, the compiler records what the operand allows
(`corepipe.compiler.checks.unchecked`) and every backend checks it before the request enters: an
`InputError` naming the input, the bad value, its position and what was allowed. A check is a
pass over the values (a min and a max per input in the common case), never a graph run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["ValueCheck", "ValueChecker", "KINDS"]

#: ``range``: every value within ``lo..hi`` (one range per column of an index tuple);
#: ``reshape``: a Reshape target for a tensor of ``data_shape``; ``expand``: an Expand shape.
KINDS = ("range", "reshape", "expand")
#: What the graph may do to the values between the input and the node: cast them, add a constant.
STEPS = ("cast", "add")
_CASTS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
Bound = int | float | None


@dataclass(frozen=True)
class ValueCheck:
    """What node ``node`` (op ``op``) allows in its operand ``role``, which graph input ``input``
    reaches after ``steps`` (``("cast", dtype)``, ``("add", number)``, in order).

    ``kind="range"``: each value ``v`` satisfies ``lo[c] <= v <= hi[c]`` (``None``: no bound),
    where ``c`` is the value's flat position modulo ``len(lo)`` (GatherND/ScatterND index tuples
    have one range per column; a plain index has one range). ``"reshape"``: the values are a
    Reshape target for a tensor of shape ``data_shape`` (``allowzero`` as the node's
    attribute). ``"expand"``: an Expand shape for a tensor of ``data_shape``. ``what``: the
    message's words for what the values index or size.
    """

    input: str
    node: str
    op: str
    role: str
    kind: str = "range"
    lo: tuple[Bound, ...] = (None,)
    hi: tuple[Bound, ...] = (None,)
    data_shape: tuple[int, ...] = ()
    allowzero: bool = False
    steps: tuple[tuple[str, Any], ...] = ()
    what: str = ""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field a manifest got wrong (plans are untrusted data)."""
        for key in ("input", "node", "op", "role", "what"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"value check {key} must be a string, got {getattr(self, key)!r}")
        if self.kind not in KINDS:
            raise ValueError(f"value check kind {self.kind!r} is unknown: kinds are {list(KINDS)}")
        if not self.lo or len(self.lo) != len(self.hi):
            raise ValueError(f"value check on {self.input!r}: lo and hi need one bound per column")
        for b in (*self.lo, *self.hi):
            if b is not None and (type(b) not in (int, float) or not math.isfinite(b)):
                raise ValueError(f"value check on {self.input!r}: bound {b!r} is not a finite number")
        if any(type(d) is not int or d < 0 for d in self.data_shape) or type(self.allowzero) is not bool:
            raise ValueError(f"value check on {self.input!r}: bad data_shape or allowzero")
        for step in self.steps:
            op, arg = step if isinstance(step, tuple) and len(step) == 2 else (None, None)
            if op not in STEPS or (op == "cast" and arg not in _CASTS) or (
                    op == "add" and (type(arg) not in (int, float) or not math.isfinite(arg))):
                raise ValueError(f"value check on {self.input!r}: bad step {step!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": self.input, "node": self.node, "op": self.op, "role": self.role,
                               "kind": self.kind, "what": self.what}
        if self.kind == "range":
            out.update(lo=list(self.lo), hi=list(self.hi))
        else:
            out.update(data_shape=list(self.data_shape), allowzero=self.allowzero)
        if self.steps:
            out["steps"] = [list(s) for s in self.steps]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueCheck:
        check = cls(
            input=data["input"], node=data["node"], op=data["op"], role=data["role"], kind=data["kind"],
            lo=tuple(data.get("lo", [None])), hi=tuple(data.get("hi", [None])),
            data_shape=tuple(data.get("data_shape", [])), allowzero=data.get("allowzero", False),
            steps=tuple(tuple(s) for s in data.get("steps", [])), what=data.get("what", ""),
        )
        check.validate()
        return check

    # -- checking ----------------------------------------------------------------------------
    def values(self, value: np.ndarray) -> np.ndarray:
        """The input's values as the node sees them (after the steps), flattened."""
        v = value.reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            for op, arg in self.steps:
                v = v.astype(arg) if op == "cast" else v + np.asarray(arg).astype(v.dtype)
        return v

    def problem(self, value: np.ndarray) -> str | None:
        """Why ``value`` (the input's array) breaks this check, in words; None when it passes."""
        v = self.values(value)
        if self.kind == "range":
            return self._range_problem(value, v)
        target = [int(x) for x in v.tolist()]
        why = _reshape_problem(target, self.data_shape, self.allowzero) if self.kind == "reshape" \
            else _expand_problem(target, self.data_shape)
        if why is None:
            return None
        verb, count = (("reshape", f" ({math.prod(self.data_shape)} elements)") if self.kind == "reshape"
                       else ("expand", ""))
        return (f"input {self.input!r}: node {self.node!r} ({self.op}) cannot {verb} its "
                f"{_shape(self.data_shape)} input{count} to {target}, the {self.role} given: {why}")

    def _range_problem(self, value: np.ndarray, v: np.ndarray) -> str | None:
        k = len(self.lo)
        if v.size % k:
            return (f"input {self.input!r}: node {self.node!r} ({self.op}) reads it as index tuples of {k}, "
                    f"and {v.size} values do not make whole tuples")
        bad = np.zeros(v.shape, dtype=bool)
        cols = v.reshape(-1, k) if k > 1 else v.reshape(-1, 1)
        badc = bad.reshape(cols.shape)
        for c in range(k):
            if self.lo[c] is not None:
                badc[:, c] |= cols[:, c] < self.lo[c]
            if self.hi[c] is not None:
                badc[:, c] |= cols[:, c] > self.hi[c]
            badc[:, c] |= cols[:, c] != cols[:, c]  # NaN
        if not bad.any():
            return None
        first = int(np.flatnonzero(bad)[0])
        c = first % k
        given = value.reshape(-1)[first].item()
        seen = v[first].item()
        after = f" ({seen} after {_steps(self.steps)})" if self.steps and seen != given else ""
        pos = [int(i) for i in np.unravel_index(first, value.shape)] if value.ndim else []
        column = f"column {c} of each index tuple " if k > 1 else ""
        return (f"input {self.input!r}: value {given}{after} at {pos} is out of range: node {self.node!r} "
                f"({self.op}) reads it as its {self.role}{', ' + self.what if self.what else ''}, so "
                f"{column}must be {_range(self.lo[c], self.hi[c])}")


class ValueChecker:
    """The plan's value checks, arranged once for the per-request path (`Pipeline` makes one).

    Plain index ranges on the same input are merged into one (lo, hi): a request costs a
    min and a max per checked input; only a failing request looks at the checks one by one.
    """

    def __init__(self, checks: Sequence[ValueCheck]) -> None:
        self.checks = tuple(checks)
        self._merged: dict[str, tuple[float, float]] = {}
        self._other: list[ValueCheck] = []
        for check in self.checks:
            simple = check.kind == "range" and len(check.lo) == 1 and not check.steps
            if not simple:
                self._other.append(check)
                continue
            lo, hi = self._merged.get(check.input, (-math.inf, math.inf))
            self._merged[check.input] = (max(lo, _num(check.lo[0], -math.inf)), min(hi, _num(check.hi[0], math.inf)))

    def __bool__(self) -> bool:
        return bool(self.checks)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise `InputError` for the first value a check refuses; return None when all pass."""
        for name, (lo, hi) in self._merged.items():
            value = feeds[name]
            if value.size and not (lo <= value.min() and value.max() <= hi):
                self._refuse(name, feeds)
        for check in self._other:
            why = check.problem(feeds[check.input])
            if why is not None:
                raise InputError(why)

    def _refuse(self, name: str, feeds: Mapping[str, np.ndarray]) -> None:
        for check in self.checks:
            if check.input == name:
                why = check.problem(feeds[name])
                if why is not None:
                    raise InputError(why)
        raise AssertionError(f"merged range of {name!r} refused a value no check refuses")  # pragma: no cover


def _num(b: Bound, default: float) -> float:
    return default if b is None else b


def _shape(dims: Sequence[int]) -> str:
    return f"[{','.join(str(d) for d in dims)}]"


def _range(lo: Bound, hi: Bound) -> str:
    if lo is None:
        return f"at most {hi}"
    if hi is None:
        return f"at least {lo}"
    neg = " (negative values count from the end, as ONNX allows)" if lo < 0 else ""
    return f"in {lo}..{hi}{neg}"


def _steps(steps: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(f"a cast to {arg}" if op == "cast" else f"adding {arg}" for op, arg in steps)


def _reshape_problem(target: list[int], data: Sequence[int], allowzero: bool) -> str | None:
    """ONNX Reshape's rules for ``target`` on a tensor of shape ``data``, as onnxruntime applies them."""
    total = math.prod(data)
    if target.count(-1) > 1:
        return "at most one dimension may be -1"
    if any(d < -1 for d in target):
        return f"a dimension cannot be less than -1, got {min(target)}"
    if allowzero and 0 in target and -1 in target:
        return "with allowzero=1, a shape cannot hold both 0 and -1"
    dims = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(data):
                return f"dimension {i} is 0 (copy the input's), but the input has only {len(data)} dimensions"
            d = data[i]
        dims.append(d)
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if known == 0 or total % known:
            return f"{total} elements cannot be split into blocks of {known}"
        return None
    if known != total:
        return f"that shape holds {known} elements, the tensor has {total}"
    return None


def _expand_problem(target: list[int], data: Sequence[int]) -> str | None:
    """ONNX Expand's (numpy's two-way) broadcasting of ``data`` to ``target``."""
    if any(d < 0 for d in target):
        return f"a dimension cannot be negative, got {min(target)}"
    for i in range(1, min(len(target), len(data)) + 1):
        t, d = target[-i], data[-i]
        if t != d and t != 1 and d != 1:
            return f"dimension {len(target) - i} is {t}, which does not broadcast with the tensor's {d}"
    return None
