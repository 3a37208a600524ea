"""Artifact: the plan as data (plan, target, signature) and the compiled directory on disk
(manifest, verification, model I/O). The bottom layer: it imports nothing else of corepipe but
`corepipe.errors`, so every other package may use it.
"""

from __future__ import annotations

from .deployment import Deployment
from .manifest import FORMAT, FORMAT_VERSION, Artifact, open_artifact, read_manifest
from .plan import Plan, StagePlan, TensorSpec
from .signature import check_feeds
from .sizes import format_bytes, parse_size
from .target import Target, host_cores, resolve_target
from .writer import republish_artifact, write_artifact

__all__ = [
    "FORMAT", "FORMAT_VERSION", "Artifact", "open_artifact", "read_manifest", "write_artifact", "republish_artifact",
    "Deployment", "Plan", "StagePlan", "TensorSpec", "check_feeds", "format_bytes", "parse_size",
    "Target", "host_cores", "resolve_target",
]
