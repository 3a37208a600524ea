"""Check tensors against the compiled signature: requests before they enter a pipeline
(`check_feeds`), and what each stage writes (`tensor_problem`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .dims import dim_parts, dim_value
from .plan import TensorSpec

__all__ = ["Dim", "check_feeds", "expected_dims", "feed_dims", "tensor_problem"]

#: A dim as the signature allows it: an int where static, ``(lo, hi)`` where it varies
#: (``hi`` None: bounded only by the compiled size of the tensor).
Dim = int | tuple[int, int | None]


def _describe(value: np.ndarray) -> str:
    return f"{value.dtype}[{','.join(str(d) for d in value.shape)}]"


def check_feeds(specs: Sequence[TensorSpec], feeds: Any) -> dict[str, np.ndarray]:
    """Return C-contiguous arrays for ``feeds``, or raise `InputError` saying what is wrong.

    Every input must be present, named exactly, a numpy array (or numpy scalar), and match its
    compiled dtype and static shape, or, over dynamic dims, lie within each dim's range with
    one value per dim across the inputs. The message names what was expected and what came:
    ``input 'input_ids': expected int64[1,128], got float32[1,64]``.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(
            f"feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}; "
            f"the inputs are {[s.name for s in specs]}"
        )
    names = [s.name for s in specs]
    unknown = [k for k in feeds if k not in names]
    missing = [n for n in names if n not in feeds]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {[str(k) for k in unknown]}")
        want = ", ".join(f"{s.name}: {s.describe()}" for s in specs)
        raise InputError(f"inputs do not match the model: {'; '.join(parts)}; expected {{{want}}}")
    out: dict[str, np.ndarray] = {}
    seen: dict[str, tuple[str, int]] = {}  # dynamic dim -> (input that fixed it, value)
    for spec in specs:
        value = feeds[spec.name]
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise InputError(
                f"input {spec.name!r}: expected a numpy array {spec.describe()}, got "
                f"{type(value).__name__}; wrap it with np.asarray(..., dtype=np.{spec.dtype})"
            )
        # min_shape, not is_static: a static request pays one attribute read for dynamic dims
        if spec.min_shape and str(value.dtype) == spec.dtype and value.ndim == len(spec.shape):
            _check_dims(spec, value, seen)
        elif str(value.dtype) != spec.dtype or tuple(value.shape) != spec.shape:
            hint = ""
            fits = tuple(value.shape) == spec.shape or (not spec.is_static and value.ndim == len(spec.shape))
            if str(value.dtype) != spec.dtype and fits:
                hint = f"; convert with .astype(np.{spec.dtype})"
            elif not fits and spec.is_static:
                hint = ("; the pipeline runs the static shapes it was compiled for (split a batch with "
                        "split_batch=True, or compile with dynamic_dims= to take other shapes)")
            elif not fits:
                hint = f"; it takes {len(spec.shape)} dims"
            raise InputError(
                f"input {spec.name!r}: expected {spec.describe()}, got {_describe(value)}{hint}"
            )
        if value.dtype == object:
            raise InputError(f"input {spec.name!r}: object arrays are not supported")
        # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
        value = np.asarray(value)
        out[spec.name] = value if value.flags.c_contiguous else np.ascontiguousarray(value)
    _check_sums(seen)
    return out


def _check_sums(seen: Mapping[str, tuple[str, int]]) -> None:
    """A dim named as a sum (``"past + sequence"``) equals its parts' sum where they are seen."""
    values = {name: v for name, (_, v) in seen.items()}
    for name, (where, size) in seen.items():
        parts = dim_parts(name)
        want = dim_value(" + ".join(parts), {p: values[p] for p in parts if p in values}) if len(parts) > 1 else None
        if want is not None and want != size:
            raise InputError(
                f"input {where!r}: dim {name!r} is {size}, but its parts add up to {want} "
                f"({', '.join(f'{p}={values[p]}' for p in parts)}); e.g. a decoder's attention mask spans "
                "the past and the new tokens")


# -- dynamic dims -------------------------------------------------------------------------------
def _check_dims(spec: TensorSpec, value: np.ndarray, seen: dict[str, tuple[str, int]]) -> None:
    """Each axis of ``value`` within its range, and each dynamic dim the same in every input
    (``seen``: the values met so far): a ragged batch or mismatched lengths fail here."""
    for axis, ((lo, hi), size) in enumerate(zip(spec.ranges(), value.shape)):
        name = spec.dims[axis]
        what = f"dim {name!r} (axis {axis})" if name else f"axis {axis}"
        if not lo <= size <= hi:
            hint = "; split a larger batch with submit(..., split_batch=True)" if size > hi and axis == 0 else ""
            raise InputError(
                f"input {spec.name!r}: {what} is {size}, outside its range {lo}..{hi} "
                f"(expected {spec.describe()}, got {_describe(value)}){hint}")
        if name is None or lo == hi:
            continue
        if name in seen and seen[name][1] != size:
            first, had = seen[name]
            raise InputError(
                f"inputs disagree on dim {name!r}: {first!r} has {had}, {spec.name!r} has {size}; "
                "every input carrying a dim must have the same size along it")
        seen.setdefault(name, (spec.name, int(size)))


def feed_dims(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The value of each dynamic dim in checked ``feeds`` (empty for static inputs)."""
    out: dict[str, int] = {}
    for spec in specs:
        if spec.is_static:
            continue
        for axis, name in enumerate(spec.dims):
            if name is not None:
                out.setdefault(name, int(feeds[spec.name].shape[axis]))
    return out


def expected_dims(spec: TensorSpec) -> tuple[Dim, ...]:
    """The dims ``spec`` allows: its static shape; over dynamic dims, each varying axis within
    its range; for a data-dependent tensor (``dynamic``) any size per dim, the whole within
    the compiled bytes."""
    if spec.dynamic:
        return tuple((0, None) for _ in spec.shape)
    if spec.is_static:
        return spec.shape
    return tuple(hi if lo == hi else (lo, hi) for lo, hi in spec.ranges())


def tensor_problem(spec: TensorSpec, value: np.ndarray, dims: Sequence[Dim] | None = None) -> str | None:
    """Why ``value`` does not fit ``spec`` (dtype; rank; each dim exact or within its range;
    bytes within the compiled size), in words; None when it fits. ``dims``: the allowed dims
    (default `expected_dims`). Costs a dtype and a shape comparison when it fits statically.
    """
    if value.dtype != spec.dtype:
        return f"is {value.dtype}, compiled as {spec.dtype}"
    if value.shape == spec.shape and not spec.dynamic:
        return None
    want = expected_dims(spec) if dims is None else tuple(dims)
    got = f"{_describe(value)}"
    if value.ndim != len(want):
        return f"came out {got}, with {value.ndim} dims; compiled as {spec.describe()}"
    for i, (d, w) in enumerate(zip(value.shape, want)):
        if isinstance(w, int):
            if d != w:
                return f"came out {got}; compiled as {spec.describe()} (dim {i} is {d}, not {w})"
        elif d < w[0] or (w[1] is not None and d > w[1]):
            top = "" if w[1] is None else f"..{w[1]}"
            return f"came out {got}; compiled as {spec.describe()} (dim {i} is {d}, outside {w[0]}{top})"
    if value.nbytes > spec.nbytes:
        return (f"came out {got}, larger than the compiled {spec.describe()} ({value.nbytes} bytes, room for "
                f"{spec.nbytes}): sizes from request data may make a tensor smaller, never larger; "
                "compile with example inputs of the largest size")
    return None
