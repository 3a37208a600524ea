"""Deployments as data: how an artifact's S stages run on K cores (R replicas x T threads).

A `Deployment` is what `corepipe tune` chose (or what `compile` was told) and what `load` and
`serve` use by default: ``replicas`` copies of the S-stage pipeline, each stage on
``threads_per_stage`` cores, so R x S x T cores in all, at most ``cores``. It also keeps the
figures it was chosen on, so `inspect` can say what to expect.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Deployment", "OBJECTIVES"]

#: What a deployment was chosen for: most requests per second, or lowest p50 latency.
OBJECTIVES = ("throughput", "latency")


def _positive_int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if type(value) is not int or value < 1:
        raise ValueError(f"deployment {key!r} must be a positive integer, got {value!r}")
    return value


def _optional_float(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or value < 0:
        raise ValueError(f"deployment {key!r} must be a non-negative number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Deployment:
    """R replicas x S stages x T threads per stage on ``cores`` cores (R x S x T <= cores).

    Attributes:
        replicas: copies of the whole pipeline; the client spreads requests across them.
        threads_per_stage: cores (and inference threads) of each stage.
        cores: the core count the deployment was made for (K).
        max_in_flight: requests in flight across all replicas it was measured with (``None``:
            the runtime's default).
        objective: ``"throughput"``, ``"latency"``, or ``""`` (given by hand).
        throughput, latency_p50_s, latency_p99_s: what was measured under load when it was
            chosen (``None`` when not measured).
        unit: what ``throughput`` counts per second and the latencies time: ``None`` (requests),
            or ``"token"`` for a decoder (tokens/s; latencies between tokens).
    """

    replicas: int = 1
    threads_per_stage: int = 1
    cores: int = 1
    max_in_flight: int | None = None
    objective: str = ""
    throughput: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    unit: str | None = None

    def cores_needed(self, stages: int) -> int:
        """R x S x T: the cores ``stages`` stages need in this deployment."""
        return self.replicas * stages * self.threads_per_stage

    def describe(self, stages: int) -> str:
        """``2 replicas x 4 stages x 2 threads = 16 cores``."""
        r, t = self.replicas, self.threads_per_stage
        return (f"{r} replica{'s' if r != 1 else ''} x {stages} stage{'s' if stages != 1 else ''} x "
                f"{t} thread{'s' if t != 1 else ''} = {self.cores_needed(stages)} cores")

    def validate(self, stages: int) -> None:
        """Raise ``ValueError`` unless R x S x T fits the deployment's cores."""
        if self.cores_needed(stages) > self.cores:
            raise ValueError(
                f"deployment {self.describe(stages)} exceeds the {self.cores} cores it is made for"
            )
        if self.objective not in ("", *OBJECTIVES):
            raise ValueError(f"deployment objective {self.objective!r} is not one of {list(OBJECTIVES)}")
        if self.unit not in (None, "token"):
            raise ValueError(f"deployment unit {self.unit!r} is not 'token' (or absent: requests)")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        if not isinstance(data, dict):
            raise ValueError(f"deployment must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"deployment has unknown fields {sorted(unknown)}")
        objective = data.get("objective", "")
        if not isinstance(objective, str):
            raise ValueError(f"deployment 'objective' must be a string, got {objective!r}")
        in_flight = data.get("max_in_flight")
        return cls(
            replicas=_positive_int(data, "replicas", 1),
            threads_per_stage=_positive_int(data, "threads_per_stage", 1),
            cores=_positive_int(data, "cores"),
            max_in_flight=None if in_flight is None else _positive_int(data, "max_in_flight"),
            objective=objective,
            throughput=_optional_float(data, "throughput"),
            latency_p50_s=_optional_float(data, "latency_p50_s"),
            latency_p99_s=_optional_float(data, "latency_p99_s"),
            unit=_unit(data.get("unit")),
        )


def _unit(value: Any) -> str | None:
    if value not in (None, "token"):
        raise ValueError(f"deployment 'unit' must be 'token' or absent, got {value!r}")
    return value  # type: ignore[no-any-return]
