"""The ``corepipe`` command line: ``compile``, ``inspect``, ``run``, ``generate``, ``demo``, ``bench`` and ``serve``.

``app`` is the typer application; other modules add commands to it (see ``bench`` below).
"""

from __future__ import annotations

from . import benchcmd, commands, demo, generate, serve, tunecmd  # noqa: F401  (importing them registers their commands on `app`)
from ._app import app

__all__ = ["app", "main"]

def main() -> None:
    """Console-script entry point (``corepipe``)."""
    app(prog_name="corepipe")
