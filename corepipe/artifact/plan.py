"""Plans as data: tensor specs, stages and boundaries, with a JSON form that round-trips.

A `Plan` is what the compiler decided and what the manifest stores. It is validated before it
is written and after it is read (`Plan.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .decoder import DecoderSpec
from .deployment import Deployment
from .dims import SHAPE_MODES, Shapes, dim_value
from .target import Target
from .valuechecks import ValueCheck

__all__ = ["TensorSpec", "StagePlan", "Plan"]


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor with a numpy dtype name and a shape.

    ``shape`` is the largest shape the tensor takes: it sizes the hand-off buffers. A static
    tensor has exactly that shape. A tensor over dynamic dims (`corepipe.artifact.dims`) also
    has ``min_shape``, the smallest, and ``dims``: per axis, the dynamic dim it carries
    (``"sequence"``) or None (a static axis, or one that varies with no dim of its own).

    ``dynamic``: the shape depends on the data (NonZero, Unique...). ``shape`` is then the one
    seen on the example inputs, which sizes the hand-off buffers: a request may produce a
    smaller tensor, never a larger one.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: bool = False
    dims: tuple[str | None, ...] = ()
    min_shape: tuple[int, ...] = ()

    #: Largest tensor a manifest may declare (1 TiB): a bound on what a tampered one can ask.
    MAX_BYTES = 2**40

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))

    @property
    def is_static(self) -> bool:
        """Whether every request's tensor has exactly ``shape`` (no dynamic dims)."""
        return not self.min_shape

    def ranges(self) -> list[tuple[int, int]]:
        """``(min, max)`` of each axis."""
        low = self.min_shape or self.shape
        return list(zip(low, self.shape))

    def shape_for(self, values: Mapping[str, int]) -> tuple[int, ...] | None:
        """The shape when the dynamic dims take ``values`` (a sum dim: its parts' sum); None where
        an axis varies without a dim of its own (or a dim is not in ``values``)."""
        if self.is_static:
            return self.shape
        out = []
        for axis, (lo, hi) in enumerate(self.ranges()):
            name = self.dims[axis]
            if lo == hi:
                out.append(hi)
            elif name is not None and dim_value(name, values) is not None:
                out.append(int(dim_value(name, values) or 0))
            else:
                return None
        return tuple(out)

    def describe(self) -> str:
        """``float32[1,128]``, or ``int64[1,sequence=1..128]`` over dynamic dims: the form error
        messages use."""
        if self.is_static:
            return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"
        parts = []
        for axis, (lo, hi) in enumerate(self.ranges()):
            name = self.dims[axis]
            parts.append(str(hi) if lo == hi else f"{name + '=' if name else ''}{lo}..{hi}")
        return f"{self.dtype}[{','.join(parts)}]"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.dynamic:
            out["dynamic"] = True
        if not self.is_static:  # absent for static tensors, as before dynamic dims
            out["min_shape"] = list(self.min_shape)
            out["dims"] = list(self.dims)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        name, dims = data["name"], data["shape"]
        if not isinstance(name, str) or not isinstance(dims, list):
            raise ValueError(f"tensor spec {data!r} needs a string name and a list shape")
        if any(type(d) is not int or d < 0 or d > 2**40 for d in dims):
            raise ValueError(f"tensor {name!r} has a bad shape {dims!r}: dims are ints in 0..2**40")
        dynamic = data.get("dynamic", False)
        if type(dynamic) is not bool:
            raise ValueError(f"tensor {name!r}: 'dynamic' must be true or false")
        low, axes = data.get("min_shape", []), data.get("dims", [])
        if low or axes:
            if (not isinstance(low, list) or not isinstance(axes, list) or len(low) != len(dims)
                    or len(axes) != len(dims)):
                raise ValueError(f"tensor {name!r}: 'min_shape' and 'dims' need one entry per axis")
            if any(type(a) is not int or not 0 <= a <= b for a, b in zip(low, dims)):
                raise ValueError(f"tensor {name!r}: min_shape {low!r} must be ints within 0..shape {dims!r}")
            if any(a is not None and not isinstance(a, str) for a in axes):
                raise ValueError(f"tensor {name!r}: 'dims' are dim names or null, got {axes!r}")
        if list(low) == list(dims):  # nothing varies: a static tensor
            low, axes = [], []
        spec = cls(name=name, dtype=str(np.dtype(data["dtype"])), shape=tuple(dims), dynamic=dynamic,
                   dims=tuple(axes), min_shape=tuple(low))
        if spec.nbytes > cls.MAX_BYTES:
            raise ValueError(f"tensor {name!r} declares {spec.nbytes} bytes, over the 1 TiB limit")
        return spec


