"""What math this CPU does natively: fp32 always; bf16 and fp16 only with the instructions for them.

Precision choices hang on this: ``precision="auto"`` means bf16 where the CPU has native bf16
(avx512_bf16 or AMX-BF16), and bf16 or fp16 asked for where the CPU would only emulate it is
refused, never run down a silent slow path. Read from ``/proc/cpuinfo`` on Linux; elsewhere
from OpenVINO's ``OPTIMIZATION_CAPABILITIES`` when it is installed.

For tests, ``COREPIPE_CPU_MASK`` hides features from this detection, so that a machine with
bf16 can check what happens on one without: ``COREPIPE_CPU_MASK=bf16,fp16,amx`` makes corepipe
see an x86-64 CPU with neither bf16 nor fp16 math nor AMX (`MASK_WORDS`). Workers inherit it.
It changes what corepipe decides (``"auto"`` picks fp32, bf16 is refused), not what the CPU or
OpenVINO do: a stage compiled for fp32 runs fp32 either way. Not meant for production use.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

__all__ = ["MASK_ENV", "MASK_WORDS", "PRECISIONS", "CpuMath", "cpu_math", "mask_flags", "precision_problem"]

#: Precisions a stage may run at; "fp32" is exact (the reference), the others cast matmuls and
#: convolutions to 16 bits with fp32 accumulation.
PRECISIONS = ("fp32", "bf16", "fp16")

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "f16c")
_AMX = ("amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex")

#: The environment variable that hides CPU features from `cpu_math`, for tests (see the module).
MASK_ENV = "COREPIPE_CPU_MASK"
#: The words ``COREPIPE_CPU_MASK`` takes (comma-separated) and the flags each one hides; a flag
#: of ``_SHOWN`` may also be named on its own.
MASK_WORDS: dict[str, tuple[str, ...]] = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
    "amx": _AMX,
}


@dataclass(frozen=True)
class CpuMath:
    """The CPU's name and the instruction-set flags that matter for precision."""

    name: str
    flags: frozenset[str]
    #: flags the CPU has that ``COREPIPE_CPU_MASK`` hid (shown by `describe`, so an error
    #: never blames the CPU for what a test masked)
    masked: frozenset[str] = frozenset()

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
        text = ", ".join(shown) if shown else "no vector extensions listed"
        if self.masked:
            text += f"; {MASK_ENV} hides {', '.join(sorted(self.masked))}"
        return f"{self.name} ({text})"


def mask_flags(value: str) -> frozenset[str]:
    """The flags a ``COREPIPE_CPU_MASK`` value hides.

    Args:
        value: comma-separated words of `MASK_WORDS` (``"bf16,fp16,amx"``) or flag names.

    Returns:
        The instruction-set flags to hide (empty for an empty value).

    Raises:
        ValueError: a word that is neither a `MASK_WORDS` key nor a flag corepipe looks at.
    """
    out: set[str] = set()
    for word in (w.strip().lower() for w in value.split(",")):
        if not word:
            continue
        if word in MASK_WORDS:
            out.update(MASK_WORDS[word])
        elif word in _SHOWN or word in _AMX:
            out.add(word)
        else:
            raise ValueError(
                f"{MASK_ENV}={value!r}: unknown feature {word!r}; expected a comma-separated list of "
                f"{sorted(MASK_WORDS)} or flags among {sorted(set(_SHOWN) | set(_AMX))}, "
                f"e.g. {MASK_ENV}=bf16,fp16,amx (or unset it)")
    return frozenset(out)


@functools.lru_cache(maxsize=1)
def cpu_math() -> CpuMath:
    """This machine's `CpuMath` (read once per process), less what ``COREPIPE_CPU_MASK`` hides.

    Raises:
        ValueError: ``COREPIPE_CPU_MASK`` names something unknown (`mask_flags`).
    """
    hidden = mask_flags(os.environ.get(MASK_ENV, ""))
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
    return CpuMath(name, frozenset(flags - hidden), frozenset(flags & hidden))


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
