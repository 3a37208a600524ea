"""Compiler: model in, verified artifact out.

``graph`` (load, check, analyze) and ``shapes`` (static shapes) -> ``cost`` (per-node time and
bytes) -> ``solver`` (pure: numbers in, stage boundaries out) -> ``partition`` (stage graphs and
plans) -> ``driver`` (`compile`, which writes the artifact). ``measure`` times candidate stages
on one core through the engines.
"""

from __future__ import annotations

from .driver import CompiledModel, Progress, compile, parse_compiler_args

__all__ = ["compile", "CompiledModel", "parse_compiler_args", "Progress"]
