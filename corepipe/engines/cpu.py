"""What math this CPU does natively: fp32 always; bf16 and fp16 only with the instructions for them.

Precision choices hang on this: ``precision="auto"`` means bf16 where the CPU has native bf16
(avx512_bf16 or AMX-BF16), and bf16 or fp16 asked for where the CPU would only emulate it is
refused, never run down a silent slow path. Read from ``/proc/cpuinfo`` on Linux; elsewhere
from OpenVINO's ``OPTIMIZATION_CAPABILITIES`` when it is installed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = ["PRECISIONS", "CpuMath", "cpu_math", "precision_problem"]

#: Precisions a stage may run at; "fp32" is exact (the reference), the others cast matmuls and
#: convolutions to 16 bits with fp32 accumulation.
PRECISIONS = ("fp32", "bf16", "fp16")

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "f16c")


@dataclass(frozen=True)
class CpuMath:
    """The CPU's name and the instruction-set flags that matter for precision."""

    name: str
    flags: frozenset[str]

    @property
    def bf16(self) -> bool:
        """Native bf16 dot products (avx512_bf16 or AMX-BF16)."""
        return any(f in self.flags for f in _BF16_FLAGS)

    @property
    def fp16(self) -> bool:
        """Native fp16 arithmetic (avx512_fp16 or AMX-FP16); f16c only converts, it does no math."""
        return any(f in self.flags for f in _FP16_FLAGS)

    def describe(self) -> str:
        """``'AMD EPYC (avx2, avx512f, avx512_bf16)'``: the name and the flags that matter."""
        shown = [f for f in _SHOWN if f in self.flags]
        return f"{self.name} ({', '.join(shown) if shown else 'no vector extensions listed'})"


@functools.lru_cache(maxsize=1)
def cpu_math() -> CpuMath:
    """This machine's `CpuMath` (read once per process)."""
    name, flags = "this CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "this CPU":
                    name = value.strip() or name
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        try:  # not Linux: ask OpenVINO, which knows the instruction sets it dispatches on
            import openvino as ov

            caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            flags = {"avx512_bf16"} if "BF16" in caps else set()
            flags |= {"avx512_fp16"} if "FP16" in caps else set()
        except Exception:
            pass
    return CpuMath(name, frozenset(flags))


def precision_problem(precision: str, cpu: CpuMath | None = None) -> str | None:
    """Why ``precision`` cannot run fast on ``cpu`` (default: this one), or None when it can.

    Example:
        >>> precision_problem("fp32") is None
        True
    """
    cpu = cpu or cpu_math()
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}: use one of {list(PRECISIONS)} or 'auto'"
    if precision == "bf16" and not cpu.bf16:
        return (f"bf16 needs native bf16 math (avx512_bf16 or amx_bf16), and this CPU, "
                f"{cpu.describe()}, has none: it would only emulate bf16, slower than fp32; "
                "use precision='fp32' (or 'auto', which picks bf16 only where the CPU has it)")
    if precision == "fp16" and not cpu.fp16:
        has = "bf16 (use precision='bf16')" if cpu.bf16 else "fp32 only (use precision='fp32')"
        return (f"fp16 needs native fp16 math (avx512_fp16 or amx_fp16), and this CPU, "
                f"{cpu.describe()}, has none: it does {has}")
    return None
