"""Tuning: find the deployment (R replicas x S stages x T threads per stage) of a model on K cores
by measurement, against the peers, and answer capacity questions.

``corepipe.tune(...)`` is `tune` (the package's name is taken by the function at the top level:
import the types from here, ``from corepipe.tune import TuneResult``).

- `space`: the search space (`SearchSpace`, `Candidate`) and the cost model that prunes it;
- `choose`: measured points, the Pareto front, the choice by objective;
- `capacity`: cores and replicas for a request rate within a p99 budget;
- `measure`: the peers (bench's harness) and the candidates, measured under load;
- `search`: the loop that ties them together and writes the artifact; `result`: what it found;
- `decoder`: the same search for a decoder, in tokens (`pipe.generate` under a workload);
- `record`: the board of points measured and the tuned artifact written (both searches);
- `plot`: the picture (``tune.png``).
"""

from __future__ import annotations

from .capacity import CapacityAnswer, answer, parse_duration
from .choose import Point, choose, dominated_by, pareto_front
from .result import TuneResult
from .search import TuneProgress, tune
from .space import Candidate, CostModel, SearchSpace, candidates, select, slowest_shares

__all__ = [
    "tune", "TuneResult", "TuneProgress",
    "SearchSpace", "Candidate", "CostModel", "candidates", "select", "slowest_shares",
    "Point", "choose", "dominated_by", "pareto_front",
    "CapacityAnswer", "answer", "parse_duration",
]
