"""The few words per sequence that travel with a step across every boundary.

A step message is ``(header, tensors)``: ``header`` an int64 ``[B, WORDS]`` array, one row per
sequence in the step, and ``tensors`` what the boundary carries for those B rows (``input_ids``
``[B, n]`` into stage 0, the hidden state ``[B, n, width]`` between stages, ``tokens`` ``[B]`` out of
the last). Nothing else crosses: each stage builds its attention mask and positions from the
header, keeps its KV in its own store, and the last stage samples with the header's parameters.

Words of a row: sequence id, KV row, past length P, new tokens n, then the sampling parameters
(seed, top_k, temperature and top_p as float64 bits) so the last stage needs no state to sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sampling import Sampling

__all__ = ["WORDS", "SID", "ROW", "PAST", "NEW", "TOKENS", "header", "sampling_of", "merge"]

WORDS = 8
SID, ROW, PAST, NEW, SEED, TOPK, TEMP, TOPP = range(WORDS)
#: The name of the last boundary's tensor: the sampled token of each row.
TOKENS = "tokens"


def header(rows: Sequence[tuple[int, int, int, int, Sampling]]) -> np.ndarray:
    """The header of a step of ``rows`` (sequence id, KV row, past, n, sampling)."""
    out = np.zeros((len(rows), WORDS), dtype=np.int64)
    for i, (sid, row, past, n, how) in enumerate(rows):
        out[i, :TEMP] = (sid, row, past, n, how.seed, how.top_k)
        out[i, TEMP:] = np.array([how.temperature, how.top_p], dtype=np.float64).view(np.int64)
    return out


def sampling_of(row: np.ndarray) -> Sampling:
    """The sampling parameters one header row carries."""
    temp, top_p = row[TEMP:TOPP + 1].view(np.float64).tolist()
    return Sampling(temperature=temp, top_k=int(row[TOPK]), top_p=top_p, seed=int(row[SEED]))


def merge(messages: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Several decode steps (each row n == 1) as one: headers and tensors stacked along the batch."""
    if len(messages) == 1:
        return messages[0]
    heads = np.concatenate([h for h, _ in messages])
    names = list(messages[0][1])
    return heads, {name: np.concatenate([t[name] for _, t in messages]) for name in names}
