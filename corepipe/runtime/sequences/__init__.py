"""Sequences: decoders run as pipelines whose stages keep their layers' KV (issue 25).

- `store`: each stage's bounded KV store, a row per sequence; the client's row book (admission).
- `sampling`: greedy and seeded temperature/top-k/top-p sampling, in the last stage.
- `header`: the few words per sequence a step carries across each boundary.
- `stage`: one stage's step: mask and positions from the header, past gathered, present scattered.
- `scheduler`: the client side: admission, batching of ready steps, tokens back, cancel, replay.
- `stream`: the iterator `generate` returns.
- `pipeline`: `DecoderPipeline.generate`, shared by the backends `inline` and `local`.
"""

from __future__ import annotations

from .sampling import Sampling
from .stream import TokenStream

__all__ = ["Sampling", "TokenStream"]
