"""The ``ray`` backend: one artifact across the machines of a Ray cluster, one actor per stage.

``corepipe.load(art, backend="ray", address=None | "auto" | "ray://host:port", ...)``; see
`RayPipeline` for the options. Ray itself is imported only when a pipeline starts, so this
package loads without it and says how to install it when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import RayPipeline

__all__ = ["RayPipeline"]


def __getattr__(name: str) -> Any:
    if name == "RayPipeline":
        from .cluster import import_ray

        import_ray()  # a clear error when Ray is missing
        from .pipeline import RayPipeline

        return RayPipeline
    raise AttributeError(name)
