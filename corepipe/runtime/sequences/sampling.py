"""Choosing the next token from the last position's logits, in the last stage.

Greedy (``temperature`` 0) is ``argmax`` (the lowest id on ties), exact. Otherwise the logits are
divided by the temperature, cut to the ``top_k`` most likely and to the smallest set whose
probability reaches ``top_p``, and one token is drawn with a numpy ``Generator`` seeded from the
sequence's seed and the token's position. Seeding per position (not one generator per sequence)
makes the draw a function of (seed, position, logits) alone: a step replayed after a worker died
draws the very token the lost step would have drawn, and no generator state lives in a stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError

__all__ = ["Sampling", "sample"]


@dataclass(frozen=True)
class Sampling:
    """How a sequence picks its tokens. ``temperature`` 0 (default): greedy. ``top_k`` 0: no
    cut; ``top_p`` 1.0: no cut. ``seed``: the draws' seed (any int >= 0)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(f"temperature must be a finite number >= 0 (0: greedy); got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0: no cut); got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1] (1: no cut); got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be an int in [0, 2**63); got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: np.ndarray, how: Sampling, position: int) -> int:
    """The token for one sequence from its last position's ``logits`` (``[vocab]``); ``position``:
    the position the token will take (its draw's seed with ``how.seed``)."""
    if how.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / how.temperature
    if 0 < how.top_k < z.size:
        kth = np.partition(z, -how.top_k)[-how.top_k]
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max()
    p = np.exp(z)
    p /= p.sum()
    if how.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, how.top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    rng = np.random.default_rng([how.seed, position])
    return int(rng.choice(p.size, p=p))
