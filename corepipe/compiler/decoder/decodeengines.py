"""Which engine runs each stage of a decoder: the one faster on a decode step, measured.

`check_engines` runs each stage once on each engine with the prefill example and keeps OpenVINO
where it computes the stage right. A decoder's stages spend their life on decode steps (one new
token per sequence, a past that grows every step, a batch that changes as sequences come and go),
where OpenVINO's dynamic shapes can cost more than its kernels save: gpt2-bench's stages ran a
batch-8 step in 18.3 ms on onnxruntime against 31.0 on OpenVINO. So with ``engine="auto"`` at
fp32, each stage is timed on each engine on one core (one thread, the fastest of a few runs) on a
decode step at batch 1 and at ``max_sequences``, past `DECODE_PAST`, and runs on the engine whose
time, relative to the faster at each batch, sums lowest. A plan note records the times and the
choice. Other precisions keep OpenVINO (onnxruntime has no fast bf16/fp16 matmul on x86-64).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ..cut.choose import Choice, candidates, engine_precision
from ..cut.measure import time_stages_on
from ..model.graph import ModelGraph

__all__ = ["DECODE_PAST", "decode_choices"]

#: The past length the decode steps are timed at (capped below ``max_length``).
DECODE_PAST = 64
#: Timed runs per engine, stage and batch (the fastest counts: load only ever adds time).
REPEATS = 5


def decode_choices(
    graph: ModelGraph, bounds: Sequence[int], dm: Any, choices: Sequence[Choice], engine: str, precision: str,
    report: Callable[[str, int, int], None],
) -> tuple[list[Choice], list[str]]:
    """``choices`` with each stage on the engine faster on decode steps, and the notes saying so.

    ``dm``: the `DecoderModel` (its ``feeds(b, n, p)`` builds a step). Unchanged, with no notes,
    unless ``engine`` is ``"auto"``, ``precision`` fp32 and more than one engine is installed.
    """
    order = candidates(engine)
    if engine != "auto" or precision != "fp32" or len(order) < 2:
        return list(choices), []
    k = len(bounds) - 1
    past = max(1, min(DECODE_PAST, dm.max_length - 2))
    batches = sorted({1, int(dm.max_sequences)})
    report("time decode steps", 0, len(batches))
    times = []
    for i, b in enumerate(batches):
        trials = time_stages_on(graph, list(bounds), dm.feeds(b, 1, past, seed=11), order, precision,
                                repeats=REPEATS, variants=[None] * k)
        times.append([t.seconds for t in trials])
        report("time decode steps", i + 1, len(batches))
    out, notes = [], []
    for s, c in enumerate(choices):
        ran = [e for e in order if all(e in t[s] for t in times)]
        if c.fallback is not None or c.engine not in ran or len(ran) < 2:
            out.append(c)  # a stage only one engine runs right stays where the check put it
            continue
        score = {e: sum(t[s][e] / min(t[s][x] for x in ran) for t in times) for e in ran}
        best = min(ran, key=lambda e: score[e])
        said = "; ".join(f"{e} " + ", ".join(f"b={b} {t[s][e] * 1e3:.2f} ms" for b, t in zip(batches, times))
                         for e in ran)
        notes.append(f"stage {s} decode step (1 new token, past {past}) on one core: {said}: runs on {best}")
        ov = best == "openvino"
        out.append(dataclasses.replace(c, engine=best, precision=engine_precision(best, precision),
                                       snippets=c.snippets and ov, snippets_off=c.snippets_off if ov else None))
    return out, notes
