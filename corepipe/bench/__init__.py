"""Benchmarks: the pipeline against the peers a user would pick instead, in one run, and the
result model (`BenchResult`: rows, ratios, Markdown).

``corepipe.bench(...)`` is `bench` (the package's name is taken by the function at the top
level: import the types from here, ``from corepipe.bench import BenchResult``).

- `traffic`: what each measurement sends (`Traffic`), and the model as a file peers can read;
- `lengths`: mixed traffic's lengths (``--lengths``: a spec or a file), named after the model's
  dims, and requests cut to them; `mixed`: what a bench of mixed traffic compiles and sends
  (`MixedTraffic`), `mixedrun`: that bench, run; `reqfile`: requests in a file a peer reads;
- `peers`: the peers' setups, each timed in its own process (`proc`);
- `pipeline`: the corepipe pipeline as a row (throughput while full, latency alone, memory);
- `result`: rows, ratios (with their precisions), texts and Markdown;
- `steady`: steady-state rounds and their noise, for the demo.
"""

from __future__ import annotations

from .peers import PeerSetup, peer_setups
from .pipeline import path_service_s
from .result import BenchResult, BenchRow, Ratio
from .run import BACKENDS, BenchProgress, bench
from .traffic import ModelSource, Traffic, example_feeds, resolve_model

__all__ = [
    "bench", "BenchResult", "BenchRow", "Ratio", "BenchProgress", "BACKENDS",
    "Traffic", "ModelSource", "example_feeds", "resolve_model", "PeerSetup", "peer_setups", "path_service_s",
]
