"""Variable shapes as data: named dynamic dims with their ranges, the buckets a stage pads to,
and shape profiles (what traffic looks like).

A model's symbolic dims (ONNX ``dim_param``: ``"batch"``, ``"sequence"``) are fixed by the
example inputs unless `compile` is given ``dynamic_dims={"sequence": (1, 128)}``: then every
request may bring any value in that range. `Shapes` is what a plan records about them; a
`ShapeProfile` is a weighted set of dim values (lengths seen in traffic) that the compiler
balances the cut for and that benchmarks draw requests from.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Shapes", "ShapeProfile", "check_dims", "next_bucket", "parse_dim_option", "parse_bucket_option",
           "SHAPE_MODES", "dim_parts", "dim_value"]

#: How a stage runs its shapes: as compiled (static), natively dynamic, or padded to buckets.
SHAPE_MODES = ("static", "dynamic", "buckets")
#: Largest value a dim may take (a bound on what a tampered manifest can ask).
_MAX_DIM = 2**31
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,120}$")


def dim_parts(name: str) -> tuple[str, ...]:
    """The dims a dim name adds up: ``"past_sequence_length + sequence_length"`` -> both names
    (ONNX exporters name a concatenated axis so); ``"sequence"`` -> itself. ``ValueError`` where
    a part is not a symbolic dim name."""
    parts = tuple(p.strip() for p in name.split("+")) if isinstance(name, str) else (name,)
    if not parts or any(not isinstance(p, str) or not _NAME.match(p) for p in parts) or len(parts) > 8:
        raise ValueError(f"dynamic dim name {name!r} is not a symbolic dim name (nor a sum of them, 'a + b')")
    return parts


def dim_value(name: str, values: Mapping[str, int]) -> int | None:
    """The value of dim ``name`` in ``values``: its own, else the sum of its parts' (None where
    one is missing)."""
    if name in values:
        return int(values[name])
    parts = dim_parts(name)
    if len(parts) < 2 or any(p not in values for p in parts):
        return None
    return sum(int(values[p]) for p in parts)


def check_dims(dims: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{name: (min, max)}`` with ints, 0 <= min <= max, max >= 1 (a decoder's past may be
    empty); a name may be a sum of dims (``"past + sequence"``). ``ValueError`` names the bad one."""
    if not isinstance(dims, Mapping):
        raise ValueError(f"dynamic dims must be a dict of dim name -> (min, max), got {type(dims).__name__}")
    out: dict[str, tuple[int, int]] = {}
    for name, rng in dims.items():
        dim_parts(name)
        if (not isinstance(rng, (tuple, list)) or len(rng) != 2
                or any(type(v) is not int and not isinstance(v, np.integer) for v in rng)):
            raise ValueError(f"dynamic dim {name!r}: give its range as (min, max) ints, got {rng!r}")
        lo, hi = int(rng[0]), int(rng[1])
        if not 0 <= lo <= hi <= _MAX_DIM or hi < 1:
            raise ValueError(f"dynamic dim {name!r}: range ({lo}, {hi}) needs 0 <= min <= max and max >= 1")
        out[name] = (lo, hi)
    return out


def next_bucket(sizes: Sequence[int], value: int) -> int:
    """The smallest bucket size >= ``value`` (``sizes`` ascending); ``ValueError`` past the last."""
    i = bisect.bisect_left(sizes, value)
    if i == len(sizes):
        raise ValueError(f"{value} is over the largest bucket {sizes[-1]}")
    return int(sizes[i])


def parse_dim_option(text: str) -> tuple[str, tuple[int, int]]:
    """``"sequence=1:128"`` -> ``("sequence", (1, 128))`` (the CLI's ``--dynamic``); a sum dim
    as ``"past + sequence=1:128"``."""
    m = re.fullmatch(r"\s*([^=]+?)\s*=\s*([0-9]+)\s*:\s*([0-9]+)\s*", text)
    if m is None:
        raise ValueError(f"cannot read {text!r} as a dynamic dim: write NAME=MIN:MAX, e.g. sequence=1:128")
    name, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
    return name, check_dims({name: (lo, hi)})[name]


