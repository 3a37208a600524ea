"""Check requests against the model's input signature before they enter a pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .plan import TensorSpec

__all__ = ["check_feeds"]


def _describe(value: np.ndarray) -> str:
    return f"{value.dtype}[{','.join(str(d) for d in value.shape)}]"


def check_feeds(specs: Sequence[TensorSpec], feeds: Any) -> dict[str, np.ndarray]:
    """Return C-contiguous arrays for ``feeds``, or raise `InputError` saying what is wrong.

    Every input must be present, named exactly, a numpy array (or numpy scalar), and match its
    compiled dtype and static shape. The message names what was expected and what came:
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
    for spec in specs:
        value = feeds[spec.name]
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise InputError(
                f"input {spec.name!r}: expected a numpy array {spec.describe()}, got "
                f"{type(value).__name__}; wrap it with np.asarray(..., dtype=np.{spec.dtype})"
            )
        if str(value.dtype) != spec.dtype or tuple(value.shape) != spec.shape:
            hint = ""
            if str(value.dtype) != spec.dtype and tuple(value.shape) == spec.shape:
                hint = f"; convert with .astype(np.{spec.dtype})"
            elif tuple(value.shape) != spec.shape:
                hint = "; the pipeline runs the static shapes it was compiled for (batch 1)"
            raise InputError(
                f"input {spec.name!r}: expected {spec.describe()}, got {_describe(value)}{hint}"
            )
        if value.dtype == object:
            raise InputError(f"input {spec.name!r}: object arrays are not supported")
        # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
        value = np.asarray(value)
        out[spec.name] = value if value.flags.c_contiguous else np.ascontiguousarray(value)
    return out
