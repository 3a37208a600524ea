"""What a bench of mixed traffic compiles and sends: the dims it frees, the requests of each
setup, and the static pipeline it is set against.

With ``lengths`` (`corepipe.bench.lengths`) the pipeline is compiled with those dims free
(``dynamic_dims``, buckets chosen for the traffic) and every setup gets the same requests:
the peers run them natively on the model's own symbolic dims (OpenVINO's model reshaped to
the same bounded ranges as corepipe's stages), and a static pipeline, compiled at the largest
shape as today, gets each one padded to it: the *padded static* row. With ``max_batch`` the
model's batch dim is freed up to it and clients send batch-1 requests in a closed loop; the
static pipeline is then corepipe *without batching*, and OpenVINO THROUGHPUT runs once per
batch size a server could merge its clients into (1, 2, 4, ... ``max_batch``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..artifact.dims import ShapeProfile, check_dims
from ..errors import CorepipeError
from .lengths import (
    batch_axis_dim,
    check_in_range,
    input_axes,
    name_profile,
    pad_request,
    parse_lengths,
    request_at,
)
from .traffic import Traffic

__all__ = ["MixedTraffic", "plan_mixed", "batch_sizes", "profile_words"]


def profile_words(profile: ShapeProfile, name: str) -> str:
    """What ``profile`` gives dim ``name``, in words: ``"125 lengths 4..128, median 24"``."""
    values = [dict(d)[name] for d, _ in profile.points if name in dict(d)]
    distinct = len(set(values))
    return (f"{distinct} lengths {min(values)}..{max(values)}, median {profile.typical()[name]}" if distinct > 1
            else f"length {values[0]}")


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch`` (included): the batches OpenVINO THROUGHPUT is run at."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


@dataclass(frozen=True)
class MixedTraffic:
    """A bench over dynamic dims, worked out from the model before anything is compiled.

    Attributes:
        dims: the dims the pipeline frees, name -> (min, max).
        profile: the lengths drawn (named after the model's dims), or None (batching alone).
        axes: model input -> the symbolic dim of each axis.
        batch: the model's batch dim when ``max_batch`` merges along it.
        max_batch: dynamic batching's rows per merged request, or None.
    """

    dims: dict[str, tuple[int, int]]
    profile: ShapeProfile | None
    axes: dict[str, tuple[str | None, ...]]
    batch: str | None = None
    max_batch: int | None = None

    @property
    def largest(self) -> dict[str, int]:
        """The shape of the static pipeline: each varied dim at its largest (the batch at 1)."""
        return {d: (1 if d == self.batch else hi) for d, (_, hi) in self.dims.items()}

    def static_name(self) -> str:
        """The static pipeline's row."""
        if self.profile is None:
            return "corepipe without batching"
        return "corepipe padded static (" + ", ".join(
            f"{d} {v}" for d, v in self.largest.items() if d != self.batch) + ")"

    def describe(self, traffic: Traffic) -> str:
        """The traffic in words, for tables and RESULTS.md."""
        parts = []
        if self.profile is not None:
            drawn = traffic.draws()
            for name in self.profile.names:
                values = [d[name] for d in drawn if name in d]
                parts.append(f"{name} drawn from {profile_words(self.profile, name)} (seed {traffic.seed}; "
                             f"these {len(values)}: mean {np.mean(values):.1f}, {min(values)}..{max(values)})")
        if self.max_batch is not None:
            parts.append(f"dynamic batching up to {self.max_batch} along {self.batch!r}")
        if traffic.concurrency:
            parts.append(f"closed loop of {traffic.concurrency} clients")
        return "; ".join(parts)

    def example(self, base: Mapping[str, np.ndarray], at: Mapping[str, int]) -> dict[str, np.ndarray]:
        """``base`` cut or extended to the dims ``at`` (the others as they are)."""
        return request_at(base, self.axes, at)

    def requests(self, base: Mapping[str, np.ndarray], traffic: Traffic) -> list[dict[str, np.ndarray]]:
        """The requests every setup gets: ``base`` at each drawn shape (batch 1), or ``base``."""
        one = {self.batch: 1} if self.batch is not None else {}
        drawn = traffic.draws()
        if not drawn:
            return [self.example(base, one)]
        return [self.example(base, {**one, **d}) for d in drawn]

    def padded(self, reqs: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Each request padded to the static pipeline's shape."""
        return [pad_request(r, self.axes, self.largest) for r in reqs]

    def ov_ranges(self, example: Mapping[str, np.ndarray], batch: int = 1) -> dict[str, list[list[int]]]:
        """OpenVINO's model reshaped as corepipe's stages see it: each input's freed dims within
        their ranges (the batch fixed at ``batch`` when batching is a peer's own), the rest at
        the example's size."""
        out = {}
        for name, axes in self.axes.items():
            value = example[name]
            ranges = []
            for a, d in enumerate(axes[: value.ndim]):
                if d is not None and d == self.batch and self.max_batch is not None:
                    ranges.append([batch, batch])
                elif d is not None and d in self.dims and d != self.batch:
                    ranges.append(list(self.dims[d]))
                else:
                    ranges.append([int(value.shape[a])] * 2)
            out[name] = ranges
        return out


def plan_mixed(model: onnx.ModelProto, lengths: Any, max_batch: int | None,
               dynamic_dims: Mapping[str, Any] | None = None) -> MixedTraffic:
    """Work out a bench of mixed traffic on ``model`` (its graph; weights need not be loaded).

    Args:
        lengths: a `ShapeProfile` or ``--lengths`` text (`corepipe.bench.lengths`), or None.
        max_batch: dynamic batching up to this many rows, or None.
        dynamic_dims: the range to compile each dim for (default: the lengths' own, and the
            batch up to ``max_batch``).

    Raises:
        CorepipeError: lengths that do not parse or name no dim of the model; a length outside
            ``dynamic_dims``; ``max_batch`` on a model without a symbolic batch dim.
    """
    axes = input_axes(model)
    profile = name_profile(parse_lengths(lengths), model) if lengths is not None else None
    dims: dict[str, tuple[int, int]] = {}
    if profile is not None:
        for name in profile.names:
            values = [dict(d)[name] for d, _ in profile.points if name in dict(d)]
            dims[name] = (min(values), max(values))
    batch = None
    if max_batch is not None:
        if type(max_batch) is not int or max_batch < 1:
            raise CorepipeError(f"max_batch must be a positive int, got {max_batch!r}")
        batch = batch_axis_dim(model)
        if batch is None:
            raise CorepipeError(
                f"max_batch={max_batch} merges requests along the model's batch dim, and this model's inputs have "
                f"no symbolic dim on axis 0 ({', '.join(f'{k} {list(v)}' for k, v in axes.items())}): export it "
                "with a dynamic batch axis (torch.onnx.export(dynamic_axes={'input': {0: 'batch'}}))")
        dims[batch] = (1, max_batch)
    if dynamic_dims:
        try:
            given = check_dims(dynamic_dims)
        except ValueError as exc:
            raise CorepipeError(str(exc)) from None
        if profile is not None:
            check_in_range(profile, given, "the range given in dynamic_dims")
        dims.update(given)
    return MixedTraffic(dims=dims, profile=profile, axes=axes, batch=batch, max_batch=max_batch)
