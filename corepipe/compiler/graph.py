"""The README's path to the model's nodes: ``corepipe.compiler.graph.analyze(model).nodes`` (the
indices ``cuts=[...]`` takes). The model read lives in `corepipe.compiler.model.graph`; this
module only re-exports it, so the documented path keeps working.
"""

from __future__ import annotations

from .model.graph import ModelGraph, NodeInfo, analyze

__all__ = ["ModelGraph", "NodeInfo", "analyze"]
