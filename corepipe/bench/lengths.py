"""Mixed traffic for `corepipe.bench` and `corepipe.tune`: the lengths (or any dims) each request
brings, read from ``--lengths``, named after the model's dims, and made into requests.

``lengths`` takes a `ShapeProfile`, or text:

- ``8:128``: every length in 8..128 equally often;
- ``~24:128``: a log-normal with median 24, capped at 128 (short-heavy text: queries, chat);
- ``16,32,32,128``: the lengths seen (repeats count);
- any of them named, ``sequence=8:128``, ``sequence~24:128``; unnamed, they apply to the
  model's sequence dim (its one symbolic dim that is not the batch, axis 0);
- a file of the shapes seen: one request per line, ``37`` or ``sequence=37 batch=2``
  (``#`` starts a comment), or the JSON of `ShapeProfile.to_dict`.

Requests are drawn from the profile with a fixed seed, so every setup of a run, and every run,
gets the same ones; each is the example request cut or extended along its dims (keeping the
example's values: token ids stay within the vocabulary).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from ..artifact.dims import ShapeProfile
from ..compiler.shaping.dynamic import resize, symbolic_dims
from ..errors import CorepipeError

__all__ = ["UNNAMED", "parse_lengths", "name_profile", "input_axes", "batch_axis_dim", "request_at", "pad_request",
           "check_in_range"]

#: The dim name of a profile given without one: the model's sequence dim, resolved by `name_profile`.
UNNAMED = "*"
_FORMS = ("LO:HI (uniform), ~MEDIAN:CAP (log-normal), V,V,... (lengths seen), any of them as NAME=... or "
          "NAME~..., or a file with one request's length per line")


def parse_lengths(spec: str | os.PathLike[str] | ShapeProfile) -> ShapeProfile:
    """The profile ``spec`` describes (see the module docstring); unnamed dims are `UNNAMED`.

    Raises:
        CorepipeError: a spec that does not parse, or a file that does not, naming the line.
    """
    if isinstance(spec, ShapeProfile):
        return spec
    text = os.fspath(spec).strip()
    path = Path(text)
    if path.is_file():
        return _read_file(path)
    if os.sep in text or path.suffix in (".txt", ".json", ".csv"):
        raise CorepipeError(f"lengths file {text!r} does not exist; write {_FORMS}")
    named = text if re.match(r"[^=~\d\s]", text) else f"{UNNAMED}{'' if text.startswith('~') else '='}{text}"
    try:
        profile = ShapeProfile.parse(named)
    except ValueError:
        raise CorepipeError(f"cannot read lengths {text!r}: write {_FORMS}") from None
    if any(value < 1 for dims, _ in profile.points for _, value in dims):
        raise CorepipeError(f"lengths {text!r}: every length must be at least 1")
    return profile


def _read_file(path: Path) -> ShapeProfile:
    body = path.read_text()
    if body.lstrip().startswith("{"):
        try:
            return ShapeProfile.from_dict(json.loads(body))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise CorepipeError(f"{path}: not a shape profile's JSON ({exc}); write {_FORMS}") from None
    seen: dict[tuple[tuple[str, int], ...], float] = {}
    for number, line in enumerate(body.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        dims: dict[str, int] = {}
        for part in line.replace(",", " ").split():
            name, _, value = part.rpartition("=") if "=" in part else (UNNAMED, "=", part)
            if not value.isdigit() or int(value) < 1 or not name:
                raise CorepipeError(f"{path}, line {number}: cannot read {line!r}: write one request per line, "
                                    "its length (37) or its dims (sequence=37 batch=2)")
            dims[name] = int(value)
        key = tuple(sorted(dims.items()))
        seen[key] = seen.get(key, 0.0) + 1.0
    if not seen:
        raise CorepipeError(f"{path} holds no lengths: write one request per line, e.g. 37")
    return ShapeProfile(tuple(seen.items()))


def input_axes(model: onnx.ModelProto) -> dict[str, tuple[str | None, ...]]:
    """Each model input -> the symbolic dim of each axis (None: a fixed axis)."""
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: tuple(d.dim_param if d.HasField("dim_param") and d.dim_param else None
                           for d in vi.type.tensor_type.shape.dim)
            for vi in model.graph.input if vi.name not in inits}


def batch_axis_dim(model: onnx.ModelProto) -> str | None:
    """The symbolic dim on axis 0 of every input, if there is one."""
    firsts = {axes[0] if axes else None for axes in input_axes(model).values()}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def name_profile(profile: ShapeProfile, model: onnx.ModelProto) -> ShapeProfile:
    """``profile`` with `UNNAMED` replaced by the model's sequence dim.

    Raises:
        CorepipeError: a dim the model's inputs do not have, or no single sequence dim to give
            an unnamed one to; both list the model's symbolic dims.
    """
    axes = input_axes(model)
    found = sorted({d for dims in axes.values() for d in dims if d is not None})
    where = "; ".join(f"{k!r} ({', '.join(v)})" for k, v in symbolic_dims(model).items()) or "none"
    if UNNAMED in profile.names:
        batch = batch_axis_dim(model)
        pool = [d for d in found if d != batch]
        if len(pool) != 1:
            raise CorepipeError(
                "lengths need a model input with a symbolic sequence dim, and "
                + (f"this model has several ({where}): name the one meant, e.g. {pool[0]}=8:128" if pool else
                   f"this model has none besides its batch (its symbolic dims: {where}): export it with a dynamic "
                   "sequence axis (torch.onnx.export(dynamic_axes=...)), or name a dim, e.g. batch=1:8"))
        profile = ShapeProfile(tuple((tuple(sorted((pool[0] if n == UNNAMED else n, v) for n, v in dims)), w)
                                     for dims, w in profile.points))
    unknown = [n for n in profile.names if n not in found]
    if unknown:
        raise CorepipeError(f"lengths name {unknown}, which the model's inputs do not have; its symbolic dims: {where}")
    return profile


def check_in_range(profile: ShapeProfile, dims: Mapping[str, tuple[int, int]], what: str = "the compiled range"
                   ) -> None:
    """Raise `CorepipeError` when the profile brings a value outside ``dims``' ranges."""
    for name in profile.names:
        values = [dict(d)[name] for d, _ in profile.points if name in dict(d)]
        lo, hi = dims.get(name, (None, None))
        if lo is None or hi is None:
            raise CorepipeError(f"lengths vary dim {name!r}, which {what} does not free (it frees "
                                f"{sorted(dims) or 'none'}): add it, e.g. dynamic_dims={{{name!r}: (1, {max(values)})}}")
        if min(values) < lo or max(values) > hi:
            raise CorepipeError(
                f"lengths of {name!r} run {min(values)}..{max(values)}, outside {what} {lo}..{hi}: widen the "
                f"range (dynamic_dims={{{name!r}: ({min(lo, min(values))}, {max(hi, max(values))})}}) or keep the "
                f"lengths within {lo}..{hi}")


def request_at(example: Mapping[str, np.ndarray], axes: Mapping[str, Sequence[str | None]],
               dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The example request cut or extended to ``dims`` along the axes that carry them."""
    out = {}
    for name, value in example.items():
        for axis, dim in enumerate(axes.get(name, ())):
            if dim is not None and dim in dims and axis < value.ndim:
                value = resize(value, axis, dims[dim])
        out[name] = np.ascontiguousarray(value)
    return out


def pad_request(feeds: Mapping[str, np.ndarray], axes: Mapping[str, Sequence[str | None]], dims: Mapping[str, int],
                pad_values: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """``feeds`` padded at the end of each axis that carries one of ``dims`` up to its size
    there (with each input's pad value, default 0): a request as a static pipeline takes it."""
    out = {}
    for name, value in feeds.items():
        widths = [(0, max(0, dims[d] - value.shape[a])) if d is not None and d in dims else (0, 0)
                  for a, d in enumerate(axes.get(name, ()))][: value.ndim]
        widths += [(0, 0)] * (value.ndim - len(widths))
        if any(w for _, w in widths):
            fill = np.asarray((pad_values or {}).get(name, 0), value.dtype)
            value = np.pad(value, widths, mode="constant", constant_values=fill)
        out[name] = value
    return out
