"""Neuron-style compiler flags, read as they are written for ``neuron-cc`` / ``neuronx-cc``.

Cores: ``--static-weights``, ``--num-neuroncores N``, ``--neuroncore-pipeline-cores N``.
Precision, Neuron's casting flags mapped onto corepipe's precisions:

- ``--auto-cast none`` -> fp32; ``--auto-cast matmult|all`` -> the ``--auto-cast-type`` (bf16
  when not given, as on Neuron); ``--auto-cast-type T`` alone -> T (Neuron's default auto-cast
  is ``matmult``). Types: bf16, fp16; tf32 and fp8_e4m3 have no CPU kernels and are refused.
- ``--fp32-cast none`` -> fp32; ``matmult``, ``all``, ``matmult-bf16``, ``all-bf16`` -> bf16;
  ``matmult-fp16``, ``all-fp16`` -> fp16.

OpenVINO's bf16 casts matmuls and convolutions (and the ops between them that it can fuse), so
``matmult`` and ``all`` both mean corepipe's bf16. An unknown flag or value is an error, never
ignored; flags that contradict each other are too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import CompileError

__all__ = ["parse_compiler_args"]

_AUTO_CAST = ("none", "matmult", "all")
_CAST_TYPES = {"bf16": "bf16", "fp16": "fp16"}
_NO_CPU_TYPES = ("tf32", "fp8_e4m3")
_FP32_CAST = {"none": "fp32", "matmult": "bf16", "all": "bf16", "matmult-bf16": "bf16",
              "all-bf16": "bf16", "matmult-fp16": "fp16", "all-fp16": "fp16"}
_KNOWN = ("--static-weights, --num-neuroncores N, --neuroncore-pipeline-cores N, "
          "--auto-cast none|matmult|all, --auto-cast-type bf16|fp16, --fp32-cast METHOD")


def _value(items: list[str], i: int, name: str, inline: str | None) -> tuple[str, int]:
    """The flag's value (``--flag=value`` or ``--flag value``) and the index after it."""
    if inline is not None:
        return inline, i + 1
    if i + 1 >= len(items) or items[i + 1].startswith("--"):
        raise CompileError(f"{name} needs a value")
    return items[i + 1], i + 2


def parse_compiler_args(args: Sequence[str]) -> dict[str, Any]:
    """Read Neuron-style flags into compile options: ``num_cores``, ``static_weights`` and
    ``precision`` ("fp32", "bf16" or "fp16").

    Raises:
        CompileError: an unknown flag, a bad value, or two flags that disagree.

    Example:
        >>> parse_compiler_args(["--num-neuroncores", "4", "--auto-cast", "matmult"])
        {'num_cores': 4, 'precision': 'bf16'}
    """
    out: dict[str, Any] = {}
    items = list(args)
    auto_cast: str | None = None
    cast_type: str | None = None
    fp32_cast: str | None = None
    i = 0
    while i < len(items):
        flag = items[i]
        name, eq, inline = flag.partition("=")
        value_inline = inline if eq else None
        if name == "--static-weights":
            out["static_weights"] = True
            i += 1
        elif name in ("--num-neuroncores", "--neuroncore-pipeline-cores"):
            value = value_inline if eq else (items[i + 1] if i + 1 < len(items) else None)
            i += 1 if eq else 2
            if value is None or not value.isdigit() or int(value) < 1:
                raise CompileError(f"{name} needs a positive core count, got {value!r}")
            out["num_cores"] = int(value)
        elif name == "--auto-cast":
            auto_cast, i = _value(items, i, name, value_inline)
            if auto_cast not in _AUTO_CAST:
                raise CompileError(f"--auto-cast {auto_cast!r}: use one of {list(_AUTO_CAST)}")
        elif name == "--auto-cast-type":
            cast_type, i = _value(items, i, name, value_inline)
            if cast_type in _NO_CPU_TYPES:
                raise CompileError(
                    f"--auto-cast-type {cast_type}: no CPU engine has {cast_type} matmul kernels; "
                    "use bf16 (or fp16 on a CPU with fp16 math)")
            if cast_type not in _CAST_TYPES:
                raise CompileError(f"--auto-cast-type {cast_type!r}: use one of {list(_CAST_TYPES)}")
        elif name == "--fp32-cast":
            fp32_cast, i = _value(items, i, name, value_inline)
            if fp32_cast not in _FP32_CAST:
                raise CompileError(f"--fp32-cast {fp32_cast!r}: use one of {list(_FP32_CAST)}")
        else:
            raise CompileError(f"unknown compiler argument {flag!r}: corepipe understands {_KNOWN}")
    precision = _precision(auto_cast, cast_type, fp32_cast)
    if precision is not None:
        out["precision"] = precision
    return out


def _precision(auto_cast: str | None, cast_type: str | None, fp32_cast: str | None) -> str | None:
    from_auto: str | None = None
    if auto_cast == "none":
        from_auto = "fp32"
    elif auto_cast is not None or cast_type is not None:
        from_auto = _CAST_TYPES[cast_type or "bf16"]
    from_fp32 = _FP32_CAST[fp32_cast] if fp32_cast is not None else None
    if from_auto and from_fp32 and from_auto != from_fp32:
        raise CompileError(
            f"--auto-cast/--auto-cast-type ask for {from_auto} but --fp32-cast {fp32_cast} asks for "
            f"{from_fp32}; give one")
    return from_auto or from_fp32