def parse_bucket_option(text: str) -> tuple[str, tuple[int, ...]]:
    """``"sequence=16,32,64,128"`` -> ``("sequence", (16, 32, 64, 128))`` (the CLI's ``--buckets``)."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*([0-9][0-9,\s]*)", text)
    sizes = [int(v) for v in m.group(2).replace(" ", "").split(",") if v] if m else []
    if m is None or not sizes:
        raise ValueError(f"cannot read {text!r} as buckets: write NAME=SIZE,SIZE,..., e.g. sequence=16,32,64,128")
    return m.group(1), tuple(sizes)


@dataclass(frozen=True)
class ShapeProfile:
    """Weighted values of dynamic dims: ``points[i] = ({dim: value}, weight)``.

    What traffic looks like, for balancing a cut (`corepipe.compile`'s ``shape_profile=``),
    choosing buckets, and drawing benchmark requests (`sample`). Build one with `of`,
    `uniform`, `lognormal` or `parse`.

    >>> ShapeProfile.of("sequence", {16: 3, 128: 1}).typical()
    {'sequence': 16}
    """

    points: tuple[tuple[tuple[tuple[str, int], ...], float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a shape profile needs at least one point")
        for dims, weight in self.points:
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"shape profile weights are positive numbers, got {weight!r}")
            for name, value in dims:
                if not isinstance(name, str) or type(value) is not int or not 0 <= value <= _MAX_DIM:
                    raise ValueError(f"shape profile point {dict(dims)!r}: dims are name -> int >= 0")

    @classmethod
    def of(cls, name: str, values: Mapping[int, float] | Iterable[int]) -> ShapeProfile:
        """One dim's values: ``{value: weight}``, or a list of values seen (repeats count)."""
        counts: dict[int, float] = {}
        items = values.items() if isinstance(values, Mapping) else ((v, 1.0) for v in values)
        for value, weight in items:
            counts[int(value)] = counts.get(int(value), 0.0) + float(weight)
        return cls(tuple((((name, v),), w) for v, w in sorted(counts.items())))

    @classmethod
    def uniform(cls, name: str, lo: int, hi: int) -> ShapeProfile:
        """Every value of ``name`` in ``lo..hi`` equally often."""
        if not 0 <= lo <= hi:
            raise ValueError(f"uniform profile of {name!r}: need 0 <= {lo} <= {hi}")
        return cls.of(name, range(lo, hi + 1))

    @classmethod
    def lognormal(cls, name: str, median: float, cap: int, *, sigma: float = 0.8, samples: int = 4096,
                  seed: int = 0, low: int = 1) -> ShapeProfile:
        """Values drawn with a fixed ``seed`` from a log-normal with this ``median``, rounded and
        clipped to ``low..cap``: short-heavy text traffic (queries, chat messages)."""
        rng = np.random.default_rng(seed)
        draws = np.clip(np.rint(rng.lognormal(math.log(median), sigma, samples)), low, cap).astype(int)
        return cls.of(name, (int(v) for v in draws))

    @classmethod
    def parse(cls, text: str) -> ShapeProfile:
        """``"sequence=8:128"`` (uniform), ``"sequence=16,32,32,128"`` (values seen) or
        ``"sequence~24:128"`` (log-normal, median 24, capped at 128)."""
        m = re.fullmatch(r"\s*([^=~\s]+)\s*([=~])\s*(.+?)\s*", text)
        if m is not None:
            name, kind, body = m.groups()
            nums = re.fullmatch(r"([0-9]+)\s*:\s*([0-9]+)", body)
            if nums is not None:
                lo, hi = int(nums.group(1)), int(nums.group(2))
                return cls.lognormal(name, lo, hi) if kind == "~" else cls.uniform(name, lo, hi)
            if kind == "=" and re.fullmatch(r"[0-9][0-9,\s]*", body):
                return cls.of(name, (int(v) for v in body.replace(" ", "").split(",") if v))
        raise ValueError(
            f"cannot read {text!r} as a shape profile: write NAME=LO:HI (uniform), NAME=V,V,... "
            "(values seen) or NAME~MEDIAN:CAP (log-normal)")

    def __repr__(self) -> str:
        parts = []
        for name in self.names:
            values = [dict(d)[name] for d, _ in self.points if name in dict(d)]
            parts.append(f"{name}: {len(set(values))} values {min(values)}..{max(values)}, median {self.typical()[name]}")
        return f"ShapeProfile({'; '.join(parts)})"

    @property
    def names(self) -> list[str]:
        return sorted({name for dims, _ in self.points for name, _ in dims})

    def weighted(self) -> list[tuple[dict[str, int], float]]:
        """``(dims, weight)`` pairs with weights summing to 1."""
        total = sum(w for _, w in self.points)
        return [(dict(dims), w / total) for dims, w in self.points]

    def typical(self) -> dict[str, int]:
        """The weighted median of each dim."""
        out = {}
        for name in self.names:
            pairs = sorted((dict(d)[name], w) for d, w in self.points if name in dict(d))
            half, acc = sum(w for _, w in pairs) / 2, 0.0
            for value, weight in pairs:
                acc += weight
                if acc >= half:
                    out[name] = value
                    break
        return out

    def sample(self, n: int, seed: int = 0) -> list[dict[str, int]]:
        """``n`` dim assignments drawn with replacement by weight (fixed ``seed``)."""
        weights = np.array([w for _, w in self.points], dtype=np.float64)
        picks = np.random.default_rng(seed).choice(len(self.points), size=n, p=weights / weights.sum())
        return [dict(self.points[int(i)][0]) for i in picks]

    def to_dict(self) -> dict[str, Any]:
        return {"points": [[dict(dims), w] for dims, w in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeProfile:
        points = data["points"]
        if not isinstance(points, list):
            raise ValueError("a shape profile's points are a list of [dims, weight]")
        return cls(tuple((tuple(sorted((str(k), v) for k, v in dict(p[0]).items())), p[1]) for p in points))


@dataclass(frozen=True)
class Shapes:
    """What a plan records about its dynamic dims.

    Attributes:
        dims: dim name -> (min, max) a request may bring.
        buckets: dim name -> bucket sizes (ascending, the last is the max) that stages running
            in ``"buckets"`` mode pad to; empty when no stage does.
        pad_values: model input -> the value padding fills it with (absent: 0).
        batch: the dim that is axis 0 of every input and output (batches merge along it), or None.
        profile: the shapes the cut was balanced for (None: the example's).
    """

    dims: Mapping[str, tuple[int, int]]
    buckets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    pad_values: Mapping[str, float] = field(default_factory=dict)
    batch: str | None = None
    profile: ShapeProfile | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` on a range, bucket list or batch dim that does not hold together."""
        dims = check_dims(self.dims)
        for name, sizes in self.buckets.items():
            if name not in dims:
                raise ValueError(f"buckets name {name!r}, which is not a dynamic dim ({sorted(dims)})")
            lo, hi = dims[name]
            if (not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < lo or sizes[-1] != hi
                    or any(type(s) is not int for s in sizes)):
                raise ValueError(
                    f"buckets of {name!r} must be increasing ints within {lo}..{hi} ending at {hi}, got {list(sizes)}")
        if self.batch is not None and self.batch not in dims:
            raise ValueError(f"batch dim {self.batch!r} is not a dynamic dim ({sorted(dims)})")
        for name, value in self.pad_values.items():
            if not isinstance(name, str) or type(value) not in (int, float) or not math.isfinite(value):
                raise ValueError(f"pad value of {name!r} must be a finite number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dims": {k: list(v) for k, v in self.dims.items()}}
        if self.buckets:
            out["buckets"] = {k: list(v) for k, v in self.buckets.items()}
        if self.pad_values:
            out["pad_values"] = dict(self.pad_values)
        if self.batch is not None:
            out["batch"] = self.batch
        if self.profile is not None:
            out["profile"] = self.profile.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shapes:
        shapes = cls(
            dims={str(k): tuple(v) for k, v in data["dims"].items()},  # type: ignore[misc]
            buckets={str(k): tuple(v) for k, v in data.get("buckets", {}).items()},
            pad_values=dict(data.get("pad_values", {})),
            batch=data.get("batch"),
            profile=ShapeProfile.from_dict(data["profile"]) if data.get("profile") is not None else None,
        )
        shapes.validate()
        return shapes
