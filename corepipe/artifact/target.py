"""Targets: the hardware a plan is made for (devices x cores, memory per core, speeds)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import CompileError
from .sizes import parse_size

__all__ = ["Target", "resolve_target", "host_cores"]


def host_cores() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Target:
    """What a plan is made for. Speeds are per core; times are in seconds.

    A hand-off between two stages on the same device costs ``link_latency_s + bytes /
    link_bytes_per_s``; one that crosses devices costs the ``cross_device_*`` figures instead.
    """

    name: str
    devices: int
    cores_per_device: int
    core_memory: int
    flops_per_s: float
    mem_bytes_per_s: float
    node_overhead_s: float
    link_latency_s: float
    link_bytes_per_s: float
    cross_device_latency_s: float
    cross_device_bytes_per_s: float

    @property
    def total_cores(self) -> int:
        return self.devices * self.cores_per_device

    def place(self, stage: int) -> tuple[int, int]:
        """(device, core within device) of a stage; stages fill devices in order, wrapping."""
        core = stage % self.total_cores
        return core // self.cores_per_device, core % self.cores_per_device

    def crosses_device(self, boundary: int) -> bool:
        """Whether the hand-off from stage ``boundary - 1`` to stage ``boundary`` leaves a device."""
        return self.place(boundary - 1)[0] != self.place(boundary)[0]

    def handoff_s(self, nbytes: float, *, cross_device: bool) -> float:
        if cross_device:
            return self.cross_device_latency_s + nbytes / self.cross_device_bytes_per_s
        return self.link_latency_s + nbytes / self.link_bytes_per_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        """Build from plain data, checking every field's type (a manifest is untrusted)."""
        fields = cls.__dataclass_fields__
        unknown = sorted(set(data) - set(fields))
        missing = sorted(set(fields) - set(data))
        if unknown or missing:
            raise ValueError(f"target fields: unknown {unknown}, missing {missing}")
        for name in ("devices", "cores_per_device", "core_memory"):
            value = data[name]
            if type(value) is not int or value < 1:
                raise ValueError(f"target.{name} must be a positive int, got {value!r}")
        for name in fields:
            if name in ("name", "devices", "cores_per_device", "core_memory"):
                continue
            value = data[name]
            if type(value) not in (int, float) or not value >= 0:
                raise ValueError(f"target.{name} must be a non-negative number, got {value!r}")
        if not isinstance(data["name"], str):
            raise ValueError(f"target.name must be a string, got {data['name']!r}")
        return cls(**data)


def _cpu() -> Target:
    # Rough figures for one x86 core running onnxruntime at batch 1; only ratios between
    # nodes matter to the partitioner, and `--balance measure` replaces them with timings.
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a dependency, but stay robust
        total = 8 * 2**30
    cores = host_cores()
    return Target(
        name="cpu",
        devices=1,
        cores_per_device=cores,
        core_memory=total // cores,
        flops_per_s=130e9,  # peak-ish fp32 GEMM on one AVX-512 core; see cost._small_rows_penalty
        mem_bytes_per_s=20e9,
        node_overhead_s=4e-6,
        link_latency_s=40e-6,
        link_bytes_per_s=6e9,
        cross_device_latency_s=40e-6,
        cross_device_bytes_per_s=6e9,
    )


def _inf1() -> Target:
    # AWS Inferentia (inf1): 4 NeuronCores per chip, up to 16 chips. Static weights must fit
    # each core's on-chip cache; chip-to-chip hand-offs go over the slower ring.
    return Target(
        name="inf1",
        devices=16,
        cores_per_device=4,
        core_memory=24 * 2**20,
        flops_per_s=16e12,
        mem_bytes_per_s=50e9,
        node_overhead_s=2e-6,
        link_latency_s=10e-6,
        link_bytes_per_s=40e9,
        cross_device_latency_s=50e-6,
        cross_device_bytes_per_s=10e9,
    )


def _ray(nodes: int = 1024) -> Target:
    # A Ray cluster, one stage per node: ``core_memory`` is what one node may hold of resident
    # weights (by default a node like this host; declare the same with `ray start --memory`),
    # and every hand-off crosses the network (figures for 10 Gb/s Ethernet).
    cpu = _cpu()
    return Target(
        name="ray",
        devices=nodes,
        cores_per_device=1,
        core_memory=cpu.core_memory * cpu.cores_per_device,
        flops_per_s=cpu.flops_per_s,
        mem_bytes_per_s=cpu.mem_bytes_per_s,
        node_overhead_s=cpu.node_overhead_s,
        link_latency_s=200e-6,
        link_bytes_per_s=1.25e9,
        cross_device_latency_s=200e-6,
        cross_device_bytes_per_s=1.25e9,
    )


_TARGETS = {"cpu": _cpu, "inf1": _inf1, "ray": _ray}


def resolve_target(target: str | Target, core_memory: int | str | None = None) -> Target:
    """Turn a target name or object plus an optional core-memory override into a `Target`.

    Names: ``cpu`` (this host's cores), ``inf1`` (16 Inferentia devices x 4 cores), ``ray`` or
    ``ray:N`` (one stage per Ray node, up to N nodes; ``core_memory`` is a node's budget).

    Raises:
        CompileError: unknown target name or unreadable size.
    """
    name, _, count = target.partition(":") if isinstance(target, str) else ("", "", "")
    if isinstance(target, Target):
        resolved = target
    elif isinstance(target, str) and target in _TARGETS:
        resolved = _TARGETS[target]()
    elif name == "ray" and count.isdigit() and int(count) > 0:
        resolved = _ray(int(count))
    else:
        raise CompileError(
            f"unknown target {target!r}: use one of {sorted(_TARGETS)}, 'ray:N' (a cluster of N "
            "Ray nodes) or a corepipe.Target"
        )
    if core_memory is not None:
        try:
            resolved = replace(resolved, core_memory=parse_size(core_memory))
        except ValueError as exc:
            raise CompileError(f"core_memory: {exc}") from None
    return resolved
