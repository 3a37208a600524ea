"""Tuning: the (replicas, stages, threads) search space and its cost model, the choice by
objective on measured points, the capacity answer, and the picture. Pure numbers and plots:
`corepipe.cli.tune` measures the points (through the compiler, the runtime and bench's peers)
and feeds them here.
"""

from __future__ import annotations

from .capacity import CapacityAnswer, answer, parse_duration
from .choose import Point, choose, dominated_by, pareto_front
from .space import Candidate, CostModel, candidates, select, slowest_shares

__all__ = [
    "Candidate", "CostModel", "candidates", "select", "slowest_shares",
    "Point", "choose", "dominated_by", "pareto_front",
    "CapacityAnswer", "answer", "parse_duration",
]
