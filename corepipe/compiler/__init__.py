"""Compiler: model in, verified artifact out.

Its modules live in rooms, each importing only the rooms below it (`tests/test_layout.py`
holds the order and enforces it):

    driver (`compile`) ─► front ─► cut ─► checks ─► model
           └──────────► shaping ─► cut, model
           └──────────► decoder ─► cut, model

``model`` reads the model (load, check, fold constants, shapes: `analyze`); ``checks`` finds where
request data reaches an operand the fast engine does not check; ``cut`` is the cut (cost, the pure
``solver``, stage graphs, each stage's engine, measured balance, the stages written); ``shaping``
(dynamic dims, buckets) and ``decoder`` (decoders that keep their KV) sit above the cut, whose
stages they time and write; ``front`` is what `compile` is handed (flags, the model's source).
``graph`` re-exports `model.graph` for the README's ``corepipe.compiler.graph.analyze``.
"""

from __future__ import annotations

from .driver import CompiledModel, Progress, compile, parse_compiler_args

__all__ = ["compile", "CompiledModel", "parse_compiler_args", "Progress"]
