"""The ``corepipe`` command line: ``compile``, ``inspect``, ``run``, ``demo`` (and ``bench``).

``app`` is the typer application; other modules add commands to it (see ``bench`` below).
"""

from __future__ import annotations

from . import commands, demo  # noqa: F401  (importing them registers their commands on `app`)
from ._app import app

__all__ = ["app", "main"]

# ---- `corepipe bench` -------------------------------------------------------------------------
# Owned by corepipe/bench.py, which adds its command with `register(app: typer.Typer) -> None`.
# Tolerated: no corepipe.bench, or one without `register` yet (both ImportErrors name
# corepipe.bench). A failing import *inside* bench (another name) still raises, loudly.
try:
    from ..bench import register as _register_bench  # type: ignore[attr-defined,unused-ignore]
except ImportError as _exc:
    if _exc.name != "corepipe.bench":
        raise
else:
    _register_bench(app)


def main() -> None:
    """Console-script entry point (``corepipe``)."""
    app(prog_name="corepipe")