@dataclass(frozen=True)
class StagePlan:
    """One stage: a contiguous run ``node_start .. node_end - 1`` of the topological order.

    ``inputs`` are the boundary tensors its graph reads, ``outputs`` the ones it produces into
    the next boundary, and ``carried`` the ones it passes through untouched (read by a later
    stage, or a model output made earlier). ``measured_s`` is the stage's time alone on one
    core; ``loaded_s`` its busy time per request with every stage of the pipeline busy
    (``balance="load"``), which is what sets the throughput.

    ``engine`` (``"onnxruntime"`` or ``"openvino"``) runs it at ``precision`` (``"fp32"``,
    ``"bf16"`` or ``"fp16"``); ``fallback`` says why it runs on another engine than the one
    asked for (an op the other cannot run), or is None. ``snippets``: an OpenVINO stage runs
    with OpenVINO's snippets on (its check against onnxruntime passed with them); False where they
    computed it wrong, and in artifacts compiled before the choice, which were checked without.
    ``engine_why``: why this engine runs it (what was asked, what the other cannot run, or the
    one-core times that chose it); ``engine_s``: each engine's one-core seconds, where timed.

    ``shape_mode`` (plans over dynamic dims): ``"dynamic"``, one bounded dynamic graph runs
    every shape in range, or ``"buckets"``, one static graph per bucket of `Plan.shapes` (on
    onnxruntime, one session fed the bucket shapes); ``"static"`` otherwise. When a plan has
    buckets, requests are padded to their bucket at intake and every stage sees bucket shapes. ``shape_costs``: the stage's seconds at
    the smallest, typical and largest shapes (``min_s``, ``typical_s``, ``max_s``) and, where
    the compiler chose the mode by measuring, each mode's mean over the shape profile
    (``dynamic_s``, ``buckets_s``).
    """

    index: int
    node_start: int
    node_end: int
    first_node: str
    last_node: str
    first_op: str
    last_op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    carried: tuple[str, ...]
    weights: int
    resident_bytes: int
    estimated_s: float
    device: int
    core: int
    measured_s: float | None = None
    file: str = ""
    sha256: str = ""
    weights_file: str | None = None
    weights_sha256: str | None = None
    loaded_s: float | None = None
    engine: str = "onnxruntime"
    precision: str = "fp32"
    fallback: str | None = None
    shape_mode: str = "static"
    shape_costs: Mapping[str, float] | None = None
    snippets: bool = False
    engine_why: str | None = None
    engine_s: Mapping[str, float] | None = None

    #: What a manifest may name (a plan is untrusted data until validated).
    ENGINES = ("onnxruntime", "openvino")
    PRECISIONS = ("fp32", "bf16", "fp16")

    @property
    def num_nodes(self) -> int:
        return self.node_end - self.node_start

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("inputs", "outputs", "carried"):
            d[key] = list(d[key])
        if d["loaded_s"] is None:  # absent in artifacts balanced without load
            del d["loaded_s"]
        if d["shape_mode"] == "static":  # absent in plans without dynamic dims, as before them
            del d["shape_mode"]
        for key in ("engine_why", "engine_s", "shape_costs"):  # absent where not recorded, as before them
            if d[key] is None:
                del d[key]
            elif isinstance(d[key], Mapping):
                d[key] = dict(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        d = dict(data)
        for key in ("inputs", "outputs", "carried"):
            d[key] = tuple(str(x) for x in d[key])
        for key in ("engine", "precision"):
            if key in d and not isinstance(d[key], str):
                raise ValueError(f"stage {key} must be a string, got {d[key]!r}")
        if not isinstance(d.get("snippets", False), bool):
            raise ValueError(f"stage snippets must be true or false, got {d['snippets']!r}")
        for key in ("fallback", "engine_why"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"stage {key} must be a string or null, got {d[key]!r}")
        for key, what in (("engine_s", "engines"), ("shape_costs", "names")):
            found = d.get(key)
            if found is not None and (not isinstance(found, dict) or any(
                    not isinstance(k, str) or type(v) not in (int, float) for k, v in found.items())):
                raise ValueError(f"stage {key} must map {what} to seconds, got {found!r}")
        if d.get("shape_mode", "static") not in SHAPE_MODES:
            raise ValueError(f"stage shape_mode must be one of {list(SHAPE_MODES)}, got {d['shape_mode']!r}")
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """Stages + boundaries + costs. ``boundaries[k]`` feeds stage ``k``; the last feeds the client.

    ``deployment``: how to run it (replicas x threads per stage on K cores), when `tune` chose
    one or `compile` was given one; ``None`` leaves it to `load`'s arguments.

    ``shapes``: the dynamic dims requests may vary in, with their buckets and pad values
    (`corepipe.artifact.dims.Shapes`); ``None`` for a plan of static shapes.
    ``input_checks``: what request values the model's index and size operands allow, checked
    at intake (`corepipe.artifact.valuechecks`); absent from artifacts compiled before them.
    ``decoder``: a decoder's state pairs by stage and KV bounds (`corepipe.artifact.decoder`);
    None for other models. Its stages' graphs also read and write names no boundary holds.
    """

    target: Target
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    boundaries: tuple[tuple[TensorSpec, ...], ...]
    stages: tuple[StagePlan, ...]
    num_nodes: int
    balance: str = "estimate"
    notes: tuple[str, ...] = field(default=())
    deployment: Deployment | None = None
    shapes: Shapes | None = None
    input_checks: tuple[ValueCheck, ...] = ()
    decoder: DecoderSpec | None = None

    @property
    def num_cores(self) -> int:
        return len(self.stages)

    @property
    def resident_bytes(self) -> int:
        return sum(s.resident_bytes for s in self.stages)

    def stage_seconds(self) -> list[float]:
        """Each stage's time per request, the best figure the plan has (`stage_seconds_kind`):
        busy time under load where it was balanced under load, else measured alone on one core
        where it was balanced by measurement, else estimated."""
        kind = self.stage_seconds_kind()
        if kind == "under load":
            return [float(s.loaded_s or 0.0) for s in self.stages]
        return [s.measured_s if s.measured_s is not None else s.estimated_s for s in self.stages]

    def stage_seconds_kind(self) -> str:
        """Where `stage_seconds` come from: ``"under load"``, ``"measured alone"`` or ``"estimated"``."""
        if self.stages and all(s.loaded_s is not None for s in self.stages):
            return "under load"
        return "measured alone" if any(s.measured_s is not None for s in self.stages) else "estimated"

    def core_seconds(self) -> dict[tuple[int, int], float]:
        """Time per request of each ``(device, core)``: the times of the stages it runs, added
        up. The busiest core sets a pipeline's throughput."""
        out: dict[tuple[int, int], float] = {}
        for st, sec in zip(self.stages, self.stage_seconds()):
            out[(st.device, st.core)] = out.get((st.device, st.core), 0.0) + sec
        return out

    def validate(self) -> None:
        """Check the invariants a runtime relies on; raise ``ValueError`` naming the broken one
        (`corepipe.artifact.planchecks`)."""
        from .planchecks import validate_plan

        validate_plan(self)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "target": self.target.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "boundaries": [[t.to_dict() for t in b] for b in self.boundaries],
            "stages": [s.to_dict() for s in self.stages],
            "num_nodes": self.num_nodes,
            "balance": self.balance,
            "notes": list(self.notes),
        }
        if self.deployment is not None:  # absent in artifacts without one, as before
            out["deployment"] = self.deployment.to_dict()
        if self.shapes is not None:  # absent in plans of static shapes, as before dynamic dims
            out["shapes"] = self.shapes.to_dict()
        if self.input_checks:  # absent where there is nothing to check, as in older artifacts
            out["input_checks"] = [c.to_dict() for c in self.input_checks]
        if self.decoder is not None:  # absent for other models, as in older artifacts
            out["decoder"] = self.decoder.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            target=Target.from_dict(data["target"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            boundaries=tuple(tuple(TensorSpec.from_dict(t) for t in b) for b in data["boundaries"]),
            stages=tuple(StagePlan.from_dict(s) for s in data["stages"]),
            num_nodes=int(data["num_nodes"]),
            balance=str(data.get("balance", "estimate")),
            notes=tuple(str(x) for x in data.get("notes", ())),
            deployment=Deployment.from_dict(data["deployment"]) if data.get("deployment") is not None else None,
            shapes=Shapes.from_dict(data["shapes"]) if data.get("shapes") is not None else None,
            input_checks=tuple(ValueCheck.from_dict(c) for c in data.get("input_checks", [])),
            decoder=DecoderSpec.from_dict(data["decoder"]) if data.get("decoder") is not None else None,
        )
