"""Engines: load one verified stage, bind its inputs and outputs in place, run it, and name the
failing node. The runtime's workers and the compiler's measurements use them; they use the
artifact layer only.
"""

from __future__ import annotations

from .ort import StageRunner, make_session, node_from_message

__all__ = ["StageRunner", "make_session", "node_from_message"]
