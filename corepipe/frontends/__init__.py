"""Front-ends: turn framework models into ONNX for the compiler. Each framework is optional and
imported lazily, so ``import corepipe.frontends`` costs nothing until one is used.
"""

from __future__ import annotations

from .torch import build_transformers, export_torch, export_transformers

__all__ = ["build_transformers", "export_torch", "export_transformers"]
