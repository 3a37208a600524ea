"""Decoders measured in tokens: a `Workload` (N sequences at once, prompts of P tokens, G new
tokens each, repeated for some seconds), run on a decoder pipeline's ``generate``
(`measure_generate`) and on onnxruntime's whole-model greedy loop, the peer a user would
otherwise write (`WholeModelLoop`, `measure_loop`).

Both run the workload the same way: rounds of N sequences started together (the loop: one
batch tensor of N rows), greedy, EOS ignored so every sequence makes G tokens, until
``seconds`` have passed (at least one round, after a short warm-up). `GenFigures` holds what a
round saw: tokens/s over the rounds' wall time, time to first token, inter-token gaps.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Workload", "GenFigures", "measure_generate", "WholeModelLoop", "measure_loop"]


@dataclass(frozen=True)
class Workload:
    """N (``sequences``) sequences at once, each a seeded random prompt of ``prompt_tokens`` ids
    (1..vocab-1) and ``new_tokens`` generated, in rounds for ``seconds``."""

    sequences: int = 1
    prompt_tokens: int = 32
    new_tokens: int = 64
    seconds: float = 3.0
    seed: int = 0

    def prompts(self, vocab: int, round_: int = 0) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, round_ + 1])  # round -1: the warm-up
        return [rng.integers(1, max(vocab, 2), self.prompt_tokens).tolist() for _ in range(self.sequences)]

    def describe(self) -> str:
        s = self.sequences
        return (f"{s} sequence{'s' if s != 1 else ''} at once, {self.prompt_tokens}-token prompts, "
                f"{self.new_tokens} new tokens each, greedy")


@dataclass
class GenFigures:
    """What the rounds of a workload measured: ``tokens`` made in ``wall_s`` (the rounds' time,
    first call to last token), each sequence's time to first token, every inter-token gap."""

    tokens: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def pct(self, what: str, q: float) -> float:
        xs = self.ttft_s if what == "ttft" else self.itl_s
        return float(np.percentile(xs, q)) if xs else 0.0

    def add(self, other: GenFigures) -> None:
        self.tokens += other.tokens
        self.wall_s += other.wall_s
        self.ttft_s += other.ttft_s
        self.itl_s += other.itl_s
        self.outputs += other.outputs


def _rounds(one_round: Any, workload: Workload, vocab: int) -> GenFigures:
    """A 2-token warm-up round, then rounds until ``workload.seconds`` have passed (at least one)."""
    one_round([p[:2] for p in workload.prompts(vocab, -1)][:1], 2)
    total, deadline, i = GenFigures(), time.perf_counter() + workload.seconds, 0
    while i == 0 or time.perf_counter() < deadline:
        total.add(one_round(workload.prompts(vocab, i), workload.new_tokens))
        i += 1
    return total


def measure_generate(pipe: Any, workload: Workload, vocab: int, timeout: float = 120.0) -> GenFigures:
    """``pipe.generate`` (a loaded decoder pipeline) under ``workload``: each round's sequences
    from one thread each, started together."""

    def one_round(prompts: list[list[int]], new: int) -> GenFigures:
        outs: list[list[int]] = [[] for _ in prompts]
        stamps: list[list[float]] = [[] for _ in prompts]
        errors: list[BaseException] = []
        t0 = time.perf_counter()

        def one(i: int) -> None:
            try:
                for tok in pipe.generate(prompts[i], max_new_tokens=new, timeout=timeout):
                    stamps[i].append(time.perf_counter())
                    outs[i].append(int(tok))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        last = max(s[-1] for s in stamps if s) if any(stamps) else time.perf_counter()
        return GenFigures(tokens=sum(len(o) for o in outs), wall_s=last - t0,
                          ttft_s=[s[0] - t0 for s in stamps if s],
                          itl_s=[float(d) for s in stamps for d in np.diff(s)], outputs=outs)

    return _rounds(one_round, workload, vocab)


class WholeModelLoop:
    """onnxruntime's whole-model greedy loop on a decoder ONNX (optimum's ``past_key_values.*``
    or the legacy ``past.*`` inputs): one session with ``threads`` intra-op threads, all prompts
    of a call as one batch tensor, the presents fed back as the next step's past."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i.shape for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.pasts = [n for n in self.inputs if n.startswith("past")]
        self.presents = ["present" + n.removeprefix("past_key_values").removeprefix("past") for n in self.pasts]
        missing = [p for p in self.presents if p not in self.outputs]
        if not self.pasts or missing or "logits" not in self.outputs:
            raise ValueError(f"{path}: not a decoder the whole-model loop knows (past*/present* pairs, logits); "
                             f"presents missing: {missing}")
        shape = self.session.get_outputs()[self.outputs.index("logits")].shape
        self.vocab = int(shape[-1]) if isinstance(shape[-1], int) else None

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.pasts:  # [b, h, 0, d] (optimum) or [2, b, h, 0, d] (legacy)
            dims = list(self.inputs[name])
            sym = [i for i, d in enumerate(dims) if not isinstance(d, int)]
            shape = [d if isinstance(d, int) else 0 for d in dims]
            shape[sym[0]] = batch
            feeds[name] = np.zeros(shape, np.float32)
        return feeds

    def round(self, prompts: Sequence[Sequence[int]], new: int) -> GenFigures:
        """Greedy ``new`` tokens for prompts of one length, as one batch."""
        b, n = len(prompts), len(prompts[0])
        feeds: dict[str, np.ndarray] = {"input_ids": np.asarray(prompts, np.int64), **self._empty_past(b)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((b, n), np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.tile(np.arange(n, dtype=np.int64), (b, 1))
        outs: list[list[int]] = [[] for _ in range(b)]
        t0, stamps = time.perf_counter(), []
        for k in range(new):
            res = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
            toks = np.argmax(res["logits"][:, -1], -1)
            stamps.append(time.perf_counter())
            for i in range(b):
                outs[i].append(int(toks[i]))
            feeds["input_ids"] = toks[:, None].astype(np.int64)
            if "attention_mask" in feeds:
                feeds["attention_mask"] = np.ones((b, n + k + 1), np.int64)
            if "position_ids" in feeds:
                feeds["position_ids"] = np.full((b, 1), n + k, np.int64)
            feeds.update({p: res[q] for p, q in zip(self.pasts, self.presents, strict=True)})
        return GenFigures(tokens=b * new, wall_s=stamps[-1] - t0, ttft_s=[stamps[0] - t0] * b,
                          itl_s=[float(d) for d in np.diff(stamps)], outputs=outs)


def measure_loop(path: str | os.PathLike[str], threads: int, workload: Workload) -> GenFigures:
    """`WholeModelLoop` with ``threads`` threads under ``workload`` (each round one batch)."""
    loop = WholeModelLoop(path, threads)
    return _rounds(loop.round, workload, loop.vocab or 2)
