"""Buckets at the edges of a pipeline: pad a request up to its bucket, trim the answers back.

A plan with buckets (`corepipe.artifact.dims.Shapes.buckets`) runs every request at a bucket
shape: each bucketed dim is padded up to the smallest bucket that holds it, with each input's
pad value (0 unless ``pad_values`` says otherwise), and every output axis that carries a
bucketed dim is cut back to the request's own size. The compiler checks, before choosing
buckets, that padding changes no answer (`corepipe.compiler.shaping.shapemodes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .dims import Shapes, next_bucket
from .plan import TensorSpec
from .signature import feed_dims

__all__ = ["bucket_of", "pad_feeds", "trim_outputs"]


def bucket_of(shapes: Shapes, values: Mapping[str, int]) -> dict[str, int]:
    """The bucket of each bucketed dim for a request whose dims are ``values``."""
    return {dim: next_bucket(sizes, values[dim]) for dim, sizes in shapes.buckets.items() if dim in values}


def pad_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray], shapes: Shapes,
              to: Mapping[str, int] | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """``(padded feeds, the request's own dims)``: each input grown along its bucketed axes to
    the bucket (or to ``to``'s sizes) with its pad value. Inputs already there are not copied."""
    values = feed_dims(specs, feeds)
    target = dict(to) if to is not None else bucket_of(shapes, values)
    out = dict(feeds)
    for spec in specs:
        if spec.is_static:
            continue
        value = feeds[spec.name]
        widths = [(0, target[d] - value.shape[a]) if d in target else (0, 0) for a, d in enumerate(spec.dims)]
        if any(w for _, w in widths):
            fill = shapes.pad_values.get(spec.name, 0)
            out[spec.name] = np.pad(value, widths, mode="constant", constant_values=np.asarray(fill, value.dtype))
    return out, values


def trim_outputs(specs: Sequence[TensorSpec], outputs: Mapping[str, np.ndarray], values: Mapping[str, int],
                 padded: Sequence[str]) -> dict[str, np.ndarray]:
    """``outputs`` cut back along every axis that carries one of the ``padded`` dims to the
    request's own size in ``values`` (compact copies; the rest untouched)."""
    out = dict(outputs)
    for spec in specs:
        if spec.is_static:
            continue
        cuts = tuple(slice(0, values[d]) if d is not None and d in padded and d in values else slice(None)
                     for d in spec.dims)
        value = outputs[spec.name]
        if any(c.stop is not None and c.stop < n for c, n in zip(cuts, value.shape)):
            out[spec.name] = np.ascontiguousarray(value[cuts])
    return out
